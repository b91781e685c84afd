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
//! The table is bounded (`max_flows`); when it is full, new flows are refused
//! (a counted drop) while every existing flow keeps working. Workers take the
//! lock once per batch, not per packet; the control thread expires flows a
//! slice at a time, so no pass holds the lock for long.
use crate::fdb::NetId;
use crate::wire::mac::Mac;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

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
pub enum TcpState {
    /// SYN seen from the originator.
    SynSent,
    /// SYN+ACK seen from the responder.
    SynRecv,
    /// Handshake done (or picked up mid-stream).
    Established,
    /// One side sent FIN.
    FinWait,
    /// Both sides sent FIN.
    TimeWait,
    /// RST seen.
    Close,
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

/// One tracked flow.
#[derive(Debug, Clone, Serialize)]
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
    /// FIN seen from orig (bit 0) and reply (bit 1).
    fins: u8,
    /// Packets in each direction.
    pub packets: [u64; 2],
}

impl Flow {
    /// The tuple a packet of direction `d` leaves with.
    #[inline]
    pub fn translated(&self, d: Dir) -> Tuple {
        match d {
            Dir::Orig => self.reply.reversed(),
            Dir::Reply => self.orig.reversed(),
        }
    }

    /// Where a packet of direction `d` goes.
    #[inline]
    pub fn out_side(&self, d: Dir) -> Side {
        match d {
            Dir::Orig => self.reply_side,
            Dir::Reply => self.orig_side,
        }
    }

    /// Advances the state for a packet of direction `d` with TCP `flags`
    /// (ignored for other protocols) seen at `now`.
    #[inline]
    pub fn see(&mut self, d: Dir, flags: u8, now: u32) {
        self.last_seen = now;
        self.packets[d as usize] += 1;
        self.state = match self.state {
            State::Udp { replied } => State::Udp {
                replied: replied || d == Dir::Reply,
            },
            State::Icmp => State::Icmp,
            State::Tcp(s) => State::Tcp(self.tcp_next(s, d, flags)),
        };
    }

    fn tcp_next(&mut self, s: TcpState, d: Dir, flags: u8) -> TcpState {
        use tcp_flags::*;
        use TcpState::*;
        if flags & RST != 0 {
            return Close;
        }
        if flags & FIN != 0 {
            self.fins |= 1 << (d as u8);
        }
        match s {
            // A new SYN on a closed or closing flow reopens it.
            Close | TimeWait if flags & SYN != 0 && flags & ACK == 0 && d == Dir::Orig => {
                self.fins = 0;
                SynSent
            }
            SynSent if d == Dir::Reply && flags & SYN != 0 && flags & ACK != 0 => SynRecv,
            SynRecv if d == Dir::Orig && flags & ACK != 0 && flags & SYN == 0 => Established,
            _ if self.fins == 3 => TimeWait,
            Established if self.fins != 0 => FinWait,
            other => other,
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

/// The hash the table files `t` under (compute once, pass to the `_hashed`
/// calls).
#[inline]
pub fn hash(t: &Tuple) -> u64 {
    hash_key(t.key())
}

/// murmur3 fmix64 over the packed tuple: a full avalanche.
#[inline]
fn hash_key(k: u128) -> u64 {
    let mut x = (k as u64) ^ ((k >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Entries per index bucket: one 64-byte cache line.
const WAYS: usize = 8;
/// No bucket position known (see [`CtTable::prefetch_flow`]).
pub const NO_HINT: u8 = WAYS as u8;
const EMPTY: u64 = 0;
const TOMB: u64 = 1;

/// One cache line of index entries: `tag << 32 | slot << 1 | dir`, where the
/// tag is the hash's high half with its low bit set (never 0 or 1).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket([u64; WAYS]);

/// The table itself; reach it through [`Conntrack::lock`].
///
/// The index is a flat array of cache-line buckets with linear probing from
/// bucket `hash & mask`; an entry holds a 32-bit tag of the hash and the
/// flow's slot, and the slot's tuple confirms the match. A lookup touches one
/// bucket and one flow, both of which [`CtTable::prefetch`] can start
/// loading for a whole batch before the first lookup. Memory is sized from
/// `max_flows` up front and never grows or moves.
pub struct CtTable {
    buckets: Vec<Bucket>,
    mask: usize,
    slots: Vec<Option<Flow>>,
    free: Vec<u32>,
    entries: usize,
    tombs: usize,
    max: usize,
    expire_cursor: usize,
    port_cursor: u32,
}

impl CtTable {
    fn with_max(max: usize) -> Self {
        // Two entries per flow at most half full.
        let n = (max.max(8) * 2 * 2 / WAYS).next_power_of_two();
        Self {
            buckets: vec![Bucket::default(); n],
            mask: n - 1,
            slots: Vec::with_capacity(max),
            free: Vec::new(),
            entries: 0,
            tombs: 0,
            max,
            expire_cursor: 0,
            port_cursor: 0,
        }
    }

    #[inline]
    fn tag(h: u64) -> u64 {
        ((h >> 32) | 2) << 32
    }

    /// The tag of index entry `e`.
    #[inline]
    fn tag_of(e: u64) -> u64 {
        e & !0xffff_ffff
    }

    /// Whether entry value `v` (`slot << 1 | dir`) names a flow whose tuple
    /// in that direction is `t`.
    #[inline]
    fn holds(&self, v: u32, t: &Tuple) -> bool {
        self.slots
            .get((v >> 1) as usize)
            .and_then(Option::as_ref)
            .is_some_and(|f| if v & 1 == 0 { &f.orig } else { &f.reply } == t)
    }

    /// The flow and direction entry value `v` names.
    #[inline]
    fn flow_at(&mut self, v: u32) -> Option<(&mut Flow, Dir)> {
        let dir = if v & 1 == 0 { Dir::Orig } else { Dir::Reply };
        let f = self.slots.get_mut((v >> 1) as usize)?.as_mut()?;
        Some((f, dir))
    }

    /// The index entry and position for `t`, if present.
    #[inline]
    fn find(&self, t: &Tuple, h: u64) -> Option<(usize, usize, u32)> {
        let tag = Self::tag(h);
        let mut b = h as usize & self.mask;
        for _ in 0..=self.mask {
            let bucket = &self.buckets[b].0;
            let mut has_empty = false;
            for (w, &e) in bucket.iter().enumerate() {
                if e == EMPTY {
                    has_empty = true;
                } else if Self::tag_of(e) == tag && self.holds(e as u32, t) {
                    return Some((b, w, e as u32));
                }
            }
            if has_empty {
                return None;
            }
            b = (b + 1) & self.mask;
        }
        None
    }

    fn insert_entry(&mut self, h: u64, v: u32) {
        let e = Self::tag(h) | v as u64;
        let mut b = h as usize & self.mask;
        loop {
            for slot in self.buckets[b].0.iter_mut() {
                if *slot == EMPTY || *slot == TOMB {
                    if *slot == TOMB {
                        self.tombs -= 1;
                    }
                    *slot = e;
                    self.entries += 1;
                    return;
                }
            }
            b = (b + 1) & self.mask;
        }
    }

    fn remove_entry(&mut self, t: &Tuple) {
        if let Some((b, w, _)) = self.find(t, hash_key(t.key())) {
            self.buckets[b].0[w] = TOMB;
            self.entries -= 1;
            self.tombs += 1;
        }
    }

    /// Rebuilds the index when deletions have left too many tombstones.
    fn maybe_rebuild(&mut self) {
        if self.tombs < self.buckets.len() * WAYS / 4 {
            return;
        }
        self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
        self.entries = 0;
        self.tombs = 0;
        let keys: Vec<(u64, u32, u64, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                f.as_ref().map(|f| {
                    let s = (i as u32) << 1;
                    (hash_key(f.orig.key()), s, hash_key(f.reply.key()), s | 1)
                })
            })
            .collect();
        for (h1, v1, h2, v2) in keys {
            self.insert_entry(h1, v1);
            self.insert_entry(h2, v2);
        }
    }

    /// Starts loading the index bucket a lookup of a tuple with hash `h`
    /// will read (call it over a whole batch first, so that the misses of
    /// all its packets overlap). Returns a value to feed
    /// [`std::hint::black_box`].
    #[inline]
    pub fn prefetch(&self, h: u64) -> u64 {
        self.buckets
            .get(h as usize & self.mask)
            .map_or(0, |b| b.0[0])
    }

    /// After [`CtTable::prefetch`]: starts loading the flow the bucket of
    /// hash `h` points at, and returns a value to feed
    /// [`std::hint::black_box`] and where in the bucket the entry sits (a
    /// hint for [`CtTable::lookup_hinted`]; [`NO_HINT`] if none matched).
    /// Where an entry sits is random, so this scan mispredicts about once
    /// per packet; the hint spares the lookup a second scan and a second
    /// mispredict (callgrind's branch simulation: ~1 each).
    #[inline]
    pub fn prefetch_flow(&self, h: u64) -> (u64, u8) {
        let Some(b) = self.buckets.get(h as usize & self.mask) else {
            return (0, NO_HINT);
        };
        let tag = Self::tag(h);
        let Some(w) = b.0.iter().position(|e| Self::tag_of(*e) == tag) else {
            return (0, NO_HINT);
        };
        let touched = self
            .slots
            .get((b.0[w] as u32 >> 1) as usize)
            .and_then(Option::as_ref)
            .map_or(0, |f| f.last_seen as u64);
        (touched, w as u8)
    }

    /// [`CtTable::lookup`] with the tuple's [`hash`] already computed,
    /// trying first the bucket entry `hint` named by
    /// [`CtTable::prefetch_flow`] (checked: tag and tuple); any other case
    /// takes the full lookup.
    #[inline]
    pub fn lookup_hinted(&mut self, t: &Tuple, h: u64, hint: u8) -> Option<(&mut Flow, Dir)> {
        let hinted = self
            .buckets
            .get(h as usize & self.mask)
            .and_then(|b| b.0.get(hint as usize))
            .filter(|e| Self::tag_of(**e) == Self::tag(h) && self.holds(**e as u32, t))
            .map(|e| *e as u32);
        let v = match hinted {
            Some(v) => v,
            None => self.find(t, h)?.2,
        };
        self.flow_at(v)
    }

    /// Finds the flow of a packet with tuple `t`.
    #[inline]
    pub fn lookup(&mut self, t: &Tuple) -> Option<(&mut Flow, Dir)> {
        let (_, _, v) = self.find(t, hash_key(t.key()))?;
        self.flow_at(v)
    }

    /// Whether a tuple is in use (either direction of any flow).
    #[inline]
    pub fn contains(&self, t: &Tuple) -> bool {
        self.find(t, hash_key(t.key())).is_some()
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
        (lo, hi): (u16, u16),
        prefer: u16,
    ) -> Option<u16> {
        let span = (hi as u32).saturating_sub(lo as u32) + 1;
        let taken = |p: u16, me: &Self| {
            me.contains(&Tuple {
                src: remote,
                dst: nat_ip,
                // ICMP echo: both "ports" are the identifier.
                sport: if proto == PROTO_ICMP { p } else { remote_port },
                dport: p,
                proto,
            })
        };
        if (lo..=hi).contains(&prefer) && !taken(prefer, self) {
            return Some(prefer);
        }
        // Round-robin from a moving cursor: a port just freed is the last to
        // be reused, which keeps a far end's TIME_WAIT out of the way.
        for i in 0..span {
            let p = lo as u32 + (self.port_cursor.wrapping_add(i) % span);
            if !taken(p as u16, self) {
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
    ) -> Result<&mut Flow, CreateError> {
        if self.len() >= self.max || self.slots.len() >= self.max && self.free.is_empty() {
            return Err(CreateError::Full);
        }
        if self.contains(&orig) || self.contains(&reply) {
            return Err(CreateError::PortsExhausted);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.insert_entry(hash_key(orig.key()), slot << 1);
        self.insert_entry(hash_key(reply.key()), (slot << 1) | 1);
        let f = &mut self.slots[slot as usize];
        *f = Some(Flow {
            orig,
            reply,
            orig_side,
            reply_side,
            state,
            last_seen: now,
            fins: 0,
            packets: [0, 0],
        });
        f.as_mut().ok_or(CreateError::Full)
    }

    fn remove_slot(&mut self, slot: usize) {
        let Some(f) = self.slots.get(slot).and_then(Option::as_ref) else {
            return;
        };
        let (o, r) = (f.orig, f.reply);
        self.remove_entry(&o);
        self.remove_entry(&r);
        self.slots[slot] = None;
        self.free.push(slot as u32);
    }

    /// Removes every flow `pred` selects; returns how many.
    pub fn remove_if(&mut self, mut pred: impl FnMut(&Flow) -> bool) -> usize {
        let doomed: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, f)| f.as_ref().is_some_and(&mut pred))
            .map(|(i, _)| i)
            .collect();
        for &i in &doomed {
            self.remove_slot(i);
        }
        self.maybe_rebuild();
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
            let dead = self.slots[i]
                .as_ref()
                .is_some_and(|f| now.saturating_sub(f.last_seen) > timeout(f.state));
            if dead {
                self.remove_slot(i);
                removed += 1;
            }
        }
        self.maybe_rebuild();
        removed
    }

    /// A copy of every flow.
    pub fn flows(&self) -> Vec<Flow> {
        self.slots.iter().flatten().cloned().collect()
    }

    /// Bytes of memory per flow at the configured bound: the index (two
    /// entries per flow, half full) and the flow slot.
    pub fn bytes_per_flow(&self) -> usize {
        let index = self.buckets.len() * std::mem::size_of::<Bucket>();
        let slots = self.slots.capacity() * std::mem::size_of::<Option<Flow>>();
        (index + slots) / self.max.max(1)
    }

    /// The table's large allocations (for hugepage advice by the I/O layer).
    pub fn regions(&self) -> [(*const u8, usize); 2] {
        [
            (
                self.buckets.as_ptr().cast(),
                self.buckets.len() * std::mem::size_of::<Bucket>(),
            ),
            (
                self.slots.as_ptr().cast(),
                self.slots.capacity() * std::mem::size_of::<Option<Flow>>(),
            ),
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

/// The shared tracker.
pub struct Conntrack {
    table: Mutex<CtTable>,
    /// Counters.
    pub stats: CtStats,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack").finish_non_exhaustive()
    }
}

impl Conntrack {
    /// An empty tracker for at most `max_flows` flows.
    pub fn new(max_flows: usize) -> Self {
        Self {
            table: Mutex::new(CtTable::with_max(max_flows)),
            stats: CtStats::default(),
        }
    }

    /// Locks the table (a worker: once per batch).
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, CtTable> {
        // A worker that panicked holding the lock aborts the process
        // (panic = abort), so poisoning cannot be observed; recover anyway.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.lock().max
    }

    /// Expires idle flows, `budget` slots at a time, each slice under its own
    /// short lock.
    pub fn expire(&self, now: u32, budget: usize) -> usize {
        let mut total = 0;
        let slots = self.lock().slots.len();
        let mut done = 0;
        while done < slots {
            let step = budget.min(slots - done);
            total += self.lock().expire(now, step);
            done += step;
        }
        self.stats
            .expired
            .fetch_add(total as u64, Ordering::Relaxed);
        total
    }
}

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

    #[test]
    fn both_directions_find_the_flow() {
        let ct = Conntrack::new(10);
        let mut g = ct.lock();
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

    /// The hinted lookup finds every flow whatever the hint says: the right
    /// position, a wrong or stale one, or none; and finds nothing for an
    /// unknown tuple even when the hint points at another flow's entry.
    #[test]
    fn hinted_lookup_checks_its_hint() {
        let ct = Conntrack::new(64);
        let mut g = ct.lock();
        let flows: Vec<(Tuple, Tuple)> = (0..40u16)
            .map(|i| (t(1, 1000 + i, 9, 80), t(9, 80, 5, 61000 + i)))
            .collect();
        for (o, r) in &flows {
            g.create(*o, *r, Side::Uplink, Side::Uplink, State::Icmp, 0)
                .unwrap();
        }
        for (o, r) in &flows {
            for (k, dir) in [(o, Dir::Orig), (r, Dir::Reply)] {
                let h = hash(k);
                let (_, good) = g.prefetch_flow(h);
                assert_ne!(good, NO_HINT);
                for hint in [good, NO_HINT, (good + 1) % NO_HINT, 200] {
                    let (f, d) = g.lookup_hinted(k, h, hint).unwrap();
                    assert_eq!(d, dir);
                    assert_eq!(if d == Dir::Orig { f.orig } else { f.reply }, *k);
                }
            }
        }
        // An unknown tuple whose hash is made to share a bucket and tag with
        // a known one's cannot match through the hint: the tuple is compared.
        let stranger = t(2, 2, 2, 2);
        let h = hash(&flows[0].0);
        let (_, hint) = g.prefetch_flow(h);
        assert!(g.lookup_hinted(&stranger, h, hint).is_none());
    }

    #[test]
    fn bounded_and_existing_flows_keep_working() {
        let ct = Conntrack::new(2);
        let mut g = ct.lock();
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
        let ct = Conntrack::new(100_000);
        let mut g = ct.lock();
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
    fn tcp_states_and_expiry() {
        let ct = Conntrack::new(10);
        {
            let mut g = ct.lock();
            let f = g
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
            assert_eq!(f.state, State::Tcp(TcpState::SynRecv));
            f.see(Dir::Orig, ACK, 1);
            assert_eq!(f.state, State::Tcp(TcpState::Established));
            f.see(Dir::Orig, FIN | ACK, 2);
            assert_eq!(f.state, State::Tcp(TcpState::FinWait));
            f.see(Dir::Reply, FIN | ACK, 2);
            assert_eq!(f.state, State::Tcp(TcpState::TimeWait));
        }
        assert_eq!(ct.expire(100, 4), 0);
        assert_eq!(ct.expire(200, 4), 1);
        assert!(ct.lock().is_empty());
    }
}
