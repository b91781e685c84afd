//! The worker runtime: what the engine's worker loop needs of the platform.
//! Each worker gets a thread of its own (named `vswitch-worker{N}`, set up
//! by the caller, which pins it), and an eventfd-and-`poll(2)` [`Parker`]:
//! an idle adaptive worker sleeps on its ports' fds and its eventfd, and is
//! woken by a frame, a command or another worker's handoff.
use crossbeam::channel::Sender;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use vswitch_engine::clock::Clock;
use vswitch_engine::conntrack::{CtTable, FlowMemory};
use vswitch_engine::tables::Tables;
use vswitch_engine::worker::{
    Command, Event, Parker, Worker, WorkerConfig, WorkerShared, THREAD_NAME_PREFIX,
};

/// Parks a worker in `poll(2)` on its ports' fds and an eventfd that
/// [`Parker::unpark`] writes.
#[derive(Debug)]
pub struct EventFdParker {
    fd: EventFd,
}

impl EventFdParker {
    /// A parker with a fresh non-blocking eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            fd: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK)
                .map_err(std::io::Error::from)?,
        })
    }
}

impl Parker for EventFdParker {
    fn unpark(&self) {
        let _ = self.fd.write(1);
    }

    fn park(&self, fds: &[BorrowedFd<'_>], timeout: Duration) {
        let mut all = Vec::with_capacity(fds.len() + 1);
        all.push(PollFd::new(self.fd.as_fd(), PollFlags::POLLIN));
        all.extend(fds.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)));
        let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let _ = nix::poll::poll(&mut all, t);
        drop(all);
        // Consumed: the next park sleeps until the next unpark.
        let _ = self.fd.read();
    }
}

/// Creates the shared parts of `n` workers, each with an
/// [`EventFdParker`] (inboxes must exist before any worker starts, since
/// each may hand frames to any other).
pub fn shared_for(n: usize) -> std::io::Result<Arc<[Arc<WorkerShared>]>> {
    (0..n)
        .map(|_| EventFdParker::new().map(|p| Arc::new(WorkerShared::new(Box::new(p)))))
        .collect::<std::io::Result<Vec<_>>>()
        .map(Into::into)
}

/// The control thread's handle on a running worker.
pub struct WorkerHandle {
    /// Settings it runs with.
    pub config: WorkerConfig,
    cmd: Sender<Command>,
    /// Its shared state.
    pub shared: Arc<WorkerShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WorkerHandle {
    /// Sends a command and wakes the worker.
    pub fn send(&self, c: Command) {
        let _ = self.cmd.send(c);
        self.shared.kick();
    }

    /// Stops the worker and waits for it.
    pub fn stop(&mut self) {
        self.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Prepares a worker's thread before its loop starts (pins it to its core)
/// and returns the thread's OS id; an error stops the worker.
pub type ThreadSetup = Box<dyn FnOnce() -> Result<i32, String> + Send>;

/// Starts worker `config.id`. `setup` runs first in the new thread; `spawn`
/// returns once it has, with its error if it failed (the thread is then
/// gone), so a worker counts as started only where it was placed. The
/// worker's connection table lives in `flows` (a section of the flow file)
/// if given, else in anonymous memory; either way it is built in the
/// worker's thread, after pinning, so its pages are first touched there.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    config: WorkerConfig,
    tables: Arc<Tables>,
    all: Arc<[Arc<WorkerShared>]>,
    clock: Arc<dyn Clock>,
    events: Sender<Event>,
    setup: ThreadSetup,
    flows: Option<FlowMemory>,
) -> std::io::Result<WorkerHandle> {
    let (cmd_tx, cmd_rx) = crossbeam::channel::unbounded();
    let (ready_tx, ready_rx) = crossbeam::channel::bounded(1);
    let shared = all[config.id].clone();
    let thread = std::thread::Builder::new()
        .name(format!("{THREAD_NAME_PREFIX}{}", config.id))
        .spawn(move || {
            let tid = match setup() {
                Ok(tid) => tid,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            all[config.id].tid.store(tid, Ordering::Relaxed);
            let _ = ready_tx.send(Ok(()));
            let max = tables.ct.max();
            let ct = match flows {
                Some(mem) => CtTable::with_memory(max, mem),
                None => CtTable::with_max(max),
            };
            let advice = crate::hugepage::advise(&ct.regions());
            tracing::debug!(
                worker = config.id,
                ?advice,
                "connection table: huge page advice"
            );
            let mut w = Worker::with_conntrack(config, tables, all, clock, events, cmd_rx, ct);
            w.run();
        })?;
    let started = ready_rx
        .recv()
        .unwrap_or_else(|_| Err("worker thread exited during setup".into()));
    if let Err(e) = started {
        let _ = thread.join();
        return Err(std::io::Error::other(e));
    }
    Ok(WorkerHandle {
        config,
        cmd: cmd_tx,
        shared,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unpark wakes a park at once; a park with nothing to wake it
    /// waits its timeout; an unpark before the park is not lost.
    #[test]
    fn eventfd_parker_wakes_and_times_out() {
        let p = Arc::new(EventFdParker::new().unwrap());
        let t0 = std::time::Instant::now();
        p.park(&[], Duration::from_millis(30));
        assert!(t0.elapsed() >= Duration::from_millis(25));
        p.unpark();
        let t0 = std::time::Instant::now();
        p.park(&[], Duration::from_secs(5));
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "unpark before park lost"
        );
        let q = p.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            q.unpark();
        });
        let t0 = std::time::Instant::now();
        p.park(&[], Duration::from_secs(5));
        assert!(t0.elapsed() < Duration::from_secs(1), "not woken");
        h.join().unwrap();
    }
}
