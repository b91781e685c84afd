//! Static FDB entries and the FDB listing.
use super::*;

impl State {
    pub(super) fn net_name(&self, id: NetId) -> String {
        self.networks
            .values()
            .find(|n| n.id == id)
            .map_or_else(|| format!("#{id}"), |n| n.cfg.name.clone())
    }

    pub(super) fn fdb_show(&self, network: Option<&str>) -> Result<Vec<FdbInfo>, CmdError> {
        let filter = match network {
            Some(n) => match self.networks.get(n) {
                Some(net) => Some(net.id),
                None => return err(format!("no network {n:?} (see `vswitch network ls`)")),
            },
            None => None,
        };
        Ok(self
            .tables
            .fdb
            .entries(self.clock.now_secs())
            .into_iter()
            .filter(|e| filter.is_none_or(|f| f == e.net))
            .map(|e| FdbInfo {
                network: self.net_name(e.net),
                mac: e.mac.to_string(),
                port: if is_remote(e.port) {
                    self.vteps
                        .get((e.port - REMOTE_BASE) as usize)
                        .map_or_else(|| format!("#{}", e.port), |v| format!("vtep:{v}"))
                } else {
                    self.ports
                        .get(&e.port)
                        .map_or_else(|| format!("#{}", e.port), |p| p.iface.clone())
                },
                kind: match self.synced_entry(e.net, e.mac) {
                    Some(_) if is_remote(e.port) => "synced",
                    _ if e.is_static => "static",
                    _ => "learned",
                }
                .into(),
                age_secs: e.age_secs,
                host: self
                    .synced_entry(e.net, e.mac)
                    .filter(|_| is_remote(e.port))
                    .map(|s| s.host.clone()),
                synced_unix_us: self
                    .synced_entry(e.net, e.mac)
                    .filter(|_| is_remote(e.port))
                    .map(|s| s.at_us),
            })
            .collect())
    }

    pub(super) fn fdb_target(&self, network: &str, mac: &str) -> Result<(NetId, Mac), CmdError> {
        let Some(net) = self.networks.get(network) else {
            return err(format!("no network {network:?} (see `vswitch network ls`)"));
        };
        let mac: Mac = mac
            .parse()
            .map_err(|e: vswitch_engine::wire::mac::MacParseError| CmdError(e.to_string()))?;
        Ok((net.id, mac))
    }

    pub(super) fn fdb_add(
        &mut self,
        network: &str,
        mac: &str,
        port: Option<&str>,
        vtep: Option<&str>,
        ip: Option<&str>,
    ) -> Result<(), CmdError> {
        let (net, mac) = self.fdb_target(network, mac)?;
        let ip: Option<Ipv4Addr> = ip
            .map(|s| {
                s.parse()
                    .map_err(|_| CmdError(format!("--ip {s:?} is not an IPv4 address")))
            })
            .transpose()?;
        let target = match (port, vtep) {
            (Some(p), None) => self.local_port_of(network, p)?,
            (None, Some(v)) => {
                let n = self.overlay_net(network)?;
                let vip: Ipv4Addr = v
                    .parse()
                    .map_err(|_| CmdError(format!("--vtep {v:?} is not an IPv4 address")))?;
                if !self.overlay_peers(n).contains(&vip) {
                    return err(format!(
                        "{vip} is not a peer of {network:?}; add it first with `vswitch peer add {network} --vtep {vip}`"
                    ));
                }
                self.vtep_port(v)?
            }
            _ => return err("give exactly one of --port or --vtep"),
        };
        self.tables
            .fdb
            .add_static(net, mac, target)
            .map_err(|e| CmdError(e.to_string()))?;
        let local = port.map(|_| target);
        self.statics.insert(
            (network.to_string(), mac),
            (
                SavedFdb {
                    network: network.to_string(),
                    mac: mac.to_string(),
                    port: port.map(str::to_string),
                    vtep: vtep.map(str::to_string),
                    ip,
                },
                local,
            ),
        );
        if let Some(ip) = ip {
            if let Some(n) = self.networks.get_mut(network) {
                n.arp.insert(ip, mac);
            }
            self.publish();
        }
        Ok(())
    }

    pub(super) fn local_port_of(&self, network: &str, port: &str) -> Result<PortId, CmdError> {
        let Some(p) = self
            .ports
            .values()
            .find(|p| p.iface == port || p.attach.as_ref().is_some_and(|a| a.label() == port))
        else {
            return err(format!("no port {port:?} (give the switch-side interface or NETNS:IFNAME from `vswitch port ls`)"));
        };
        if p.net != network {
            return err(format!(
                "port {port:?} is in network {:?}, not {network:?}",
                p.net
            ));
        }
        Ok(p.id)
    }

    pub(super) fn fdb_rm(&mut self, network: &str, mac: &str) -> Result<(), CmdError> {
        let (net, mac) = self.fdb_target(network, mac)?;
        if !self.tables.fdb.remove(net, mac) {
            return err(format!("{mac} is not in the FDB of {network:?}"));
        }
        self.statics.remove(&(network.to_string(), mac));
        if let Some(n) = self.networks.get_mut(network) {
            let before = n.arp.len();
            n.arp.retain(|_, m| *m != mac);
            if n.arp.len() != before {
                self.publish();
            }
        }
        Ok(())
    }
}
