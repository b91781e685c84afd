//! `vswitch run`: the control thread that owns the state, the management
//! socket's thread, and signal handling around the workers.
use crate::api::{Request, Response};
use crate::config::Config;
use crate::mgmt;
use crate::state::State;
use crate::store::Store;
use crossbeam::channel::{Receiver, Sender};
use std::path::PathBuf;
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

/// Where `vswitch run` keeps and finds things.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The config file (re-read on `SIGHUP`), if any.
    pub config: Option<PathBuf>,
    /// The management socket.
    pub socket: PathBuf,
    /// Group allowed on the socket.
    pub socket_group: Option<String>,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Where to serve Docker's network driver API, if at all.
    pub docker_plugin: Option<PathBuf>,
}

/// What the control thread is told.
enum Msg {
    /// A management request and where its answer goes.
    Request(Request, Sender<Response>),
    /// The config file, re-read on `SIGHUP`.
    Reload(Box<Config>),
    /// Stop, then acknowledge.
    Stop(Sender<()>),
}

/// The control thread: the one owner of the switch's state. Requests,
/// reloads, housekeeping ticks and cluster views arrive as messages and
/// are handled one at a time; no other thread touches the state.
fn control_loop(
    mut state: State,
    msgs: Receiver<Msg>,
    views: Option<Receiver<vswitch_overlay::View>>,
) {
    let tick = crossbeam::channel::tick(crate::state::HOUSEKEEPING_TICK);
    let views = views.unwrap_or_else(crossbeam::channel::never);
    loop {
        crossbeam::select! {
            recv(msgs) -> m => match m {
                Ok(Msg::Request(req, reply)) => {
                    let _ = reply.send(state.handle(req));
                }
                Ok(Msg::Reload(cfg)) => state.reload(&cfg),
                Ok(Msg::Stop(ack)) => {
                    state.shutdown();
                    let _ = ack.send(());
                    return;
                }
                Err(_) => {
                    state.shutdown();
                    return;
                }
            },
            recv(tick) -> _ => state.housekeeping(),
            recv(views) -> v => {
                if let Ok(mut v) = v {
                    // Only the newest view matters.
                    while let Ok(n) = views.try_recv() {
                        v = n;
                    }
                    state.apply_view(&v);
                }
            }
        }
    }
}

/// Runs the switch until SIGINT/SIGTERM; `SIGHUP` re-reads the config.
pub fn run(cfg: Config, opts: &RunOptions) -> Result<(), String> {
    // Block the signals in every thread; this one waits for them.
    let mut sigs = nix::sys::signal::SigSet::empty();
    sigs.add(nix::sys::signal::Signal::SIGINT);
    sigs.add(nix::sys::signal::Signal::SIGTERM);
    sigs.add(nix::sys::signal::Signal::SIGHUP);
    sigs.thread_block()
        .map_err(|e| format!("block signals: {e}"))?;

    cfg.validate().map_err(|e| e.to_string())?;
    let (store, saved) = Store::open(&opts.state_dir).map_err(|e| e.to_string())?;
    let socket = opts.socket.as_path();
    let listener = mgmt::bind(socket, opts.socket_group.as_deref())?;

    let plan = place_threads(&cfg).inspect_err(|_| {
        let _ = std::fs::remove_file(socket);
    })?;
    let flows = socket.with_extension("flows");
    let host = Box::new(crate::host::Kernel);
    let mut state = State::start(&cfg, plan, store, saved, &flows, host).map_err(|e| {
        let _ = std::fs::remove_file(socket);
        e.to_string()
    })?;
    let views = state.take_views();
    let (tx, rx) = crossbeam::channel::unbounded::<Msg>();
    let control = std::thread::Builder::new()
        .name("vswitch-control".into())
        .spawn(move || control_loop(state, rx, views))
        .map_err(|e| e.to_string())?;
    tracing::info!(socket = %socket.display(), state_dir = %opts.state_dir.display(), "vswitch running");

    // Management requests, from the socket and from Docker's driver, are
    // answered by the control thread.
    let ask = |to_control: Sender<Msg>| {
        move |req| {
            let (reply, answer) = crossbeam::channel::bounded(1);
            if to_control.send(Msg::Request(req, reply)).is_err() {
                return Response::error("the switch is stopping");
            }
            answer
                .recv()
                .unwrap_or_else(|_| Response::error("the switch is stopping"))
        }
    };
    let mgmt_ask = ask(tx.clone());
    std::thread::Builder::new()
        .name("vswitch-mgmt".into())
        .spawn(move || mgmt::serve(listener, mgmt_ask))
        .map_err(|e| e.to_string())?;
    if let Some(path) = &opts.docker_plugin {
        if let Err(e) = crate::docker::serve(path, ask(tx.clone())) {
            let _ = std::fs::remove_file(socket);
            stop_control(&tx);
            return Err(e);
        }
    }

    // Under systemd (Type=notify): ready once the socket answers. Without
    // NOTIFY_SOCKET this does nothing.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell the service manager that the switch is ready");
    }
    loop {
        let sig = sigs.wait().map_err(|e| format!("sigwait: {e}"))?;
        if sig != nix::sys::signal::Signal::SIGHUP {
            tracing::info!(signal = ?sig, "stopping");
            break;
        }
        let Some(path) = &opts.config else {
            tracing::info!("SIGHUP: no config file to re-read (started without --config)");
            continue;
        };
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        match Config::load(path).and_then(|c| c.validate().map(|_| c)) {
            Ok(c) => {
                tracing::info!(config = %path.display(), "SIGHUP: re-reading the config");
                let _ = tx.send(Msg::Reload(Box::new(c)));
            }
            Err(e) => tracing::error!("SIGHUP: config not reloaded, nothing changed: {e}"),
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(socket);
    if let Some(path) = &opts.docker_plugin {
        let _ = std::fs::remove_file(path);
    }
    if stop_control(&tx) {
        let _ = control.join();
    }
    Ok(())
}

/// Tells the control thread to stop and waits up to 10 s for it; `false`
/// if it did not stop in that time.
fn stop_control(tx: &Sender<Msg>) -> bool {
    let (ack, done) = crossbeam::channel::bounded(1);
    if tx.send(Msg::Stop(ack)).is_err() {
        return true;
    }
    let stopped = done
        .recv_timeout(std::time::Duration::from_secs(10))
        .is_ok();
    if !stopped {
        tracing::warn!("the control thread did not stop within 10 s");
    }
    stopped
}
