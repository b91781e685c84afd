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
                }
                h.src_key = last_src.1;
                if !dst.is_multicast() {
                    if dst != last_dst.0 {
                        last_dst = (dst, fdb.key(net, dst));
                    }
                    h.dst_key = last_dst.1;
                }
            }
        }
        hdrs.push(h);
    }
    // A separate pass of loads only, so that the misses of the whole batch
    // are in flight together (no hashing between them fills the window).
    // Keys repeated from the frame before are skipped (one flow's burst).
    let mut touched = 0u64;
    let (mut ps, mut pd) = (FdbKey::default(), FdbKey::default());
    for h in hdrs.iter() {
        if h.src_key != ps {
            ps = h.src_key;
            touched ^= fdb.touch(&ps);
        }
        if h.dst_key != pd {
            pd = h.dst_key;
            touched ^= fdb.touch(&pd);
        }
    }
    std::hint::black_box(touched);
}
