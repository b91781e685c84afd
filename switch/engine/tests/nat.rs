//! The gateway stage through the real worker loop on in-memory ports: SNAT
//! out and back with checksums verified by smoltcp from scratch, a full
//! conntrack table (new flows refused and counted, established ones still
//! pass), and a published port (DNAT).
use std::sync::Arc;
use vswitch_engine::clock::{Clock, ManualClock};
use vswitch_engine::memport::{MemPort, MemPortHandle};
use vswitch_engine::port::PortCaps;
use vswitch_engine::stats::{DropReason, PortStats};
use vswitch_engine::tables::{
    L3View, NetworkView, PortView, Prefix, Published, Route, Snapshot, Tables, UplinkView,
};
use vswitch_engine::wire::mac::Mac;
use vswitch_engine::worker::{self, IdleMode, Worker, WorkerConfig};

mod common;
use common::{check, tcp_frame};
use smoltcp::wire::Ipv4Address;

const GW_MAC: Mac = Mac(0x0200_0000_0001);
const C1_MAC: Mac = Mac(0x0200_0000_0a02);
const UP_MAC: Mac = Mac(0x0200_0000_00fe);
const NH_MAC: Mac = Mac(0x0200_0000_00ff);
const C1: [u8; 4] = [10, 0, 0, 2];
const SNAT: [u8; 4] = [192, 168, 0, 1];
const REMOTE: [u8; 4] = [198, 18, 0, 9];
const NEXT_HOP: [u8; 4] = [192, 168, 0, 254];

struct Rig {
    worker: Worker,
    tables: Arc<Tables>,
    c1: MemPortHandle,
    up: MemPortHandle,
    c1_stats: Arc<PortStats>,
}

fn ip(a: [u8; 4]) -> u32 {
    u32::from_be_bytes(a)
}

fn rig(max_flows: usize) -> Rig {
    let tables = Arc::new(Tables::with_conntrack(4096, max_flows));
    tables.fdb.set_limit(0, 100);
    let shared = worker::shared_on_memory(1);
    let (ev_tx, _ev) = crossbeam::channel::unbounded();
    let (_cmd, cmd_rx) = crossbeam::channel::unbounded();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
    let mut worker = Worker::new(
        WorkerConfig {
            id: 0,
            core: None,
            idle: IdleMode::Busy,
        },
        tables.clone(),
        shared,
        clock,
        ev_tx,
        cmd_rx,
    );
    let caps = PortCaps {
        csum: false,
        tso: false,
        max_frame: 1514,
    };
    let (p1, c1) = MemPort::new("c1", 256, caps);
    let (p2, up) = MemPort::new("up", 256, caps);
    worker.add_port(1, Box::new(p1));
    worker.add_port(2, Box::new(p2));
    let c1_stats = Arc::new(PortStats::default());
    let view = |id, net, stats: Arc<PortStats>| {
        Some(PortView {
            id,
            name: format!("p{id}"),
            net,
            worker: 0,
            caps,
            stats,
        })
    };
    tables.publish(Snapshot {
        ports: vec![
            None,
            view(1, Some(0), c1_stats.clone()),
            view(2, None, Arc::new(PortStats::default())),
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
            local_ips: vec![ip(SNAT)],
            routes: vec![Route {
                dst: Prefix { addr: 0, len: 0 },
                via: Some(ip(NEXT_HOP)),
            }],
            neigh: [(ip(NEXT_HOP), NH_MAC)].into_iter().collect(),
            snat_ports: (20000, 20009),
            vtep_ip: 0,
            mtu: 1500,
        }),
        published: [(
            (6u8, 8080u16),
            Published {
                host_ip: None,
                net: 0,
                ip: ip(C1),
                port: 80,
                worker: 0,
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    });
    Rig {
        worker,
        tables,
        c1,
        up,
        c1_stats,
    }
}

#[test]
fn snat_out_and_back_with_valid_checksums() {
    let mut r = rig(100);
    r.c1.inject(&tcp_frame(GW_MAC, C1_MAC, C1, 40000, REMOTE, 80, true, b""));
    r.worker.poll_once();
    let out = r.up.drain();
    assert_eq!(out.len(), 1);
    let (dm, sm, src, sport, dst, dport, ttl) = check(out[0].data());
    assert_eq!((dm, sm), (NH_MAC, UP_MAC), "addressed to the next hop");
    assert_eq!(src, Ipv4Address::from(SNAT));
    assert!((20000..=20009).contains(&sport));
    assert_eq!((dst, dport, ttl), (Ipv4Address::from(REMOTE), 80, 63));

    // The reply comes back to the container.
    r.up.inject(&tcp_frame(
        UP_MAC, NH_MAC, REMOTE, 80, SNAT, sport, false, b"hi",
    ));
    r.worker.poll_once();
    let back = r.c1.drain();
    assert_eq!(back.len(), 1);
    let (dm, sm, src, sp, dst, dp, _) = check(back[0].data());
    assert_eq!((dm, sm), (C1_MAC, GW_MAC));
    assert_eq!((src, sp), (Ipv4Address::from(REMOTE), 80));
    assert_eq!((dst, dp), (Ipv4Address::from(C1), 40000));

    // Traffic for the host (no flow) is left to the kernel, counted.
    r.up.inject(&tcp_frame(UP_MAC, NH_MAC, REMOTE, 80, SNAT, 22, false, b""));
    r.worker.poll_once();
    assert!(r.c1.drain().is_empty());
}

#[test]
fn full_table_refuses_new_flows_and_keeps_old_ones() {
    let mut r = rig(2);
    for sport in [1000, 1001] {
        r.c1.inject(&tcp_frame(GW_MAC, C1_MAC, C1, sport, REMOTE, 80, true, b""));
    }
    r.worker.poll_once();
    assert_eq!(r.up.drain().len(), 2);
    r.c1.inject(&tcp_frame(GW_MAC, C1_MAC, C1, 1002, REMOTE, 80, true, b""));
    r.worker.poll_once();
    assert!(r.up.drain().is_empty(), "a third flow must not pass");
    assert_eq!(r.c1_stats.drops_of(DropReason::CtFull), 1);
    assert_eq!(
        r.tables
            .ct
            .stats
            .full
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Established flows still pass.
    r.c1.inject(&tcp_frame(
        GW_MAC, C1_MAC, C1, 1000, REMOTE, 80, false, b"data",
    ));
    r.worker.poll_once();
    assert_eq!(r.up.drain().len(), 1);
}

#[test]
fn ports_run_out_per_destination_only() {
    // 10 SNAT ports: the 11th flow to the same destination is refused,
    // a flow to another destination still gets a port.
    let mut r = rig(100);
    for sport in 0..11u16 {
        r.c1.inject(&tcp_frame(
            GW_MAC,
            C1_MAC,
            C1,
            3000 + sport,
            REMOTE,
            80,
            true,
            b"",
        ));
    }
    r.worker.poll_once();
    assert_eq!(r.up.drain().len(), 10);
    assert_eq!(r.c1_stats.drops_of(DropReason::NatPortsExhausted), 1);
    r.c1.inject(&tcp_frame(
        GW_MAC,
        C1_MAC,
        C1,
        4000,
        [198, 18, 0, 10],
        80,
        true,
        b"",
    ));
    r.worker.poll_once();
    assert_eq!(r.up.drain().len(), 1);
}

#[test]
fn published_port_reaches_the_container() {
    let mut r = rig(100);
    r.up.inject(&tcp_frame(
        UP_MAC, NH_MAC, REMOTE, 5555, SNAT, 8080, true, b"",
    ));
    r.worker.poll_once();
    let got = r.c1.drain();
    assert_eq!(got.len(), 1);
    let (dm, _, src, sp, dst, dp, _) = check(got[0].data());
    assert_eq!(dm, C1_MAC);
    assert_eq!((src, sp), (Ipv4Address::from(REMOTE), 5555));
    assert_eq!((dst, dp), (Ipv4Address::from(C1), 80));
    // The container's answer leaves from the host's address and port.
    r.c1.inject(&tcp_frame(
        GW_MAC, C1_MAC, C1, 80, REMOTE, 5555, false, b"ok",
    ));
    r.worker.poll_once();
    let out = r.up.drain();
    assert_eq!(out.len(), 1);
    let (_, _, src, sp, dst, dp, _) = check(out[0].data());
    assert_eq!((src, sp), (Ipv4Address::from(SNAT), 8080));
    assert_eq!((dst, dp), (Ipv4Address::from(REMOTE), 5555));
}

/// One batch whose frames alternate between destinations behind the default
/// gateway, on the uplink's own subnet and behind a second gateway: each
/// leaves addressed to its own next hop (the gateway stage keeps one L2
/// decision per batch, keyed by next hop; a wrong key would reuse another
/// frame's MAC).
#[test]
fn each_frame_of_a_batch_goes_to_its_own_next_hop() {
    const DIRECT: [u8; 4] = [192, 168, 0, 7];
    const DIRECT_MAC: Mac = Mac(0x0200_0000_0007);
    const FAR: [u8; 4] = [203, 0, 113, 5];
    const GW2: [u8; 4] = [192, 168, 0, 253];
    const GW2_MAC: Mac = Mac(0x0200_0000_00fd);
    let mut r = rig(100);
    let mut snap = (*r.tables.snap.load_full()).clone();
    let up = snap.uplink.as_mut().unwrap();
    up.routes = vec![
        Route {
            dst: Prefix {
                addr: ip([203, 0, 113, 0]),
                len: 24,
            },
            via: Some(ip(GW2)),
        },
        Route {
            dst: Prefix {
                addr: ip([192, 168, 0, 0]),
                len: 24,
            },
            via: None,
        },
        Route {
            dst: Prefix { addr: 0, len: 0 },
            via: Some(ip(NEXT_HOP)),
        },
    ];
    up.neigh = [
        (ip(NEXT_HOP), NH_MAC),
        (ip(DIRECT), DIRECT_MAC),
        (ip(GW2), GW2_MAC),
    ]
    .into_iter()
    .collect();
    r.tables.publish(snap);
    let dsts = [REMOTE, REMOTE, DIRECT, FAR, REMOTE, FAR, DIRECT, DIRECT];
    for (i, d) in dsts.iter().enumerate() {
        let f = tcp_frame(GW_MAC, C1_MAC, C1, 41000 + i as u16, *d, 80, true, b"");
        assert!(r.c1.inject(&f));
    }
    r.worker.poll_once();
    let out = r.up.drain();
    assert_eq!(out.len(), dsts.len(), "every frame leaves on the uplink");
    for (p, d) in out.iter().zip(dsts) {
        let (dm, sm, _, _, dst, _, _) = check(p.data());
        let want = match d {
            REMOTE => NH_MAC,
            DIRECT => DIRECT_MAC,
            _ => GW2_MAC,
        };
        assert_eq!((dst, dm, sm), (Ipv4Address::from(d), want, UP_MAC));
    }
}
