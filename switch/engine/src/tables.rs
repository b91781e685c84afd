//! Tables the control thread writes and the workers read.
//!
//! Configuration (networks, ports and which worker owns each) is an immutable
//! [`Snapshot`]; the control thread builds a new one and swaps it in
//! ([`arc_swap`]), workers load it once per loop iteration and never wait.
//! The FDB is a lock-free table of its own ([`crate::fdb`]), written by
//! workers (learning) and by the control thread (static entries, aging).
use crate::conntrack::Conntrack;
use crate::fdb::{Fdb, NetId};
use crate::port::{PortCaps, PortId};
use crate::stats::PortStats;
use crate::wire::mac::Mac;
use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use std::collections::HashMap;
use std::sync::Arc;

/// A hasher for small integer keys (addresses): murmur3's fmix64, far
/// cheaper per lookup than the default SipHash, and the keys are not chosen
/// by an attacker (they come from the control plane's tables).
#[derive(Debug, Default, Clone, Copy)]
pub struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    #[inline]
    fn finish(&self) -> u64 {
        crate::hash::mix_half(self.0)
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ *b as u64;
        }
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0 << 32) ^ v as u64;
    }
    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.0 = (self.0 << 16) ^ v as u64;
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.0 = (self.0 << 8) ^ v as u64;
    }
}

/// A map keyed by addresses or ports, with [`IntHasher`].
pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IntHasher>>;

/// Ports a switch can hold.
pub const MAX_PORTS: usize = 4096;

/// A network as the data plane sees it.
#[derive(Debug, Clone)]
pub struct NetworkView {
    /// Index.
    pub id: NetId,
    /// Name, for logs.
    pub name: String,
    /// Ports of the network: the flood list.
    pub ports: Vec<PortId>,
    /// Gateway and isolation settings, when the network has a subnet.
    pub l3: Option<L3View>,
    /// VXLAN settings, for an overlay network.
    pub overlay: Option<OverlayView>,
}

/// An overlay (VXLAN) network's side of the tables.
#[derive(Debug, Clone)]
pub struct OverlayView {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// Peer VTEPs as port numbers (`vxlan::REMOTE_BASE + index`): the
    /// head-end replication list, and the only VTEPs accepted.
    pub peers: Vec<PortId>,
    /// Learn inner source MACs from decapsulated frames.
    pub learning: bool,
    /// Outer TTL.
    pub ttl: u8,
    /// Outer don't-fragment bit.
    pub df: bool,
    /// Known IP → MAC bindings of remote containers: ARP requests for them
    /// are answered locally instead of being flooded to every host.
    pub arp: FastMap<u32, Mac>,
}

/// An IPv4 prefix (host byte order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prefix {
    /// Network address.
    pub addr: u32,
    /// Prefix length.
    pub len: u8,
}

impl Prefix {
    /// The netmask.
    #[inline]
    pub fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len.min(32))
        }
    }

    /// Whether `ip` is inside.
    #[inline]
    pub fn contains(&self, ip: u32) -> bool {
        (ip ^ self.addr) & self.mask() == 0
    }
}

/// A network's L3 side: the switch is its gateway.
#[derive(Debug, Clone)]
pub struct L3View {
    /// The subnet.
    pub subnet: Prefix,
    /// Gateway address (answered by the switch: ARP, ICMP echo).
    pub gw_ip: u32,
    /// Gateway MAC (also the MAC of the host's interface on the network).
    pub gw_mac: Mac,
    /// `--internal`: no egress, no published ports.
    pub internal: bool,
    /// `--no-icc`: containers cannot reach each other.
    pub no_icc: bool,
    /// The host's own interface on the network (TAP), if any.
    pub host_port: Option<PortId>,
    /// Known container addresses: IPv4 → MAC (from attach).
    pub hosts: FastMap<u32, Mac>,
}

/// A route out of the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub dst: Prefix,
    /// Next hop; `None` for directly connected destinations.
    pub via: Option<u32>,
}

/// The uplink: the host's external interface, shared with the host kernel.
#[derive(Debug, Clone)]
pub struct UplinkView {
    /// Port id of the uplink.
    pub port: PortId,
    /// The interface's MAC (the switch sends with it).
    pub mac: Mac,
    /// Source address of translated egress flows.
    pub snat_ip: u32,
    /// Whether `snat_ip` is one of the interface's own addresses (then the
    /// kernel answers ARP for it).
    pub snat_ip_is_local: bool,
    /// The host's addresses: published ports are reached on them, and
    /// containers reach the host's services through them.
    pub local_ips: Vec<u32>,
    /// Routes via the uplink, longest prefix first.
    pub routes: Vec<Route>,
    /// Next-hop MACs (the kernel's neighbour table).
    pub neigh: FastMap<u32, Mac>,
    /// Source ports (and ICMP identifiers) for SNAT.
    pub snat_ports: (u16, u16),
    /// Local VTEP address (overlay networks).
    pub vtep_ip: u32,
    /// The uplink's MTU: the largest outer IPv4 packet.
    pub mtu: u32,
}

impl UplinkView {
    /// The next hop for `dst`, longest prefix match.
    #[inline]
    pub fn next_hop(&self, dst: u32) -> Option<u32> {
        self.routes
            .iter()
            .find(|r| r.dst.contains(dst))
            .map(|r| r.via.unwrap_or(dst))
    }

    /// Whether `ip` is one of the host's addresses.
    #[inline]
    pub fn is_local(&self, ip: u32) -> bool {
        ip == self.snat_ip || self.local_ips.contains(&ip)
    }
}

/// A published port: host port → container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Host address it listens on; `None`: every host address.
    pub host_ip: Option<u32>,
    /// Container network.
    pub net: NetId,
    /// Container address.
    pub ip: u32,
    /// Container port.
    pub port: u16,
    /// The worker of the container's switch port: its connections live
    /// there (see `pipeline::steer`).
    pub worker: u16,
}

/// A port as the data plane sees it.
#[derive(Debug, Clone)]
pub struct PortView {
    /// Index.
    pub id: PortId,
    /// Name, for logs.
    pub name: String,
    /// The network the port belongs to.
    pub net: Option<NetId>,
    /// Worker that owns (polls and transmits on) the port.
    pub worker: usize,
    /// Transmit offloads.
    pub caps: PortCaps,
    /// Counters.
    pub stats: Arc<PortStats>,
}

/// One immutable version of the configuration.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Bumped on every publish.
    pub generation: u64,
    /// Ports by [`PortId`].
    pub ports: Vec<Option<PortView>>,
    /// Networks by [`NetId`].
    pub networks: Vec<Option<NetworkView>>,
    /// The uplink, if one is declared.
    pub uplink: Option<UplinkView>,
    /// Published ports by (IP protocol, host port).
    pub published: FastMap<(u8, u16), Published>,
    /// Remote VTEP addresses; VTEP `i` is port `vxlan::REMOTE_BASE + i`.
    pub vteps: Vec<u32>,
    /// VTEP address → index into `vteps`.
    pub vtep_index: FastMap<u32, u16>,
    /// VNI → overlay network.
    pub vni_nets: FastMap<u32, NetId>,
}

impl Snapshot {
    /// The port, if it exists.
    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PortView> {
        self.ports.get(id as usize).and_then(Option::as_ref)
    }

    /// The network, if it exists.
    #[inline]
    pub fn network(&self, id: NetId) -> Option<&NetworkView> {
        self.networks.get(id as usize).and_then(Option::as_ref)
    }

    /// The network whose subnet holds `ip`.
    #[inline]
    pub fn network_of_ip(&self, ip: u32) -> Option<&NetworkView> {
        self.networks
            .iter()
            .flatten()
            .find(|n| n.l3.as_ref().is_some_and(|l| l.subnet.contains(ip)))
    }

    /// The published port for `proto`/`port` on host address `ip`.
    #[inline]
    pub fn published_at(&self, proto: u8, ip: u32, port: u16) -> Option<&Published> {
        self.published
            .get(&(proto, port))
            .filter(|p| p.host_ip.is_none_or(|h| h == ip))
    }
}

/// Everything the workers share.
#[derive(Debug)]
pub struct Tables {
    /// The forwarding database.
    pub fdb: Fdb,
    /// The current configuration.
    pub snap: ArcSwap<Snapshot>,
    /// Connection tracking and NAT.
    pub ct: Conntrack,
    /// Next hops a worker found no MAC for; the control thread asks the
    /// kernel to resolve them.
    pub neigh_wanted: ArrayQueue<u32>,
}

impl Tables {
    /// Empty tables with an FDB of `fdb_slots` slots.
    pub fn new(fdb_slots: usize) -> Self {
        Self::with_conntrack(fdb_slots, 262_144)
    }

    /// Empty tables with an FDB of `fdb_slots` slots and room for
    /// `max_flows` tracked connections.
    pub fn with_conntrack(fdb_slots: usize, max_flows: usize) -> Self {
        Self::with_tracker(fdb_slots, Conntrack::new(max_flows))
    }

    /// Empty tables with an FDB of `fdb_slots` slots and the connection
    /// tracker `ct`.
    pub fn with_tracker(fdb_slots: usize, ct: Conntrack) -> Self {
        Self {
            fdb: Fdb::new(fdb_slots),
            snap: ArcSwap::from_pointee(Snapshot::default()),
            ct,
            neigh_wanted: ArrayQueue::new(256),
        }
    }

    /// The MAC of the next hop toward `dst` on the uplink. A next hop whose
    /// MAC is not known yet is queued for the control thread to have the
    /// kernel resolve it.
    #[inline]
    pub fn next_hop_mac(&self, u: &UplinkView, dst: u32) -> Result<Mac, crate::stats::DropReason> {
        let nh = u.next_hop(dst).ok_or(crate::stats::DropReason::NoRoute)?;
        match u.neigh.get(&nh) {
            Some(m) => Ok(*m),
            None => {
                let _ = self.neigh_wanted.push(nh);
                Err(crate::stats::DropReason::NeighMiss)
            }
        }
    }

    /// Publishes a new configuration (the caller is the only writer).
    pub fn publish(&self, mut s: Snapshot) {
        s.generation = self.snap.load().generation + 1;
        self.snap.store(Arc::new(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::DropReason;

    fn p(addr: u32, len: u8) -> Prefix {
        Prefix { addr, len }
    }

    fn uplink() -> UplinkView {
        UplinkView {
            port: 9,
            mac: Mac(0x0200_0000_00aa),
            snat_ip: 0xc0a8_0001,
            snat_ip_is_local: false,
            local_ips: vec![0xc0a8_0002],
            // Longest prefix first, as the control thread orders them.
            routes: vec![
                Route {
                    dst: p(0x0a0a_0a00, 24),
                    via: Some(0xc0a8_00fd),
                },
                Route {
                    dst: p(0xc0a8_0000, 24),
                    via: None,
                },
                Route {
                    dst: p(0, 0),
                    via: Some(0xc0a8_00fe),
                },
            ],
            neigh: [(0xc0a8_00fe, Mac(0x0200_0000_00fe))].into_iter().collect(),
            snat_ports: (61000, 65535),
            vtep_ip: 0xc0a8_0001,
            mtu: 1500,
        }
    }

    #[test]
    fn prefixes_contain_what_they_mask() {
        assert!(p(0x0a00_0000, 8).contains(0x0aff_ffff));
        assert!(!p(0x0a00_0000, 8).contains(0x0b00_0000));
        assert!(p(0, 0).contains(0xffff_ffff), "the default route holds all");
        assert!(p(0x0a00_0001, 32).contains(0x0a00_0001));
        assert!(!p(0x0a00_0001, 32).contains(0x0a00_0002));
        assert_eq!(p(0, 0).mask(), 0);
        assert_eq!(p(0, 24).mask(), 0xffff_ff00);
    }

    /// Routes: the first (longest) match, the destination itself when
    /// directly connected; local addresses are the SNAT one and the
    /// interface's; a next hop's MAC, or a request to resolve it.
    #[test]
    fn routes_next_hops_and_neighbours() {
        let u = uplink();
        assert_eq!(u.next_hop(0x0a0a_0a05), Some(0xc0a8_00fd));
        assert_eq!(u.next_hop(0xc0a8_0007), Some(0xc0a8_0007));
        assert_eq!(u.next_hop(0x0808_0808), Some(0xc0a8_00fe));
        let mut none = uplink();
        none.routes.clear();
        assert_eq!(none.next_hop(0x0808_0808), None);
        assert!(u.is_local(0xc0a8_0001) && u.is_local(0xc0a8_0002));
        assert!(!u.is_local(0xc0a8_0003));
        let t = Tables::new(64);
        assert_eq!(t.next_hop_mac(&u, 0x0808_0808), Ok(Mac(0x0200_0000_00fe)));
        assert_eq!(t.next_hop_mac(&u, 0x0a0a_0a05), Err(DropReason::NeighMiss));
        assert_eq!(t.neigh_wanted.pop(), Some(0xc0a8_00fd), "asked to resolve");
        assert_eq!(t.next_hop_mac(&none, 0x0808_0808), Err(DropReason::NoRoute));
    }

    /// A published port on every address, or on one; the network whose
    /// subnet holds an address; each publish bumps the generation.
    #[test]
    fn snapshot_lookups_and_generations() {
        let l3 = |addr| L3View {
            subnet: p(addr, 24),
            gw_ip: addr + 1,
            gw_mac: Mac(0x0200_0000_0001),
            internal: false,
            no_icc: false,
            host_port: None,
            hosts: Default::default(),
        };
        let net = |id, addr| NetworkView {
            id,
            name: format!("n{id}"),
            ports: vec![],
            l3: Some(l3(addr)),
            overlay: None,
        };
        let s = Snapshot {
            networks: vec![Some(net(0, 0x0a01_0000)), None, Some(net(2, 0x0a02_0000))],
            published: [
                (
                    (6, 80),
                    Published {
                        host_ip: None,
                        net: 0,
                        ip: 0x0a01_0002,
                        port: 8080,
                        worker: 0,
                    },
                ),
                (
                    (17, 53),
                    Published {
                        host_ip: Some(0xc0a8_0001),
                        net: 2,
                        ip: 0x0a02_0002,
                        port: 53,
                        worker: 0,
                    },
                ),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        assert_eq!(s.network_of_ip(0x0a02_0009).map(|n| n.id), Some(2));
        assert!(s.network_of_ip(0x0a03_0009).is_none());
        assert!(s.network(1).is_none() && s.network(7).is_none());
        assert!(s.published_at(6, 0x0102_0304, 80).is_some());
        assert!(s.published_at(17, 0xc0a8_0001, 53).is_some());
        assert!(
            s.published_at(17, 0xc0a8_0002, 53).is_none(),
            "another address"
        );
        assert!(
            s.published_at(6, 0xc0a8_0001, 53).is_none(),
            "another protocol"
        );
        let t = Tables::new(64);
        let g0 = t.snap.load().generation;
        t.publish(s.clone());
        t.publish(s);
        assert_eq!(t.snap.load().generation, g0 + 2);
    }
}
