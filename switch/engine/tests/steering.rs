//! Two workers, each with its own connection table: the uplink on worker 0,
//! a container's port on worker 1. The container's flows live in worker 1's
//! table alone; what arrives for them on the uplink (SNAT replies, a
//! published port's connections) is handed to worker 1; a reply to a NAT
//! port held for a flow being taken over is dropped and counted, not left
//! to the host; control's listing and removal run in the workers.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vswitch_engine::clock::{Clock, ManualClock};
use vswitch_engine::conntrack::PROTO_TCP;
use vswitch_engine::memport::{MemPort, MemPortHandle};
use vswitch_engine::port::PortCaps;
use vswitch_engine::stats::{DropReason, PortStats};
use vswitch_engine::tables::{
    L3View, NetworkView, PortView, Prefix, Published, Route, Snapshot, Tables, UplinkView,
};
use vswitch_engine::wire::mac::Mac;
use vswitch_engine::worker::{self, Command, IdleMode, Worker, WorkerConfig, WorkerShared};

mod common;
use common::{check, tcp_frame};
use crossbeam::channel::Sender;
use smoltcp::wire::Ipv4Address;

const GW_MAC: Mac = Mac(0x0200_0000_0001);
const C1_MAC: Mac = Mac(0x0200_0000_0a02);
const UP_MAC: Mac = Mac(0x0200_0000_00fe);
const NH_MAC: Mac = Mac(0x0200_0000_00ff);
const C1: [u8; 4] = [10, 0, 0, 2];
const SNAT: [u8; 4] = [192, 168, 0, 1];
const REMOTE: [u8; 4] = [198, 18, 0, 9];
const NEXT_HOP: [u8; 4] = [192, 168, 0, 254];
/// The SNAT range: worker 0's block is 20000–20004, worker 1's 20005–20009.
const RANGE: (u16, u16) = (20000, 20009);

fn ip(a: [u8; 4]) -> u32 {
    u32::from_be_bytes(a)
}

struct Rig {
    w: [Worker; 2],
    cmd: [Sender<Command>; 2],
    shared: Arc<[Arc<WorkerShared>]>,
    tables: Arc<Tables>,
    c1: MemPortHandle,
    up: MemPortHandle,
    up_stats: Arc<PortStats>,
}

impl Rig {
    /// Runs both workers until neither has anything left to do.
    fn settle(&mut self) {
        for _ in 0..8 {
            let a = self.w[0].poll_once();
            let b = self.w[1].poll_once();
            if a + b == 0 {
                return;
            }
        }
    }
}

fn rig() -> Rig {
    let tables = Arc::new(Tables::with_conntrack(4096, 100));
    tables.fdb.set_limit(0, 100);
    let shared = worker::shared_on_memory(2);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
    let (ev_tx, _ev) = crossbeam::channel::unbounded();
    let mk = |id| {
        let (tx, rx) = crossbeam::channel::unbounded();
        let w = Worker::new(
            WorkerConfig {
                id,
                core: None,
                idle: IdleMode::Busy,
            },
            tables.clone(),
            shared.clone(),
            clock.clone(),
            ev_tx.clone(),
            rx,
        );
        (w, tx)
    };
    let (mut w0, tx0) = mk(0);
    let (mut w1, tx1) = mk(1);
    let caps = PortCaps {
        csum: false,
        tso: false,
        max_frame: 1514,
    };
    let (p1, c1) = MemPort::new("c1", 256, caps);
    let (p2, up) = MemPort::new("up", 256, caps);
    w1.add_port(1, Box::new(p1));
    w0.add_port(2, Box::new(p2));
    let up_stats = Arc::new(PortStats::default());
    let view = |id, net, worker, stats: Arc<PortStats>| {
        Some(PortView {
            id,
            name: format!("p{id}"),
            net,
            worker,
            caps,
            stats,
        })
    };
    tables.publish(Snapshot {
        ports: vec![
            None,
            view(1, Some(0), 1, Arc::new(PortStats::default())),
            view(2, None, 0, up_stats.clone()),
        ],
        networks: vec![Some(NetworkView {
            id: 0,
            name: "n".into(),
            ports: vec![1],
            l3: Some(L3View {
                subnet: Prefix {
                    addr: ip([10, 0, 0, 0]),
                    len: 24,
                },
                gw_ip: ip([10, 0, 0, 1]),
                gw_mac: GW_MAC,
                internal: false,
                no_icc: false,
                host_port: None,
                hosts: [(ip(C1), C1_MAC)].into_iter().collect(),
            }),
            overlay: None,
        })],
        uplink: Some(UplinkView {
            port: 2,
            mac: UP_MAC,
            snat_ip: ip(SNAT),
            snat_ip_is_local: true,
            local_ips: vec![],
            routes: vec![Route {
                dst: Prefix { addr: 0, len: 0 },
                via: Some(ip(NEXT_HOP)),
            }],
            neigh: [(ip(NEXT_HOP), NH_MAC)].into_iter().collect(),
            snat_ports: RANGE,
            vtep_ip: 0,
            mtu: 1500,
        }),
        published: [(
            (PROTO_TCP, 8080u16),
            Published {
                host_ip: None,
                net: 0,
                ip: ip(C1),
                port: 80,
                worker: 1,
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    });
    Rig {
        w: [w0, w1],
        cmd: [tx0, tx1],
        shared,
        tables,
        c1,
        up,
        up_stats,
    }
}

fn flows_of(r: &mut Rig, w: usize) -> usize {
    let (tx, rx) = crossbeam::channel::bounded(1);
    r.cmd[w].send(Command::Flows { reply: tx }).unwrap();
    r.settle();
    rx.try_recv()
        .expect("the worker lists its flows")
        .flows
        .len()
}

#[test]
fn flows_live_with_the_containers_worker_and_uplink_packets_are_handed_to_it() {
    let mut r = rig();
    // SNAT: out from worker 1, through worker 0's uplink.
    r.c1.inject(&tcp_frame(GW_MAC, C1_MAC, C1, 40000, REMOTE, 80, true, b""));
    r.settle();
    let out = r.up.drain();
    assert_eq!(out.len(), 1);
    let (_, _, src, sport, ..) = check(out[0].data());
    assert_eq!(src, Ipv4Address::from(SNAT));
    assert!(
        (20005..=20009).contains(&sport),
        "worker 1 translates into its own block: {sport}"
    );
    // The reply arrives on worker 0, which hands it to worker 1.
    r.up.inject(&tcp_frame(
        UP_MAC, NH_MAC, REMOTE, 80, SNAT, sport, false, b"hi",
    ));
    r.settle();
    let back = r.c1.drain();
    assert_eq!(back.len(), 1, "the reply reaches the container");
    let (_, _, src, sp, dst, dp, _) = check(back[0].data());
    assert_eq!((src, sp), (Ipv4Address::from(REMOTE), 80));
    assert_eq!((dst, dp), (Ipv4Address::from(C1), 40000));
    assert_eq!(r.shared[0].handed_over.load(Ordering::Relaxed), 1);
    assert_eq!(r.shared[1].handed_in.load(Ordering::Relaxed), 1);

    // A published port: the connection arrives on worker 0 and is made on
    // worker 1; the container's answer leaves from there.
    r.up.inject(&tcp_frame(
        UP_MAC, NH_MAC, REMOTE, 5555, SNAT, 8080, true, b"",
    ));
    r.settle();
    let inb = r.c1.drain();
    assert_eq!(inb.len(), 1);
    let (_, _, _, _, dst, dp, _) = check(inb[0].data());
    assert_eq!((dst, dp), (Ipv4Address::from(C1), 80));
    r.c1.inject(&tcp_frame(GW_MAC, C1_MAC, C1, 80, REMOTE, 5555, false, b""));
    r.settle();
    let ans = r.up.drain();
    assert_eq!(ans.len(), 1);
    let (_, _, src, sp, ..) = check(ans[0].data());
    assert_eq!((src, sp), (Ipv4Address::from(SNAT), 8080));

    // Both flows are worker 1's; worker 0's table is empty.
    assert_eq!(r.w[0].pipeline_mut().ct().len(), 0);
    assert_eq!(r.w[1].pipeline_mut().ct().len(), 2);
    assert_eq!(r.tables.ct.live(), 2);
    assert_eq!(flows_of(&mut r, 0), 0);
    assert_eq!(flows_of(&mut r, 1), 2);

    // Removal runs in the worker and gives the room back.
    let (tx, rx) = crossbeam::channel::bounded(1);
    r.cmd[1]
        .send(Command::RemoveFlows {
            pred: Box::new(|f| f.orig.dport == 8080),
            ack: tx,
        })
        .unwrap();
    r.settle();
    assert_eq!(rx.try_recv(), Ok(1));
    assert_eq!(r.w[1].pipeline_mut().ct().len(), 1);
    assert_eq!(r.tables.ct.live(), 1);
}

#[test]
fn a_reply_to_a_held_nat_port_is_dropped_and_counted_not_left_to_the_host() {
    let mut r = rig();
    r.tables.ct.ports.hold(PROTO_TCP, 20007);
    r.up.inject(&tcp_frame(
        UP_MAC, NH_MAC, REMOTE, 80, SNAT, 20007, false, b"",
    ));
    // Not held: no flow, the host's (left to the kernel).
    r.up.inject(&tcp_frame(
        UP_MAC, NH_MAC, REMOTE, 80, SNAT, 20008, false, b"",
    ));
    r.settle();
    assert_eq!(r.up_stats.drops_of(DropReason::NatPortHeld), 1);
    assert_eq!(r.up_stats.drops_of(DropReason::ToKernel), 1);
    assert!(r.c1.drain().is_empty());
    // Given to a worker, the port's replies go there again.
    r.tables.ct.ports.give(PROTO_TCP, 20007, 1);
    r.up.inject(&tcp_frame(
        UP_MAC, NH_MAC, REMOTE, 80, SNAT, 20007, false, b"",
    ));
    r.settle();
    assert_eq!(r.shared[0].handed_over.load(Ordering::Relaxed), 2);
    assert_eq!(r.up_stats.drops_of(DropReason::NatPortHeld), 1);
}
