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

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(dst: u64, src: u64) -> Packet {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&Mac(dst).bytes());
        f[6..12].copy_from_slice(&Mac(src).bytes());
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        Packet::from_slice(&f)
    }

    #[test]
    fn frames_get_their_macs_and_what_cannot_be_switched_is_dropped() {
        let fdb = Fdb::new(1024);
        let mut batch = vec![
            eth(0x0200_0000_0002, 0x0200_0000_0001),
            // A multicast source: never a real sender.
            eth(0x0200_0000_0002, 0x0100_5e00_0001),
            // An all-zero source.
            eth(0x0200_0000_0002, 0),
            // Shorter than an Ethernet header.
            Packet::from_slice(&[0u8; 10]),
        ];
        let mut hdrs = Vec::new();
        run(&mut batch, 7, &fdb, 0, &mut hdrs);
        assert_eq!(hdrs.len(), 4);
        assert_eq!(hdrs[0].dst, Mac(0x0200_0000_0002));
        assert_eq!(hdrs[0].src, Mac(0x0200_0000_0001));
        assert_eq!(hdrs[0].action, Action::Flood, "undecided until forward");
        assert_eq!(hdrs[1].action, Action::Drop(DropReason::BadSrcMac));
        assert_eq!(hdrs[2].action, Action::Drop(DropReason::BadSrcMac));
        assert_eq!(hdrs[3].action, Action::Drop(DropReason::Runt));
        assert!(
            batch.iter().all(|p| p.meta.in_port == 7),
            "ingress recorded"
        );
    }
}
