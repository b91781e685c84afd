//! The control plane's state: networks, ports, attachments, published ports,
//! the uplink, what the cluster programmed. One thread owns it
//! (`server::control_loop`) and no lock guards it; workers see the snapshots
//! it publishes and the FDB, never this. Each concern is a module below;
//! side effects on the host go through [`Host`], and what the switch has been
//! told is saved in the state directory before a change is answered
//! (`persist`).
use crate::api::{
    AttachKind, FdbInfo, NetworkInfo, PortAdded, PortInfo, Proto, Reply, Request, Response,
};
use crate::config::{self, Config, Driver, NetworkConfig, PortKind, UplinkConfig};
use crate::host::Host;
use crate::netns;
use crate::proxy::{Proxies, Proxy};
use crate::uplink::Guard;
use crate::workers::Workers;
use crossbeam::channel::Receiver;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use vswitch_engine::clock::{Clock, MonotonicClock};
use vswitch_engine::conntrack::{Conntrack, Flow, Side};
use vswitch_engine::fdb::{NetId, MAX_NETWORKS};
use vswitch_engine::pipeline::vxlan::{is_remote, REMOTE_BASE};
use vswitch_engine::port::{Port, PortCaps, PortId};
use vswitch_engine::stats::PortStats;
use vswitch_engine::tables::{L3View, OverlayView, Prefix, Published, Route, UplinkView};
use vswitch_engine::tables::{NetworkView, PortView, Snapshot, Tables, MAX_PORTS};
use vswitch_engine::wire::mac::Mac;
use vswitch_engine::worker::{Command, Event};
use vswitch_io::placement::Plan;

/// How often `vswitch run` calls [`State::housekeeping`].
pub const HOUSEKEEPING_TICK: std::time::Duration = std::time::Duration::from_millis(100);

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

mod attach;
mod carried;
mod dns;
mod fdb;
mod housekeeping;
mod nat;
mod networks;
mod peers;
mod persist;
mod ports;
mod snapshot;
mod sync;
#[cfg(test)]
mod tests;

use crate::store::{Desired, SavedFdb, Store};
use attach::{derived_mac, Placement};
use ports::NewPort;

#[derive(Debug, Clone)]
struct Net {
    id: NetId,
    cfg: NetworkConfig,
    l3: Option<NetL3>,
    /// Static IP → MAC bindings (`fdb add --ip`): ARP suppression.
    arp: BTreeMap<Ipv4Addr, Mac>,
    /// Named by the config file.
    from_config: bool,
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
    kind: AttachKind,
    /// Who made it (a CNI container or Docker endpoint id).
    owner: Option<String>,
    /// Names it goes by on the network.
    aliases: Vec<String>,
    /// The container's namespace (a handoff's: empty until the runtime
    /// says where it put the interface).
    netns: String,
    /// The interface's name in it (a handoff's: its name in the switch's
    /// namespace, which the runtime gives back when it returns it).
    ifname: String,
    ip: Option<Ipv4Addr>,
    mac: Mac,
    /// Made in the switch's namespace for a runtime to move (Docker).
    handoff: bool,
}

impl Attachment {
    /// `NETNS:IFNAME`, or a handoff's name while the runtime has not put
    /// it anywhere.
    fn label(&self) -> String {
        if self.netns.is_empty() {
            self.ifname.clone()
        } else {
            format!("{}:{}", self.netns, self.ifname)
        }
    }
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
    /// Named by the config file.
    from_config: bool,
}

/// A published port.
struct PubRec {
    network: String,
    ip: Ipv4Addr,
    port: u16,
    host_ip: Option<Ipv4Addr>,
    /// The switch bound the host port (and proxies the host's processes).
    bind_host: bool,
    _proxy: Option<Proxy>,
}

#[derive(Debug)]
struct PortRec {
    id: PortId,
    iface: String,
    kind: PortKind,
    net: String,
    worker: usize,
    /// The worker asked for (`None`: the least loaded).
    want_worker: Option<usize>,
    caps: PortCaps,
    stats: Arc<PortStats>,
    gone: Option<String>,
    mode: String,
    attach: Option<Attachment>,
    /// Made by the switch itself (a network's host interface, the uplink).
    system: bool,
    /// Named by the config file's `[[ports]]`.
    from_config: bool,
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
    /// Where the desired state is kept.
    store: Store,
    /// Static FDB entries as given, and the local port they point at.
    statics: BTreeMap<(String, Mac), (SavedFdb, Option<PortId>)>,
    /// Putting back saved state: interfaces that exist are taken over.
    restoring: bool,
    /// The host's own path to published ports may be installed (an earlier
    /// switch process may have left it): the next change rewrites it.
    had_local_dnat: std::cell::Cell<bool>,
    /// The listeners of published ports the switch binds.
    proxies: Proxies,
    /// The networks' resolver, and the names last handed to it.
    dns: crate::dns::Resolver,
    dns_published: std::cell::RefCell<Vec<crate::dns::NetZone>>,
    /// Where the resolver asks names that are not the networks' own (the
    /// host's `/etc/resolv.conf` at start).
    upstreams: Vec<SocketAddr>,
    /// Where side effects on the host go.
    host: Box<dyn Host>,
    /// Connections of an earlier process waiting for their ports.
    carried: carried::Carried,
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
    /// Starts the workers, puts back the saved state `saved` (kept in
    /// `store` from now on) and applies the configuration over it; the
    /// connection table lives in the file `flows`.
    /// `plan`: where threads run (the calling thread has entered its
    /// control cores).
    pub fn start(
        cfg: &Config,
        plan: Plan,
        store: Store,
        saved: Option<Desired>,
        flows: &std::path::Path,
        host: Box<dyn Host>,
    ) -> Result<Self, CmdError> {
        cfg.validate()?;
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
        // The workers' connection tables live in the flow file, one section
        // each; the flows an earlier process left are taken over before
        // their containers' ports receive a packet (see `carried`), so a
        // packet cannot make a flow anew with another translation.
        let opened = vswitch_io::flowfile::open(flows, cfg.switch.max_flows, cfg.workers.len())?;
        if let Some(why) = &opened.unreadable {
            tracing::warn!(file = %flows.display(), "connections of the previous switch not taken over: {why}");
        }
        if !opened.carried.is_empty() {
            tracing::info!(
                flows = opened.carried.len(),
                "connections of the previous switch found; each goes back to its container's worker"
            );
        }
        let tables = Arc::new(Tables::with_tracker(
            cfg.switch.fdb_capacity,
            Conntrack::new(cfg.switch.max_flows),
        ));
        let (ev_tx, ev_rx) = crossbeam::channel::unbounded();
        let workers =
            Workers::start(cfg, plan, &tables, &clock, ev_tx, opened.memory).map_err(CmdError)?;
        let proxies =
            Proxies::new().map_err(|e| CmdError(format!("cannot start the proxy thread: {e}")))?;
        let dns = crate::dns::Resolver::start(cfg.dns)
            .map_err(|e| CmdError(format!("cannot start the resolver thread: {e}")))?;
        let upstreams = crate::dns::nameservers(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        );
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
            store,
            statics: BTreeMap::new(),
            restoring: false,
            had_local_dnat: std::cell::Cell::new(true),
            proxies,
            dns,
            dns_published: Default::default(),
            upstreams,
            host,
            carried: Default::default(),
        };
        s.carry(opened.carried);
        if let Some(d) = saved {
            s.restore(d);
        }
        s.apply_config(cfg, false)?;
        s.settle_carried();
        s.save().map_err(|e| CmdError(e.to_string()))?;
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

    /// Answers one request. A change is saved before it is answered: if
    /// the state directory does not take writes, nothing is changed.
    pub fn handle(&mut self, req: Request) -> Response {
        if req.is_query() {
            return answer(self.dispatch(req));
        }
        if let Err(e) = self.store.probe() {
            return Response::error(format!(
                "{e}; nothing was changed (make the state directory writable, or run with another --state-dir)"
            ));
        }
        let r = self.dispatch(req.clone());
        if let Ok(data) = &r {
            if let Err(e) = self.save() {
                // Take the change back, so that what runs is what is saved.
                if let Some(undo) = Self::undo_of(&req, data) {
                    let _ = self.dispatch(undo);
                }
                // Only a change can change what this host announces.
                self.sync_local();
                self.reapply_view();
                return Response::error(format!("{e}; the change was taken back"));
            }
        }
        self.sync_local();
        self.reapply_view();
        answer(r)
    }

    /// Re-reads the config file (`SIGHUP`) and applies the difference.
    pub fn reload(&mut self, cfg: &Config) {
        let r = self.apply_config(cfg, true);
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "state after reload not saved");
        }
        self.sync_local();
        self.reapply_view();
        match r {
            Ok(()) => tracing::info!("config reloaded"),
            Err(e) => tracing::error!(error = %e, "config reloaded, with errors"),
        }
    }

    fn dispatch(&mut self, req: Request) -> Result<Reply, CmdError> {
        match req {
            Request::NetworkCreate(c) => self.network_create(c).map(|_| Reply::Done),
            Request::NetworkLs => Ok(Reply::Networks(self.network_infos())),
            Request::NetworkInspect { name } => self
                .network_inspect(&name)
                .map(|d| Reply::Network(Box::new(d))),
            Request::NetworkRm { name } => self.network_rm(&name).map(|_| Reply::Done),
            Request::Attach {
                network,
                netns,
                ifname,
                kind,
                ip,
                mac,
                owner,
                aliases,
            } => self
                .attach(
                    &network,
                    Placement::In {
                        ns: &netns,
                        ifname: &ifname,
                    },
                    kind,
                    (ip.as_deref(), mac.as_deref()),
                    (owner, aliases),
                )
                .map(Reply::Attached),
            Request::AttachHandoff {
                network,
                kind,
                ip,
                mac,
                owner,
                aliases,
            } => self
                .attach(
                    &network,
                    Placement::Handoff { owner: &owner },
                    kind,
                    (ip.as_deref(), mac.as_deref()),
                    (Some(owner.clone()), aliases),
                )
                .map(Reply::Attached),
            Request::AttachJoined { owner, netns } => {
                self.attach_joined(&owner, &netns).map(|_| Reply::Done)
            }
            Request::DetachOwner { owner } => self.detach_owner(&owner).map(|_| Reply::Done),
            Request::Detach {
                network,
                netns,
                ifname,
            } => self.detach(&network, &netns, &ifname).map(|_| Reply::Done),
            Request::PortAdd {
                network,
                iface,
                kind,
                worker,
            } => self
                .port_add(&network, &iface, kind, worker, None)
                .map(|id| Reply::PortAdded(PortAdded { id })),
            Request::PortLs => Ok(Reply::Ports(self.port_infos())),
            Request::PortRm { iface } => self.port_rm_by_name(&iface).map(|_| Reply::Done),
            Request::FdbShow { network } => self.fdb_show(network.as_deref()).map(Reply::Fdb),
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
                .map(|_| Reply::Done),
            Request::FdbRm { network, mac } => self.fdb_rm(&network, &mac).map(|_| Reply::Done),
            Request::Stats => Ok(Reply::Stats(self.stats())),
            Request::UplinkAdd(c) => self
                .uplink_add(c)
                .map(|_| Reply::Uplink(self.uplink_show())),
            Request::UplinkRm => self.uplink_rm().map(|_| Reply::Done),
            Request::UplinkShow => Ok(Reply::Uplink(self.uplink_show())),
            Request::Publish {
                network,
                target,
                host_port,
                proto,
                host_ip,
                bind_host,
            } => self
                .publish_port(
                    &network,
                    &target,
                    host_port.as_deref(),
                    proto,
                    host_ip.as_deref(),
                    bind_host,
                )
                .map(Reply::Published),
            Request::Unpublish {
                network,
                host_port,
                proto,
            } => self
                .unpublish(&network, host_port, proto)
                .map(|_| Reply::Done),
            Request::ConntrackShow => Ok(Reply::Conntrack(self.conntrack_show())),
            Request::PeerAdd { network, vtep } => {
                self.peer_add(&network, &vtep).map(|_| Reply::Done)
            }
            Request::PeerRm { network, vtep } => self.peer_rm(&network, &vtep).map(|_| Reply::Done),
            Request::PeerLs => Ok(Reply::Peers(self.peer_ls())),
            Request::Peers => self.peers_status().map(|s| Reply::Cluster(Box::new(s))),
        }
    }

    /// Stops the workers and leaves the cluster. Containers' interfaces,
    /// the networks' host interfaces and the uplink's guard stay, and so
    /// does the saved state: the next start takes them over (`detach`,
    /// `network rm` and `uplink rm` are what remove them).
    pub fn shutdown(&mut self) {
        // Leave first: the other hosts withdraw this one's entries at once.
        if let Some(mut c) = self.cluster.take() {
            c.stop();
        }
        self.workers.stop_all();
    }
}

fn answer(r: Result<Reply, CmdError>) -> Response {
    match r.and_then(|reply| serde_json::to_value(reply).map_err(|e| CmdError(e.to_string()))) {
        Ok(data) => Response {
            ok: true,
            error: None,
            data,
        },
        Err(e) => Response::error(e.0),
    }
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
