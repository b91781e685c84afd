//! Stage 4: replicate a frame to every port of its network but the ingress.
use super::TxQueues;
use crate::packet::{Packet, PacketPool};
use crate::port::PortId;
use crate::tables::NetworkView;

/// Queues copies of `p` for every port of `net` except `in_port`; the last
/// port gets the original, so a two-port network copies nothing.
#[inline]
pub fn replicate(
    p: Packet,
    net: &NetworkView,
    in_port: PortId,
    pool: &mut PacketPool,
    txq: &mut TxQueues,
) {
    let mut outs = net.ports.iter().copied().filter(|&o| o != in_port);
    let Some(mut prev) = outs.next() else {
        pool.put(p);
        return;
    };
    for o in outs {
        txq.push(prev, p.clone_from_pool(pool));
        prev = o;
    }
    txq.push(prev, p);
}
