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

#[cfg(test)]
mod tests {
    use super::*;

    fn net(ports: &[PortId]) -> NetworkView {
        NetworkView {
            id: 0,
            name: "n".into(),
            ports: ports.to_vec(),
            l3: None,
            overlay: None,
        }
    }

    #[test]
    fn every_port_but_the_ingress_gets_one_copy() {
        let mut pool = PacketPool::new(8, 2);
        let mut txq = TxQueues::default();
        let frame: Vec<u8> = (0..60).collect();
        replicate(
            Packet::from_slice(&frame),
            &net(&[1, 2, 3, 4]),
            2,
            &mut pool,
            &mut txq,
        );
        assert_eq!(txq.len(), 3);
        for p in [1, 3, 4] {
            let q = txq.queue(p);
            assert_eq!(q.len(), 1, "port {p}");
            assert_eq!(q[0].data(), &frame[..]);
        }
        assert!(txq.queue(2).is_empty(), "not back to the ingress");
        // Alone on its network: nothing to send.
        let mut txq = TxQueues::default();
        replicate(
            Packet::from_slice(&frame),
            &net(&[2]),
            2,
            &mut pool,
            &mut txq,
        );
        assert!(txq.is_empty());
    }
}
