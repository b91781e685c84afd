//! `vswitch run`: the control thread (management socket), the housekeeping
//! timer and signal handling around the workers.
use crate::api::{Request, Response};
use crate::config::Config;
use crate::state::State;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Keeps this thread, and every thread it spawns from now on, off the cores
/// pinned workers poll: the control, housekeeping and sync threads (and the
/// cluster's) then never take a worker's core from it, as a DPDK
/// application keeps its control threads off the poll-mode cores. Workers
/// pin themselves to their own core after they start; an unpinned worker
/// shares the remaining cores with control. Nothing changes when the
/// workers' cores are all the cores this process may use.
fn keep_off_worker_cores(cfg: &Config) {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    use vswitch_engine::worker;
    let Ok(allowed) = sched_getaffinity(Pid::from_raw(0)) else {
        return;
    };
    let pinned: Vec<usize> = cfg.workers.iter().filter_map(|w| w.core).collect();
    let mut rest = CpuSet::new();
    let mut kept = Vec::new();
    for c in 0..CpuSet::count() {
        if allowed.is_set(c).unwrap_or(false) && !pinned.contains(&c) && rest.set(c).is_ok() {
            kept.push(c);
        }
    }
    if kept.is_empty() || pinned.is_empty() {
        return;
    }
    // This thread, and the threads the start already spawned (the uplink's
    // proxy, the cluster's), all but the workers.
    let mut threads = vec![Pid::from_raw(0)];
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let tid = t.file_name().to_str().and_then(|s| s.parse().ok());
            if let (false, Some(tid)) = (comm.starts_with(worker::THREAD_NAME_PREFIX), tid) {
                threads.push(Pid::from_raw(tid));
            }
        }
    }
    let failed = threads
        .iter()
        .filter(|t| sched_setaffinity(**t, &rest).is_err())
        .count();
    if failed == 0 {
        tracing::info!(cores = ?kept, "control threads kept off the workers' cores");
    } else {
        tracing::warn!(
            failed,
            "could not keep some control threads off the workers' cores"
        );
    }
}

/// Runs the switch until SIGINT/SIGTERM.
pub fn run(cfg: Config, socket: &Path) -> Result<(), String> {
    // Block the stop signals in every thread; one thread waits for them.
    let mut sigs = nix::sys::signal::SigSet::empty();
    sigs.add(nix::sys::signal::Signal::SIGINT);
    sigs.add(nix::sys::signal::Signal::SIGTERM);
    sigs.thread_block()
        .map_err(|e| format!("block signals: {e}"))?;

    cfg.validate().map_err(|e| e.to_string())?;
    if UnixStream::connect(socket).is_ok() {
        return Err(format!(
            "another vswitch is already listening on {}; stop it or pass --socket",
            socket.display()
        ));
    }
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("listen on {}: {e}", socket.display()))?;

    let mut state = State::start(&cfg).map_err(|e| {
        let _ = std::fs::remove_file(socket);
        e.to_string()
    })?;
    // After the start: the workers are up on their cores (and the start
    // checked those cores against the ones this process may use).
    keep_off_worker_cores(&cfg);
    let views = state.take_views();
    let state = Arc::new(Mutex::new(state));
    if let Some(views) = views {
        let st = state.clone();
        std::thread::Builder::new()
            .name("vswitch-sync".into())
            .spawn(move || {
                while let Ok(mut v) = views.recv() {
                    // Only the newest view matters.
                    while let Ok(n) = views.try_recv() {
                        v = n;
                    }
                    match st.lock() {
                        Ok(mut s) => s.apply_view(&v),
                        Err(_) => return,
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    }
    tracing::info!(socket = %socket.display(), "vswitch running");

    let hk = state.clone();
    std::thread::Builder::new()
        .name("vswitch-housekeeping".into())
        .spawn(move || loop {
            std::thread::sleep(crate::state::HOUSEKEEPING_TICK);
            match hk.lock() {
                Ok(mut s) => s.housekeeping(),
                Err(_) => return,
            }
        })
        .map_err(|e| e.to_string())?;

    let ctl = state.clone();
    std::thread::Builder::new()
        .name("vswitch-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = serve(c, &ctl) {
                            tracing::debug!(error = %e, "client connection");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "accept"),
                }
            }
        })
        .map_err(|e| e.to_string())?;

    let sig = sigs.wait().map_err(|e| format!("sigwait: {e}"))?;
    tracing::info!(signal = ?sig, "stopping");
    let sock: PathBuf = socket.to_path_buf();
    let _ = std::fs::remove_file(&sock);
    if let Ok(mut s) = state.lock() {
        s.shutdown();
    }
    Ok(())
}

fn serve(c: UnixStream, state: &Mutex<State>) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(c);
    let mut line = String::new();
    while r.read_line(&mut line)? > 0 {
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                tracing::debug!(?req, "request");
                match state.lock() {
                    Ok(mut s) => s.handle(req),
                    Err(_) => Response {
                        ok: false,
                        error: Some("switch state is poisoned; restart vswitch".into()),
                        data: serde_json::Value::Null,
                    },
                }
            }
            Err(e) => Response {
                ok: false,
                error: Some(format!("malformed request: {e}")),
                data: serde_json::Value::Null,
            },
        };
        let mut out = serde_json::to_vec(&resp)?;
        out.push(b'\n');
        w.write_all(&out)?;
        line.clear();
    }
    Ok(())
}

/// Sends one request to a running switch.
pub fn request(socket: &Path, req: &Request) -> Result<Response, String> {
    let c = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach vswitch at {}: {e} (is `vswitch run` running? set --socket or VSWITCH_SOCKET)",
            socket.display()
        )
    })?;
    let mut w = c.try_clone().map_err(|e| e.to_string())?;
    let mut body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    body.push(b'\n');
    w.write_all(&body).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(c)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("bad response from switch: {e}"))
}
