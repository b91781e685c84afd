//! Stage 3: decide unicast or flood from the destination MAC.
use super::{Action, Hdr};
use crate::fdb::Fdb;
use crate::port::PortId;
use crate::stats::{BatchDrops, DropReason};
use crate::tables::L3View;

/// Sets each frame's action: known unicast, flood (broadcast, multicast,
/// unknown unicast), or drop when the destination sits on the ingress port.
#[inline]
pub fn run(fdb: &Fdb, in_port: PortId, hdrs: &mut [Hdr]) {
    for h in hdrs.iter_mut() {
        if !matches!(h.action, Action::Flood) || h.dst.is_multicast() {
            continue;
        }
        h.action = match fdb.lookup_key(&h.dst_key) {
            Some(p) if p == in_port => Action::Drop(DropReason::SamePort),
            Some(p) => Action::Unicast(p),
            None => Action::Flood,
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
