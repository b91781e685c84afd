//! The bounded cache of upstream answers, keyed by the upstreams asked and
//! the question (networks with their own `--dns` resolvers do not share
//! answers with the others), honouring
//! TTLs: an entry lives as long as the smallest TTL in it (the SOA's
//! minimum for a negative answer, RFC 2308), at most [`MAX_TTL`]; a
//! served copy carries the time left. When full, expired entries go first,
//! then the one closest to expiring.
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Longest an answer is kept, whatever its TTL.
pub const MAX_TTL: u32 = 300;
/// Shortest time a negative answer without an SOA is kept.
const NEG_TTL: u32 = 30;

/// What an answer is filed under: the upstreams asked (a digest of their
/// addresses), the name (lowercase) and the type.
pub type Key = (u64, String, RecordType);

/// A digest of the upstreams a question is asked of.
pub fn upstreams_key(upstreams: &[std::net::SocketAddr]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    upstreams.hash(&mut h);
    h.finish()
}

/// Cached upstream answers.
pub struct Cache {
    map: HashMap<Key, Entry>,
    cap: usize,
}

struct Entry {
    msg: Message,
    stored: Instant,
    ttl: u32,
}

impl Cache {
    /// A cache of at most `cap` questions.
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// Questions held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The cached answer to `key`, with its TTLs lowered by its age, if it
    /// is still fresh.
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Message> {
        let e = self.map.get(key)?;
        let age = now.saturating_duration_since(e.stored).as_secs() as u32;
        if age >= e.ttl {
            self.map.remove(key);
            return None;
        }
        let mut m = e.msg.clone();
        for r in m.answers_mut() {
            r.set_ttl(r.ttl().min(e.ttl).saturating_sub(age));
        }
        Some(m)
    }

    /// Keeps `msg`, upstream's answer to `key`, if it says something lasting
    /// (an answer, or NXDOMAIN / NODATA); a failure is not kept.
    pub fn put(&mut self, key: Key, msg: &Message, now: Instant) {
        let Some(ttl) = ttl_of(msg) else {
            return;
        };
        if ttl == 0 {
            return;
        }
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.map
                .retain(|_, e| now.saturating_duration_since(e.stored) < secs(e.ttl));
            if self.map.len() >= self.cap {
                let soonest = self
                    .map
                    .iter()
                    .min_by_key(|(_, e)| e.stored + secs(e.ttl))
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    self.map.remove(&k);
                }
            }
        }
        self.map.insert(
            key,
            Entry {
                msg: msg.clone(),
                stored: now,
                ttl,
            },
        );
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// How long an answer may be kept: `None` for one that must not be.
fn ttl_of(msg: &Message) -> Option<u32> {
    if msg.truncated() {
        return None;
    }
    match msg.response_code() {
        ResponseCode::NoError if !msg.answers().is_empty() => msg
            .answers()
            .iter()
            .map(|r| r.ttl())
            .min()
            .map(|t| t.min(MAX_TTL)),
        ResponseCode::NoError | ResponseCode::NXDomain => {
            let soa = msg.name_servers().iter().find_map(|r| match r.data() {
                RData::SOA(s) => Some(s.minimum().min(r.ttl())),
                _ => None,
            });
            Some(soa.unwrap_or(NEG_TTL).min(MAX_TTL))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, Record};
    use std::net::Ipv4Addr;

    fn answer(name: &str, ttl: u32) -> Message {
        let n = Name::from_ascii(name).unwrap();
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        m.add_query(Query::query(n.clone(), RecordType::A));
        m.add_answer(Record::from_rdata(
            n,
            ttl,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        ));
        m
    }

    #[test]
    fn entries_live_as_long_as_their_ttl_and_the_cache_stays_bounded() {
        let t0 = Instant::now();
        let mut c = Cache::new(2);
        let k = |n: &str| (1, n.to_string(), RecordType::A);
        c.put(k("a"), &answer("a", 10), t0);
        let got = c.get(&k("a"), t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(got.answers()[0].ttl(), 6, "served with the time left");
        assert!(c.get(&k("a"), t0 + Duration::from_secs(10)).is_none());
        // Capped, and bounded: the one closest to expiring goes.
        c.put(k("a"), &answer("a", 100_000), t0);
        c.put(k("b"), &answer("b", 20), t0);
        c.put(k("c"), &answer("c", 50), t0);
        assert_eq!(c.len(), 2);
        assert!(c.get(&k("b"), t0).is_none());
        assert_eq!(c.get(&k("a"), t0).unwrap().answers()[0].ttl(), MAX_TTL);
        assert!(
            c.get(&k("a"), t0 + secs(MAX_TTL)).is_none(),
            "at most MAX_TTL"
        );
        // A failure is not kept.
        let mut f = answer("d", 60);
        f.set_response_code(ResponseCode::ServFail);
        c.put(k("d"), &f, t0);
        assert!(c.get(&k("d"), t0).is_none());
        // Another set of upstreams does not see the answer.
        c.put(k("e"), &answer("e", 60), t0);
        assert!(c.get(&(2, "e".into(), RecordType::A), t0).is_none());
    }
}
