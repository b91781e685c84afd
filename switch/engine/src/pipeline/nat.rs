//! NAT with connection tracking: the per-batch conntrack lookups (hashed
//! and prefetched together), the translation of a tracked flow's packets
//! (addresses, ports, checksums patched incrementally), and the creation of
//! flows: SNAT to the uplink, DNAT to a published port, hairpin.
use super::gateway::Ctx;
use super::ipv4::{Frag, ETH_LEN, V4};
use super::route::ttl_dec;
use super::Action;
use crate::conntrack::{
    block, CreateError, CtTable, FlowEntry, PortOwner, Side, State, TcpState, Tuple, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP,
};
use crate::packet::Packet;
use crate::stats::DropReason;
use crate::tables::UplinkView;
use crate::wire::checksum;
use smoltcp::wire::{Icmpv4Packet, Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket};

/// Rewrites addresses and ports from `v`'s tuple to `new`, updating the
/// IPv4, TCP, UDP or ICMP checksums incrementally (RFC 1624); `partial`: the
/// L4 checksum field holds the pseudo-header sum (checksum offload, TSO). A
/// datagram's later fragment has no L4 header: only its addresses change
/// (the first fragment's L4 checksum covers the whole datagram).
pub(super) fn rewrite(f: &mut [u8], v: &V4, new: &Tuple, partial: bool) {
    let (l4, old) = (v.l4 as usize, &v.tuple);
    // Lengths were checked when the frame was parsed (`ipv4::parse_v4`).
    let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH_LEN..]);
    let mut c = ip.checksum();
    if old.src != new.src {
        c = checksum::update32(c, old.src, new.src);
        ip.set_src_addr(Ipv4Address::from(new.src));
    }
    if old.dst != new.dst {
        c = checksum::update32(c, old.dst, new.dst);
        ip.set_dst_addr(Ipv4Address::from(new.dst));
    }
    ip.set_checksum(c);
    if v.frag == Frag::Rest {
        return;
    }
    let l4b = &mut f[l4..];
    match old.proto {
        PROTO_TCP => {
            let mut t = TcpPacket::new_unchecked(l4b);
            t.set_checksum(l4_checksum(t.checksum(), old, new, partial));
            t.set_src_port(new.sport);
            t.set_dst_port(new.dport);
        }
        PROTO_UDP => {
            let mut u = UdpPacket::new_unchecked(l4b);
            let c = u.checksum();
            // 0: the sender computed none (RFC 768); it stays so.
            if c != 0 || partial {
                let mut c = l4_checksum(c, old, new, partial);
                if c == 0 && !partial {
                    c = 0xffff;
                }
                u.set_checksum(c);
            }
            u.set_src_port(new.sport);
            u.set_dst_port(new.dport);
        }
        PROTO_ICMP if old.sport != new.sport => {
            let mut i = Icmpv4Packet::new_unchecked(l4b);
            i.set_checksum(checksum::update16(i.checksum(), old.sport, new.sport));
            i.set_echo_ident(new.sport);
        }
        _ => {}
    }
}

/// A TCP or UDP checksum `c` after the tuple changed from `old` to `new`;
/// `partial`: `c` holds the pseudo-header sum (checksum offload), which
/// covers the addresses but not the ports.
#[inline]
fn l4_checksum(c: u16, old: &Tuple, new: &Tuple, partial: bool) -> u16 {
    if partial {
        let c = checksum::update32_partial(c, old.src, new.src);
        return checksum::update32_partial(c, old.dst, new.dst);
    }
    let mut c = checksum::update32(c, old.src, new.src);
    c = checksum::update32(c, old.dst, new.dst);
    c = checksum::update16(c, old.sport, new.sport);
    checksum::update16(c, old.dport, new.dport)
}

impl Ctx<'_> {
    /// Hashes the tuples of a batch's frames that will be looked up in
    /// conntrack (all but those `skip` names), and starts the memory loads of
    /// those lookups, so that their cache misses overlap instead of being
    /// paid one after another: first every index bucket, then every flow
    /// those buckets point at. (Asking for each flow a fixed number of frames
    /// ahead of its lookup instead measured slower: at 4, 8 and 16 frames
    /// ahead, 100, 92 and 84 ns a packet with a million flows, against 75
    /// for the whole batch at once.)
    pub(super) fn prefetch(&mut self, pre: &mut [Option<V4>], skip: impl Fn(&V4) -> bool + Copy) {
        if !pre.iter().flatten().any(|v| !skip(v)) {
            return;
        }
        let ct = self.ct();
        for v in pre.iter_mut().flatten().filter(|v| !skip(v)) {
            v.hash = ct.hash(&v.tuple);
            ct.prefetch(v.hash);
        }
        for v in pre.iter_mut().flatten().filter(|v| !skip(v)) {
            v.ct_hint = ct.prefetch_flow(v.hash);
        }
    }

    pub(super) fn ct(&mut self) -> &mut CtTable {
        self.ct
    }

    /// A NAT port (source port or ICMP identifier) on `nat_ip` for a new
    /// flow of `v` toward `remote`: one of this worker's block of the SNAT
    /// range (so that replies find the worker by the port), not held for a
    /// flow carried over a restart, and not a published port of that
    /// address (whose packets go to the published container).
    pub(super) fn alloc_nat_port(
        &mut self,
        v: &V4,
        remote: (u32, u16),
        nat_ip: u32,
        u: &UplinkView,
    ) -> Option<u16> {
        let t = &v.tuple;
        // A SYN may reuse a port its destination saw closed (see
        // `CtTable::alloc_port_where`).
        let syn = t.proto == PROTO_TCP && v.flags & 0x12 == 0x02;
        let (snap, ports) = (self.snap, &self.tables.ct.ports);
        let (me, n, range) = (self.steer.me(), self.steer.workers(), u.snat_ports);
        let ok = |p: u16| {
            ports.owner(t.proto, p, range, n) == Some(PortOwner::Worker(me))
                && snap.published_at(t.proto, nat_ip, p).is_none()
        };
        let mine = block(range, me, n);
        self.ct
            .alloc_port_where(t.proto, remote, nat_ip, mine, t.sport, syn, ok)
    }

    /// Translates a packet of a tracked flow and addresses it.
    pub(super) fn translate(&mut self, p: &mut Packet, v: &V4, slot: FlowHit) -> Action {
        let partial = p.meta.offload.csum.is_some() || p.meta.offload.gso.is_some();
        let f = p.data_mut();
        if !ttl_dec(f) {
            return Action::Drop(DropReason::TtlExceeded);
        }
        rewrite(f, v, &slot.new, partial);
        self.emit_to(f, slot.side, slot.new.dst)
    }

    /// Looks `v` up and, on a hit, advances the flow's state.
    pub(super) fn track(&mut self, v: &V4) -> Option<FlowHit> {
        let now = self.now;
        let (flow, dir) = self.ct().lookup_hinted(&v.tuple, v.hash, v.ct_hint)?;
        flow.see(dir, v.flags, now);
        Some(FlowHit {
            new: flow.translated(dir),
            side: flow.out_side(dir),
        })
    }

    pub(super) fn create(
        &mut self,
        orig: Tuple,
        reply: Tuple,
        os: Side,
        rs: Side,
        flags: u8,
    ) -> FlowOrDrop {
        let state = match orig.proto {
            PROTO_TCP if flags & 0x02 != 0 => State::Tcp(TcpState::SynSent),
            PROTO_TCP => State::Tcp(TcpState::Established),
            PROTO_UDP => State::Udp { replied: false },
            _ => State::Icmp,
        };
        let now = self.now;
        let shared = &self.tables.ct;
        // Room among all workers' flows first (counted when refused).
        if !shared.reserve() {
            return Err(DropReason::CtFull);
        }
        match self.ct.create(orig, reply, os, rs, state, now) {
            Ok(f) => {
                f.see(crate::conntrack::Dir::Orig, flags, now);
                shared
                    .stats
                    .created
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let hit = hit_of(f);
                Ok(hit)
            }
            Err(CreateError::Full) => {
                shared.release(1);
                shared
                    .stats
                    .full
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(DropReason::CtFull)
            }
            Err(CreateError::PortsExhausted) => {
                shared.release(1);
                Err(DropReason::NatPortsExhausted)
            }
        }
    }
}

pub(super) type FlowOrDrop = Result<FlowHit, DropReason>;

#[derive(Debug, Clone, Copy)]
pub(super) struct FlowHit {
    new: Tuple,
    side: Side,
}

fn hit_of(f: &FlowEntry) -> FlowHit {
    FlowHit {
        new: f.translated(crate::conntrack::Dir::Orig),
        side: f.out_side(crate::conntrack::Dir::Orig),
    }
}
