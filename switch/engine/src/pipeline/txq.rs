//! Transmit queues: the frames a batch sends, by output port, until the
//! worker hands each queue to its port.
use crate::packet::Packet;
use crate::port::PortId;
use crate::tables::MAX_PORTS;

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
