//! Decapsulation: a VXLAN packet for the local VTEP is checked (flags,
//! known VNI, a peer of its network), stripped in place, and switched inside
//! its overlay network: to a local port, never back into a tunnel (split
//! horizon). UDP GSO super-datagrams from another vswitch are put back
//! together into the TSO frame they were cut from first.
use super::REMOTE_BASE;
use crate::fdb::{Learn, NetId};
use crate::packet::Packet;
use crate::pipeline::gateway::Ctx;
use crate::pipeline::ipv4::{ETH_LEN, V4};
use crate::pipeline::Action;
use crate::port::PortId;
use crate::stats::DropReason;
use crate::tables::{NetworkView, Snapshot, Tables};
use crate::wire::checksum;
use crate::wire::mac::Mac;
use crate::wire::vxlan::VxlanPacket;

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
    let vx = VxlanPacket::new_unchecked(&h[8..]);
    if !vx.is_valid() {
        return Decap::Drop(DropReason::VxlanMalformed);
    }
    let vni = vx.vni();
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

/// A VXLAN packet for the local VTEP: decapsulated, then switched inside its
/// overlay network (to a local port; never back into a tunnel).
#[inline]
pub(in crate::pipeline) fn from_tunnel(ctx: &mut Ctx<'_>, p: &mut Packet, v: &V4) -> Action {
    use super::is_remote;
    use crate::wire::virtio::GsoKind;
    if p.meta.offload.gso.is_some_and(|g| g.kind == GsoKind::UdpL4) {
        if let Err(r) = coalesce(p, v.l4 as usize) {
            return Action::Drop(r);
        }
    }
    match decap(
        p,
        v.l4 as usize,
        v.tuple.src,
        ctx.snap,
        ctx.tables,
        ctx.now,
        &mut ctx.decap,
    ) {
        Decap::Drop(r) => Action::Drop(r),
        Decap::Inner { net, .. } => {
            let f = p.data();
            if f.len() < ETH_LEN {
                return Action::Drop(DropReason::VxlanMalformed);
            }
            let dst = Mac::from_bytes(&[f[0], f[1], f[2], f[3], f[4], f[5]]);
            if dst.is_multicast() {
                return Action::FloodIn(net.id);
            }
            let port = match ctx.decap.dst {
                Some((n, m, port)) if n == net.id && m == dst => port,
                _ => {
                    let port = ctx.tables.fdb.lookup(net.id, dst);
                    ctx.decap.dst = Some((net.id, dst, port));
                    port
                }
            };
            match port {
                Some(port) if is_remote(port) => Action::Drop(DropReason::SamePort),
                Some(port) => Action::Unicast(port),
                None => Action::FloodIn(net.id),
            }
        }
    }
}
