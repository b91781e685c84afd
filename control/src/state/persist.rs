//! The desired state: what is saved before a change is answered, what a
//! new switch process puts back, and how the config file merges into it
//! (at start and on `SIGHUP`).
//!
//! Merge rule: the saved state is put back first; then the config file is
//! applied over it. What the config names and the switch lacks is made;
//! what it names differently is made anew when nothing uses it (a network
//! with containers or published ports is kept as it runs, with a warning);
//! on a reload, what an earlier config named and this one does not is
//! removed. Whatever was made through the API is the API's to remove.
use super::networks::normalized;
use super::*;
use crate::store::{SavedAttachment, StoreError};
use crate::store::{SavedNetwork, SavedPort, SavedPublished, SavedUplink};

impl State {
    /// Everything the switch has been told, as it is saved.
    pub(super) fn desired(&self) -> Desired {
        let mut d = Desired {
            format: crate::store::FORMAT,
            ..Default::default()
        };
        let mut nets: Vec<&Net> = self.networks.values().collect();
        nets.sort_by_key(|n| n.id);
        for n in nets {
            d.networks.push(SavedNetwork {
                config: n.cfg.clone(),
                id: n.id,
                from_config: n.from_config,
                host_port: n.l3.as_ref().and_then(|l| l.host_port),
            });
        }
        for p in self.ports.values().filter(|p| !p.system) {
            match &p.attach {
                None => d.ports.push(SavedPort {
                    id: p.id,
                    network: p.net.clone(),
                    iface: p.iface.clone(),
                    kind: p.kind,
                    worker: p.want_worker,
                    from_config: p.from_config,
                }),
                Some(a) => d.attachments.push(SavedAttachment {
                    id: p.id,
                    network: p.net.clone(),
                    netns: a.netns.clone(),
                    ifname: a.ifname.clone(),
                    kind: a.kind,
                    host_iface: p.iface.clone(),
                    ip: a.ip,
                    mac: a.mac.to_string(),
                    worker: p.worker,
                    owner: a.owner.clone(),
                    aliases: a.aliases.clone(),
                    handoff: a.handoff,
                }),
            }
        }
        for ((proto, hp), p) in &self.published {
            d.published.push(SavedPublished {
                network: p.network.clone(),
                proto: *proto,
                host_port: *hp,
                host_ip: p.host_ip,
                target: std::net::SocketAddrV4::new(p.ip, p.port),
                bind_host: p.bind_host,
            });
        }
        d.uplink = self.uplink.as_ref().map(|u| SavedUplink {
            config: u.cfg.clone(),
            from_config: u.from_config,
            port: Some(u.port),
        });
        d.fdb = self.statics.values().map(|(f, _)| f.clone()).collect();
        d
    }

    /// Saves the desired state, if it changed.
    pub(super) fn save(&mut self) -> Result<(), StoreError> {
        let d = self.desired();
        self.store.save(&d)
    }

    /// Puts back saved state: networks under their ids, the uplink, ports,
    /// containers' interfaces (taken over, not made), published ports and
    /// static FDB entries. What cannot be put back is logged and left out.
    pub(super) fn restore(&mut self, d: Desired) {
        self.restoring = true;
        // Every port comes back under its id, and no new port may take an
        // id a saved one will claim.
        let ids = d
            .networks
            .iter()
            .filter_map(|n| n.host_port)
            .chain(d.uplink.iter().filter_map(|u| u.port))
            .chain(d.ports.iter().map(|p| p.id))
            .chain(d.attachments.iter().map(|a| a.id));
        if let Some(max) = ids.max() {
            self.next_port = max.saturating_add(1).max(1);
        }
        let mut nets = d.networks;
        nets.sort_by_key(|n| n.id);
        for n in nets {
            let name = n.config.name.clone();
            match self.network_create_as(n.config, Some(n.id), n.host_port) {
                Ok(()) => {
                    if let Some(net) = self.networks.get_mut(&name) {
                        net.from_config = n.from_config;
                    }
                }
                Err(e) => {
                    tracing::error!(network = %name, error = %e, "saved network not restored")
                }
            }
        }
        if let Some(u) = d.uplink {
            match self.uplink_add_as(u.config, u.port) {
                Ok(()) => {
                    if let Some(up) = self.uplink.as_mut() {
                        up.from_config = u.from_config;
                    }
                }
                Err(e) => tracing::error!(error = %e, "saved uplink not restored"),
            }
        }
        for p in d.ports {
            let r = self.port_add_with(NewPort {
                network: &p.network,
                iface: &p.iface,
                kind: p.kind,
                worker: p.worker,
                attach: None,
                id: Some(p.id),
                opened: None,
            });
            match r {
                Ok(id) => {
                    if let Some(rec) = self.ports.get_mut(&id) {
                        rec.from_config = p.from_config;
                    }
                }
                Err(e) => tracing::error!(iface = %p.iface, error = %e, "saved port not restored"),
            }
        }
        let mut gone = 0;
        for a in d.attachments {
            if let Err(e) = self.readopt(&a) {
                gone += 1;
                tracing::warn!("{e}");
            }
        }
        for p in d.published {
            let r = self.publish_port(
                &p.network,
                &p.target.to_string(),
                Some(&p.host_port.to_string()),
                p.proto,
                p.host_ip.map(|i| i.to_string()).as_deref(),
                p.bind_host,
            );
            if let Err(e) = r {
                tracing::error!(network = %p.network, host_port = p.host_port, error = %e, "saved published port not restored");
            }
        }
        for f in d.fdb {
            let ip = f.ip.map(|i| i.to_string());
            if let Err(e) = self.fdb_add(
                &f.network,
                &f.mac,
                f.port.as_deref(),
                f.vtep.as_deref(),
                ip.as_deref(),
            ) {
                tracing::error!(network = %f.network, mac = %f.mac, error = %e, "saved FDB entry not restored");
            }
        }
        self.restoring = false;
        self.announce();
        tracing::info!(
            networks = self.networks.len(),
            attachments = self.ports.values().filter(|p| p.attach.is_some()).count(),
            removed = gone,
            "saved state restored"
        );
    }

    /// Tells each network's ports where its addresses are (a gratuitous
    /// ARP for every container and the gateway, into every port but the
    /// address's own), after a takeover: a container that tried to resolve
    /// a neighbour while the switch was down gets its answer now, not at
    /// its next retransmission.
    fn announce(&self) {
        use vswitch_engine::wire::announce::gratuitous_arp;
        for n in self.networks.values() {
            let Some(l3) = &n.l3 else { continue };
            let owner = |ip: Ipv4Addr| {
                self.ports
                    .values()
                    .find(|p| {
                        p.net == n.cfg.name && p.attach.as_ref().is_some_and(|a| a.ip == Some(ip))
                    })
                    .map(|p| p.id)
            };
            let mut who: Vec<(Ipv4Addr, Mac, Option<PortId>)> = l3
                .hosts
                .iter()
                .map(|(ip, (mac, _))| (*ip, *mac, owner(*ip)))
                .collect();
            who.push((l3.gw, l3.gw_mac, l3.host_port));
            let ports = self
                .ports
                .values()
                .filter(|p| p.net == n.cfg.name && p.gone.is_none());
            for p in ports {
                for (ip, mac, own) in &who {
                    if *own != Some(p.id) {
                        self.workers.send(
                            p.worker,
                            Command::Send {
                                port: p.id,
                                frame: gratuitous_arp(*mac, *ip),
                            },
                        );
                    }
                }
            }
        }
    }

    /// Applies the config file over what runs (see the module's merge
    /// rule). At start an error stops the switch; on a reload (`reload`)
    /// each item stands alone and the errors are returned together.
    pub fn apply_config(&mut self, cfg: &Config, reload: bool) -> Result<(), CmdError> {
        let mut errors: Vec<String> = Vec::new();
        let mut fail = |e: CmdError| -> Result<(), CmdError> {
            if reload {
                errors.push(e.0);
                Ok(())
            } else {
                Err(e)
            }
        };
        if reload {
            // At start the resolver began with them.
            self.dns.limit(cfg.dns);
        }
        for n in &cfg.networks {
            if let Err(e) = self.config_network(n) {
                fail(e)?;
            }
        }
        if reload {
            let dropped: Vec<String> = self
                .networks
                .values()
                .filter(|n| n.from_config && !cfg.networks.iter().any(|c| c.name == n.cfg.name))
                .map(|n| n.cfg.name.clone())
                .collect();
            for name in dropped {
                match self.network_rm(&name) {
                    Ok(()) => tracing::info!(network = %name, "network left the config: removed"),
                    Err(e) => fail(CmdError(format!(
                        "network {name:?} left the config but stays: {e}"
                    )))?,
                }
            }
        }
        for p in &cfg.ports {
            if p.kind == PortKind::Packet {
                fail(CmdError(format!(
                    "port {:?}: kind \"packet\" is for the [uplink] only",
                    p.iface
                )))?;
                continue;
            }
            let running = self
                .ports
                .values()
                .find(|r| r.iface == p.iface)
                .map(|r| r.id);
            match running {
                Some(id) => {
                    let same = self.ports.get(&id).is_some_and(|r| {
                        r.net == p.network && r.kind == p.kind && r.want_worker == p.worker
                    });
                    if !same {
                        self.remove_port(id);
                        if let Err(e) = self.port_add(&p.network, &p.iface, p.kind, p.worker, None)
                        {
                            fail(e)?;
                            continue;
                        }
                    }
                }
                None => {
                    if let Err(e) = self.port_add(&p.network, &p.iface, p.kind, p.worker, None) {
                        fail(e)?;
                        continue;
                    }
                }
            }
            if let Some(r) = self.ports.values_mut().find(|r| r.iface == p.iface) {
                r.from_config = true;
            }
        }
        if reload {
            let dropped: Vec<PortId> = self
                .ports
                .values()
                .filter(|r| r.from_config && !cfg.ports.iter().any(|p| p.iface == r.iface))
                .map(|r| r.id)
                .collect();
            for id in dropped {
                self.remove_port(id);
            }
        }
        match (
            &cfg.uplink,
            self.uplink.as_ref().map(|u| (u.cfg.clone(), u.from_config)),
        ) {
            (Some(want), Some((have, _))) if *want == have => {
                if let Some(u) = self.uplink.as_mut() {
                    u.from_config = true;
                }
            }
            (Some(want), have) => {
                if have.is_some() {
                    let _ = self.uplink_rm();
                }
                match self.uplink_add(want.clone()) {
                    Ok(()) => {
                        if let Some(u) = self.uplink.as_mut() {
                            u.from_config = true;
                        }
                    }
                    Err(e) => fail(e)?,
                }
            }
            (None, Some((_, true))) if reload => {
                let _ = self.uplink_rm();
                tracing::info!("the uplink left the config: removed");
            }
            _ => {}
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CmdError(errors.join("; ")))
        }
    }

    /// One network of the config file.
    fn config_network(&mut self, c: &NetworkConfig) -> Result<(), CmdError> {
        config::validate_network(c)?;
        let want = normalized(c.clone());
        let Some(have) = self.networks.get(&c.name).map(|n| n.cfg.clone()) else {
            self.network_create(c.clone())?;
            if let Some(n) = self.networks.get_mut(&c.name) {
                n.from_config = true;
            }
            return Ok(());
        };
        let bare = |n: &NetworkConfig| NetworkConfig {
            peers: Vec::new(),
            ..n.clone()
        };
        if bare(&have) != bare(&want) {
            let used = self.ports.values().any(|p| p.net == c.name && !p.system)
                || self.published.values().any(|p| p.network == c.name);
            if used {
                tracing::warn!(
                    network = %c.name,
                    "the config defines this network differently from the running one, \
                     which has containers or published ports: kept as it runs; detach them \
                     and reload, or change the config"
                );
                if let Some(n) = self.networks.get_mut(&c.name) {
                    n.from_config = true;
                }
                return Ok(());
            }
            self.network_rm(&c.name)?;
            self.network_create(c.clone())?;
            tracing::info!(network = %c.name, "network re-made as the config defines it");
        }
        // Peers the config adds join the flood list; the others stay.
        for p in &want.peers {
            let ip: Option<Ipv4Addr> = p.parse().ok();
            let listed = self
                .networks
                .get(&c.name)
                .is_some_and(|n| n.cfg.peers.iter().any(|q| q.parse::<Ipv4Addr>().ok() == ip));
            if !listed {
                self.peer_add(&c.name, p)?;
            }
        }
        if let Some(n) = self.networks.get_mut(&c.name) {
            n.from_config = true;
        }
        Ok(())
    }

    /// The request that takes back a successful change, when one exists.
    pub(super) fn undo_of(req: &Request, data: &Reply) -> Option<Request> {
        Some(match req {
            Request::NetworkCreate(c) => Request::NetworkRm {
                name: c.name.clone(),
            },
            Request::Attach {
                network,
                netns,
                ifname,
                ..
            } => Request::Detach {
                network: network.clone(),
                netns: netns.clone(),
                ifname: ifname.clone(),
            },
            Request::AttachHandoff { owner, .. } => Request::DetachOwner {
                owner: owner.clone(),
            },
            Request::PortAdd { iface, .. } => Request::PortRm {
                iface: iface.clone(),
            },
            Request::Publish { network, proto, .. } => Request::Unpublish {
                network: network.clone(),
                host_port: match data {
                    Reply::Published(p) => p.host_port,
                    _ => return None,
                },
                proto: *proto,
            },
            Request::UplinkAdd(_) => Request::UplinkRm,
            Request::FdbAdd { network, mac, .. } => Request::FdbRm {
                network: network.clone(),
                mac: mac.clone(),
            },
            Request::PeerAdd { network, vtep } => Request::PeerRm {
                network: network.clone(),
                vtep: vtep.clone(),
            },
            _ => return None,
        })
    }
}
