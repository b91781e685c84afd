//! The switch's workers as control sees them: starting each where its
//! configuration places it, choosing a worker for a new port, and what a
//! user is shown of them (placement as the kernel reports it, loop counters).
use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vswitch_engine::clock::Clock;
use vswitch_engine::conntrack::{Flow, FlowMemory};
use vswitch_engine::tables::Tables;
use vswitch_engine::worker::{Command, Event, IdleMode, WorkerConfig};
use vswitch_io::placement::{self, Cores, Plan};
use vswitch_io::runtime::{self, WorkerHandle};

/// How long control waits for a worker to answer a request on its table.
const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The running workers and the placement they were started with.
pub struct Workers {
    handles: Vec<WorkerHandle>,
    plan: Plan,
}

/// One worker in `vswitch stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Index among the workers.
    pub id: usize,
    /// The core its configuration pins it to (`None`: not pinned).
    pub core: Option<usize>,
    /// Idle behaviour.
    pub idle: IdleMode,
    /// Its thread's OS id.
    pub tid: i32,
    /// The cores the kernel allows it, as a list (`1`, `0,2-3`).
    pub allowed_cores: String,
    /// The core it last ran on.
    pub last_cpu: Option<usize>,
    /// Its thread's nice value, as the kernel reports it.
    #[serde(default)]
    pub nice: Option<i32>,
    /// Whether the allowed cores are the ones its configuration asks for
    /// (its core, or the control cores when it is not pinned).
    pub placed_as_configured: bool,
    /// Loop iterations.
    pub loops: u64,
    /// Loop iterations that found work.
    pub busy_loops: u64,
    /// Times it went to sleep.
    pub sleeps: u64,
    /// Frames it handed to another worker, whose connection they belong to.
    #[serde(default)]
    pub handed_over: u64,
    /// Frames other workers handed to it.
    #[serde(default)]
    pub handed_in: u64,
}

impl Workers {
    /// Starts one worker per `[[workers]]` entry. The calling thread has
    /// entered `plan`'s control cores already; a pinned worker pins itself
    /// before it counts as started, and a worker that cannot be placed
    /// where its configuration says fails the start with an error naming
    /// the core.
    /// Worker `i`'s connection table lives in `flows[i]` (a section of the
    /// flow file) when given.
    pub fn start(
        cfg: &Config,
        plan: Plan,
        tables: &Arc<Tables>,
        clock: &Arc<dyn Clock>,
        events: crossbeam::channel::Sender<Event>,
        flows: Vec<FlowMemory>,
    ) -> Result<Self, String> {
        let shared = runtime::shared_for(cfg.workers.len()).map_err(|e| format!("eventfd: {e}"))?;
        let mut handles = Vec::new();
        let mut flows = flows.into_iter();
        for (id, w) in cfg.workers.iter().enumerate() {
            let (core, nice) = (w.core, w.nice);
            let setup: runtime::ThreadSetup = Box::new(move || {
                if let Some(c) = core {
                    placement::pin_current(c)?;
                }
                placement::set_nice_current(nice)
                    .map_err(|e| format!("{e} (workers[{id}].nice; below 0 needs CAP_SYS_NICE)"))?;
                Ok(placement::current_tid())
            });
            let wc = WorkerConfig {
                id,
                core,
                idle: w.idle,
            };
            let h = runtime::spawn(
                wc,
                tables.clone(),
                shared.clone(),
                clock.clone(),
                events.clone(),
                setup,
                flows.next(),
            )
            .map_err(|e| match core {
                Some(c) => {
                    format!("cannot start worker {id} on core {c} (workers[{id}].core): {e}")
                }
                None => format!("cannot start worker {id}: {e}"),
            })?;
            handles.push(h);
        }
        let me = Self { handles, plan };
        for s in me.stats() {
            if !s.placed_as_configured {
                tracing::warn!(
                    worker = s.id,
                    allowed = s.allowed_cores,
                    "worker is not where its configuration places it"
                );
            }
            tracing::info!(worker = s.id, core = ?s.core, allowed = s.allowed_cores, "worker placed");
        }
        Ok(me)
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Sends a command to worker `i`.
    pub fn send(&self, i: usize, c: Command) {
        self.handles[i].send(c);
    }

    /// Every worker's flows with the worker's index (each worker copies
    /// its own between bursts), and the bytes their tables take at the
    /// bound. A worker that does not answer within `WAIT` is left out, with
    /// a warning.
    pub fn flows(&self) -> (Vec<(usize, Flow)>, usize) {
        let rxs: Vec<_> = self
            .handles
            .iter()
            .map(|h| {
                let (tx, rx) = crossbeam::channel::bounded(1);
                h.send(Command::Flows { reply: tx });
                rx
            })
            .collect();
        let (mut flows, mut bytes) = (Vec::new(), 0);
        for (i, rx) in rxs.into_iter().enumerate() {
            match rx.recv_timeout(WAIT) {
                Ok(l) => {
                    flows.extend(l.flows.into_iter().map(|f| (i, f)));
                    bytes += l.table_bytes;
                }
                Err(_) => tracing::warn!(worker = i, "worker did not list its flows in time"),
            }
        }
        (flows, bytes)
    }

    /// Removes the flows `pred` selects from every worker's table (each
    /// worker a step at a time between bursts), and waits until they are
    /// gone; returns how many.
    pub fn remove_flows(&self, pred: impl Fn(&Flow) -> bool + Clone + Send + 'static) -> usize {
        let rxs: Vec<_> = self
            .handles
            .iter()
            .map(|h| {
                let (tx, rx) = crossbeam::channel::bounded(1);
                let p = pred.clone();
                h.send(Command::RemoveFlows {
                    pred: Box::new(move |f: &Flow| p(f)),
                    ack: tx,
                });
                rx
            })
            .collect();
        let mut removed = 0;
        for (i, rx) in rxs.into_iter().enumerate() {
            match rx.recv_timeout(WAIT) {
                Ok(n) => removed += n,
                Err(_) => tracing::warn!(worker = i, "worker did not confirm flow removal"),
            }
        }
        removed
    }

    /// Stops every worker and waits for them.
    pub fn stop_all(&mut self) {
        for w in &mut self.handles {
            w.stop();
        }
    }

    /// What `vswitch stats` shows of each worker.
    pub fn stats(&self) -> Vec<WorkerStats> {
        self.handles
            .iter()
            .map(|w| {
                let tid = w.shared.tid.load(Ordering::Relaxed);
                let (allowed, last_cpu, nice) = match placement::of_thread(tid) {
                    Ok(p) => (p.allowed, p.last_cpu, p.nice),
                    Err(_) => (Cores::new(), None, None),
                };
                WorkerStats {
                    id: w.config.id,
                    core: w.config.core,
                    idle: w.config.idle,
                    tid,
                    placed_as_configured: allowed == self.plan.expected(w.config.core),
                    allowed_cores: placement::list(&allowed),
                    last_cpu,
                    nice,
                    loops: w.shared.loops.load(Ordering::Relaxed),
                    busy_loops: w.shared.busy_loops.load(Ordering::Relaxed),
                    sleeps: w.shared.sleeps.load(Ordering::Relaxed),
                    handed_over: w.shared.handed_over.load(Ordering::Relaxed),
                    handed_in: w.shared.handed_in.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}
