//! The uplink stage: of what arrives on the uplink, only what the switch
//! owns is taken (replies of its flows, ICMP errors about them, published
//! ports, VXLAN for the local VTEP, ARP for a SNAT address the kernel does
//! not hold); everything else is the host kernel's and is left alone.
use super::arp::{arp_reply_in_place, arp_request_target};
use super::gateway::Ctx;
use super::icmp::{icmp_error_in, sent_by, ICMP_PARAM_PROBLEM, ICMP_TIME_EXCEEDED, ICMP_UNREACH};
use super::ipv4::{ethertype, Frag, Parsed, ETH_LEN, ETH_P_ARP, ETH_P_IPV4, V4};
use super::Action;
use crate::conntrack::{Side, Tuple, PROTO_ICMP, PROTO_UDP};
use crate::packet::Packet;
use crate::stats::DropReason;
use crate::tables::UplinkView;
use crate::wire::mac::Mac;

/// Handles a batch received on the uplink: sets each frame's action.
pub fn from_uplink(
    ctx: &mut Ctx<'_>,
    u: &UplinkView,
    batch: &mut [Packet],
    out: &mut Vec<Action>,
    parsed: &mut Parsed,
) {
    out.clear();
    let vtep = u.vtep_ip;
    let pre = parsed.batch(batch, ctx.now, |_, _| true);
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
        return super::vxlan::decap::from_tunnel(ctx, p, &v);
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
        // About a packet the switch sent from a host address and port: the
        // flow that sent it lives where that port belongs.
        if let Some(s) = sent_by(p, &v) {
            if ctx.steer.active() {
                let pb = ctx.snap.published_at(s.proto, s.src, s.sport);
                if let Some(a) = ctx.steer_local(u, s.proto, s.sport, pb) {
                    return a;
                }
            }
        }
        return icmp_error_in(ctx, p, &v);
    }
    // The published port it is for: looked up once, here when it decides
    // the worker, else only for a packet no flow claims.
    let mut published = None;
    if ctx.steer.active() {
        let pb = ctx.snap.published_at(t.proto, t.dst, t.dport).copied();
        if let Some(a) = ctx.steer_local(u, t.proto, t.dport, pb.as_ref()) {
            return a;
        }
        published = Some(pb);
    }
    if let Some(hit) = ctx.track(&v) {
        return ctx.translate(p, &v, hit);
    }
    let published =
        published.unwrap_or_else(|| ctx.snap.published_at(t.proto, t.dst, t.dport).copied());
    let Some(pb) = published else {
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
