//! Stage 3: decide unicast or flood from the destination MAC.
use super::{Action, Hdr};
use crate::fdb::{Fdb, NetId};
use crate::port::PortId;
use crate::stats::{BatchDrops, DropReason};
use crate::tables::L3View;
use crate::wire::mac::Mac;

/// Sets each frame's action: known unicast, flood (broadcast, multicast,
/// unknown unicast), or drop when the destination sits on the ingress port.
/// A destination equal to the previous frame's (one flow's burst) reuses
/// its answer: one lookup per run of equal destinations.
#[inline]
pub fn run(fdb: &Fdb, net: NetId, in_port: PortId, hdrs: &mut [Hdr]) {
    let mut last: Option<(Mac, Action)> = None;
    for h in hdrs.iter_mut() {
        if !matches!(h.action, Action::Flood) || h.dst.is_multicast() {
            continue;
        }
        h.action = match last {
            Some((m, a)) if m == h.dst => a,
            _ => {
                let a = match fdb.lookup_key(fdb.key(net, h.dst)) {
                    Some(p) if p == in_port => Action::Drop(DropReason::SamePort),
                    Some(p) => Action::Unicast(p),
                    None => Action::Flood,
                };
                last = Some((h.dst, a));
                a
            }
        };
    }
}

/// `--no-icc`: containers reach the gateway and the host, not each other.
/// Unicast between two container ports is dropped; a container's flood goes
/// to the host's interface only (the copies the other containers would have
/// had are counted as `icc_blocked`).
#[inline]
pub fn no_icc(l3: &L3View, in_port: PortId, hdrs: &mut [Hdr], drops: &mut BatchDrops) {
    let host = l3.host_port;
    if host == Some(in_port) {
        return;
    }
    for h in hdrs.iter_mut() {
        h.action = match h.action {
            Action::Unicast(p) if Some(p) != host => Action::Drop(DropReason::IccBlocked),
            Action::Flood => match host {
                Some(hp) => {
                    drops.add(DropReason::IccBlocked);
                    Action::Unicast(hp)
                }
                None => Action::Drop(DropReason::IccBlocked),
            },
            a => a,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::PortStats;

    fn hdr(dst: u64) -> Hdr {
        Hdr {
            dst: Mac(dst),
            src: Mac(0x0200_0000_0001),
            action: Action::Flood,
        }
    }

    #[test]
    fn known_unicast_is_sent_unknown_and_multicast_flooded_hairpin_dropped() {
        let fdb = Fdb::new(1024);
        fdb.learn(0, Mac(0x0200_0000_0002), 4, 1);
        fdb.learn(0, Mac(0x0200_0000_0003), 1, 1);
        let mut hdrs = vec![
            hdr(0x0200_0000_0002),
            hdr(0x0200_0000_0002),
            hdr(0x0200_0000_0003),
            hdr(0x0200_0000_0004),
            hdr(0xffff_ffff_ffff),
            Hdr {
                action: Action::Drop(DropReason::Runt),
                ..hdr(0x0200_0000_0002)
            },
        ];
        run(&fdb, 0, 1, &mut hdrs);
        let got: Vec<Action> = hdrs.iter().map(|h| h.action).collect();
        assert_eq!(
            got,
            [
                Action::Unicast(4),
                Action::Unicast(4),
                Action::Drop(DropReason::SamePort),
                Action::Flood,
                Action::Flood,
                Action::Drop(DropReason::Runt),
            ]
        );
    }

    #[test]
    fn no_icc_leaves_containers_only_the_host() {
        let l3 = L3View {
            subnet: crate::tables::Prefix {
                addr: 0x0a00_0000,
                len: 24,
            },
            gw_ip: 0x0a00_0001,
            gw_mac: Mac(0x0200_0000_00aa),
            internal: false,
            no_icc: true,
            host_port: Some(9),
            hosts: Default::default(),
        };
        let stats = PortStats::default();
        let mut drops = BatchDrops::default();
        let mut hdrs = vec![hdr(1), hdr(2), hdr(3)];
        hdrs[0].action = Action::Unicast(4);
        hdrs[1].action = Action::Unicast(9);
        hdrs[2].action = Action::Flood;
        no_icc(&l3, 1, &mut hdrs, &mut drops);
        drops.flush(&stats);
        let got: Vec<Action> = hdrs.iter().map(|h| h.action).collect();
        assert_eq!(
            got,
            [
                Action::Drop(DropReason::IccBlocked),
                Action::Unicast(9),
                Action::Unicast(9)
            ]
        );
        assert_eq!(
            stats.drops_of(DropReason::IccBlocked),
            1,
            "the flood's lost copies"
        );
        // The host itself reaches every container.
        let mut from_host = vec![hdr(1)];
        from_host[0].action = Action::Unicast(4);
        no_icc(&l3, 9, &mut from_host, &mut drops);
        assert_eq!(from_host[0].action, Action::Unicast(4));
    }
}
