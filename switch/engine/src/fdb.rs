//! The forwarding database: (network, MAC) -> port, shared by every worker
//! without locks.
//!
//! A fixed-size table of 4-way buckets (one cache line of key/value pairs
//! each) with two candidate buckets per key: a key goes to its first bucket
//! while that has room and to the second only when it is full, so nearly
//! every lookup reads one line, the one the batch pre-pass fetched. Keys and
//! values are 64-bit atomics, so workers learn and look up concurrently, the
//! control thread adds static entries, ages and flushes, and nobody ever
//! waits on anybody. Memory is allocated once:
//! a flood of random source MACs fills at most the network's limit, and is
//! counted when it hits it; it never evicts a static entry.
//!
//! Ordering: a writer publishes the key (CAS, AcqRel) before the value
//! (Release); a remover clears the value before the key. A reader that sees
//! a key with no valid value treats it as a miss (the frame is flooded).
//! A displacement (both buckets full) copies an entry to its other bucket,
//! clears the old copy's value, then swaps its key: readers see the entry,
//! a miss, or the new key with no value; never a wrong port.
use crate::port::PortId;
use crate::wire::mac::Mac;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Index of a network (bridge domain).
pub type NetId = u16;
/// Networks a switch can hold.
pub const MAX_NETWORKS: usize = 4096;
const WAYS: usize = 4;
const VALID: u64 = 1 << 63;
const STATIC: u64 = 1 << 62;

#[derive(Default)]
struct Slot {
    key: AtomicU64,
    val: AtomicU64,
}

/// Four (key, value) slots in one cache line: a lookup that misses the cache
/// costs one line per candidate bucket.
#[repr(align(64))]
#[derive(Default)]
struct Bucket {
    slots: [Slot; WAYS],
}

/// A (network, MAC) pair packed into one word: the network id plus one in
/// the top 16 bits, the MAC in the low 48 (never 0 for a real entry). Its
/// candidate buckets are computed from it where they are needed, one
/// multiply each, so the stages pass one word per MAC along.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FdbKey(u64);

/// Result of a learning attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// Already known on this port.
    Refreshed,
    /// New entry.
    Learned,
    /// The MAC moved here from another port.
    Moved {
        /// Where it was.
        from: PortId,
    },
    /// A static entry exists; learning does not override it.
    Static,
    /// The network's MAC limit is reached.
    Limit,
    /// Both candidate buckets are full.
    Full,
}

/// One entry, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// Network.
    pub net: NetId,
    /// MAC address.
    pub mac: Mac,
    /// Port it is reached through.
    pub port: PortId,
    /// Configured, never aged.
    pub is_static: bool,
    /// Seconds since last seen (0 for static entries).
    pub age_secs: u32,
}

/// Errors of control-plane operations on the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdbError {
    /// Both buckets of the key are full.
    #[error("FDB has no free slot for this MAC; raise fdb_capacity in the config")]
    Full,
    /// A multicast/zero MAC cannot be a static unicast entry.
    #[error("{0} is not a unicast MAC")]
    NotUnicast(Mac),
    /// Network id out of range.
    #[error("network id {0} out of range")]
    BadNetwork(NetId),
}

/// The shared table.
pub struct Fdb {
    buckets: Box<[Bucket]>,
    mask: usize,
    /// 64 − log2(buckets): a hash's top bits index the table.
    shift: u32,
    learned: Box<[AtomicU32]>,
    limits: Box<[AtomicU32]>,
    /// The bucket [`Fdb::age_some`] starts from next.
    age_cursor: AtomicUsize,
}

impl std::fmt::Debug for Fdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fdb")
            .field("slots", &self.capacity())
            .finish()
    }
}

#[inline]
fn pack(port: PortId, now: u32, is_static: bool) -> u64 {
    VALID | if is_static { STATIC } else { 0 } | (port as u64) << 32 | now as u64
}

#[inline]
fn port_of(v: u64) -> PortId {
    (v >> 32) as u16
}

impl Fdb {
    /// A table with room for about `slots` entries (rounded up to a power of
    /// two, at least 64). The second bucket keeps overflow negligible
    /// up to ~50% load; size it at about twice the sum of network limits.
    pub fn new(slots: usize) -> Self {
        let buckets = (slots.max(64) / WAYS).next_power_of_two();
        Self {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            mask: buckets - 1,
            shift: 64 - buckets.trailing_zeros(),
            learned: (0..MAX_NETWORKS).map(|_| AtomicU32::new(0)).collect(),
            limits: (0..MAX_NETWORKS)
                .map(|_| AtomicU32::new(u32::MAX))
                .collect(),
            age_cursor: AtomicUsize::new(0),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Sets how many learned MACs a network may hold.
    pub fn set_limit(&self, net: NetId, limit: u32) {
        if let Some(l) = self.limits.get(net as usize) {
            l.store(limit, Ordering::Relaxed);
        }
    }

    /// Learned (not static) entries in a network.
    pub fn learned_count(&self, net: NetId) -> u32 {
        self.learned
            .get(net as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The key of (net, mac).
    #[inline]
    pub fn key(&self, net: NetId, mac: Mac) -> FdbKey {
        FdbKey(((net as u64 + 1) << 48) | (mac.0 & 0xffff_ffff_ffff))
    }

    // Multiplicative (Fibonacci) hashing, one multiply per bucket: the high
    // bits of k·C depend on every bit of k, so sequential MACs (as
    // container runtimes hand them out) spread over the table.

    /// The first candidate bucket of key word `k`.
    #[inline]
    fn b1(&self, k: u64) -> usize {
        (k.wrapping_mul(crate::hash::FIB) >> self.shift) as usize
    }

    /// The second candidate bucket of `k`, whose first is `b1`.
    #[inline]
    fn b2(&self, k: u64, b1: usize) -> usize {
        let b2 = (k.wrapping_mul(crate::hash::FIB2) >> self.shift) as usize;
        if b2 == b1 {
            (b1 ^ 1) & self.mask
        } else {
            b2
        }
    }

    /// Starts fetching the first candidate bucket of `key` (batch
    /// pre-pass), where [`Fdb::claim`] puts nearly every key. Returns its
    /// first word, to be folded into one value the caller consumes once per
    /// batch: the loads stay independent of each other, so many cache
    /// misses are in flight at once (stable Rust has no safe prefetch
    /// instruction).
    #[inline]
    pub fn touch(&self, key: FdbKey) -> u64 {
        self.buckets
            .get(self.b1(key.0))
            .map_or(0, |b| b.slots[0].key.load(Ordering::Relaxed))
    }

    /// The slot of `k` in bucket `b`. The four keys of a bucket are compared
    /// without a branch per slot: where a key sits in its bucket is random,
    /// and a mispredicted branch per lookup costs more than the compares.
    #[inline]
    fn find_in(&self, b: usize, k: u64) -> Option<&Slot> {
        let bucket = self.buckets.get(b)?;
        let mut hits = 0u32;
        for (i, slot) in bucket.slots.iter().enumerate() {
            hits |= ((slot.key.load(Ordering::Acquire) == k) as u32) << i;
        }
        bucket.slots.get(hits.trailing_zeros() as usize)
    }

    /// The slot holding `key`: in its first bucket, or else its second (the
    /// second bucket's index is only computed on a miss in the first).
    #[inline]
    fn find(&self, key: FdbKey) -> Option<&Slot> {
        let b1 = self.b1(key.0);
        self.find_in(b1, key.0)
            .or_else(|| self.find_in(self.b2(key.0, b1), key.0))
    }

    /// Port of a key, if known.
    #[inline]
    pub fn lookup_key(&self, key: FdbKey) -> Option<PortId> {
        let v = self.find(key)?.val.load(Ordering::Acquire);
        (v & VALID != 0).then(|| port_of(v))
    }

    /// Port of (net, mac), if known.
    #[inline]
    pub fn lookup(&self, net: NetId, mac: Mac) -> Option<PortId> {
        self.lookup_key(self.key(net, mac))
    }

    /// Takes a free slot of bucket `b` for (k, v).
    fn take_free(&self, b: usize, k: u64, v: u64) -> Option<&Slot> {
        let slot = self.buckets.get(b)?.slots.iter().find(|slot| {
            slot.key
                .compare_exchange(0, k, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })?;
        slot.val.store(v, Ordering::Release);
        Some(slot)
    }

    fn claim(&self, key: FdbKey, v: u64) -> bool {
        // The first bucket while it has room, the second only when it is
        // full: nearly every key then sits in its first bucket, the only
        // line the batch pre-pass fetches.
        let k = key.0;
        let b1 = self.b1(k);
        let b2 = self.b2(k, b1);
        if self.take_free(b1, k, v).is_some() || self.take_free(b2, k, v).is_some() {
            return true;
        }
        // Both full: move one of their entries to its other bucket (one
        // level of cuckoo displacement) and take its slot, which keeps
        // overflow as rare as balanced placement does.
        for b in [b1, b2] {
            let Some(bucket) = self.buckets.get(b) else {
                continue;
            };
            for slot in &bucket.slots {
                let k2 = slot.key.load(Ordering::Acquire);
                let v2 = slot.val.load(Ordering::Acquire);
                if k2 == 0 || v2 & VALID == 0 {
                    continue;
                }
                let o1 = self.b1(k2);
                let o2 = self.b2(k2, o1);
                let alt = if o1 == b { o2 } else { o1 };
                if alt == b {
                    continue;
                }
                let Some(copy) = self.take_free(alt, k2, v2) else {
                    continue;
                };
                // The entry is in both buckets now. Invalidate this copy
                // first: a reader meanwhile misses (floods one frame) rather
                // than reading another MAC's port.
                slot.val.store(0, Ordering::Release);
                if slot
                    .key
                    .compare_exchange(k2, k, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    slot.val.store(v, Ordering::Release);
                    return true;
                }
                // Removed or moved by someone else meanwhile: undo the copy.
                copy.val.store(0, Ordering::Release);
                copy.key.store(0, Ordering::Release);
            }
        }
        false
    }

    #[inline]
    fn net_of(key: FdbKey) -> NetId {
        ((key.0 >> 48).wrapping_sub(1)) as NetId
    }

    /// Learns that the MAC of `key` was seen on `port` at `now` (seconds).
    #[inline]
    pub fn learn_key(&self, key: FdbKey, port: PortId, now: u32) -> Learn {
        if let Some(slot) = self.find(key) {
            let v = slot.val.load(Ordering::Acquire);
            if v & STATIC != 0 {
                return Learn::Static;
            }
            if v & VALID != 0 && port_of(v) == port {
                // Write only when the second changed: no cache-line ping-pong
                // between workers for busy MACs.
                if v as u32 != now {
                    slot.val.store(pack(port, now, false), Ordering::Release);
                }
                return Learn::Refreshed;
            }
            slot.val.store(pack(port, now, false), Ordering::Release);
            if v & VALID == 0 {
                return Learn::Learned;
            }
            return Learn::Moved { from: port_of(v) };
        }
        self.learn_new(key, port, now)
    }

    /// [`Fdb::learn_key`] for a key not in the table: out of line, so the
    /// hit path stays small enough to inline into the learn stage.
    #[cold]
    #[inline(never)]
    fn learn_new(&self, key: FdbKey, port: PortId, now: u32) -> Learn {
        let net = Self::net_of(key) as usize;
        let Some(count) = self.learned.get(net) else {
            return Learn::Full;
        };
        let limit = self.limits[net].load(Ordering::Relaxed);
        if count.fetch_add(1, Ordering::AcqRel) >= limit {
            count.fetch_sub(1, Ordering::AcqRel);
            return Learn::Limit;
        }
        if self.claim(key, pack(port, now, false)) {
            Learn::Learned
        } else {
            count.fetch_sub(1, Ordering::AcqRel);
            Learn::Full
        }
    }

    /// Learns that `mac` was seen on `port` at `now` (seconds).
    #[inline]
    pub fn learn(&self, net: NetId, mac: Mac, port: PortId, now: u32) -> Learn {
        self.learn_key(self.key(net, mac), port, now)
    }

    /// Adds or replaces a static entry (never aged, never moved by learning).
    pub fn add_static(&self, net: NetId, mac: Mac, port: PortId) -> Result<(), FdbError> {
        if net as usize >= MAX_NETWORKS {
            return Err(FdbError::BadNetwork(net));
        }
        if mac.is_multicast() || mac.is_zero() {
            return Err(FdbError::NotUnicast(mac));
        }
        let key = self.key(net, mac);
        let v = pack(port, 0, true);
        if let Some(slot) = self.find(key) {
            let old = slot.val.swap(v, Ordering::AcqRel);
            if old & VALID != 0 && old & STATIC == 0 {
                self.learned[net as usize].fetch_sub(1, Ordering::AcqRel);
            }
            return Ok(());
        }
        if self.claim(key, v) {
            Ok(())
        } else {
            Err(FdbError::Full)
        }
    }

    fn clear_slot(&self, slot: &Slot, net: NetId) {
        let old = slot.val.swap(0, Ordering::AcqRel);
        slot.key.store(0, Ordering::Release);
        if old & VALID != 0 && old & STATIC == 0 {
            self.learned[net as usize].fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Removes (net, mac); `true` if it was there.
    pub fn remove(&self, net: NetId, mac: Mac) -> bool {
        match self.find(self.key(net, mac)) {
            Some(slot) => {
                self.clear_slot(slot, net);
                true
            }
            None => false,
        }
    }

    /// Visits every entry; removes those for which `f` returns `true`.
    /// Returns how many were removed.
    pub fn retain_not(&self, now: u32, f: impl FnMut(&FdbEntry) -> bool) -> usize {
        self.retain_not_in(&self.buckets, now, f)
    }

    fn retain_not_in(
        &self,
        buckets: &[Bucket],
        now: u32,
        mut f: impl FnMut(&FdbEntry) -> bool,
    ) -> usize {
        let mut removed = 0;
        for slot in buckets.iter().flat_map(|b| b.slots.iter()) {
            let k = slot.key.load(Ordering::Acquire);
            if k == 0 {
                continue;
            }
            let v = slot.val.load(Ordering::Acquire);
            if v & VALID == 0 {
                continue;
            }
            let e = entry(k, v, now);
            if f(&e) {
                self.clear_slot(slot, e.net);
                removed += 1;
            }
        }
        removed
    }

    /// Removes learned entries older than the network's aging time
    /// (`max_age(net)` seconds; `None`: the network does not age).
    pub fn age(&self, now: u32, max_age: impl Fn(NetId) -> Option<u32>) -> usize {
        self.age_some(now, self.buckets.len(), max_age)
    }

    /// [`Fdb::age`] over the next `buckets` buckets after the last call's
    /// (each at most once a call): housekeeping ages a slice per tick
    /// instead of reading the whole table (4 MiB by default) ten times a
    /// second, which was most of an idle switch's CPU.
    pub fn age_some(
        &self,
        now: u32,
        buckets: usize,
        max_age: impl Fn(NetId) -> Option<u32>,
    ) -> usize {
        let n = self.buckets.len();
        let mut left = buckets.min(n);
        let mut removed = 0;
        while left > 0 {
            let start = self.age_cursor.load(Ordering::Relaxed) % n;
            let end = (start + left).min(n);
            removed += self.retain_not_in(&self.buckets[start..end], now, |e| {
                !e.is_static && max_age(e.net).is_some_and(|m| e.age_secs > m)
            });
            left -= end - start;
            self.age_cursor.store(end % n, Ordering::Relaxed);
        }
        removed
    }

    /// Buckets in the table.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Every entry.
    pub fn entries(&self, now: u32) -> Vec<FdbEntry> {
        let mut out = Vec::new();
        self.retain_not(now, |e| {
            out.push(e.clone());
            false
        });
        out.sort_by_key(|e| (e.net, e.mac));
        out
    }
}

fn entry(k: u64, v: u64, now: u32) -> FdbEntry {
    let is_static = v & STATIC != 0;
    FdbEntry {
        net: ((k >> 48) - 1) as NetId,
        mac: Mac(k & 0xffff_ffff_ffff),
        port: port_of(v),
        is_static,
        age_secs: if is_static {
            0
        } else {
            now.wrapping_sub(v as u32)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u64) -> Mac {
        Mac(0x0200_0000_0000 | n)
    }

    #[test]
    fn learn_lookup_move_refresh() {
        let f = Fdb::new(1024);
        assert_eq!(f.lookup(0, mac(1)), None);
        assert_eq!(f.learn(0, mac(1), 3, 10), Learn::Learned);
        assert_eq!(f.lookup(0, mac(1)), Some(3));
        assert_eq!(f.lookup(1, mac(1)), None, "networks are separate");
        assert_eq!(f.learn(0, mac(1), 3, 11), Learn::Refreshed);
        assert_eq!(f.learn(0, mac(1), 4, 12), Learn::Moved { from: 3 });
        assert_eq!(f.lookup(0, mac(1)), Some(4));
        assert_eq!(f.learned_count(0), 1);
    }

    #[test]
    fn aging_removes_only_old_learned() {
        let f = Fdb::new(1024);
        f.learn(0, mac(1), 1, 0);
        f.learn(0, mac(2), 1, 250);
        f.add_static(0, mac(3), 2).unwrap();
        assert_eq!(f.age(301, |_| Some(300)), 1);
        assert_eq!(f.lookup(0, mac(1)), None);
        assert_eq!(f.lookup(0, mac(2)), Some(1));
        assert_eq!(f.lookup(0, mac(3)), Some(2));
        assert_eq!(f.learned_count(0), 1);
        assert_eq!(f.age(10_000, |_| None), 0, "aging off");
    }

    #[test]
    fn aging_a_slice_at_a_time_covers_the_table_once() {
        let f = Fdb::new(4096);
        // Old entries on network 0, fresh ones on network 1.
        for i in 0..1000 {
            f.learn(0, mac(i), 1, 0);
            f.learn(1, mac(i), 1, 300);
        }
        let slice = f.buckets().div_ceil(10);
        let mut removed = 0;
        for call in 0..10 {
            let r = f.age_some(301, slice, |_| Some(300));
            assert!(r < 1000, "call {call} aged {r}: more than its slice");
            removed += r;
        }
        assert_eq!(removed, 1000, "ten slices cover the table");
        assert_eq!(f.learned_count(0), 0);
        assert_eq!(f.learned_count(1), 1000, "fresh entries stay");
        // The eleventh call starts over and finds nothing more to age.
        assert_eq!(f.age_some(301, slice, |_| Some(300)), 0);
    }

    #[test]
    fn limit_caps_learning_and_spares_static() {
        let f = Fdb::new(4096);
        f.set_limit(0, 100);
        f.add_static(0, mac(999_999), 7).unwrap();
        let mut limited = 0;
        for i in 0..1000 {
            if f.learn(0, mac(i), 1, 0) == Learn::Limit {
                limited += 1;
            }
        }
        assert_eq!(f.learned_count(0), 100);
        assert_eq!(limited, 900);
        assert_eq!(f.lookup(0, mac(999_999)), Some(7));
        assert_eq!(f.learn(0, mac(999_999), 1, 0), Learn::Static);
        assert_eq!(f.lookup(0, mac(999_999)), Some(7));
    }

    #[test]
    fn static_rejects_multicast() {
        let f = Fdb::new(64);
        assert_eq!(
            f.add_static(0, Mac::BROADCAST, 1),
            Err(FdbError::NotUnicast(Mac::BROADCAST))
        );
    }

    #[test]
    fn fills_to_design_load_with_negligible_overflow() {
        // Sequential MACs (as container runtimes hand them out) and random ones.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut random: Vec<Mac> = (0..1u64 << 17)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Mac(x & 0xfeff_ffff_ffff)
            })
            .collect();
        random.sort_by_key(|m| m.0);
        random.dedup();
        let sequential: Vec<Mac> = (0..1u64 << 17).map(mac).collect();
        for macs in [sequential, random] {
            let f = Fdb::new(1 << 18);
            let n = macs.len();
            assert!(n * 2 <= f.capacity() && n * 2 > f.capacity() * 99 / 100);
            let full = macs
                .iter()
                .filter(|m| f.learn(1, **m, 1, 0) == Learn::Full)
                .count();
            // A refused learn is counted (learn_table_full) and the frame flooded.
            assert!(full * 10_000 < n, "at 50% load, {full} of {n} overflowed");
            assert!(macs
                .iter()
                .all(|m| f.learn(1, *m, 1, 0) == Learn::Full || f.lookup(1, *m) == Some(1)));
            assert_eq!(f.learned_count(1) as usize, n - full);
        }
    }

    #[test]
    fn flush_by_port_and_entries() {
        let f = Fdb::new(1024);
        f.learn(0, mac(1), 1, 5);
        f.learn(0, mac(2), 2, 5);
        f.learn(1, mac(3), 2, 5);
        assert_eq!(f.retain_not(5, |e| e.port == 2), 2);
        let e = f.entries(7);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].mac, mac(1));
        assert_eq!(e[0].age_secs, 2);
    }

    #[test]
    fn concurrent_learners_agree() {
        let f = std::sync::Arc::new(Fdb::new(1 << 16));
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for i in 0..5000u64 {
                        f.learn(0, mac(i * 4 + t), t as u16, 0);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(f.learned_count(0), 20_000);
        assert!((0..20_000u64).all(|i| f.lookup(0, mac(i)) == Some((i % 4) as u16)));
    }
}
