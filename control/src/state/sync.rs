//! The control side of peer-table sync: what this host announces, and how
//! what the other hosts announce becomes flood lists, FDB entries and ARP
//! suppression entries.
//!
//! The cluster agent (`vswitch-overlay`) runs in its own thread and hands
//! every new [`View`] to a channel; the control thread (see `server.rs`)
//! takes the newest and calls [`State::apply_view`]. Workers
//! only ever see the result through the published snapshot and the
//! lock-free FDB.
use super::{err, CmdError, State};
use crate::config::{ClusterBackend, ClusterSection, Driver};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vswitch_engine::fdb::NetId;
use vswitch_engine::pipeline::vxlan::REMOTE_BASE;
use vswitch_engine::port::PortId;
use vswitch_engine::wire::mac::Mac;
use vswitch_overlay::{Cluster, ClusterConfig, EtcdConfig, Key, Value, View, Vni};

/// One endpoint learned from another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SyncedEntry {
    pub vtep: Ipv4Addr,
    pub host: String,
    pub ip: Option<Ipv4Addr>,
    pub at_us: u64,
}

/// What the data plane holds from the cluster.
#[derive(Debug, Default)]
pub(super) struct Synced {
    /// VNI → VTEPs of the hosts that have it.
    pub peers: BTreeMap<Vni, BTreeSet<Ipv4Addr>>,
    /// (network, MAC) → where it lives.
    pub fdb: BTreeMap<(NetId, Mac), SyncedEntry>,
    /// Network → the other hosts' containers' names on it → their
    /// addresses.
    pub names: BTreeMap<NetId, BTreeMap<String, BTreeSet<Ipv4Addr>>>,
    /// Last rows handed to the agent.
    pub last_local: Option<BTreeMap<Key, Value>>,
    /// The last view the agent sent, and the scope it was applied in: a
    /// change of scope (an overlay network made or removed, the uplink
    /// added or removed) applies it again, since the agent sends a new view
    /// only when the cluster's rows change.
    pub last_view: Option<(View, Scope)>,
}

/// What applying a view depends on besides the view: the overlay networks
/// by VNI and this host's VTEP.
pub(super) type Scope = (BTreeMap<Vni, NetId>, Option<Ipv4Addr>);

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Starts the agent; views arrive on the returned channel.
pub(super) fn start(
    c: &ClusterSection,
) -> Result<(Cluster, crossbeam::channel::Receiver<View>), CmdError> {
    let addrs = c.addrs()?;
    let key = match (&c.backend, &c.key_file) {
        (ClusterBackend::Gossip, Some(f)) => std::fs::read(f).map_err(|e| {
            CmdError(format!(
                "cannot read the cluster key file {f:?}: {e} (make one with `head -c 32 /dev/urandom > FILE` and give every host the same)"
            ))
        })?,
        _ => Vec::new(),
    };
    let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
    let advertise = addrs.advertise.unwrap_or(unspecified);
    let name = match (&c.name, addrs.advertise) {
        (Some(n), _) => n.clone(),
        (None, Some(a)) => a.to_string(),
        (None, None) => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .ok_or_else(|| CmdError("cannot read the host name; set `name` in [cluster]".into()))?,
    };
    let (tx, rx) = crossbeam::channel::unbounded();
    let cfg = ClusterConfig {
        name,
        epoch: unix_us(),
        listen: addrs.listen.unwrap_or(unspecified),
        advertise,
        join: addrs.join,
        key,
        probe_period: Duration::from_millis(c.probe_ms),
        probe_rtt: Duration::from_millis((c.probe_ms / 2).max(1)),
        suspect_to_down: Duration::from_millis(c.suspect_ms),
        anti_entropy: Duration::from_millis(c.anti_entropy_ms),
        tombstone_ttl: Duration::from_secs(c.tombstone_secs),
        etcd: (c.backend == ClusterBackend::Etcd).then(|| EtcdConfig {
            endpoints: c.etcd_endpoints.clone(),
            prefix: c.etcd_prefix.clone(),
            lease_ttl_secs: c.lease_ttl_secs.min(i64::MAX as u64) as i64,
        }),
    };
    let cl = Cluster::start(cfg, move |v| {
        let _ = tx.send(v);
    })
    .map_err(CmdError)?;
    Ok((cl, rx))
}

impl State {
    /// The peers of an overlay network: static ones and synced ones.
    pub(super) fn overlay_peers(&self, net: &super::Net) -> Vec<Ipv4Addr> {
        let mut v: BTreeSet<Ipv4Addr> = net
            .cfg
            .peers
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        if let Some(s) = net.cfg.vni.and_then(|vni| self.synced.peers.get(&vni)) {
            v.extend(s.iter().copied());
        }
        v.into_iter().collect()
    }

    /// This host's rows: its VTEP, its overlay VNIs, and the endpoints
    /// behind its own ports on them (attached containers, static entries).
    fn local_rows(&self) -> BTreeMap<Key, Value> {
        let mut rows = BTreeMap::new();
        let Some(u) = self.uplink.as_ref() else {
            return rows;
        };
        rows.insert(Key::Vtep, Value::Vtep(u.vtep));
        let mut by_id: BTreeMap<NetId, (Vni, &super::Net)> = BTreeMap::new();
        for n in self.networks.values() {
            if let (Driver::Overlay, Some(vni)) = (n.cfg.driver, n.cfg.vni) {
                rows.insert(Key::Member(vni), Value::Member);
                by_id.insert(n.id, (vni, n));
            }
        }
        for p in self.ports.values() {
            let (Some(a), None) = (p.attach.as_ref(), p.gone.as_ref()) else {
                continue;
            };
            let Some((vni, _)) = self.networks.get(&p.net).and_then(|n| by_id.get(&n.id)) else {
                continue;
            };
            rows.insert(Key::Endpoint(*vni, a.mac.bytes()), Value::Endpoint(a.ip));
            // Its names, for the other hosts' resolvers.
            if let Some(ip) = a.ip {
                for n in &a.aliases {
                    rows.insert(Key::Name(*vni, n.to_ascii_lowercase()), Value::Name(ip));
                }
            }
        }
        let mut statics = Vec::new();
        self.tables.fdb.retain_not(0, |e| {
            if e.is_static && e.port < REMOTE_BASE {
                statics.push((e.net, e.mac));
            }
            false
        });
        for (net, mac) in statics {
            if let Some((vni, n)) = by_id.get(&net) {
                let ip = n.arp.iter().find(|(_, m)| **m == mac).map(|(i, _)| *i);
                rows.insert(Key::Endpoint(*vni, mac.bytes()), Value::Endpoint(ip));
            }
        }
        rows
    }

    /// Hands this host's rows to the agent when they changed.
    pub(super) fn sync_local(&mut self) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let rows = self.local_rows();
        if self.synced.last_local.as_ref() != Some(&rows) {
            tracing::debug!(entries = rows.len(), "local cluster rows changed");
            c.set_local(rows.clone());
            self.synced.last_local = Some(rows);
        }
    }

    fn view_scope(&self) -> Scope {
        let vni_net = self
            .networks
            .values()
            .filter(|n| n.cfg.driver == Driver::Overlay)
            .filter_map(|n| n.cfg.vni.map(|v| (v, n.id)))
            .collect();
        (vni_net, self.uplink.as_ref().map(|u| u.vtep))
    }

    /// Applies the last view again if the overlay networks or this host's
    /// VTEP changed since: a network made at run time gets the entries and
    /// flood list the cluster already holds for its VNI at once.
    pub(super) fn reapply_view(&mut self) {
        let changed = match &self.synced.last_view {
            Some((_, scope)) => *scope != self.view_scope(),
            None => false,
        };
        if changed {
            if let Some((v, _)) = self.synced.last_view.take() {
                tracing::debug!("overlay networks or VTEP changed: cluster view applied again");
                self.apply_view(&v);
            }
        }
    }

    /// Programs flood lists, FDB and ARP suppression from the cluster view.
    pub fn apply_view(&mut self, v: &View) {
        let now = unix_us();
        let mut peers: BTreeMap<Vni, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        let mut fdb: BTreeMap<(NetId, Mac), SyncedEntry> = BTreeMap::new();
        let mut names: BTreeMap<NetId, BTreeMap<String, BTreeSet<Ipv4Addr>>> = BTreeMap::new();
        let scope = self.view_scope();
        let (vni_net, my_vtep) = scope.clone();
        let own: BTreeSet<Mac> = self
            .ports
            .values()
            .filter_map(|p| p.attach.as_ref().map(|a| a.mac))
            .collect();
        for h in &v.hosts {
            if Some(h.vtep) == my_vtep {
                continue;
            }
            for vni in &h.vnis {
                peers.entry(*vni).or_default().insert(h.vtep);
            }
            for (vni, mac, ip) in &h.endpoints {
                let (Some(net), mac) = (vni_net.get(vni), Mac::from_bytes(mac)) else {
                    continue;
                };
                if own.contains(&mac) {
                    continue;
                }
                peers.entry(*vni).or_default().insert(h.vtep);
                let e = SyncedEntry {
                    vtep: h.vtep,
                    host: h.name.clone(),
                    ip: *ip,
                    at_us: now,
                };
                fdb.insert((*net, mac), e);
            }
            for (vni, name, ip) in &h.names {
                if let Some(net) = vni_net.get(vni) {
                    names
                        .entry(*net)
                        .or_default()
                        .entry(name.clone())
                        .or_default()
                        .insert(*ip);
                }
            }
        }
        // FDB: withdraw what went away, install what is new or moved.
        let old = std::mem::take(&mut self.synced.fdb);
        for ((net, mac), e) in &old {
            if fdb.get(&(*net, *mac)).is_some_and(|n| n.vtep == e.vtep) {
                continue;
            }
            if let Some(port) = self.vtep_index(e.vtep) {
                let still = self
                    .tables
                    .fdb
                    .lookup(*net, *mac)
                    .is_some_and(|p| p == port);
                if still {
                    self.tables.fdb.remove(*net, *mac);
                }
            }
        }
        let mut installed = 0usize;
        for ((net, mac), e) in fdb.iter_mut() {
            if let Some(o) = old.get(&(*net, *mac)) {
                if o.vtep == e.vtep && o.ip == e.ip && o.host == e.host {
                    e.at_us = o.at_us;
                    continue;
                }
            }
            let Ok(port) = self.vtep_port(&e.vtep.to_string()) else {
                continue;
            };
            match self.tables.fdb.add_static(*net, *mac, port) {
                Ok(()) => installed += 1,
                Err(er) => tracing::warn!(%mac, error = %er, "synced FDB entry not installed"),
            }
        }
        // VTEPs that left a VNI: forget what was learned behind them.
        let mut gone: Vec<(NetId, PortId)> = Vec::new();
        for (vni, set) in &self.synced.peers {
            let Some(net) = vni_net.get(vni) else {
                continue;
            };
            for vt in set {
                if !peers.get(vni).is_some_and(|s| s.contains(vt)) {
                    if let Some(port) = self.vtep_index(*vt) {
                        gone.push((*net, port));
                    }
                }
            }
        }
        for (net, port) in gone {
            self.tables
                .fdb
                .retain_not(0, |e| e.net == net && e.port == port && !e.is_static);
        }
        let peers_changed = peers != self.synced.peers;
        let arp_changed = old
            .iter()
            .map(|(k, e)| (k, e.ip))
            .ne(fdb.iter().map(|(k, e)| (k, e.ip)));
        let names_changed = names != self.synced.names;
        self.synced.peers = peers;
        self.synced.fdb = fdb;
        self.synced.names = names;
        self.synced.last_view = Some((v.clone(), scope));
        tracing::debug!(
            hosts = v.hosts.len(),
            installed,
            entries = self.synced.fdb.len(),
            "cluster view applied"
        );
        if peers_changed || arp_changed {
            self.publish();
        } else if names_changed {
            self.publish_dns();
        }
        if peers_changed {
            self.refresh_uplink(false);
        }
    }

    /// The FDB port of a VTEP already registered.
    fn vtep_index(&self, ip: Ipv4Addr) -> Option<PortId> {
        self.vteps
            .iter()
            .position(|v| *v == ip)
            .map(|i| REMOTE_BASE + i as PortId)
    }

    /// Synced ARP entries of a network.
    pub(super) fn synced_arp(&self, net: NetId) -> impl Iterator<Item = (Ipv4Addr, Mac)> + '_ {
        self.synced
            .fdb
            .iter()
            .filter(move |((n, _), _)| *n == net)
            .filter_map(|((_, mac), e)| e.ip.map(|ip| (ip, *mac)))
    }

    /// Addresses other hosts' containers use on a network (IPAM skips them).
    pub(super) fn synced_ips(&self, net: NetId) -> BTreeSet<Ipv4Addr> {
        self.synced_arp(net).map(|(ip, _)| ip).collect()
    }

    /// `vswitch peers`.
    pub(super) fn peers_status(&self) -> Result<vswitch_overlay::Status, CmdError> {
        let Some(c) = self.cluster.as_ref() else {
            return err(
                "this switch runs without a cluster; start it with --cluster-listen ADDR:PORT --cluster-key-file FILE [--cluster-join SEED] or a [cluster] section",
            );
        };
        let Some(st) = c.status() else {
            return err("the cluster agent does not answer");
        };
        Ok(st)
    }

    /// The synced entry of a MAC, for `fdb show`.
    pub(super) fn synced_entry(&self, net: NetId, mac: Mac) -> Option<&SyncedEntry> {
        self.synced.fdb.get(&(net, mac))
    }
}
