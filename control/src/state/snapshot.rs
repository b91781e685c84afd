//! Snapshot publishing: the control plane's records become the immutable
//! [`Snapshot`] the workers read without locks.
use super::*;

impl State {
    pub(super) fn publish(&self) {
        let max_port = self.ports.keys().next_back().map_or(0, |k| *k as usize + 1);
        let mut ports: Vec<Option<PortView>> = vec![None; max_port];
        let max_net = self
            .networks
            .values()
            .map(|n| n.id as usize + 1)
            .max()
            .unwrap_or(0);
        let mut networks: Vec<Option<NetworkView>> = vec![None; max_net];
        for n in self.networks.values() {
            networks[n.id as usize] = Some(NetworkView {
                id: n.id,
                name: n.cfg.name.clone(),
                ports: Vec::new(),
                l3: n.l3.as_ref().map(|l| L3View {
                    subnet: Prefix {
                        addr: u32::from(l.subnet.network()),
                        len: l.subnet.prefix(),
                    },
                    gw_ip: u32::from(l.gw),
                    gw_mac: l.gw_mac,
                    internal: n.cfg.internal,
                    no_icc: n.cfg.no_icc,
                    host_port: l.host_port,
                    hosts: l
                        .hosts
                        .iter()
                        .map(|(ip, (mac, _))| (u32::from(*ip), *mac))
                        .collect(),
                }),
                overlay: (n.cfg.driver == Driver::Overlay).then(|| OverlayView {
                    vni: n.cfg.vni.unwrap_or(0),
                    peers: self
                        .overlay_peers(n)
                        .into_iter()
                        .filter_map(|ip| self.vteps.iter().position(|v| *v == ip))
                        .map(|i| REMOTE_BASE + i as PortId)
                        .collect(),
                    learning: n.cfg.learning,
                    ttl: n.cfg.ttl,
                    df: n.cfg.df,
                    arp: self
                        .synced_arp(n.id)
                        .chain(n.arp.iter().map(|(ip, mac)| (*ip, *mac)))
                        .map(|(ip, mac)| (u32::from(ip), mac))
                        .collect(),
                }),
            });
        }
        for p in self.ports.values() {
            let net = self.networks.get(&p.net).map(|n| n.id);
            if p.gone.is_none() {
                if let Some(Some(nv)) = net.map(|n| &mut networks[n as usize]) {
                    nv.ports.push(p.id);
                }
            }
            ports[p.id as usize] = Some(PortView {
                id: p.id,
                name: p.iface.clone(),
                net,
                worker: p.worker,
                caps: p.caps,
                stats: p.stats.clone(),
            });
        }
        let uplink = self.uplink.as_ref().map(|u| {
            let mut routes: Vec<Route> = u
                .routes
                .iter()
                .map(|r| Route {
                    dst: Prefix {
                        addr: u32::from(r.dst),
                        len: r.len,
                    },
                    via: r.via.map(u32::from),
                })
                .collect();
            routes.sort_by_key(|r| std::cmp::Reverse(r.dst.len));
            UplinkView {
                port: u.port,
                mac: u.mac,
                snat_ip: u32::from(u.snat_ip),
                snat_ip_is_local: u.snat_is_local,
                local_ips: u.local.iter().map(|i| u32::from(*i)).collect(),
                routes,
                neigh: u
                    .neigh
                    .iter()
                    .map(|(ip, m)| (u32::from(*ip), Mac::from_bytes(m)))
                    .collect(),
                snat_ports: u.snat,
                vtep_ip: u32::from(u.vtep),
                mtu: u.mtu,
            }
        });
        let workers_of: std::collections::HashMap<(&str, Ipv4Addr), usize> = self
            .ports
            .values()
            .filter_map(|r| Some(((r.net.as_str(), r.attach.as_ref()?.ip?), r.worker)))
            .collect();
        let mut published = vswitch_engine::tables::FastMap::default();
        for ((proto, hp), p) in &self.published {
            if let Some(n) = self.networks.get(&p.network) {
                // Its connections live with the worker of the container's
                // port.
                let worker = workers_of.get(&(p.network.as_str(), p.ip)).copied();
                let worker = worker.unwrap_or(0);
                published.insert(
                    (proto.number(), *hp),
                    Published {
                        host_ip: p.host_ip.map(u32::from),
                        net: n.id,
                        ip: u32::from(p.ip),
                        port: p.port,
                        worker: worker as u16,
                    },
                );
            }
        }
        let vteps: Vec<u32> = self.vteps.iter().map(|v| u32::from(*v)).collect();
        let vtep_index = vteps
            .iter()
            .enumerate()
            .map(|(i, v)| (*v, i as u16))
            .collect();
        let vni_nets = self
            .networks
            .values()
            .filter(|n| n.cfg.driver == Driver::Overlay)
            .filter_map(|n| n.cfg.vni.map(|v| (v, n.id)))
            .collect();
        self.tables.publish(Snapshot {
            generation: 0,
            ports,
            networks,
            uplink,
            published,
            vteps,
            vtep_index,
            vni_nets,
        });
        self.publish_dns();
    }
}
