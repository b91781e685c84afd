//! The gateway stage: what a network's containers send to the switch's own
//! MAC, and what arrives on the uplink.
//!
//! From a container: ARP and ICMP echo for the gateway are answered here;
//! IPv4 is routed: tracked flows are translated (SNAT, DNAT, hairpin), new
//! flows to the outside are source-NATed to the uplink, flows to a published
//! port on a host address are hairpinned, other traffic for the host's own
//! addresses is handed to the host's interface on the network, and anything
//! for another network is dropped (isolation).
//!
//! From the uplink: only what the switch owns is taken (replies of its flows,
//! ICMP errors about them, published ports, ARP for a SNAT address the kernel
//! does not hold); everything else is the host kernel's and is left alone.
use super::{Action, Hdr};
use crate::conntrack::{
    CreateError, CtTable, FlowEntry, Side, State, TcpState, Tuple, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};
use crate::fdb::Fdb;
use crate::packet::Packet;
use crate::port::PortId;
use crate::stats::{BatchDrops, DropReason};
use crate::tables::{L3View, NetworkView, Snapshot, Tables, UplinkView};
use crate::wire::checksum;
use crate::wire::mac::Mac;
use smoltcp::wire::{ArpOperation, ArpPacket, Icmpv4Message, Icmpv4Packet, Ipv4Packet};
use std::sync::MutexGuard;

const ETH_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;

#[inline]
fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}
#[inline]
fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
#[inline]
fn be32(f: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}
#[inline]
fn put32(f: &mut [u8], at: usize, v: u32) {
    f[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn ethertype(f: &[u8]) -> u16 {
    if f.len() < ETH_LEN {
        0
    } else {
        be16(f, 12)
    }
}

/// ARP request's target address, if `f` is one.
pub(crate) fn arp_request_target(f: &[u8]) -> Option<u32> {
    let arp = ArpPacket::new_checked(f.get(ETH_LEN..)?).ok()?;
    if arp.operation() != ArpOperation::Request || arp.protocol_len() != 4 {
        return None;
    }
    Some(be32(arp.target_protocol_addr(), 0))
}

/// Stage 2b: marks the frames a container sends to the gateway.
#[inline]
pub fn mark(batch: &[Packet], hdrs: &mut [Hdr], l3: &L3View) {
    for (p, h) in batch.iter().zip(hdrs.iter_mut()) {
        if matches!(h.action, Action::Drop(_)) {
            continue;
        }
        let for_gateway = h.dst == l3.gw_mac
            || (h.dst == Mac::BROADCAST
                && ethertype(p.data()) == ETH_P_ARP
                && arp_request_target(p.data()) == Some(l3.gw_ip));
        if for_gateway {
            h.action = Action::Route;
        }
    }
}

/// Turns an ARP request in `f` into the reply from `mac`/`ip`, in place.
pub(crate) fn arp_reply_in_place(f: &mut [u8], mac: Mac, ip: u32) -> bool {
    let Some(body) = f.get_mut(ETH_LEN..) else {
        return false;
    };
    let Ok(mut arp) = ArpPacket::new_checked(body) else {
        return false;
    };
    let (sha, spa) = (
        arp.source_hardware_addr().to_vec(),
        arp.source_protocol_addr().to_vec(),
    );
    if sha.len() != 6 || spa.len() != 4 {
        return false;
    }
    arp.set_operation(ArpOperation::Reply);
    arp.set_target_hardware_addr(&sha);
    arp.set_target_protocol_addr(&spa);
    arp.set_source_hardware_addr(&mac.bytes());
    arp.set_source_protocol_addr(&ip.to_be_bytes());
    f[0..6].copy_from_slice(&sha);
    f[6..12].copy_from_slice(&mac.bytes());
    true
}

/// Where the IPv4 and L4 headers of a frame are, and its flow tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct V4 {
    /// Offset of the L4 header (at most 14 + 60).
    l4: u16,
    tuple: Tuple,
    /// The tuple's conntrack hash.
    hash: u64,
    /// Where the flow's entry sits in its index bucket, when the prefetch
    /// pass found it.
    ct_hint: u8,
    flags: u8,
    /// ICMP type, for ICMP.
    icmp_type: u8,
    /// Which part of a fragmented datagram this is, if any.
    frag: Frag,
}

/// Where a packet stands among the fragments of its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frag {
    /// Not fragmented.
    Whole,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: payload only, tracked with the ports its first
    /// fragment carried.
    Rest,
}

/// The ports of the fragmented datagrams whose first fragment went
/// through, so that the fragments behind it, which carry no L4 header, are
/// tracked and translated with it. Fragments pass as they come ("virtual
/// reassembly", as in VPP's NAT): none is held, and one that arrives before
/// its first fragment is dropped (`bad_l3`). The kernel's conntrack
/// reassembles instead; a sender's fragments leave in order.
///
/// The keys come from the outside (sources can be spoofed), so the map
/// hashes them with std's keyed SipHash rather than the fixed mixer of
/// [`FastMap`](crate::tables::FastMap), which a sender could make collide.
/// Fragments are rare enough for it.
#[derive(Debug, Default)]
struct Frags(std::collections::HashMap<FragKey, FragPorts>);

/// A datagram: source, destination, identification, protocol (RFC 791).
type FragKey = (u32, u32, u16, u8);

#[derive(Debug, Clone, Copy)]
struct FragPorts {
    sport: u16,
    dport: u16,
    icmp_type: u8,
    /// Forgotten after this second, if the last fragment never came.
    until: u32,
}

/// Datagrams in flight per worker whose fragments are remembered.
const MAX_FRAG_DATAGRAMS: usize = 4096;
/// Seconds a datagram's ports are kept for fragments still to come.
const FRAG_SECS: u32 = 5;

impl Frags {
    fn remember(&mut self, k: FragKey, v: FragPorts, now: u32) {
        if self.0.len() >= MAX_FRAG_DATAGRAMS {
            self.0.retain(|_, e| e.until >= now);
            if self.0.len() >= MAX_FRAG_DATAGRAMS {
                // Full of live datagrams: this one's later fragments are
                // dropped as if its first had not been seen.
                return;
            }
        }
        self.0.insert(k, v);
    }

    /// The ports of datagram `k`, if its first fragment went through (and
    /// not too long ago); `last`: this is its last fragment.
    fn ports(&mut self, k: &FragKey, last: bool, now: u32) -> Option<FragPorts> {
        let e = *self.0.get(k)?;
        if last || e.until < now {
            self.0.remove(k);
        }
        (e.until >= now).then_some(e)
    }
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAM_PROBLEM: u8 = 12;

/// Parsed headers of a batch, kept between batches so that no per-batch
/// array has to be initialized, and the worker's memory of fragmented
/// datagrams.
#[derive(Debug, Default)]
pub struct Parsed {
    v: Vec<Option<V4>>,
    frags: Frags,
}

/// Parses IPv4 and the L4 ports. `None`: drop as `bad_l3` (that includes
/// a wrong header checksum: a router verifies it, RFC 1812 5.2.2, and a
/// translated header would otherwise carry the damage on with a checksum
/// patched incrementally from the wrong one). The conntrack
/// hash is left 0: [`Ctx::prefetch`] fills it in for the frames that will be
/// looked up (VXLAN to the local VTEP never is).
#[inline(always)]
fn parse_v4(f: &[u8], frags: &mut Frags, now: u32) -> Option<V4> {
    let h = f.get(ETH_LEN..ETH_LEN + 20)?;
    let fragment = u16::from_be_bytes([h[6], h[7]]);
    let (l4, src, dst, proto) = if h[0] == 0x45 {
        // The common case, read at fixed offsets: no options. The same
        // checks as below: total length within the frame, header checksum.
        let total = u16::from_be_bytes([h[2], h[3]]) as usize;
        if total < 20 || total > f.len() - ETH_LEN || checksum::finish(0, h) != 0 {
            return None;
        }
        (
            ETH_LEN + 20,
            u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
            u32::from_be_bytes([h[16], h[17], h[18], h[19]]),
            h[9],
        )
    } else {
        let ip = Ipv4Packet::new_checked(f.get(ETH_LEN..)?).ok()?;
        if ip.version() != 4 || !ip.verify_checksum() {
            return None;
        }
        (
            ETH_LEN + ip.header_len() as usize,
            u32::from(ip.src_addr()),
            u32::from(ip.dst_addr()),
            ip.next_header().into(),
        )
    };
    let frag = match (fragment & 0x2000 != 0, fragment & 0x1fff) {
        (false, 0) => Frag::Whole,
        (true, 0) => Frag::First,
        _ => return later_fragment(h, l4, src, dst, proto, frags, now),
    };
    let mut t = Tuple {
        src,
        dst,
        sport: 0,
        dport: 0,
        proto,
    };
    let mut flags = 0;
    let mut icmp_type = 0;
    match proto {
        PROTO_TCP => {
            if f.len() < l4 + 20 {
                return None;
            }
            t.sport = be16(f, l4);
            t.dport = be16(f, l4 + 2);
            flags = f[l4 + 13];
        }
        PROTO_UDP => {
            if f.len() < l4 + 8 {
                return None;
            }
            t.sport = be16(f, l4);
            t.dport = be16(f, l4 + 2);
        }
        PROTO_ICMP => {
            if f.len() < l4 + 8 {
                return None;
            }
            icmp_type = f[l4];
            if icmp_type == ICMP_ECHO || icmp_type == ICMP_ECHO_REPLY {
                t.sport = be16(f, l4 + 4);
                t.dport = t.sport;
            }
        }
        _ => {}
    }
    if frag == Frag::First {
        first_fragment(h, &t, icmp_type, frags, now);
    }
    Some(V4 {
        l4: l4 as u16,
        hash: 0,
        ct_hint: crate::conntrack::NO_HINT,
        tuple: t,
        flags,
        icmp_type,
        frag,
    })
}

/// The datagram a fragment with IPv4 header `h` belongs to.
fn frag_key(h: &[u8], src: u32, dst: u32, proto: u8) -> FragKey {
    (src, dst, u16::from_be_bytes([h[4], h[5]]), proto)
}

/// Remembers the ports of a first fragment for the fragments behind it.
#[cold]
fn first_fragment(h: &[u8], t: &Tuple, icmp_type: u8, frags: &mut Frags, now: u32) {
    let e = FragPorts {
        sport: t.sport,
        dport: t.dport,
        icmp_type,
        until: now.saturating_add(FRAG_SECS),
    };
    frags.remember(frag_key(h, t.src, t.dst, t.proto), e, now);
}

/// A fragment after the first: it carries no L4 header, so it takes the
/// ports its first fragment carried (`None`, dropped as `bad_l3`, when that
/// was not seen).
#[cold]
fn later_fragment(
    h: &[u8],
    l4: usize,
    src: u32,
    dst: u32,
    proto: u8,
    frags: &mut Frags,
    now: u32,
) -> Option<V4> {
    let last = u16::from_be_bytes([h[6], h[7]]) & 0x2000 == 0;
    let e = frags.ports(&frag_key(h, src, dst, proto), last, now)?;
    Some(V4 {
        l4: l4 as u16,
        hash: 0,
        ct_hint: crate::conntrack::NO_HINT,
        tuple: Tuple {
            src,
            dst,
            sport: e.sport,
            dport: e.dport,
            proto,
        },
        flags: 0,
        icmp_type: e.icmp_type,
        frag: Frag::Rest,
    })
}

/// Rewrites addresses and ports from `v`'s tuple to `new`, updating the
/// IPv4, TCP, UDP or ICMP checksums incrementally (RFC 1624); `partial`: the
/// L4 checksum field holds the pseudo-header sum (checksum offload, TSO). A
/// datagram's later fragment has no L4 header: only its addresses change
/// (the first fragment's L4 checksum covers the whole datagram).
fn rewrite(f: &mut [u8], v: &V4, new: &Tuple, partial: bool) {
    let (l4, old) = (v.l4 as usize, &v.tuple);
    let ipc = ETH_LEN + 10;
    let mut c = be16(f, ipc);
    if old.src != new.src {
        c = checksum::update32(c, old.src, new.src);
        put32(f, ETH_LEN + 12, new.src);
    }
    if old.dst != new.dst {
        c = checksum::update32(c, old.dst, new.dst);
        put32(f, ETH_LEN + 16, new.dst);
    }
    put16(f, ipc, c);
    if v.frag == Frag::Rest {
        return;
    }
    let at = match old.proto {
        PROTO_TCP => l4 + 16,
        PROTO_UDP => l4 + 6,
        PROTO_ICMP => {
            if old.sport != new.sport {
                let c = checksum::update16(be16(f, l4 + 2), old.sport, new.sport);
                put16(f, l4 + 2, c);
                put16(f, l4 + 4, new.sport);
            }
            return;
        }
        _ => return,
    };
    let mut c = be16(f, at);
    let udp_none = old.proto == PROTO_UDP && c == 0 && !partial;
    if !udp_none {
        if partial {
            c = checksum::update32_partial(c, old.src, new.src);
            c = checksum::update32_partial(c, old.dst, new.dst);
        } else {
            c = checksum::update32(c, old.src, new.src);
            c = checksum::update32(c, old.dst, new.dst);
            c = checksum::update16(c, old.sport, new.sport);
            c = checksum::update16(c, old.dport, new.dport);
            if old.proto == PROTO_UDP && c == 0 {
                c = 0xffff;
            }
        }
        put16(f, at, c);
    }
    put16(f, l4, new.sport);
    put16(f, l4 + 2, new.dport);
}

/// Decrements the TTL of a routed packet; `false` when it ran out.
fn ttl_dec(f: &mut [u8]) -> bool {
    let ttl = f[ETH_LEN + 8];
    if ttl <= 1 {
        return false;
    }
    let old = be16(f, ETH_LEN + 8);
    f[ETH_LEN + 8] = ttl - 1;
    let c = checksum::update16(be16(f, ETH_LEN + 10), old, be16(f, ETH_LEN + 8));
    put16(f, ETH_LEN + 10, c);
    true
}

/// Turns an ICMP echo request in `f` into its reply, in place.
fn echo_reply_in_place(f: &mut [u8], v: &V4) -> bool {
    let total = match Ipv4Packet::new_checked(&f[ETH_LEN..]) {
        Ok(ip) => ETH_LEN + ip.total_len() as usize,
        Err(_) => return false,
    };
    if total > f.len() || total < (v.l4 as usize) + 8 {
        return false;
    }
    let Ok(mut icmp) = Icmpv4Packet::new_checked(&mut f[(v.l4 as usize)..total]) else {
        return false;
    };
    icmp.set_msg_type(Icmpv4Message::EchoReply);
    icmp.fill_checksum();
    // Swap addresses (the IPv4 checksum is unchanged by a swap).
    put32(f, ETH_LEN + 12, v.tuple.dst);
    put32(f, ETH_LEN + 16, v.tuple.src);
    let (mut d, mut s) = ([0u8; 6], [0u8; 6]);
    d.copy_from_slice(&f[0..6]);
    s.copy_from_slice(&f[6..12]);
    f[0..6].copy_from_slice(&s);
    f[6..12].copy_from_slice(&d);
    true
}

/// An L2 addressing decision kept for the next frames of a batch (see
/// [`Ctx::emit_to`]).
#[derive(Debug, Clone, Copy)]
struct LastEmit {
    side: Side,
    /// The destination it was made for.
    dst: u32,
    /// What the L2 header depends on: the next hop (uplink), 0 (container).
    l2_key: u32,
    /// Destination and source MAC.
    macs: [u8; 12],
    action: Action,
}

/// The per-batch context of the gateway stage.
pub struct Ctx<'a> {
    /// Shared tables.
    pub tables: &'a Tables,
    /// Configuration in force for this batch.
    pub snap: &'a Snapshot,
    /// Now, seconds.
    pub now: u32,
    /// Ingress port.
    pub in_port: PortId,
    ct: Option<MutexGuard<'a, CtTable>>,
    /// The last L2 addressing decision: the frames of a batch mostly share
    /// one, so the route and neighbour lookups are done once.
    last_emit: Option<LastEmit>,
    /// Decapsulation's memory within the batch.
    decap: super::vxlan::DecapCache,
}

impl<'a> Ctx<'a> {
    /// A context for one batch; the conntrack lock is taken on first use.
    pub fn new(tables: &'a Tables, snap: &'a Snapshot, now: u32, in_port: PortId) -> Self {
        Self {
            tables,
            snap,
            now,
            in_port,
            ct: None,
            last_emit: None,
            decap: Default::default(),
        }
    }

    /// Counts, into `drops`, the inner sources decapsulation could not
    /// learn in this batch.
    pub fn count_refused_learns(&mut self, drops: &mut BatchDrops) {
        let (limit, full) = std::mem::take(&mut self.decap.refused);
        drops.add_n(DropReason::LearnLimit, limit);
        drops.add_n(DropReason::LearnTableFull, full);
    }

    /// Hashes the tuples of a batch's frames that will be looked up in
    /// conntrack (all but those `skip` names), and starts the memory loads of
    /// those lookups, so that their cache misses overlap instead of being
    /// paid one after another: first every index bucket, then every flow
    /// those buckets point at. (Asking for each flow a fixed number of frames
    /// ahead of its lookup instead measured slower: at 4, 8 and 16 frames
    /// ahead, 100, 92 and 84 ns a packet with a million flows, against 75
    /// for the whole batch at once.)
    fn prefetch(&mut self, pre: &mut [Option<V4>], skip: impl Fn(&V4) -> bool + Copy) {
        if !pre.iter().flatten().any(|v| !skip(v)) {
            return;
        }
        let ct = self.ct();
        for v in pre.iter_mut().flatten().filter(|v| !skip(v)) {
            v.hash = ct.hash(&v.tuple);
            ct.prefetch(v.hash);
        }
        for v in pre.iter_mut().flatten().filter(|v| !skip(v)) {
            v.ct_hint = ct.prefetch_flow(v.hash);
        }
    }

    fn ct(&mut self) -> &mut CtTable {
        let t = self.tables;
        self.ct.get_or_insert_with(|| t.ct.lock())
    }

    /// Addresses a frame to `side` at L2 and picks its output.
    fn emit_to(&mut self, f: &mut [u8], side: Side, dst_ip: u32) -> Action {
        // The L2 header depends on the next hop, not on the destination: a
        // container's is its own MAC, the uplink's the next hop's. Keyed so,
        // the batch's frames to many destinations behind one gateway share
        // one neighbour lookup; a frame to the last frame's destination
        // needs not even the route lookup.
        if let Some(e) = self.last_emit.as_mut() {
            if e.side == side && e.dst == dst_ip {
                f[0..12].copy_from_slice(&e.macs);
                return e.action;
            }
        }
        let l2_key = match side {
            Side::Uplink => self.snap.uplink.as_ref().and_then(|u| u.next_hop(dst_ip)),
            Side::Container { .. } => Some(0),
        };
        if let (Some(e), Some(k)) = (self.last_emit.as_mut(), l2_key) {
            if e.side == side && e.l2_key == k {
                e.dst = dst_ip;
                f[0..12].copy_from_slice(&e.macs);
                return e.action;
            }
        }
        let action = self.emit_uncached(f, side, dst_ip);
        if let (Action::Unicast(_), Some(l2_key)) = (action, l2_key) {
            let mut macs = [0u8; 12];
            macs.copy_from_slice(&f[0..12]);
            self.last_emit = Some(LastEmit {
                side,
                dst: dst_ip,
                l2_key,
                macs,
                action,
            });
        }
        action
    }

    fn emit_uncached(&mut self, f: &mut [u8], side: Side, dst_ip: u32) -> Action {
        match side {
            Side::Uplink => {
                let Some(u) = self.snap.uplink.as_ref() else {
                    return Action::Drop(DropReason::NoRoute);
                };
                to_uplink(self.tables, u, f, dst_ip)
            }
            Side::Container { net, mac } => {
                let Some(nv) = self.snap.network(net) else {
                    return Action::Drop(DropReason::NoNetwork);
                };
                let Some(l3) = nv.l3.as_ref() else {
                    return Action::Drop(DropReason::NoNetwork);
                };
                f[0..6].copy_from_slice(&mac.bytes());
                f[6..12].copy_from_slice(&l3.gw_mac.bytes());
                container_port(&self.tables.fdb, nv, mac)
            }
        }
    }

    /// Translates a packet of a tracked flow and addresses it.
    fn translate(&mut self, p: &mut Packet, v: &V4, slot: FlowHit) -> Action {
        let partial = p.meta.offload.csum.is_some() || p.meta.offload.gso.is_some();
        let f = p.data_mut();
        if !ttl_dec(f) {
            return Action::Drop(DropReason::TtlExceeded);
        }
        rewrite(f, v, &slot.new, partial);
        self.emit_to(f, slot.side, slot.new.dst)
    }

    /// Looks `v` up and, on a hit, advances the flow's state.
    fn track(&mut self, v: &V4) -> Option<FlowHit> {
        let now = self.now;
        let (flow, dir) = self.ct().lookup_hinted(&v.tuple, v.hash, v.ct_hint)?;
        flow.see(dir, v.flags, now);
        Some(FlowHit {
            new: flow.translated(dir),
            side: flow.out_side(dir),
        })
    }

    fn create(&mut self, orig: Tuple, reply: Tuple, os: Side, rs: Side, flags: u8) -> FlowOrDrop {
        let state = match orig.proto {
            PROTO_TCP if flags & 0x02 != 0 => State::Tcp(TcpState::SynSent),
            PROTO_TCP => State::Tcp(TcpState::Established),
            PROTO_UDP => State::Udp { replied: false },
            _ => State::Icmp,
        };
        let now = self.now;
        let stats = &self.tables.ct.stats;
        match self.ct().create(orig, reply, os, rs, state, now) {
            Ok(f) => {
                f.see(crate::conntrack::Dir::Orig, flags, now);
                stats
                    .created
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let hit = hit_of(f);
                Ok(hit)
            }
            Err(CreateError::Full) => {
                stats
                    .full
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(DropReason::CtFull)
            }
            Err(CreateError::PortsExhausted) => Err(DropReason::NatPortsExhausted),
        }
    }
}

type FlowOrDrop = Result<FlowHit, DropReason>;

#[derive(Debug, Clone, Copy)]
struct FlowHit {
    new: Tuple,
    side: Side,
}

fn hit_of(f: &FlowEntry) -> FlowHit {
    FlowHit {
        new: f.translated(crate::conntrack::Dir::Orig),
        side: f.out_side(crate::conntrack::Dir::Orig),
    }
}

/// Output port for a container's MAC in `nv`: learned port, else flood.
fn container_port(fdb: &Fdb, nv: &NetworkView, mac: Mac) -> Action {
    match fdb.lookup(nv.id, mac) {
        Some(p) => Action::Unicast(p),
        None => Action::FloodIn(nv.id),
    }
}

/// Addresses `f` to the next hop of `dst_ip` on the uplink.
fn to_uplink(tables: &Tables, u: &UplinkView, f: &mut [u8], dst_ip: u32) -> Action {
    let mac = match tables.next_hop_mac(u, dst_ip) {
        Ok(m) => m,
        Err(r) => return Action::Drop(r),
    };
    f[0..6].copy_from_slice(&mac.bytes());
    f[6..12].copy_from_slice(&u.mac.bytes());
    Action::Unicast(u.port)
}

/// Routes the frames [`mark`] picked, from a container port of `net`.
pub fn route_batch(
    ctx: &mut Ctx<'_>,
    net: &NetworkView,
    l3: &L3View,
    batch: &mut [Packet],
    hdrs: &mut [Hdr],
    parsed: &mut Parsed,
) {
    let (pre, frags, now) = (&mut parsed.v, &mut parsed.frags, ctx.now);
    pre.clear();
    pre.extend(batch.iter().zip(hdrs.iter()).map(|(p, h)| {
        if h.action == Action::Route && ethertype(p.data()) == ETH_P_IPV4 {
            parse_v4(p.data(), frags, now)
        } else {
            None
        }
    }));
    ctx.prefetch(pre, |_| false);
    for (i, (p, h)) in batch.iter_mut().zip(hdrs.iter_mut()).enumerate() {
        if h.action == Action::Route {
            let v = pre.get(i).copied().flatten();
            h.action = from_container(ctx, net, l3, p, h.src, v);
        }
    }
}

fn host_port_or_drop(l3: &L3View) -> Action {
    l3.host_port
        .map_or(Action::Drop(DropReason::NoRoute), Action::Unicast)
}

fn from_container(
    ctx: &mut Ctx<'_>,
    net: &NetworkView,
    l3: &L3View,
    p: &mut Packet,
    src_mac: Mac,
    pre: Option<V4>,
) -> Action {
    match ethertype(p.data()) {
        ETH_P_ARP => {
            if arp_request_target(p.data()) == Some(l3.gw_ip) {
                if arp_reply_in_place(p.data_mut(), l3.gw_mac, l3.gw_ip) {
                    return Action::Unicast(ctx.in_port);
                }
                return Action::Drop(DropReason::BadL3);
            }
            // Replies to the host's own ARP requests.
            return host_port_or_drop(l3);
        }
        ETH_P_IPV4 => {}
        _ => return host_port_or_drop(l3),
    }
    // Parsed (and hashed) with the batch.
    let Some(v) = pre else {
        return Action::Drop(DropReason::BadL3);
    };
    let t = v.tuple;
    if t.dst == l3.gw_ip && t.proto == PROTO_ICMP && v.icmp_type == ICMP_ECHO {
        // The gateway answers whole echo requests; it reassembles nothing.
        if v.frag == Frag::Whole && echo_reply_in_place(p.data_mut(), &v) {
            return Action::Unicast(ctx.in_port);
        }
        return Action::Drop(DropReason::BadL3);
    }
    if t.proto == PROTO_ICMP
        && v.frag == Frag::Whole
        && matches!(
            v.icmp_type,
            ICMP_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
        )
    {
        // About a packet of a tracked flow (e.g. a published UDP port with
        // nothing listening): translated back like the flow's packets.
        if let a @ (Action::Unicast(_) | Action::FloodIn(_)) = icmp_error_in(ctx, p, &v) {
            return a;
        }
    }
    if let Some(hit) = ctx.track(&v) {
        return ctx.translate(p, &v, hit);
    }
    if t.dst == l3.gw_ip || l3.subnet.contains(t.dst) {
        // The host's own services on the gateway address.
        return host_port_or_drop(l3);
    }
    if ctx.snap.network_of_ip(t.dst).is_some() {
        return Action::Drop(DropReason::Isolated);
    }
    let Some(u) = ctx.snap.uplink.as_ref() else {
        return Action::Drop(DropReason::NoRoute);
    };
    if u.is_local(t.dst) {
        if let Some(pb) = ctx.snap.published_at(t.proto, t.dst, t.dport).copied() {
            // Hairpin: to a published port through the host's address. The
            // source becomes the target network's gateway, so the reply comes
            // back through the switch.
            if l3.internal {
                return Action::Drop(DropReason::Internal);
            }
            let Some(tnv) = ctx.snap.network(pb.net) else {
                return Action::Drop(DropReason::NoContainer);
            };
            let Some(tl3) = tnv.l3.as_ref().filter(|x| !x.internal) else {
                return Action::Drop(DropReason::Internal);
            };
            let Some(&tmac) = tl3.hosts.get(&pb.ip) else {
                return Action::Drop(DropReason::NoContainer);
            };
            if v.frag == Frag::Rest {
                // Its first fragment made no flow: nothing to follow.
                return Action::Drop(DropReason::BadL3);
            }
            let (gw, range) = (tl3.gw_ip, u.snat_ports);
            let Some(nat_port) = ctx
                .ct()
                .alloc_port(t.proto, pb.ip, pb.port, gw, range, t.sport)
            else {
                return Action::Drop(DropReason::NatPortsExhausted);
            };
            let reply = Tuple {
                src: pb.ip,
                dst: gw,
                sport: pb.port,
                dport: nat_port,
                proto: t.proto,
            };
            let os = Side::Container {
                net: net.id,
                mac: src_mac,
            };
            let rs = Side::Container {
                net: pb.net,
                mac: tmac,
            };
            return match ctx.create(t, reply, os, rs, v.flags) {
                Ok(hit) => ctx.translate(p, &v, hit),
                Err(r) => Action::Drop(r),
            };
        }
        // The host's own services on its other addresses.
        return host_port_or_drop(l3);
    }
    if l3.internal {
        return Action::Drop(DropReason::Internal);
    }
    let is_tracked = matches!(t.proto, PROTO_TCP | PROTO_UDP)
        || (t.proto == PROTO_ICMP && v.icmp_type == ICMP_ECHO);
    if !is_tracked {
        return Action::Drop(DropReason::BadL3);
    }
    if u.next_hop(t.dst).is_none() {
        return Action::Drop(DropReason::NoRoute);
    }
    if v.frag == Frag::Rest {
        // Its first fragment made no flow: nothing to follow.
        return Action::Drop(DropReason::BadL3);
    }
    // New flow to the outside: SNAT to the uplink's address.
    let (snat, range) = (u.snat_ip, u.snat_ports);
    let Some(nat_port) = ctx
        .ct()
        .alloc_port(t.proto, t.dst, t.dport, snat, range, t.sport)
    else {
        return Action::Drop(DropReason::NatPortsExhausted);
    };
    let reply = Tuple {
        src: t.dst,
        dst: snat,
        sport: if t.proto == PROTO_ICMP {
            nat_port
        } else {
            t.dport
        },
        dport: nat_port,
        proto: t.proto,
    };
    let os = Side::Container {
        net: net.id,
        mac: src_mac,
    };
    match ctx.create(t, reply, os, Side::Uplink, v.flags) {
        Ok(hit) => ctx.translate(p, &v, hit),
        Err(r) => Action::Drop(r),
    }
}

/// Handles a batch received on the uplink: sets each frame's action.
pub fn from_uplink(
    ctx: &mut Ctx<'_>,
    u: &UplinkView,
    batch: &mut [Packet],
    out: &mut Vec<Action>,
    parsed: &mut Parsed,
) {
    out.clear();
    let (pre, frags, now) = (&mut parsed.v, &mut parsed.frags, ctx.now);
    pre.clear();
    let vtep = u.vtep_ip;
    pre.extend(batch.iter().map(|p| {
        let f = p.data();
        if ethertype(f) == ETH_P_IPV4 {
            parse_v4(f, frags, now)
        } else {
            None
        }
    }));
    // VXLAN for the local VTEP is not tracked: no conntrack work for it.
    ctx.prefetch(pre, |v| to_vtep(v, vtep));
    for (i, p) in batch.iter_mut().enumerate() {
        let v = pre.get(i).copied().flatten();
        let a = uplink_one(ctx, u, p, v);
        out.push(a);
    }
}

/// VXLAN to the local VTEP: decapsulated, never tracked (a fragment of it
/// too: refused as malformed, the switch reassembles nothing).
#[inline]
fn to_vtep(v: &V4, vtep: u32) -> bool {
    v.tuple.proto == PROTO_UDP && v.tuple.dport == super::vxlan::VXLAN_PORT && v.tuple.dst == vtep
}

fn uplink_one(ctx: &mut Ctx<'_>, u: &UplinkView, p: &mut Packet, pre: Option<V4>) -> Action {
    let f = p.data();
    if f.len() < ETH_LEN {
        return Action::Drop(DropReason::Runt);
    }
    let dst = Mac::from_bytes(&[f[0], f[1], f[2], f[3], f[4], f[5]]);
    if dst != u.mac && dst != Mac::BROADCAST {
        return Action::Drop(DropReason::ToKernel);
    }
    match ethertype(f) {
        ETH_P_ARP => {
            if !u.snat_ip_is_local && arp_request_target(f) == Some(u.snat_ip) {
                if arp_reply_in_place(p.data_mut(), u.mac, u.snat_ip) {
                    return Action::Unicast(u.port);
                }
                return Action::Drop(DropReason::BadL3);
            }
            return Action::Drop(DropReason::ToKernel);
        }
        ETH_P_IPV4 => {}
        _ => return Action::Drop(DropReason::ToKernel),
    }
    // Parsed (and hashed) with the batch; a frame that did not parse then
    // does not parse now.
    let Some(v) = pre else {
        return Action::Drop(DropReason::ToKernel);
    };
    let t = v.tuple;
    if to_vtep(&v, u.vtep_ip) {
        if v.frag != Frag::Whole {
            return Action::Drop(DropReason::VxlanMalformed);
        }
        return from_tunnel(ctx, p, &v);
    }
    if !u.is_local(t.dst) {
        return Action::Drop(DropReason::ToKernel);
    }
    if t.proto == PROTO_ICMP
        && matches!(
            v.icmp_type,
            ICMP_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
        )
    {
        if v.frag != Frag::Whole {
            return Action::Drop(DropReason::BadL3);
        }
        return icmp_error_in(ctx, p, &v);
    }
    if let Some(hit) = ctx.track(&v) {
        return ctx.translate(p, &v, hit);
    }
    let Some(pb) = ctx.snap.published_at(t.proto, t.dst, t.dport).copied() else {
        return Action::Drop(DropReason::ToKernel);
    };
    if v.frag == Frag::Rest {
        // Its first fragment made no flow: nothing to follow.
        return Action::Drop(DropReason::BadL3);
    }
    let Some(l3) = ctx.snap.network(pb.net).and_then(|n| n.l3.as_ref()) else {
        return Action::Drop(DropReason::NoContainer);
    };
    if l3.internal {
        return Action::Drop(DropReason::Internal);
    }
    let Some(&mac) = l3.hosts.get(&pb.ip) else {
        return Action::Drop(DropReason::NoContainer);
    };
    let reply = Tuple {
        src: pb.ip,
        dst: t.src,
        sport: pb.port,
        dport: t.sport,
        proto: t.proto,
    };
    let rs = Side::Container { net: pb.net, mac };
    match ctx.create(t, reply, Side::Uplink, rs, v.flags) {
        Ok(hit) => ctx.translate(p, &v, hit),
        Err(r) => Action::Drop(r),
    }
}

/// An ICMP error from outside about a packet the switch sent: translate the
/// outer destination and the embedded header back to the container's view.
/// The embedded packet is usually cut short, so it is read by hand (RFC 792
/// promises its IP header and first 8 bytes).
fn icmp_error_in(ctx: &mut Ctx<'_>, p: &mut Packet, v: &V4) -> Action {
    let inner = (v.l4 as usize) + 8;
    let f = p.data();
    if f.len() < inner + 20 || f[inner] >> 4 != 4 {
        return Action::Drop(DropReason::BadL3);
    }
    let ihl = ((f[inner] & 0x0f) as usize) * 4;
    let il4 = inner + ihl;
    if ihl < 20 || f.len() < il4 + 8 {
        return Action::Drop(DropReason::BadL3);
    }
    let proto = f[inner + 9];
    let (mut sport, mut dport) = (be16(f, il4), be16(f, il4 + 2));
    if proto == PROTO_ICMP {
        sport = be16(f, il4 + 4);
        dport = sport;
    }
    // What the switch sent, as it left: the flow's reply tuple reversed.
    let sent = Tuple {
        src: be32(f, inner + 12),
        dst: be32(f, inner + 16),
        sport,
        dport,
        proto,
    };
    let Some((flow, dir)) = ctx.ct().lookup(&sent.reversed()) else {
        return Action::Drop(DropReason::ToKernel);
    };
    // The embedded packet becomes the one the container sent.
    let orig_view = flow.translated(dir).reversed();
    let side = flow.out_side(dir);
    let f = p.data_mut();
    if !ttl_dec(f) {
        return Action::Drop(DropReason::TtlExceeded);
    }
    // Outer destination: the sender of the embedded packet.
    let old_dst = be32(f, ETH_LEN + 16);
    let mut c = checksum::update32(be16(f, ETH_LEN + 10), old_dst, orig_view.src);
    put32(f, ETH_LEN + 16, orig_view.src);
    // Outer source: where the flow's packets in this direction have their
    // source translated (a container behind a published port, a hairpin),
    // the error's is too, as the kernel's NAT does: no container address
    // leaves through the uplink. Otherwise (an error from a router on the
    // way) it is kept.
    let old_src = be32(f, ETH_LEN + 12);
    if sent.dst != orig_view.dst {
        c = checksum::update32(c, old_src, orig_view.dst);
        put32(f, ETH_LEN + 12, orig_view.dst);
    }
    put16(f, ETH_LEN + 10, c);
    // Embedded header: addresses, ports (or ICMP id) and its checksums.
    put32(f, inner + 12, orig_view.src);
    put32(f, inner + 16, orig_view.dst);
    put16(f, inner + 10, 0);
    let ic = checksum::finish(0, &f[inner..il4]);
    put16(f, inner + 10, ic);
    match proto {
        PROTO_UDP => {
            let c = be16(f, il4 + 6);
            if c != 0 {
                let mut c = checksum::update32(c, sent.src, orig_view.src);
                c = checksum::update32(c, sent.dst, orig_view.dst);
                c = checksum::update16(c, sent.sport, orig_view.sport);
                c = checksum::update16(c, sent.dport, orig_view.dport);
                put16(f, il4 + 6, c);
            }
            put16(f, il4, orig_view.sport);
            put16(f, il4 + 2, orig_view.dport);
        }
        PROTO_TCP => {
            put16(f, il4, orig_view.sport);
            put16(f, il4 + 2, orig_view.dport);
        }
        PROTO_ICMP => put16(f, il4 + 4, orig_view.sport),
        _ => {}
    }
    // The ICMP checksum covers the whole message: recompute it.
    let total = (be16(f, ETH_LEN + 2) as usize + ETH_LEN).min(f.len());
    put16(f, (v.l4 as usize) + 2, 0);
    let c = checksum::finish(0, &f[(v.l4 as usize)..total]);
    put16(f, (v.l4 as usize) + 2, c);
    ctx.emit_to(f, side, orig_view.src)
}

/// A VXLAN packet for the local VTEP: decapsulated, then switched inside its
/// overlay network (to a local port; never back into a tunnel).
fn from_tunnel(ctx: &mut Ctx<'_>, p: &mut Packet, v: &V4) -> Action {
    use super::vxlan::{coalesce, decap, is_remote, Decap};
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The smoltcp reading of the IPv4 header (what `parse_v4` does for
    /// headers with options), for any header.
    fn slow_header(f: &[u8]) -> Option<(usize, u32, u32, u8)> {
        let ip = Ipv4Packet::new_checked(f.get(ETH_LEN..)?).ok()?;
        // A later fragment parses only behind its first (none here).
        if ip.version() != 4 || ip.frag_offset() != 0 || !ip.verify_checksum() {
            return None;
        }
        Some((
            ETH_LEN + ip.header_len() as usize,
            u32::from(ip.src_addr()),
            u32::from(ip.dst_addr()),
            ip.next_header().into(),
        ))
    }

    /// The fixed-offset fast path agrees with smoltcp on every option-less
    /// header, valid or not (random lengths, fragments, protocols, header
    /// checksums).
    #[test]
    fn fast_ipv4_parse_agrees_with_smoltcp() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50_000 {
            let len = 14 + (rnd() % 80) as usize;
            let mut f: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            f[12] = 0x08;
            f[13] = 0x00;
            if len > 14 {
                f[14] = 0x45;
            }
            if len > 23 && rnd() % 2 == 0 {
                f[23] = [PROTO_TCP, PROTO_UDP, PROTO_ICMP][(rnd() % 3) as usize];
            }
            if len > 21 && rnd() % 2 == 0 {
                f[20] = 0;
                f[21] = 0;
            }
            if len > 17 && rnd() % 2 == 0 {
                let t = (len - 14).saturating_sub((rnd() % 8) as usize) as u16;
                f[16..18].copy_from_slice(&t.to_be_bytes());
            }
            if len >= 34 && rnd() % 4 != 0 {
                // A right header checksum, mostly; a wrong one otherwise.
                f[24..26].copy_from_slice(&[0, 0]);
                let c = checksum::finish(0, &f[14..34]);
                f[24..26].copy_from_slice(&c.to_be_bytes());
            }
            let fast = parse_v4(&f, &mut Frags::default(), 0);
            match slow_header(&f) {
                None => assert!(fast.is_none(), "{f:02x?}"),
                Some((l4, src, dst, proto)) => {
                    if let Some(v) = fast {
                        assert_eq!(
                            (v.l4 as usize, v.tuple.src, v.tuple.dst, v.tuple.proto),
                            (l4, src, dst, proto)
                        );
                    } else {
                        // Refused only for a too-short L4 header.
                        let need = match proto {
                            PROTO_TCP => 20,
                            PROTO_UDP | PROTO_ICMP => 8,
                            _ => 0,
                        };
                        assert!(f.len() < l4 + need, "{f:02x?}");
                    }
                }
            }
        }
    }
}
