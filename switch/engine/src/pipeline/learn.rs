//! Stage 2: learn source MACs on the ingress port.
use super::{Action, Hdr};
use crate::fdb::{Fdb, Learn, NetId};
use crate::port::PortId;
use crate::stats::{BatchDrops, DropReason};

/// Learns the source of every frame still in flight. A refused learn is
/// counted; the frame itself goes on.
#[inline]
pub fn run(fdb: &Fdb, net: NetId, in_port: PortId, now: u32, hdrs: &[Hdr], drops: &mut BatchDrops) {
    let mut last = None;
    for h in hdrs.iter() {
        if matches!(h.action, Action::Drop(_)) || last == Some(h.src) {
            continue;
        }
        last = Some(h.src);
        match fdb.learn_key(fdb.key(net, h.src), in_port, now) {
            Learn::Limit => drops.add(DropReason::LearnLimit),
            Learn::Full => drops.add(DropReason::LearnTableFull),
            Learn::Moved { from } => {
                tracing::debug!(mac = %h.src, from, to = in_port, "MAC moved");
            }
            Learn::Refreshed | Learn::Learned | Learn::Static => {}
        }
    }
}
