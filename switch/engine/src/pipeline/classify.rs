//! Stage 1: parse the Ethernet header of every frame, drop what cannot be
//! switched, and start fetching the FDB buckets the next stages will read.
use super::{Action, Hdr};
use crate::fdb::{Fdb, NetId};
use crate::packet::Packet;
use crate::port::PortId;
use crate::stats::DropReason;
use crate::wire::mac::{self, Mac};

/// Fills `hdrs` with one entry per frame of `batch`, then starts loading
/// the FDB bucket of every source and unicast destination.
#[inline]
pub fn run(batch: &mut [Packet], in_port: PortId, fdb: &Fdb, net: NetId, hdrs: &mut Vec<Hdr>) {
    hdrs.clear();
    // One reservation for the batch (`extend` over a slice's iterator),
    // not a capacity check per frame.
    hdrs.extend(batch.iter_mut().map(|p| {
        p.meta.in_port = in_port;
        match mac::dst_src(p.data()) {
            Some((dst, src)) => Hdr {
                dst,
                src,
                action: if src.is_multicast() || src.is_zero() {
                    Action::Drop(DropReason::BadSrcMac)
                } else {
                    Action::Flood
                },
            },
            None => Hdr {
                dst: Mac(0),
                src: Mac(0),
                action: Action::Drop(DropReason::Runt),
            },
        }
    }));
    // A separate pass of loads only, so that the misses of the whole batch
    // are in flight together (no other work between them fills the
    // window). MACs repeated from the frame before are skipped (one flow's
    // burst).
    let mut touched = 0u64;
    let (mut ps, mut pd) = (Mac(u64::MAX), Mac(u64::MAX));
    for h in hdrs.iter() {
        if matches!(h.action, Action::Drop(_)) {
            continue;
        }
        if h.src != ps {
            ps = h.src;
            touched ^= fdb.touch(fdb.key(net, ps));
        }
        if h.dst != pd && !h.dst.is_multicast() {
            pd = h.dst;
            touched ^= fdb.touch(fdb.key(net, pd));
        }
    }
    std::hint::black_box(touched);
}
