//! Attachments: a container's interface (veth or TAP) made in its
//! namespace, its address from the network's pool, and its removal.
use super::*;
use crate::api::Attached;
use crate::store::SavedAttachment;

impl State {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attach(
        &mut self,
        network: &str,
        ns: &str,
        ifname: &str,
        kind: AttachKind,
        (ip, mac): (Option<&str>, Option<&str>),
        (owner, aliases): (Option<String>, Vec<String>),
    ) -> Result<Attached, CmdError> {
        let Some(net) = self.networks.get(network).cloned() else {
            return err(format!(
                "no network {network:?} (create it with `vswitch network create {network}`)"
            ));
        };
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
        if self.ports.values().any(|p| {
            p.attach
                .as_ref()
                .is_some_and(|a| a.netns == ns && a.ifname == ifname)
        }) {
            return err(format!("{ns}:{ifname} is already attached"));
        }
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
            None => derived_mac(network, ns, ifname),
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
        let attach = Some(Attachment {
            kind,
            owner,
            aliases,
            netns: ns.to_string(),
            ifname: ifname.to_string(),
            ip: ipam,
            mac,
        });
        let gw = net.l3.as_ref().map(|l| l.gw);
        let mtu = net.cfg.mtu;
        let gso = interface_gso(&net.cfg);
        let result = match kind {
            AttachKind::Veth => (|| {
                self.host.create_veth(&host, &tmp, ns, mtu)?;
                self.host
                    .configure(Some(ns), &tmp, ifname, mac.bytes(), mtu, gso, addrs)?;
                if let Some(g) = gw {
                    self.host.add_default_route(ns, g)?;
                }
                self.host.tx_csum_off(ns, ifname)?;
                self.port_add(network, &host, PortKind::Afxdp, None, attach)
            })(),
            AttachKind::Tap => (|| {
                // Persistent: the container keeps it if the switch dies.
                let opened = self.open_port(PortKind::Tap, &tmp, true)?;
                let id = self.port_add_with(NewPort {
                    network,
                    iface: &tmp,
                    kind: PortKind::Tap,
                    worker: None,
                    attach,
                    id: None,
                    opened: Some(opened),
                })?;
                self.host.move_to_ns(&tmp, ns)?;
                self.host
                    .configure(Some(ns), &tmp, ifname, mac.bytes(), mtu, gso, addrs)?;
                if let Some(g) = gw {
                    self.host.add_default_route(ns, g)?;
                }
                Ok(id)
            })(),
        };
        match result {
            Ok(id) => {
                if let (Some(ip), Some(l3)) = (
                    ipam,
                    self.networks.get_mut(network).and_then(|n| n.l3.as_mut()),
                ) {
                    l3.hosts.insert(ip, (mac, format!("{ns}:{ifname}")));
                    self.publish();
                }
                Ok(Attached {
                    port: id,
                    mac: mac.to_string(),
                    ip: ipam.map(|i| i.to_string()),
                    gateway: gw.map(|g| g.to_string()),
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
                let _ = self.host.delete_link(Some(ns), &tmp);
                Err(e)
            }
        }
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
        let Some(rec) = self.remove_port(id) else {
            return Ok(());
        };
        let ip = rec.attach.as_ref().and_then(|a| a.ip);
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
                    self.tables.ct.remove_if(|f| touches_container(f, nid, mac));
                }
            }
            self.publish();
        }
        match rec.kind {
            // Deleting the host end deletes its peer in the container too.
            PortKind::Afxdp => {
                self.host.delete_link(None, &rec.iface)?;
            }
            // Persistent: closing it left it in the container.
            PortKind::Tap => {
                self.host.delete_link(Some(ns), ifname)?;
            }
            PortKind::Packet => {}
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
        let who = format!("{}:{}", a.netns, a.ifname);
        let mac: Mac = a
            .mac
            .parse()
            .map_err(|e: vswitch_engine::wire::mac::MacParseError| CmdError(e.to_string()))?;
        if !self.host.namespace_exists(&a.netns) {
            if a.kind == AttachKind::Veth {
                let _ = self.host.delete_link(None, &a.host_iface);
            }
            return err(format!(
                "{who}: its namespace is gone; the attachment to {:?} was removed",
                a.network
            ));
        }
        let attach = Some(Attachment {
            kind: a.kind,
            owner: a.owner.clone(),
            aliases: a.aliases.clone(),
            netns: a.netns.clone(),
            ifname: a.ifname.clone(),
            ip: a.ip,
            mac,
        });
        let opened = match a.kind {
            AttachKind::Veth => {
                if !self.host.link_exists(&a.host_iface) {
                    return err(format!(
                        "{who}: its veth (host end {}) is gone; the attachment to {:?} was removed",
                        a.host_iface, a.network
                    ));
                }
                self.open_port(PortKind::Afxdp, &a.host_iface, false)?
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
        let kind = match a.kind {
            AttachKind::Veth => PortKind::Afxdp,
            AttachKind::Tap => PortKind::Tap,
        };
        let id = self.port_add_with(NewPort {
            network: &a.network,
            iface: &a.host_iface,
            kind,
            worker: Some(a.worker).filter(|w| *w < self.workers.len()),
            attach,
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
