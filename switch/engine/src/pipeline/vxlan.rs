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
use super::offload;
use crate::fdb::Learn;
use crate::packet::{Packet, PacketPool};
use crate::port::PortId;
use crate::stats::{BatchDrops, DropReason};
use crate::tables::{NetworkView, OverlayView, Snapshot, Tables, UplinkView};
use crate::wire::checksum;
use crate::wire::mac::Mac;

/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
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
fn flow_port(inner: &[u8]) -> u16 {
    let n = inner.len().min(14 + 20 + 4);
    let mut h: u32 = 0x811c_9dc5;
    // MACs, then (for IPv4) the address pair and the first L4 word.
    for (i, b) in inner[..n].iter().enumerate() {
        if i < 12 || (26..38).contains(&i) {
            h = (h ^ *b as u32).wrapping_mul(0x0100_0193);
        }
    }
    49152 + (h % 16384) as u16
}

/// Encapsulates `p` for VTEP `remote_ip` in network `ov`, in place. Returns
/// `false` (counted in `drops`) when it cannot leave.
fn encap_one(
    p: &mut Packet,
    ov: &OverlayView,
    u: &UplinkView,
    remote_ip: u32,
    nh_mac: Mac,
) -> Option<()> {
    let inner_len = p.len();
    let sport = flow_port(p.data());
    let h = p.push_front(ENCAP_LEN)?;
    h[0..6].copy_from_slice(&nh_mac.bytes());
    h[6..12].copy_from_slice(&u.mac.bytes());
    h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut h[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&((inner_len + 36) as u16).to_be_bytes());
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
    udp[4..6].copy_from_slice(&((inner_len + 16) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]); // optional over IPv4 (RFC 7348 5)
    let vx = &mut h[42..50];
    vx.copy_from_slice(&[0x08, 0, 0, 0, 0, 0, 0, 0]);
    vx[4..7].copy_from_slice(&ov.vni.to_be_bytes()[1..4]);
    if let Some(c) = p.meta.offload.csum.as_mut() {
        c.start += ENCAP_LEN as u16;
    }
    Some(())
}

/// Queues `p` (a frame of overlay network `nv`) to remote VTEP `remote`
/// (a [`REMOTE_BASE`] port), encapsulated; cuts TSO segments first.
#[allow(clippy::too_many_arguments)]
pub fn to_remote(
    p: Packet,
    nv: &NetworkView,
    remote: PortId,
    snap: &Snapshot,
    tables: &Tables,
    pool: &mut PacketPool,
    txq: &mut super::TxQueues,
    drops: &mut BatchDrops,
) {
    let (Some(ov), Some(u)) = (nv.overlay.as_ref(), snap.uplink.as_ref()) else {
        drops.add(DropReason::NoRoute);
        pool.put(p);
        return;
    };
    let Some(&remote_ip) = snap.vteps.get((remote - REMOTE_BASE) as usize) else {
        drops.add(DropReason::NoRoute);
        pool.put(p);
        return;
    };
    let Some(nh) = u.next_hop(remote_ip) else {
        drops.add(DropReason::NoRoute);
        pool.put(p);
        return;
    };
    let Some(&nh_mac) = u.neigh.get(&nh) else {
        let _ = tables.neigh_wanted.push(nh);
        drops.add(DropReason::NeighMiss);
        pool.put(p);
        return;
    };
    if p.meta.offload.gso.is_some() {
        let mut segs = Vec::new();
        if offload::segment(&p, pool, &mut segs).is_none() {
            drops.add(DropReason::BadOffload);
        }
        pool.put(p);
        for mut s in segs {
            match encap_one(&mut s, ov, u, remote_ip, nh_mac) {
                Some(()) => txq.push(u.port, s),
                None => {
                    drops.add(DropReason::TooBig);
                    pool.put(s);
                }
            }
        }
        return;
    }
    let mut p = p;
    match encap_one(&mut p, ov, u, remote_ip, nh_mac) {
        Some(()) => txq.push(u.port, p),
        None => {
            drops.add(DropReason::TooBig);
            pool.put(p);
        }
    }
}

/// Head-end replication: a copy of `p` to every peer of the network.
#[allow(clippy::too_many_arguments)]
pub fn flood_remote(
    p: &Packet,
    nv: &NetworkView,
    snap: &Snapshot,
    tables: &Tables,
    pool: &mut PacketPool,
    txq: &mut super::TxQueues,
    drops: &mut BatchDrops,
) {
    let Some(ov) = nv.overlay.as_ref() else {
        return;
    };
    for &peer in &ov.peers {
        let c = p.clone_from_pool(pool);
        to_remote(c, nv, peer, snap, tables, pool, txq, drops);
    }
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
pub fn decap<'a>(
    p: &mut Packet,
    l4: usize,
    src: u32,
    snap: &'a Snapshot,
    tables: &Tables,
    now: u32,
) -> Decap<'a> {
    let f = p.data();
    if f.len() < l4 + 16 + 14 {
        return Decap::Drop(DropReason::VxlanMalformed);
    }
    let vx = &f[l4 + 8..l4 + 16];
    // The I flag must be set and the reserved bits clear (RFC 7348 5).
    if vx[0] != 0x08 || vx[1] != 0 || vx[2] != 0 || vx[3] != 0 || vx[7] != 0 {
        return Decap::Drop(DropReason::VxlanMalformed);
    }
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
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
    let inner_src = Mac::from_bytes(&[
        f[l4 + 22],
        f[l4 + 23],
        f[l4 + 24],
        f[l4 + 25],
        f[l4 + 26],
        f[l4 + 27],
    ]);
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
    if ov.learning && !inner_src.is_multicast() && !inner_src.is_zero() {
        if let Learn::Moved { from: old } = tables.fdb.learn(net.id, inner_src, from, now) {
            tracing::debug!(mac = %inner_src, old, to = from, "MAC moved");
        }
    }
    Decap::Inner { net, from }
}
