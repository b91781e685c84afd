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
