//! Encapsulation: a frame for a remote VTEP gets the outer Ethernet, IPv4,
//! UDP and VXLAN headers in its headroom, from a template built once per
//! remote and snapshot; TSO frames leave as UDP GSO super-datagrams.
use super::{ENCAP_LEN, MAX_SUPER_PAYLOAD, REMOTE_BASE, VXLAN_PORT};
use crate::fdb::NetId;
use crate::packet::{Packet, PacketPool};
use crate::pipeline::{offload, Out, TxQueues};
use crate::port::PortId;
use crate::stats::{BatchDrops, DropReason};
use crate::tables::{NetworkView, OverlayView, Snapshot, Tables, UplinkView};
use crate::wire::checksum;
use crate::wire::mac::Mac;
use crate::wire::vxlan::VxlanPacket;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Address, Ipv4Packet,
    UdpPacket,
};

/// Entropy for the outer UDP source port: a hash of the inner addresses and
/// ports (RFC 7348 section 5), in 49152..=65535.
#[inline]
fn flow_port(inner: &[u8]) -> u16 {
    let w64 = |a: usize| {
        inner
            .get(a..a + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let w32 = |a: usize| {
        inner
            .get(a..a + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes) as u64
    };
    // MACs, then (IPv4) the address pair and the first L4 word.
    let mut k = w64(0) ^ (w32(8) << 29);
    k = k.rotate_left(23) ^ w64(26) ^ (w32(34) << 17);
    49152 + (crate::hash::mix_half(k) % 16384) as u16
}

/// The outer headers for one remote VTEP, built once and reused while the
/// snapshot stays the same: per packet only the lengths, the IPv4 checksum
/// (updated incrementally from the template's) and the source port change.
#[derive(Debug)]
pub struct EncapCache {
    key: Option<(u64, PortId, NetId)>,
    pub(super) tmpl: [u8; ENCAP_LEN],
    ip_csum: u16,
    uplink: PortId,
    /// Largest inner frame that fits the underlay (uplink MTU - 36).
    max_inner: usize,
}

impl Default for EncapCache {
    fn default() -> Self {
        Self {
            key: None,
            tmpl: [0; ENCAP_LEN],
            ip_csum: 0,
            uplink: 0,
            max_inner: 0,
        }
    }
}

impl EncapCache {
    /// The template for `remote` in network `nv`, (re)built when needed;
    /// `Err` with the reason when the frame cannot leave.
    fn get(
        &mut self,
        nv: &NetworkView,
        remote: PortId,
        snap: &Snapshot,
        tables: &Tables,
    ) -> Result<&Self, DropReason> {
        let key = (snap.generation, remote, nv.id);
        if self.key == Some(key) {
            return Ok(self);
        }
        let (Some(ov), Some(u)) = (nv.overlay.as_ref(), snap.uplink.as_ref()) else {
            return Err(DropReason::NoRoute);
        };
        let Some(&remote_ip) = snap.vteps.get((remote - REMOTE_BASE) as usize) else {
            return Err(DropReason::NoRoute);
        };
        let nh_mac = tables.next_hop_mac(u, remote_ip)?;
        self.build(ov, u, remote_ip, nh_mac);
        self.key = Some(key);
        Ok(self)
    }

    /// Builds the template for `remote_ip`, reached through `nh_mac`.
    pub(super) fn build(&mut self, ov: &OverlayView, u: &UplinkView, remote_ip: u32, nh_mac: Mac) {
        let mut t = [0u8; ENCAP_LEN];
        outer_headers(&mut t[..42], ov, u, remote_ip, nh_mac, 0, 0);
        // The checksum as if the total length were 0: patched per packet.
        let mut ip = Ipv4Packet::new_unchecked(&mut t[14..34]);
        ip.set_total_len(0);
        ip.fill_checksum();
        let c = ip.checksum();
        VxlanPacket::new_unchecked(&mut t[42..]).init(ov.vni);
        self.tmpl = t;
        self.ip_csum = c;
        self.uplink = u.port;
        self.max_inner = (u.mtu as usize).saturating_sub(36);
    }

    /// Writes the outer Ethernet/IPv4/UDP headers (42 bytes) for a UDP
    /// payload of `udp_payload` bytes from the template.
    fn outer(&self, h: &mut [u8], sport: u16, udp_payload: usize) {
        let h = &mut h[..42];
        h.copy_from_slice(&self.tmpl[..42]);
        let tot = (udp_payload + 28) as u16;
        let mut ip = Ipv4Packet::new_unchecked(&mut h[14..34]);
        ip.set_total_len(tot);
        ip.set_checksum(checksum::update16(self.ip_csum, 0, tot));
        let mut udp = UdpPacket::new_unchecked(&mut h[34..42]);
        udp.set_src_port(sport);
        udp.set_len((udp_payload + 8) as u16);
    }

    /// Encapsulates `p` in place from the template.
    fn apply(&self, p: &mut Packet) -> Option<()> {
        let inner_len = p.len();
        let sport = flow_port(p.data());
        let h = p.push_front(ENCAP_LEN)?;
        self.outer(h, sport, inner_len + 8);
        h[42..50].copy_from_slice(&self.tmpl[42..50]);
        if let Some(c) = p.meta.offload.csum.as_mut() {
            c.start += ENCAP_LEN as u16;
        }
        Some(())
    }

    /// Encapsulates `p` and queues it on the uplink (counted drop if the
    /// headroom is gone).
    fn push(
        &self,
        mut p: Packet,
        pool: &mut PacketPool,
        txq: &mut TxQueues,
        drops: &mut BatchDrops,
    ) {
        match self.apply(&mut p) {
            Some(()) => txq.push(self.uplink, p),
            None => {
                drops.add(DropReason::TooBig);
                pool.put(p);
            }
        }
    }
}

/// Writes the outer Ethernet, IPv4 and UDP headers for a UDP payload of
/// `udp_payload` bytes into `h` (42 bytes); the UDP checksum is 0.
fn outer_headers(
    h: &mut [u8],
    ov: &OverlayView,
    u: &UplinkView,
    remote_ip: u32,
    nh_mac: Mac,
    sport: u16,
    udp_payload: usize,
) {
    let mut eth = EthernetFrame::new_unchecked(&mut h[..14]);
    eth.set_dst_addr(EthernetAddress(nh_mac.bytes()));
    eth.set_src_addr(EthernetAddress(u.mac.bytes()));
    eth.set_ethertype(EthernetProtocol::Ipv4);
    let mut ip = Ipv4Packet::new_unchecked(&mut h[14..34]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_dscp(0);
    ip.set_ecn(0);
    ip.set_total_len((udp_payload + 28) as u16);
    ip.set_ident(0);
    ip.clear_flags();
    ip.set_dont_frag(ov.df);
    ip.set_frag_offset(0);
    ip.set_hop_limit(ov.ttl);
    ip.set_next_header(IpProtocol::Udp);
    ip.set_src_addr(Ipv4Address::from(u.vtep_ip));
    ip.set_dst_addr(Ipv4Address::from(remote_ip));
    ip.fill_checksum();
    let mut udp = UdpPacket::new_unchecked(&mut h[34..42]);
    udp.set_src_port(sport);
    udp.set_dst_port(VXLAN_PORT);
    udp.set_len((udp_payload + 8) as u16);
    udp.set_checksum(0);
}

/// UDP GSO on send: a TCP/IPv4 TSO frame becomes one (or a few) UDP
/// super-datagrams, each a run of complete VXLAN packets of equal size (the
/// last may be shorter) behind one outer header, with `GSO_UDP_L4`: the
/// kernel cuts it into datagrams and fills their UDP checksums, so a 64 KiB
/// segment costs the switch one system call instead of ~45. Returns the
/// number of super-datagrams queued, `None` if the frame is not TCP/IPv4.
pub(super) fn encap_gso(
    p: &Packet,
    c: &EncapCache,
    pool: &mut PacketPool,
    txq: &mut TxQueues,
) -> Option<usize> {
    use crate::wire::virtio::{CsumPartial, Gso, GsoKind, Offload};
    let g = p.meta.offload.gso?;
    if g.kind != GsoKind::Tcp4 || g.size == 0 {
        return None;
    }
    let f = p.data();
    let t = offload::tcp_layout(f)?;
    if !t.v4 {
        return None;
    }
    let mss = g.size as usize;
    let payload = &f[t.hdrs..];
    if payload.len() <= mss {
        return None;
    }
    let seg_len = 8 + t.hdrs + mss;
    let per = (MAX_SUPER_PAYLOAD - 8) / seg_len;
    if per < 2 {
        return None;
    }
    let first = offload::SegFirst::new(f, &t, mss)?;
    let sport = flow_port(f);
    let chunks: Vec<&[u8]> = payload.chunks(mss).collect();
    let nseg = chunks.len();
    let mut queued = 0;
    for (gi, group) in chunks.chunks(per).enumerate() {
        let mut out = pool.get_large();
        let buf = out.rx_space();
        let mut at = ENCAP_LEN - 8;
        for (j, chunk) in group.iter().enumerate() {
            let len = t.hdrs + chunk.len();
            buf[at..at + 8].copy_from_slice(&c.tmpl[42..50]);
            let d = &mut buf[at + 8..at + 8 + len];
            d[..t.hdrs].copy_from_slice(&f[..t.hdrs]);
            d[t.hdrs..].copy_from_slice(chunk);
            offload::fix_segment(d, &t, &first, gi * per + j, nseg, chunk);
            at += 8 + len;
        }
        let udp_payload = at - 42;
        c.outer(&mut buf[..42], sport, udp_payload);
        out.set_len(at);
        out.meta = p.meta;
        out.meta.offload = Offload::default();
        if group.len() > 1 {
            // The UDP field holds the pseudo-header sum for the whole
            // payload; the kernel adjusts it per datagram.
            let d = out.data_mut();
            let mut acc = checksum::sum(0, &d[26..34]);
            acc += 17 + (udp_payload + 8) as u32;
            d[40..42].copy_from_slice(&checksum::fold(acc).to_be_bytes());
            out.meta.offload = Offload {
                csum: Some(CsumPartial {
                    start: 34,
                    offset: 6,
                }),
                gso: Some(Gso {
                    kind: GsoKind::UdpL4,
                    size: seg_len as u16,
                    hdr_len: 42,
                    ecn: false,
                }),
                data_valid: false,
            };
        }
        txq.push(c.uplink, out);
        queued += 1;
    }
    Some(queued)
}

/// The GSO size to give a container's interface on an overlay network of
/// MTU `mtu`, so that every TCP segment its stack hands over fits one UDP GSO
/// super-datagram ([`encap_gso`]): one system call, one datagram for the
/// receiving host to rebuild and one TAP write there, instead of a 64 KiB
/// segment becoming a full super-datagram plus a short one (measured: +14–20 %
/// iperf3 across hosts). Counted for the longest headers a segment carries
/// in practice (Ethernet, IPv4 without options, TCP with 40 bytes of options)
/// and the largest MSS; TCP keeps its segments a header's worth below the
/// device's GSO size, so real ones come out a segment or so shorter. `None`
/// when a super-datagram holds fewer than two segments (jumbo MTUs: the
/// kernel's default is then as good).
pub fn overlay_gso_max_size(mtu: u32) -> Option<u32> {
    let mss = mtu.checked_sub(40)? as usize;
    let seg = 8 + 14 + 20 + 60 + mss;
    let per = (MAX_SUPER_PAYLOAD - 8) / seg;
    (per >= 2).then(|| (per * mss) as u32)
}

/// Queues `p` (a frame of overlay network `nv`) to remote VTEP `remote`
/// (a [`REMOTE_BASE`] port), encapsulated; TSO frames as UDP GSO
/// super-datagrams, or cut into segments when that is not possible.
pub fn to_remote(p: Packet, nv: &NetworkView, remote: PortId, o: &mut Out<'_>) {
    let c = match o.encap.get(nv, remote, o.snap, o.tables) {
        Ok(c) => c,
        Err(r) => return o.drop(p, r),
    };
    if p.meta.offload.gso.is_none() {
        if p.len() > c.max_inner {
            too_big(p, c.max_inner, o.in_port, o.pool, o.txq, o.drops);
            return;
        }
        c.push(p, o.pool, o.txq, o.drops);
        return;
    }
    if encap_gso(&p, c, o.pool, o.txq).is_some_and(|n| n > 0) {
        o.pool.put(p);
        return;
    }
    let mut segs = Vec::new();
    if offload::segment(&p, o.pool, &mut segs).is_none() {
        o.drops.add(DropReason::BadOffload);
    }
    o.pool.put(p);
    for s in segs {
        c.push(s, o.pool, o.txq, o.drops);
    }
}

/// A frame too big for the underlay once encapsulated: counted as
/// `too_big`; for IPv4 with DF set, an ICMP fragmentation-needed goes back
/// to the sender with the overlay's MTU (RFC 1191), as if from the
/// destination (the kernel's VXLAN does the same), so its path MTU
/// discovery shrinks the packets.
fn too_big(
    p: Packet,
    max_inner: usize,
    in_port: PortId,
    pool: &mut PacketPool,
    txq: &mut TxQueues,
    drops: &mut BatchDrops,
) {
    drops.add(DropReason::TooBig);
    let f = p.data();
    let df = f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[14] >> 4 == 4 && f[20] & 0x40 != 0;
    let ihl = f.get(14).map_or(0, |b| ((b & 0x0f) as usize) * 4);
    if !df || ihl < 20 || f.len() < 14 + ihl || f[23] == 1 && f.get(14 + ihl) == Some(&3) {
        // Not DF, not IPv4, or itself an ICMP error: just dropped.
        pool.put(p);
        return;
    }
    let quote = (ihl + 8).min(f.len() - 14);
    let mut r = pool.get_small();
    let len = 14 + 20 + 8 + quote;
    let b = r.rx_space();
    b[0..6].copy_from_slice(&f[6..12]);
    b[6..12].copy_from_slice(&f[0..6]);
    b[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + 8 + quote) as u16;
    b[14..34].copy_from_slice(&[
        0x45, 0xc0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    b[16..18].copy_from_slice(&ip_len.to_be_bytes());
    b[26..30].copy_from_slice(&f[30..34]); // from the original destination
    b[30..34].copy_from_slice(&f[26..30]); // to the sender
    let c = checksum::finish(0, &b[14..34]);
    b[24..26].copy_from_slice(&c.to_be_bytes());
    let mtu = (max_inner - 14) as u16;
    b[34..42].copy_from_slice(&[3, 4, 0, 0, 0, 0, 0, 0]);
    b[40..42].copy_from_slice(&mtu.to_be_bytes());
    b[42..42 + quote].copy_from_slice(&f[14..14 + quote]);
    let c = checksum::finish(0, &b[34..len]);
    b[36..38].copy_from_slice(&c.to_be_bytes());
    r.set_len(len);
    pool.put(p);
    txq.push(in_port, r);
}

/// Head-end replication: a copy of `p` to every peer of the network.
pub fn flood_remote(p: &Packet, nv: &NetworkView, o: &mut Out<'_>) {
    let Some(ov) = nv.overlay.as_ref() else {
        return;
    };
    for &peer in &ov.peers {
        let c = p.clone_from_pool(o.pool);
        to_remote(c, nv, peer, o);
    }
}
