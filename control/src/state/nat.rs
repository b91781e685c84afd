//! The uplink (SNAT, routes, next hops, its nftables guard), published
//! ports (DNAT) and the conntrack listing.
use super::*;
use crate::api::{
    ConntrackReport, FlowInfo, NeighbourInfo, PublishedPort, RouteInfo, TupleInfo, UplinkInfo,
};

impl State {
    pub(super) fn uplink_add(&mut self, c: UplinkConfig) -> Result<(), CmdError> {
        self.uplink_add_as(c, None)
    }

    /// Adds the uplink; `want_port`: the port id it had before a restart.
    pub(super) fn uplink_add_as(
        &mut self,
        c: UplinkConfig,
        want_port: Option<PortId>,
    ) -> Result<(), CmdError> {
        if let Some(u) = &self.uplink {
            return err(format!(
                "the uplink is already {:?}; `vswitch uplink rm` it first",
                u.cfg.iface
            ));
        }
        let info = self.host.link_info(&c.iface)?;
        let local: Vec<Ipv4Addr> = info.v4.iter().map(|(a, _)| *a).collect();
        let snat_ip = match &c.snat_ip {
            Some(s) => s
                .parse::<Ipv4Addr>()
                .map_err(|_| CmdError(format!("--snat-ip {s:?} is not an IPv4 address")))?,
            None => *local.first().ok_or_else(|| {
                CmdError(format!(
                    "uplink {:?} has no IPv4 address; give it one or pass --snat-ip",
                    c.iface
                ))
            })?,
        };
        let want = c
            .snat_ports
            .as_deref()
            .map(config::parse_port_range)
            .transpose()?;
        let snat = crate::uplink::snat_range(want).map_err(CmdError)?;
        for t in Guard::stale(&self.host.nft_netdev_tables()) {
            tracing::info!(table = %t, "removing the uplink guard of a switch that is gone");
            let _ = self.host.nft(&Guard::remove_table_script(&t));
        }
        let guard = Guard::new(&c.iface);
        let pubs: Vec<_> = self.published_rules();
        let vx = c
            .vtep
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(snat_ip);
        self.host
            .nft(&guard.script(
                snat_ip,
                snat,
                &local,
                &pubs,
                self.has_overlay().then_some(vx),
            ))
            .map_err(CmdError)?;
        let added = self.port_add_with(NewPort {
            network: "(uplink)",
            iface: &c.iface,
            kind: PortKind::Packet,
            worker: c.worker,
            attach: None,
            id: want_port,
            opened: None,
        });
        let port = match added {
            Ok(p) => p,
            Err(e) => {
                let _ = self.host.nft(&guard.remove_script());
                return Err(e);
            }
        };
        if let Some(p) = self.ports.get_mut(&port) {
            p.system = true;
            p.net = "(uplink)".into();
        }
        let snat_is_local = local.contains(&snat_ip);
        let vtep = match &c.vtep {
            Some(s) => s
                .parse::<Ipv4Addr>()
                .map_err(|_| CmdError(format!("--vtep {s:?} is not an IPv4 address")))?,
            None => snat_ip,
        };
        self.uplink = Some(UplinkRec {
            cfg: c,
            port,
            index: info.index,
            mac: Mac::from_bytes(&info.mac),
            snat_ip,
            snat_is_local,
            vtep,
            mtu: info.mtu,
            local,
            snat,
            routes: Vec::new(),
            neigh: BTreeMap::new(),
            guard,
            from_config: false,
        });
        self.refresh_uplink(true);
        // Resolve the gateways now, so the first packet out finds them.
        for _ in 0..20 {
            let missing = self.uplink.as_ref().is_some_and(|u| {
                u.routes
                    .iter()
                    .filter_map(|r| r.via)
                    .any(|g| !u.neigh.contains_key(&g))
            });
            if !missing {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            self.refresh_uplink(false);
        }
        let u = self
            .uplink
            .as_ref()
            .map(|u| (u.cfg.iface.clone(), u.snat_ip, u.snat));
        if let Some((iface, ip, (lo, hi))) = u {
            tracing::info!(%iface, snat_ip = %ip, snat_ports = %format!("{lo}-{hi}"), "uplink added");
        }
        Ok(())
    }

    pub(super) fn uplink_rm(&mut self) -> Result<(), CmdError> {
        let Some(u) = self.uplink.take() else {
            return err("there is no uplink (see `vswitch uplink show`)");
        };
        let _ = self.host.nft(&u.guard.remove_script());
        self.remove_port(u.port);
        self.workers
            .remove_flows(|f| f.orig_side == Side::Uplink || f.reply_side == Side::Uplink);
        self.publish();
        Ok(())
    }

    pub(super) fn uplink_show(&self) -> Option<Box<UplinkInfo>> {
        let u = self.uplink.as_ref()?;
        Some(Box::new(UplinkInfo {
            iface: u.cfg.iface.clone(),
            mac: u.mac.to_string(),
            snat_ip: u.snat_ip.to_string(),
            snat_ports: format!("{}-{}", u.snat.0, u.snat.1),
            vtep: u.vtep.to_string(),
            mtu: u.mtu,
            addresses: u.local.iter().map(|a| a.to_string()).collect(),
            routes: u
                .routes
                .iter()
                .map(|r| RouteInfo {
                    dst: format!("{}/{}", r.dst, r.len),
                    via: r.via.map(|v| v.to_string()),
                })
                .collect(),
            neighbours: u
                .neigh
                .iter()
                .map(|(ip, m)| NeighbourInfo {
                    ip: ip.to_string(),
                    mac: Mac::from_bytes(m).to_string(),
                })
                .collect(),
        }))
    }

    /// Re-reads the uplink's routes and next hops from the kernel, asks it
    /// to resolve gateways it does not know, and republishes on change.
    pub(super) fn refresh_uplink(&mut self, force: bool) {
        let Some(u) = self.uplink.as_mut() else {
            return;
        };
        let routes = self.host.routes_via(u.index).unwrap_or_default();
        let neigh: BTreeMap<Ipv4Addr, [u8; 6]> = self
            .host
            .neighbours(u.index)
            .unwrap_or_default()
            .into_iter()
            .collect();
        // Next hops to resolve ahead of traffic: the routes' gateways and
        // the next hops of every overlay peer.
        let mut wanted: Vec<Ipv4Addr> = routes.iter().filter_map(|r| r.via).collect();
        let peers: Vec<Ipv4Addr> = self
            .networks
            .values()
            .filter(|n| n.cfg.driver == Driver::Overlay)
            .flat_map(|n| self.overlay_peers(n))
            .collect();
        let Some(u) = self.uplink.as_mut() else {
            return;
        };
        for p in peers {
            let via = routes
                .iter()
                .filter(|r| {
                    let m = if r.len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - r.len.min(32))
                    };
                    (u32::from(p) ^ u32::from(r.dst)) & m == 0
                })
                .max_by_key(|r| r.len)
                .map(|r| r.via.unwrap_or(p));
            wanted.extend(via);
        }
        for g in wanted {
            if !neigh.contains_key(&g) {
                let _ = self.host.neighbour_use(u.index, g);
            }
        }
        if force || routes != u.routes || neigh != u.neigh {
            u.routes = routes;
            u.neigh = neigh;
            self.publish();
        }
        self.last_refresh = std::time::Instant::now();
    }

    pub(super) fn neighbour_work(&mut self) {
        let mut wanted = std::collections::BTreeSet::new();
        while let Some(ip) = self.tables.neigh_wanted.pop() {
            wanted.insert(Ipv4Addr::from(ip));
        }
        let Some(u) = self.uplink.as_ref() else {
            return;
        };
        let index = u.index;
        for ip in &wanted {
            let _ = self.host.neighbour_use(index, *ip);
        }
        if !wanted.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.refresh_uplink(false);
        } else if self.last_refresh.elapsed() >= std::time::Duration::from_millis(500) {
            self.refresh_uplink(false);
        }
    }

    pub(super) fn published_rules(&self) -> Vec<(Proto, u16, Option<Ipv4Addr>)> {
        self.published
            .iter()
            .map(|((proto, hp), p)| (*proto, *hp, p.host_ip))
            .collect()
    }

    /// The published ports the host reaches through the kernel (those the
    /// switch does not bind).
    fn local_dnat(&self) -> Vec<crate::uplink::LocalDnat> {
        self.published
            .iter()
            .filter(|(_, p)| !p.bind_host)
            .filter_map(|((proto, hp), p)| {
                let id = self.networks.get(&p.network)?.id;
                Some(crate::uplink::LocalDnat {
                    proto: *proto,
                    port: *hp,
                    host_ip: p.host_ip,
                    target: std::net::SocketAddrV4::new(p.ip, p.port),
                    via: format!("vsgw{id}"),
                })
            })
            .collect()
    }

    /// Installs the uplink's guard and the host's own path to published
    /// ports, as the published ports now are.
    pub(super) fn reapply_guard(&self) -> Result<(), CmdError> {
        let local = self.local_dnat();
        let had = self.had_local_dnat.replace(!local.is_empty());
        if !local.is_empty() {
            self.host
                .nft(&crate::uplink::local_dnat_script(&local))
                .map_err(CmdError)?;
        } else if had {
            // Best effort: a host without nftables never had the table.
            let _ = self.host.nft(&crate::uplink::local_dnat_script(&local));
        }
        if let Some(u) = &self.uplink {
            self.host
                .nft(&u.guard.script(
                    u.snat_ip,
                    u.snat,
                    &u.local,
                    &self.published_rules(),
                    self.has_overlay().then_some(u.vtep),
                ))
                .map_err(CmdError)?;
        }
        Ok(())
    }

    pub(super) fn publish_port(
        &mut self,
        network: &str,
        target: &str,
        host_port: Option<&str>,
        proto: Proto,
        host_ip: Option<&str>,
        bind_host: bool,
    ) -> Result<PublishedPort, CmdError> {
        if !bind_host && host_port.is_none() {
            return err("a published port the switch does not bind needs its --host-port");
        }
        let Some(net) = self.networks.get(network) else {
            return err(format!("no network {network:?} (see `vswitch network ls`)"));
        };
        let Some(l3) = net.l3.as_ref() else {
            return err(format!(
                "network {network:?} has no subnet; publishing needs a network created with --subnet"
            ));
        };
        if net.cfg.internal {
            return err(format!(
                "network {network:?} is --internal: it has no published ports"
            ));
        }
        let t: SocketAddr = target.parse().map_err(|_| {
            CmdError(format!(
                "{target:?} is not CONTAINER_IP:PORT, e.g. 10.1.0.2:80"
            ))
        })?;
        let (ip, port) = match t {
            SocketAddr::V4(a) => (*a.ip(), a.port()),
            SocketAddr::V6(_) => return err("only IPv4 containers can be published"),
        };
        if port == 0 {
            return err("container port 0 cannot be published");
        }
        if !l3.hosts.contains_key(&ip) {
            return err(format!(
                "no container with address {ip} in network {network:?} (see `vswitch network inspect {network}`)"
            ));
        }
        let host_ip: Option<Ipv4Addr> = host_ip
            .map(|s| {
                s.parse()
                    .map_err(|_| CmdError(format!("--host-ip {s:?} is not an IPv4 address")))
            })
            .transpose()?;
        let snat = self.uplink.as_ref().map(|u| u.snat);
        let candidates: Vec<u16> = match host_port {
            Some(r) => {
                let (lo, hi) = config::parse_port_range(r)?;
                (lo..=hi).collect()
            }
            None => Vec::new(),
        };
        let in_snat = |p: u16| snat.is_some_and(|(lo, hi)| (lo..=hi).contains(&p));
        let listen_ip = host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let target_addr = SocketAddr::from((ip, port));
        let mut chosen: Option<(u16, Option<Proxy>)> = None;
        let mut last_err = String::new();
        let proxies = &self.proxies;
        let try_port = |p: u16| -> Result<Option<Proxy>, String> {
            if !bind_host {
                return Ok(None);
            }
            match proto {
                Proto::Tcp => proxies
                    .start(SocketAddr::from((listen_ip, p)), target_addr)
                    .map(Some),
                Proto::Udp => std::net::UdpSocket::bind((listen_ip, p))
                    .map(|_| None)
                    .map_err(|e| format!("host port {p}/udp is in use on the host ({e})")),
            }
        };
        if candidates.is_empty() {
            // A free port the kernel picks for us: bound, so free on the host.
            for _ in 0..16 {
                match try_port(0) {
                    Ok(proxy) => {
                        let p = match (&proxy, proto) {
                            (Some(px), _) => px.port(),
                            _ => std::net::UdpSocket::bind((listen_ip, 0))
                                .and_then(|s| s.local_addr())
                                .map(|a| a.port())
                                .unwrap_or(0),
                        };
                        if p != 0 && !in_snat(p) && !self.published.contains_key(&(proto, p)) {
                            chosen = Some((p, proxy));
                            break;
                        }
                    }
                    Err(e) => last_err = e,
                }
            }
        } else {
            for p in candidates {
                if in_snat(p) {
                    last_err = format!("host port {p} is in the uplink's SNAT range");
                    continue;
                }
                if self.published.contains_key(&(proto, p)) {
                    last_err = format!("host port {p}/{proto} is already published");
                    continue;
                }
                match try_port(p) {
                    Ok(proxy) => {
                        chosen = Some((p, proxy));
                        break;
                    }
                    Err(e) => last_err = e,
                }
            }
        }
        let Some((hp, proxy)) = chosen else {
            return err(if last_err.is_empty() {
                "no free host port".to_string()
            } else {
                last_err
            });
        };
        self.published.insert(
            (proto, hp),
            PubRec {
                network: network.to_string(),
                ip,
                port,
                bind_host,
                host_ip,
                _proxy: proxy,
            },
        );
        // A port the switch binds is one element added to the guard; one a
        // runtime holds also changes the host's own path to it, and a
        // refused element falls back to rewriting both whole.
        if !bind_host || self.guard_port(true, proto, hp, host_ip).is_err() {
            if let Err(e) = self.reapply_guard() {
                self.published.remove(&(proto, hp));
                return Err(e);
            }
        }
        self.publish();
        tracing::info!(network, %proto, host_port = hp, target = %target_addr, "port published");
        Ok(PublishedPort {
            host_port: hp,
            proto,
            target: target_addr.to_string(),
        })
    }

    pub(super) fn unpublish(
        &mut self,
        network: &str,
        host_port: u16,
        proto: Proto,
    ) -> Result<(), CmdError> {
        match self.published.get(&(proto, host_port)) {
            Some(p) if p.network == network => {}
            _ => {
                return err(format!(
                    "{proto} port {host_port} is not published by network {network:?} (see `vswitch network inspect {network}`)"
                ))
            }
        }
        let Some(rec) = self.published.remove(&(proto, host_port)) else {
            return Ok(());
        };
        self.publish();
        // As for publishing: one element for a port the switch bound, else
        // (or if the element is refused) the guard rewritten without it.
        if rec.bind_host
            && self
                .guard_port(false, proto, host_port, rec.host_ip)
                .is_ok()
        {
            return Ok(());
        }
        self.reapply_guard()
    }

    /// Adds (`add`) or removes the uplink guard's element of published
    /// port `(proto, port)` on `host_ip` (`None`: every host address); no
    /// uplink, nothing to do.
    fn guard_port(
        &self,
        add: bool,
        proto: Proto,
        port: u16,
        host_ip: Option<Ipv4Addr>,
    ) -> Result<(), CmdError> {
        let Some(u) = &self.uplink else {
            return Ok(());
        };
        self.host
            .nft(&u.guard.element_script(add, proto, port, host_ip))
            .map_err(|e| {
                tracing::debug!(error = %e, "guard: one element refused; rewriting the table");
                CmdError(e)
            })
    }

    pub(super) fn conntrack_show(&self) -> ConntrackReport {
        let now = self.clock.now_secs();
        let (flows, table_bytes) = self.workers.flows();
        let max = self.tables.ct.max();
        let bytes_per_flow = table_bytes / max.max(1);
        let side = |s: &Side| match s {
            Side::Uplink => "uplink".to_string(),
            Side::Container { net, mac } => format!("{}/{}", self.net_name(*net), mac),
        };
        let list: Vec<_> = flows
            .iter()
            .map(|(worker, f)| FlowInfo {
                orig: tuple_info(&f.orig),
                reply: tuple_info(&f.reply),
                state: f.state,
                from: side(&f.orig_side),
                to: side(&f.reply_side),
                age_secs: now.saturating_sub(f.last_seen),
                packets: f.packets,
                worker: *worker,
            })
            .collect();
        let st = &self.tables.ct.stats;
        ConntrackReport {
            flows: list,
            count: flows.len(),
            max,
            bytes_per_flow,
            created: st.created.load(std::sync::atomic::Ordering::Relaxed),
            expired: st.expired.load(std::sync::atomic::Ordering::Relaxed),
            refused_full: st.full.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

fn tuple_info(t: &vswitch_engine::conntrack::Tuple) -> TupleInfo {
    let proto = match t.proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        _ => "other",
    };
    TupleInfo {
        proto: proto.to_string(),
        src: format!("{}:{}", Ipv4Addr::from(t.src), t.sport),
        dst: format!("{}:{}", Ipv4Addr::from(t.dst), t.dport),
    }
}
