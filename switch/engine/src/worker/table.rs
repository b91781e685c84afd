//! A worker's own connection table: the work control asks of it (a
//! listing, a removal), done [`EXPIRE_STEP`] slots between bursts, and
//! expiry, paced by the clock.
use super::Worker;
use crate::conntrack::{Flow, EXPIRE_STEP};
use crossbeam::channel::Sender;
use std::sync::atomic::Ordering;

/// One worker's flows, as [`Command::Flows`](super::Command::Flows) lists them.
#[derive(Debug, Default)]
pub struct FlowList {
    /// The flows.
    pub flows: Vec<Flow>,
    /// Bytes of memory the table takes at its bound (index and entries).
    pub table_bytes: usize,
}

/// Work on the connection table that control asked for, done a step at a
/// time between bursts.
pub(super) enum CtJob {
    List {
        from: usize,
        acc: FlowList,
        reply: Sender<FlowList>,
    },
    Remove {
        from: usize,
        removed: usize,
        pred: Box<dyn FnMut(&Flow) -> bool + Send>,
        ack: Sender<usize>,
    },
}

/// How often a worker adds a slice of its table to expiry's budget, and
/// how many such slices make a whole pass: every flow is looked at once a
/// second, which the shortest timeout (10 s) does not notice, for a tenth
/// of a pass's work each time.
const EXPIRY_TICK_NS: u64 = 100_000_000;
const EXPIRY_SLICES_PER_PASS: usize = 10;

impl Worker {
    /// One step of the work on the connection table: control's requests
    /// first, then expiry. Returns the slots visited (as work done, so an
    /// adaptive worker does not sleep with a request half done).
    pub(super) fn ct_work(&mut self, now: u32) -> usize {
        if let Some(job) = self.ct_jobs.front_mut() {
            let ct = self.pipeline.ct_mut();
            let slots = ct.slots();
            let done = match job {
                CtJob::List { from, acc, .. } => {
                    acc.flows.extend(ct.flows_in(*from, EXPIRE_STEP));
                    *from += EXPIRE_STEP;
                    *from >= slots
                }
                CtJob::Remove {
                    from,
                    removed,
                    pred,
                    ..
                } => {
                    *removed += ct.remove_if_in(*from, EXPIRE_STEP, pred);
                    *from += EXPIRE_STEP;
                    *from >= slots
                }
            };
            let freed = ct.take_freed();
            self.tables.ct.release(freed);
            if done {
                match self.ct_jobs.pop_front() {
                    Some(CtJob::List { mut acc, reply, .. }) => {
                        acc.table_bytes =
                            self.pipeline.ct().bytes_per_flow() * self.pipeline.ct().max();
                        let _ = reply.send(acc);
                    }
                    Some(CtJob::Remove { removed, ack, .. }) => {
                        let _ = ack.send(removed);
                    }
                    None => {}
                }
            }
            return EXPIRE_STEP.min(slots).max(1);
        }
        let now_ns = self.clock.now_ns();
        if now_ns >= self.expiry_next_ns {
            self.expiry_next_ns = now_ns + EXPIRY_TICK_NS;
            let slots = self.pipeline.ct().slots();
            if slots > 0 {
                self.expiry_budget = (slots / EXPIRY_SLICES_PER_PASS).max(EXPIRE_STEP.min(slots));
            }
        }
        if self.expiry_budget == 0 {
            return 0;
        }
        let step = EXPIRE_STEP.min(self.expiry_budget);
        self.expiry_budget -= step;
        let ct = self.pipeline.ct_mut();
        let expired = ct.expire(now, step);
        let freed = ct.take_freed();
        self.tables.ct.release(freed);
        if expired > 0 {
            self.tables
                .ct
                .stats
                .expired
                .fetch_add(expired as u64, Ordering::Relaxed);
        }
        // Expiry is housekeeping, not traffic: it does not keep an
        // adaptive worker awake.
        0
    }
}
