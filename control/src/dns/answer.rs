//! What the resolver answers to one query from a container of a network,
//! with no I/O: the network's own names (A, and PTR for their addresses),
//! or a question to forward upstream, or an error code. The wire format is
//! hickory-proto's.
use super::NetZone;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::net::Ipv4Addr;

/// TTL of the network's own names: short, so that a detached container's
/// name is gone from caches within seconds.
pub const LOCAL_TTL: u32 = 5;

/// What to do with a query.
#[derive(Debug)]
pub enum Outcome {
    /// Send this back.
    Reply(Vec<u8>),
    /// Not the network's name: ask upstream (`query` is the parsed message,
    /// its one question lowercased as the cache key).
    Forward {
        /// The client's message.
        query: Message,
        /// Its question, lowercased.
        key: (String, RecordType),
    },
    /// Nothing to answer (not even a header to answer to).
    Drop,
}

/// Why a query was not answered from the network's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Did not parse.
    Malformed,
    /// Parsed, but not a plain query with one question of class IN.
    Unsupported,
}

/// The answer to `bytes` from a container of `zone`'s network, and, when
/// the query was refused as malformed or unsupported, why. `also`: the
/// other networks the asking container is attached to, whose names it sees
/// too (after its own network's).
pub fn answer(zone: &NetZone, also: &[&NetZone], bytes: &[u8]) -> (Outcome, Option<Refusal>) {
    let msg = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => {
            // A header to answer to: FORMERR with its id; not even that: drop.
            return match bytes.get(..2) {
                Some(id) if bytes.len() >= 12 => (
                    Outcome::Reply(error(
                        u16::from_be_bytes([id[0], id[1]]),
                        ResponseCode::FormErr,
                        None,
                    )),
                    Some(Refusal::Malformed),
                ),
                _ => (Outcome::Drop, Some(Refusal::Malformed)),
            };
        }
    };
    if msg.message_type() != MessageType::Query {
        // A response sent to the resolver's port: never answered (no loops).
        return (Outcome::Drop, Some(Refusal::Malformed));
    }
    let q = match msg.queries() {
        [q] if msg.op_code() == OpCode::Query && q.query_class() == DNSClass::IN => q.clone(),
        [q] if msg.op_code() == OpCode::Query => {
            return (
                Outcome::Reply(error(msg.id(), ResponseCode::NotImp, Some(q))),
                Some(Refusal::Unsupported),
            )
        }
        [q, ..] if msg.op_code() != OpCode::Query => {
            return (
                Outcome::Reply(error(msg.id(), ResponseCode::NotImp, Some(q))),
                Some(Refusal::Unsupported),
            )
        }
        _ => {
            return (
                Outcome::Reply(error(msg.id(), ResponseCode::FormErr, None)),
                Some(Refusal::Malformed),
            )
        }
    };
    let name = lower(q.name());
    let rtype = q.query_type();
    let mine = std::iter::once(zone).chain(also.iter().copied());
    if let Some(ips) = mine.clone().find_map(|z| z.names.get(&name)) {
        let answers = match rtype {
            RecordType::A | RecordType::ANY => ips
                .iter()
                .map(|ip| Record::from_rdata(q.name().clone(), LOCAL_TTL, RData::A(A(*ip))))
                .collect(),
            // The name exists, with no record of that type (NODATA).
            _ => Vec::new(),
        };
        return (
            Outcome::Reply(reply(&msg, &q, ResponseCode::NoError, answers)),
            None,
        );
    }
    if rtype == RecordType::PTR {
        if let Some(ip) = reverse_v4(&name) {
            if let Some(z) = mine.clone().find(|z| z.contains(ip)) {
                let code = match z.ptr.get(&ip).and_then(|n| Name::from_ascii(n).ok()) {
                    Some(mut target) => {
                        target.set_fqdn(true);
                        let r = Record::from_rdata(
                            q.name().clone(),
                            LOCAL_TTL,
                            RData::PTR(PTR(target)),
                        );
                        return (
                            Outcome::Reply(reply(&msg, &q, ResponseCode::NoError, vec![r])),
                            None,
                        );
                    }
                    None => ResponseCode::NXDomain,
                };
                // The network's own addresses are never asked upstream.
                return (Outcome::Reply(reply(&msg, &q, code, Vec::new())), None);
            }
        }
    }
    if zone.upstreams.is_empty() {
        // An --internal network (or no upstream at all): nothing leaves.
        return (
            Outcome::Reply(reply(&msg, &q, ResponseCode::Refused, Vec::new())),
            None,
        );
    }
    (
        Outcome::Forward {
            query: msg,
            key: (name, rtype),
        },
        None,
    )
}

/// `name` lowercased, without the root's dot: the key names are filed by.
pub fn lower(name: &Name) -> String {
    let s = name.to_lowercase().to_ascii();
    s.strip_suffix('.').unwrap_or(&s).to_string()
}

/// The address a `d.c.b.a.in-addr.arpa` name stands for.
fn reverse_v4(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match parts[..] {
        [d, c, b, a] => Some(Ipv4Addr::new(a, b, c, d)),
        _ => None,
    }
}

/// A response to `q` (recursion offered, as a container's resolver
/// expects of its nameserver).
pub fn reply(q: &Message, question: &Query, code: ResponseCode, answers: Vec<Record>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(code != ResponseCode::Refused)
        .set_response_code(code);
    m.add_query(question.clone());
    m.add_answers(answers);
    m.to_vec()
        .unwrap_or_else(|_| error(q.id(), ResponseCode::ServFail, None))
}

/// An error response with `id` (and the question, if there is one).
pub fn error(id: u16, code: ResponseCode, question: Option<&Query>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_available(true)
        .set_response_code(code);
    if let Some(q) = question {
        m.add_query(q.clone());
    }
    // A header and a question always encode; the fallback is a bare header.
    m.to_vec().unwrap_or_else(|_| {
        let mut h = vec![0u8; 12];
        h[..2].copy_from_slice(&id.to_be_bytes());
        h[2] = 0x80;
        h[3] = 0x80 | (u16::from(code) as u8 & 0x0f);
        h
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn zone(upstreams: bool) -> NetZone {
        let web = Ipv4Addr::new(10, 9, 0, 2);
        NetZone {
            also: HashMap::new(),
            network: "n".into(),
            gw: Ipv4Addr::new(10, 9, 0, 1),
            subnet: (Ipv4Addr::new(10, 9, 0, 0), 24),
            upstreams: if upstreams {
                vec!["192.0.2.53:53".parse().unwrap()]
            } else {
                Vec::new()
            },
            names: HashMap::from([("web".into(), vec![web]), ("www".into(), vec![web])]),
            ptr: HashMap::from([(web, "web".into())]),
        }
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn parsed(o: Outcome) -> Message {
        match o {
            Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("not a reply: {other:?}"),
        }
    }

    #[test]
    fn names_and_aliases_answer_with_their_address_in_any_case() {
        for name in ["web", "WWW.", "Web"] {
            let (o, why) = answer(&zone(true), &[], &query(name, RecordType::A));
            assert_eq!(why, None);
            let m = parsed(o);
            assert_eq!(m.id(), 0x4242);
            assert_eq!(m.response_code(), ResponseCode::NoError);
            assert_eq!(m.answers().len(), 1, "{name}");
            assert_eq!(
                m.answers()[0].data(),
                &RData::A(A(Ipv4Addr::new(10, 9, 0, 2)))
            );
            assert_eq!(m.answers()[0].ttl(), LOCAL_TTL);
        }
        // The name exists, without an IPv6 address: no error, no answer.
        let m = parsed(answer(&zone(true), &[], &query("web", RecordType::AAAA)).0);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
    }

    #[test]
    fn addresses_of_the_network_answer_ptr_and_are_never_forwarded() {
        let m = parsed(
            answer(
                &zone(true),
                &[],
                &query("2.0.9.10.in-addr.arpa", RecordType::PTR),
            )
            .0,
        );
        assert_eq!(
            m.answers()[0].data(),
            &RData::PTR(PTR(Name::from_ascii("web.").unwrap()))
        );
        let m = parsed(
            answer(
                &zone(true),
                &[],
                &query("77.0.9.10.in-addr.arpa", RecordType::PTR),
            )
            .0,
        );
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        // Another subnet's address goes upstream like any other name.
        assert!(matches!(
            answer(
                &zone(true),
                &[],
                &query("1.2.0.192.in-addr.arpa", RecordType::PTR)
            )
            .0,
            Outcome::Forward { .. }
        ));
    }

    #[test]
    fn other_names_go_upstream_unless_the_network_forwards_nothing() {
        match answer(&zone(true), &[], &query("Example.ORG", RecordType::A)).0 {
            Outcome::Forward { key, .. } => assert_eq!(key, ("example.org".into(), RecordType::A)),
            other => panic!("{other:?}"),
        }
        let m = parsed(answer(&zone(false), &[], &query("example.org", RecordType::A)).0);
        assert_eq!(m.response_code(), ResponseCode::Refused);
    }

    #[test]
    fn a_container_on_two_networks_sees_both_and_others_see_their_own() {
        let a = zone(true);
        let mut b = zone(true);
        b.gw = Ipv4Addr::new(10, 8, 0, 1);
        b.subnet = (Ipv4Addr::new(10, 8, 0, 0), 24);
        b.names = HashMap::from([("db".into(), vec![Ipv4Addr::new(10, 8, 0, 5)])]);
        b.ptr = HashMap::from([(Ipv4Addr::new(10, 8, 0, 5), "db".into())]);
        // On a only: db is not a's name; it goes upstream like any other.
        assert!(matches!(
            answer(&a, &[], &query("db", RecordType::A)).0,
            Outcome::Forward { .. }
        ));
        // On both: found, and its address answers PTR.
        let m = parsed(answer(&a, &[&b], &query("db", RecordType::A)).0);
        assert_eq!(
            m.answers()[0].data(),
            &RData::A(A(Ipv4Addr::new(10, 8, 0, 5)))
        );
        let m = parsed(answer(&a, &[&b], &query("5.0.8.10.in-addr.arpa", RecordType::PTR)).0);
        assert_eq!(m.answers().len(), 1);
        // Its own network's name comes first.
        let m = parsed(answer(&a, &[&b], &query("web", RecordType::A)).0);
        assert_eq!(
            m.answers()[0].data(),
            &RData::A(A(Ipv4Addr::new(10, 9, 0, 2)))
        );
    }

    #[test]
    fn hostile_queries_are_counted_and_get_formerr_or_nothing() {
        // Too short for a header: dropped.
        assert!(matches!(
            answer(&zone(true), &[], &[1, 2, 3]),
            (Outcome::Drop, Some(Refusal::Malformed))
        ));
        // A name whose compression pointer points at itself (a loop).
        let mut q = query("web", RecordType::A);
        q.truncate(12);
        q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let (o, why) = answer(&zone(true), &[], &q);
        assert_eq!(why, Some(Refusal::Malformed));
        assert_eq!(parsed(o).response_code(), ResponseCode::FormErr);
        // Cut in the middle of its question.
        let mut q = query("web", RecordType::A);
        q.truncate(q.len() - 3);
        let (o, why) = answer(&zone(true), &[], &q);
        assert_eq!(why, Some(Refusal::Malformed));
        assert_eq!(parsed(o).id(), 0x4242);
        // Two questions.
        let mut m = Message::from_vec(&query("web", RecordType::A)).unwrap();
        m.add_query(Query::query(
            Name::from_ascii("www").unwrap(),
            RecordType::A,
        ));
        let (o, why) = answer(&zone(true), &[], &m.to_vec().unwrap());
        assert_eq!(why, Some(Refusal::Malformed));
        assert_eq!(parsed(o).response_code(), ResponseCode::FormErr);
        // A response is never answered.
        let mut m = Message::from_vec(&query("web", RecordType::A)).unwrap();
        m.set_message_type(MessageType::Response);
        assert!(matches!(
            answer(&zone(true), &[], &m.to_vec().unwrap()).0,
            Outcome::Drop
        ));
    }
}
