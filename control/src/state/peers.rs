//! Overlay peers: remote VTEPs and the static flood lists.
use super::*;
use crate::api::PeerInfo;

impl State {
    pub(super) fn has_overlay(&self) -> bool {
        self.networks
            .values()
            .any(|n| n.cfg.driver == Driver::Overlay)
    }

    /// The FDB port number of remote VTEP `ip` (registered on first use).
    pub(super) fn vtep_port(&mut self, ip: &str) -> Result<PortId, CmdError> {
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| CmdError(format!("--vtep {ip:?} is not an IPv4 address")))?;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return err(format!("--vtep {ip} must be a unicast address"));
        }
        let i = match self.vteps.iter().position(|v| *v == ip) {
            Some(i) => i,
            None => {
                if self.vteps.len() >= (u16::MAX - REMOTE_BASE) as usize {
                    return err("too many VTEPs");
                }
                self.vteps.push(ip);
                self.vteps.len() - 1
            }
        };
        Ok(REMOTE_BASE + i as PortId)
    }

    pub(super) fn overlay_net(&self, network: &str) -> Result<&Net, CmdError> {
        match self.networks.get(network) {
            Some(n) if n.cfg.driver == Driver::Overlay => Ok(n),
            Some(_) => err(format!(
                "network {network:?} is not an overlay network (create one with --driver overlay --vni N)"
            )),
            None => err(format!("no network {network:?} (see `vswitch network ls`)")),
        }
    }

    /// `peer add`: a VTEP joins the network's flood list.
    pub fn peer_add(&mut self, network: &str, vtep: &str) -> Result<(), CmdError> {
        self.overlay_net(network)?;
        let port = self.vtep_port(vtep)?;
        let ip = self.vteps[(port - REMOTE_BASE) as usize].to_string();
        let Some(n) = self.networks.get_mut(network) else {
            return err("unreachable");
        };
        if n.cfg.peers.contains(&ip) {
            return err(format!("{ip} is already a peer of {network:?}"));
        }
        n.cfg.peers.push(ip);
        self.publish();
        let _ = self.reapply_guard();
        self.refresh_uplink(false);
        Ok(())
    }

    /// `peer rm`: the VTEP leaves the flood list; its MACs are forgotten.
    pub fn peer_rm(&mut self, network: &str, vtep: &str) -> Result<(), CmdError> {
        let id = self.overlay_net(network)?.id;
        let ip: Ipv4Addr = vtep
            .parse()
            .map_err(|_| CmdError(format!("--vtep {vtep:?} is not an IPv4 address")))?;
        let Some(n) = self.networks.get_mut(network) else {
            return err("unreachable");
        };
        let before = n.cfg.peers.len();
        n.cfg
            .peers
            .retain(|p| p.parse::<Ipv4Addr>().ok() != Some(ip));
        if n.cfg.peers.len() == before {
            return err(format!(
                "{ip} is not a peer of {network:?} (see `vswitch peer ls`)"
            ));
        }
        self.publish();
        if let Some(i) = self.vteps.iter().position(|v| *v == ip) {
            let port = REMOTE_BASE + i as PortId;
            self.tables
                .fdb
                .retain_not(0, |e| e.net == id && e.port == port);
        }
        Ok(())
    }

    /// `peer ls`: each overlay network's flood list, static peers and those
    /// the cluster sync gave it.
    pub fn peer_ls(&self) -> Vec<PeerInfo> {
        let mut list = Vec::new();
        for n in self.networks.values() {
            if n.cfg.driver != Driver::Overlay {
                continue;
            }
            for p in self.overlay_peers(n) {
                let static_peer = n.cfg.peers.iter().any(|s| s.parse() == Ok(p));
                list.push(PeerInfo {
                    network: n.cfg.name.clone(),
                    vni: n.cfg.vni,
                    vtep: p.to_string(),
                    kind: if static_peer { "static" } else { "synced" }.into(),
                });
            }
        }
        list
    }
}
