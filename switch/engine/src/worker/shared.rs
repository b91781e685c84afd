//! The part of a worker other threads touch: its queues (frames for its
//! ports, frames of its connections), its counters, and how it is parked
//! and woken ([`Parker`]; [`Nap`] on memory for tests and benchmarks).
use crate::packet::Packet;
use crate::port::PortId;
use crossbeam::queue::ArrayQueue;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How an idle worker sleeps and is woken: the platform's part of the idle
/// path.
pub trait Parker: Send + Sync + std::fmt::Debug {
    /// Wakes the worker from [`Parker::park`], or makes its next one return
    /// at once.
    fn unpark(&self);
    /// Sleeps until [`Parker::unpark`], until one of `fds` is readable, or
    /// for `timeout` at most.
    fn park(&self, fds: &[BorrowedFd<'_>], timeout: Duration);
}

/// A [`Parker`] on memory (a condition variable). It cannot wait on fds:
/// given any, it naps 1 ms at most and looks again.
#[derive(Debug, Default)]
pub struct Nap {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Parker for Nap {
    fn unpark(&self) {
        if let Ok(mut w) = self.woken.lock() {
            *w = true;
            self.cv.notify_one();
        }
    }

    fn park(&self, fds: &[BorrowedFd<'_>], timeout: Duration) {
        let t = if fds.is_empty() {
            timeout
        } else {
            timeout.min(Duration::from_millis(1))
        };
        let Ok(g) = self.woken.lock() else {
            return;
        };
        if let Ok((mut g, _)) = self.cv.wait_timeout_while(g, t, |w| !*w) {
            *g = false;
        }
    }
}

/// The part of a worker other threads touch.
#[derive(Debug)]
pub struct WorkerShared {
    /// Frames other workers sent to this worker's ports.
    pub(super) inbox: ArrayQueue<(PortId, Packet)>,
    /// Frames other workers received for this worker's flows, with the
    /// port they arrived on.
    pub(super) handoff: ArrayQueue<(PortId, Packet)>,
    /// Frames this worker handed to another for its flows.
    pub handed_over: AtomicU64,
    /// Frames other workers handed to this one.
    pub handed_in: AtomicU64,
    pub(super) parker: Box<dyn Parker>,
    pub(super) sleeping: AtomicBool,
    /// Loop iterations.
    pub loops: AtomicU64,
    /// Loop iterations that found work.
    pub busy_loops: AtomicU64,
    /// Times the worker went to sleep.
    pub sleeps: AtomicU64,
    /// The worker thread's OS id, once it runs (0 before).
    pub tid: AtomicI32,
}

impl WorkerShared {
    /// The shared part of a worker that sleeps and is woken with `parker`.
    pub fn new(parker: Box<dyn Parker>) -> Self {
        Self {
            inbox: ArrayQueue::new(4096),
            handoff: ArrayQueue::new(4096),
            handed_over: AtomicU64::new(0),
            handed_in: AtomicU64::new(0),
            parker,
            sleeping: AtomicBool::new(false),
            loops: AtomicU64::new(0),
            busy_loops: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            tid: AtomicI32::new(0),
        }
    }

    /// Wakes the worker if it sleeps.
    pub fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            self.parker.unpark();
        }
    }

    /// Wakes the worker whether it sleeps or not: after a command, which
    /// it may have just missed on its way to sleep.
    pub fn kick(&self) {
        self.parker.unpark();
    }
}

/// The shared parts of `n` workers that park on memory ([`Nap`]), for
/// tests and benchmarks that drive [`Worker::poll_once`] without threads.
/// (Inboxes must exist before any worker starts: each may hand frames to
/// any other.)
pub fn shared_on_memory(n: usize) -> Arc<[Arc<WorkerShared>]> {
    (0..n)
        .map(|_| Arc::new(WorkerShared::new(Box::<Nap>::default())))
        .collect::<Vec<_>>()
        .into()
}
