//! The control plane's state: networks, ports, attachments. Only the control
//! thread (and its housekeeping timer) touch it, under one mutex; workers see
//! the snapshots it publishes and the FDB, never this.
use crate::api::{AttachKind, FdbInfo, NetworkInfo, PortInfo, Proto, Request, Response};
use crate::config::{self, Config, Driver, NetworkConfig, PortKind, UplinkConfig};
use crate::netns;
use crate::uplink::{Guard, Proxy};
use crate::workers::Workers;
use crossbeam::channel::Receiver;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use vswitch_engine::clock::{Clock, MonotonicClock};
use vswitch_engine::conntrack::{Flow, Side, EXPIRE_STEP};
use vswitch_engine::fdb::{NetId, MAX_NETWORKS};
use vswitch_engine::pipeline::vxlan::{is_remote, REMOTE_BASE};
use vswitch_engine::port::{Port, PortCaps, PortId};
use vswitch_engine::stats::PortStats;
use vswitch_engine::tables::{L3View, OverlayView, Prefix, Published, Route, UplinkView};
use vswitch_engine::tables::{NetworkView, PortView, Snapshot, Tables, MAX_PORTS};
use vswitch_engine::wire::mac::Mac;
use vswitch_engine::worker::{Command, Event};
use vswitch_io::afxdp::{AfXdpConfig, AfXdpPort};
use vswitch_io::placement::Plan;
use vswitch_io::tap::TapPort;

/// How often `vswitch run` calls [`State::housekeeping`].
pub const HOUSEKEEPING_TICK: std::time::Duration = std::time::Duration::from_millis(100);
/// Housekeeping ticks over which conntrack expiry visits every flow once.
const EXPIRY_TICKS_PER_PASS: usize = 10;

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

#[path = "sync.rs"]
mod sync;

#[derive(Debug, Clone)]
struct Net {
    id: NetId,
    cfg: NetworkConfig,
    l3: Option<NetL3>,
    /// Static IP → MAC bindings (`fdb add --ip`): ARP suppression.
    arp: BTreeMap<Ipv4Addr, Mac>,
}

/// A network's gateway side.
#[derive(Debug, Clone)]
struct NetL3 {
    subnet: ipnetwork::Ipv4Network,
    gw: Ipv4Addr,
    gw_mac: Mac,
    /// The host's interface on the network (a TAP the switch holds).
    host_port: Option<PortId>,
    /// Container addresses: IP → (MAC, "netns:ifname").
    hosts: BTreeMap<Ipv4Addr, (Mac, String)>,
}

#[derive(Debug, Clone)]
struct Attachment {
    netns: String,
    ifname: String,
    ip: Option<Ipv4Addr>,
    mac: Mac,
}

/// The uplink and what the switch knows of the host's routing.
struct UplinkRec {
    cfg: UplinkConfig,
    port: PortId,
    index: u32,
    mac: Mac,
    snat_ip: Ipv4Addr,
    snat_is_local: bool,
    vtep: Ipv4Addr,
    mtu: u32,
    local: Vec<Ipv4Addr>,
    snat: (u16, u16),
    routes: Vec<netns::V4Route>,
    neigh: BTreeMap<Ipv4Addr, [u8; 6]>,
    guard: Guard,
}

/// A published port.
struct PubRec {
    network: String,
    ip: Ipv4Addr,
    port: u16,
    host_ip: Option<Ipv4Addr>,
    _proxy: Option<Proxy>,
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
    /// Made by the switch itself (a network's host interface, the uplink).
    system: bool,
}

/// The control plane.
pub struct State {
    tables: Arc<Tables>,
    workers: Workers,
    events: Receiver<Event>,
    clock: Arc<dyn Clock>,
    networks: BTreeMap<String, Net>,
    ports: BTreeMap<PortId, PortRec>,
    next_port: PortId,
    uplink: Option<UplinkRec>,
    published: BTreeMap<(Proto, u16), PubRec>,
    last_refresh: std::time::Instant,
    /// Remote VTEPs ever named by an overlay network; VTEP `i` is port
    /// `REMOTE_BASE + i` in the FDB. Append-only, so FDB entries stay valid.
    vteps: Vec<Ipv4Addr>,
    /// The peer-table sync agent, when `[cluster]` is configured.
    cluster: Option<vswitch_overlay::Cluster>,
    /// Views from the agent, until `server` takes the channel.
    views: Option<crossbeam::channel::Receiver<vswitch_overlay::View>>,
    /// What the cluster programmed.
    synced: sync::Synced,
}

/// The GSO size for an interface vswitch makes on network `cfg`: on an
/// overlay, segments sized to leave as one UDP GSO datagram each
/// (`overlay_gso_max_size`); elsewhere the kernel's default.
fn interface_gso(cfg: &NetworkConfig) -> Option<u32> {
    (cfg.driver == Driver::Overlay)
        .then(|| vswitch_engine::pipeline::vxlan::overlay_gso_max_size(cfg.mtu))
        .flatten()
}

impl State {
    /// Starts the workers and applies the configuration.
    /// `plan`: where threads run (the calling thread has entered its
    /// control cores).
    pub fn start(cfg: &Config, plan: Plan) -> Result<Self, CmdError> {
        cfg.validate()?;
        let tables = Arc::new(Tables::with_conntrack(
            cfg.switch.fdb_capacity,
            cfg.switch.max_flows,
        ));
        let advice = vswitch_io::hugepage::advise(&tables.ct.lock().regions());
        tracing::debug!(?advice, "conntrack table: huge page advice");
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
        let (ev_tx, ev_rx) = crossbeam::channel::unbounded();
        let workers = Workers::start(cfg, plan, &tables, &clock, ev_tx).map_err(CmdError)?;
        let mut s = Self {
            tables,
            workers,
            events: ev_rx,
            clock,
            networks: BTreeMap::new(),
            ports: BTreeMap::new(),
            next_port: 1,
            uplink: None,
            published: BTreeMap::new(),
            last_refresh: std::time::Instant::now(),
            vteps: Vec::new(),
            cluster: None,
            views: None,
            synced: sync::Synced::default(),
        };
        for n in &cfg.networks {
            s.network_create(n.clone())?;
        }
        for p in &cfg.ports {
            if p.kind == PortKind::Packet {
                return err(format!(
                    "port {:?}: kind \"packet\" is for the [uplink] only",
                    p.iface
                ));
            }
            s.port_add(&p.network, &p.iface, p.kind, p.worker, None)?;
        }
        if let Some(u) = &cfg.uplink {
            s.uplink_add(u.clone())?;
        }
        if let Some(c) = &cfg.cluster {
            let (cl, views) = sync::start(c)?;
            s.cluster = Some(cl);
            s.views = Some(views);
            s.sync_local();
        }
        Ok(s)
    }

    /// The channel of cluster views (taken once, by the sync thread).
    pub fn take_views(&mut self) -> Option<crossbeam::channel::Receiver<vswitch_overlay::View>> {
        self.views.take()
    }

    /// Answers one request.
    pub fn handle(&mut self, req: Request) -> Response {
        // Only a change can change what this host announces to the cluster.
        let query = req.is_query();
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
            Request::FdbAdd {
                network,
                mac,
                port,
                vtep,
                ip,
            } => self
                .fdb_add(
                    &network,
                    &mac,
                    port.as_deref(),
                    vtep.as_deref(),
                    ip.as_deref(),
                )
                .map(|_| json!(null)),
            Request::FdbRm { network, mac } => self.fdb_rm(&network, &mac).map(|_| json!(null)),
            Request::Stats => Ok(self.stats()),
            Request::UplinkAdd(c) => self.uplink_add(c).map(|_| self.uplink_show()),
            Request::UplinkRm => self.uplink_rm().map(|_| json!(null)),
            Request::UplinkShow => Ok(self.uplink_show()),
            Request::Publish {
                network,
                target,
                host_port,
                proto,
                host_ip,
            } => self.publish_port(
                &network,
                &target,
                host_port.as_deref(),
                proto,
                host_ip.as_deref(),
            ),
            Request::Unpublish {
                network,
                host_port,
                proto,
            } => self
                .unpublish(&network, host_port, proto)
                .map(|_| json!(null)),
            Request::ConntrackShow => Ok(self.conntrack_show()),
            Request::PeerAdd { network, vtep } => {
                self.peer_add(&network, &vtep).map(|_| json!(null))
            }
            Request::PeerRm { network, vtep } => self.peer_rm(&network, &vtep).map(|_| json!(null)),
            Request::PeerLs => Ok(self.peer_ls()),
            Request::Peers => self.peers_status(),
        };
        if !query {
            self.sync_local();
            self.reapply_view();
        }
        match r {
            Ok(data) => Response {
                ok: true,
                error: None,
                data,
            },
            Err(e) => Response::error(e.0),
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
        let mut published = vswitch_engine::tables::FastMap::default();
        for ((proto, hp), p) in &self.published {
            if let Some(n) = self.networks.get(&p.network) {
                published.insert(
                    (proto.number(), *hp),
                    Published {
                        host_ip: p.host_ip.map(u32::from),
                        net: n.id,
                        ip: u32::from(p.ip),
                        port: p.port,
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
    }

    fn network_create(&mut self, mut c: NetworkConfig) -> Result<(), CmdError> {
        config::validate_network(&c)?;
        if c.mtu == 0 {
            c.mtu = if c.driver == Driver::Overlay {
                1450
            } else {
                1500
            };
        }
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
            if c.gateway.is_none() {
                c.gateway = sn.nth(1).map(|g| g.to_string());
            }
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
        let Some(id) = (0..MAX_NETWORKS as NetId).find(|i| !used.contains(i)) else {
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
        if let Err(e) = self.make_host_interface(&name, id, mtu) {
            let _ = self.network_rm(&name);
            return Err(e);
        }
        Ok(())
    }

    /// Gives the host an interface on an L3 network (a TAP with the gateway
    /// address, as docker0 has), so host processes reach containers.
    fn make_host_interface(&mut self, name: &str, id: NetId, mtu: u32) -> Result<(), CmdError> {
        let Some(net) = self.networks.get(name) else {
            return Ok(());
        };
        let Some(l3) = net.l3.clone() else {
            return Ok(());
        };
        let gso = interface_gso(&net.cfg);
        let ifname = format!("vsgw{id}");
        if netns::link_exists(&ifname) {
            return err(format!(
                "interface {ifname} already exists (another vswitch in this namespace?); remove it or run one switch per namespace"
            ));
        }
        let port = self.port_add(name, &ifname, PortKind::Tap, None, None)?;
        if let Some(p) = self.ports.get_mut(&port) {
            p.system = true;
        }
        netns::quiet_host_end(&ifname);
        netns::configure(
            None,
            &ifname,
            &ifname,
            l3.gw_mac.bytes(),
            mtu,
            gso,
            vec![(std::net::IpAddr::V4(l3.gw), l3.subnet.prefix())],
        )?;
        if let Some(n) = self.networks.get_mut(name).and_then(|n| n.l3.as_mut()) {
            n.host_port = Some(port);
        }
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
            self.remove_port(p);
        }
        self.networks.remove(name);
        self.publish();
        self.tables.fdb.retain_not(0, |e| e.net == id);
        self.tables.ct.lock().remove_if(|f| touches_net(f, id));
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
        let n = &self.networks[name];
        let containers: Vec<_> = n
            .l3
            .iter()
            .flat_map(|l| l.hosts.iter())
            .map(|(ip, (mac, at))| json!({ "ip": ip.to_string(), "mac": mac.to_string(), "attached": at }))
            .collect();
        let published: Vec<_> = self
            .published
            .iter()
            .filter(|(_, p)| p.network == name)
            .map(|((proto, hp), p)| {
                json!({
                    "proto": proto,
                    "host_port": hp,
                    "host_ip": p.host_ip.map(|i| i.to_string()),
                    "target": format!("{}:{}", p.ip, p.port),
                })
            })
            .collect();
        Ok(json!({
            "network": info,
            "gateway_mac": n.l3.as_ref().map(|l| l.gw_mac.to_string()),
            "containers": containers,
            "published": published,
            "ports": ports,
        }))
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
        if kind != PortKind::Packet && !self.networks.contains_key(network) {
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
            PortKind::Packet => (
                Box::new(TapPort::open_packet(iface)?),
                "af_packet vnet_hdr tso csum".to_string(),
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
            system: false,
        };
        tracing::info!(port = id, iface, %kind, network, worker, "port added");
        self.ports.insert(id, rec);
        self.publish();
        self.workers.send(worker, Command::AddPort { id, port });
        Ok(id)
    }

    fn remove_port(&mut self, id: PortId) -> Option<PortRec> {
        let rec = self.ports.remove(&id)?;
        self.publish();
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.workers
            .send(rec.worker, Command::RemovePort { id, ack: tx });
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
        if self.ports[&id].system {
            return err(format!(
                "port {iface:?} belongs to the switch (a network's host interface or the uplink); \
                 it goes with `network rm` or `uplink rm`"
            ));
        }
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
        let seq = self.next_port;
        let host = format!("vsh{seq}x{}", std::process::id() % 1000);
        let tmp = format!("vsc{seq}x{}", std::process::id() % 1000);
        let attach = Some(Attachment {
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
                netns::create_veth(&host, &tmp, ns, mtu)?;
                netns::quiet_host_end(&host);
                netns::configure(Some(ns), &tmp, ifname, mac.bytes(), mtu, gso, addrs)?;
                if let Some(g) = gw {
                    netns::add_default_route(ns, g)?;
                }
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
                netns::configure(Some(ns), &tmp, ifname, mac.bytes(), mtu, gso, addrs)?;
                if let Some(g) = gw {
                    netns::add_default_route(ns, g)?;
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
                Ok(json!({
                    "port": id,
                    "mac": mac.to_string(),
                    "ip": ipam.map(|i| i.to_string()),
                    "gateway": gw.map(|g| g.to_string()),
                }))
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
        let ip = rec.attach.as_ref().and_then(|a| a.ip);
        let net_id = self.networks.get(network).map(|n| n.id);
        if let (Some(ip), Some(l3)) = (
            ip,
            self.networks.get_mut(network).and_then(|n| n.l3.as_mut()),
        ) {
            if let Some((mac, _)) = l3.hosts.remove(&ip) {
                if let Some(nid) = net_id {
                    self.tables
                        .ct
                        .lock()
                        .remove_if(|f| touches_container(f, nid, mac));
                }
            }
            self.publish();
        }
        match rec.kind {
            // Deleting the host end deletes its peer in the container too.
            PortKind::Afxdp => {
                netns::delete_link(None, &rec.iface)?;
            }
            // The TAP disappeared when the port (its fd) was dropped.
            PortKind::Tap => {
                let _ = netns::delete_link(Some(ns), ifname);
            }
            PortKind::Packet => {}
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

    fn fdb_target(&self, network: &str, mac: &str) -> Result<(NetId, Mac), CmdError> {
        let Some(net) = self.networks.get(network) else {
            return err(format!("no network {network:?} (see `vswitch network ls`)"));
        };
        let mac: Mac = mac
            .parse()
            .map_err(|e: vswitch_engine::wire::mac::MacParseError| CmdError(e.to_string()))?;
        Ok((net.id, mac))
    }

    fn fdb_add(
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
        if let Some(ip) = ip {
            if let Some(n) = self.networks.get_mut(network) {
                n.arp.insert(ip, mac);
            }
            self.publish();
        }
        Ok(())
    }

    fn local_port_of(&self, network: &str, port: &str) -> Result<PortId, CmdError> {
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
        Ok(p.id)
    }

    fn fdb_rm(&mut self, network: &str, mac: &str) -> Result<(), CmdError> {
        let (net, mac) = self.fdb_target(network, mac)?;
        if !self.tables.fdb.remove(net, mac) {
            return err(format!("{mac} is not in the FDB of {network:?}"));
        }
        if let Some(n) = self.networks.get_mut(network) {
            let before = n.arp.len();
            n.arp.retain(|_, m| *m != mac);
            if n.arp.len() != before {
                self.publish();
            }
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
        let workers = self.workers.stats();
        json!({ "ports": ports, "workers": workers })
    }

    /// Periodic work: FDB aging and worker events.
    pub fn housekeeping(&mut self) {
        let now = self.clock.now_secs();
        // A tenth of the table per tick: every flow is looked at once a
        // second, which the shortest timeout (10 s) does not notice, for a
        // tenth of the work of a full pass per tick (5 ms at 10^6 flows).
        let visit = (self.tables.ct.slots() / EXPIRY_TICKS_PER_PASS).max(EXPIRE_STEP);
        self.tables.ct.expire(now, visit);
        self.neighbour_work();
        let ages: BTreeMap<NetId, u32> = self
            .networks
            .values()
            .map(|n| (n.id, n.cfg.aging_secs))
            .collect();
        // A slice per tick too, so that a pass over the table takes a tenth of
        // the shortest aging time (1 to 30 s): an entry outlives its aging
        // time by at most that, and an idle switch does not read the whole
        // table (4 MiB by default, cold in cache) ten times a second.
        let aged = match ages.values().copied().filter(|a| *a > 0).min() {
            Some(shortest) => {
                let pass_ms = u128::from(shortest) * 100;
                let ticks = (pass_ms / HOUSEKEEPING_TICK.as_millis().max(1)).clamp(10, 300);
                let slice = self.tables.fdb.buckets().div_ceil(ticks as usize);
                self.tables
                    .fdb
                    .age_some(now, slice, |net| ages.get(&net).copied().filter(|a| *a > 0))
            }
            None => 0,
        };
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
            // A port that died takes its endpoints with it.
            self.sync_local();
        }
    }

    /// Stops the workers and removes every interface `attach` created.
    pub fn shutdown(&mut self) {
        // Leave first: the other hosts withdraw this one's entries at once.
        if let Some(mut c) = self.cluster.take() {
            c.stop();
        }
        self.published.clear();
        if let Some(u) = self.uplink.take() {
            u.guard.remove();
        }
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
        self.workers.stop_all();
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

fn touches_net(f: &Flow, net: NetId) -> bool {
    [f.orig_side, f.reply_side]
        .iter()
        .any(|s| matches!(s, Side::Container { net: n, .. } if *n == net))
}

fn touches_container(f: &Flow, net: NetId, mac: Mac) -> bool {
    [f.orig_side, f.reply_side]
        .iter()
        .any(|s| matches!(s, Side::Container { net: n, mac: m } if *n == net && *m == mac))
}

fn tuple_json(t: &vswitch_engine::conntrack::Tuple) -> serde_json::Value {
    let proto = match t.proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        _ => "other",
    };
    json!({
        "proto": proto,
        "src": format!("{}:{}", Ipv4Addr::from(t.src), t.sport),
        "dst": format!("{}:{}", Ipv4Addr::from(t.dst), t.dport),
    })
}

impl State {
    fn uplink_add(&mut self, c: UplinkConfig) -> Result<(), CmdError> {
        if let Some(u) = &self.uplink {
            return err(format!(
                "the uplink is already {:?}; `vswitch uplink rm` it first",
                u.cfg.iface
            ));
        }
        let info = netns::link_info(&c.iface)?;
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
        Guard::remove_stale();
        let guard = Guard::new(&c.iface);
        let pubs: Vec<_> = self.published_rules();
        let vx = c
            .vtep
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(snat_ip);
        guard
            .apply(
                snat_ip,
                snat,
                &local,
                &pubs,
                self.has_overlay().then_some(vx),
            )
            .map_err(CmdError)?;
        let port = self.port_add("(uplink)", &c.iface, PortKind::Packet, c.worker, None)?;
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

    fn uplink_rm(&mut self) -> Result<(), CmdError> {
        let Some(u) = self.uplink.take() else {
            return err("there is no uplink (see `vswitch uplink show`)");
        };
        u.guard.remove();
        self.remove_port(u.port);
        self.tables
            .ct
            .lock()
            .remove_if(|f| f.orig_side == Side::Uplink || f.reply_side == Side::Uplink);
        self.publish();
        Ok(())
    }

    fn uplink_show(&self) -> serde_json::Value {
        let Some(u) = &self.uplink else {
            return json!(null);
        };
        json!({
            "iface": u.cfg.iface,
            "mac": u.mac.to_string(),
            "snat_ip": u.snat_ip.to_string(),
            "snat_ports": format!("{}-{}", u.snat.0, u.snat.1),
            "vtep": u.vtep.to_string(),
            "mtu": u.mtu,
            "addresses": u.local.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "routes": u.routes.iter().map(|r| json!({
                "dst": format!("{}/{}", r.dst, r.len),
                "via": r.via.map(|v| v.to_string()),
            })).collect::<Vec<_>>(),
            "neighbours": u.neigh.iter().map(|(ip, m)| json!({
                "ip": ip.to_string(),
                "mac": Mac::from_bytes(m).to_string(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Re-reads the uplink's routes and next hops from the kernel, asks it
    /// to resolve gateways it does not know, and republishes on change.
    fn refresh_uplink(&mut self, force: bool) {
        let Some(u) = self.uplink.as_mut() else {
            return;
        };
        let routes = netns::routes_via(u.index).unwrap_or_default();
        let neigh: BTreeMap<Ipv4Addr, [u8; 6]> = netns::neighbours(u.index)
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
                let _ = netns::neighbour_use(u.index, g);
            }
        }
        if force || routes != u.routes || neigh != u.neigh {
            u.routes = routes;
            u.neigh = neigh;
            self.publish();
        }
        self.last_refresh = std::time::Instant::now();
    }

    fn neighbour_work(&mut self) {
        let mut wanted = std::collections::BTreeSet::new();
        while let Some(ip) = self.tables.neigh_wanted.pop() {
            wanted.insert(Ipv4Addr::from(ip));
        }
        let Some(u) = self.uplink.as_ref() else {
            return;
        };
        let index = u.index;
        for ip in &wanted {
            let _ = netns::neighbour_use(index, *ip);
        }
        if !wanted.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.refresh_uplink(false);
        } else if self.last_refresh.elapsed() >= std::time::Duration::from_millis(500) {
            self.refresh_uplink(false);
        }
    }

    fn published_rules(&self) -> Vec<(Proto, u16, Option<Ipv4Addr>)> {
        self.published
            .iter()
            .map(|((proto, hp), p)| (*proto, *hp, p.host_ip))
            .collect()
    }

    fn reapply_guard(&self) -> Result<(), CmdError> {
        if let Some(u) = &self.uplink {
            u.guard
                .apply(
                    u.snat_ip,
                    u.snat,
                    &u.local,
                    &self.published_rules(),
                    self.has_overlay().then_some(u.vtep),
                )
                .map_err(CmdError)?;
        }
        Ok(())
    }

    fn publish_port(
        &mut self,
        network: &str,
        target: &str,
        host_port: Option<&str>,
        proto: Proto,
        host_ip: Option<&str>,
    ) -> Result<serde_json::Value, CmdError> {
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
        let try_port = |p: u16| -> Result<Option<Proxy>, String> {
            match proto {
                Proto::Tcp => Proxy::start(SocketAddr::from((listen_ip, p)), target_addr).map(Some),
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
                host_ip,
                _proxy: proxy,
            },
        );
        if let Err(e) = self.reapply_guard() {
            self.published.remove(&(proto, hp));
            return Err(e);
        }
        self.publish();
        tracing::info!(network, %proto, host_port = hp, target = %target_addr, "port published");
        Ok(json!({ "host_port": hp, "proto": proto, "target": target_addr.to_string() }))
    }

    fn unpublish(&mut self, network: &str, host_port: u16, proto: Proto) -> Result<(), CmdError> {
        match self.published.get(&(proto, host_port)) {
            Some(p) if p.network == network => {}
            _ => {
                return err(format!(
                    "{proto} port {host_port} is not published by network {network:?} (see `vswitch network inspect {network}`)"
                ))
            }
        }
        self.published.remove(&(proto, host_port));
        self.publish();
        self.reapply_guard()
    }

    fn conntrack_show(&self) -> serde_json::Value {
        let now = self.clock.now_secs();
        let g = self.tables.ct.lock();
        let flows = g.flows();
        let bytes_per_flow = g.bytes_per_flow();
        let max = g.max();
        drop(g);
        let side = |s: &Side| match s {
            Side::Uplink => "uplink".to_string(),
            Side::Container { net, mac } => format!("{}/{}", self.net_name(*net), mac),
        };
        let list: Vec<_> = flows
            .iter()
            .map(|f| {
                json!({
                    "orig": tuple_json(&f.orig),
                    "reply": tuple_json(&f.reply),
                    "state": f.state,
                    "from": side(&f.orig_side),
                    "to": side(&f.reply_side),
                    "age_secs": now.saturating_sub(f.last_seen),
                    "packets": f.packets,
                })
            })
            .collect();
        let st = &self.tables.ct.stats;
        json!({
            "flows": list,
            "count": flows.len(),
            "max": max,
            "bytes_per_flow": bytes_per_flow,
            "created": st.created.load(std::sync::atomic::Ordering::Relaxed),
            "expired": st.expired.load(std::sync::atomic::Ordering::Relaxed),
            "refused_full": st.full.load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

impl State {
    fn has_overlay(&self) -> bool {
        self.networks
            .values()
            .any(|n| n.cfg.driver == Driver::Overlay)
    }

    /// The FDB port number of remote VTEP `ip` (registered on first use).
    fn vtep_port(&mut self, ip: &str) -> Result<PortId, CmdError> {
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

    fn overlay_net(&self, network: &str) -> Result<&Net, CmdError> {
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
    pub fn peer_ls(&self) -> serde_json::Value {
        let mut list = Vec::new();
        for n in self.networks.values() {
            if n.cfg.driver != Driver::Overlay {
                continue;
            }
            for p in self.overlay_peers(n) {
                let static_peer = n.cfg.peers.iter().any(|s| s.parse() == Ok(p));
                list.push(json!({
                    "network": n.cfg.name,
                    "vni": n.cfg.vni,
                    "vtep": p.to_string(),
                    "type": if static_peer { "static" } else { "synced" },
                }));
            }
        }
        json!(list)
    }
}
