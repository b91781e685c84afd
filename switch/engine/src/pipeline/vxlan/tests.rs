//! Encapsulation and decapsulation on memory.

use super::encap::{encap_gso, EncapCache};
use super::*;
use crate::packet::{Packet, PacketPool};
use crate::pipeline::offload::tests::{tcp_ok, tso_frame_mss};
use crate::pipeline::TxQueues;
use crate::port::PortId;
use crate::stats::DropReason;
use crate::tables::{OverlayView, UplinkView};
use crate::wire::checksum;
use crate::wire::mac::Mac;
use crate::wire::virtio::GsoKind;

const UPLINK: PortId = 1;
const VNI: u32 = 42;

/// An encapsulation template, built as [`EncapCache::get`] builds it.
fn cache() -> EncapCache {
    let ov = OverlayView {
        vni: VNI,
        peers: vec![REMOTE_BASE],
        learning: true,
        ttl: 64,
        df: true,
        arp: Default::default(),
    };
    let u = UplinkView {
        port: UPLINK,
        mac: Mac(0x0200_0000_00aa),
        snat_ip: 0xc0a8_0101,
        snat_ip_is_local: true,
        local_ips: vec![0xc0a8_0101],
        routes: Vec::new(),
        neigh: Default::default(),
        snat_ports: (10000, 59999),
        vtep_ip: 0xc0a8_0101,
        mtu: 1500,
    };
    let mut c = EncapCache::default();
    c.build(&ov, &u, 0xc0a8_0102, Mac(0x0200_0000_00bb));
    c
}

/// What the kernel's UDP GSO makes of a super-datagram: its UDP
/// payloads, `size` bytes each (the last may be shorter).
fn datagrams(d: &Packet) -> Vec<Vec<u8>> {
    let f = d.data();
    assert_eq!(checksum::finish(0, &f[14..34]), 0, "outer IPv4 checksum");
    assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, f.len() - 14);
    assert_eq!(u16::from_be_bytes([f[38], f[39]]) as usize, f.len() - 34);
    match d.meta.offload.gso {
        Some(g) => {
            assert_eq!(g.kind, GsoKind::UdpL4);
            f[42..]
                .chunks(g.size as usize)
                .map(<[u8]>::to_vec)
                .collect()
        }
        None => vec![f[42..].to_vec()],
    }
}

/// TSO frames become UDP GSO super-datagrams whose datagrams are VXLAN
/// packets carrying the frame's segments in order, each with valid
/// inner checksums, the sender's headers and the original payload.
#[test]
fn tso_to_udp_gso_super_datagrams() {
    for (payload, mss) in [(65000, 1398), (4000, 1398), (2797, 1398), (9000, 536)] {
        let p = tso_frame_mss(payload, true, mss);
        let orig = p.data().to_vec();
        let c = cache();
        let mut pool = PacketPool::default();
        let mut txq = TxQueues::default();
        let n = encap_gso(&p, &c, &mut pool, &mut txq);
        let q = std::mem::take(txq.queue(UPLINK));
        assert_eq!(n, Some(q.len()));
        let nseg = payload.div_ceil(mss as usize);
        let (mut seq, mut seen, mut got) = (1000u32, 0, Vec::new());
        for d in &q {
            for vx in datagrams(d) {
                assert_eq!(&vx[..8], &c.tmpl[42..50], "VXLAN header");
                let inner = &vx[8..];
                assert_eq!(&inner[..14], &orig[..14]);
                let (s, flags, n) = tcp_ok(inner);
                assert_eq!(s, seq);
                let id = u16::from_be_bytes([inner[18], inner[19]]);
                assert_eq!(id, u16::from_be_bytes([orig[18], orig[19]]) + seen as u16);
                seen += 1;
                assert_eq!(flags & 0x09 != 0, seen == nseg, "FIN/PSH only on the last");
                got.extend_from_slice(&inner[54..54 + n]);
                seq += n as u32;
            }
        }
        assert_eq!(seen, nseg);
        assert_eq!(got, orig[54..], "{payload}: payload intact, in order");
    }
}

/// A segment as large as TCP makes it under [`overlay_gso_max_size`]
/// (the GSO size less the kernel's header reserve, whole segments)
/// leaves as one super-datagram, for the usual overlay MTUs and MSS
/// with and without TCP timestamps.
#[test]
fn overlay_gso_size_fits_one_super_datagram() {
    for mtu in [576u32, 1280, 1400, 1450, 1500, 4000, 8950] {
        let Some(g) = overlay_gso_max_size(mtu) else {
            assert!(mtu >= 4000, "{mtu}: no GSO size");
            continue;
        };
        for mss in [mtu - 40, mtu - 52] {
            // tcp_tso_autosize: at most gso_max_size - 1 - MAX_TCP_HEADER
            // bytes (MAX_TCP_HEADER is 256 or more), in whole segments.
            let payload = (g as usize - 1 - 256) / mss as usize * mss as usize;
            let p = tso_frame_mss(payload, false, mss as u16);
            let mut pool = PacketPool::default();
            let mut txq = TxQueues::default();
            assert_eq!(
                encap_gso(&p, &cache(), &mut pool, &mut txq),
                Some(1),
                "MTU {mtu}, MSS {mss}: {payload} bytes of payload"
            );
        }
    }
}

/// A super-datagram from another vswitch becomes the one TSO frame it
/// was cut from; one whose packets mix flows is refused.
#[test]
fn super_datagram_coalesces_to_the_tso_frame() {
    let p = tso_frame_mss(60000, false, 1398);
    let orig = p.data().to_vec();
    let c = cache();
    let mut pool = PacketPool::default();
    let mut txq = TxQueues::default();
    encap_gso(&p, &c, &mut pool, &mut txq).unwrap();
    let q = std::mem::take(txq.queue(UPLINK));
    let mut at = 54;
    for mut r in q {
        assert!(coalesce(&mut r, 34).is_ok());
        r.pull_front(ENCAP_LEN).unwrap();
        let g = r.meta.offload.gso.unwrap();
        assert_eq!((g.kind, g.size), (GsoKind::Tcp4, 1398));
        let f = r.data().to_vec();
        let body = f.len() - 54;
        assert_eq!(&f[54..], &orig[at..at + body], "payload in order");
        let tot = u16::from_be_bytes([f[16], f[17]]) as usize;
        assert_eq!(tot, f.len() - 14, "inner IPv4 length");
        assert_eq!(checksum::finish(0, &f[14..34]), 0, "inner IPv4 checksum");
        // The TCP checksum is left partial (pseudo-header sum): complete it.
        let mut full = f.clone();
        assert!(checksum::complete_partial(&mut full, 34, 16));
        tcp_ok(&full);
        at += body;
    }
    assert_eq!(at, orig.len());

    // The second packet of a datagram belongs to another flow.
    let p = tso_frame_mss(4000, false, 1398);
    encap_gso(&p, &c, &mut pool, &mut txq).unwrap();
    let mut r = std::mem::take(txq.queue(UPLINK)).remove(0);
    let second = 42 + (8 + 54 + 1398);
    r.data_mut()[second + 8 + 34] ^= 1; // TCP source port
    assert_eq!(coalesce(&mut r, 34), Err(DropReason::VxlanMalformed));
}
