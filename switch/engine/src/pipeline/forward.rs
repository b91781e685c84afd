//! Stage 3: decide unicast or flood from the destination MAC.
use super::{Action, Hdr};
use crate::fdb::Fdb;
use crate::port::PortId;
use crate::stats::DropReason;

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
