//! The gateway stage: what a network's containers send to the switch's own
//! MAC, and what arrives on the uplink.
//!
//! From a container: ARP and ICMP echo for the gateway are answered here;
//! IPv4 is routed: tracked flows are translated (SNAT, DNAT, hairpin), new
//! flows to the outside are source-NATed to the uplink, flows to a published
//! port on a host address are hairpinned, other traffic for the host's own
//! addresses is handed to the host's interface on the network, and anything
//! for another network is dropped (isolation).
//!
//! From the uplink: only what the switch owns is taken (replies of its flows,
//! ICMP errors about them, published ports, ARP for a SNAT address the kernel
//! does not hold); everything else is the host kernel's and is left alone.
use super::arp::{arp_reply_in_place, arp_request_target};
use super::icmp::{
    echo_reply_in_place, icmp_error_in, ICMP_ECHO, ICMP_PARAM_PROBLEM, ICMP_TIME_EXCEEDED,
    ICMP_UNREACH,
};
use super::ipv4::{ethertype, Frag, Parsed, ETH_P_ARP, ETH_P_IPV4, V4};
use super::{Action, Hdr};
use crate::conntrack::{CtTable, Side, Tuple, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::packet::Packet;
use crate::port::PortId;
use crate::stats::{BatchDrops, DropReason};
use crate::tables::{L3View, NetworkView, Snapshot, Tables};
use crate::wire::mac::Mac;

/// The per-batch context of the gateway stage.
pub struct Ctx<'a> {
    /// Shared tables.
    pub tables: &'a Tables,
    /// Configuration in force for this batch.
    pub snap: &'a Snapshot,
    /// Now, seconds.
    pub now: u32,
    /// Ingress port.
    pub in_port: PortId,
    /// This worker's connection table.
    pub(super) ct: &'a mut CtTable,
    /// Which worker this is, among how many, and whether the batch was
    /// handed over by another (see `steer`).
    pub(super) steer: super::steer::Steer,
    /// The last L2 addressing decision: the frames of a batch mostly share
    /// one, so the route and neighbour lookups are done once.
    pub(super) last_emit: Option<super::route::LastEmit>,
    /// Decapsulation's memory within the batch.
    pub(super) decap: super::vxlan::DecapCache,
}

impl<'a> Ctx<'a> {
    /// A context for one batch.
    pub fn new(
        tables: &'a Tables,
        snap: &'a Snapshot,
        now: u32,
        in_port: PortId,
        ct: &'a mut CtTable,
        steer: super::steer::Steer,
    ) -> Self {
        Self {
            tables,
            snap,
            now,
            in_port,
            ct,
            steer,
            last_emit: None,
            decap: Default::default(),
        }
    }

    /// Counts, into `drops`, the inner sources decapsulation could not
    /// learn in this batch.
    pub fn count_refused_learns(&mut self, drops: &mut BatchDrops) {
        let (limit, full) = std::mem::take(&mut self.decap.refused);
        drops.add_n(DropReason::LearnLimit, limit);
        drops.add_n(DropReason::LearnTableFull, full);
    }
}

/// Marks the frames a container sends to the gateway.
#[inline]
pub fn mark(batch: &[Packet], hdrs: &mut [Hdr], l3: &L3View) {
    for (p, h) in batch.iter().zip(hdrs.iter_mut()) {
        if matches!(h.action, Action::Drop(_)) {
            continue;
        }
        let for_gateway = h.dst == l3.gw_mac
            || (h.dst == Mac::BROADCAST
                && ethertype(p.data()) == ETH_P_ARP
                && arp_request_target(p.data()) == Some(l3.gw_ip));
        if for_gateway {
            h.action = Action::Route;
        }
    }
}

/// Routes the frames [`mark`] picked, from a container port of `net`.
pub fn route_batch(
    ctx: &mut Ctx<'_>,
    net: &NetworkView,
    l3: &L3View,
    batch: &mut [Packet],
    hdrs: &mut [Hdr],
    parsed: &mut Parsed,
) {
    let pre = parsed.batch(batch, ctx.now, |i, _| hdrs[i].action == Action::Route);
    ctx.prefetch(pre, |_| false);
    for (i, (p, h)) in batch.iter_mut().zip(hdrs.iter_mut()).enumerate() {
        if h.action == Action::Route {
            let v = pre.get(i).copied().flatten();
            h.action = from_container(ctx, net, l3, p, h.src, v);
        }
    }
}

fn host_port_or_drop(l3: &L3View) -> Action {
    l3.host_port
        .map_or(Action::Drop(DropReason::NoRoute), Action::Unicast)
}

fn from_container(
    ctx: &mut Ctx<'_>,
    net: &NetworkView,
    l3: &L3View,
    p: &mut Packet,
    src_mac: Mac,
    pre: Option<V4>,
) -> Action {
    match ethertype(p.data()) {
        ETH_P_ARP => {
            if arp_request_target(p.data()) == Some(l3.gw_ip) {
                if arp_reply_in_place(p.data_mut(), l3.gw_mac, l3.gw_ip) {
                    return Action::Unicast(ctx.in_port);
                }
                return Action::Drop(DropReason::BadL3);
            }
            // Replies to the host's own ARP requests.
            return host_port_or_drop(l3);
        }
        ETH_P_IPV4 => {}
        _ => return host_port_or_drop(l3),
    }
    // Parsed (and hashed) with the batch.
    let Some(v) = pre else {
        return Action::Drop(DropReason::BadL3);
    };
    let t = v.tuple;
    if t.dst == l3.gw_ip && t.proto == PROTO_ICMP && v.icmp_type == ICMP_ECHO {
        // The gateway answers whole echo requests; it reassembles nothing.
        if v.frag == Frag::Whole && echo_reply_in_place(p.data_mut(), &v) {
            return Action::Unicast(ctx.in_port);
        }
        return Action::Drop(DropReason::BadL3);
    }
    if t.proto == PROTO_ICMP
        && v.frag == Frag::Whole
        && matches!(
            v.icmp_type,
            ICMP_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
        )
    {
        // About a packet of a tracked flow (e.g. a published UDP port with
        // nothing listening): translated back like the flow's packets.
        if let a @ (Action::Unicast(_) | Action::FloodIn(_)) = icmp_error_in(ctx, p, &v) {
            return a;
        }
    }
    if let Some(hit) = ctx.track(&v) {
        return ctx.translate(p, &v, hit);
    }
    if t.dst == l3.gw_ip || l3.subnet.contains(t.dst) {
        // The host's own services on the gateway address.
        return host_port_or_drop(l3);
    }
    if ctx.snap.network_of_ip(t.dst).is_some() {
        return Action::Drop(DropReason::Isolated);
    }
    let Some(u) = ctx.snap.uplink.as_ref() else {
        return Action::Drop(DropReason::NoRoute);
    };
    if u.is_local(t.dst) {
        if let Some(pb) = ctx.snap.published_at(t.proto, t.dst, t.dport).copied() {
            // Hairpin: to a published port through the host's address. The
            // source becomes the target network's gateway, so the reply comes
            // back through the switch.
            if l3.internal {
                return Action::Drop(DropReason::Internal);
            }
            // The flow lives with the target's worker, which sees its replies.
            if let Some(a) = ctx.steer.to(pb.worker as usize) {
                return a;
            }
            let Some(tnv) = ctx.snap.network(pb.net) else {
                return Action::Drop(DropReason::NoContainer);
            };
            let Some(tl3) = tnv.l3.as_ref().filter(|x| !x.internal) else {
                return Action::Drop(DropReason::Internal);
            };
            let Some(&tmac) = tl3.hosts.get(&pb.ip) else {
                return Action::Drop(DropReason::NoContainer);
            };
            if v.frag == Frag::Rest {
                // Its first fragment made no flow: nothing to follow.
                return Action::Drop(DropReason::BadL3);
            }
            let gw = tl3.gw_ip;
            let Some(nat_port) = ctx.alloc_nat_port(&v, (pb.ip, pb.port), gw, u) else {
                return Action::Drop(DropReason::NatPortsExhausted);
            };
            let reply = Tuple {
                src: pb.ip,
                dst: gw,
                sport: pb.port,
                dport: nat_port,
                proto: t.proto,
            };
            let os = Side::Container {
                net: net.id,
                mac: src_mac,
            };
            let rs = Side::Container {
                net: pb.net,
                mac: tmac,
            };
            return match ctx.create(t, reply, os, rs, v.flags) {
                Ok(hit) => ctx.translate(p, &v, hit),
                Err(r) => Action::Drop(r),
            };
        }
        // The host's own services on its other addresses.
        return host_port_or_drop(l3);
    }
    if l3.internal {
        return Action::Drop(DropReason::Internal);
    }
    let is_tracked = matches!(t.proto, PROTO_TCP | PROTO_UDP)
        || (t.proto == PROTO_ICMP && v.icmp_type == ICMP_ECHO);
    if !is_tracked {
        return Action::Drop(DropReason::BadL3);
    }
    if u.next_hop(t.dst).is_none() {
        return Action::Drop(DropReason::NoRoute);
    }
    if v.frag == Frag::Rest {
        // Its first fragment made no flow: nothing to follow.
        return Action::Drop(DropReason::BadL3);
    }
    // New flow to the outside: SNAT to the uplink's address.
    let snat = u.snat_ip;
    let Some(nat_port) = ctx.alloc_nat_port(&v, (t.dst, t.dport), snat, u) else {
        return Action::Drop(DropReason::NatPortsExhausted);
    };
    let reply = Tuple {
        src: t.dst,
        dst: snat,
        sport: if t.proto == PROTO_ICMP {
            nat_port
        } else {
            t.dport
        },
        dport: nat_port,
        proto: t.proto,
    };
    let os = Side::Container {
        net: net.id,
        mac: src_mac,
    };
    match ctx.create(t, reply, os, Side::Uplink, v.flags) {
        Ok(hit) => ctx.translate(p, &v, hit),
        Err(r) => Action::Drop(r),
    }
}
