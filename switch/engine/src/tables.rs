//! Tables the control thread writes and the workers read.
//!
//! Configuration (networks, ports and which worker owns each) is an immutable
//! [`Snapshot`]; the control thread builds a new one and swaps it in
//! ([`arc_swap`]), workers load it once per loop iteration and never wait.
//! The FDB is a lock-free table of its own ([`crate::fdb`]), written by
//! workers (learning) and by the control thread (static entries, aging).
use crate::fdb::{Fdb, NetId};
use crate::port::{PortCaps, PortId};
use crate::stats::PortStats;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// Ports a switch can hold.
pub const MAX_PORTS: usize = 4096;

/// A network as the data plane sees it.
#[derive(Debug, Clone)]
pub struct NetworkView {
    /// Index.
    pub id: NetId,
    /// Name, for logs.
    pub name: String,
    /// Ports of the network: the flood list.
    pub ports: Vec<PortId>,
}

/// A port as the data plane sees it.
#[derive(Debug, Clone)]
pub struct PortView {
    /// Index.
    pub id: PortId,
    /// Name, for logs.
    pub name: String,
    /// The network the port belongs to.
    pub net: Option<NetId>,
    /// Worker that owns (polls and transmits on) the port.
    pub worker: usize,
    /// Transmit offloads.
    pub caps: PortCaps,
    /// Counters.
    pub stats: Arc<PortStats>,
}

/// One immutable version of the configuration.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Bumped on every publish.
    pub generation: u64,
    /// Ports by [`PortId`].
    pub ports: Vec<Option<PortView>>,
    /// Networks by [`NetId`].
    pub networks: Vec<Option<NetworkView>>,
}

impl Snapshot {
    /// The port, if it exists.
    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PortView> {
        self.ports.get(id as usize).and_then(Option::as_ref)
    }

    /// The network, if it exists.
    #[inline]
    pub fn network(&self, id: NetId) -> Option<&NetworkView> {
        self.networks.get(id as usize).and_then(Option::as_ref)
    }
}

/// Everything the workers share.
#[derive(Debug)]
pub struct Tables {
    /// The forwarding database.
    pub fdb: Fdb,
    /// The current configuration.
    pub snap: ArcSwap<Snapshot>,
}

impl Tables {
    /// Empty tables with an FDB of `fdb_slots` slots.
    pub fn new(fdb_slots: usize) -> Self {
        Self {
            fdb: Fdb::new(fdb_slots),
            snap: ArcSwap::from_pointee(Snapshot::default()),
        }
    }

    /// Publishes a new configuration (the caller is the only writer).
    pub fn publish(&self, mut s: Snapshot) {
        s.generation = self.snap.load().generation + 1;
        self.snap.store(Arc::new(s));
    }
}
