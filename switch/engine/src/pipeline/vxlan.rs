//! VXLAN (RFC 7348): overlay networks across hosts over the uplink.
//!
//! A remote VTEP appears to the L2 stages as a port number at or above
//! [`REMOTE_BASE`] (`REMOTE_BASE + index` into the snapshot's VTEP list), so
//! the FDB learns remote MACs like local ones and the forward stage needs no
//! special case. At dispatch, a frame for such a "port" is encapsulated in
//! place (the 50 bytes of outer Ethernet, IPv4, UDP and VXLAN headers go into
//! the headroom) and queued on the uplink. Broadcast, multicast and unknown
//! unicast from a local port go to every local port and to every peer of the
//! network (head-end replication); what arrives from a tunnel is flooded to
//! local ports only (split horizon).
//!
//! TSO segments are cut to the inner MSS before encapsulation; a partial
//! checksum keeps its request, moved past the outer headers, so the uplink
//! (AF_PACKET with virtio-net headers) still lets the kernel finish it.
use super::{offload, Out};
use crate::fdb::{Learn, NetId};
use crate::packet::{Packet, PacketPool};
use crate::port::PortId;
use crate::stats::{BatchDrops, DropReason};
use crate::tables::{NetworkView, OverlayView, Snapshot, Tables, UplinkView};
use crate::wire::checksum;
use crate::wire::mac::Mac;

/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// Most UDP payload one GSO super-datagram carries: what the 16-bit IPv4
/// total length leaves after the IPv4 and UDP headers.
const MAX_SUPER_PAYLOAD: usize = 65535 - 20 - 8;
/// Outer Ethernet + IPv4 + UDP + VXLAN.
pub const ENCAP_LEN: usize = 14 + 20 + 8 + 8;
/// Port numbers from here on name remote VTEPs.
pub const REMOTE_BASE: PortId = 0x8000;

/// Whether `p` names a remote VTEP.
#[inline]
pub fn is_remote(p: PortId) -> bool {
    p >= REMOTE_BASE
}

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
    tmpl: [u8; ENCAP_LEN],
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
    fn build(&mut self, ov: &OverlayView, u: &UplinkView, remote_ip: u32, nh_mac: Mac) {
        let mut t = [0u8; ENCAP_LEN];
        outer_headers(&mut t[..42], ov, u, remote_ip, nh_mac, 0, 0);
        // The checksum as if the total length were 0: patched per packet.
        t[16..18].copy_from_slice(&[0, 0]);
        t[24..26].copy_from_slice(&[0, 0]);
        let c = checksum::finish(0, &t[14..34]);
        t[42] = 0x08;
        t[46..49].copy_from_slice(&ov.vni.to_be_bytes()[1..4]);
        self.tmpl = t;
        self.ip_csum = c;
        self.uplink = u.port;
        self.max_inner = (u.mtu as usize).saturating_sub(36);
    }

    /// Writes the outer Ethernet/IPv4/UDP headers (42 bytes) for a UDP
    /// payload of `udp_payload` bytes from the template.
    fn outer(&self, h: &mut [u8], sport: u16, udp_payload: usize) {
        h[..42].copy_from_slice(&self.tmpl[..42]);
        let tot = (udp_payload + 28) as u16;
        h[16..18].copy_from_slice(&tot.to_be_bytes());
        h[24..26].copy_from_slice(&checksum::update16(self.ip_csum, 0, tot).to_be_bytes());
        h[34..36].copy_from_slice(&sport.to_be_bytes());
        h[38..40].copy_from_slice(&((udp_payload + 8) as u16).to_be_bytes());
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
        txq: &mut super::TxQueues,
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
    h[0..6].copy_from_slice(&nh_mac.bytes());
    h[6..12].copy_from_slice(&u.mac.bytes());
    h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut h[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&((udp_payload + 28) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]);
    ip[6..8].copy_from_slice(&(if ov.df { 0x4000u16 } else { 0 }).to_be_bytes());
    ip[8] = ov.ttl;
    ip[9] = 17;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&u.vtep_ip.to_be_bytes());
    ip[16..20].copy_from_slice(&remote_ip.to_be_bytes());
    let c = checksum::finish(0, ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut h[34..42];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&VXLAN_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&((udp_payload + 8) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
}

/// UDP GSO on send: a TCP/IPv4 TSO frame becomes one (or a few) UDP
/// super-datagrams, each a run of complete VXLAN packets of equal size (the
/// last may be shorter) behind one outer header, with `GSO_UDP_L4`: the
/// kernel cuts it into datagrams and fills their UDP checksums, so a 64 KiB
/// segment costs the switch one system call instead of ~45. Returns the
/// number of super-datagrams queued, `None` if the frame is not TCP/IPv4.
fn encap_gso(
    p: &Packet,
    c: &EncapCache,
    pool: &mut PacketPool,
    txq: &mut super::TxQueues,
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
    txq: &mut super::TxQueues,
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

/// What decapsulation remembers within one batch (frames of one batch
/// mostly belong to one tunnel and one inner flow).
#[derive(Debug, Default)]
pub struct DecapCache {
    /// (VNI, source VTEP) already validated, with its network and port.
    tunnel: Option<(u32, u32, NetId, PortId)>,
    /// The last inner source learned.
    learn: Option<(NetId, Mac, PortId)>,
    /// The last inner destination looked up, and where it is.
    pub dst: Option<(NetId, Mac, Option<PortId>)>,
    /// Inner sources not learned: over the network's MAC limit, and with
    /// the table full (counted on the uplink, as a local port counts its
    /// own).
    pub refused: (u32, u32),
}

/// Outcome of decapsulating a frame from the uplink.
pub enum Decap<'a> {
    /// An inner frame of `net`, from remote VTEP `from`.
    Inner {
        /// The overlay network.
        net: &'a NetworkView,
        /// The remote VTEP as a port number.
        from: PortId,
    },
    /// Dropped, with the reason.
    Drop(DropReason),
}

/// Validates and strips the outer headers of a VXLAN packet (`l4`: offset of
/// the outer UDP header, `src`: outer source address), learns the inner
/// source MAC on the remote VTEP.
#[inline]
pub fn decap<'a>(
    p: &mut Packet,
    l4: usize,
    src: u32,
    snap: &'a Snapshot,
    tables: &Tables,
    now: u32,
    cache: &mut DecapCache,
) -> Decap<'a> {
    let f = p.data();
    // UDP header, VXLAN header, inner Ethernet addresses: one bounds check.
    let Some(h) = f.get(l4..l4 + 30) else {
        return Decap::Drop(DropReason::VxlanMalformed);
    };
    let vx = u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    // The I flag must be set and the reserved bits clear (RFC 7348 5).
    if vx & 0xffff_ffff_0000_00ff != 0x0800_0000_0000_0000 {
        return Decap::Drop(DropReason::VxlanMalformed);
    }
    let vni = (vx >> 8) as u32 & 0x00ff_ffff;
    let inner_src = Mac::from_bytes(&[h[22], h[23], h[24], h[25], h[26], h[27]]);
    // The packets of a batch mostly come from one VTEP for one VNI.
    let (net, from) = match cache.tunnel {
        Some((v, s, n, from)) if v == vni && s == src => match snap.network(n) {
            Some(net) => (net, from),
            None => return Decap::Drop(DropReason::VxlanUnknownVni),
        },
        _ => {
            let Some(net) = snap
                .vni_nets
                .get(&vni)
                .and_then(|n| snap.network(*n))
                .filter(|n| n.overlay.is_some())
            else {
                return Decap::Drop(DropReason::VxlanUnknownVni);
            };
            let Some(ov) = net.overlay.as_ref() else {
                return Decap::Drop(DropReason::VxlanUnknownVni);
            };
            let Some(from) = snap
                .vtep_index
                .get(&src)
                .map(|i| REMOTE_BASE + *i)
                .filter(|p| ov.peers.contains(p))
            else {
                return Decap::Drop(DropReason::VxlanUnknownVtep);
            };
            cache.tunnel = Some((vni, src, net.id, from));
            (net, from)
        }
    };
    let Some(ov) = net.overlay.as_ref() else {
        return Decap::Drop(DropReason::VxlanUnknownVni);
    };
    let strip = l4 + 16;
    if p.pull_front(strip).is_none() {
        return Decap::Drop(DropReason::VxlanMalformed);
    }
    if let Some(c) = p.meta.offload.csum.as_mut() {
        match c.start.checked_sub(strip as u16) {
            Some(s) => c.start = s,
            None => p.meta.offload.csum = None,
        }
    }
    if let Some(g) = p.meta.offload.gso.as_mut() {
        g.hdr_len = g.hdr_len.saturating_sub(strip as u16);
    }
    let again = cache.learn == Some((net.id, inner_src, from));
    if ov.learning && !again && !inner_src.is_multicast() && !inner_src.is_zero() {
        match tables.fdb.learn(net.id, inner_src, from, now) {
            Learn::Moved { from: old } => {
                tracing::debug!(mac = %inner_src, old, to = from, "MAC moved");
            }
            Learn::Limit => cache.refused.0 += 1,
            Learn::Full => cache.refused.1 += 1,
            Learn::Refreshed | Learn::Learned | Learn::Static => {}
        }
        cache.learn = Some((net.id, inner_src, from));
    }
    Decap::Inner { net, from }
}

/// GRO for a UDP GSO super-datagram from another vswitch (see
/// [`encap_gso`]): its VXLAN packets carry consecutive TCP segments of one
/// flow, so they are put back together, in place, into the one TSO frame
/// they were cut from (first segment's headers, all payloads, checksum
/// partial, `GSO_TCPV4`), still behind the first outer header, ready for
/// [`decap`]. Anything else in a super-datagram is refused.
pub fn coalesce(p: &mut Packet, l4: usize) -> Result<(), DropReason> {
    use crate::wire::virtio::{CsumPartial, Gso, GsoKind, Offload};
    let bad = DropReason::VxlanMalformed;
    let g = p.meta.offload.gso.ok_or(bad)?;
    let size = g.size as usize;
    let start = l4 + 8;
    let total = p.len();
    if g.kind != GsoKind::UdpL4 || size <= 8 + 14 + 40 || total <= start {
        return Err(bad);
    }
    let f = p.data_mut();
    // Layout of the first inner frame.
    let e0 = start + 8;
    if f.len() < e0 + 14 + 20 || f[e0 + 12..e0 + 14] != [0x08, 0x00] {
        return Err(bad);
    }
    let l3 = e0 + 14;
    let ihl = ((f[l3] & 0x0f) as usize) * 4;
    if f[l3] >> 4 != 4 || ihl < 20 || f[l3 + 9] != 6 || f.len() < l3 + ihl + 20 {
        return Err(bad);
    }
    let tl4 = l3 + ihl;
    let doff = ((f[tl4 + 12] >> 4) as usize) * 4;
    let hdrs = 14 + ihl + doff; // inner headers, from e0
    if doff < 20 || size <= 8 + hdrs {
        return Err(bad);
    }
    let first_hdr: Vec<u8> = f[start..start + 8 + hdrs].to_vec();
    let seq0 = u32::from_be_bytes([f[tl4 + 4], f[tl4 + 5], f[tl4 + 6], f[tl4 + 7]]);
    let mss = size - 8 - hdrs;
    let mut w = start + 8 + hdrs; // end of the payload gathered so far
    let mut off = start;
    let mut expect = seq0;
    let mut last_flags = 0u8;
    while off < total {
        let end = (off + size).min(total);
        if end < off + 8 + hdrs {
            return Err(bad);
        }
        let d = &f[off..off + 8 + hdrs];
        // Same VXLAN header, Ethernet, and IP/TCP addresses and ports.
        let same = d[..8] == first_hdr[..8]
            && d[8..8 + 14] == first_hdr[8..8 + 14]
            && d[8 + 14 + 12..8 + 14 + 20] == first_hdr[8 + 14 + 12..8 + 14 + 20]
            && d[8 + 14 + ihl..8 + 14 + ihl + 4] == first_hdr[8 + 14 + ihl..8 + 14 + ihl + 4];
        let a = 8 + 14 + ihl;
        let seq = u32::from_be_bytes([d[a + 4], d[a + 5], d[a + 6], d[a + 7]]);
        if !same || seq != expect {
            return Err(bad);
        }
        last_flags = d[a + 13];
        let pay = off + 8 + hdrs..end;
        let n = pay.len();
        if off != start {
            f.copy_within(pay, w);
            w += n;
        } else {
            w = end;
        }
        expect = expect.wrapping_add(n as u32);
        off = end;
    }
    // Fix the inner headers for the whole segment.
    let inner_len = w - l3;
    if inner_len > 65535 {
        return Err(bad);
    }
    f[l3 + 2..l3 + 4].copy_from_slice(&(inner_len as u16).to_be_bytes());
    f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = checksum::finish(0, &f[l3..l3 + ihl]);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    f[tl4 + 13] |= last_flags & (0x01 | 0x08);
    let tcp_len = (w - tl4) as u32;
    let mut acc = checksum::sum(0, &f[l3 + 12..l3 + 20]);
    acc += 6 + tcp_len;
    f[tl4 + 16..tl4 + 18].copy_from_slice(&checksum::fold(acc).to_be_bytes());
    p.set_len(w);
    p.meta.offload = Offload {
        csum: Some(CsumPartial {
            start: tl4 as u16,
            offset: 16,
        }),
        gso: Some(Gso {
            kind: GsoKind::Tcp4,
            size: mss as u16,
            hdr_len: (tl4 + doff) as u16,
            ecn: false,
        }),
        data_valid: false,
    };
    Ok(())
}

/// ARP suppression: a local broadcast ARP request for an address the overlay
/// knows (a static binding) is answered here, in place, instead of being
/// flooded to every host.
#[inline]
pub fn suppress_arp(
    batch: &mut [Packet],
    hdrs: &mut [super::Hdr],
    ov: &OverlayView,
    in_port: PortId,
) {
    use super::l3::{arp_reply_in_place, arp_request_target, ethertype};
    use super::Action;
    for (p, h) in batch.iter_mut().zip(hdrs.iter_mut()) {
        if h.action != Action::Flood || h.dst != Mac::BROADCAST || ethertype(p.data()) != 0x0806 {
            continue;
        }
        let Some(ip) = arp_request_target(p.data()) else {
            continue;
        };
        if let Some(&mac) = ov.arp.get(&ip) {
            if arp_reply_in_place(p.data_mut(), mac, ip) {
                h.action = Action::Unicast(in_port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::offload::tests::{tcp_ok, tso_frame_mss};
    use crate::pipeline::TxQueues;
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
}
