//! Connection tracking with NAT bindings.
//!
//! A flow has two tuples: `orig`, as its first packet was seen before any
//! translation, and `reply`, as packets of the other direction arrive (after
//! translation). Both tuples index the same entry, so one lookup finds the
//! flow and the direction. Rewriting a packet of either direction to the
//! other side's view is the same operation for SNAT, DNAT and hairpin (both):
//! a packet matching `orig` leaves as the reverse of `reply`, one matching
//! `reply` leaves as the reverse of `orig`.
//!
//! Each worker has its own table and no lock (see [`Conntrack`] for how a
//! flow finds its worker). The tables together are bounded (`max_flows`);
//! when they are full, new flows are refused (a counted drop) while every
//! existing flow keeps working. Expiry, listing and removal run in the
//! worker between bursts, [`EXPIRE_STEP`] slots at a time.
use crate::fdb::NetId;
use crate::wire::mac::Mac;
use slots::Slots;
pub use slots::{carried, FlowMemory};

mod slots;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// IP protocol numbers the tracker understands.
pub const PROTO_ICMP: u8 = 1;
/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;

/// A unidirectional 5-tuple (ICMP echo: both ports are the identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Tuple {
    /// Source address (host order).
    pub src: u32,
    /// Destination address (host order).
    pub dst: u32,
    /// Source port or ICMP identifier.
    pub sport: u16,
    /// Destination port or ICMP identifier.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
}

impl Tuple {
    /// The tuple of the other direction.
    #[inline]
    pub fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    #[inline]
    fn key(&self) -> u128 {
        (self.src as u128) << 72
            | (self.dst as u128) << 40
            | (self.sport as u128) << 24
            | (self.dport as u128) << 8
            | self.proto as u128
    }
}

/// Where one end of a flow lives, so that translated packets can be
/// addressed at L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Side {
    /// Beyond the uplink (next hop from the routing table).
    Uplink,
    /// A container: network and MAC.
    Container {
        /// Network.
        net: NetId,
        /// The container's MAC.
        #[serde(serialize_with = "ser_mac")]
        mac: Mac,
    },
}

fn ser_mac<S: serde::Serializer>(m: &Mac, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(m)
}

/// Direction of a packet relative to its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Same direction as the first packet.
    Orig,
    /// The answer.
    Reply,
}

/// TCP connection states (a simplified RFC 793 / nf_conntrack machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum TcpState {
    /// SYN seen from the originator.
    SynSent = 0,
    /// SYN+ACK seen from the responder.
    SynRecv = 1,
    /// Handshake done (or picked up mid-stream).
    Established = 2,
    /// One side sent FIN.
    FinWait = 3,
    /// Both sides sent FIN.
    TimeWait = 4,
    /// RST seen.
    Close = 5,
}

/// Flow state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "proto", content = "state", rename_all = "lowercase")]
pub enum State {
    /// TCP with its connection state.
    Tcp(TcpState),
    /// UDP: `replied` once the other side answered.
    Udp {
        /// A reply was seen.
        replied: bool,
    },
    /// ICMP echo.
    Icmp,
}

/// A [`State`] as the one byte a [`FlowEntry`] keeps: the TCP states are
/// their discriminants, then UDP before and after a reply, then ICMP.
const ST_UDP_NEW: u8 = 6;
const ST_UDP_REPLIED: u8 = 7;
const ST_ICMP: u8 = 8;

impl State {
    #[inline]
    fn code(self) -> u8 {
        match self {
            State::Tcp(t) => t as u8,
            State::Udp { replied: false } => ST_UDP_NEW,
            State::Udp { replied: true } => ST_UDP_REPLIED,
            State::Icmp => ST_ICMP,
        }
    }

    #[inline]
    fn from_code(c: u8) -> State {
        match TcpState::from_code(c) {
            Some(t) => State::Tcp(t),
            None if c == ST_UDP_NEW => State::Udp { replied: false },
            None if c == ST_UDP_REPLIED => State::Udp { replied: true },
            None => State::Icmp,
        }
    }
}

impl TcpState {
    #[inline]
    fn from_code(c: u8) -> Option<TcpState> {
        use TcpState::*;
        Some(match c {
            0 => SynSent,
            1 => SynRecv,
            2 => Established,
            3 => FinWait,
            4 => TimeWait,
            5 => Close,
            _ => return None,
        })
    }
}

/// Idle timeouts in seconds (the Linux nf_conntrack defaults).
pub fn timeout(s: State) -> u32 {
    match s {
        State::Tcp(TcpState::SynSent) => 120,
        State::Tcp(TcpState::SynRecv) => 60,
        State::Tcp(TcpState::Established) => 432_000,
        State::Tcp(TcpState::FinWait) => 120,
        State::Tcp(TcpState::TimeWait) => 120,
        State::Tcp(TcpState::Close) => 10,
        State::Udp { replied: false } => 30,
        State::Udp { replied: true } => 120,
        State::Icmp => 30,
    }
}

/// TCP flag bits (the low byte of the flags word).
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// The next TCP state after a packet of direction `d` with `flags`; `fins`
/// records the FINs seen from orig (bit 0) and reply (bit 1).
fn tcp_next(s: TcpState, fins: &mut u8, d: Dir, flags: u8) -> TcpState {
    use tcp_flags::*;
    use TcpState::*;
    if flags & RST != 0 {
        return Close;
    }
    if flags & FIN != 0 {
        *fins |= 1 << (d as u8);
    }
    match s {
        // A new SYN on a closed or closing flow reopens it.
        Close | TimeWait if flags & SYN != 0 && flags & ACK == 0 && d == Dir::Orig => {
            *fins = 0;
            SynSent
        }
        SynSent if d == Dir::Reply && flags & SYN != 0 && flags & ACK != 0 => SynRecv,
        SynRecv if d == Dir::Orig && flags & ACK != 0 && flags & SYN == 0 => Established,
        _ if *fins == 3 => TimeWait,
        Established if *fins != 0 => FinWait,
        other => other,
    }
}

/// One tracked flow, as the control plane reads it (an owned copy of a
/// [`FlowEntry`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// First packet's tuple, before translation.
    pub orig: Tuple,
    /// Replies' tuple, as they arrive.
    pub reply: Tuple,
    /// Where the originator is.
    pub orig_side: Side,
    /// Where the responder is.
    pub reply_side: Side,
    /// Connection state.
    pub state: State,
    /// Last packet, seconds on the switch clock.
    pub last_seen: u32,
    /// Packets in each direction.
    pub packets: [u64; 2],
}

/// [`FlowEntry::flags`]: the entry holds a flow.
const F_LIVE: u8 = 1;
/// [`FlowEntry::flags`]: side `i` (0 orig, 1 reply) is the uplink.
const F_UPLINK: [u8; 2] = [2, 4];

/// One tracked flow as the table stores it: everything a packet of either
/// direction reads and writes in one aligned 64-byte cache line, so that a
/// lookup costs one index bucket (small enough to stay in cache) and one
/// line of flow memory. Tuples are kept field by field (no padding), a
/// side as `net << 48 | mac`.
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub struct FlowEntry {
    /// orig.src, orig.dst, reply.src, reply.dst.
    addrs: [u32; 4],
    /// orig.sport, orig.dport, reply.sport, reply.dport.
    ports: [u16; 4],
    /// Orig side, reply side (when not the uplink).
    sides: [u64; 2],
    packets: [u64; 2],
    last_seen: u32,
    proto: u8,
    /// A [`State`] code.
    state: u8,
    /// FINs seen from orig (bit 0) and reply (bit 1).
    fins: u8,
    /// [`F_LIVE`], [`F_UPLINK`].
    flags: u8,
}

const _: () = assert!(std::mem::size_of::<FlowEntry>() == 64);

impl FlowEntry {
    fn new(orig: Tuple, reply: Tuple, sides: [Side; 2], state: State, now: u32) -> Self {
        let mut e = FlowEntry {
            addrs: [orig.src, orig.dst, reply.src, reply.dst],
            ports: [orig.sport, orig.dport, reply.sport, reply.dport],
            proto: orig.proto,
            state: state.code(),
            last_seen: now,
            flags: F_LIVE,
            ..Default::default()
        };
        for (i, s) in sides.into_iter().enumerate() {
            match s {
                Side::Uplink => e.flags |= F_UPLINK[i],
                Side::Container { net, mac } => {
                    e.sides[i] = (net as u64) << 48 | (mac.0 & 0xffff_ffff_ffff)
                }
            }
        }
        e
    }

    #[inline]
    pub(crate) fn live(&self) -> bool {
        self.flags & F_LIVE != 0
    }

    /// The tuple packets of direction `d` arrive with.
    #[inline]
    pub fn tuple(&self, d: Dir) -> Tuple {
        let i = d as usize * 2;
        Tuple {
            src: self.addrs[i],
            dst: self.addrs[i + 1],
            sport: self.ports[i],
            dport: self.ports[i + 1],
            proto: self.proto,
        }
    }

    /// The tuple a packet of direction `d` leaves with: the reverse of the
    /// other direction's.
    #[inline]
    pub fn translated(&self, d: Dir) -> Tuple {
        self.tuple(d.other()).reversed()
    }

    #[inline]
    fn side(&self, i: usize) -> Side {
        if self.flags & F_UPLINK[i] != 0 {
            return Side::Uplink;
        }
        let w = self.sides[i];
        Side::Container {
            net: (w >> 48) as NetId,
            mac: Mac(w & 0xffff_ffff_ffff),
        }
    }

    /// Where a packet of direction `d` goes: the other end's side.
    #[inline]
    pub fn out_side(&self, d: Dir) -> Side {
        self.side(d.other() as usize)
    }

    /// Connection state.
    #[inline]
    pub fn state(&self) -> State {
        State::from_code(self.state)
    }

    /// Advances the state for a packet of direction `d` with TCP `flags`
    /// (ignored for other protocols) seen at `now`.
    #[inline]
    pub fn see(&mut self, d: Dir, flags: u8, now: u32) {
        self.last_seen = now;
        let n = &mut self.packets[d as usize];
        *n = n.wrapping_add(1);
        self.state = match TcpState::from_code(self.state) {
            Some(s) => tcp_next(s, &mut self.fins, d, flags) as u8,
            None if self.state == ST_UDP_NEW && d == Dir::Reply => ST_UDP_REPLIED,
            None => self.state,
        };
    }

    /// An owned copy, for the control plane.
    pub fn flow(&self) -> Flow {
        Flow {
            orig: self.tuple(Dir::Orig),
            reply: self.tuple(Dir::Reply),
            orig_side: self.side(0),
            reply_side: self.side(1),
            state: self.state(),
            last_seen: self.last_seen,
            packets: self.packets,
        }
    }

    fn idle_too_long(&self, now: u32) -> bool {
        self.live() && now.saturating_sub(self.last_seen) > timeout(self.state())
    }
}

impl Dir {
    /// The other direction.
    #[inline]
    pub fn other(self) -> Dir {
        match self {
            Dir::Orig => Dir::Reply,
            Dir::Reply => Dir::Orig,
        }
    }
}

/// Result of [`CtTable::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateError {
    /// The table holds `max_flows` flows.
    Full,
    /// No free translated port for this destination.
    PortsExhausted,
}

/// The packed tuple `k` hashed with the table's random `seed`. Keyed, as the
/// kernel keys its conntrack hash: a sender who picks its source address
/// and port (a published port takes new flows from anyone) cannot aim flows
/// at one bucket and stretch the probes of everyone whose flows sit there.
/// One half is mixed with the seed before it meets the other, so knowing
/// the function does not tell where a tuple lands.
#[inline]
fn hash_key(k: u128, seed: u64) -> u64 {
    use crate::hash::fmix64;
    let lo = fmix64((k as u64) ^ seed);
    let hi = ((k >> 64) as u64) ^ seed.rotate_left(29);
    fmix64(lo ^ hi.wrapping_mul(crate::hash::FIB))
}

/// A random 64-bit value (std's per-process random keys, hashed).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

/// The most flows a table can be sized for: an index entry keeps a flow's
/// slot and direction in at most 24 bits, leaving at least 8 for the tag.
pub const MAX_FLOWS: usize = 1 << 23;
/// Entries per index bucket: one 64-byte cache line of `u32`s.
const WAYS: usize = 16;
/// No bucket position known (see [`CtTable::prefetch_flow`]).
pub const NO_HINT: u8 = WAYS as u8;
const EMPTY: u32 = 0;

/// A bit for each way of `ways` whose tag (the bits `keep` selects) is
/// `want`: no branch, and on x86-64 four SSE2 compares and a byte mask.
#[inline(always)]
fn tag_matches(ways: &[u32; WAYS], keep: u32, want: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use safe_arch::*;
        let (k, w) = (
            set_splat_i32_m128i(keep as i32),
            set_splat_i32_m128i(want as i32),
        );
        let q = |i: usize| {
            let v = m128i::from([ways[i], ways[i + 1], ways[i + 2], ways[i + 3]]);
            cmp_eq_mask_i32_m128i(bitand_m128i(v, k), w)
        };
        let lo = pack_i32_to_i16_m128i(q(0), q(4));
        let hi = pack_i32_to_i16_m128i(q(8), q(12));
        move_mask_i8_m128i(pack_i16_to_i8_m128i(lo, hi)) as u32
    }
    #[cfg(not(target_arch = "x86_64"))]
    tag_matches_scalar(ways, keep, want)
}

/// [`tag_matches`] one way at a time (elsewhere than x86-64, and the
/// reference its test checks it against).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn tag_matches_scalar(ways: &[u32; WAYS], keep: u32, want: u32) -> u32 {
    ways.iter()
        .enumerate()
        .fold(0, |m, (i, &e)| m | ((e & keep == want) as u32) << i)
}

/// One cache line of index entries: `tag | slot << 1 | dir`, where the tag
/// takes the bits above the entry's reference (see [`CtTable::tag`]) and
/// has its lowest bit set, so an entry is never 0 (empty).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket([u32; WAYS]);

/// One worker's table (see [`Conntrack`] for how flows find their worker).
///
/// The index is a flat array of cache-line buckets with linear probing from
/// the bucket the hash's low half picks (multiply-shift, so any number of
/// buckets); an entry holds a tag of the hash's high half and the flow's
/// slot and direction, and the slot's tuple confirms the match. The index
/// is at most 62.5 % full at `max_flows` (12.8 bytes a flow: 13 MiB for a
/// million flows, small enough to stay in a server's last-level cache), so
/// a lookup's one miss to memory is the flow's own line, which
/// [`CtTable::prefetch`] and [`CtTable::prefetch_flow`] start loading for a
/// whole batch before the first lookup. Memory is sized from `max_flows`
/// up front and never grows or moves.
pub struct CtTable {
    buckets: Vec<Bucket>,
    /// `buckets.len()`, for the multiply-shift.
    n: u64,
    /// Bits of an index entry that name the slot and direction.
    ref_bits: u32,
    /// `(1 << ref_bits) - 1`.
    ref_mask: u32,
    slots: Slots,
    free: Vec<u32>,
    entries: usize,
    /// Entries moved back by removals from full buckets (see
    /// [`CtTable::vacate`]).
    shifted: usize,
    max: usize,
    expire_cursor: usize,
    port_cursor: u32,
    /// Flows removed since [`CtTable::take_freed`].
    freed: usize,
    /// The hash key (see [`hash_key`]), random per table.
    seed: u64,
}

impl CtTable {
    /// The hash the table files `t` under (compute once, pass to the
    /// `_hinted` calls).
    #[inline]
    pub fn hash(&self, t: &Tuple) -> u64 {
        hash_key(t.key(), self.seed)
    }

    /// An empty table for at most `max` flows whose entries live in `mem`
    /// (see [`FlowMemory`]).
    pub fn with_memory(max: usize, mem: FlowMemory) -> Self {
        let max = max.min(MAX_FLOWS);
        // Two entries per flow, at most 5/8 of the index's entries.
        let sized = max.max(8);
        let n = (2 * sized * 8 / 5).div_ceil(WAYS).max(2);
        let ref_bits = u32::BITS - (2 * sized as u32 - 1).leading_zeros();
        Self {
            buckets: vec![Bucket::default(); n],
            n: n as u64,
            ref_bits,
            ref_mask: (1 << ref_bits) - 1,
            slots: Slots::new(mem, max),
            free: Vec::new(),
            entries: 0,
            shifted: 0,
            max,
            expire_cursor: 0,
            port_cursor: 0,
            freed: 0,
            seed: random_seed(),
        }
    }

    /// An empty table for at most `max` flows, in anonymous memory.
    pub fn with_max(max: usize) -> Self {
        let cap = max.clamp(1, MAX_FLOWS);
        // Address space only: pages are taken as flows arrive, as a
        // vector's reserved capacity would be.
        let mem = FlowMemory::anonymous(cap)
            .unwrap_or_else(|e| panic!("cannot reserve memory for {cap} flows: {e}"));
        Self::with_memory(max, mem)
    }

    /// Takes over `flows` an earlier process left (see [`carried`]): each
    /// one whose protocol and state make sense and whose tuples no other
    /// flow holds is filed under this table's hash key, idle from `now`
    /// (the earlier process's clock meant nothing here). Returns how many.
    pub fn adopt(&mut self, flows: Vec<FlowEntry>, now: u32) -> usize {
        let mut taken = 0;
        for mut f in flows {
            let sane = f.live()
                && matches!(f.proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP)
                && f.state <= ST_ICMP
                && (f.proto == PROTO_TCP) == TcpState::from_code(f.state).is_some();
            let (o, r) = (f.tuple(Dir::Orig), f.tuple(Dir::Reply));
            if !sane || self.len() >= self.max || self.contains(&o) || self.contains(&r) {
                continue;
            }
            f.last_seen = now;
            let slot = match self.free.pop() {
                Some(s) => s,
                None => match self.slots.push(FlowEntry::default()) {
                    Some(s) => s as u32,
                    None => break,
                },
            };
            self.slots[slot as usize] = f;
            self.insert_entry(self.hash(&o), slot << 1);
            self.insert_entry(self.hash(&r), (slot << 1) | 1);
            taken += 1;
        }
        taken
    }

    /// The bucket a probe for hash `h` starts at.
    #[inline]
    fn home(&self, h: u64) -> usize {
        (((h & 0xffff_ffff) * self.n) >> 32) as usize
    }

    /// The tag bits of hash `h`: the high half's top bits above the
    /// reference, lowest of them set.
    #[inline]
    fn tag(&self, h: u64) -> u32 {
        ((h >> 32) as u32 >> self.ref_bits << self.ref_bits) | 1 << self.ref_bits
    }

    #[inline]
    fn tag_of(&self, e: u32) -> u32 {
        e & !self.ref_mask
    }

    #[inline]
    fn ref_of(&self, e: u32) -> u32 {
        e & self.ref_mask
    }

    #[inline]
    fn next(&self, b: usize) -> usize {
        if b + 1 == self.buckets.len() {
            0
        } else {
            b + 1
        }
    }

    /// The flow entry value `v` (`slot << 1 | dir`) names, if live.
    #[inline]
    fn entry(&self, v: u32) -> Option<&FlowEntry> {
        self.slots.get((v >> 1) as usize).filter(|f| f.live())
    }

    #[inline]
    fn dir_of(v: u32) -> Dir {
        if v & 1 == 0 {
            Dir::Orig
        } else {
            Dir::Reply
        }
    }

    /// Whether entry value `v` names a flow whose tuple in that direction
    /// is `t`.
    #[inline]
    fn holds(&self, v: u32, t: &Tuple) -> bool {
        self.entry(v)
            .is_some_and(|f| f.tuple(Self::dir_of(v)) == *t)
    }

    /// The flow and direction entry value `v` names.
    #[inline]
    fn flow_at(&mut self, v: u32) -> Option<(&mut FlowEntry, Dir)> {
        let f = self.slots.get_mut((v >> 1) as usize).filter(|f| f.live())?;
        Some((f, Self::dir_of(v)))
    }

    /// The index entry and position for `t`, if present.
    #[inline]
    fn find(&self, t: &Tuple, h: u64) -> Option<(usize, usize, u32)> {
        let tag = self.tag(h);
        let mut b = self.home(h);
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets.get(b)?.0;
            let mut has_empty = false;
            for (w, &e) in bucket.iter().enumerate() {
                if e == EMPTY {
                    has_empty = true;
                } else if self.tag_of(e) == tag && self.holds(self.ref_of(e), t) {
                    return Some((b, w, self.ref_of(e)));
                }
            }
            if has_empty {
                return None;
            }
            b = self.next(b);
        }
        None
    }

    /// Files reference `v` under hash `h`. The index is at most 5/8 full,
    /// so a free place is always found.
    fn insert_entry(&mut self, h: u64, v: u32) {
        let e = self.tag(h) | v;
        let mut b = self.home(h);
        for _ in 0..self.buckets.len() {
            if let Some(slot) = self.buckets[b].0.iter_mut().find(|s| **s == EMPTY) {
                *slot = e;
                self.entries += 1;
                return;
            }
            b = self.next(b);
        }
    }

    fn remove_entry(&mut self, t: &Tuple) {
        if let Some((b, w, _)) = self.find(t, self.hash(t)) {
            self.entries -= 1;
            self.vacate(b, w);
        }
    }

    /// Index buckets with no empty way, and all buckets: a removal from a
    /// full one moves entries back (for the benchmark).
    pub fn full_buckets(&self) -> (usize, usize) {
        let full = self
            .buckets
            .iter()
            .filter(|b| !b.0.contains(&EMPTY))
            .count();
        (full, self.buckets.len())
    }

    /// The bucket entry `e` was filed from (its flow's hash in its
    /// direction); the flow is live.
    fn home_of(&self, e: u32) -> Option<usize> {
        let v = self.ref_of(e);
        let f = self.entry(v)?;
        Some(self.home(self.hash(&f.tuple(Self::dir_of(v)))))
    }

    /// Empties way `w` of bucket `b` with no tombstone, in time bounded by
    /// the run of full buckets after `b` (never the whole table). A probe
    /// stops at the first bucket with an empty way, so a bucket that was
    /// not full just gets its way emptied. A full one may have been passed
    /// by probes for entries further on: the first such entry moves back
    /// into the hole, its old place becomes the hole, and so on until a
    /// bucket that was not full ends the run (backward-shift deletion).
    fn vacate(&mut self, mut b: usize, mut w: usize) {
        let n = self.buckets.len();
        let dist = |from: usize, to: usize| (to + n - from) % n;
        let mut j = b;
        if self.buckets[b].0.contains(&EMPTY) {
            self.buckets[b].0[w] = EMPTY;
            return;
        }
        for _ in 1..n {
            j = self.next(j);
            let ways = self.buckets[j].0;
            // The flows of the bucket's entries, loaded together rather than
            // one miss after another.
            for &e in ways.iter().filter(|&&e| e != EMPTY) {
                if let Some(f) = self.slots.get((self.ref_of(e) >> 1) as usize) {
                    crate::prefetch::line(f);
                }
            }
            let back = ways.iter().position(|&e| {
                e != EMPTY && self.home_of(e).is_some_and(|h| dist(h, j) >= dist(b, j))
            });
            if let Some(k) = back {
                self.buckets[b].0[w] = ways[k];
                self.shifted += 1;
                (b, w) = (j, k);
            }
            if ways.contains(&EMPTY) {
                break;
            }
        }
        self.buckets[b].0[w] = EMPTY;
    }

    /// Starts loading the index bucket a lookup of a tuple with hash `h`
    /// will read (call it over a whole batch first, so that the misses of
    /// all its packets overlap).
    #[inline]
    pub fn prefetch(&self, h: u64) {
        if let Some(b) = self.buckets.get(self.home(h)) {
            crate::prefetch::line(b);
        }
    }

    /// After [`CtTable::prefetch`]: starts loading every flow whose entry in
    /// the bucket of hash `h` carries its tag (one, but for the rare false
    /// match of a short tag: the true flow is loaded too), and returns where
    /// in the bucket the first such entry sits (a hint for
    /// [`CtTable::lookup_hinted`]; [`NO_HINT`] if none matched). Where an
    /// entry sits is random, so this scan mispredicts about once per packet;
    /// the hint spares the lookup a second scan and a second mispredict.
    #[inline(always)]
    pub fn prefetch_flow(&self, h: u64) -> u8 {
        let Some(b) = self.buckets.get(self.home(h)) else {
            return NO_HINT;
        };
        let mut hits = tag_matches(&b.0, !self.ref_mask, self.tag(h));
        let hint = if hits == 0 {
            NO_HINT
        } else {
            hits.trailing_zeros() as u8
        };
        while hits != 0 {
            let w = hits.trailing_zeros() as usize;
            hits &= hits - 1;
            let v = b.0.get(w).map_or(0, |&e| self.ref_of(e));
            if let Some(f) = self.slots.get((v >> 1) as usize) {
                crate::prefetch::line(f);
            }
        }
        hint
    }

    /// [`CtTable::lookup`] with the tuple's [`hash`] already computed,
    /// trying first the bucket entry `hint` named by
    /// [`CtTable::prefetch_flow`] (checked: tag and tuple); any other case
    /// takes the full lookup.
    #[inline]
    pub fn lookup_hinted(&mut self, t: &Tuple, h: u64, hint: u8) -> Option<(&mut FlowEntry, Dir)> {
        let hinted = self
            .buckets
            .get(self.home(h))
            .and_then(|b| b.0.get(hint as usize))
            .filter(|e| self.tag_of(**e) == self.tag(h) && self.holds(self.ref_of(**e), t))
            .map(|e| self.ref_of(*e));
        let v = match hinted {
            Some(v) => v,
            None => self.find(t, h)?.2,
        };
        self.flow_at(v)
    }

    /// Finds the flow of a packet with tuple `t`.
    #[inline]
    pub fn lookup(&mut self, t: &Tuple) -> Option<(&mut FlowEntry, Dir)> {
        let (_, _, v) = self.find(t, self.hash(t))?;
        self.flow_at(v)
    }

    /// Whether a tuple is in use (either direction of any flow).
    #[inline]
    pub fn contains(&self, t: &Tuple) -> bool {
        self.find(t, self.hash(t)).is_some()
    }

    /// Flows tracked.
    pub fn len(&self) -> usize {
        self.entries / 2
    }

    /// The bound on flows.
    pub fn max(&self) -> usize {
        self.max
    }

    /// No flows.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Picks a source port (or ICMP identifier) in `lo..=hi` for the reply
    /// tuple `(remote → nat_ip:?)` that no flow uses; `prefer` first if free.
    pub fn alloc_port(
        &mut self,
        proto: u8,
        remote: u32,
        remote_port: u16,
        nat_ip: u32,
        range: (u16, u16),
        prefer: u16,
    ) -> Option<u16> {
        self.alloc_port_where(
            proto,
            (remote, remote_port),
            nat_ip,
            range,
            prefer,
            false,
            |_| true,
        )
    }

    /// [`CtTable::alloc_port`] among the ports `ok` accepts (those this
    /// worker owns, none a published port uses). `syn`: for a TCP SYN,
    /// which takes over a port whose only user toward that destination is
    /// a closed connection (CLOSE or TIME_WAIT, see [`CtTable::create`]):
    /// a client that opens and resets connections at a high rate would
    /// otherwise find every port held by its closed ones (4,536 ports over
    /// a 10 s CLOSE timeout: ~450 connections a second).
    #[allow(clippy::too_many_arguments)]
    pub fn alloc_port_where(
        &mut self,
        proto: u8,
        (remote, remote_port): (u32, u16),
        nat_ip: u32,
        (lo, hi): (u16, u16),
        prefer: u16,
        syn: bool,
        ok: impl Fn(u16) -> bool,
    ) -> Option<u16> {
        let span = (hi as u32).saturating_sub(lo as u32) + 1;
        let free = |p: u16, me: &Self| {
            if !ok(p) {
                return false;
            }
            let t = Tuple {
                src: remote,
                dst: nat_ip,
                // ICMP echo: both "ports" are the identifier.
                sport: if proto == PROTO_ICMP { p } else { remote_port },
                dport: p,
                proto,
            };
            match me.find(&t, me.hash(&t)) {
                None => true,
                Some((_, _, v)) => {
                    syn && me.entry(v).is_some_and(|f| {
                        matches!(f.state(), State::Tcp(TcpState::TimeWait | TcpState::Close))
                    })
                }
            }
        };
        if (lo..=hi).contains(&prefer) && free(prefer, self) {
            return Some(prefer);
        }
        // Round-robin from a moving cursor: a port just freed is the last to
        // be reused, which keeps a far end's TIME_WAIT out of the way.
        for i in 0..span {
            let p = lo as u32 + (self.port_cursor.wrapping_add(i) % span);
            if free(p as u16, self) {
                self.port_cursor = self.port_cursor.wrapping_add(i + 1);
                return Some(p as u16);
            }
        }
        None
    }

    /// Adds a flow; both tuples must be unused.
    pub fn create(
        &mut self,
        orig: Tuple,
        reply: Tuple,
        orig_side: Side,
        reply_side: Side,
        state: State,
        now: u32,
    ) -> Result<&mut FlowEntry, CreateError> {
        if self.len() >= self.max || self.slots.len() >= self.max && self.free.is_empty() {
            return Err(CreateError::Full);
        }
        if state == State::Tcp(TcpState::SynSent) {
            // A new connection takes over the tuples of a closed one, as
            // the kernel's conntrack lets a SYN reuse a TIME_WAIT entry: a
            // client reuses its source port toward another published port
            // of the same container port, whose reply tuple is the same.
            for t in [&orig, &reply] {
                if let Some((_, _, v)) = self.find(t, self.hash(t)) {
                    let slot = (v >> 1) as usize;
                    let closed = self.slots.get(slot).is_some_and(|f| {
                        matches!(f.state(), State::Tcp(TcpState::TimeWait | TcpState::Close))
                    });
                    if closed {
                        self.remove_slot(slot);
                    }
                }
            }
        }
        if self.contains(&orig) || self.contains(&reply) {
            return Err(CreateError::PortsExhausted);
        }
        let entry = FlowEntry::new(orig, reply, [orig_side, reply_side], state, now);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => self
                .slots
                .push(FlowEntry::default())
                .ok_or(CreateError::Full)? as u32,
        };
        self.insert_entry(self.hash(&orig), slot << 1);
        self.insert_entry(self.hash(&reply), (slot << 1) | 1);
        let f = self.slots.get_mut(slot as usize).ok_or(CreateError::Full)?;
        *f = entry;
        Ok(f)
    }

    fn remove_slot(&mut self, slot: usize) {
        let Some(f) = self.slots.get(slot).filter(|f| f.live()) else {
            return;
        };
        let (o, r) = (f.tuple(Dir::Orig), f.tuple(Dir::Reply));
        self.remove_entry(&o);
        self.remove_entry(&r);
        self.slots[slot] = FlowEntry::default();
        self.free.push(slot as u32);
        self.freed += 1;
    }

    /// Flows removed (expired, taken over by a new one, removed on request)
    /// since the last call: the owner gives their room back to
    /// [`Conntrack::release`].
    pub fn take_freed(&mut self) -> usize {
        std::mem::take(&mut self.freed)
    }

    /// Slots in the table (live and free): what a full pass visits.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Removes every flow `pred` selects; returns how many.
    pub fn remove_if(&mut self, pred: impl FnMut(&Flow) -> bool) -> usize {
        self.remove_if_in(0, usize::MAX, pred)
    }

    /// Removes the flows `pred` selects among the `n` slots from `from`;
    /// returns how many.
    pub fn remove_if_in(
        &mut self,
        from: usize,
        n: usize,
        mut pred: impl FnMut(&Flow) -> bool,
    ) -> usize {
        let doomed: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .skip(from)
            .take(n)
            .filter(|(_, f)| f.live() && pred(&f.flow()))
            .map(|(i, _)| i)
            .collect();
        for &i in &doomed {
            self.remove_slot(i);
        }
        doomed.len()
    }

    /// Expires idle flows among the next `budget` slots; returns how many.
    pub fn expire(&mut self, now: u32, budget: usize) -> usize {
        let n = self.slots.len();
        if n == 0 {
            return 0;
        }
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            let i = self.expire_cursor % n;
            self.expire_cursor = (i + 1) % n;
            if self.slots[i].idle_too_long(now) {
                self.remove_slot(i);
                removed += 1;
            }
        }
        removed
    }

    /// A copy of every flow.
    pub fn flows(&self) -> Vec<Flow> {
        self.flows_in(0, usize::MAX)
    }

    /// A copy of the flows among the `n` slots from `from`.
    pub fn flows_in(&self, from: usize, n: usize) -> Vec<Flow> {
        self.slots
            .iter()
            .skip(from)
            .take(n)
            .filter(|f| f.live())
            .map(FlowEntry::flow)
            .collect()
    }

    /// Bytes of memory per flow at the configured bound: the index (two
    /// entries per flow, at most 5/8 full) and the flow's line.
    pub fn bytes_per_flow(&self) -> usize {
        let index = self.buckets.len() * std::mem::size_of::<Bucket>();
        let slots = self.slots.capacity() * std::mem::size_of::<FlowEntry>();
        (index + slots) / self.max.max(1)
    }

    /// The table's large allocations (for hugepage advice by the I/O layer).
    pub fn regions(&self) -> [(*const u8, usize); 2] {
        [
            (
                self.buckets.as_ptr().cast(),
                self.buckets.len() * std::mem::size_of::<Bucket>(),
            ),
            self.slots.region(),
        ]
    }
}

/// Counters of the tracker.
#[derive(Debug, Default, Serialize)]
pub struct CtStats {
    /// Flows created.
    pub created: AtomicU64,
    /// Flows expired by timeout.
    pub expired: AtomicU64,
    /// New flows refused: table full.
    pub full: AtomicU64,
}

/// What the workers' connection tables share: the bound on flows over all
/// of them, the counters, and which worker each NAT port belongs to.
///
/// Every worker has a [`CtTable`] of its own that only it reads and writes
/// (VPP's NAT44-ED per-worker tables): a flow lives with the worker of its
/// container's port, which sees the container's packets anyway, and
/// packets of the flow that arrive elsewhere (replies on the uplink, a
/// published port's connections) are handed to that worker. Control never
/// touches a table: it asks the worker (see `worker::Command`).
pub struct Conntrack {
    /// Counters.
    pub stats: CtStats,
    /// Flows in all tables together.
    live: AtomicUsize,
    max: usize,
    /// Which worker each NAT port belongs to.
    pub ports: NatPorts,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("live", &self.live)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Conntrack {
    /// Shared state for at most `max_flows` flows over all workers.
    pub fn new(max_flows: usize) -> Self {
        Self {
            stats: CtStats::default(),
            live: AtomicUsize::new(0),
            max: max_flows.clamp(1, MAX_FLOWS),
            ports: NatPorts::default(),
        }
    }

    /// The bound over all workers' tables (each table is sized for all of
    /// it: the flows of one worker's containers may be all there are).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Flows in all tables.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Takes room for one new flow; `false` when the bound is reached (the
    /// flow is refused and counted).
    #[inline]
    pub fn reserve(&self) -> bool {
        let ok = self
            .live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !ok {
            self.stats.full.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Gives back the room of `n` flows that are gone (or were never made).
    #[inline]
    pub fn release(&self, n: usize) {
        if n > 0 {
            let _ = self
                .live
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(n))
                });
        }
    }

    /// Counts `n` flows taken over from an earlier process.
    pub fn adopted(&self, n: usize) {
        self.live.fetch_add(n, Ordering::Relaxed);
    }
}

/// Which worker owns each NAT port (a translated source port or ICMP
/// identifier) of each protocol: the worker that allocates it, and to which
/// replies to it are handed.
///
/// By default the SNAT range is cut into one block per worker, in order
/// (worker `i` of `n` owns the `i`-th `n`-th), as VPP gives each worker its
/// own port range. A port can be given to another worker (a flow taken over
/// after a restart lives with its container's worker, whatever the block),
/// or held: its replies are dropped, not given to the host kernel (which
/// would reset the connection), until the flow that uses it is back.
pub struct NatPorts {
    /// 0: by block; [`HELD`]; otherwise the owner's index + 1.
    over: Box<[AtomicU8]>,
}

const HELD: u8 = u8::MAX;

impl Default for NatPorts {
    fn default() -> Self {
        Self {
            over: (0..3 * 65536).map(|_| AtomicU8::new(0)).collect(),
        }
    }
}

/// Who answers for a NAT port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortOwner {
    /// This worker.
    Worker(usize),
    /// Nobody yet: a flow carried over a restart will come back to it.
    Held,
}

impl NatPorts {
    #[inline]
    fn slot(&self, proto: u8, port: u16) -> Option<&AtomicU8> {
        let p = match proto {
            PROTO_TCP => 0,
            PROTO_UDP => 1,
            PROTO_ICMP => 2,
            _ => return None,
        };
        self.over.get(p * 65536 + port as usize)
    }

    /// The owner of `port` in `range` among `workers` workers; `None`: a
    /// port outside the range (no SNAT flow uses it).
    #[inline]
    pub fn owner(
        &self,
        proto: u8,
        port: u16,
        range: (u16, u16),
        workers: usize,
    ) -> Option<PortOwner> {
        let v = self.slot(proto, port)?.load(Ordering::Relaxed);
        match v {
            0 => block_of(port, range, workers).map(PortOwner::Worker),
            HELD => Some(PortOwner::Held),
            w => Some(PortOwner::Worker(w as usize - 1)),
        }
    }

    /// Gives `port` to worker `w`.
    pub fn give(&self, proto: u8, port: u16, w: usize) {
        if let Some(s) = self.slot(proto, port) {
            s.store((w.min(HELD as usize - 2) + 1) as u8, Ordering::Relaxed);
        }
    }

    /// Holds `port` until [`NatPorts::give`] or [`NatPorts::unhold`].
    pub fn hold(&self, proto: u8, port: u16) {
        if let Some(s) = self.slot(proto, port) {
            s.store(HELD, Ordering::Relaxed);
        }
    }

    /// Puts every held port back in its block.
    pub fn unhold_all(&self) {
        for s in self.over.iter() {
            let _ = s.compare_exchange(HELD, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// The block of `range` worker `w` of `n` allocates from.
#[inline]
pub fn block(range: (u16, u16), w: usize, n: usize) -> (u16, u16) {
    let (lo, hi) = (range.0 as u64, range.1.max(range.0) as u64);
    let span = hi - lo + 1;
    let n = n.max(1) as u64;
    let w = (w as u64).min(n - 1);
    let a = lo + span * w / n;
    let b = lo + span * (w + 1) / n;
    (a as u16, (b.max(a + 1) - 1) as u16)
}

/// The worker whose block of `range` holds `port`.
#[inline]
pub fn block_of(port: u16, range: (u16, u16), n: usize) -> Option<usize> {
    let (lo, hi) = (range.0 as u64, range.1.max(range.0) as u64);
    let p = port as u64;
    if p < lo || p > hi {
        return None;
    }
    let n = n.max(1) as u64;
    // The inverse of `block`: the largest w with lo + span*w/n <= p.
    let span = hi - lo + 1;
    Some((((p - lo + 1) * n - 1) / span).min(n - 1) as usize)
}

/// Slots a worker visits in one step of expiry, listing or removal between
/// two bursts. A step over flows spread across a million-flow table took at
/// most ~45 µs in a measurement on this machine (65,536 slots: ~390 µs).
pub const EXPIRE_STEP: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn t(src: u32, sport: u16, dst: u32, dport: u16) -> Tuple {
        Tuple {
            src,
            dst,
            sport,
            dport,
            proto: PROTO_TCP,
        }
    }

    /// What a successor reads from the flow memory: the live flows (a
    /// removed one is not among them), filed again under its own hash key
    /// with the same translations; a torn entry and a duplicate are left
    /// out, and memory of another layout is not read at all.
    #[test]
    fn a_successor_takes_the_flows_over() {
        let mut a = CtTable::with_max(64);
        let flows: Vec<(Tuple, Tuple)> = (0..5u16)
            .map(|i| (t(1, 1000 + i, 9, 80), t(9, 80, 5, 61000 + i)))
            .collect();
        for (o, r) in &flows {
            let c = Side::Container {
                net: 3,
                mac: Mac(0x0200_0000_0001),
            };
            a.create(
                *o,
                *r,
                c,
                Side::Uplink,
                State::Tcp(TcpState::Established),
                7,
            )
            .unwrap();
        }
        a.remove_if(|f| f.orig == flows[4].0);
        let left = carried(a.slots.bytes()).unwrap();
        assert_eq!(left.len(), 4, "the removed flow is not carried");
        let mut torn = left[0];
        torn.state = 200;
        let mut input = left.clone();
        input.push(torn);
        input.push(left[1]);
        let mut b = CtTable::with_max(64);
        assert_eq!(
            b.adopt(input, 100),
            4,
            "torn and duplicate entries left out"
        );
        for (o, r) in &flows[..4] {
            let (f, d) = b.lookup(o).unwrap();
            assert_eq!(d, Dir::Orig);
            assert_eq!(f.translated(d), r.reversed());
            assert_eq!(f.flow().last_seen, 100, "idle from the takeover");
            assert_eq!(b.lookup(r).unwrap().1, Dir::Reply);
        }
        assert!(b.lookup(&flows[4].0).is_none());
        // Not ours: another magic, another layout.
        let mut bytes = a.slots.bytes().to_vec();
        bytes[0] ^= 1;
        assert!(carried(&bytes).unwrap_err().contains("not a flow file"));
        let mut bytes = a.slots.bytes().to_vec();
        bytes[8] = 9;
        assert!(carried(&bytes).unwrap_err().contains("layout 9"));
    }

    #[test]
    fn every_workers_table_in_one_file_is_carried() {
        let stride = FlowMemory::bytes_for(16).next_multiple_of(4096);
        let mem = |next| {
            let map = memmap2::MmapMut::map_anon(stride).unwrap();
            FlowMemory::section(map, Box::new(()), next)
        };
        let mut tables = [
            CtTable::with_memory(16, mem(stride as u64)),
            CtTable::with_memory(16, mem(0)),
        ];
        for (i, tb) in tables.iter_mut().enumerate() {
            for k in 0..3u16 {
                let o = t(1, 1000 + k, 9 + i as u32, 80);
                let r = t(9 + i as u32, 80, 5, 30000 + k);
                tb.create(o, r, Side::Uplink, Side::Uplink, State::Icmp, 0)
                    .unwrap();
            }
        }
        let mut file = tables[0].slots.bytes().to_vec();
        file.extend_from_slice(tables[1].slots.bytes());
        assert_eq!(carried(&file).unwrap().len(), 6, "both tables' flows");
        // One table alone (a switch with one worker) reads as before.
        assert_eq!(carried(tables[1].slots.bytes()).unwrap().len(), 3);
        // A next table that is not there is an error, not a guess.
        assert!(carried(tables[0].slots.bytes()).is_err());
    }

    #[test]
    fn the_snat_range_is_cut_into_one_block_per_worker() {
        for range in [(20000, 20009), (1024, 65535), (5, 5), (100, 102)] {
            for n in 1..=5 {
                let mut next = range.0 as u32;
                for w in 0..n {
                    let (lo, hi) = block(range, w, n);
                    let span = range.1 as u32 - range.0 as u32 + 1;
                    if span < n as u32 {
                        // Fewer ports than workers: every worker gets one.
                        assert!(lo >= range.0 && hi <= range.1);
                        continue;
                    }
                    assert_eq!(lo as u32, next, "{range:?} {n}: blocks are contiguous");
                    assert!(hi >= lo);
                    for p in [lo, hi] {
                        assert_eq!(block_of(p, range, n), Some(w), "{range:?} {n} {p}");
                    }
                    next = hi as u32 + 1;
                }
                if (range.1 - range.0) as usize + 1 >= n {
                    assert_eq!(next, range.1 as u32 + 1, "{range:?} {n}: the whole range");
                }
            }
        }
        assert_eq!(block_of(19999, (20000, 20009), 2), None);
        let ports = NatPorts::default();
        let r = (20000, 20009);
        assert_eq!(
            ports.owner(PROTO_TCP, 20007, r, 2),
            Some(PortOwner::Worker(1))
        );
        ports.give(PROTO_TCP, 20007, 0);
        assert_eq!(
            ports.owner(PROTO_TCP, 20007, r, 2),
            Some(PortOwner::Worker(0))
        );
        assert_eq!(
            ports.owner(PROTO_UDP, 20007, r, 2),
            Some(PortOwner::Worker(1)),
            "per protocol"
        );
        ports.hold(PROTO_UDP, 20001);
        assert_eq!(ports.owner(PROTO_UDP, 20001, r, 2), Some(PortOwner::Held));
        ports.unhold_all();
        assert_eq!(
            ports.owner(PROTO_UDP, 20001, r, 2),
            Some(PortOwner::Worker(0))
        );
        assert_eq!(
            ports.owner(PROTO_TCP, 20007, r, 2),
            Some(PortOwner::Worker(0))
        );
    }

    #[test]
    fn a_syn_may_reuse_a_nat_port_only_closed_connections_hold() {
        let mut g = CtTable::with_max(16);
        // One port in the range, held toward remote 9:80 by one flow.
        let range = (2000, 2000);
        let mk = |g: &mut CtTable, sport: u16| {
            let p = g
                .alloc_port_where(PROTO_TCP, (9, 80), 5, range, 0, true, |_| true)
                .expect("a port");
            g.create(
                t(1, sport, 9, 80),
                t(9, 80, 5, p),
                Side::Uplink,
                Side::Uplink,
                State::Tcp(TcpState::SynSent),
                0,
            )
            .map(|_| p)
        };
        assert_eq!(mk(&mut g, 1000), Ok(2000));
        // Live: not for anyone.
        assert_eq!(
            g.alloc_port_where(PROTO_TCP, (9, 80), 5, range, 0, true, |_| true),
            None
        );
        // Reset: a SYN takes it over (and the closed flow goes), anything
        // else does not.
        let (f, _) = g.lookup(&t(1, 1000, 9, 80)).unwrap();
        f.see(Dir::Orig, tcp_flags::RST, 1);
        assert_eq!(f.state(), State::Tcp(TcpState::Close));
        assert_eq!(
            g.alloc_port_where(PROTO_TCP, (9, 80), 5, range, 0, false, |_| true),
            None
        );
        assert_eq!(mk(&mut g, 1001), Ok(2000));
        assert_eq!(g.len(), 1, "the closed flow was taken over");
        assert!(g.lookup(&t(1, 1000, 9, 80)).is_none());
    }

    #[test]
    fn the_shared_bound_counts_every_workers_flows() {
        let ct = Conntrack::new(2);
        assert!(ct.reserve() && ct.reserve());
        assert!(!ct.reserve(), "a third flow is refused");
        assert_eq!(ct.stats.full.load(Ordering::Relaxed), 1);
        ct.release(1);
        assert!(ct.reserve());
        ct.release(5);
        assert_eq!(ct.live(), 0, "never below zero");
    }

    #[test]
    fn both_directions_find_the_flow() {
        let mut g = CtTable::with_max(10);
        let orig = t(1, 1000, 9, 80);
        let reply = t(9, 80, 5, 61000);
        g.create(
            orig,
            reply,
            Side::Uplink,
            Side::Uplink,
            State::Tcp(TcpState::SynSent),
            0,
        )
        .unwrap();
        let (f, d) = g.lookup(&orig).unwrap();
        assert_eq!(d, Dir::Orig);
        assert_eq!(f.translated(d), t(5, 61000, 9, 80));
        let (f, d) = g.lookup(&reply).unwrap();
        assert_eq!(d, Dir::Reply);
        assert_eq!(f.translated(d), t(9, 80, 1, 1000));
        assert!(g.lookup(&t(1, 1001, 9, 80)).is_none());
    }

    /// Two published ports to one container port: a client that reuses its
    /// source port for the second makes the same reply tuple. A new
    /// connection takes the tuple over from a closed one, not from a live
    /// one.
    #[test]
    fn a_syn_takes_over_the_tuples_of_a_closed_flow() {
        let mut g = CtTable::with_max(10);
        let reply = t(9, 8080, 1, 40000);
        let syn = State::Tcp(TcpState::SynSent);
        let (a, b) = (t(1, 40000, 5, 18080), t(1, 40000, 5, 19080));
        g.create(a, reply, Side::Uplink, Side::Uplink, syn, 0)
            .unwrap();
        g.lookup(&a).unwrap().0.state = TcpState::Established as u8;
        assert!(matches!(
            g.create(b, reply, Side::Uplink, Side::Uplink, syn, 1),
            Err(CreateError::PortsExhausted)
        ));
        g.lookup(&a).unwrap().0.state = TcpState::TimeWait as u8;
        let f = g
            .create(b, reply, Side::Uplink, Side::Uplink, syn, 2)
            .unwrap();
        assert_eq!(f.tuple(Dir::Orig), b);
        assert!(g.lookup(&a).is_none(), "the closed flow is gone");
        assert_eq!(g.lookup(&reply).unwrap().0.tuple(Dir::Orig), b);
        assert_eq!(g.len(), 1);
    }

    /// The hinted lookup finds every flow whatever the hint says: the right
    /// position, a wrong or stale one, or none; and finds nothing for an
    /// unknown tuple even when the hint points at another flow's entry.
    #[test]
    fn hinted_lookup_checks_its_hint() {
        let mut g = CtTable::with_max(64);
        let flows: Vec<(Tuple, Tuple)> = (0..40u16)
            .map(|i| (t(1, 1000 + i, 9, 80), t(9, 80, 5, 61000 + i)))
            .collect();
        for (o, r) in &flows {
            g.create(*o, *r, Side::Uplink, Side::Uplink, State::Icmp, 0)
                .unwrap();
        }
        for (o, r) in &flows {
            for (k, dir) in [(o, Dir::Orig), (r, Dir::Reply)] {
                let h = g.hash(k);
                let good = g.prefetch_flow(h);
                assert_ne!(good, NO_HINT);
                for hint in [good, NO_HINT, (good + 1) % NO_HINT, 200] {
                    let (f, d) = g.lookup_hinted(k, h, hint).unwrap();
                    assert_eq!(d, dir);
                    assert_eq!(f.tuple(d), *k);
                }
            }
        }
        // An unknown tuple whose hash is made to share a bucket and tag with
        // a known one's cannot match through the hint: the tuple is compared.
        let stranger = t(2, 2, 2, 2);
        let h = g.hash(&flows[0].0);
        let hint = g.prefetch_flow(h);
        assert!(g.lookup_hinted(&stranger, h, hint).is_none());
    }

    /// The hash is keyed per table: the same tuples land elsewhere in
    /// another table, so where a tuple lands cannot be worked out from the
    /// code alone.
    #[test]
    fn hash_is_keyed_per_table() {
        let (a, b) = (CtTable::with_max(1024), CtTable::with_max(1024));
        let tuples: Vec<Tuple> = (0..100u32).map(|i| t(i, 1000 + i as u16, 7, 80)).collect();
        let same = tuples.iter().filter(|x| a.hash(x) == b.hash(x)).count();
        assert_eq!(same, 0, "two tables share their hashes");
        let (ha, hb): (Vec<_>, Vec<_>) = tuples
            .iter()
            .map(|x| (a.home(a.hash(x)), b.home(b.hash(x))))
            .unzip();
        assert_ne!(ha, hb, "two tables put the same tuples in the same buckets");
    }

    /// Churn against a model: random creates, removals and expiries on a
    /// small table, with many removals from full buckets (entries moved
    /// back); every tracked tuple is found in its direction, every removed
    /// one is gone, and the bound holds.
    #[test]
    fn churn_matches_a_model() {
        use std::collections::HashMap;
        let max = 300;
        let mut g = CtTable::with_max(max);
        // orig tuple -> (reply tuple, created at)
        let mut model: HashMap<Tuple, (Tuple, u32)> = HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut fulls = 0;
        for op in 0..40_000u32 {
            // Slow enough a clock that the table fills between expiries.
            let now = op / 64;
            let r = rnd();
            let o = t(1 + (r % 7) as u32, (r >> 8) as u16 % 500, 9, 80);
            let rep = t(9, 80, 5, 1000 + (r >> 24) as u16 % 2000);
            match r >> 60 {
                0..=9 => {
                    let res = g.create(o, rep, Side::Uplink, Side::Uplink, State::Icmp, now);
                    let clash = model.contains_key(&o)
                        || model.values().any(|(rr, _)| *rr == rep)
                        || model.contains_key(&rep)
                        || model.values().any(|(rr, _)| *rr == o);
                    match res {
                        Ok(_) => {
                            assert!(!clash && model.len() < max);
                            model.insert(o, (rep, now));
                        }
                        Err(CreateError::Full) => {
                            assert_eq!(model.len(), max);
                            fulls += 1;
                        }
                        Err(CreateError::PortsExhausted) => assert!(clash),
                    }
                }
                10..=13 => {
                    let n = g.remove_if(|f| f.orig == o);
                    assert_eq!(n, model.remove(&o).is_some() as usize);
                }
                _ => {
                    // Expiry visits a slice of the slots: whatever it
                    // removed must have been idle past ICMP's timeout.
                    let removed = g.expire(now, 64);
                    let gone: Vec<Tuple> =
                        model.keys().filter(|o| !g.contains(o)).copied().collect();
                    assert_eq!(gone.len(), removed);
                    for o in gone {
                        let (_, at) = model.remove(&o).unwrap_or_default();
                        assert!(now - at > timeout(State::Icmp), "expired too early");
                    }
                }
            }
            assert_eq!(g.len(), model.len());
            assert_eq!(g.entries, 2 * model.len());
        }
        assert!(
            fulls > 100 && g.shifted > 100,
            "fulls {fulls}, entries moved back {}",
            g.shifted
        );
        for (o, (rep, _)) in &model {
            let (f, d) = g.lookup(o).expect("orig tuple tracked");
            assert_eq!((d, f.tuple(Dir::Reply)), (Dir::Orig, *rep));
            let (_, d) = g.lookup(rep).expect("reply tuple tracked");
            assert_eq!(d, Dir::Reply);
        }
        assert!(g.flows().len() == model.len());
    }

    /// The vector tag compare agrees with the one-way-at-a-time one, for
    /// matches in every way and in several at once.
    #[test]
    fn tag_matches_agrees_with_scalar() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for keep in [!0xfu32, !0x3f_ffff, !0xff_ffff] {
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let want = (x as u32) & keep;
                let mut ways = [0u32; WAYS];
                for (i, w) in ways.iter_mut().enumerate() {
                    // About one way in three carries the wanted tag.
                    let r = (x >> (i * 4)) as u32;
                    *w = if r.is_multiple_of(3) {
                        want | (r & !keep)
                    } else {
                        r
                    };
                }
                assert_eq!(
                    tag_matches(&ways, keep, want),
                    tag_matches_scalar(&ways, keep, want),
                    "ways {ways:x?} keep {keep:x} want {want:x}"
                );
            }
        }
    }

    #[test]
    fn bounded_and_existing_flows_keep_working() {
        let mut g = CtTable::with_max(2);
        for i in 0..2u16 {
            g.create(
                t(1, i, 9, 80),
                t(9, 80, 5, i),
                Side::Uplink,
                Side::Uplink,
                State::Icmp,
                0,
            )
            .unwrap();
        }
        assert_eq!(
            g.create(
                t(1, 7, 9, 80),
                t(9, 80, 5, 7),
                Side::Uplink,
                Side::Uplink,
                State::Icmp,
                0
            )
            .err(),
            Some(CreateError::Full)
        );
        assert!(g.lookup(&t(1, 1, 9, 80)).is_some());
    }

    #[test]
    fn port_allocation_never_collides() {
        let mut g = CtTable::with_max(100_000);
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000u16 {
            let p = g
                .alloc_port(PROTO_TCP, 9, 80, 5, (2000, 2999), 2000)
                .unwrap();
            assert!(seen.insert(p), "port {p} given twice");
            g.create(
                t(1, i, 9, 80),
                t(9, 80, 5, p),
                Side::Uplink,
                Side::Uplink,
                State::Tcp(TcpState::SynSent),
                0,
            )
            .unwrap();
        }
        assert_eq!(g.alloc_port(PROTO_TCP, 9, 80, 5, (2000, 2999), 2000), None);
        // Another destination can reuse the same ports.
        assert!(g
            .alloc_port(PROTO_TCP, 10, 80, 5, (2000, 2999), 2000)
            .is_some());
    }

    #[test]
    fn expiry_visits_as_many_slots_as_asked_and_goes_on_from_there() {
        let n = 3 * EXPIRE_STEP as u32 + 100;
        let mut ct = CtTable::with_max(n as usize);
        {
            let g = &mut ct;
            for i in 0..n {
                g.create(
                    t(i, 1000, 0xffff_0000, 53),
                    t(0xffff_0000, 53, 0x0a00_0000 + i, 1000),
                    Side::Uplink,
                    Side::Uplink,
                    State::Udp { replied: false },
                    0,
                )
                .map(|_| ())
                .unwrap_or_else(|e| panic!("flow {i}: {e:?}"));
            }
        }
        let late = timeout(State::Udp { replied: false }) + 1;
        // Each call visits the slots after the last call's, so a tenth of
        // the table per call covers it in ten calls and no flow twice.
        let tenth = n as usize / 10 + 1;
        let mut removed = Vec::new();
        for _ in 0..10 {
            removed.push(ct.expire(late, tenth));
        }
        assert!(
            removed
                .iter()
                .all(|&r| r == tenth || r == n as usize % tenth),
            "{removed:?}"
        );
        assert_eq!(removed.iter().sum::<usize>(), n as usize);
        assert!(ct.is_empty());
        assert_eq!(ct.take_freed(), n as usize);
        // Asking for more than the table visits each slot once.
        assert_eq!(ct.expire(late, usize::MAX), 0);
    }

    #[test]
    fn tcp_states_and_expiry() {
        let mut ct = CtTable::with_max(10);
        {
            let f = ct
                .create(
                    t(1, 1, 9, 80),
                    t(9, 80, 5, 1),
                    Side::Uplink,
                    Side::Uplink,
                    State::Tcp(TcpState::SynSent),
                    0,
                )
                .unwrap();
            use tcp_flags::*;
            f.see(Dir::Reply, SYN | ACK, 1);
            assert_eq!(f.state(), State::Tcp(TcpState::SynRecv));
            f.see(Dir::Orig, ACK, 1);
            assert_eq!(f.state(), State::Tcp(TcpState::Established));
            f.see(Dir::Orig, FIN | ACK, 2);
            assert_eq!(f.state(), State::Tcp(TcpState::FinWait));
            f.see(Dir::Reply, FIN | ACK, 2);
            assert_eq!(f.state(), State::Tcp(TcpState::TimeWait));
        }
        assert_eq!(ct.expire(100, 4), 0);
        assert_eq!(ct.expire(200, 4), 1);
        assert!(ct.is_empty());
    }
}
