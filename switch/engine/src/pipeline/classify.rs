//! Stage 1: parse the Ethernet header of every frame, drop what cannot be
//! switched, and start fetching the FDB buckets the next stages will read.
use super::{Action, Hdr};
use crate::fdb::{Fdb, NetId};
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
        let h = match mac::dst_src(p.data()) {
            None => Hdr {
                dst: Mac(0),
                src: Mac(0),
                action: Action::Drop(DropReason::Runt),
            },
            Some((dst, src)) if src.is_multicast() || src.is_zero() => Hdr {
                dst,
                src,
                action: Action::Drop(DropReason::BadSrcMac),
            },
            Some((dst, src)) => {
                fdb.prefetch(net, src);
                if !dst.is_multicast() {
                    fdb.prefetch(net, dst);
                }
                Hdr {
                    dst,
                    src,
                    action: Action::Flood,
                }
            }
        };
        hdrs.push(h);
    }
}
