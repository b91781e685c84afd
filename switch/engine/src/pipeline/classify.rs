//! Stage 1: parse the Ethernet header of every frame, drop what cannot be
//! switched, and start fetching the FDB buckets the next stages will read.
use super::{Action, Hdr};
use crate::fdb::{Fdb, FdbKey, NetId};
use crate::packet::Packet;
use crate::port::PortId;
use crate::stats::DropReason;
use crate::wire::mac::{self, Mac};

/// Fills `hdrs` with one entry per frame of `batch`.
#[inline]
pub fn run(batch: &mut [Packet], in_port: PortId, fdb: &Fdb, net: NetId, hdrs: &mut Vec<Hdr>) {
    hdrs.clear();
    for p in batch.iter_mut() {
        p.meta.in_port = in_port;
        let mut h = Hdr {
            dst: Mac(0),
            src: Mac(0),
            dst_key: FdbKey::default(),
            src_key: FdbKey::default(),
            action: Action::Drop(DropReason::Runt),
        };
        if let Some((dst, src)) = mac::dst_src(p.data()) {
            h.dst = dst;
            h.src = src;
            if src.is_multicast() || src.is_zero() {
                h.action = Action::Drop(DropReason::BadSrcMac);
            } else {
                h.action = Action::Flood;
                h.src_key = fdb.key(net, src);
                fdb.prefetch(&h.src_key);
                if !dst.is_multicast() {
                    h.dst_key = fdb.key(net, dst);
                    fdb.prefetch(&h.dst_key);
                }
            }
        }
        hdrs.push(h);
    }
}
