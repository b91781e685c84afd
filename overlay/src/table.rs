//! The replicated cluster table, without I/O.
//!
//! Every host owns one row set — its VTEP address, the VNIs it has (the
//! flood lists) and its container endpoints — and is the only writer of it.
//! Each local change takes the next sequence number of the host's current
//! *epoch* (one epoch per run of the switch). Peers hold a copy of every
//! row set with the highest sequence they have applied, so:
//!
//! * a change is a [`Delta`]: the entries whose sequence is above what the
//!   receiver has, in sequence order, in pieces that each say which range
//!   `(from, to]` they cover; a piece whose `from` is above what the
//!   receiver has is a gap and is refused (anti-entropy fills it);
//! * anti-entropy is a [`DigestItem`] per host (epoch, sequence), answered
//!   with the deltas the asker lacks (scuttlebutt reconciliation);
//! * a newer epoch replaces the whole row set at once, so a restarted host's
//!   stale MACs never linger;
//! * a delete is a tombstone that expires after a TTL; an asker that is
//!   behind an expired tombstone gets the full row set (`reset`) instead.
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// VXLAN network identifier.
pub type Vni = u32;

/// What an entry is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Key {
    /// The host's VTEP address.
    Vtep,
    /// The host has this VNI (it belongs in the VNI's flood list).
    Member(Vni),
    /// A container MAC on this VNI, behind the host's VTEP.
    Endpoint(Vni, [u8; 6]),
    /// A container's name (or alias) on this VNI, lowercase: the other
    /// hosts' resolvers answer it too. Added after the others, so that the
    /// variants before keep their numbers on the wire.
    Name(Vni, String),
}

/// The value of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// For [`Key::Vtep`].
    Vtep(Ipv4Addr),
    /// For [`Key::Member`].
    Member,
    /// For [`Key::Endpoint`]: the container's address, when known (ARP
    /// suppression).
    Endpoint(Option<Ipv4Addr>),
    /// For [`Key::Name`]: the container's address.
    Name(Ipv4Addr),
}

impl Entry {
    /// Its share of a delta piece: an entry of fixed size is about 30 bytes
    /// on the wire, a name that plus its length.
    fn units(&self) -> usize {
        match &self.key {
            Key::Name(_, n) => 1 + n.len() / 30,
            _ => 1,
        }
    }
}

/// One entry on the wire; `value: None` is a tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Key.
    pub key: Key,
    /// Sequence of the change that wrote it.
    pub seq: u64,
    /// Value, or `None` when deleted.
    pub value: Option<Value>,
}

/// A piece of one host's changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Owner.
    pub host: String,
    /// Owner's epoch.
    pub epoch: u64,
    /// The receiver must have applied up to here.
    pub from: u64,
    /// After this piece the receiver has applied up to here.
    pub to: u64,
    /// Drop everything known of this host (same epoch) before applying.
    pub reset: bool,
    /// Entries with `from < seq <= to`, in sequence order.
    pub entries: Vec<Entry>,
}

/// What a peer has of one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestItem {
    /// Host.
    pub host: String,
    /// Epoch held.
    pub epoch: u64,
    /// Highest sequence applied.
    pub seq: u64,
}

/// Result of [`Store::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied; `true` when a live value changed.
    Ok(bool),
    /// An older epoch than the one held: ignored.
    Stale,
    /// Starts past what is held: refused, ask for a digest answer.
    Gap,
    /// Claims to be about this host: ignored.
    Own,
}

#[derive(Debug, Clone)]
struct Slot {
    seq: u64,
    value: Option<Value>,
    /// When it became a tombstone.
    dead_since: Option<Instant>,
}

/// One host's row set.
#[derive(Debug, Clone)]
pub struct HostRows {
    /// Epoch.
    pub epoch: u64,
    /// Highest sequence applied (for the local host: written).
    pub seq: u64,
    /// Tombstones up to here have expired: an asker below needs a reset.
    gc_floor: u64,
    entries: BTreeMap<Key, Slot>,
    /// Last time a delta for it was applied.
    pub heard: Instant,
}

impl HostRows {
    fn new(epoch: u64, now: Instant) -> Self {
        Self {
            epoch,
            seq: 0,
            gc_floor: 0,
            entries: BTreeMap::new(),
            heard: now,
        }
    }

    /// Live entries.
    pub fn live(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.entries
            .iter()
            .filter_map(|(k, s)| s.value.as_ref().map(|v| (k, v)))
    }

    /// The changes above `since`, in pieces of at most `max` units
    /// (entries, a long name counting for more).
    fn delta(&self, host: &str, since: u64, max: usize) -> Vec<Delta> {
        let reset = since < self.gc_floor;
        let mut list: Vec<Entry> = self
            .entries
            .iter()
            .filter(|(_, s)| {
                if reset {
                    s.value.is_some()
                } else {
                    s.seq > since
                }
            })
            .map(|(k, s)| Entry {
                key: k.clone(),
                seq: s.seq,
                value: s.value,
            })
            .collect();
        list.sort_by_key(|e| e.seq);
        let mut out = Vec::new();
        let mut from = if reset { 0 } else { since };
        let mut first = true;
        let max = max.max(1);
        let mut rest = list.as_slice();
        loop {
            // As many entries as fit in `max` units (at least one).
            let mut units = 0;
            let n = rest
                .iter()
                .take_while(|e| {
                    units += e.units();
                    units <= max
                })
                .count()
                .max(1)
                .min(rest.len());
            let (piece, tail) = rest.split_at(n);
            let to = if tail.is_empty() {
                self.seq
            } else {
                piece.last().map_or(from, |e| e.seq)
            };
            out.push(Delta {
                host: host.to_string(),
                epoch: self.epoch,
                from,
                to,
                reset: reset && first,
                entries: piece.to_vec(),
            });
            first = false;
            from = to;
            rest = tail;
            if rest.is_empty() {
                break;
            }
        }
        out
    }

    fn expire(&mut self, now: Instant, ttl: Duration) {
        let floor = &mut self.gc_floor;
        self.entries.retain(|_, s| match s.dead_since {
            Some(t) if now.saturating_duration_since(t) >= ttl => {
                *floor = (*floor).max(s.seq);
                false
            }
            _ => true,
        });
    }
}

/// A host as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    /// Name.
    pub name: String,
    /// Epoch.
    pub epoch: u64,
    /// VTEP.
    pub vtep: Ipv4Addr,
    /// VNIs it has.
    pub vnis: Vec<Vni>,
    /// Endpoints: VNI, MAC, IP.
    pub endpoints: Vec<(Vni, [u8; 6], Option<Ipv4Addr>)>,
    /// Containers' names: VNI, name, IP.
    pub names: Vec<(Vni, String, Ipv4Addr)>,
}

impl HostView {
    /// A host's live rows as the data plane sees them; `None` while it has
    /// no VTEP yet.
    pub fn from_rows<'a>(
        name: &str,
        epoch: u64,
        rows: impl Iterator<Item = (&'a Key, &'a Value)>,
    ) -> Option<Self> {
        let mut vtep = None;
        let mut vnis = Vec::new();
        let mut endpoints = Vec::new();
        let mut names = Vec::new();
        for (k, val) in rows {
            match (k, val) {
                (Key::Vtep, Value::Vtep(ip)) => vtep = Some(*ip),
                (Key::Member(vni), _) => vnis.push(*vni),
                (Key::Endpoint(vni, mac), Value::Endpoint(ip)) => endpoints.push((*vni, *mac, *ip)),
                (Key::Name(vni, n), Value::Name(ip)) => names.push((*vni, n.clone(), *ip)),
                _ => {}
            }
        }
        Some(Self {
            name: name.to_string(),
            epoch,
            vtep: vtep?,
            vnis,
            endpoints,
            names,
        })
    }
}

/// The whole table, as held by one host.
#[derive(Debug)]
pub struct Store {
    me: String,
    local: HostRows,
    hosts: HashMap<String, HostRows>,
    tombstone_ttl: Duration,
}

impl Store {
    /// An empty table for host `me` in epoch `epoch`.
    pub fn new(me: &str, epoch: u64, tombstone_ttl: Duration, now: Instant) -> Self {
        Self {
            me: me.to_string(),
            local: HostRows::new(epoch, now),
            hosts: HashMap::new(),
            tombstone_ttl,
        }
    }

    /// This host's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// This host's rows.
    pub fn local(&self) -> &HostRows {
        &self.local
    }

    /// Another host's rows.
    pub fn host(&self, name: &str) -> Option<&HostRows> {
        self.hosts.get(name)
    }

    /// Every remote host held.
    pub fn hosts(&self) -> impl Iterator<Item = (&String, &HostRows)> {
        self.hosts.iter()
    }

    /// Makes the local rows equal to `want`; returns the sequence before
    /// the change when anything changed.
    pub fn set_local(&mut self, want: &BTreeMap<Key, Value>, now: Instant) -> Option<u64> {
        let before = self.local.seq;
        let mut seq = before;
        for (k, v) in want {
            let same = self
                .local
                .entries
                .get(k)
                .is_some_and(|s| s.value.as_ref() == Some(v));
            if !same {
                seq += 1;
                self.local.entries.insert(
                    k.clone(),
                    Slot {
                        seq,
                        value: Some(*v),
                        dead_since: None,
                    },
                );
            }
        }
        for (k, s) in self.local.entries.iter_mut() {
            if s.value.is_some() && !want.contains_key(k) {
                seq += 1;
                s.seq = seq;
                s.value = None;
                s.dead_since = Some(now);
            }
        }
        self.local.seq = seq;
        (seq != before).then_some(before)
    }

    /// The local changes above `since`, in pieces of at most `max` units.
    pub fn local_delta(&self, since: u64, max: usize) -> Vec<Delta> {
        self.local.delta(&self.me, since, max)
    }

    /// What this host has, for the hosts `keep` accepts (and itself).
    pub fn digest(&self, keep: impl Fn(&str, u64) -> bool) -> Vec<DigestItem> {
        let mut v = vec![DigestItem {
            host: self.me.clone(),
            epoch: self.local.epoch,
            seq: self.local.seq,
        }];
        v.extend(
            self.hosts
                .iter()
                .filter(|(h, r)| keep(h, r.epoch))
                .map(|(h, r)| DigestItem {
                    host: h.clone(),
                    epoch: r.epoch,
                    seq: r.seq,
                }),
        );
        v
    }

    /// Answers a peer's digest: the deltas it lacks (for hosts `keep`
    /// accepts, and this one), and whether it has something this host
    /// lacks.
    pub fn answer(
        &self,
        digest: &[DigestItem],
        keep: impl Fn(&str, u64) -> bool,
        max: usize,
    ) -> (Vec<Delta>, bool) {
        let theirs: HashMap<&str, &DigestItem> =
            digest.iter().map(|d| (d.host.as_str(), d)).collect();
        let mut out = Vec::new();
        let mine = std::iter::once((&self.me, &self.local))
            .chain(self.hosts.iter().filter(|(h, r)| keep(h.as_str(), r.epoch)));
        for (h, rows) in mine {
            let (since, newer) = match theirs.get(h.as_str()) {
                Some(d) if d.epoch == rows.epoch => (d.seq, false),
                Some(d) if d.epoch > rows.epoch => continue,
                Some(_) => (0, true),
                None => (0, false),
            };
            if since < rows.seq || newer {
                out.extend(rows.delta(h, since, max));
            }
        }
        let they_have_more = digest.iter().any(|d| {
            if d.host == self.me {
                return false;
            }
            match self.hosts.get(&d.host) {
                Some(r) => d.epoch > r.epoch || (d.epoch == r.epoch && d.seq > r.seq),
                None => true,
            }
        });
        (out, they_have_more)
    }

    /// Applies one piece of a host's changes.
    pub fn apply(&mut self, d: &Delta, now: Instant) -> Applied {
        if d.host == self.me {
            return Applied::Own;
        }
        let rows = self
            .hosts
            .entry(d.host.clone())
            .or_insert_with(|| HostRows::new(d.epoch, now));
        if d.epoch < rows.epoch {
            return Applied::Stale;
        }
        let mut changed = false;
        if d.epoch > rows.epoch {
            changed = rows.live().next().is_some();
            *rows = HostRows::new(d.epoch, now);
        }
        if d.reset {
            changed |= rows.live().next().is_some();
            rows.entries.clear();
            rows.seq = 0;
            rows.gc_floor = 0;
        }
        if d.from > rows.seq {
            return Applied::Gap;
        }
        for e in &d.entries {
            let old = rows.entries.get(&e.key);
            if old.is_some_and(|s| s.seq >= e.seq) {
                continue;
            }
            changed |= old.and_then(|s| s.value) != e.value;
            rows.entries.insert(
                e.key.clone(),
                Slot {
                    seq: e.seq,
                    value: e.value,
                    dead_since: e.value.is_none().then_some(now),
                },
            );
        }
        rows.seq = rows.seq.max(d.to);
        rows.heard = now;
        Applied::Ok(changed)
    }

    /// Forgets a host entirely (its rows were withdrawn long ago).
    pub fn forget(&mut self, host: &str) {
        self.hosts.remove(host);
    }

    /// Expires old tombstones.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.tombstone_ttl;
        self.local.expire(now, ttl);
        for r in self.hosts.values_mut() {
            r.expire(now, ttl);
        }
    }

    /// The remote hosts `keep` accepts, as the data plane sees them (hosts
    /// without a VTEP yet are left out).
    pub fn view(&self, keep: impl Fn(&str, u64) -> bool) -> Vec<HostView> {
        let mut v: Vec<HostView> = self
            .hosts
            .iter()
            .filter(|(h, r)| keep(h, r.epoch))
            .filter_map(|(h, r)| HostView::from_rows(h, r.epoch, r.live()))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(items: &[(Key, Value)]) -> BTreeMap<Key, Value> {
        items.iter().cloned().collect()
    }

    /// A host's rows: its VTEP and `rows`.
    fn vtep_and(rows: impl IntoIterator<Item = (Key, Value)>) -> BTreeMap<Key, Value> {
        std::iter::once((Key::Vtep, Value::Vtep(Ipv4Addr::LOCALHOST)))
            .chain(rows)
            .collect()
    }

    const M1: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const M2: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn sync(from: &Store, to: &mut Store, now: Instant) {
        let (deltas, _) = from.answer(&to.digest(|_, _| true), |_, _| true, 2);
        for d in deltas {
            assert!(matches!(to.apply(&d, now), Applied::Ok(_)), "{d:?}");
        }
    }

    #[test]
    fn deltas_carry_changes_and_tombstones() {
        let t = Instant::now();
        let mut a = Store::new("a", 1, Duration::from_secs(60), t);
        let mut b = Store::new("b", 1, Duration::from_secs(60), t);
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        a.set_local(
            &want(&[
                (Key::Vtep, Value::Vtep(Ipv4Addr::new(192, 168, 0, 1))),
                (Key::Member(7), Value::Member),
                (Key::Endpoint(7, M1), Value::Endpoint(Some(ip))),
                (Key::Endpoint(7, M2), Value::Endpoint(None)),
            ]),
            t,
        );
        sync(&a, &mut b, t);
        let v = b.view(|_, _| true);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].endpoints.len(), 2);
        assert_eq!(v[0].vnis, vec![7]);
        // Delete M2: pushed as a one-entry delta.
        let before = a
            .set_local(
                &want(&[
                    (Key::Vtep, Value::Vtep(Ipv4Addr::new(192, 168, 0, 1))),
                    (Key::Member(7), Value::Member),
                    (Key::Endpoint(7, M1), Value::Endpoint(Some(ip))),
                ]),
                t,
            )
            .unwrap();
        let d = a.local_delta(before, 100);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].entries.len(), 1);
        assert_eq!(d[0].entries[0].value, None);
        assert_eq!(b.apply(&d[0], t), Applied::Ok(true));
        assert_eq!(b.view(|_, _| true)[0].endpoints.len(), 1);
        // Replaying it changes nothing.
        assert_eq!(b.apply(&d[0], t), Applied::Ok(false));
    }

    #[test]
    fn gap_is_refused_and_repaired_by_digest() {
        let t = Instant::now();
        let mut a = Store::new("a", 1, Duration::from_secs(60), t);
        let mut b = Store::new("b", 1, Duration::from_secs(60), t);
        a.set_local(&want(&[(Key::Vtep, Value::Vtep(Ipv4Addr::LOCALHOST))]), t);
        sync(&a, &mut b, t);
        let s1 = a
            .set_local(
                &want(&[
                    (Key::Vtep, Value::Vtep(Ipv4Addr::LOCALHOST)),
                    (Key::Member(1), Value::Member),
                ]),
                t,
            )
            .unwrap();
        let _lost = a.local_delta(s1, 100);
        let s2 = a
            .set_local(
                &want(&[
                    (Key::Vtep, Value::Vtep(Ipv4Addr::LOCALHOST)),
                    (Key::Member(1), Value::Member),
                    (Key::Member(2), Value::Member),
                ]),
                t,
            )
            .unwrap();
        let d = a.local_delta(s2, 100);
        assert_eq!(b.apply(&d[0], t), Applied::Gap);
        sync(&a, &mut b, t);
        assert_eq!(b.view(|_, _| true)[0].vnis, vec![1, 2]);
    }

    #[test]
    fn new_epoch_replaces_old_rows() {
        let t = Instant::now();
        let mut a = Store::new("a", 1, Duration::from_secs(60), t);
        let mut b = Store::new("b", 1, Duration::from_secs(60), t);
        a.set_local(
            &want(&[
                (Key::Vtep, Value::Vtep(Ipv4Addr::LOCALHOST)),
                (Key::Endpoint(1, M1), Value::Endpoint(None)),
            ]),
            t,
        );
        sync(&a, &mut b, t);
        let mut a2 = Store::new("a", 2, Duration::from_secs(60), t);
        a2.set_local(
            &want(&[
                (Key::Vtep, Value::Vtep(Ipv4Addr::LOCALHOST)),
                (Key::Endpoint(1, M2), Value::Endpoint(None)),
            ]),
            t,
        );
        sync(&a2, &mut b, t);
        let v = b.view(|_, _| true);
        assert_eq!(v[0].epoch, 2);
        assert_eq!(v[0].endpoints, vec![(1, M2, None)]);
        // The old run's deltas are stale now.
        let old = a.local_delta(0, 100);
        assert_eq!(b.apply(&old[0], t), Applied::Stale);
    }

    #[test]
    fn expired_tombstone_makes_a_reset() {
        let t = Instant::now();
        let ttl = Duration::from_secs(1);
        let mut a = Store::new("a", 1, ttl, t);
        let mut b = Store::new("b", 1, ttl, t);
        let base = [(Key::Vtep, Value::Vtep(Ipv4Addr::LOCALHOST))];
        let mut with = base.to_vec();
        with.push((Key::Endpoint(1, M1), Value::Endpoint(None)));
        a.set_local(&want(&with), t);
        sync(&a, &mut b, t);
        // b misses the delete, and the tombstone expires on a.
        a.set_local(&want(&base), t);
        a.expire(t + ttl);
        let (d, _) = a.answer(&b.digest(|_, _| true), |_, _| true, 100);
        assert!(d[0].reset);
        assert_eq!(b.apply(&d[0], t), Applied::Ok(true));
        assert!(b.view(|_, _| true)[0].endpoints.is_empty());
    }

    #[test]
    fn pieces_are_contiguous() {
        let t = Instant::now();
        let mut a = Store::new("a", 1, Duration::from_secs(60), t);
        let rows = (0..10u8).map(|i| (Key::Endpoint(1, [2, 0, 0, 0, 1, i]), Value::Endpoint(None)));
        a.set_local(&vtep_and(rows), t);
        let d = a.local_delta(0, 3);
        assert_eq!(d.len(), 4);
        for p in d.windows(2) {
            assert_eq!(p[0].to, p[1].from);
        }
        assert_eq!(d.last().unwrap().to, a.local().seq);
        // Out of order: the second piece first is a gap.
        let mut b = Store::new("b", 1, Duration::from_secs(60), t);
        assert_eq!(b.apply(&d[1], t), Applied::Gap);
        for p in &d {
            assert!(matches!(b.apply(p, t), Applied::Ok(_)));
        }
        assert_eq!(b.view(|_, _| true)[0].endpoints.len(), 10);
    }

    #[test]
    fn names_replicate_and_long_ones_make_smaller_pieces() {
        let t = Instant::now();
        let mut a = Store::new("a", 1, Duration::from_secs(60), t);
        // Names as long as a DNS name gets: 253 bytes.
        let rows = (0..100u8).map(|i| {
            let n = format!("{i:03}.{}", "x".repeat(249));
            (Key::Name(1, n), Value::Name(Ipv4Addr::new(10, 0, 0, i)))
        });
        a.set_local(&vtep_and(rows), t);
        // Gossip's piece: 40 units, which must stay within one datagram.
        let d = a.local_delta(0, 40);
        assert!(d.len() > 3, "{} pieces", d.len());
        for p in &d {
            let bytes = postcard::to_allocvec(p).unwrap().len();
            assert!(bytes < 1400, "a piece of {bytes} bytes");
        }
        let mut b = Store::new("b", 1, Duration::from_secs(60), t);
        for p in &d {
            assert!(matches!(b.apply(p, t), Applied::Ok(_)));
        }
        let v = b.view(|_, _| true);
        assert_eq!(v[0].names.len(), 100);
        assert!(v[0].names.contains(&(
            1,
            format!("007.{}", "x".repeat(249)),
            Ipv4Addr::new(10, 0, 0, 7)
        )));
    }
}
