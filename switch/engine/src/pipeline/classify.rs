//! Stage 1: parse the Ethernet header of every frame, drop what cannot be
//! switched, and start fetching the FDB buckets the next stages will read.
use super::{Action, Hdr};
use crate::fdb::{Fdb, FdbKey, NetId};
use crate::packet::Packet;
use crate::port::PortId;
use crate::stats::DropReason;
use crate::wire::mac::{self, Mac};

/// Fills `hdrs` with one entry per frame of `batch`. Frames of one flow
/// arrive together, so a MAC equal to the previous frame's reuses its key
/// instead of hashing again.
#[inline]
pub fn run(batch: &mut [Packet], in_port: PortId, fdb: &Fdb, net: NetId, hdrs: &mut Vec<Hdr>) {
    hdrs.clear();
    let mut last_src = (Mac(u64::MAX), FdbKey::default());
    let mut last_dst = (Mac(u64::MAX), FdbKey::default());
    let mut touched = 0u64;
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
                if src != last_src.0 {
                    last_src = (src, fdb.key(net, src));
                    touched ^= fdb.touch(&last_src.1);
                }
                h.src_key = last_src.1;
                if !dst.is_multicast() {
                    if dst != last_dst.0 {
                        last_dst = (dst, fdb.key(net, dst));
                        touched ^= fdb.touch(&last_dst.1);
                    }
                    h.dst_key = last_dst.1;
                }
            }
        }
        hdrs.push(h);
    }
    std::hint::black_box(touched);
}
