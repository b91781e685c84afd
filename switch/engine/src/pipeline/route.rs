//! Routing and neighbours: the TTL, and the L2 addressing of a routed frame
//! toward a container (its MAC, learned port or flood) or the uplink (the
//! next hop's MAC from the neighbour table), with the batch's last decision
//! kept for the frames behind it.
use super::gateway::Ctx;
use super::ipv4::ETH_LEN;
use super::Action;
use crate::conntrack::Side;
use crate::fdb::Fdb;
use crate::stats::DropReason;
use crate::tables::{NetworkView, Tables, UplinkView};
use crate::wire::checksum;
use crate::wire::mac::Mac;
use smoltcp::wire::Ipv4Packet;

/// Decrements the TTL of a routed packet; `false` when it ran out.
pub(super) fn ttl_dec(f: &mut [u8]) -> bool {
    let ttl = f[ETH_LEN + 8];
    if ttl <= 1 {
        return false;
    }
    let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH_LEN..]);
    let old = u16::from_be_bytes([ttl, ip.next_header().into()]);
    ip.set_hop_limit(ttl - 1);
    let new = u16::from_be_bytes([ttl - 1, ip.next_header().into()]);
    let c = checksum::update16(ip.checksum(), old, new);
    ip.set_checksum(c);
    true
}

/// An L2 addressing decision kept for the next frames of a batch (see
/// [`Ctx::emit_to`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct LastEmit {
    side: Side,
    /// The destination it was made for.
    dst: u32,
    /// What the L2 header depends on: the next hop (uplink), 0 (container).
    l2_key: u32,
    /// Destination and source MAC.
    macs: [u8; 12],
    action: Action,
}

impl Ctx<'_> {
    /// Addresses a frame to `side` at L2 and picks its output.
    pub(super) fn emit_to(&mut self, f: &mut [u8], side: Side, dst_ip: u32) -> Action {
        // The L2 header depends on the next hop, not on the destination: a
        // container's is its own MAC, the uplink's the next hop's. Keyed so,
        // the batch's frames to many destinations behind one gateway share
        // one neighbour lookup; a frame to the last frame's destination
        // needs not even the route lookup.
        if let Some(e) = self.last_emit.as_mut() {
            if e.side == side && e.dst == dst_ip {
                f[0..12].copy_from_slice(&e.macs);
                return e.action;
            }
        }
        let l2_key = match side {
            Side::Uplink => self.snap.uplink.as_ref().and_then(|u| u.next_hop(dst_ip)),
            Side::Container { .. } => Some(0),
        };
        if let (Some(e), Some(k)) = (self.last_emit.as_mut(), l2_key) {
            if e.side == side && e.l2_key == k {
                e.dst = dst_ip;
                f[0..12].copy_from_slice(&e.macs);
                return e.action;
            }
        }
        let action = self.emit_uncached(f, side, dst_ip);
        if let (Action::Unicast(_), Some(l2_key)) = (action, l2_key) {
            let mut macs = [0u8; 12];
            macs.copy_from_slice(&f[0..12]);
            self.last_emit = Some(LastEmit {
                side,
                dst: dst_ip,
                l2_key,
                macs,
                action,
            });
        }
        action
    }

    fn emit_uncached(&mut self, f: &mut [u8], side: Side, dst_ip: u32) -> Action {
        match side {
            Side::Uplink => {
                let Some(u) = self.snap.uplink.as_ref() else {
                    return Action::Drop(DropReason::NoRoute);
                };
                to_uplink(self.tables, u, f, dst_ip)
            }
            Side::Container { net, mac } => {
                let Some(nv) = self.snap.network(net) else {
                    return Action::Drop(DropReason::NoNetwork);
                };
                let Some(l3) = nv.l3.as_ref() else {
                    return Action::Drop(DropReason::NoNetwork);
                };
                f[0..6].copy_from_slice(&mac.bytes());
                f[6..12].copy_from_slice(&l3.gw_mac.bytes());
                container_port(&self.tables.fdb, nv, mac)
            }
        }
    }
}

/// Output port for a container's MAC in `nv`: learned port, else flood.
fn container_port(fdb: &Fdb, nv: &NetworkView, mac: Mac) -> Action {
    match fdb.lookup(nv.id, mac) {
        Some(p) => Action::Unicast(p),
        None => Action::FloodIn(nv.id),
    }
}

/// Addresses `f` to the next hop of `dst_ip` on the uplink.
fn to_uplink(tables: &Tables, u: &UplinkView, f: &mut [u8], dst_ip: u32) -> Action {
    let mac = match tables.next_hop_mac(u, dst_ip) {
        Ok(m) => m,
        Err(r) => return Action::Drop(r),
    };
    f[0..6].copy_from_slice(&mac.bytes());
    f[6..12].copy_from_slice(&u.mac.bytes());
    Action::Unicast(u.port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;

    fn ipv4_frame(ttl: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let mut ip = [
            0x45, 0, 0, 20, 0, 0, 0x40, 0, ttl, 6, 0, 0, 10, 0, 0, 2, 8, 8, 8, 8,
        ];
        let c = checksum::finish(0, &ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f
    }

    /// The TTL goes down by one with the header checksum patched to what a
    /// full computation gives; a packet that would leave with TTL 0 is not
    /// routed.
    #[test]
    fn ttl_decrements_with_a_valid_checksum() {
        for ttl in [2u8, 64, 255] {
            let mut f = ipv4_frame(ttl);
            assert!(ttl_dec(&mut f));
            assert_eq!(f[22], ttl - 1);
            assert_eq!(checksum::finish(0, &f[14..34]), 0, "TTL {ttl}");
        }
        for ttl in [0u8, 1] {
            let mut f = ipv4_frame(ttl);
            assert!(!ttl_dec(&mut f));
            assert_eq!(f[22], ttl, "left as it was");
        }
    }

    /// A routed frame toward the uplink takes the next hop's MAC and the
    /// uplink's; one whose next hop is unknown is dropped (and asked for).
    #[test]
    fn to_uplink_addresses_the_next_hop() {
        let u = UplinkView {
            port: 7,
            mac: Mac(0x0200_0000_00aa),
            snat_ip: 0xc0a8_0001,
            snat_ip_is_local: true,
            local_ips: vec![0xc0a8_0001],
            routes: vec![crate::tables::Route {
                dst: crate::tables::Prefix { addr: 0, len: 0 },
                via: Some(0xc0a8_00fe),
            }],
            neigh: Default::default(),
            snat_ports: (61000, 65535),
            vtep_ip: 0xc0a8_0001,
            mtu: 1500,
        };
        let t = Tables::new(64);
        let mut f = ipv4_frame(64);
        assert_eq!(
            to_uplink(&t, &u, &mut f, 0x0808_0808),
            Action::Drop(DropReason::NeighMiss)
        );
        let mut u = u;
        u.neigh.insert(0xc0a8_00fe, Mac(0x0200_0000_00fe));
        assert_eq!(to_uplink(&t, &u, &mut f, 0x0808_0808), Action::Unicast(7));
        assert_eq!(&f[0..6], &Mac(0x0200_0000_00fe).bytes());
        assert_eq!(&f[6..12], &Mac(0x0200_0000_00aa).bytes());
    }
}
