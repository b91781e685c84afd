//! Random frames and random offload requests through every per-packet stage:
//! whatever arrives, the pipeline must not panic, and every frame must end up
//! forwarded or counted as a drop. Deterministic (seeded xorshift).
mod common;
use common::Rng;
use std::sync::Arc;
use vswitch_engine::packet::{Packet, PacketPool};
use vswitch_engine::pipeline::{offload, Ingress, Pipeline, Sinks, TxQueues};
use vswitch_engine::port::PortCaps;
use vswitch_engine::stats::{BatchDrops, DropReason, PortStats};
use vswitch_engine::tables::{NetworkView, PortView, Snapshot, Tables};
use vswitch_engine::wire::virtio::{self, VNET_HDR_LEN};

/// A frame that is sometimes plausible (Ethernet + IPv4/IPv6 + TCP headers
/// with random fields) and sometimes pure noise, of random length.
fn frame(r: &mut Rng) -> Vec<u8> {
    let len = match r.below(4) {
        0 => r.below(20) as usize,
        1 => r.below(200) as usize,
        _ => r.below(9000) as usize,
    };
    let mut f: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
    if len >= 60 && r.below(2) == 0 {
        let v6 = r.below(2) == 0;
        f[12..14].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        if v6 {
            f[20] = 6;
        } else {
            f[14] = 0x40 | (r.below(16) as u8);
            f[23] = 6;
        }
        f[6] &= 0xfe; // unicast source, mostly
    }
    f
}

#[test]
fn random_frames_never_panic_and_are_accounted() {
    let tables = Arc::new(Tables::new(1024));
    tables.fdb.set_limit(0, 64);
    let stats: Vec<_> = (0..4).map(|_| Arc::new(PortStats::default())).collect();
    let view = |id: u16| {
        Some(PortView {
            id,
            name: format!("p{id}"),
            net: Some(0),
            worker: 0,
            caps: PortCaps::default(),
            stats: stats[id as usize].clone(),
        })
    };
    tables.publish(Snapshot {
        generation: 0,
        ports: vec![None, view(1), view(2), view(3)],
        networks: vec![Some(NetworkView {
            id: 0,
            name: "n".into(),
            ports: vec![1, 2, 3],
            l3: None,
            overlay: None,
        })],
        ..Default::default()
    });
    let snap = tables.snap.load_full();
    let mut r = Rng(0x1234_5678_9abc_def1);
    let mut pool = PacketPool::default();
    let mut txq = TxQueues::default();
    let mut pipe = Pipeline::default();
    let mut scratch = Vec::new();
    for round in 0..3000 {
        let mut drops = BatchDrops::default();
        let n = 1 + r.below(32) as usize;
        let mut batch: Vec<Packet> = (0..n)
            .map(|_| {
                let mut p = Packet::from_slice(&frame(&mut r));
                // Random virtio-net header, as a hostile TAP peer might send.
                let mut h = [0u8; VNET_HDR_LEN];
                for b in h.iter_mut() {
                    *b = r.next() as u8;
                }
                if let Ok(o) = virtio::parse(&h) {
                    p.meta.offload = o;
                }
                p
            })
            .collect();
        let in_port = 1 + (round % 3) as u16;
        pipe.run(
            &tables,
            &snap,
            Ingress::Port(in_port),
            0,
            &mut batch,
            Sinks::new(&mut pool, &mut txq, &mut drops),
        );
        assert!(batch.is_empty(), "the pipeline consumes every frame");
        let pending = txq.take_pending();
        for &port in &pending {
            let q = txq.queue(port);
            let caps = match r.below(3) {
                0 => PortCaps {
                    csum: false,
                    tso: false,
                    max_frame: 1514,
                },
                1 => PortCaps {
                    csum: true,
                    tso: false,
                    max_frame: 9000,
                },
                _ => PortCaps {
                    csum: true,
                    tso: true,
                    max_frame: 65535,
                },
            };
            offload::prepare(q, caps, &mut pool, &mut scratch, &mut drops);
            for p in q.iter() {
                if !caps.tso {
                    assert!(
                        p.meta.offload.gso.is_none(),
                        "TSO frame reached a port without TSO"
                    );
                }
                if !caps.csum {
                    assert!(p.meta.offload.csum.is_none());
                }
            }
            pool.put_all(q);
        }
        txq.restore_pending(pending);
        drops.flush(&stats[in_port as usize]);
    }
    let total_drops: u64 = stats
        .iter()
        .map(|s| DropReason::ALL.iter().map(|d| s.drops_of(*d)).sum::<u64>())
        .sum();
    assert!(total_drops > 0, "garbage must show up in drop counters");
    assert!(stats[1].drops_of(DropReason::Runt) > 0);
}
