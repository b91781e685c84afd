//! IPv4 parsing: where the IPv4 and L4 headers of a frame are, and its
//! flow tuple, read once per frame for the stages behind (gateway, uplink,
//! NAT, ICMP). The common header (no options) is read at fixed offsets after
//! one length check; headers with options go through smoltcp's checked view.
//! Fragments are placed by [`frag`](super::frag).
use super::frag::{first_fragment, later_fragment, Frags};
use super::icmp::{ICMP_ECHO, ICMP_ECHO_REPLY};
use crate::conntrack::{Tuple, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::packet::Packet;
use crate::wire::checksum;
use smoltcp::wire::Ipv4Packet;

/// Ethernet header length.
pub(super) const ETH_LEN: usize = 14;
/// EtherType of IPv4.
pub(super) const ETH_P_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub(super) const ETH_P_ARP: u16 = 0x0806;

#[inline]
pub(crate) fn ethertype(f: &[u8]) -> u16 {
    if f.len() < ETH_LEN {
        0
    } else {
        u16::from_be_bytes([f[12], f[13]])
    }
}

/// Where the IPv4 and L4 headers of a frame are, and its flow tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct V4 {
    /// Offset of the L4 header (at most 14 + 60).
    pub(super) l4: u16,
    pub(super) tuple: Tuple,
    /// The tuple's conntrack hash.
    pub(super) hash: u64,
    /// Where the flow's entry sits in its index bucket, when the prefetch
    /// pass found it.
    pub(super) ct_hint: u8,
    pub(super) flags: u8,
    /// ICMP type, for ICMP.
    pub(super) icmp_type: u8,
    /// Which part of a fragmented datagram this is, if any.
    pub(super) frag: Frag,
}

/// Where a packet stands among the fragments of its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Frag {
    /// Not fragmented.
    Whole,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: payload only, tracked with the ports its first
    /// fragment carried.
    Rest,
}

/// Parsed headers of a batch, kept between batches so that no per-batch
/// array has to be initialized, and the worker's memory of fragmented
/// datagrams.
#[derive(Debug, Default)]
pub struct Parsed {
    pub(super) v: Vec<Option<V4>>,
    pub(super) frags: Frags,
}

impl Parsed {
    /// Parses the frames of `batch` that `want` picks (the others get
    /// `None`), keeping the result for the stages behind.
    #[inline]
    pub(super) fn batch(
        &mut self,
        batch: &[Packet],
        now: u32,
        mut want: impl FnMut(usize, &Packet) -> bool,
    ) -> &mut Vec<Option<V4>> {
        let (v, frags) = (&mut self.v, &mut self.frags);
        v.clear();
        v.extend(batch.iter().enumerate().map(|(i, p)| {
            if want(i, p) && ethertype(p.data()) == ETH_P_IPV4 {
                parse_v4(p.data(), frags, now)
            } else {
                None
            }
        }));
        v
    }
}

/// Parses IPv4 and the L4 ports. `None`: drop as `bad_l3` (that includes
/// a wrong header checksum: a router verifies it, RFC 1812 5.2.2, and a
/// translated header would otherwise carry the damage on with a checksum
/// patched incrementally from the wrong one). The conntrack
/// hash is left 0: [`Ctx::prefetch`](super::gateway::Ctx) fills it in for the frames that will be
/// looked up (VXLAN to the local VTEP never is).
#[inline(always)]
pub(super) fn parse_v4(f: &[u8], frags: &mut Frags, now: u32) -> Option<V4> {
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
            t.sport = u16::from_be_bytes([f[l4], f[l4 + 1]]);
            t.dport = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]);
            flags = f[l4 + 13];
        }
        PROTO_UDP => {
            if f.len() < l4 + 8 {
                return None;
            }
            t.sport = u16::from_be_bytes([f[l4], f[l4 + 1]]);
            t.dport = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]);
        }
        PROTO_ICMP => {
            if f.len() < l4 + 8 {
                return None;
            }
            icmp_type = f[l4];
            if icmp_type == ICMP_ECHO || icmp_type == ICMP_ECHO_REPLY {
                t.sport = u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
    use crate::wire::checksum;

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
