//! Attachments: a container's interface (veth or TAP) made in its
//! namespace, its address from the network's pool, and its removal.
use super::*;
use crate::api::Attached;
use crate::store::SavedAttachment;

/// Where an attachment's interface goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Placement<'a> {
    /// Made inside namespace `ns` as `ifname`, with its address and
    /// default route (`vswitch attach`, CNI).
    In {
        /// Namespace name or path.
        ns: &'a str,
        /// Interface name inside it.
        ifname: &'a str,
    },
    /// Left in the switch's namespace for the runtime to move and
    /// configure (Docker's `Join`); `owner` keys it.
    Handoff {
        /// The runtime's id for it.
        owner: &'a str,
    },
}

impl State {
    pub(super) fn attach(
        &mut self,
        network: &str,
        place: Placement<'_>,
        kind: AttachKind,
        (ip, mac): (Option<&str>, Option<&str>),
        (owner, aliases): (Option<String>, Vec<String>),
    ) -> Result<Attached, CmdError> {
        let Some(net) = self.networks.get(network).cloned() else {
            return err(format!(
                "no network {network:?} (create it with `vswitch network create {network}`)"
            ));
        };
        self.check_placement(place)?;
        // A user's names must be right; a runtime's start never fails for one.
        let aliases = if owner.is_some() {
            dns::runtime_names(aliases)
        } else {
            dns::check_names(&aliases)?;
            aliases
        };
        let mut ipam: Option<Ipv4Addr> = None;
        let addrs = match ip {
            None if net.l3.is_some() => {
                let Some(l3) = net.l3.as_ref() else {
                    return err("unreachable");
                };
                // Addresses other hosts' containers hold on the same
                // overlay network are skipped too.
                let remote = self.synced_ips(net.id);
                let free = l3
                    .subnet
                    .iter()
                    .skip(1)
                    .take_while(|a| *a != l3.subnet.broadcast())
                    .find(|a| *a != l3.gw && !l3.hosts.contains_key(a) && !remote.contains(a));
                let Some(a) = free else {
                    return err(format!(
                        "network {network:?} has no free address left in {}",
                        l3.subnet
                    ));
                };
                ipam = Some(a);
                vec![(std::net::IpAddr::V4(a), l3.subnet.prefix())]
            }
            Some(s) => {
                let n: ipnetwork::IpNetwork = s.parse().map_err(|e| {
                    CmdError(format!(
                        "--ip {s:?} is not an address like 10.1.0.2/24: {e}"
                    ))
                })?;
                let prefix = if s.contains('/') {
                    n.prefix()
                } else {
                    net.cfg
                        .subnet
                        .as_deref()
                        .and_then(|s| s.parse::<ipnetwork::IpNetwork>().ok())
                        .map_or(if n.is_ipv4() { 32 } else { 128 }, |s| s.prefix())
                };
                if let (Some(l3), std::net::IpAddr::V4(v4)) = (net.l3.as_ref(), n.ip()) {
                    if !l3.subnet.contains(v4)
                        || v4 == l3.gw
                        || v4 == l3.subnet.network()
                        || v4 == l3.subnet.broadcast()
                    {
                        return err(format!(
                            "--ip {v4} is not a usable container address of {} (gateway {})",
                            l3.subnet, l3.gw
                        ));
                    }
                    if let Some((_, at)) = l3.hosts.get(&v4) {
                        return err(format!("--ip {v4} is already used by {at}"));
                    }
                    ipam = Some(v4);
                }
                vec![(n.ip(), prefix)]
            }
            None => Vec::new(),
        };
        let mac: Mac = match mac {
            Some(m) => m
                .parse()
                .map_err(|e: vswitch_engine::wire::mac::MacParseError| CmdError(e.to_string()))?,
            None => match place {
                Placement::In { ns, ifname } => derived_mac(network, ns, ifname),
                Placement::Handoff { owner } => derived_mac(network, "", owner),
            },
        };
        if mac.is_multicast() || mac.is_zero() {
            return err(format!("--mac {mac} must be a unicast address"));
        }
        // Names free in the switch's namespace (a restarted switch's PID can
        // meet the names an earlier one chose).
        let mut seq = self.next_port;
        let (host, tmp) = loop {
            let h = format!("vsh{seq}x{}", std::process::id() % 1000);
            let t = format!("vsc{seq}x{}", std::process::id() % 1000);
            if !self.host.link_exists(&h) && !self.host.link_exists(&t) {
                break (h, t);
            }
            seq = seq.wrapping_add(1);
        };
        let (netns, ifname, handoff) = match place {
            Placement::In { ns, ifname } => (ns.to_string(), ifname.to_string(), false),
            Placement::Handoff { .. } => (String::new(), tmp.clone(), true),
        };
        let attach = Attachment {
            kind,
            owner,
            aliases,
            netns,
            ifname,
            ip: ipam,
            mac,
            handoff,
        };
        let label = attach.label();
        let gw = net.l3.as_ref().map(|l| l.gw);
        let result = self.make_interface(network, place, attach, (&host, &tmp), addrs);
        match result {
            Ok(id) => {
                if let (Some(ip), Some(l3)) = (
                    ipam,
                    self.networks.get_mut(network).and_then(|n| n.l3.as_mut()),
                ) {
                    l3.hosts.insert(ip, (mac, label));
                    self.publish();
                }
                if let Placement::In { ns, .. } = place {
                    self.container_resolv_conf(ns);
                }
                Ok(Attached {
                    port: id,
                    mac: mac.to_string(),
                    ip: ipam.map(|i| i.to_string()),
                    gateway: gw.map(|g| g.to_string()),
                    handoff: handoff.then_some(tmp),
                })
            }
            Err(e) => {
                // Leave nothing half-made behind.
                let made: Vec<PortId> = self
                    .ports
                    .values()
                    .filter(|p| p.iface == host || p.iface == tmp)
                    .map(|p| p.id)
                    .collect();
                for id in made {
                    self.remove_port(id);
                }
                let _ = self.host.delete_link(None, &host);
                let _ = self.host.delete_link(None, &tmp);
                if let Placement::In { ns, .. } = place {
                    let _ = self.host.delete_link(Some(ns), &tmp);
                }
                Err(e)
            }
        }
    }

    /// Refuses a placement that cannot be made: a namespace that is not
    /// one, a bad name, an interface or owner already attached.
    fn check_placement(&self, place: Placement<'_>) -> Result<(), CmdError> {
        let attachments = || self.ports.values().filter_map(|p| p.attach.as_ref());
        match place {
            Placement::In { ns, ifname } => {
                if !self.host.namespace_exists(ns) {
                    if ns.starts_with('/') {
                        return err(format!(
                            "{ns:?} does not exist or is not a network namespace; give a name from `ip netns` or a path such as /run/netns/NAME or /proc/PID/ns/net"
                        ));
                    }
                    return Err(netns::NetnsError::NoNamespace(ns.to_string()).into());
                }
                if ifname.is_empty() || ifname.len() > 15 {
                    return err(format!("interface name {ifname:?} must be 1-15 characters"));
                }
                if attachments().any(|a| a.netns == ns && a.ifname == ifname) {
                    return err(format!("{ns}:{ifname} is already attached"));
                }
            }
            Placement::Handoff { owner } => {
                if owner.is_empty() {
                    return err("a handed-off interface needs an owner (the runtime's id for it)");
                }
                if attachments().any(|a| a.owner.as_deref() == Some(owner)) {
                    return err(format!("{owner} has an interface already"));
                }
            }
        }
        Ok(())
    }

    /// Makes the interface (`host`: a veth's switch end; `tmp`: the
    /// container's end, or the TAP) and its port; inside the container
    /// for [`Placement::In`], in the switch's namespace for a handoff.
    fn make_interface(
        &mut self,
        network: &str,
        place: Placement<'_>,
        attach: Attachment,
        (host, tmp): (&str, &str),
        addrs: Vec<(std::net::IpAddr, u8)>,
    ) -> Result<PortId, CmdError> {
        let Some(net) = self.networks.get(network) else {
            return err(format!("no network {network:?}"));
        };
        let gw = net.l3.as_ref().map(|l| l.gw);
        let mtu = net.cfg.mtu;
        let gso = interface_gso(&net.cfg);
        let mac = attach.mac.bytes();
        let kind = attach.kind;
        // Inside the container: its name, address and route; a handoff
        // only gets its MAC, MTU and GSO size (the runtime does the rest).
        let finish = |host: &dyn Host| -> Result<(), CmdError> {
            match place {
                Placement::In { ns, ifname } => {
                    host.configure(Some(ns), tmp, ifname, mac, mtu, gso, addrs)?;
                    if let Some(g) = gw {
                        host.add_default_route(ns, g)?;
                    }
                }
                Placement::Handoff { .. } => {
                    host.configure(None, tmp, tmp, mac, mtu, gso, Vec::new())?;
                }
            }
            Ok(())
        };
        let ns = match place {
            Placement::In { ns, .. } => Some(ns),
            Placement::Handoff { .. } => None,
        };
        match kind {
            AttachKind::Veth | AttachKind::VethXdp => {
                self.host.create_veth(host, tmp, ns, mtu)?;
                finish(self.host.as_ref())?;
                if kind == AttachKind::VethXdp {
                    let inner = match place {
                        Placement::In { ifname, .. } => ifname,
                        Placement::Handoff { .. } => tmp,
                    };
                    self.host.tx_csum_off(ns, inner)?;
                }
                self.port_add(network, host, kind.port_kind(), None, Some(attach))
            }
            AttachKind::Tap => {
                // Persistent: the container keeps it if the switch dies.
                let opened = self.open_port(PortKind::Tap, tmp, true)?;
                let id = self.port_add_with(NewPort {
                    network,
                    iface: tmp,
                    kind: PortKind::Tap,
                    worker: None,
                    attach: Some(attach),
                    id: None,
                    opened: Some(opened),
                })?;
                if let Some(ns) = ns {
                    self.host.move_to_ns(tmp, ns)?;
                }
                finish(self.host.as_ref())?;
                Ok(id)
            }
        }
    }

    /// A runtime put handed-off interface of `owner` into namespace `ns`.
    pub(super) fn attach_joined(&mut self, owner: &str, ns: &str) -> Result<(), CmdError> {
        let Some(p) = self.ports.values_mut().find(|p| {
            p.attach
                .as_ref()
                .is_some_and(|a| a.handoff && a.owner.as_deref() == Some(owner))
        }) else {
            return err(format!("{owner} has no handed-off interface"));
        };
        let net = p.net.clone();
        let Some(a) = p.attach.as_mut() else {
            return err("unreachable");
        };
        a.netns = ns.to_string();
        let (ip, label) = (a.ip, a.label());
        if let (Some(ip), Some(l3)) = (ip, self.networks.get_mut(&net).and_then(|n| n.l3.as_mut()))
        {
            if let Some(h) = l3.hosts.get_mut(&ip) {
                h.1 = label;
            }
        }
        Ok(())
    }

    /// Removes the attachments `owner` made, wherever they are.
    pub(super) fn detach_owner(&mut self, owner: &str) -> Result<(), CmdError> {
        let ids: Vec<PortId> = self
            .ports
            .values()
            .filter(|p| {
                p.attach
                    .as_ref()
                    .is_some_and(|a| a.owner.as_deref() == Some(owner))
            })
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.detach_port(id)?;
        }
        Ok(())
    }

    pub(super) fn detach(&mut self, network: &str, ns: &str, ifname: &str) -> Result<(), CmdError> {
        let Some(id) = self
            .ports
            .values()
            .find(|p| {
                p.net == network
                    && p.attach
                        .as_ref()
                        .is_some_and(|a| a.netns == ns && a.ifname == ifname)
            })
            .map(|p| p.id)
        else {
            return err(format!(
                "{ns}:{ifname} is not attached to network {network:?} (see `vswitch port ls`)"
            ));
        };
        self.detach_port(id)
    }

    /// Removes attached port `id`: its address, its published ports, its
    /// flows and its interface.
    fn detach_port(&mut self, id: PortId) -> Result<(), CmdError> {
        let Some(rec) = self.remove_port(id) else {
            return Ok(());
        };
        let network = rec.net.as_str();
        let Some(a) = rec.attach.as_ref() else {
            return Ok(());
        };
        let ip = a.ip;
        let net_id = self.networks.get(network).map(|n| n.id);
        // Its published ports go with it (as a container's do in Docker).
        let gone: Vec<(Proto, u16)> = self
            .published
            .iter()
            .filter(|(_, p)| p.network == network && Some(p.ip) == ip)
            .map(|(k, _)| *k)
            .collect();
        if !gone.is_empty() {
            for k in &gone {
                self.published.remove(k);
            }
            self.publish();
            let _ = self.reapply_guard();
        }
        if let (Some(ip), Some(l3)) = (
            ip,
            self.networks.get_mut(network).and_then(|n| n.l3.as_mut()),
        ) {
            if let Some((mac, _)) = l3.hosts.remove(&ip) {
                if let Some(nid) = net_id {
                    self.workers
                        .remove_flows(move |f| touches_container(f, nid, mac));
                }
            }
            self.publish();
        }
        self.container_resolv_conf(&a.netns);
        match rec.kind {
            // Deleting the host end deletes its peer in the container too.
            PortKind::Afxdp | PortKind::Packet => {
                self.host.delete_link(None, &rec.iface)?;
            }
            // Persistent: closing it left it where it is: in the container,
            // or a handoff's back here or still in the runtime's namespace.
            PortKind::Tap if a.handoff => {
                if !self.host.delete_link(None, &a.ifname)? && !a.netns.is_empty() {
                    let ns = Some(a.netns.as_str());
                    if let Some(name) = self.host.link_name_by_mac(ns, a.mac.bytes()) {
                        self.host.delete_link(ns, &name)?;
                    }
                }
            }
            PortKind::Tap => {
                self.host.delete_link(Some(&a.netns), &a.ifname)?;
            }
        }
        Ok(())
    }
}

impl State {
    /// Takes over a container's interface that an earlier switch process
    /// made (`saved`): the veth's host end, or the persistent TAP inside
    /// the container, opened again under the same port id, MAC and address.
    /// Nothing in the container is touched. An interface whose container is
    /// gone is removed and the attachment dropped.
    pub(super) fn readopt(&mut self, a: &SavedAttachment) -> Result<(), CmdError> {
        let mac: Mac = a
            .mac
            .parse()
            .map_err(|e: vswitch_engine::wire::mac::MacParseError| CmdError(e.to_string()))?;
        let attach = Attachment {
            kind: a.kind,
            owner: a.owner.clone(),
            aliases: a.aliases.clone(),
            netns: a.netns.clone(),
            ifname: a.ifname.clone(),
            ip: a.ip,
            mac,
            handoff: a.handoff,
        };
        let who = attach.label();
        // A handoff's interface is wherever its runtime put it: the
        // container's namespace being gone says nothing here.
        if !a.handoff && !self.host.namespace_exists(&a.netns) {
            if a.kind.is_veth() {
                let _ = self.host.delete_link(None, &a.host_iface);
            }
            // The resolv.conf attach wrote for it (only the switch's own).
            let _ = self.host.resolv_conf(&a.netns, None);
            return err(format!(
                "{who}: its namespace is gone; the attachment to {:?} was removed",
                a.network
            ));
        }
        let opened = match a.kind {
            AttachKind::Veth | AttachKind::VethXdp => {
                if !self.host.link_exists(&a.host_iface) {
                    return err(format!(
                        "{who}: its veth (host end {}) is gone; the attachment to {:?} was removed",
                        a.host_iface, a.network
                    ));
                }
                // Made by a switch that opened it with AF_XDP, perhaps.
                self.host.no_arp(&a.host_iface)?;
                self.open_port(a.kind.port_kind(), &a.host_iface, false)?
            }
            AttachKind::Tap if a.handoff => {
                let found = if self.host.link_exists(&a.ifname) {
                    Some(self.open_port(PortKind::Tap, &a.ifname, true)?)
                } else {
                    match self.host.link_name_by_mac(Some(&a.netns), mac.bytes()) {
                        Some(name) if !a.netns.is_empty() => {
                            self.host.open_tap_in(&a.netns, &name).map_err(CmdError)?
                        }
                        _ => None,
                    }
                };
                let Some(o) = found else {
                    return err(format!(
                        "{who}: its TAP is gone; the attachment to {:?} was removed",
                        a.network
                    ));
                };
                o
            }
            AttachKind::Tap => {
                let found = self
                    .host
                    .open_tap_in(&a.netns, &a.ifname)
                    .map_err(CmdError)?;
                let Some(o) = found else {
                    return err(format!(
                        "{who}: its TAP is gone; the attachment to {:?} was removed",
                        a.network
                    ));
                };
                o
            }
        };
        let kind = a.kind.port_kind();
        let id = self.port_add_with(NewPort {
            network: &a.network,
            iface: &a.host_iface,
            kind,
            worker: Some(a.worker).filter(|w| *w < self.workers.len()),
            attach: Some(attach),
            id: Some(a.id),
            opened: Some(opened),
        })?;
        if let (Some(ip), Some(l3)) = (
            a.ip,
            self.networks
                .get_mut(&a.network)
                .and_then(|n| n.l3.as_mut()),
        ) {
            l3.hosts.insert(ip, (mac, who.clone()));
            self.publish();
        }
        tracing::info!(attachment = %who, network = %a.network, port = id, "container interface taken over");
        Ok(())
    }
}

/// A stable, locally administered MAC for an attachment.
pub(super) fn derived_mac(network: &str, ns: &str, ifname: &str) -> Mac {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (network, ns, ifname).hash(&mut h);
    let v = h.finish() & 0xff_ffff_ffff;
    Mac(0x0200_0000_0000 | v)
}
