//! The L2 stages (classify, learn, forward, queue) on a batch of 32 64-byte
//! frames, with 1 and with 100,000 learned MACs (the FDB at its default
//! size, 2^18 slots; 100,000 entries: 50,000 sources on the ingress port
//! talking to 50,000 destinations on the other, in random order; the 1-MAC
//! case is one source and one destination). No ports: this is the
//! per-packet work of the engine alone. Every destination sits on one port,
//! so a batch moves to its output queue as a whole; a third case spreads
//! the 100,000 MACs' destinations over three ports, so batches are mixed and
//! frames move one by one (reported, not a target). The MAC rewrite that makes every
//! batch new traffic is included in the figure (12 byte stores per frame).
use std::sync::Arc;
use std::time::Instant;
use vswitch_engine::fdb::NetId;
use vswitch_engine::packet::{Packet, PacketPool};
use vswitch_engine::pipeline::{Ingress, Pipeline, Sinks, TxQueues, BATCH};
use vswitch_engine::port::{PortCaps, PortId};
use vswitch_engine::stats::{BatchDrops, PortStats};
use vswitch_engine::tables::{NetworkView, PortView, Snapshot, Tables};
use vswitch_engine::wire::mac::Mac;

const NET: NetId = 0;

fn tables() -> (Arc<Tables>, Arc<Snapshot>) {
    let t = Arc::new(Tables::new(1 << 18));
    t.fdb.set_limit(NET, 1_000_000);
    let port = |id| {
        Some(PortView {
            id,
            name: format!("p{id}"),
            net: Some(NET),
            worker: 0,
            caps: PortCaps::default(),
            stats: Arc::new(PortStats::default()),
        })
    };
    t.publish(Snapshot {
        generation: 0,
        ports: vec![None, port(1), port(2), port(3), port(4)],
        networks: vec![Some(NetworkView {
            id: NET,
            name: "bench".into(),
            ports: vec![1, 2, 3, 4],
            l3: None,
            overlay: None,
        })],
        ..Default::default()
    });
    let snap = t.snap.load_full();
    (t, snap)
}

/// A pipeline under measurement and where its batches go: each pass runs one
/// batch and puts every frame it queued back into the batch for the next.
pub(crate) struct Rig {
    pipe: Pipeline,
    pool: PacketPool,
    txq: TxQueues,
    drops: BatchDrops,
}

impl Rig {
    pub(crate) fn new(pipe: Pipeline) -> Self {
        Self {
            pipe,
            pool: PacketPool::default(),
            txq: TxQueues::default(),
            drops: BatchDrops::default(),
        }
    }

    /// Runs `batch`, received on `in_port` at `now`, and refills it with
    /// what the pipeline queued; returns how many frames were queued for
    /// `port` (every port: `None`).
    #[inline]
    pub(crate) fn pass(
        &mut self,
        t: &Tables,
        snap: &Snapshot,
        in_port: PortId,
        now: u32,
        batch: &mut Vec<Packet>,
        port: Option<PortId>,
    ) -> u64 {
        let sinks = Sinks::new(&mut self.pool, &mut self.txq, &mut self.drops);
        self.pipe
            .run(t, snap, Ingress::Port(in_port), now, batch, sinks);
        let mut counted = 0;
        let pending = self.txq.take_pending();
        for p in &pending {
            let q = self.txq.queue(*p);
            if port.is_none_or(|o| o == *p) {
                counted += q.len() as u64;
            }
            batch.append(q);
        }
        self.txq.restore_pending(pending);
        counted
    }
}

fn frame() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[12] = 0x08; // IPv4
    f[14] = 0x45;
    f
}

/// Returns (ns per packet, packets forwarded); destinations on `out_ports`
/// ports (2, 3, ...).
fn case(macs: u64, out_ports: u64, batches: usize) -> (f64, u64) {
    let (t, snap) = tables();
    let src = |i: u64| Mac(0x0200_0000_0000 | i);
    let dst = |i: u64| Mac(0x0600_0000_0000 | i);
    let pairs = (macs / 2).max(1);
    for i in 0..pairs {
        t.fdb.learn(NET, dst(i), 2 + (i % out_ports) as u16, 0);
        t.fdb.learn(NET, src(i), 1, 0);
    }
    let mut rig = Rig::new(Pipeline::default());
    let mut batch: Vec<Packet> = (0..BATCH).map(|_| Packet::from_slice(&frame())).collect();
    // A fixed pseudo-random walk over the MAC set (xorshift), precomputed.
    let mut x = 0x9E37_79B9u64;
    let seq: Vec<u64> = (0..(1 << 16))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % pairs
        })
        .collect();
    let mut k = 0usize;
    let mut forwarded = 0u64;
    let start = Instant::now();
    for _ in 0..batches {
        for p in batch.iter_mut() {
            let i = seq[k & 0xffff];
            k += 1;
            let d = p.data_mut();
            d[0..6].copy_from_slice(&dst(i).bytes());
            d[6..12].copy_from_slice(&src(i).bytes());
        }
        forwarded += rig.pass(&t, &snap, 1, 0, &mut batch, None);
    }
    let ns = start.elapsed().as_nanos() as f64 / (batches * BATCH) as f64;
    (ns, forwarded)
}

/// Prints the table and one JSON line per case. Each case runs `TRIALS`
/// times; the median trial is reported (this machine is noisy), with the best.
pub fn run(batches: usize, only: Option<u64>) {
    const TRIALS: usize = 7;
    let mhz = crate::cpu_mhz();
    println!("pipeline on memory: 64-byte frames, batches of {BATCH}, one core, {mhz:.0} MHz, median of {TRIALS} trials");
    println!(
        "{:<22} {:>10} {:>12} {:>12} {:>16}",
        "learned MACs", "Mpps", "ns/packet", "cycles/pkt", "best cycles/pkt"
    );
    for (macs, out_ports) in [(1u64, 1u64), (100_000, 1), (100_000, 3)] {
        if only.is_some_and(|o| o != macs) {
            continue;
        }
        let mut trials: Vec<f64> = (0..TRIALS)
            .map(|_| {
                let (ns, fwd) = case(macs, out_ports, batches / TRIALS);
                let expected = ((batches / TRIALS) * BATCH) as u64;
                assert_eq!(fwd, expected, "every frame must be forwarded by unicast");
                ns
            })
            .collect();
        trials.sort_by(f64::total_cmp);
        let ns = trials[TRIALS / 2];
        let best = trials[0];
        let cycles = ns * mhz / 1000.0;
        let (label, case) = if out_ports == 1 {
            (format!("{macs}"), format!("pipeline_l2_{macs}_macs"))
        } else {
            (
                format!("{macs}, {out_ports} out ports"),
                format!("pipeline_l2_{macs}_macs_{out_ports}_out_ports"),
            )
        };
        println!(
            "{:<22} {:>10.2} {:>12.1} {:>12.1} {:>16.1}",
            label,
            1000.0 / ns,
            ns,
            cycles,
            best * mhz / 1000.0
        );
        println!(
            "JSON {}",
            serde_json::json!({"case": case, "mpps": 1000.0 / ns, "ns_per_packet": ns, "cycles_per_packet": cycles, "best_cycles_per_packet": best * mhz / 1000.0, "mhz": mhz})
        );
    }
}
