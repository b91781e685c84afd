//! The L2 pipeline: one module per stage, each a pass over the batch.
//!
//! `classify` (parse, drop runts and bad sources) → `learn` (source MAC) →
//! `forward` (destination lookup: unicast, flood or drop) → `flood`
//! (replication) → per-output-port queues. `offload` runs at transmit time,
//! finishing checksums and cutting TSO segments for ports that cannot take
//! them.
pub mod classify;
pub mod flood;
pub mod forward;
pub mod learn;
pub mod offload;

use crate::fdb::{FdbKey, NetId};
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
}

/// Per-frame facts the stages pass along.
#[derive(Debug, Clone, Copy)]
pub struct Hdr {
    /// Destination MAC.
    pub dst: Mac,
    /// Source MAC.
    pub src: Mac,
    /// FDB key of the destination (unicast only).
    pub dst_key: FdbKey,
    /// FDB key of the source.
    pub src_key: FdbKey,
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

/// Scratch space reused across batches (no allocation per batch).
#[derive(Debug, Default)]
pub struct Pipeline {
    hdrs: Vec<Hdr>,
}

impl Pipeline {
    /// Runs one batch received on `in_port` through every stage, moving each
    /// frame into `txq` or back into `pool` (drops, counted in `drops`).
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
        let net: Option<NetId> = snap.port(in_port).and_then(|p| p.net);
        let Some(net) = net.and_then(|n| snap.network(n)) else {
            for _ in 0..batch.len() {
                drops.add(DropReason::NoNetwork);
            }
            pool.put_all(batch);
            return;
        };
        classify::run(batch, in_port, &tables.fdb, net.id, &mut self.hdrs);
        learn::run(&tables.fdb, in_port, now, &self.hdrs, drops);
        forward::run(&tables.fdb, in_port, &mut self.hdrs);
        for (p, h) in batch.drain(..).zip(self.hdrs.iter()) {
            match h.action {
                Action::Unicast(out) => txq.push(out, p),
                Action::Flood => flood::replicate(p, net, in_port, pool, txq),
                Action::Drop(r) => {
                    drops.add(r);
                    pool.put(p);
                }
            }
        }
    }
}
