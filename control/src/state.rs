//! The control plane's state: networks, ports, attachments. Only the control
//! thread (and its housekeeping timer) touch it, under one mutex; workers see
//! the snapshots it publishes and the FDB, never this.
use crate::api::{AttachKind, FdbInfo, NetworkInfo, PortInfo, Request, Response};
use crate::config::{self, Config, NetworkConfig, PortKind};
use crate::netns;
use crossbeam::channel::Receiver;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use vswitch_engine::clock::{Clock, MonotonicClock};
use vswitch_engine::fdb::{NetId, MAX_NETWORKS};
use vswitch_engine::port::{Port, PortCaps, PortId};
use vswitch_engine::stats::PortStats;
use vswitch_engine::tables::{NetworkView, PortView, Snapshot, Tables, MAX_PORTS};
use vswitch_engine::wire::mac::Mac;
use vswitch_engine::worker::{self, Command, Event, WorkerConfig, WorkerHandle};
use vswitch_io::afxdp::{AfXdpConfig, AfXdpPort};
use vswitch_io::tap::TapPort;

/// A failed command; the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CmdError(pub String);

impl From<netns::NetnsError> for CmdError {
    fn from(e: netns::NetnsError) -> Self {
        CmdError(e.to_string())
    }
}
impl From<vswitch_io::IoError> for CmdError {
    fn from(e: vswitch_io::IoError) -> Self {
        CmdError(e.to_string())
    }
}
impl From<config::ConfigError> for CmdError {
    fn from(e: config::ConfigError) -> Self {
        CmdError(e.to_string())
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, CmdError> {
    Err(CmdError(msg.into()))
}

#[derive(Debug, Clone)]
struct Net {
    id: NetId,
    cfg: NetworkConfig,
}

#[derive(Debug, Clone)]
struct Attachment {
    netns: String,
    ifname: String,
}

#[derive(Debug)]
struct PortRec {
    id: PortId,
    iface: String,
    kind: PortKind,
    net: String,
    worker: usize,
    caps: PortCaps,
    stats: Arc<PortStats>,
    gone: Option<String>,
    mode: String,
    attach: Option<Attachment>,
}

/// The control plane.
pub struct State {
    tables: Arc<Tables>,
    workers: Vec<WorkerHandle>,
    events: Receiver<Event>,
    clock: Arc<dyn Clock>,
    networks: BTreeMap<String, Net>,
    ports: BTreeMap<PortId, PortRec>,
    next_port: PortId,
}

impl State {
    /// Starts the workers and applies the configuration.
    pub fn start(cfg: &Config) -> Result<Self, CmdError> {
        cfg.validate()?;
        let tables = Arc::new(Tables::new(cfg.switch.fdb_capacity));
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
        let (ev_tx, ev_rx) = crossbeam::channel::unbounded();
        let shared =
            worker::shared_for(cfg.workers.len()).map_err(|e| CmdError(format!("eventfd: {e}")))?;
        let mut workers = Vec::new();
        for (id, w) in cfg.workers.iter().enumerate() {
            let wc = WorkerConfig {
                id,
                core: w.core,
                idle: w.idle,
            };
            workers.push(
                worker::spawn(
                    wc,
                    tables.clone(),
                    shared.clone(),
                    clock.clone(),
                    ev_tx.clone(),
                )
                .map_err(|e| CmdError(format!("cannot start worker {id}: {e}")))?,
            );
        }
        let mut s = Self {
            tables,
            workers,
            events: ev_rx,
            clock,
            networks: BTreeMap::new(),
            ports: BTreeMap::new(),
            next_port: 1,
        };
        for n in &cfg.networks {
            s.network_create(n.clone())?;
        }
        for p in &cfg.ports {
            s.port_add(&p.network, &p.iface, p.kind, p.worker, None)?;
        }
        Ok(s)
    }

    /// Answers one request.
    pub fn handle(&mut self, req: Request) -> Response {
        let r = match req {
            Request::NetworkCreate(c) => self.network_create(c).map(|_| json!(null)),
            Request::NetworkLs => Ok(json!(self.network_infos())),
            Request::NetworkInspect { name } => self.network_inspect(&name),
            Request::NetworkRm { name } => self.network_rm(&name).map(|_| json!(null)),
            Request::Attach {
                network,
                netns,
                ifname,
                kind,
                ip,
                mac,
            } => self.attach(
                &network,
                &netns,
                &ifname,
                kind,
                ip.as_deref(),
                mac.as_deref(),
            ),
            Request::Detach {
                network,
                netns,
                ifname,
            } => self.detach(&network, &netns, &ifname).map(|_| json!(null)),
            Request::PortAdd {
                network,
                iface,
                kind,
                worker,
            } => self
                .port_add(&network, &iface, kind, worker, None)
                .map(|id| json!({ "id": id })),
            Request::PortLs => Ok(json!(self.port_infos())),
            Request::PortRm { iface } => self.port_rm_by_name(&iface).map(|_| json!(null)),
            Request::FdbShow { network } => self.fdb_show(network.as_deref()).map(|v| json!(v)),
            Request::FdbAdd { network, mac, port } => {
                self.fdb_add(&network, &mac, &port).map(|_| json!(null))
            }
            Request::FdbRm { network, mac } => self.fdb_rm(&network, &mac).map(|_| json!(null)),
            Request::Stats => Ok(self.stats()),
        };
        match r {
            Ok(data) => Response {
                ok: true,
                error: None,
                data,
            },
            Err(e) => Response {
                ok: false,
                error: Some(e.0),
                data: json!(null),
            },
        }
    }

    fn publish(&self) {
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
        self.tables.publish(Snapshot {
            generation: 0,
            ports,
            networks,
        });
    }

    fn network_create(&mut self, c: NetworkConfig) -> Result<(), CmdError> {
        config::validate_network(&c)?;
        if self.networks.contains_key(&c.name) {
            return err(format!("network {:?} already exists", c.name));
        }
        let used: std::collections::HashSet<NetId> = self.networks.values().map(|n| n.id).collect();
        let Some(id) = (0..MAX_NETWORKS as NetId).find(|i| !used.contains(i)) else {
            return err(format!("too many networks (limit {MAX_NETWORKS})"));
        };
        // A fresh id must carry no entries of a network that used it before.
        self.tables.fdb.retain_not(0, |e| e.net == id);
        self.tables.fdb.set_limit(id, c.mac_limit);
        tracing::info!(network = %c.name, id, "network created");
        self.networks.insert(c.name.clone(), Net { id, cfg: c });
        self.publish();
        Ok(())
    }

    fn network_rm(&mut self, name: &str) -> Result<(), CmdError> {
        let Some(n) = self.networks.get(name) else {
            return err(format!("no network {name:?} (see `vswitch network ls`)"));
        };
        let users: Vec<_> = self
            .ports
            .values()
            .filter(|p| p.net == name)
            .map(|p| p.iface.clone())
            .collect();
        if !users.is_empty() {
            return err(format!(
                "network {name:?} still has ports {users:?}; detach or `port rm` them first"
            ));
        }
        let id = n.id;
        self.networks.remove(name);
        self.publish();
        self.tables.fdb.retain_not(0, |e| e.net == id);
        Ok(())
    }

    fn network_infos(&self) -> Vec<NetworkInfo> {
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

    fn network_inspect(&self, name: &str) -> Result<serde_json::Value, CmdError> {
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
        Ok(json!({ "network": info, "ports": ports }))
    }

    fn alloc_port_id(&mut self) -> Result<PortId, CmdError> {
        for _ in 0..MAX_PORTS {
            let id = self.next_port;
            self.next_port = if (self.next_port as usize) + 1 >= MAX_PORTS {
                1
            } else {
                self.next_port + 1
            };
            if !self.ports.contains_key(&id) {
                return Ok(id);
            }
        }
        err(format!("too many ports (limit {})", MAX_PORTS - 1))
    }

    fn pick_worker(&self, want: Option<usize>) -> Result<usize, CmdError> {
        if let Some(w) = want {
            if w >= self.workers.len() {
                return err(format!(
                    "worker {w} does not exist; this switch runs {} worker(s)",
                    self.workers.len()
                ));
            }
            return Ok(w);
        }
        Ok((0..self.workers.len())
            .min_by_key(|w| self.ports.values().filter(|p| p.worker == *w).count())
            .unwrap_or(0))
    }

    fn port_add(
        &mut self,
        network: &str,
        iface: &str,
        kind: PortKind,
        worker: Option<usize>,
        attach: Option<Attachment>,
    ) -> Result<PortId, CmdError> {
        if !self.networks.contains_key(network) {
            return err(format!(
                "no network {network:?} (create it with `vswitch network create {network}`)"
            ));
        }
        if self.ports.values().any(|p| p.iface == iface) {
            return err(format!("interface {iface:?} is already a port"));
        }
        let worker = self.pick_worker(worker)?;
        let id = self.alloc_port_id()?;
        let (port, mode): (Box<dyn Port>, String) = match kind {
            PortKind::Afxdp => {
                let p = AfXdpPort::open(&AfXdpConfig {
                    ifname: iface.to_string(),
                    queue: 0,
                })?;
                let m = p.mode();
                let mode = format!(
                    "xdp={} umem={}",
                    if m.native { "native" } else { "generic" },
                    if m.hugepages { "hugepages" } else { "pages" }
                );
                (Box::new(p), mode)
            }
            PortKind::Tap => (
                Box::new(TapPort::open(iface)?),
                "vnet_hdr tso csum".to_string(),
            ),
        };
        let rec = PortRec {
            id,
            iface: iface.to_string(),
            kind,
            net: network.to_string(),
            worker,
            caps: port.caps(),
            stats: Arc::new(PortStats::default()),
            gone: None,
            mode,
            attach,
        };
        tracing::info!(port = id, iface, %kind, network, worker, "port added");
        self.ports.insert(id, rec);
        self.publish();
        self.workers[worker].send(Command::AddPort { id, port });
        Ok(id)
    }

    fn remove_port(&mut self, id: PortId) -> Option<PortRec> {
        let rec = self.ports.remove(&id)?;
        self.publish();
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.workers[rec.worker].send(Command::RemovePort { id, ack: tx });
        if rx.recv_timeout(std::time::Duration::from_secs(5)).is_err() {
            tracing::warn!(port = id, "worker did not confirm port removal");
        }
        // The worker no longer receives on it: nothing can re-learn onto it.
        self.tables.fdb.retain_not(0, |e| e.port == id);
        Some(rec)
    }

    fn port_rm_by_name(&mut self, iface: &str) -> Result<(), CmdError> {
        let Some(id) = self.ports.values().find(|p| p.iface == iface).map(|p| p.id) else {
            return err(format!(
                "no port on interface {iface:?} (see `vswitch port ls`)"
            ));
        };
        if let Some(a) = &self.ports[&id].attach {
            return err(format!(
                "port {iface:?} was made by attach; use `vswitch detach {} --netns {} --ifname {}`",
                self.ports[&id].net, a.netns, a.ifname
            ));
        }
        self.remove_port(id);
        Ok(())
    }

    fn port_infos(&self) -> Vec<PortInfo> {
        self.ports
            .values()
            .map(|p| PortInfo {
                id: p.id,
                iface: p.iface.clone(),
                kind: p.kind,
                network: p.net.clone(),
                worker: p.worker,
                status: p
                    .gone
                    .as_ref()
                    .map_or("up".to_string(), |r| format!("gone: {r}")),
                mode: p.mode.clone(),
                attached: p
                    .attach
                    .as_ref()
                    .map(|a| format!("{}:{}", a.netns, a.ifname)),
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn attach(
        &mut self,
        network: &str,
        ns: &str,
        ifname: &str,
        kind: AttachKind,
        ip: Option<&str>,
        mac: Option<&str>,
    ) -> Result<serde_json::Value, CmdError> {
        let Some(net) = self.networks.get(network).cloned() else {
            return err(format!(
                "no network {network:?} (create it with `vswitch network create {network}`)"
            ));
        };
        netns::open_ns(ns)?;
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
        let addrs = match ip {
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
        let seq = self.next_port;
        let host = format!("vsh{seq}x{}", std::process::id() % 1000);
        let tmp = format!("vsc{seq}x{}", std::process::id() % 1000);
        let attach = Some(Attachment {
            netns: ns.to_string(),
            ifname: ifname.to_string(),
        });
        let mtu = net.cfg.mtu;
        let result = match kind {
            AttachKind::Veth => (|| {
                netns::create_veth(&host, &tmp, ns, mtu)?;
                netns::quiet_host_end(&host);
                netns::configure(ns, &tmp, ifname, mac.bytes(), mtu, addrs)?;
                let name = ifname.to_string();
                netns::with_ns(ns, move || {
                    vswitch_io::ethtool::set_tx_csum(&name, false)
                        .map_err(|e| netns::NetnsError::Other(e.to_string()))
                })?;
                self.port_add(network, &host, PortKind::Afxdp, None, attach)
            })(),
            AttachKind::Tap => (|| {
                let id = self.port_add(network, &tmp, PortKind::Tap, None, attach)?;
                netns::move_to_ns(&tmp, ns)?;
                netns::configure(ns, &tmp, ifname, mac.bytes(), mtu, addrs)?;
                Ok(id)
            })(),
        };
        match result {
            Ok(id) => Ok(json!({ "port": id, "mac": mac.to_string() })),
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
                let _ = netns::delete_link(None, &host);
                let _ = netns::delete_link(Some(ns), &tmp);
                Err(e)
            }
        }
    }

    fn detach(&mut self, network: &str, ns: &str, ifname: &str) -> Result<(), CmdError> {
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
        match rec.kind {
            // Deleting the host end deletes its peer in the container too.
            PortKind::Afxdp => {
                netns::delete_link(None, &rec.iface)?;
            }
            // The TAP disappeared when the port (its fd) was dropped.
            PortKind::Tap => {
                let _ = netns::delete_link(Some(ns), ifname);
            }
        }
        Ok(())
    }

    fn net_name(&self, id: NetId) -> String {
        self.networks
            .values()
            .find(|n| n.id == id)
            .map_or_else(|| format!("#{id}"), |n| n.cfg.name.clone())
    }

    fn fdb_show(&self, network: Option<&str>) -> Result<Vec<FdbInfo>, CmdError> {
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
                port: self
                    .ports
                    .get(&e.port)
                    .map_or_else(|| format!("#{}", e.port), |p| p.iface.clone()),
                kind: if e.is_static { "static" } else { "learned" }.into(),
                age_secs: e.age_secs,
            })
            .collect())
    }

    fn fdb_target(&self, network: &str, mac: &str) -> Result<(NetId, Mac), CmdError> {
        let Some(net) = self.networks.get(network) else {
            return err(format!("no network {network:?} (see `vswitch network ls`)"));
        };
        let mac: Mac = mac
            .parse()
            .map_err(|e: vswitch_engine::wire::mac::MacParseError| CmdError(e.to_string()))?;
        Ok((net.id, mac))
    }

    fn fdb_add(&mut self, network: &str, mac: &str, port: &str) -> Result<(), CmdError> {
        let (net, mac) = self.fdb_target(network, mac)?;
        let Some(p) = self.ports.values().find(|p| {
            p.iface == port
                || p.attach
                    .as_ref()
                    .is_some_and(|a| format!("{}:{}", a.netns, a.ifname) == port)
        }) else {
            return err(format!("no port {port:?} (give the switch-side interface or NETNS:IFNAME from `vswitch port ls`)"));
        };
        if p.net != network {
            return err(format!(
                "port {port:?} is in network {:?}, not {network:?}",
                p.net
            ));
        }
        self.tables
            .fdb
            .add_static(net, mac, p.id)
            .map_err(|e| CmdError(e.to_string()))
    }

    fn fdb_rm(&mut self, network: &str, mac: &str) -> Result<(), CmdError> {
        let (net, mac) = self.fdb_target(network, mac)?;
        if !self.tables.fdb.remove(net, mac) {
            return err(format!("{mac} is not in the FDB of {network:?}"));
        }
        Ok(())
    }

    fn stats(&self) -> serde_json::Value {
        let ports: Vec<_> = self
            .ports
            .values()
            .map(|p| {
                json!({
                    "port": p.iface,
                    "network": p.net,
                    "kind": p.kind,
                    "attached": p.attach.as_ref().map(|a| format!("{}:{}", a.netns, a.ifname)),
                    "stats": p.stats.snapshot(),
                })
            })
            .collect();
        let workers: Vec<_> = self
            .workers
            .iter()
            .map(|w| {
                json!({
                    "id": w.config.id,
                    "core": w.config.core,
                    "idle": w.config.idle,
                    "loops": w.shared.loops.load(std::sync::atomic::Ordering::Relaxed),
                    "busy_loops": w.shared.busy_loops.load(std::sync::atomic::Ordering::Relaxed),
                    "sleeps": w.shared.sleeps.load(std::sync::atomic::Ordering::Relaxed),
                })
            })
            .collect();
        json!({ "ports": ports, "workers": workers })
    }

    /// Periodic work: FDB aging and worker events.
    pub fn housekeeping(&mut self) {
        let now = self.clock.now_secs();
        let ages: BTreeMap<NetId, u32> = self
            .networks
            .values()
            .map(|n| (n.id, n.cfg.aging_secs))
            .collect();
        let aged = self
            .tables
            .fdb
            .age(now, |net| ages.get(&net).copied().filter(|a| *a > 0));
        if aged > 0 {
            tracing::debug!(aged, "FDB entries aged out");
        }
        let mut changed = false;
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                Event::PortGone { id, reason } => {
                    if let Some(p) = self.ports.get_mut(&id) {
                        tracing::warn!(port = %p.iface, %reason, "port gone; remove it with `port rm` or `detach`");
                        p.gone = Some(reason);
                        changed = true;
                    }
                    self.tables.fdb.retain_not(0, |e| e.port == id);
                }
            }
        }
        if changed {
            self.publish();
        }
    }

    /// Stops the workers and removes every interface `attach` created.
    pub fn shutdown(&mut self) {
        let attached: Vec<(String, String, String)> = self
            .ports
            .values()
            .filter_map(|p| {
                p.attach
                    .as_ref()
                    .map(|a| (p.net.clone(), a.netns.clone(), a.ifname.clone()))
            })
            .collect();
        for (n, ns, i) in attached {
            if let Err(e) = self.detach(&n, &ns, &i) {
                tracing::warn!(error = %e, "detach at shutdown");
            }
        }
        for w in &mut self.workers {
            w.stop();
        }
    }
}

/// A stable, locally administered MAC for an attachment.
fn derived_mac(network: &str, ns: &str, ifname: &str) -> Mac {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (network, ns, ifname).hash(&mut h);
    let v = h.finish() & 0xff_ffff_ffff;
    Mac(0x0200_0000_0000 | v)
}
