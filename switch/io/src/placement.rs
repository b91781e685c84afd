//! Where threads run: the cores this process may use, the split between
//! pinned workers and everything else, pinning the calling thread, and what
//! the kernel says about a thread's placement.
//!
//! The placement is decided without a race. Before any worker or other
//! thread is spawned, the starting thread restricts itself to the control
//! cores ([`Plan::control`]); every thread spawned afterwards inherits that
//! mask. A pinned worker then narrows its own mask to its core
//! ([`pin_current`]) as its first act and reports the result before it is
//! counted as started. Nothing re-pins threads it finds by name.
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use std::collections::BTreeSet;

/// A set of core numbers, printed as a list (`0-3,6`).
pub type Cores = BTreeSet<usize>;

/// The cores the calling thread may run on.
pub fn allowed_here() -> std::io::Result<Cores> {
    affinity(0)
}

/// The cores thread `tid` (0: the calling thread) may run on.
pub fn affinity(tid: i32) -> std::io::Result<Cores> {
    let set = sched_getaffinity(Pid::from_raw(tid)).map_err(std::io::Error::from)?;
    Ok((0..CpuSet::count())
        .filter(|c| set.is_set(*c).unwrap_or(false))
        .collect())
}

fn set_affinity(tid: i32, cores: &Cores) -> std::io::Result<()> {
    let mut set = CpuSet::new();
    for &c in cores {
        set.set(c).map_err(std::io::Error::from)?;
    }
    sched_setaffinity(Pid::from_raw(tid), &set).map_err(std::io::Error::from)
}

/// `0-3,6` for {0, 1, 2, 3, 6}.
pub fn list(cores: &Cores) -> String {
    let mut out = Vec::new();
    let mut it = cores.iter().copied().peekable();
    while let Some(first) = it.next() {
        let mut last = first;
        while it.peek() == Some(&(last + 1)) {
            last = it.next().unwrap_or(last);
        }
        out.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    out.join(",")
}

/// The split of the cores this process may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Cores the process may use at start.
    pub allowed: Cores,
    /// Cores of pinned workers.
    pub pinned: Cores,
    /// Cores for everything else: control, housekeeping, sync threads and
    /// unpinned workers. The allowed cores less the pinned ones; all the
    /// allowed cores when the workers take every one of them.
    pub control: Cores,
}

/// Why a placement cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// A worker's core is not one this process may use.
    #[error(
        "workers[{worker}].core = {core}, but this process may run only on cores {allowed} \
         (its CPU affinity or cpuset); choose one of those or start vswitch with a wider affinity"
    )]
    CoreNotAllowed {
        /// Index of the worker.
        worker: usize,
        /// The core it asks for.
        core: usize,
        /// The cores this process may use, as a list.
        allowed: String,
    },
}

impl Plan {
    /// Splits `allowed` between workers pinned to `cores` (one entry per
    /// worker; `None`: not pinned) and everything else.
    pub fn new(allowed: Cores, cores: &[Option<usize>]) -> Result<Self, PlacementError> {
        let mut pinned = Cores::new();
        for (worker, c) in cores.iter().enumerate() {
            let Some(core) = *c else { continue };
            if !allowed.contains(&core) {
                return Err(PlacementError::CoreNotAllowed {
                    worker,
                    core,
                    allowed: list(&allowed),
                });
            }
            pinned.insert(core);
        }
        let rest: Cores = allowed.difference(&pinned).copied().collect();
        let control = if rest.is_empty() {
            allowed.clone()
        } else {
            rest
        };
        Ok(Self {
            allowed,
            pinned,
            control,
        })
    }

    /// Whether the control threads share a core with a pinned worker.
    pub fn control_shares_workers_cores(&self) -> bool {
        !self.control.is_disjoint(&self.pinned)
    }

    /// Restricts the calling thread to the control cores. Call it before any
    /// thread is spawned: they inherit the mask.
    pub fn enter_control(&self) -> std::io::Result<()> {
        set_affinity(0, &self.control)
    }

    /// The cores a worker pinned to `core` (or not pinned) should be
    /// allowed: what its placement is checked against.
    pub fn expected(&self, core: Option<usize>) -> Cores {
        match core {
            Some(c) => Cores::from([c]),
            None => self.control.clone(),
        }
    }
}

/// The calling thread's kernel thread id.
pub fn current_tid() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// Pins the calling thread to `core` and checks that the kernel took it.
pub fn pin_current(core: usize) -> Result<(), String> {
    let want = Cores::from([core]);
    set_affinity(0, &want).map_err(|e| format!("cannot pin to core {core}: {e}"))?;
    match allowed_here() {
        Ok(got) if got == want => Ok(()),
        Ok(got) => Err(format!(
            "asked for core {core}, the kernel allows cores {}",
            list(&got)
        )),
        Err(e) => Err(format!("cannot read back the affinity of core {core}: {e}")),
    }
}

/// Gives the calling thread the nice value `nice` (-20, the most favoured,
/// to 19) and checks that the kernel took it. On Linux a nice value belongs
/// to a thread: `setpriority` with a thread id changes that thread alone.
pub fn set_nice_current(nice: i32) -> Result<(), String> {
    let tid = current_tid();
    // SAFETY: setpriority(2) takes three integers and touches no memory of
    // this process.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r != 0 {
        return Err(format!(
            "cannot set nice {nice}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .map_err(|e| format!("cannot read back the nice value: {e}"))?;
    match nice_of(&stat) {
        Some(got) if got == nice => Ok(()),
        got => Err(format!("asked for nice {nice}, the kernel reports {got:?}")),
    }
}

/// Where a thread of this process is, as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadPlacement {
    /// Cores it may run on.
    pub allowed: Cores,
    /// The core it last ran on.
    pub last_cpu: Option<usize>,
    /// Its nice value.
    pub nice: Option<i32>,
}

/// The placement of thread `tid` of this process.
pub fn of_thread(tid: i32) -> std::io::Result<ThreadPlacement> {
    let allowed = affinity(tid)?;
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
    Ok(ThreadPlacement {
        allowed,
        last_cpu: last_cpu(&stat),
        nice: nice_of(&stat),
    })
}

/// Field `n` of a `/proc/.../stat` line. The second field, the command in
/// parentheses, may itself hold spaces and parentheses: count from the
/// last `)`.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the command start at field 3.
    rest.split_whitespace().nth(n - 3)
}

/// Field 39 (`processor`) of a `/proc/.../stat` line.
fn last_cpu(stat: &str) -> Option<usize> {
    stat_field(stat, 39)?.parse().ok()
}

/// Field 19 (`nice`) of a `/proc/.../stat` line.
fn nice_of(stat: &str) -> Option<i32> {
    stat_field(stat, 19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores(v: &[usize]) -> Cores {
        v.iter().copied().collect()
    }

    #[test]
    fn plan_keeps_control_off_pinned_cores() {
        let p = Plan::new(cores(&[0, 1, 2, 3]), &[Some(1), None, Some(3)]).unwrap();
        assert_eq!(p.pinned, cores(&[1, 3]));
        assert_eq!(p.control, cores(&[0, 2]));
        assert!(!p.control_shares_workers_cores());
        assert_eq!(p.expected(Some(3)), cores(&[3]));
        assert_eq!(p.expected(None), cores(&[0, 2]));
    }

    #[test]
    fn plan_shares_when_workers_take_every_core() {
        let p = Plan::new(cores(&[0, 1]), &[Some(0), Some(1)]).unwrap();
        assert_eq!(p.control, cores(&[0, 1]));
        assert!(p.control_shares_workers_cores());
        let p = Plan::new(cores(&[0, 1]), &[None]).unwrap();
        assert_eq!(p.control, cores(&[0, 1]));
        assert!(p.pinned.is_empty());
    }

    #[test]
    fn plan_refuses_a_core_outside_the_affinity() {
        let e = Plan::new(cores(&[0, 1, 4, 5]), &[None, Some(3)]).unwrap_err();
        assert_eq!(
            e,
            PlacementError::CoreNotAllowed {
                worker: 1,
                core: 3,
                allowed: "0-1,4-5".into()
            }
        );
        assert!(e.to_string().contains("workers[1].core = 3"), "{e}");
    }

    #[test]
    fn lists_ranges() {
        assert_eq!(list(&cores(&[])), "");
        assert_eq!(list(&cores(&[2])), "2");
        assert_eq!(list(&cores(&[0, 1, 2, 5, 7, 8])), "0-2,5,7-8");
    }

    #[test]
    fn reads_the_processor_and_nice_fields() {
        // A command with a space and a parenthesis in it.
        let mut s = String::from("1234 (a b) c) S");
        for f in 4..=52 {
            s.push(' ');
            s.push_str(&match f {
                39 => "7".to_string(),
                19 => "-20".to_string(),
                _ => f.to_string(),
            });
        }
        assert_eq!(last_cpu(&s), Some(7));
        assert_eq!(nice_of(&s), Some(-20));
        assert_eq!(last_cpu("garbage"), None);
        assert_eq!(nice_of("garbage"), None);
    }

    /// A thread's nice value is its own: the thread that lowers its
    /// priority (raising needs CAP_SYS_NICE; lowering does not) reads the
    /// new value back, and the test's own thread keeps its value.
    #[test]
    fn nice_is_set_on_the_calling_thread_only() {
        let before = of_thread(current_tid()).unwrap().nice.expect("nice field");
        let want = (before + 1).min(19);
        let got = std::thread::spawn(move || {
            set_nice_current(want).unwrap();
            of_thread(current_tid()).unwrap().nice
        })
        .join()
        .unwrap();
        assert_eq!(got, Some(want));
        assert_eq!(of_thread(current_tid()).unwrap().nice, Some(before));
    }

    #[test]
    fn own_thread_placement_is_readable() {
        let tid = current_tid();
        let p = of_thread(tid).unwrap();
        assert_eq!(p.allowed, allowed_here().unwrap());
        let cpu = p.last_cpu.expect("processor field");
        assert!(p.allowed.contains(&cpu), "{p:?}");
    }

    #[test]
    fn pins_a_thread_and_reads_it_back() {
        let allowed = allowed_here().unwrap();
        let core = *allowed.iter().next_back().unwrap();
        // A thread of its own, so the test harness's thread keeps its mask.
        let (tid, got) = std::thread::spawn(move || {
            pin_current(core).unwrap();
            // Run once more so the kernel has moved us.
            std::thread::yield_now();
            (current_tid(), of_thread(current_tid()).unwrap())
        })
        .join()
        .unwrap();
        assert!(tid > 0);
        assert_eq!(got.allowed, cores(&[core]));
        assert_eq!(got.last_cpu, Some(core));
        let outside = (0..CpuSet::count()).find(|c| !allowed.contains(c)).unwrap();
        let e = std::thread::spawn(move || pin_current(outside))
            .join()
            .unwrap()
            .unwrap_err();
        assert!(e.contains(&format!("core {outside}")), "{e}");
    }
}
