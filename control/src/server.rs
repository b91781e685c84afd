//! `vswitch run`: the control thread (management socket), the housekeeping
//! timer and signal handling around the workers.
use crate::api::Response;
use crate::config::Config;
use crate::mgmt;
use crate::state::State;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vswitch_io::placement::{self, Plan};

/// Decides where threads run, before any is spawned: this thread takes the
/// control cores (the allowed ones less the pinned workers'), so every
/// thread spawned from here on (control, housekeeping, sync, the uplink's
/// proxy, the cluster's, unpinned workers) inherits them, and each pinned
/// worker narrows itself to its own core as it starts
/// (`vswitch_io::placement`). Nothing is re-pinned later.
fn place_threads(cfg: &Config) -> Result<Plan, String> {
    let allowed = placement::allowed_here()
        .map_err(|e| format!("cannot read this process's CPU affinity: {e}"))?;
    let cores: Vec<Option<usize>> = cfg.workers.iter().map(|w| w.core).collect();
    let plan = Plan::new(allowed, &cores).map_err(|e| e.to_string())?;
    plan.enter_control().map_err(|e| {
        format!(
            "cannot keep the control threads on cores {}: {e}",
            placement::list(&plan.control)
        )
    })?;
    if plan.pinned.is_empty() {
        tracing::info!(cores = %placement::list(&plan.control), "no worker pinned; threads may run on any allowed core");
    } else if plan.control_shares_workers_cores() {
        tracing::warn!(
            cores = %placement::list(&plan.control),
            "the pinned workers take every core this process may use: control threads share their cores"
        );
    } else {
        tracing::info!(
            control = %placement::list(&plan.control),
            workers = %placement::list(&plan.pinned),
            "control threads kept off the workers' cores"
        );
    }
    for (i, a) in cores.iter().enumerate() {
        if let Some(c) = a {
            if cores[..i].contains(a) {
                tracing::warn!(
                    worker = i,
                    core = c,
                    "two workers pinned to the same core share it"
                );
            }
        }
    }
    Ok(plan)
}

/// Runs the switch until SIGINT/SIGTERM.
pub fn run(cfg: Config, socket: &Path, socket_group: Option<&str>) -> Result<(), String> {
    // Block the stop signals in every thread; one thread waits for them.
    let mut sigs = nix::sys::signal::SigSet::empty();
    sigs.add(nix::sys::signal::Signal::SIGINT);
    sigs.add(nix::sys::signal::Signal::SIGTERM);
    sigs.thread_block()
        .map_err(|e| format!("block signals: {e}"))?;

    cfg.validate().map_err(|e| e.to_string())?;
    let listener = mgmt::bind(socket, socket_group)?;

    let plan = place_threads(&cfg).inspect_err(|_| {
        let _ = std::fs::remove_file(socket);
    })?;
    let mut state = State::start(&cfg, plan).map_err(|e| {
        let _ = std::fs::remove_file(socket);
        e.to_string()
    })?;
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
            mgmt::serve(listener, move |req| match ctl.lock() {
                Ok(mut s) => s.handle(req),
                Err(_) => Response::error("switch state is poisoned; restart vswitch"),
            })
        })
        .map_err(|e| e.to_string())?;

    // Under systemd (Type=notify): ready once the socket answers. Without
    // NOTIFY_SOCKET this does nothing.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell the service manager that the switch is ready");
    }
    let sig = sigs.wait().map_err(|e| format!("sigwait: {e}"))?;
    tracing::info!(signal = ?sig, "stopping");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let sock: PathBuf = socket.to_path_buf();
    let _ = std::fs::remove_file(&sock);
    if let Ok(mut s) = state.lock() {
        s.shutdown();
    }
    Ok(())
}
