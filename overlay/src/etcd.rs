//! The etcd v3 backend (cargo feature `etcd`), for fleets too large to gossip.
//!
//! Layout under the configured prefix `P` (default `/vswitch`):
//!
//! ```text
//! P/v1/hosts/<name>            {"epoch":…, "addr":…}           on the host's lease
//! P/v1/rows/<name>/vtep        {"epoch":…, "value":{"Vtep":…}}  on the host's lease
//! P/v1/rows/<name>/member/<vni>
//! P/v1/rows/<name>/ep/<vni>/<mac>
//! ```
//!
//! Each host holds one lease, kept alive every third of its TTL; all its keys
//! hang on it, so a dead host disappears when the lease expires and a clean
//! stop revokes it (gone at once). A new run writes its rows and deletes the
//! previous run's leftovers in one transaction, so the others switch from
//! the old rows to the new at one revision. Every host lists the prefix once
//! and then watches it from the next revision; a broken watch resumes from
//! the last revision seen, and one refused because that revision was
//! compacted lists again. Only a host writes under its own name.
use crate::table::{HostView, Key, Value};
use crate::{ClusterConfig, Cmd, EtcdConfig, MemberInfo, Stats, Status, View};
use etcd_client::{
    Client, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// etcd limits a transaction to 128 operations by default.
const TXN_OPS: usize = 128;

#[derive(Serialize, Deserialize)]
struct HostRec {
    epoch: u64,
    addr: String,
}

#[derive(Serialize, Deserialize)]
struct RowRec {
    epoch: u64,
    value: Value,
}

fn key_str(k: &Key) -> String {
    match k {
        Key::Vtep => "vtep".into(),
        Key::Member(vni) => format!("member/{vni}"),
        Key::Endpoint(vni, m) => format!(
            "ep/{vni}/{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        ),
        // A name has no '/' (DNS labels and dots).
        Key::Name(vni, n) => format!("name/{vni}/{n}"),
    }
}

fn parse_key(s: &str) -> Option<Key> {
    let mut it = s.split('/');
    match (it.next()?, it.next(), it.next()) {
        ("vtep", None, None) => Some(Key::Vtep),
        ("member", Some(v), None) => Some(Key::Member(v.parse().ok()?)),
        ("ep", Some(v), Some(m)) if m.len() == 12 => {
            let mut mac = [0u8; 6];
            for (i, b) in mac.iter_mut().enumerate() {
                *b = u8::from_str_radix(m.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(Key::Endpoint(v.parse().ok()?, mac))
        }
        ("name", Some(v), Some(n)) if !n.is_empty() && it.next().is_none() => {
            Some(Key::Name(v.parse().ok()?, n.to_string()))
        }
        _ => None,
    }
}

/// Another host as seen in etcd.
#[derive(Default)]
struct Remote {
    epoch: u64,
    addr: String,
    present: bool,
    rows: BTreeMap<Key, Value>,
    heard: Option<Instant>,
}

struct Agent {
    cfg: ClusterConfig,
    ecfg: EtcdConfig,
    stats: Arc<Stats>,
    on_view: Box<dyn FnMut(View) + Send>,
    /// Rows this host wants published.
    mine: BTreeMap<Key, Value>,
    /// Rows known to be in etcd under this host's lease.
    written: Option<BTreeMap<Key, Value>>,
    remotes: BTreeMap<String, Remote>,
    revision: i64,
    last_view: Option<View>,
}

impl Agent {
    fn root(&self) -> String {
        format!("{}/v1/", self.ecfg.prefix.trim_end_matches('/'))
    }
    fn host_key(&self) -> String {
        format!("{}hosts/{}", self.root(), self.cfg.name)
    }
    fn rows_prefix(&self, host: &str) -> String {
        format!("{}rows/{host}/", self.root())
    }

    /// Applies one key of the cluster prefix (`None`: deleted).
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let root = self.root();
        let Some(rest) = key.strip_prefix(&root) else {
            return;
        };
        let now = Instant::now();
        if let Some(name) = rest.strip_prefix("hosts/") {
            if name == self.cfg.name {
                return;
            }
            match value.and_then(|v| serde_json::from_slice::<HostRec>(v).ok()) {
                Some(h) => {
                    let r = self.remotes.entry(name.to_string()).or_default();
                    if h.epoch > r.epoch {
                        r.rows.clear();
                    }
                    r.epoch = r.epoch.max(h.epoch);
                    r.addr = h.addr;
                    r.present = true;
                    r.heard = Some(now);
                }
                None if value.is_some() => {
                    self.stats.rx_malformed.fetch_add(1, Relaxed);
                }
                None => {
                    // The lease expired or was revoked: the host is gone.
                    self.remotes.remove(name);
                }
            }
            return;
        }
        let Some(rest) = rest.strip_prefix("rows/") else {
            return;
        };
        let Some((name, k)) = rest.split_once('/') else {
            return;
        };
        if name == self.cfg.name {
            return;
        }
        let Some(k) = parse_key(k) else {
            self.stats.rx_malformed.fetch_add(1, Relaxed);
            return;
        };
        let r = self.remotes.entry(name.to_string()).or_default();
        r.heard = Some(now);
        match value {
            None => {
                r.rows.remove(&k);
                if !r.present && r.rows.is_empty() {
                    self.remotes.remove(name);
                }
            }
            Some(v) => match serde_json::from_slice::<RowRec>(v) {
                Ok(row) if row.epoch > r.epoch => {
                    r.rows.clear();
                    r.epoch = row.epoch;
                    r.rows.insert(k, row.value);
                }
                Ok(row) if row.epoch == r.epoch => {
                    r.rows.insert(k, row.value);
                }
                Ok(_) => {
                    self.stats.rx_stale.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    self.stats.rx_malformed.fetch_add(1, Relaxed);
                }
            },
        }
    }

    fn view(&self) -> View {
        View {
            hosts: self
                .remotes
                .iter()
                .filter(|(_, r)| r.present)
                .filter_map(|(name, r)| HostView::from_rows(name, r.epoch, r.rows.iter()))
                .collect(),
        }
    }

    fn publish_view(&mut self) {
        let v = self.view();
        if self.last_view.as_ref() != Some(&v) {
            self.last_view = Some(v.clone());
            (self.on_view)(v);
        }
    }

    fn status(&self) -> Status {
        let now = Instant::now();
        let stats = self.stats.snapshot();
        Status {
            me: MemberInfo {
                name: self.cfg.name.clone(),
                addr: self.cfg.advertise,
                state: if self.written.is_some() {
                    "self"
                } else {
                    "self (not in etcd)"
                }
                .into(),
                epoch: self.cfg.epoch,
                last_heard_ms: None,
                seq: self.revision.max(0) as u64,
                entries: self.mine.len(),
            },
            members: self
                .remotes
                .iter()
                .filter(|(_, r)| r.present)
                .map(|(name, r)| MemberInfo {
                    name: name.clone(),
                    addr: r.addr.parse().unwrap_or(self.cfg.advertise),
                    state: "alive".into(),
                    epoch: r.epoch,
                    last_heard_ms: r.heard.map(|t| now.duration_since(t).as_millis() as u64),
                    seq: 0,
                    entries: r.rows.len(),
                })
                .collect(),
            stats,
        }
    }

    fn count_tx(&self, bytes: usize) {
        self.stats.tx_packets.fetch_add(1, Relaxed);
        self.stats.tx_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Brings etcd in line with `mine` under `lease`: puts what changed,
    /// deletes what went away (including a previous run's leftovers, the
    /// first time), in transactions.
    async fn write(&mut self, c: &mut Client, lease: i64) -> Result<(), etcd_client::Error> {
        let pfx = self.rows_prefix(&self.cfg.name);
        let mut ops: Vec<TxnOp> = Vec::new();
        let mut bytes = 0usize;
        let first = self.written.is_none();
        let old: BTreeMap<Key, Value> = match &self.written {
            Some(w) => w.clone(),
            None => {
                // Whatever a previous run left: delete what this run does
                // not have, in the same transactions as the new rows.
                let r = c
                    .get(
                        pfx.clone(),
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await?;
                let mut m = BTreeMap::new();
                for kv in r.kvs() {
                    if let Some(k) = kv
                        .key_str()
                        .ok()
                        .and_then(|s| s.strip_prefix(&pfx))
                        .and_then(parse_key)
                    {
                        // Unknown value: force a rewrite if kept.
                        m.insert(k, Value::Member);
                    }
                }
                m
            }
        };
        if first {
            let h = serde_json::to_vec(&HostRec {
                epoch: self.cfg.epoch,
                addr: self.cfg.advertise.to_string(),
            })
            .unwrap_or_default();
            bytes += h.len();
            ops.push(TxnOp::put(
                self.host_key(),
                h,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        for (k, v) in &self.mine {
            if !first && old.get(k) == Some(v) {
                continue;
            }
            let body = serde_json::to_vec(&RowRec {
                epoch: self.cfg.epoch,
                value: *v,
            })
            .unwrap_or_default();
            bytes += body.len();
            ops.push(TxnOp::put(
                format!("{pfx}{}", key_str(k)),
                body,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        for k in old.keys() {
            if !self.mine.contains_key(k) {
                ops.push(TxnOp::delete(
                    format!("{pfx}{}", key_str(k)),
                    None::<DeleteOptions>,
                ));
            }
        }
        for chunk in ops.chunks(TXN_OPS) {
            c.txn(Txn::new().and_then(chunk.to_vec())).await?;
            self.count_tx(bytes / ops.len().max(1) * chunk.len());
        }
        self.written = Some(self.mine.clone());
        Ok(())
    }

    /// Lists the prefix: the whole table at one revision.
    async fn list(&mut self, c: &mut Client) -> Result<(), etcd_client::Error> {
        let r = c
            .get(self.root(), Some(GetOptions::new().with_prefix()))
            .await?;
        self.count_tx(self.root().len());
        self.remotes.clear();
        let mut seen = BTreeSet::new();
        let kvs: Vec<(String, Vec<u8>)> = r
            .kvs()
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value().to_vec())))
            .collect();
        // Hosts first, then rows, so epochs are known before rows arrive.
        for (k, v) in kvs.iter().filter(|(k, _)| k.contains("/hosts/")) {
            seen.insert(k.clone());
            self.stats.rx_bytes.fetch_add(v.len() as u64, Relaxed);
            self.apply(k, Some(v));
        }
        for (k, v) in kvs.iter().filter(|(k, _)| !seen.contains(k)) {
            self.stats.rx_bytes.fetch_add(v.len() as u64, Relaxed);
            self.apply(k, Some(v));
        }
        self.revision = r.header().map_or(0, |h| h.revision());
        Ok(())
    }

    async fn watch(&mut self, c: &mut Client) -> Result<WatchStream, etcd_client::Error> {
        c.watch(
            self.root(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(self.revision + 1),
            ),
        )
        .await
    }
}

/// Runs the backend until `Stop`; never returns early on etcd errors, it
/// reconnects.
pub(crate) fn run(
    cfg: ClusterConfig,
    ecfg: EtcdConfig,
    mut cmds: UnboundedReceiver<Cmd>,
    on_view: Box<dyn FnMut(View) + Send>,
    stats: Arc<Stats>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "etcd backend: no runtime");
            return;
        }
    };
    let mut a = Agent {
        cfg,
        ecfg,
        stats,
        on_view,
        mine: BTreeMap::new(),
        written: None,
        remotes: BTreeMap::new(),
        revision: 0,
        last_view: None,
    };
    rt.block_on(async move {
        tracing::info!(name = %a.cfg.name, endpoints = ?a.ecfg.endpoints, epoch = a.cfg.epoch, "cluster agent up (etcd)");
        let ttl = a.ecfg.lease_ttl_secs.max(1);
        let tick = Duration::from_millis((ttl as u64 * 1000 / 3).max(100));
        let mut need_list = true;
        'connect: loop {
            // (Re)connect; commands keep being taken meanwhile.
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
            let mut c = match Client::connect(&a.ecfg.endpoints, Some(opts)).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: cannot connect; retrying");
                    if wait_or_stop(&mut a, &mut cmds, Duration::from_secs(1)).await {
                        return;
                    }
                    continue 'connect;
                }
            };
            let lease = match c.lease_grant(ttl, None).await {
                Ok(l) => l.id(),
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: lease grant failed; retrying");
                    if wait_or_stop(&mut a, &mut cmds, Duration::from_secs(1)).await {
                        return;
                    }
                    continue 'connect;
                }
            };
            let (mut keeper, mut ka) = match c.lease_keep_alive(lease).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: keep-alive failed; retrying");
                    continue 'connect;
                }
            };
            // A new lease: everything is written again under it.
            a.written = None;
            if let Err(e) = a.write(&mut c, lease).await {
                tracing::warn!(error = %e, "etcd: writing this host's rows failed; retrying");
                continue 'connect;
            }
            if need_list {
                if let Err(e) = a.list(&mut c).await {
                    tracing::warn!(error = %e, "etcd: list failed; retrying");
                    continue 'connect;
                }
                need_list = false;
                a.publish_view();
            }
            let mut w = match a.watch(&mut c).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: watch failed; retrying");
                    continue 'connect;
                }
            };
            let mut ticker = tokio::time::interval(tick);
            loop {
                tokio::select! {
                    cmd = cmds.recv() => match cmd {
                        Some(Cmd::SetLocal(rows)) => {
                            a.mine = rows;
                            if let Err(e) = a.write(&mut c, lease).await {
                                tracing::warn!(error = %e, "etcd: write failed; reconnecting");
                                a.written = None;
                                continue 'connect;
                            }
                        }
                        Some(Cmd::Status(reply)) => {
                            let _ = reply.send(a.status());
                        }
                        Some(Cmd::Stop) | None => {
                            // Gone at once for everyone.
                            let _ = c.lease_revoke(lease).await;
                            tracing::info!("left the cluster (lease revoked)");
                            return;
                        }
                    },
                    _ = ticker.tick() => {
                        if keeper.keep_alive().await.is_err() {
                            tracing::warn!("etcd: keep-alive send failed; reconnecting");
                            continue 'connect;
                        }
                        a.count_tx(16);
                        match tokio::time::timeout(tick, ka.message()).await {
                            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                            Ok(Ok(Some(_))) => {
                                tracing::warn!("etcd: this host's lease expired; writing its rows again under a new one");
                                continue 'connect;
                            }
                            _ => {
                                tracing::warn!("etcd: no keep-alive answer; reconnecting");
                                continue 'connect;
                            }
                        }
                    }
                    msg = w.message() => match msg {
                        Ok(Some(resp)) => {
                            if resp.compact_revision() > 0 || (resp.canceled() && resp.cancel_reason().contains("compact")) {
                                tracing::warn!(compacted = resp.compact_revision(), "etcd: watch revision compacted; listing again");
                                a.stats.relists.fetch_add(1, Relaxed);
                                need_list = true;
                                continue 'connect;
                            }
                            if resp.canceled() {
                                tracing::warn!(reason = resp.cancel_reason(), "etcd: watch canceled; resuming");
                                continue 'connect;
                            }
                            for ev in resp.events() {
                                let Some(kv) = ev.kv() else { continue };
                                let Ok(k) = kv.key_str() else { continue };
                                a.stats.rx_packets.fetch_add(1, Relaxed);
                                a.stats.rx_bytes.fetch_add((kv.key().len() + kv.value().len()) as u64, Relaxed);
                                a.stats.deltas_applied.fetch_add(1, Relaxed);
                                match ev.event_type() {
                                    EventType::Put => a.apply(k, Some(kv.value())),
                                    EventType::Delete => a.apply(k, None),
                                }
                                a.revision = a.revision.max(kv.mod_revision());
                            }
                            if let Some(h) = resp.header() {
                                a.revision = a.revision.max(h.revision());
                            }
                            a.publish_view();
                        }
                        Ok(None) | Err(_) => {
                            tracing::warn!(revision = a.revision, "etcd: watch broken; resuming from the last revision");
                            continue 'connect;
                        }
                    },
                }
            }
        }
    });
}

/// Waits `d` while answering commands; `true` when told to stop.
async fn wait_or_stop(a: &mut Agent, cmds: &mut UnboundedReceiver<Cmd>, d: Duration) -> bool {
    let end = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => return false,
            cmd = cmds.recv() => match cmd {
                Some(Cmd::SetLocal(rows)) => a.mine = rows,
                Some(Cmd::Status(reply)) => { let _ = reply.send(a.status()); }
                Some(Cmd::Stop) | None => return true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for k in [
            Key::Vtep,
            Key::Member(4242),
            Key::Endpoint(7, [2, 0xab, 0, 0, 0x10, 0xff]),
            Key::Name(7, "web.svc_1".into()),
        ] {
            assert_eq!(parse_key(&key_str(&k)), Some(k));
        }
        assert_eq!(parse_key("ep/7/02ab"), None);
        assert_eq!(parse_key("name/7/"), None);
        assert_eq!(parse_key("name/7/a/b"), None);
        assert_eq!(parse_key("member/x"), None);
        assert_eq!(parse_key("bogus"), None);
    }
}
