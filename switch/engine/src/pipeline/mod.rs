//! The pipeline: one module per stage, each a pass over the batch.
//!
//! From a container port: `classify` (parse, drop runts and bad sources) →
//! `gateway::mark` (frames for the gateway) → `learn` (source MAC) →
//! `forward` (destination lookup: unicast, flood or drop; `--no-icc`
//! filtering) → `arp::suppress_arp` (overlays) → `gateway::route_batch`
//! (ARP and echo for the gateway, routing, NAT) → `emit`: each frame to its
//! output port's queue (`txq`), replicated (`flood`), tunnelled
//! (`vxlan::encap`) or handed to the worker its connection lives with.
//!
//! From the uplink: `uplink::from_uplink` takes what the switch owns (NAT
//! replies, published ports, ICMP errors, VXLAN through `vxlan::decap`).
//!
//! The L3 stages share `ipv4` (one parse per frame), `frag` (fragments of a
//! tracked datagram), `nat` (conntrack lookups, translation, new flows),
//! `route` (TTL, next hop, L2 addressing), `icmp` and `arp`. `offload` runs
//! at transmit time, finishing checksums and cutting TSO segments for ports
//! that cannot take them.
pub mod arp;
pub mod classify;
mod emit;
pub mod flood;
pub mod forward;
pub mod frag;
pub mod gateway;
pub mod icmp;
pub mod ipv4;
pub mod learn;
pub mod nat;
pub mod offload;
pub mod route;
pub mod steer;
mod txq;
pub mod uplink;
pub mod vxlan;

pub use emit::Out;
pub use txq::TxQueues;

use crate::conntrack::CtTable;
use crate::fdb::NetId;
use crate::packet::{Packet, PacketPool};
use crate::port::PortId;
use crate::stats::{BatchDrops, DropReason};
use crate::tables::{Snapshot, Tables};
use crate::wire::mac::Mac;
use emit::emit;

/// Largest batch a port is asked for.
pub const BATCH: usize = 32;

/// What happens to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Counted and dropped.
    Drop(DropReason),
    /// Sent to one port.
    Unicast(PortId),
    /// Sent to every port of the network but the ingress one.
    Flood,
    /// Sent to every port of another network (a routed frame whose
    /// destination MAC is not learned yet).
    FloodIn(NetId),
    /// For the gateway stage.
    Route,
    /// Handed to this worker, with whom the frame's connection lives (see
    /// [`steer`]).
    Steer(u16),
}

/// Per-frame facts the stages pass along (24 bytes: the stages read and
/// write them once per frame each).
#[derive(Debug, Clone, Copy)]
pub struct Hdr {
    /// Destination MAC.
    pub dst: Mac,
    /// Source MAC.
    pub src: Mac,
    /// Decision so far.
    pub action: Action,
}

/// Where a batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// Received on this port by the worker running it: frames of flows that
    /// live with another worker are handed to it.
    Port(PortId),
    /// Received on this port by another worker, which handed the frames
    /// over: they belong to this worker's flows and are not handed on.
    HandedOver(PortId),
}

/// Where a batch's frames end up besides other workers: the transmit
/// queues, the buffer pool (drops), and the ingress port's drop counters.
#[derive(Debug)]
pub struct Sinks<'a> {
    /// Buffers of dropped frames go back here.
    pub pool: &'a mut PacketPool,
    /// Output queues.
    pub txq: &'a mut TxQueues,
    /// Drop counters of the ingress port.
    pub drops: &'a mut BatchDrops,
}

impl<'a> Sinks<'a> {
    /// The sinks of one batch.
    pub fn new(pool: &'a mut PacketPool, txq: &'a mut TxQueues, drops: &'a mut BatchDrops) -> Self {
        Self { pool, txq, drops }
    }
}

/// Flows a [`Pipeline::default`] table holds (tests and benchmarks; a
/// worker's table is sized by the switch's `max_flows`).
pub const DEFAULT_FLOWS: usize = 65_536;

/// One worker's pipeline: its connection table, and scratch space reused
/// across batches (no allocation per batch).
pub struct Pipeline {
    hdrs: Vec<Hdr>,
    actions: Vec<Action>,
    encap: vxlan::EncapCache,
    parsed: ipv4::Parsed,
    ct: CtTable,
    steer: steer::Steer,
    handed: Vec<(u16, Packet)>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("flows", &self.ct.len())
            .field("steer", &self.steer)
            .finish_non_exhaustive()
    }
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new(CtTable::with_max(DEFAULT_FLOWS))
    }
}

impl Pipeline {
    /// A pipeline (of worker 0 of 1) whose flows live in `ct`.
    pub fn new(ct: CtTable) -> Self {
        Self {
            hdrs: Vec::new(),
            actions: Vec::new(),
            encap: Default::default(),
            parsed: Default::default(),
            ct,
            steer: steer::Steer::default(),
            handed: Vec::with_capacity(BATCH),
        }
    }

    /// Makes this the pipeline of worker `me` of `workers`.
    pub fn set_worker(&mut self, me: usize, workers: usize) {
        self.steer = steer::Steer::new(me, workers);
    }

    /// The connection table.
    pub fn ct(&self) -> &CtTable {
        &self.ct
    }

    /// The connection table, to change (taking flows over, expiry, removal:
    /// the worker does it between bursts).
    pub fn ct_mut(&mut self) -> &mut CtTable {
        &mut self.ct
    }

    /// The frames the last runs handed to other workers (worker index and
    /// frame), for the caller to deliver.
    pub fn handed(&mut self) -> &mut Vec<(u16, Packet)> {
        &mut self.handed
    }

    /// Runs one batch through every stage, moving each frame into
    /// `sinks.txq`, into [`Pipeline::handed`], or back into `sinks.pool`
    /// (drops, counted in `sinks.drops`).
    pub fn run(
        &mut self,
        tables: &Tables,
        snap: &Snapshot,
        ingress: Ingress,
        now: u32,
        batch: &mut Vec<Packet>,
        sinks: Sinks<'_>,
    ) {
        let (in_port, steer) = match ingress {
            Ingress::Port(p) => (p, self.steer),
            Ingress::HandedOver(p) => (p, self.steer.handed_over()),
        };
        let Sinks { pool, txq, drops } = sinks;
        if let Some(u) = snap.uplink.as_ref().filter(|u| u.port == in_port) {
            let mut ctx = gateway::Ctx::new(tables, snap, now, in_port, &mut self.ct, steer);
            uplink::from_uplink(&mut ctx, u, batch, &mut self.actions, &mut self.parsed);
            ctx.count_refused_learns(drops);
            self.release_freed(tables);
            let mut out = Out {
                tables,
                snap,
                in_port,
                pool,
                txq,
                drops,
                encap: &mut self.encap,
                handed: &mut self.handed,
            };
            emit(batch, self.actions.iter().copied(), &mut out);
            return;
        }
        let net: Option<NetId> = snap.port(in_port).and_then(|p| p.net);
        let Some(net) = net.and_then(|n| snap.network(n)) else {
            for _ in 0..batch.len() {
                drops.add(DropReason::NoNetwork);
            }
            pool.put_all(batch);
            return;
        };
        classify::run(batch, in_port, &tables.fdb, net.id, &mut self.hdrs);
        if let Some(l) = net.l3.as_ref() {
            gateway::mark(batch, &mut self.hdrs, l);
        }
        learn::run(&tables.fdb, net.id, in_port, now, &self.hdrs, drops);
        forward::run(&tables.fdb, net.id, in_port, &mut self.hdrs);
        if let Some(ov) = net.overlay.as_ref().filter(|o| !o.arp.is_empty()) {
            arp::suppress_arp(batch, &mut self.hdrs, ov, in_port);
        }
        if let Some(l) = net.l3.as_ref() {
            if l.no_icc {
                forward::no_icc(l, in_port, &mut self.hdrs, drops);
            }
            if self.hdrs.iter().any(|h| h.action == Action::Route) {
                let mut ctx = gateway::Ctx::new(tables, snap, now, in_port, &mut self.ct, steer);
                gateway::route_batch(&mut ctx, net, l, batch, &mut self.hdrs, &mut self.parsed);
                self.release_freed(tables);
            }
        }
        // The actions are read straight from `hdrs` (no copy into
        // `actions`): ~3 cycles per frame on the L2 fast path (measured).
        let mut out = Out {
            tables,
            snap,
            in_port,
            pool,
            txq,
            drops,
            encap: &mut self.encap,
            handed: &mut self.handed,
        };
        emit(batch, self.hdrs.iter().map(|h| h.action), &mut out);
    }

    /// Gives the room of flows the batch removed (a new connection taking
    /// over a closed one's tuples) back to the shared bound.
    #[inline]
    fn release_freed(&mut self, tables: &Tables) {
        tables.ct.release(self.ct.take_freed());
    }
}
