//! Fragments: the ports of the datagrams whose first fragment went through,
//! so that the fragments behind it are tracked and translated with it.
use super::ipv4::{Frag, V4};
use crate::conntrack::Tuple;

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
pub(super) struct Frags(std::collections::HashMap<FragKey, FragPorts>);

/// A datagram: source, destination, identification, protocol (RFC 791).
pub(super) type FragKey = (u32, u32, u16, u8);

#[derive(Debug, Clone, Copy)]
pub(super) struct FragPorts {
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

/// The datagram a fragment with IPv4 header `h` belongs to.
fn frag_key(h: &[u8], src: u32, dst: u32, proto: u8) -> FragKey {
    (src, dst, u16::from_be_bytes([h[4], h[5]]), proto)
}

/// Remembers the ports of a first fragment for the fragments behind it.
#[cold]
pub(super) fn first_fragment(h: &[u8], t: &Tuple, icmp_type: u8, frags: &mut Frags, now: u32) {
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
pub(super) fn later_fragment(
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
