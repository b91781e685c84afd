//! Whole-worker scenarios on in-memory ports: the real worker loop, tables
//! and stages, with frames injected and collected by the test.
use std::sync::Arc;
use vswitch_engine::clock::{Clock, ManualClock};
use vswitch_engine::memport::{MemPort, MemPortHandle};
use vswitch_engine::port::{PortCaps, PortId};
use vswitch_engine::stats::{DropReason, PortStats};
use vswitch_engine::tables::{NetworkView, PortView, Snapshot, Tables};
use vswitch_engine::wire::mac::Mac;
use vswitch_engine::worker::{self, IdleMode, Worker, WorkerConfig};

struct Rig {
    worker: Worker,
    tables: Arc<Tables>,
    ports: Vec<(PortId, MemPortHandle, Arc<PortStats>)>,
    clock: ManualClock,
}

/// Ports 1-3 in network 0, port 4 in network 1.
fn rig(limit: u32) -> Rig {
    let tables = Arc::new(Tables::new(4096));
    tables.fdb.set_limit(0, limit);
    let shared = worker::shared_on_memory(1);
    let (ev_tx, _ev_rx) = crossbeam::channel::unbounded();
    let (_cmd_tx, cmd_rx) = crossbeam::channel::unbounded();
    let clock = ManualClock::default();
    let c: Arc<dyn Clock> = Arc::new(clock.clone());
    let cfg = WorkerConfig {
        id: 0,
        core: None,
        idle: IdleMode::Busy,
    };
    let mut worker = Worker::new(cfg, tables.clone(), shared, c, ev_tx, cmd_rx);
    let mut ports = Vec::new();
    let mut views = vec![None];
    for id in 1..=4u16 {
        let (p, h) = MemPort::new(
            &format!("m{id}"),
            256,
            PortCaps {
                csum: false,
                tso: false,
                max_frame: 1514,
            },
        );
        worker.add_port(id, Box::new(p));
        let stats = Arc::new(PortStats::default());
        views.push(Some(PortView {
            id,
            name: format!("m{id}"),
            net: Some(if id == 4 { 1 } else { 0 }),
            worker: 0,
            caps: PortCaps::default(),
            stats: stats.clone(),
        }));
        ports.push((id, h, stats));
    }
    tables.publish(Snapshot {
        generation: 0,
        ports: views,
        networks: vec![
            Some(NetworkView {
                id: 0,
                name: "a".into(),
                ports: vec![1, 2, 3],
                l3: None,
                overlay: None,
            }),
            Some(NetworkView {
                id: 1,
                name: "b".into(),
                ports: vec![4],
                l3: None,
                overlay: None,
            }),
        ],
        ..Default::default()
    });
    Rig {
        worker,
        tables,
        ports,
        clock,
    }
}

fn frame(dst: u64, src: u64) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&Mac(dst).bytes());
    f[6..12].copy_from_slice(&Mac(src).bytes());
    f[12] = 0x08;
    f
}

const A: u64 = 0x0200_0000_000a;
const B: u64 = 0x0200_0000_000b;

impl Rig {
    fn send(&mut self, port: usize, f: &[u8]) {
        assert!(self.ports[port - 1].1.inject(f));
        self.worker.poll_once();
    }
    fn got(&self, port: usize) -> usize {
        self.ports[port - 1].1.drain().len()
    }
}

#[test]
fn unknown_floods_then_learned_unicast() {
    let mut r = rig(100);
    r.send(1, &frame(B, A));
    assert_eq!(
        (r.got(1), r.got(2), r.got(3), r.got(4)),
        (0, 1, 1, 0),
        "flood within the network only"
    );
    r.send(2, &frame(A, B));
    assert_eq!(
        (r.got(1), r.got(2), r.got(3)),
        (1, 0, 0),
        "A was learned on port 1"
    );
    r.send(1, &frame(B, A));
    assert_eq!(
        (r.got(1), r.got(2), r.got(3)),
        (0, 1, 0),
        "B was learned on port 2"
    );
    r.send(1, &frame(Mac::BROADCAST.0, A));
    assert_eq!((r.got(1), r.got(2), r.got(3), r.got(4)), (0, 1, 1, 0));
    assert_eq!(r.ports[0].2.snapshot().rx_packets, 3);
    assert_eq!(r.ports[1].2.snapshot().tx_packets, 3);
}

#[test]
fn networks_are_isolated() {
    let mut r = rig(100);
    r.send(4, &frame(Mac::BROADCAST.0, B));
    assert_eq!((r.got(1), r.got(2), r.got(3)), (0, 0, 0));
    // B learned in network 1 means nothing in network 0.
    r.send(1, &frame(B, A));
    assert_eq!((r.got(2), r.got(3), r.got(4)), (1, 1, 0));
}

#[test]
fn bad_frames_are_counted_drops() {
    let mut r = rig(100);
    r.send(1, &[0u8; 10]);
    r.send(1, &frame(B, Mac::BROADCAST.0));
    r.send(1, &frame(B, 0));
    let s = &r.ports[0].2;
    assert_eq!(s.drops_of(DropReason::Runt), 1);
    assert_eq!(s.drops_of(DropReason::BadSrcMac), 2);
    assert_eq!((r.got(2), r.got(3)), (0, 0));
    // Destination on the ingress port: filtered.
    r.send(1, &frame(B, A));
    r.got(2);
    r.got(3);
    r.send(1, &frame(A, 0x0200_0000_00cc));
    assert_eq!(r.ports[0].2.drops_of(DropReason::SamePort), 1);
}

#[test]
fn mac_flood_is_bounded_and_counted() {
    let mut r = rig(10);
    r.tables.fdb.add_static(0, Mac(B), 2).unwrap();
    for i in 0..50u64 {
        r.send(1, &frame(Mac::BROADCAST.0, 0x0200_0000_1000 + i));
    }
    assert_eq!(r.tables.fdb.learned_count(0), 10);
    assert_eq!(r.ports[0].2.drops_of(DropReason::LearnLimit), 40);
    // Frames were still flooded, and the static entry still forwards.
    assert_eq!(r.got(2), 50);
    r.got(3);
    r.send(3, &frame(B, 0x0200_0000_2000));
    assert_eq!((r.got(1), r.got(2)), (0, 1));
}

#[test]
fn aging_with_injected_clock() {
    let mut r = rig(100);
    r.send(1, &frame(B, A));
    r.clock.advance_secs(301);
    let now = r.clock.now_secs();
    assert_eq!(r.tables.fdb.age(now, |_| Some(300)), 1);
    r.got(2);
    r.got(3);
    r.send(2, &frame(A, B));
    assert_eq!((r.got(1), r.got(3)), (1, 1), "A forgotten: flooded again");
}

/// Two workers: frames for a port owned by the other worker cross through
/// its inbox, unicast and flooded alike.
#[test]
fn handoff_between_workers() {
    let tables = Arc::new(Tables::new(4096));
    let shared = worker::shared_on_memory(2);
    let (ev_tx, _ev_rx) = crossbeam::channel::unbounded();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
    let mut workers: Vec<Worker> = (0..2)
        .map(|id| {
            let (_c, cmd_rx) = crossbeam::channel::unbounded();
            let cfg = WorkerConfig {
                id,
                core: None,
                idle: IdleMode::Busy,
            };
            Worker::new(
                cfg,
                tables.clone(),
                shared.clone(),
                clock.clone(),
                ev_tx.clone(),
                cmd_rx,
            )
        })
        .collect();
    let owner = |id: u16| if id == 3 { 1 } else { 0 };
    let mut handles = Vec::new();
    let mut views = vec![None];
    let mut stats = Vec::new();
    for id in 1..=3u16 {
        let (p, h) = MemPort::new(&format!("m{id}"), 64, PortCaps::default());
        workers[owner(id)].add_port(id, Box::new(p));
        let s = Arc::new(PortStats::default());
        views.push(Some(PortView {
            id,
            name: format!("m{id}"),
            net: Some(0),
            worker: owner(id),
            caps: PortCaps::default(),
            stats: s.clone(),
        }));
        handles.push(h);
        stats.push(s);
    }
    tables.publish(Snapshot {
        generation: 0,
        ports: views,
        networks: vec![Some(NetworkView {
            id: 0,
            name: "a".into(),
            ports: vec![1, 2, 3],
            l3: None,
            overlay: None,
        })],
        ..Default::default()
    });
    let poll_all = |ws: &mut Vec<Worker>| {
        for _ in 0..2 {
            for w in ws.iter_mut() {
                w.poll_once();
            }
        }
    };
    // Port 3 (worker 1) floods: ports 1 and 2 (worker 0) get it via the inbox.
    handles[2].inject(&frame(Mac::BROADCAST.0, B));
    poll_all(&mut workers);
    assert_eq!(handles[0].drain().len(), 1);
    assert_eq!(handles[1].drain().len(), 1);
    // Port 1 (worker 0) to B, learned on port 3 (worker 1): unicast handoff.
    handles[0].inject(&frame(B, A));
    poll_all(&mut workers);
    assert_eq!(handles[2].drain().len(), 1);
    assert_eq!(handles[1].drain().len(), 0);
    assert_eq!(stats[2].snapshot().tx_packets, 1);
    assert_eq!(stats[0].snapshot().tx_packets, 1);
}

#[test]
fn batches_keep_order_per_port_whole_or_mixed() {
    const C: u64 = 0x0200_0000_000c;
    let mut r = rig(100);
    // Teach B on port 2 and C on port 3.
    r.send(2, &frame(A, B));
    r.send(3, &frame(A, C));
    for p in 1..=4 {
        r.got(p);
    }
    let tagged = |dst: u64, seq: u8| {
        let mut f = frame(dst, A);
        f[20] = seq;
        f
    };
    let seqs = |frames: Vec<vswitch_engine::packet::Packet>| {
        frames.iter().map(|f| f.data()[20]).collect::<Vec<u8>>()
    };
    // A batch that all goes to port 2 (moved as a whole).
    for s in 0..20 {
        assert!(r.ports[0].1.inject(&tagged(B, s)));
    }
    r.worker.poll_once();
    assert_eq!(seqs(r.ports[1].1.drain()), (0..20).collect::<Vec<u8>>());
    assert_eq!((r.got(3), r.got(4)), (0, 0));
    // A mixed batch: B, C and broadcast interleaved (moved frame by frame).
    let dsts = [B, C, Mac::BROADCAST.0];
    for s in 0..21u8 {
        assert!(r.ports[0].1.inject(&tagged(dsts[s as usize % 3], s)));
    }
    r.worker.poll_once();
    let to2: Vec<u8> = (0..21).filter(|s| s % 3 != 1).collect();
    let to3: Vec<u8> = (0..21).filter(|s| s % 3 != 0).collect();
    assert_eq!(seqs(r.ports[1].1.drain()), to2, "B and broadcast, in order");
    assert_eq!(seqs(r.ports[2].1.drain()), to3, "C and broadcast, in order");
    assert_eq!((r.got(1), r.got(4)), (0, 0));
}
