//! Networks: create (with the gateway's host interface), remove, list.
use super::*;
use crate::api::{ContainerInfo, NetworkDetail, PublishedInfo};

impl State {
    pub(super) fn network_create(&mut self, c: NetworkConfig) -> Result<(), CmdError> {
        self.network_create_as(c, None, None)
    }

    /// Creates a network; `want_id` and `want_port`: the data-plane id and
    /// the host interface's port id it had before a restart, when free.
    pub(super) fn network_create_as(
        &mut self,
        c: NetworkConfig,
        want_id: Option<NetId>,
        want_port: Option<PortId>,
    ) -> Result<(), CmdError> {
        config::validate_network(&c)?;
        let c = normalized(c);
        if let Some(vni) = c.vni {
            if let Some(o) = self.networks.values().find(|n| n.cfg.vni == Some(vni)) {
                return err(format!(
                    "VNI {vni} is already used by network {:?}",
                    o.cfg.name
                ));
            }
        }
        for p in c.peers.clone() {
            self.vtep_port(&p)?;
        }
        let subnet: Option<ipnetwork::Ipv4Network> =
            c.subnet.as_deref().and_then(|s| s.parse().ok());
        if let Some(sn) = subnet {
            let clash = self
                .networks
                .values()
                .find(|n| n.l3.as_ref().is_some_and(|l| l.subnet.overlaps(sn)));
            if let Some(o) = clash {
                return err(format!(
                    "subnet {sn} overlaps network {:?}; pick another --subnet",
                    o.cfg.name
                ));
            }
        }
        if self.networks.contains_key(&c.name) {
            return err(format!("network {:?} already exists", c.name));
        }
        let used: std::collections::HashSet<NetId> = self.networks.values().map(|n| n.id).collect();
        let free = want_id.filter(|i| (*i as usize) < MAX_NETWORKS && !used.contains(i));
        let Some(id) = free.or_else(|| (0..MAX_NETWORKS as NetId).find(|i| !used.contains(i)))
        else {
            return err(format!("too many networks (limit {MAX_NETWORKS})"));
        };
        // A fresh id must carry no entries of a network that used it before.
        self.tables.fdb.retain_not(0, |e| e.net == id);
        self.tables.fdb.set_limit(id, c.mac_limit);
        tracing::info!(network = %c.name, id, "network created");
        let name = c.name.clone();
        let l3 = match (subnet, c.gateway.as_deref().and_then(|g| g.parse().ok())) {
            (Some(subnet), Some(gw)) => Some(NetL3 {
                subnet,
                gw,
                gw_mac: derived_mac(&name, "", "gateway"),
                host_port: None,
                hosts: BTreeMap::new(),
            }),
            _ => None,
        };
        let mtu = c.mtu;
        let overlay = c.driver == Driver::Overlay;
        self.networks.insert(
            name.clone(),
            Net {
                id,
                cfg: c,
                l3,
                arp: BTreeMap::new(),
                from_config: false,
            },
        );
        self.publish();
        if overlay {
            if let Err(e) = self.reapply_guard() {
                let _ = self.network_rm(&name);
                return Err(e);
            }
            self.refresh_uplink(false);
        }
        if let Err(e) = self.make_host_interface(&name, id, mtu, want_port) {
            let _ = self.network_rm(&name);
            return Err(e);
        }
        Ok(())
    }

    /// Gives the host an interface on an L3 network (a TAP with the gateway
    /// address, as docker0 has), so host processes reach containers.
    pub(super) fn make_host_interface(
        &mut self,
        name: &str,
        id: NetId,
        mtu: u32,
        want_port: Option<PortId>,
    ) -> Result<(), CmdError> {
        let Some(net) = self.networks.get(name) else {
            return Ok(());
        };
        let Some(l3) = net.l3.clone() else {
            return Ok(());
        };
        let gso = interface_gso(&net.cfg);
        let ifname = format!("vsgw{id}");
        // A restarted switch takes over the TAP it left (persistent, with
        // its address and the host's routes). One that another switch holds
        // cannot be opened; one left by a switch whose state is gone is made
        // anew.
        let mut adopt = false;
        let mut opened = None;
        if self.host.link_exists(&ifname) {
            let Ok(o) = self.open_port(PortKind::Tap, &ifname, true) else {
                return err(format!(
                    "interface {ifname} already exists and is in use (another vswitch in this namespace?); stop it or run one switch per namespace"
                ));
            };
            if self.restoring {
                adopt = true;
                opened = Some(o);
            } else {
                drop(o);
                let _ = self.host.delete_link(None, &ifname);
            }
        }
        let opened = match opened {
            Some(o) => o,
            None => self.open_port(PortKind::Tap, &ifname, true)?,
        };
        let port = self.port_add_with(NewPort {
            network: name,
            iface: &ifname,
            kind: PortKind::Tap,
            worker: None,
            attach: None,
            id: want_port,
            opened: Some(opened),
        })?;
        if let Some(p) = self.ports.get_mut(&port) {
            p.system = true;
        }
        if !adopt {
            self.host.quiet_host_end(&ifname);
            let made = self.host.configure(
                None,
                &ifname,
                &ifname,
                l3.gw_mac.bytes(),
                mtu,
                gso,
                vec![(std::net::IpAddr::V4(l3.gw), l3.subnet.prefix())],
            );
            if let Err(e) = made {
                self.remove_port(port);
                let _ = self.host.delete_link(None, &ifname);
                return Err(e.into());
            }
        }
        if let Some(n) = self.networks.get_mut(name).and_then(|n| n.l3.as_mut()) {
            n.host_port = Some(port);
        }
        self.publish();
        Ok(())
    }

    pub(super) fn network_rm(&mut self, name: &str) -> Result<(), CmdError> {
        let Some(n) = self.networks.get(name) else {
            return err(format!("no network {name:?} (see `vswitch network ls`)"));
        };
        let users: Vec<_> = self
            .ports
            .values()
            .filter(|p| p.net == name && !p.system)
            .map(|p| p.iface.clone())
            .collect();
        if !users.is_empty() {
            return err(format!(
                "network {name:?} still has ports {users:?}; detach or `port rm` them first"
            ));
        }
        let id = n.id;
        if let Some((proto, port)) = self
            .published
            .iter()
            .find(|(_, p)| p.network == name)
            .map(|(k, _)| *k)
        {
            return err(format!(
                "network {name:?} still publishes {proto} port {port}; `vswitch unpublish` it first"
            ));
        }
        let system: Vec<PortId> = self
            .ports
            .values()
            .filter(|p| p.net == name && p.system)
            .map(|p| p.id)
            .collect();
        for p in system {
            if let Some(rec) = self.remove_port(p) {
                // Persistent: it goes only when deleted.
                if rec.kind == PortKind::Tap {
                    let _ = self.host.delete_link(None, &rec.iface);
                }
            }
        }
        self.statics.retain(|(n, _), _| n != name);
        self.networks.remove(name);
        self.publish();
        self.tables.fdb.retain_not(0, |e| e.net == id);
        self.workers.remove_flows(move |f| touches_net(f, id));
        Ok(())
    }

    pub(super) fn network_infos(&self) -> Vec<NetworkInfo> {
        self.networks
            .values()
            .map(|n| NetworkInfo {
                config: n.cfg.clone(),
                id: n.id,
                ports: self
                    .ports
                    .values()
                    .filter(|p| p.net == n.cfg.name)
                    .map(|p| p.iface.clone())
                    .collect(),
                learned_macs: self.tables.fdb.learned_count(n.id),
            })
            .collect()
    }

    pub(super) fn network_inspect(&self, name: &str) -> Result<NetworkDetail, CmdError> {
        let Some(info) = self
            .network_infos()
            .into_iter()
            .find(|n| n.config.name == name)
        else {
            return err(format!("no network {name:?} (see `vswitch network ls`)"));
        };
        let ports: Vec<_> = self
            .port_infos()
            .into_iter()
            .filter(|p| p.network == name)
            .collect();
        let n = &self.networks[name];
        let attachment = |ip: &Ipv4Addr| {
            self.ports
                .values()
                .filter(|p| p.net == name)
                .filter_map(|p| p.attach.as_ref())
                .find(|a| a.ip == Some(*ip))
        };
        let containers: Vec<_> =
            n.l3.iter()
                .flat_map(|l| l.hosts.iter())
                .map(|(ip, (mac, at))| ContainerInfo {
                    ip: ip.to_string(),
                    mac: mac.to_string(),
                    attached: at.clone(),
                    aliases: attachment(ip)
                        .map(|a| a.aliases.clone())
                        .unwrap_or_default(),
                    owner: attachment(ip).and_then(|a| a.owner.clone()),
                })
                .collect();
        let published: Vec<_> = self
            .published
            .iter()
            .filter(|(_, p)| p.network == name)
            .map(|((proto, hp), p)| PublishedInfo {
                proto: *proto,
                host_port: *hp,
                host_ip: p.host_ip.map(|i| i.to_string()),
                target: format!("{}:{}", p.ip, p.port),
            })
            .collect();
        Ok(NetworkDetail {
            network: info,
            gateway_mac: n.l3.as_ref().map(|l| l.gw_mac.to_string()),
            containers,
            published,
            ports,
        })
    }
}

/// `c` with its defaults filled in: the MTU (1500, or 1450 on an overlay)
/// and the gateway (the subnet's first address).
pub(super) fn normalized(mut c: NetworkConfig) -> NetworkConfig {
    if c.mtu == 0 {
        c.mtu = if c.driver == Driver::Overlay {
            1450
        } else {
            1500
        };
    }
    if c.gateway.is_none() {
        let subnet: Option<ipnetwork::Ipv4Network> =
            c.subnet.as_deref().and_then(|s| s.parse().ok());
        c.gateway = subnet.and_then(|sn| sn.nth(1)).map(|g| g.to_string());
    }
    c
}
