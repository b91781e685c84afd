//! ICMP: the gateway's echo replies, and errors from outside about the
//! switch's flows, translated back to the container's view.
use super::gateway::Ctx;
use super::ipv4::{ETH_LEN, V4};
use super::route::ttl_dec;
use super::Action;
use crate::conntrack::{Tuple, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::packet::Packet;
use crate::stats::DropReason;
use crate::wire::checksum;
use smoltcp::wire::{Icmpv4Message, Icmpv4Packet, Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket};

pub(super) const ICMP_ECHO_REPLY: u8 = 0;
pub(super) const ICMP_UNREACH: u8 = 3;
pub(super) const ICMP_ECHO: u8 = 8;
pub(super) const ICMP_TIME_EXCEEDED: u8 = 11;
pub(super) const ICMP_PARAM_PROBLEM: u8 = 12;

/// Turns an ICMP echo request in `f` into its reply, in place.
pub(super) fn echo_reply_in_place(f: &mut [u8], v: &V4) -> bool {
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
    let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH_LEN..]);
    ip.set_src_addr(Ipv4Address::from(v.tuple.dst));
    ip.set_dst_addr(Ipv4Address::from(v.tuple.src));
    let (mut d, mut s) = ([0u8; 6], [0u8; 6]);
    d.copy_from_slice(&f[0..6]);
    s.copy_from_slice(&f[6..12]);
    f[0..6].copy_from_slice(&s);
    f[6..12].copy_from_slice(&d);
    true
}

/// An ICMP error from outside about a packet the switch sent: translate the
/// outer destination and the embedded header back to the container's view.
/// The embedded packet is usually cut short (RFC 792 promises its IP header
/// and first 8 bytes), so its views are made over what [`embedded`] checked
/// is there, not with their own checks, which want the whole packet.
pub(super) fn icmp_error_in(ctx: &mut Ctx<'_>, p: &mut Packet, v: &V4) -> Action {
    let (l4, inner) = (v.l4 as usize, v.l4 as usize + 8);
    let f = p.data();
    let Some((ihl, sent)) = f.get(inner..).and_then(embedded) else {
        return Action::Drop(DropReason::BadL3);
    };
    let il4 = inner + ihl;
    // The message, as the outer header counts it, holds what was read.
    let total = ETH_LEN + Ipv4Packet::new_unchecked(&f[ETH_LEN..]).total_len() as usize;
    if total < il4 + 8 || total > f.len() {
        return Action::Drop(DropReason::BadL3);
    }
    // `sent` is what the switch sent, as it left: the flow's reply tuple
    // reversed.
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
    let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH_LEN..]);
    // Outer destination: the sender of the embedded packet.
    let mut c = checksum::update32(ip.checksum(), u32::from(ip.dst_addr()), orig_view.src);
    ip.set_dst_addr(Ipv4Address::from(orig_view.src));
    // Outer source: where the flow's packets in this direction have their
    // source translated (a container behind a published port, a hairpin),
    // the error's is too, as the kernel's NAT does: no container address
    // leaves through the uplink. Otherwise (an error from a router on the
    // way) it is kept.
    if sent.dst != orig_view.dst {
        c = checksum::update32(c, u32::from(ip.src_addr()), orig_view.dst);
        ip.set_src_addr(Ipv4Address::from(orig_view.dst));
    }
    ip.set_checksum(c);
    // Embedded header: addresses and its checksum, then the ports (or ICMP
    // id) and, for UDP, its checksum.
    let mut e = Ipv4Packet::new_unchecked(&mut f[inner..il4]);
    e.set_src_addr(Ipv4Address::from(orig_view.src));
    e.set_dst_addr(Ipv4Address::from(orig_view.dst));
    e.fill_checksum();
    let el4 = &mut f[il4..il4 + 8];
    match sent.proto {
        PROTO_UDP => {
            let mut u = UdpPacket::new_unchecked(el4);
            let c = u.checksum();
            if c != 0 {
                let mut c = checksum::update32(c, sent.src, orig_view.src);
                c = checksum::update32(c, sent.dst, orig_view.dst);
                c = checksum::update16(c, sent.sport, orig_view.sport);
                c = checksum::update16(c, sent.dport, orig_view.dport);
                u.set_checksum(c);
            }
            u.set_src_port(orig_view.sport);
            u.set_dst_port(orig_view.dport);
        }
        PROTO_TCP => {
            // Its checksum lies beyond the 8 bytes an error quotes.
            let mut t = TcpPacket::new_unchecked(el4);
            t.set_src_port(orig_view.sport);
            t.set_dst_port(orig_view.dport);
        }
        PROTO_ICMP => Icmpv4Packet::new_unchecked(el4).set_echo_ident(orig_view.sport),
        _ => {}
    }
    // The ICMP checksum covers the whole message: recomputed.
    Icmpv4Packet::new_unchecked(&mut f[l4..total]).fill_checksum();
    ctx.emit_to(f, side, orig_view.src)
}

/// The header of the packet an ICMP error quotes (`b`: from its IPv4
/// header on) and what it was: its IPv4 header length and tuple. `None`
/// when the quote is not IPv4 with its header and 8 bytes behind it.
/// The packet an ICMP error in `p` quotes: what was sent, as it left.
pub(super) fn sent_by(p: &Packet, v: &V4) -> Option<Tuple> {
    let inner = v.l4 as usize + 8;
    p.data().get(inner..).and_then(embedded).map(|(_, t)| t)
}

fn embedded(b: &[u8]) -> Option<(usize, Tuple)> {
    if b.len() < 20 {
        return None;
    }
    let ip = Ipv4Packet::new_unchecked(b);
    let ihl = ip.header_len() as usize;
    if ip.version() != 4 || ihl < 20 || b.len() < ihl + 8 {
        return None;
    }
    let proto: u8 = ip.next_header().into();
    let l4 = &b[ihl..ihl + 8];
    let (sport, dport) = match proto {
        PROTO_ICMP => {
            let id = Icmpv4Packet::new_unchecked(l4).echo_ident();
            (id, id)
        }
        PROTO_TCP => {
            let t = TcpPacket::new_unchecked(l4);
            (t.src_port(), t.dst_port())
        }
        _ => {
            let u = UdpPacket::new_unchecked(l4);
            (u.src_port(), u.dst_port())
        }
    };
    let t = Tuple {
        src: u32::from(ip.src_addr()),
        dst: u32::from(ip.dst_addr()),
        sport,
        dport,
        proto,
    };
    Some((ihl, t))
}
