//! The NAT path on memory: 64-byte TCP segments of established SNAT flows,
//! from a container port through classify, learn, the gateway stage
//! (conntrack lookup under one lock per batch, address and port rewrite with
//! incremental checksums, TTL, next-hop MAC) to the uplink's queue.
//! With 1 flow and with 1,000,000 flows (a random walk over them), and the
//! memory each tracked flow takes.
use crate::pipeline::Rig;
use std::sync::Arc;
use std::time::Instant;
use vswitch_engine::conntrack::{CtTable, Side, State, TcpState, Tuple, PROTO_TCP};
use vswitch_engine::packet::Packet;
use vswitch_engine::pipeline::{Pipeline, BATCH};
use vswitch_engine::tables::{L3View, NetworkView, Prefix, Route, Snapshot, Tables, UplinkView};
use vswitch_engine::wire::checksum;
use vswitch_engine::wire::mac::Mac;

const GW_MAC: Mac = Mac(0x0200_0000_0001);
const CT_MAC: Mac = Mac(0x0200_0000_0002);
const UP_MAC: Mac = Mac(0x0200_0000_00fe);
const NH_MAC: Mac = Mac(0x0200_0000_00ff);
const SNAT_IP: u32 = 0xc0a8_0001; // 192.168.0.1
const NEXT_HOP: u32 = 0xc0a8_00fe;
const UPLINK: u16 = 3;

fn tables(flows: usize, file: Option<&std::path::Path>) -> (Arc<Tables>, Arc<Snapshot>, CtTable) {
    let t = Arc::new(Tables::with_conntrack(1 << 12, flows + 16));
    let ct = match file {
        // As the switch keeps it: entries in a file mapping (tmpfs) that a
        // restarted switch takes over.
        Some(path) => {
            let _ = std::fs::remove_file(path);
            let o = vswitch_io::flowfile::open(path, flows + 16, 1).expect("flow file");
            let mem = o.memory.into_iter().next().expect("one table");
            CtTable::with_memory(flows + 16, mem)
        }
        None => CtTable::with_max(flows + 16),
    };
    t.fdb.set_limit(0, 1000);
    let port = crate::port_view;
    t.publish(Snapshot {
        ports: vec![None, port(1, Some(0)), port(2, Some(0)), port(UPLINK, None)],
        networks: vec![Some(NetworkView {
            id: 0,
            name: "bench".into(),
            ports: vec![1, 2],
            l3: Some(L3View {
                subnet: Prefix {
                    addr: 0x0a00_0000,
                    len: 8,
                },
                gw_ip: 0x0a00_0001,
                gw_mac: GW_MAC,
                internal: false,
                no_icc: false,
                host_port: Some(2),
                hosts: Default::default(),
            }),
            overlay: None,
        })],
        uplink: Some(UplinkView {
            port: UPLINK,
            mac: UP_MAC,
            snat_ip: SNAT_IP,
            snat_ip_is_local: true,
            local_ips: vec![SNAT_IP],
            routes: vec![Route {
                dst: Prefix { addr: 0, len: 0 },
                via: Some(NEXT_HOP),
            }],
            neigh: [(NEXT_HOP, NH_MAC)].into_iter().collect(),
            snat_ports: (10000, 59999),
            vtep_ip: 0,
            mtu: 1500,
        }),
        ..Default::default()
    });
    let snap = t.snap.load_full();
    (t, snap, ct)
}

/// Flow `i`: container 10.x.y.z:port → 198.18.a.b:80, translated to
/// 192.168.0.1:(10000 + i % 50000).
fn orig(i: u32) -> Tuple {
    Tuple {
        src: 0x0a00_0002 + i / 50_000,
        dst: 0xc612_0000 + i / 50_000,
        sport: 1024 + (i % 50_000) as u16,
        dport: 80,
        proto: PROTO_TCP,
    }
}

fn reply(i: u32) -> Tuple {
    let o = orig(i);
    Tuple {
        src: o.dst,
        dst: SNAT_IP,
        sport: 80,
        dport: 10000 + (i % 50_000) as u16,
        proto: PROTO_TCP,
    }
}

fn frame(t: &Tuple) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&GW_MAC.bytes());
    f[6..12].copy_from_slice(&CT_MAC.bytes());
    f[12] = 0x08;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[12..16].copy_from_slice(&t.src.to_be_bytes());
    ip[16..20].copy_from_slice(&t.dst.to_be_bytes());
    let c = checksum::finish(0, ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&t.sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&t.dport.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x10; // ACK
    tcp[14] = 0xff;
    f
}

/// Returns (ns per packet, packets sent to the uplink, bytes per flow).
fn case(flows: u32, batches: usize, file: Option<&std::path::Path>) -> (f64, u64, usize) {
    let (t, snap, mut g) = tables(flows as usize, file);
    // As a worker does as it starts (vswitch_io::runtime::spawn).
    vswitch_io::hugepage::advise(&g.regions());
    {
        for i in 0..flows {
            g.create(
                orig(i),
                reply(i),
                Side::Container {
                    net: 0,
                    mac: CT_MAC,
                },
                Side::Uplink,
                State::Tcp(TcpState::Established),
                0,
            )
            .expect("flow fits");
        }
    }
    let bytes_per_flow = g.bytes_per_flow();
    let mut x = 0x9E37_79B9u64;
    let frames: Vec<[u8; 64]> = (0..(1 << 16))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            frame(&orig((x % flows as u64) as u32))
        })
        .collect();
    let mut rig = Rig::new(Pipeline::new(g));
    let mut batch: Vec<Packet> = (0..BATCH).map(|_| Packet::from_slice(&frames[0])).collect();
    let mut k = 0usize;
    let mut sent = 0u64;
    let start = Instant::now();
    for _ in 0..batches {
        for p in batch.iter_mut() {
            p.data_mut().copy_from_slice(&frames[k & 0xffff]);
            k += 1;
        }
        sent += rig.pass(&t, &snap, 1, 1, &mut batch, Some(UPLINK));
    }
    let ns = start.elapsed().as_nanos() as f64 / (batches * BATCH) as f64;
    (ns, sent, bytes_per_flow)
}

/// Expiry at the bound: `flows` ICMP flows fill the table, all idle past
/// their timeout; the worker's paced expiry (steps of 4,096 slots) removes
/// them, and after each step as many new flows take their room, until every
/// slot was visited once. Returns the steps' durations in µs (sorted) and
/// the share of full index buckets at the bound.
fn expiry_steps(flows: u32) -> (Vec<f64>, f64) {
    const STEP: usize = 4096;
    let mut g = CtTable::with_max(flows as usize);
    let side = Side::Uplink;
    for i in 0..flows {
        g.create(orig(i), reply(i), side, side, State::Icmp, 0)
            .expect("flow fits");
    }
    let (full, all) = g.full_buckets();
    let now = 31;
    let mut next = flows;
    let mut steps = Vec::new();
    for _ in 0..g.slots().div_ceil(STEP) {
        let t = Instant::now();
        let removed = g.expire(now, STEP);
        steps.push(t.elapsed().as_secs_f64() * 1e6);
        for _ in 0..removed {
            g.create(orig(next), reply(next), side, side, State::Icmp, now)
                .expect("room was freed");
            next += 1;
        }
    }
    assert_eq!(next, 2 * flows, "every flow expired and was replaced");
    steps.sort_by(f64::total_cmp);
    (steps, full as f64 / all as f64)
}

/// Prints the expiry steps' durations and one JSON line.
fn run_expiry(flows: u32) {
    let (steps, full) = expiry_steps(flows);
    let q = |p: f64| steps[((steps.len() - 1) as f64 * p) as usize];
    println!(
        "expiry at the bound, {flows} flows replaced in {} steps of 4,096 slots: median {:.0} µs, p99 {:.0} µs, max {:.0} µs; {:.1} % of index buckets full",
        steps.len(),
        q(0.5),
        q(0.99),
        q(1.0),
        full * 100.0
    );
    println!(
        "JSON {}",
        serde_json::json!({"case": format!("expiry_step_{flows}_flows"), "median_us": q(0.5), "p99_us": q(0.99), "max_us": q(1.0), "full_buckets": full})
    );
}

/// Prints the table and one JSON line per case (median of `TRIALS`).
/// `file`: keep the flow entries in a mapping of this file, as the switch
/// does (otherwise anonymous memory).
pub fn run(batches: usize, only: Option<u32>, file: Option<&std::path::Path>) {
    const TRIALS: usize = 5;
    let mhz = crate::cpu_mhz();
    let memory = file.map_or("anonymous memory".to_string(), |f| {
        format!("a mapping of {}", f.display())
    });
    println!("NAT pipeline on memory: established SNAT flows, 64-byte TCP, batches of {BATCH}, median of {TRIALS} trials; flow entries in {memory}");
    println!(
        "{:<10} {:>8} {:>11} {:>11} {:>14} {:>14}",
        "flows", "Mpps", "ns/packet", "cycles/pkt", "bytes/flow", "vs 1 flow"
    );
    let mut one = 0.0;
    for flows in [1u32, 1_000_000] {
        if only.is_some_and(|o| o != flows) {
            continue;
        }
        let mut trials: Vec<(f64, usize)> = (0..TRIALS)
            .map(|_| {
                let (ns, sent, bpf) = case(flows, batches / TRIALS, file);
                let expected = ((batches / TRIALS) * BATCH) as u64;
                assert_eq!(sent, expected, "every segment must reach the uplink");
                (ns, bpf)
            })
            .collect();
        trials.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ns, bpf) = trials[TRIALS / 2];
        let mpps = 1000.0 / ns;
        if flows == 1 {
            one = mpps;
        }
        let cycles = ns * mhz / 1000.0;
        println!(
            "{:<10} {:>8.2} {:>11.1} {:>11.1} {:>14} {:>13.2}x",
            flows,
            mpps,
            ns,
            cycles,
            bpf,
            mpps / one
        );
        println!(
            "JSON {}",
            serde_json::json!({"case": format!("pipeline_nat_{flows}_flows{}", if file.is_some() { "_flow_file" } else { "" }), "mpps": mpps, "ns_per_packet": ns, "cycles_per_packet": cycles, "bytes_per_flow": bpf, "ratio_vs_1_flow": mpps / one, "mhz": mhz})
        );
    }
    if file.is_none() && only.is_none_or(|o| o == 1_000_000) {
        run_expiry(1_000_000);
    }
}
