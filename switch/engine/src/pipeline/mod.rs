//! The pipeline: one module per stage, each a pass over the batch.
//!
//! From a container port: `classify` (parse, drop runts and bad sources) →
//! `gateway::mark` (frames for the gateway) → `learn` (source MAC) →
//! `forward` (destination lookup: unicast, flood or drop; `--no-icc`
//! filtering) → `arp::suppress_arp` (overlays) → `gateway::route_batch`
//! (ARP and echo for the gateway, routing, NAT) → `flood` (replication) or
//! `vxlan::encap` → per-output-port queues.
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
pub mod uplink;
pub mod vxlan;

use crate::conntrack::CtTable;
use crate::fdb::NetId;
use crate::packet::{Packet, PacketPool};
use crate::port::PortId;
use crate::stats::{BatchDrops, DropReason};
use crate::tables::{Snapshot, Tables, MAX_PORTS};
use crate::wire::mac::Mac;

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

/// Frames waiting for transmit, by output port.
#[derive(Debug)]
pub struct TxQueues {
    queues: Vec<Vec<Packet>>,
    pending: Vec<PortId>,
}

impl Default for TxQueues {
    fn default() -> Self {
        Self {
            queues: (0..MAX_PORTS).map(|_| Vec::new()).collect(),
            pending: Vec::with_capacity(64),
        }
    }
}

impl TxQueues {
    /// Queues `p` for `port`.
    #[inline]
    pub fn push(&mut self, port: PortId, p: Packet) {
        let Some(q) = self.queues.get_mut(port as usize) else {
            return;
        };
        if q.is_empty() {
            self.pending.push(port);
        }
        q.push(p);
    }

    /// Queues every frame of `batch` for `port`, leaving `batch` empty: one
    /// copy of the batch instead of a move per frame. `false` (and `batch`
    /// untouched) for a port out of range.
    #[inline]
    pub fn append(&mut self, port: PortId, batch: &mut Vec<Packet>) -> bool {
        let Some(q) = self.queues.get_mut(port as usize) else {
            return false;
        };
        if q.is_empty() && !batch.is_empty() {
            self.pending.push(port);
        }
        q.append(batch);
        true
    }

    /// Takes the list of ports with queued frames; give it back with
    /// [`TxQueues::restore_pending`] to reuse its allocation.
    #[inline]
    pub fn take_pending(&mut self) -> Vec<PortId> {
        std::mem::take(&mut self.pending)
    }

    /// Returns the (drained) list from [`TxQueues::take_pending`].
    #[inline]
    pub fn restore_pending(&mut self, mut v: Vec<PortId>) {
        v.clear();
        self.pending = v;
    }

    /// The queue of `port`.
    #[inline]
    pub fn queue(&mut self, port: PortId) -> &mut Vec<Packet> {
        &mut self.queues[port as usize]
    }

    /// Frames waiting in total.
    pub fn len(&self) -> usize {
        self.pending
            .iter()
            .map(|p| self.queues[*p as usize].len())
            .sum()
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
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

    /// Runs one batch received on `in_port` through every stage, moving each
    /// frame into `txq`, into [`Pipeline::handed`], or back into `pool`
    /// (drops, counted in `drops`).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        tables: &Tables,
        snap: &Snapshot,
        in_port: PortId,
        now: u32,
        batch: &mut Vec<Packet>,
        pool: &mut PacketPool,
        txq: &mut TxQueues,
        drops: &mut BatchDrops,
    ) {
        let steer = self.steer;
        self.run_as(steer, tables, snap, in_port, now, batch, pool, txq, drops);
    }

    /// [`Pipeline::run`] for a batch another worker received on `in_port`
    /// and handed over: its frames belong to this worker's flows, and are
    /// not handed on.
    #[allow(clippy::too_many_arguments)]
    pub fn run_handed_over(
        &mut self,
        tables: &Tables,
        snap: &Snapshot,
        in_port: PortId,
        now: u32,
        batch: &mut Vec<Packet>,
        pool: &mut PacketPool,
        txq: &mut TxQueues,
        drops: &mut BatchDrops,
    ) {
        let steer = self.steer.handed_over();
        self.run_as(steer, tables, snap, in_port, now, batch, pool, txq, drops);
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn run_as(
        &mut self,
        steer: steer::Steer,
        tables: &Tables,
        snap: &Snapshot,
        in_port: PortId,
        now: u32,
        batch: &mut Vec<Packet>,
        pool: &mut PacketPool,
        txq: &mut TxQueues,
        drops: &mut BatchDrops,
    ) {
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

/// Carries out each frame's action, in order, leaving `batch` empty.
///
/// A batch whose frames all go to one local port (one flow's burst, or
/// traffic between two containers) moves to that queue as a whole. Otherwise
/// frames are taken out of their slots (left empty, no allocation) one by
/// one rather than drained: a drained `Option<Packet>` went through the
/// stack split around its niche word, and each read back missed
/// store-to-load forwarding (~15 cycles per frame, measured).
#[inline]
fn emit(batch: &mut Vec<Packet>, actions: impl Iterator<Item = Action> + Clone, out: &mut Out<'_>) {
    if single_local_port(actions.clone()).is_some_and(|port| out.txq.append(port, batch)) {
        return;
    }
    for (slot, a) in batch.iter_mut().zip(actions) {
        let p = std::mem::take(slot);
        // The common case stays in this loop; the rest is out of line.
        match a {
            Action::Unicast(port) if !vxlan::is_remote(port) => out.txq.push(port, p),
            a => dispatch(p, a, out),
        }
    }
    batch.clear();
}

/// The local port every action sends its frame to, if they all send to the
/// same one (a batch that can move to its queue as a whole).
#[inline]
fn single_local_port(mut actions: impl Iterator<Item = Action>) -> Option<PortId> {
    let Some(Action::Unicast(port)) = actions.next() else {
        return None;
    };
    (!vxlan::is_remote(port) && actions.all(|a| a == Action::Unicast(port))).then_some(port)
}

/// What the output side of a batch needs: where frames go, where buffers
/// return, where drops are counted.
pub struct Out<'a> {
    /// Shared tables (FDB, neighbour requests).
    pub tables: &'a Tables,
    /// Configuration in force.
    pub snap: &'a Snapshot,
    /// The batch's ingress port.
    pub in_port: PortId,
    /// Buffers.
    pub pool: &'a mut PacketPool,
    /// Output queues.
    pub txq: &'a mut TxQueues,
    /// Drop counters of the ingress port.
    pub drops: &'a mut BatchDrops,
    /// Outer-header templates for remote VTEPs.
    pub encap: &'a mut vxlan::EncapCache,
    /// Frames for other workers' flows.
    pub handed: &'a mut Vec<(u16, Packet)>,
}

impl Out<'_> {
    /// Counts `r` and returns the buffer.
    #[inline]
    pub fn drop(&mut self, p: Packet, r: DropReason) {
        self.drops.add(r);
        self.pool.put(p);
    }
}

/// Carries out one frame's action (all but local unicast).
#[inline(never)]
fn dispatch(p: Packet, a: Action, o: &mut Out<'_>) {
    let snap = o.snap;
    let ingress_net = || {
        snap.port(o.in_port)
            .and_then(|v| v.net)
            .and_then(|n| snap.network(n))
    };
    match a {
        Action::Unicast(port) if vxlan::is_remote(port) => match ingress_net() {
            Some(nv) => vxlan::to_remote(p, nv, port, o),
            None => o.drop(p, DropReason::NoNetwork),
        },
        Action::Unicast(port) => o.txq.push(port, p),
        Action::Flood | Action::FloodIn(_) => {
            let nv = match a {
                Action::FloodIn(n) => snap.network(n),
                _ => ingress_net(),
            };
            match nv {
                Some(nv) => {
                    // A local frame is also replicated to the overlay's peers;
                    // one that came out of a tunnel (FloodIn) is not.
                    if matches!(a, Action::Flood) && nv.overlay.is_some() {
                        vxlan::flood_remote(&p, nv, o);
                    }
                    flood::replicate(p, nv, o.in_port, o.pool, o.txq)
                }
                None => o.drop(p, DropReason::NoNetwork),
            }
        }
        Action::Drop(r) => o.drop(p, r),
        Action::Route => o.drop(p, DropReason::NoRoute),
        Action::Steer(w) => o.handed.push((w, p)),
    }
}
