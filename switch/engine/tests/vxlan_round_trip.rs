//! VXLAN on memory, end to end: frames from a container on host A cross to
//! a container on host B through both hosts' whole pipelines (A's
//! encapsulation, B's uplink stage and decapsulation) and arrive as they
//! were sent; B learns A's container on A's VTEP, so its answer goes back
//! as unicast through the tunnel and arrives at A the same way.
use std::sync::Arc;
use vswitch_engine::packet::{Packet, PacketPool};
use vswitch_engine::pipeline::{vxlan, Ingress, Pipeline, Sinks, TxQueues};
use vswitch_engine::port::{PortCaps, PortId};
use vswitch_engine::stats::{BatchDrops, PortStats};
use vswitch_engine::tables::{
    NetworkView, OverlayView, PortView, Prefix, Route, Snapshot, Tables, UplinkView,
};
use vswitch_engine::wire::mac::Mac;
use vswitch_engine::wire::vxlan::VxlanPacket;

const LOCAL: PortId = 1;
const UPLINK: PortId = 2;
const VNI: u32 = 4242;
const A_IP: u32 = 0xc0a8_0101;
const B_IP: u32 = 0xc0a8_0102;
const A_UP: Mac = Mac(0x0200_0000_0a00);
const B_UP: Mac = Mac(0x0200_0000_0b00);
const A_C: Mac = Mac(0x0200_0000_0a01);
const B_C: Mac = Mac(0x0200_0000_0b01);

struct Host {
    tables: Tables,
    stats: Vec<Arc<PortStats>>,
    pipe: Pipeline,
    pool: PacketPool,
}

impl Host {
    fn new(me: u32, my_mac: Mac, peer: u32, peer_mac: Mac) -> Self {
        let stats: Vec<_> = (0..3).map(|_| Arc::new(PortStats::default())).collect();
        let caps = PortCaps {
            csum: true,
            tso: true,
            max_frame: 65535,
        };
        let view = |id: PortId, net: Option<u16>| {
            Some(PortView {
                id,
                name: format!("p{id}"),
                net,
                worker: 0,
                caps,
                stats: stats[id as usize].clone(),
            })
        };
        let snap = Snapshot {
            generation: 1,
            ports: vec![None, view(LOCAL, Some(0)), view(UPLINK, None)],
            networks: vec![Some(NetworkView {
                id: 0,
                name: "ov".into(),
                ports: vec![LOCAL],
                l3: None,
                overlay: Some(OverlayView {
                    vni: VNI,
                    peers: vec![vxlan::REMOTE_BASE],
                    learning: true,
                    ttl: 64,
                    df: true,
                    arp: Default::default(),
                }),
            })],
            uplink: Some(UplinkView {
                port: UPLINK,
                mac: my_mac,
                snat_ip: me,
                snat_ip_is_local: true,
                local_ips: vec![me],
                routes: vec![Route {
                    dst: Prefix {
                        addr: me & 0xffff_ff00,
                        len: 24,
                    },
                    via: None,
                }],
                neigh: [(peer, peer_mac)].into_iter().collect(),
                snat_ports: (61000, 65535),
                vtep_ip: me,
                mtu: 1500,
            }),
            published: Default::default(),
            vteps: vec![peer],
            vtep_index: [(peer, 0u16)].into_iter().collect(),
            vni_nets: [(VNI, 0u16)].into_iter().collect(),
        };
        let tables = Tables::new(1024);
        tables.publish(snap);
        Self {
            tables,
            stats,
            pipe: Pipeline::default(),
            pool: PacketPool::default(),
        }
    }

    /// Runs `frames` received on `port` through the pipeline; returns what
    /// each output port got.
    fn run(&mut self, port: PortId, frames: Vec<Vec<u8>>) -> TxQueues {
        let snap = self.tables.snap.load_full();
        let mut batch: Vec<Packet> = frames.iter().map(|f| Packet::from_slice(f)).collect();
        let mut txq = TxQueues::default();
        let mut drops = BatchDrops::default();
        self.pipe.run(
            &self.tables,
            &snap,
            Ingress::Port(port),
            1,
            &mut batch,
            Sinks::new(&mut self.pool, &mut txq, &mut drops),
        );
        drops.flush(&self.stats[port as usize]);
        txq
    }
}

/// An Ethernet frame with an IPv4/UDP payload of `n` bytes.
fn frame(dst: Mac, src: Mac, n: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.bytes());
    f.extend_from_slice(&src.bytes());
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&((28 + n) as u16).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
    f.extend_from_slice(&((8 + n) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..n).map(|i| i as u8));
    f
}

fn taken(q: &mut TxQueues, port: PortId) -> Vec<Vec<u8>> {
    std::mem::take(q.queue(port))
        .iter()
        .map(|p| p.data().to_vec())
        .collect()
}

#[test]
fn frames_cross_two_hosts_and_come_back() {
    let mut a = Host::new(A_IP, A_UP, B_IP, B_UP);
    let mut b = Host::new(B_IP, B_UP, A_IP, A_UP);
    // A's container sends to B's, not yet learned anywhere: flooded, so
    // one copy to A's peer (B), none back to A's own port.
    let sent: Vec<Vec<u8>> = [18, 200, 1400]
        .into_iter()
        .map(|n| frame(B_C, A_C, n))
        .collect();
    let mut q = a.run(LOCAL, sent.clone());
    assert!(q.queue(LOCAL).is_empty());
    let wire = taken(&mut q, UPLINK);
    assert_eq!(wire.len(), sent.len());
    for (w, s) in wire.iter().zip(&sent) {
        // Outer headers: A's uplink to B's, UDP to 4789, the VNI.
        assert_eq!(&w[..6], &B_UP.bytes());
        assert_eq!(&w[6..12], &A_UP.bytes());
        assert_eq!(u32::from_be_bytes(w[26..30].try_into().unwrap()), A_IP);
        assert_eq!(u32::from_be_bytes(w[30..34].try_into().unwrap()), B_IP);
        assert_eq!(u16::from_be_bytes([w[36], w[37]]), vxlan::VXLAN_PORT);
        let vx = VxlanPacket::new_checked(&w[42..]).unwrap();
        assert!(vx.is_valid());
        assert_eq!(vx.vni(), VNI);
        assert_eq!(vx.payload(), &s[..], "the inner frame as sent");
    }
    // B decapsulates: its container gets the frames as A's sent them
    // (flooded: B_C is not learned on B either), nothing goes back out.
    let mut q = b.run(UPLINK, wire);
    assert_eq!(taken(&mut q, LOCAL), sent);
    assert!(q.queue(UPLINK).is_empty(), "split horizon");
    // B learned A's container on A's VTEP: the answer is a unicast into
    // the tunnel, and A hands it to its container as sent.
    let answer = vec![frame(A_C, B_C, 64)];
    let mut q = b.run(LOCAL, answer.clone());
    let wire = taken(&mut q, UPLINK);
    assert_eq!(wire.len(), 1, "unicast to the one VTEP that has A_C");
    let mut q = a.run(UPLINK, wire);
    assert_eq!(taken(&mut q, LOCAL), answer);
    // Both hosts learned the other's container on the tunnel.
    assert_eq!(a.tables.fdb.lookup(0, B_C), Some(vxlan::REMOTE_BASE));
    assert_eq!(b.tables.fdb.lookup(0, A_C), Some(vxlan::REMOTE_BASE));
}

/// A tunnel packet from a VTEP that is not a peer of the network, or for
/// an unknown VNI, is refused and counted, never delivered.
#[test]
fn a_stranger_or_an_unknown_vni_is_refused() {
    let mut a = Host::new(A_IP, A_UP, B_IP, B_UP);
    let mut b = Host::new(B_IP, B_UP, A_IP, A_UP);
    let mut q = a.run(LOCAL, vec![frame(B_C, A_C, 64)]);
    let good = taken(&mut q, UPLINK).remove(0);
    let mut wrong_vni = good.clone();
    VxlanPacket::new_unchecked(&mut wrong_vni[42..]).init(VNI + 1);
    let mut stranger = good.clone();
    stranger[29] = 0x99; // outer source 192.168.1.153
    let c = {
        stranger[24] = 0;
        stranger[25] = 0;
        let mut s = 0u32;
        for w in stranger[14..34].chunks(2) {
            s += u16::from_be_bytes([w[0], w[1]]) as u32;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    };
    stranger[24..26].copy_from_slice(&c.to_be_bytes());
    let mut q = b.run(UPLINK, vec![wrong_vni, stranger]);
    assert!(q.queue(LOCAL).is_empty());
    use vswitch_engine::stats::DropReason;
    let s = &b.stats[UPLINK as usize];
    assert_eq!(s.drops_of(DropReason::VxlanUnknownVni), 1);
    assert_eq!(s.drops_of(DropReason::VxlanUnknownVtep), 1);
}
