//! The poll-mode worker: rx burst → pipeline → tx burst per output port.
//!
//! A worker owns its ports (only it receives and transmits on them) and its
//! connection table (`table`), reads the other tables without locks, and
//! takes commands (add/remove a port, take flows over, list or remove
//! flows, stop) from the control thread through a channel it drains between
//! bursts. Frames for a port owned by another worker go through that
//! worker's inbox; frames of another worker's connections through its
//! handoff queue (`shared`).
//!
//! The loop does no I/O of its own: ports are behind [`Port`], and how an idle
//! worker sleeps and is woken is behind [`Parker`]. Threads, core pinning,
//! eventfd and `poll(2)` are the I/O crate's (`vswitch_io::runtime`); here,
//! [`Nap`] parks on memory, for tests and benchmarks.
mod shared;
mod table;

pub use shared::{shared_on_memory, Nap, Parker, WorkerShared};
pub use table::FlowList;

use crate::clock::Clock;
use crate::conntrack::{CtTable, Flow, FlowEntry};
use crate::packet::{Packet, PacketPool};
use crate::pipeline::{offload, Ingress, Pipeline, Sinks, TxQueues, BATCH};
use crate::port::{Port, PortId};
use crate::stats::{BatchDrops, DropReason};
use crate::tables::{Snapshot, Tables};
use crossbeam::channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use table::CtJob;

/// Worker threads are named this and their id (`vswitch-worker0`, ...).
pub const THREAD_NAME_PREFIX: &str = "vswitch-worker";

/// How a worker behaves when its ports are quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum IdleMode {
    /// Poll forever: lowest latency, one core at 100%.
    Busy,
    /// Poll while there is traffic; after `idle_after_us` without any, sleep
    /// in poll(2) on the ports' fds for at most `max_sleep_ms`, and go back to
    /// polling on the first frame.
    Adaptive {
        /// Quiet time before sleeping, in microseconds.
        idle_after_us: u64,
        /// Longest sleep, in milliseconds.
        max_sleep_ms: u64,
    },
}

impl Default for IdleMode {
    fn default() -> Self {
        IdleMode::Adaptive {
            idle_after_us: 200,
            max_sleep_ms: 100,
        }
    }
}

/// Static settings of one worker.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Index among the workers.
    pub id: usize,
    /// The core it is pinned to (`None`: not pinned); the runtime that
    /// starts the worker's thread does the pinning.
    pub core: Option<usize>,
    /// Idle behaviour.
    pub idle: IdleMode,
}

/// What the control thread asks of a worker.
pub enum Command {
    /// Start polling this port.
    AddPort {
        /// Its id in the tables.
        id: PortId,
        /// The port.
        port: Box<dyn Port>,
    },
    /// Stop polling this port and drop it; `ack` is signalled once it is gone.
    RemovePort {
        /// Its id.
        id: PortId,
        /// Signalled after the port is dropped.
        ack: Sender<()>,
    },
    /// Send `frame` out of port `port` (the control plane's own frames,
    /// e.g. gratuitous ARP after a takeover).
    Send {
        /// Port.
        port: PortId,
        /// The whole Ethernet frame.
        frame: Vec<u8>,
    },
    /// Take over flows an earlier switch process left (those whose
    /// container's port this worker owns); the table checks each.
    Adopt {
        /// The flows.
        flows: Vec<FlowEntry>,
    },
    /// Send a copy of every flow of this worker's table, taken
    /// [`EXPIRE_STEP`] slots between bursts at a time.
    Flows {
        /// Where the listing goes.
        reply: Sender<FlowList>,
    },
    /// Remove the flows `pred` selects, [`EXPIRE_STEP`] slots between
    /// bursts at a time; `ack` gets how many once done.
    RemoveFlows {
        /// Which.
        pred: Box<dyn FnMut(&Flow) -> bool + Send>,
        /// Signalled with the count when done.
        ack: Sender<usize>,
    },
    /// Leave the loop.
    Stop,
}

/// What a worker tells the control thread.
#[derive(Debug, Clone)]
pub enum Event {
    /// A port failed for good (e.g. its interface was deleted).
    PortGone {
        /// Its id.
        id: PortId,
        /// What happened.
        reason: String,
    },
}

struct Owned {
    id: PortId,
    port: Box<dyn Port>,
    gone: bool,
}

/// The loop's state. Public for benchmarks and scenario tests, which drive
/// [`Worker::poll_once`] on in-memory ports without a thread.
pub struct Worker {
    config: WorkerConfig,
    tables: Arc<Tables>,
    all: Arc<[Arc<WorkerShared>]>,
    clock: Arc<dyn Clock>,
    events: Sender<Event>,
    cmd_rx: Receiver<Command>,
    owned: Vec<Owned>,
    pool: PacketPool,
    batch: Vec<Packet>,
    scratch: Vec<Packet>,
    txq: TxQueues,
    pipeline: Pipeline,
    drops: BatchDrops,
    idle_since: Option<u64>,
    stop: bool,
    ct_jobs: std::collections::VecDeque<CtJob>,
    /// Slots expiry may still visit, and when it is next given more.
    expiry_budget: usize,
    expiry_next_ns: u64,
}

impl Worker {
    /// A worker not yet running, whose flows live in anonymous memory.
    pub fn new(
        config: WorkerConfig,
        tables: Arc<Tables>,
        all: Arc<[Arc<WorkerShared>]>,
        clock: Arc<dyn Clock>,
        events: Sender<Event>,
        cmd_rx: Receiver<Command>,
    ) -> Self {
        let ct = CtTable::with_max(tables.ct.max());
        Self::with_conntrack(config, tables, all, clock, events, cmd_rx, ct)
    }

    /// A worker not yet running, whose flows live in `ct` (memory the I/O
    /// side mapped: a flow file a restarted switch reads back).
    pub fn with_conntrack(
        config: WorkerConfig,
        tables: Arc<Tables>,
        all: Arc<[Arc<WorkerShared>]>,
        clock: Arc<dyn Clock>,
        events: Sender<Event>,
        cmd_rx: Receiver<Command>,
        ct: CtTable,
    ) -> Self {
        let pipeline = Self::pipeline(&config, &all, ct);
        Self {
            config,
            tables,
            all,
            clock,
            events,
            cmd_rx,
            owned: Vec::new(),
            pool: PacketPool::default(),
            batch: Vec::with_capacity(BATCH),
            scratch: Vec::with_capacity(BATCH * 4),
            txq: TxQueues::default(),
            pipeline,
            drops: BatchDrops::default(),
            idle_since: None,
            stop: false,
            ct_jobs: Default::default(),
            expiry_budget: 0,
            expiry_next_ns: 0,
        }
    }

    fn pipeline(config: &WorkerConfig, all: &[Arc<WorkerShared>], ct: CtTable) -> Pipeline {
        let mut p = Pipeline::new(ct);
        p.set_worker(config.id, all.len());
        p
    }

    /// The pipeline, with this worker's connection table (tests and
    /// benchmarks that drive [`Worker::poll_once`]).
    pub fn pipeline_mut(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    /// Adds a port directly (tests and benchmarks without a control thread).
    pub fn add_port(&mut self, id: PortId, port: Box<dyn Port>) {
        self.owned.retain(|o| o.id != id);
        self.owned.push(Owned {
            id,
            port,
            gone: false,
        });
    }

    fn me(&self) -> &WorkerShared {
        &self.all[self.config.id]
    }

    /// Runs until told to stop.
    pub fn run(&mut self) {
        tracing::info!(worker = self.config.id, idle = ?self.config.idle, "worker started");
        while !self.stop {
            let work = self.poll_once();
            self.me().loops.fetch_add(1, Ordering::Relaxed);
            if work > 0 {
                self.idle_since = None;
                self.me().busy_loops.fetch_add(1, Ordering::Relaxed);
                if work >= BATCH && matches!(self.config.idle, IdleMode::Adaptive { .. }) {
                    // An adaptive worker may share its core (edge boxes,
                    // two switches on one core). When its input keeps
                    // filling whole batches it lets the others run after
                    // each loop, so it does not outrun the thread that
                    // consumes what it sends: with two VXLAN hosts on one
                    // core, 43% of the small frames one encapsulated were
                    // dropped at the other's full socket without this
                    // (64-byte rate +25% with it). Loops of a few large TSO
                    // frames do not yield: that cost TCP ~10%. A busy worker
                    // owns its core and goes on.
                    std::thread::yield_now();
                }
            } else {
                self.idle();
            }
        }
        tracing::info!(worker = self.config.id, "worker stopped");
    }

    fn commands(&mut self) {
        while let Ok(c) = self.cmd_rx.try_recv() {
            match c {
                Command::AddPort { id, port } => {
                    tracing::debug!(
                        worker = self.config.id,
                        id,
                        name = port.name(),
                        "port added"
                    );
                    self.add_port(id, port);
                }
                Command::RemovePort { id, ack } => {
                    self.owned.retain(|o| o.id != id);
                    let q = self.txq.queue(id);
                    self.pool.put_all(q);
                    let _ = ack.send(());
                }
                Command::Send { port, frame } => {
                    self.txq.push(port, Packet::from_slice(&frame));
                }
                Command::Adopt { flows } => {
                    let offered = flows.len();
                    let now = self.clock.now_secs();
                    let taken = self.pipeline.ct_mut().adopt(flows, now);
                    self.tables.ct.adopted(taken);
                    tracing::info!(
                        worker = self.config.id,
                        taken,
                        offered,
                        "connections taken over from the previous switch"
                    );
                }
                Command::Flows { reply } => self.ct_jobs.push_back(CtJob::List {
                    from: 0,
                    acc: FlowList::default(),
                    reply,
                }),
                Command::RemoveFlows { pred, ack } => self.ct_jobs.push_back(CtJob::Remove {
                    from: 0,
                    removed: 0,
                    pred,
                    ack,
                }),
                Command::Stop => self.stop = true,
            }
        }
    }

    /// One pass: commands, rx on every port, handoffs, tx. Returns the number
    /// of frames handled.
    pub fn poll_once(&mut self) -> usize {
        self.commands();
        let snap = self.tables.snap.load_full();
        let now = self.clock.now_secs();
        let mut work = 0;
        for i in 0..self.owned.len() {
            if self.owned[i].gone {
                continue;
            }
            let id = self.owned[i].id;
            let rx = self.owned[i]
                .port
                .rx_burst(&mut self.pool, &mut self.batch, BATCH);
            self.owned[i].port.take_drops(&mut self.drops);
            match rx {
                Ok(0) => {}
                Ok(n) => {
                    work += n;
                    if let Some(v) = snap.port(id) {
                        let bytes: usize = self.batch.iter().map(Packet::len).sum();
                        v.stats.add_rx(n as u64, bytes as u64);
                    }
                    self.pipeline.run(
                        &self.tables,
                        &snap,
                        Ingress::Port(id),
                        now,
                        &mut self.batch,
                        Sinks::new(&mut self.pool, &mut self.txq, &mut self.drops),
                    );
                    self.hand_over(id);
                }
                Err(e) => {
                    self.owned[i].gone = true;
                    self.pool.put_all(&mut self.batch);
                    tracing::warn!(port = id, error = %e, "port failed; no longer polled");
                    let _ = self.events.send(Event::PortGone {
                        id,
                        reason: e.to_string(),
                    });
                }
            }
            // Drops of this port's batch, and those the port saw itself.
            if let Some(v) = snap.port(id) {
                self.drops.flush(&v.stats);
            }
        }
        work += self.handed_in(&snap, now);
        while let Some((pid, p)) = self.me().inbox.pop() {
            self.txq.push(pid, p);
            work += 1;
        }
        self.flush(&snap);
        work + self.ct_work(now)
    }

    /// Moves the frames the pipeline handed to other workers (their flows)
    /// into those workers' handoff queues; `in_port`: where they arrived.
    fn hand_over(&mut self, in_port: PortId) {
        let handed = self.pipeline.handed();
        if handed.is_empty() {
            return;
        }
        let n = handed.len() as u64;
        let mut last_woken = None;
        for (w, p) in handed.drain(..) {
            let Some(peer) = self.all.get(w as usize) else {
                self.drops.add(DropReason::HandoffFull);
                self.pool.put(p);
                continue;
            };
            if let Err((_, p)) = peer.handoff.push((in_port, p)) {
                self.drops.add(DropReason::HandoffFull);
                self.pool.put(p);
            } else if last_woken != Some(w) {
                peer.wake();
                last_woken = Some(w);
            }
        }
        self.me().handed_over.fetch_add(n, Ordering::Relaxed);
    }

    /// Runs the frames other workers handed over (this worker's flows)
    /// through the pipeline, a batch per run of frames from one port. At
    /// most what was queued when it looked: a peer that keeps handing
    /// frames over does not keep this worker from its own ports.
    fn handed_in(&mut self, snap: &Snapshot, now: u32) -> usize {
        let queued = self.me().handoff.len();
        if queued == 0 {
            return 0;
        }
        let mut cur: Option<PortId> = None;
        for _ in 0..queued {
            let Some((pid, p)) = self.all[self.config.id].handoff.pop() else {
                break;
            };
            if cur != Some(pid) || self.batch.len() >= BATCH {
                if let Some(c) = cur {
                    self.run_handed(snap, c, now);
                }
                cur = Some(pid);
            }
            self.batch.push(p);
        }
        if let Some(c) = cur {
            self.run_handed(snap, c, now);
        }
        self.me()
            .handed_in
            .fetch_add(queued as u64, Ordering::Relaxed);
        queued
    }

    fn run_handed(&mut self, snap: &Snapshot, in_port: PortId, now: u32) {
        self.pipeline.run(
            &self.tables,
            snap,
            Ingress::HandedOver(in_port),
            now,
            &mut self.batch,
            Sinks::new(&mut self.pool, &mut self.txq, &mut self.drops),
        );
        // Handed-over frames are not handed on; drop any a bug left.
        let left = self.pipeline.handed();
        for (_, p) in left.drain(..) {
            self.drops.add(DropReason::HandoffFull);
            self.pool.put(p);
        }
        if let Some(v) = snap.port(in_port) {
            self.drops.flush(&v.stats);
        }
    }

    fn flush(&mut self, snap: &Snapshot) {
        let pending = self.txq.take_pending();
        for &pid in &pending {
            let q = self.txq.queue(pid);
            let Some(view) = snap.port(pid) else {
                self.pool.put_all(q);
                continue;
            };
            if view.worker != self.config.id {
                let Some(peer) = self.all.get(view.worker) else {
                    view.stats.count_drop(DropReason::PortDown, q.len() as u64);
                    self.pool.put_all(q);
                    continue;
                };
                for p in q.drain(..) {
                    if let Err((_, p)) = peer.inbox.push((pid, p)) {
                        view.stats.count_drop(DropReason::HandoffFull, 1);
                        self.pool.put(p);
                    }
                }
                peer.wake();
                continue;
            }
            let Some(o) = self.owned.iter_mut().find(|o| o.id == pid && !o.gone) else {
                view.stats.count_drop(DropReason::PortDown, q.len() as u64);
                self.pool.put_all(q);
                continue;
            };
            offload::prepare(
                q,
                view.caps,
                &mut self.pool,
                &mut self.scratch,
                &mut self.drops,
            );
            let r = o.port.tx_burst(q, &mut self.pool);
            // A port must drain the queue; whatever it left is dropped.
            if !q.is_empty() {
                self.drops.add(DropReason::TxFull);
                self.pool.put_all(q);
            }
            view.stats.add_tx(r.sent as u64, r.bytes as u64);
            if r.full > 0 {
                view.stats.count_drop(DropReason::TxFull, r.full as u64);
            }
            if r.errors > 0 {
                view.stats.count_drop(DropReason::TxError, r.errors as u64);
            }
            if r.down > 0 {
                view.stats.count_drop(DropReason::PortDown, r.down as u64);
            }
            self.drops.flush(&view.stats);
        }
        self.txq.restore_pending(pending);
    }

    fn idle(&mut self) {
        for o in self.owned.iter_mut().filter(|o| !o.gone) {
            if let Err(e) = o.port.idle() {
                o.gone = true;
                tracing::warn!(port = o.id, error = %e, "port failed; no longer polled");
                let _ = self.events.send(Event::PortGone {
                    id: o.id,
                    reason: e.to_string(),
                });
            }
        }
        let IdleMode::Adaptive {
            idle_after_us,
            max_sleep_ms,
        } = self.config.idle
        else {
            // Busy mode still yields on an empty poll: on a host with few
            // cores the kernel work that feeds our rings (softirqs of the
            // veths, run by ksoftirqd on this core) must not wait for the
            // scheduler to preempt a spinning worker.
            std::thread::yield_now();
            return;
        };
        let now = self.clock.now_ns();
        let since = *self.idle_since.get_or_insert(now);
        if now.saturating_sub(since) < idle_after_us * 1000 {
            // Polling on before sleeping; yield as busy mode does, so that
            // another worker or the softirqs sharing this core run at once
            // instead of after the scheduler preempts us.
            std::thread::yield_now();
            return;
        }
        self.sleep(Duration::from_millis(max_sleep_ms.max(1)));
    }

    fn sleep(&mut self, max: Duration) {
        let me = self.all[self.config.id].clone();
        me.sleeping.store(true, Ordering::SeqCst);
        if !me.inbox.is_empty() || !me.handoff.is_empty() || !self.cmd_rx.is_empty() {
            me.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        me.sleeps.fetch_add(1, Ordering::Relaxed);
        let mut all_fds = true;
        let mut fds = Vec::with_capacity(self.owned.len());
        for o in self.owned.iter().filter(|o| !o.gone) {
            match o.port.wait_fd() {
                Some(fd) => fds.push(fd),
                None => all_fds = false,
            }
        }
        let timeout = if all_fds {
            max
        } else {
            // In-memory ports have no fd: nap briefly and look again.
            Duration::from_millis(1)
        };
        me.parker.park(&fds, timeout);
        drop(fds);
        me.sleeping.store(false, Ordering::SeqCst);
    }
}
