//! vswitch overlay control plane: hosts sync their overlay peer tables.
//!
//! Each host announces its VTEP, the VNIs it has and its container
//! endpoints, and learns everyone else's. [`Cluster::start`] runs the
//! embedded backend ([`gossip`]): SWIM membership and failure detection with
//! the `foca` crate, deltas pushed to every member at once, periodic
//! anti-entropy, epochs per run and expiring tombstones ([`table`]), over
//! UDP datagrams authenticated with a shared key ([`wire`]).
//!
//! The control thread feeds [`Cluster::set_local`] and receives [`View`]s
//! through a callback; it programs the data plane from them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod gossip;
pub mod table;
pub mod wire;

use crossbeam::channel::{self, Sender};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
pub use table::{HostView, Key, Value, Vni};

/// The command line of a one-member etcd cluster (Debian's `etcd`) that
/// serves clients at `client_url` and keeps its data in `data_dir`: what the
/// namespace tests and the cluster benchmark run as the fleet's etcd.
pub fn etcd_single_node_cmd(client_url: &str, data_dir: &str) -> Vec<String> {
    let peer = "http://127.0.0.1:2380";
    [
        "etcd",
        "--name",
        "n1",
        "--data-dir",
        data_dir,
        "--listen-client-urls",
        client_url,
        "--advertise-client-urls",
        client_url,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        &format!("n1={peer}"),
    ]
    .map(String::from)
    .to_vec()
}

/// Settings of the embedded backend.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This host's name, unique in the cluster.
    pub name: String,
    /// Run identifier; must grow from one run to the next (start time).
    pub epoch: u64,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Address the others reach this host on.
    pub advertise: SocketAddr,
    /// Seed members to join through.
    pub join: Vec<SocketAddr>,
    /// Shared secret (at least 16 bytes).
    pub key: Vec<u8>,
    /// SWIM probe period.
    pub probe_period: Duration,
    /// SWIM probe round-trip allowance.
    pub probe_rtt: Duration,
    /// Suspect members are declared down after this.
    pub suspect_to_down: Duration,
    /// Anti-entropy period (a digest to one random member).
    pub anti_entropy: Duration,
    /// Tombstones are kept this long.
    pub tombstone_ttl: Duration,
    /// Use etcd instead of gossip (the gossip settings above are then
    /// unused, but `name`, `epoch` and `advertise`).
    pub etcd: Option<EtcdConfig>,
}

/// Settings of the etcd backend (cargo feature `etcd`).
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://10.0.0.5:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix shared by the cluster.
    pub prefix: String,
    /// Lease TTL: a dead host is withdrawn this long after its last
    /// keep-alive.
    pub lease_ttl_secs: i64,
}

/// Commands from the control thread to an agent.
pub(crate) enum Cmd {
    SetLocal(BTreeMap<Key, Value>),
    Status(channel::Sender<Status>),
    Stop,
}

/// What the data plane should have from the other hosts: the alive ones,
/// in their current run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Hosts, by name.
    pub hosts: Vec<HostView>,
}

/// Counters of the agent.
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams sent.
    pub tx_packets: AtomicU64,
    /// Bytes sent (UDP payload).
    pub tx_bytes: AtomicU64,
    /// Sends that failed.
    pub tx_errors: AtomicU64,
    /// Datagrams received.
    pub rx_packets: AtomicU64,
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Datagrams whose authentication tag did not verify: dropped.
    pub rx_bad_auth: AtomicU64,
    /// Datagrams that did not parse: dropped.
    pub rx_malformed: AtomicU64,
    /// Deltas from an older run of their host: ignored.
    pub rx_stale: AtomicU64,
    /// Deltas past a gap: refused, repaired by anti-entropy.
    pub rx_gaps: AtomicU64,
    /// Deltas (gossip) or watch events (etcd) applied.
    pub deltas_applied: AtomicU64,
    /// Full re-lists after a compacted watch revision (etcd).
    pub relists: AtomicU64,
    /// Failure notices received: a member that declared a host down told
    /// every other member at once (gossip).
    pub down_notices: AtomicU64,
}

/// [`Stats`] read at one moment.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats`].
    pub tx_packets: u64,
    /// See [`Stats`].
    pub tx_bytes: u64,
    /// See [`Stats`].
    pub tx_errors: u64,
    /// See [`Stats`].
    pub rx_packets: u64,
    /// See [`Stats`].
    pub rx_bytes: u64,
    /// See [`Stats`].
    pub rx_bad_auth: u64,
    /// See [`Stats`].
    pub rx_malformed: u64,
    /// See [`Stats`].
    pub rx_stale: u64,
    /// See [`Stats`].
    pub rx_gaps: u64,
    /// See [`Stats`].
    pub deltas_applied: u64,
    /// See [`Stats`].
    pub relists: u64,
    /// See [`Stats`].
    pub down_notices: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            tx_errors: self.tx_errors.load(Relaxed),
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            rx_bad_auth: self.rx_bad_auth.load(Relaxed),
            rx_malformed: self.rx_malformed.load(Relaxed),
            rx_stale: self.rx_stale.load(Relaxed),
            rx_gaps: self.rx_gaps.load(Relaxed),
            deltas_applied: self.deltas_applied.load(Relaxed),
            relists: self.relists.load(Relaxed),
            down_notices: self.down_notices.load(Relaxed),
        }
    }
}

/// One member, for `vswitch peers`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberInfo {
    /// Host name.
    pub name: String,
    /// Cluster address.
    pub addr: SocketAddr,
    /// `self`, `alive`, `suspect` or `down`.
    pub state: String,
    /// Run of its switch.
    pub epoch: u64,
    /// Milliseconds since its last authenticated datagram.
    pub last_heard_ms: Option<u64>,
    /// Its highest sequence held here.
    pub seq: u64,
    /// Its live entries held here.
    pub entries: usize,
}

/// The cluster as this host sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    /// This host.
    pub me: MemberInfo,
    /// The others, by name.
    pub members: Vec<MemberInfo>,
    /// Counters.
    pub stats: StatsSnapshot,
}

enum Inbox {
    Gossip(Sender<Cmd>, Arc<mio::Waker>),
    #[cfg(feature = "etcd")]
    Etcd(tokio::sync::mpsc::UnboundedSender<Cmd>),
}

/// A running cluster agent.
pub struct Cluster {
    inbox: Inbox,
    thread: Option<JoinHandle<()>>,
}

impl Cluster {
    /// Binds the cluster socket and starts the agent thread; `on_view` is
    /// called from it with every new view.
    pub fn start(
        cfg: ClusterConfig,
        on_view: impl FnMut(View) + Send + 'static,
    ) -> Result<Self, String> {
        let stats = Arc::new(Stats::default());
        let on_view: Box<dyn FnMut(View) + Send> = Box::new(on_view);
        if let Some(e) = cfg.etcd.clone() {
            return Self::start_etcd(cfg, e, on_view, stats);
        }
        let (tx, rx) = channel::unbounded();
        let (agent, waker) = gossip::agent(cfg, rx, on_view, stats)?;
        let thread = std::thread::Builder::new()
            .name("vswitch-cluster".into())
            .spawn(move || agent.run())
            .map_err(|e| format!("cluster thread: {e}"))?;
        Ok(Self {
            inbox: Inbox::Gossip(tx, waker),
            thread: Some(thread),
        })
    }

    #[cfg(feature = "etcd")]
    fn start_etcd(
        cfg: ClusterConfig,
        e: EtcdConfig,
        on_view: Box<dyn FnMut(View) + Send>,
        stats: Arc<Stats>,
    ) -> Result<Self, String> {
        if e.endpoints.is_empty() {
            return Err("the etcd backend needs at least one endpoint".into());
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("vswitch-cluster".into())
            .spawn(move || etcd::run(cfg, e, rx, on_view, stats))
            .map_err(|e| format!("cluster thread: {e}"))?;
        Ok(Self {
            inbox: Inbox::Etcd(tx),
            thread: Some(thread),
        })
    }

    #[cfg(not(feature = "etcd"))]
    fn start_etcd(
        _: ClusterConfig,
        _: EtcdConfig,
        _: Box<dyn FnMut(View) + Send>,
        _: Arc<Stats>,
    ) -> Result<Self, String> {
        Err("this vswitch was built without the etcd backend; build it with `--features etcd` (needs protobuf-compiler and libprotobuf-dev) or use the gossip backend".into())
    }

    fn cmd(&self, c: Cmd) {
        match &self.inbox {
            Inbox::Gossip(tx, waker) => {
                if tx.send(c).is_ok() {
                    let _ = waker.wake();
                }
            }
            #[cfg(feature = "etcd")]
            Inbox::Etcd(tx) => {
                let _ = tx.send(c);
            }
        }
    }

    /// This host's rows are now `rows`; changes are pushed at once.
    pub fn set_local(&self, rows: BTreeMap<Key, Value>) {
        self.cmd(Cmd::SetLocal(rows));
    }

    /// Members and counters (`None` if the agent does not answer within a
    /// second).
    pub fn status(&self) -> Option<Status> {
        let (tx, rx) = channel::bounded(1);
        self.cmd(Cmd::Status(tx));
        rx.recv_timeout(Duration::from_secs(1)).ok()
    }

    /// Leaves the cluster (the others withdraw this host's entries at once)
    /// and stops the agent.
    pub fn stop(&mut self) {
        self.cmd(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
