//! VXLAN on memory: the cycles to encapsulate a 64-byte frame for a remote
//! VTEP (classify, learn, forward to the remote "port", outer headers) and
//! to decapsulate one from the uplink (parse, checks, learn, forward to the
//! local port). Batches of 32, one flow, median of trials.
use crate::pipeline::Rig;
use std::sync::Arc;
use std::time::Instant;
use vswitch_engine::fdb::NetId;
use vswitch_engine::packet::Packet;
use vswitch_engine::pipeline::vxlan::REMOTE_BASE;
use vswitch_engine::pipeline::{Pipeline, BATCH};
use vswitch_engine::tables::{
    NetworkView, OverlayView, Prefix, Route, Snapshot, Tables, UplinkView,
};
use vswitch_engine::wire::checksum;
use vswitch_engine::wire::mac::Mac;

const NET: NetId = 0;
const LOCAL: Mac = Mac(0x0200_0000_0001);
const REMOTE: Mac = Mac(0x0200_0000_0002);
const UP_MAC: Mac = Mac(0x0200_0000_00fe);
const PEER_MAC: Mac = Mac(0x0200_0000_00ff);
const VTEP: u32 = 0xc0a8_0001;
const PEER: u32 = 0xc0a8_0002;
const UPLINK: u16 = 3;

fn tables() -> (Arc<Tables>, Arc<Snapshot>) {
    let t = Arc::new(Tables::new(1 << 12));
    t.fdb.set_limit(NET, 1000);
    let port = crate::port_view;
    t.publish(Snapshot {
        ports: vec![
            None,
            port(1, Some(NET)),
            port(2, Some(NET)),
            port(UPLINK, None),
        ],
        networks: vec![Some(NetworkView {
            id: NET,
            name: "ov".into(),
            ports: vec![1, 2],
            l3: None,
            overlay: Some(OverlayView {
                vni: 100,
                peers: vec![REMOTE_BASE],
                learning: true,
                ttl: 64,
                df: false,
                arp: Default::default(),
            }),
        })],
        uplink: Some(UplinkView {
            port: UPLINK,
            mac: UP_MAC,
            snat_ip: VTEP,
            snat_ip_is_local: true,
            local_ips: vec![VTEP],
            routes: vec![Route {
                dst: Prefix {
                    addr: 0xc0a8_0000,
                    len: 24,
                },
                via: None,
            }],
            neigh: [(PEER, PEER_MAC)].into_iter().collect(),
            snat_ports: (61000, 65535),
            vtep_ip: VTEP,
            mtu: 1500,
        }),
        vteps: vec![PEER],
        vtep_index: [(PEER, 0u16)].into_iter().collect(),
        vni_nets: [(100u32, NET)].into_iter().collect(),
        ..Default::default()
    });
    let snap = t.snap.load_full();
    (t, snap)
}

fn inner(dst: Mac, src: Mac) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&dst.bytes());
    f[6..12].copy_from_slice(&src.bytes());
    f[12] = 0x08;
    f[14] = 0x45;
    f
}

fn outer(inner: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 50];
    f[0..6].copy_from_slice(&UP_MAC.bytes());
    f[6..12].copy_from_slice(&PEER_MAC.bytes());
    f[12] = 0x08;
    f[14] = 0x45;
    let tot = (20 + 8 + 8 + inner.len()) as u16;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&PEER.to_be_bytes());
    f[30..34].copy_from_slice(&VTEP.to_be_bytes());
    let c = checksum::finish(0, &f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&50000u16.to_be_bytes());
    f[36..38].copy_from_slice(&4789u16.to_be_bytes());
    f[38..40].copy_from_slice(&((8 + 8 + inner.len()) as u16).to_be_bytes());
    f[42] = 0x08;
    f[46..49].copy_from_slice(&[0, 0, 100]);
    f.extend_from_slice(inner);
    f
}

/// (ns per packet) for `batches` batches; `decap`: frames come in on the
/// uplink, else from a local port toward the remote VTEP.
fn case(decap: bool, batches: usize) -> f64 {
    let (t, snap) = tables();
    t.fdb.learn(NET, REMOTE, REMOTE_BASE, 0);
    t.fdb.learn(NET, LOCAL, 2, 0);
    let template = if decap {
        outer(&inner(LOCAL, REMOTE))
    } else {
        inner(REMOTE, LOCAL)
    };
    let (in_port, out_port) = if decap { (UPLINK, 2) } else { (1, UPLINK) };
    let mut rig = Rig::new(Pipeline::default());
    let mut batch: Vec<Packet> = (0..BATCH).map(|_| Packet::from_slice(&template)).collect();
    let mut sent = 0u64;
    let start = Instant::now();
    for _ in 0..batches {
        for p in batch.iter_mut() {
            p.rx_space()[..template.len()].copy_from_slice(&template);
            p.set_len(template.len());
        }
        sent += rig.pass(&t, &snap, in_port, 0, &mut batch, Some(out_port));
    }
    let ns = start.elapsed().as_nanos() as f64 / (batches * BATCH) as f64;
    assert_eq!(
        sent,
        (batches * BATCH) as u64,
        "every frame must get through"
    );
    ns
}

/// Prints the table and one JSON line per case.
pub fn run(batches: usize) {
    const TRIALS: usize = 5;
    let mhz = crate::cpu_mhz();
    println!("VXLAN pipeline on memory: 64-byte inner frames, batches of {BATCH}, median of {TRIALS} trials");
    println!(
        "{:<8} {:>8} {:>11} {:>11}",
        "case", "Mpps", "ns/packet", "cycles/pkt"
    );
    for (name, decap) in [("encap", false), ("decap", true)] {
        let mut trials: Vec<f64> = (0..TRIALS).map(|_| case(decap, batches / TRIALS)).collect();
        trials.sort_by(f64::total_cmp);
        let ns = trials[TRIALS / 2];
        let cycles = ns * mhz / 1000.0;
        println!(
            "{:<8} {:>8.2} {:>11.1} {:>11.1}",
            name,
            1000.0 / ns,
            ns,
            cycles
        );
        println!(
            "JSON {}",
            serde_json::json!({"case": format!("pipeline_vxlan_{name}"), "mpps": 1000.0 / ns, "ns_per_packet": ns, "cycles_per_packet": cycles, "mhz": mhz})
        );
    }
}
