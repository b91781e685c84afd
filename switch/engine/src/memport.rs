//! An in-memory port for tests and benchmarks: frames injected by a test
//! appear on its receive side; frames the switch sends are collected.
use crate::packet::{Packet, PacketPool};
use crate::port::{Port, PortCaps, PortError, TxResult};
use crossbeam::queue::ArrayQueue;
use std::sync::Arc;

/// The test's end of a [`MemPort`].
#[derive(Debug, Clone)]
pub struct MemPortHandle {
    rx: Arc<ArrayQueue<Packet>>,
    tx: Arc<ArrayQueue<Packet>>,
}

impl MemPortHandle {
    /// Queues a frame for the switch to receive; `false` if the queue is full.
    pub fn inject(&self, frame: &[u8]) -> bool {
        self.rx.push(Packet::from_slice(frame)).is_ok()
    }

    /// Queues an already built packet.
    pub fn inject_packet(&self, p: Packet) -> Result<(), Packet> {
        self.rx.push(p)
    }

    /// Takes every frame the switch sent so far.
    pub fn drain(&self) -> Vec<Packet> {
        std::iter::from_fn(|| self.tx.pop()).collect()
    }

    /// Takes one frame the switch sent.
    pub fn pop(&self) -> Option<Packet> {
        self.tx.pop()
    }
}

/// The switch's end of an in-memory port.
#[derive(Debug)]
pub struct MemPort {
    name: String,
    caps: PortCaps,
    rx: Arc<ArrayQueue<Packet>>,
    tx: Arc<ArrayQueue<Packet>>,
    /// Keep sent frames for the handle (tests) or recycle them (benchmarks).
    capture: bool,
}

impl MemPort {
    /// A port whose queues hold `depth` frames each.
    pub fn new(name: &str, depth: usize, caps: PortCaps) -> (MemPort, MemPortHandle) {
        let rx = Arc::new(ArrayQueue::new(depth));
        let tx = Arc::new(ArrayQueue::new(depth));
        (
            MemPort {
                name: name.to_string(),
                caps,
                rx: rx.clone(),
                tx: tx.clone(),
                capture: true,
            },
            MemPortHandle { rx, tx },
        )
    }

    /// Sent frames go straight back to the pool (a sink for benchmarks).
    pub fn discard_tx(mut self) -> Self {
        self.capture = false;
        self
    }
}

impl Port for MemPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn caps(&self) -> PortCaps {
        self.caps
    }

    fn rx_burst(
        &mut self,
        _pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError> {
        let mut n = 0;
        while n < max {
            match self.rx.pop() {
                Some(p) => {
                    out.push(p);
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }

    fn tx_burst(&mut self, pkts: &mut Vec<Packet>, pool: &mut PacketPool) -> TxResult {
        let mut r = TxResult::default();
        for p in pkts.drain(..) {
            let len = p.len();
            if !self.capture {
                r.sent += 1;
                r.bytes += len;
                pool.put(p);
                continue;
            }
            match self.tx.push(p) {
                Ok(()) => {
                    r.sent += 1;
                    r.bytes += len;
                }
                Err(p) => {
                    r.full += 1;
                    pool.put(p);
                }
            }
        }
        r
    }
}
