//! `vswitch`: the switch (`vswitch run`), its client (every other command),
//! and the CNI plugin (when `CNI_COMMAND` is set).
mod args;
use args::*;
use clap::Parser;
use std::io::Write as _;
use std::process::ExitCode;
use vswitch_control::api::{
    AttachKind, Attached, FdbInfo, NetworkInfo, PeerInfo, PortInfo, PublishedPort, Request,
    UplinkInfo,
};
use vswitch_control::config::{Config, Driver, NetworkConfig, PortKind, UplinkConfig};
use vswitch_control::server;
use vswitch_control::workers::WorkerStats;
use vswitch_engine::worker::IdleMode;

/// `println!` that stops quietly when stdout is closed (`vswitch stats | head`).
macro_rules! out {
    ($($t:tt)*) => {
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            return Ok(());
        }
    };
}

fn main() -> ExitCode {
    // Run by a container runtime as its CNI plugin.
    if std::env::var_os("CNI_COMMAND").is_some() {
        return vswitch_control::cni::main();
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vswitch: {e}");
            ExitCode::FAILURE
        }
    }
}

fn call(cli: &Cli, req: Request) -> Result<serde_json::Value, String> {
    let limit = std::time::Duration::from_secs(cli.timeout.max(1));
    let r = vswitch_control::mgmt::request_within(&cli.socket, &req, limit)?;
    if r.ok {
        Ok(r.data)
    } else {
        Err(r.error.unwrap_or_else(|| "request failed".into()))
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("bad response: {e}"))
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn run(cli: Cli) -> Result<(), String> {
    match &cli.cmd {
        Cmd::Run {
            config,
            cluster_listen,
            cluster_join,
            cluster_key_file,
            cluster_name,
            cluster_etcd,
            socket_group,
            state_dir,
            docker_plugin,
            docker_plugin_socket,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("VSWITCH_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                // Colours only on a terminal: logs sent to a file or journal stay plain.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let cfg = match config {
                Some(p) => Config::load(p).map_err(|e| e.to_string())?,
                None => Config::default(),
            };
            let mut cfg = cfg;
            apply_cluster_flags(
                &mut cfg,
                cluster_listen.clone(),
                cluster_join.clone(),
                cluster_key_file.clone(),
                cluster_name.clone(),
                cluster_etcd.clone(),
            )?;
            server::run(
                cfg,
                &server::RunOptions {
                    config: config.clone(),
                    socket: cli.socket.clone(),
                    socket_group: socket_group.clone(),
                    state_dir: state_dir.clone(),
                    docker_plugin: docker_plugin.then(|| docker_plugin_socket.clone()),
                },
            )
        }
        Cmd::Network(NetworkCmd::Create(a)) => {
            call(
                &cli,
                Request::NetworkCreate(NetworkConfig {
                    name: a.name.clone(),
                    subnet: a.subnet.clone(),
                    gateway: a.gateway.clone(),
                    mtu: a.mtu.unwrap_or(0),
                    driver: match a.driver {
                        DriverArg::Bridge => Driver::Bridge,
                        DriverArg::Overlay => Driver::Overlay,
                    },
                    vni: a.vni,
                    peers: a.peers.clone(),
                    learning: !a.no_learning,
                    ttl: a.ttl,
                    df: a.df,
                    mac_limit: a.mac_limit,
                    aging_secs: a.aging,
                    internal: a.internal,
                    no_icc: a.no_icc,
                    dns: a.dns.clone(),
                    ..NetworkConfig::named(&a.name)
                }),
            )?;
            out!("{}", a.name);
            Ok(())
        }
        Cmd::Network(NetworkCmd::Ls { json }) => {
            let v = call(&cli, Request::NetworkLs)?;
            if *json {
                out!("{}", pretty(&v));
                return Ok(());
            }
            let nets: Vec<NetworkInfo> = parse(v)?;
            out!(
                "{:<16} {:<18} {:<6} {:<6} PORTS",
                "NAME",
                "SUBNET",
                "MTU",
                "MACS"
            );
            for n in nets {
                out!(
                    "{:<16} {:<18} {:<6} {:<6} {}",
                    n.config.name,
                    n.config.subnet.unwrap_or_else(|| "-".into()),
                    n.config.mtu,
                    n.learned_macs,
                    n.ports.join(",")
                );
            }
            Ok(())
        }
        Cmd::Network(NetworkCmd::Inspect { name }) => {
            out!(
                "{}",
                pretty(&call(&cli, Request::NetworkInspect { name: name.clone() })?)
            );
            Ok(())
        }
        Cmd::Network(NetworkCmd::Rm { name }) => {
            call(&cli, Request::NetworkRm { name: name.clone() })?;
            Ok(())
        }
        Cmd::Attach {
            network,
            netns,
            ifname,
            kind,
            ip,
            mac,
            name,
            aliases,
        } => {
            let v = call(
                &cli,
                Request::Attach {
                    network: network.clone(),
                    netns: netns.clone(),
                    ifname: ifname.clone(),
                    kind: match kind {
                        KindArg::Tap => AttachKind::Tap,
                        KindArg::Veth => AttachKind::Veth,
                        KindArg::VethXdp => AttachKind::VethXdp,
                    },
                    ip: ip.clone(),
                    mac: mac.clone(),
                    owner: None,
                    aliases: name.iter().chain(aliases).cloned().collect(),
                },
            )?;
            let a: Attached = parse(v)?;
            match a.ip {
                Some(ip) => out!(
                    "{netns}:{ifname} attached to {network} (mac {}, ip {ip})",
                    a.mac
                ),
                None => out!("{netns}:{ifname} attached to {network} (mac {})", a.mac),
            }
            Ok(())
        }
        Cmd::Detach {
            network,
            netns,
            ifname,
        } => {
            call(
                &cli,
                Request::Detach {
                    network: network.clone(),
                    netns: netns.clone(),
                    ifname: ifname.clone(),
                },
            )?;
            Ok(())
        }
        Cmd::Port(PortCmd::Add {
            network,
            iface,
            kind,
            worker,
        }) => {
            call(
                &cli,
                Request::PortAdd {
                    network: network.clone(),
                    iface: iface.clone(),
                    kind: match kind {
                        PortKindArg::Afxdp => PortKind::Afxdp,
                        PortKindArg::Tap => PortKind::Tap,
                    },
                    worker: *worker,
                },
            )?;
            Ok(())
        }
        Cmd::Port(PortCmd::Ls { json }) => {
            let v = call(&cli, Request::PortLs)?;
            if *json {
                out!("{}", pretty(&v));
                return Ok(());
            }
            let ports: Vec<PortInfo> = parse(v)?;
            out!(
                "{:<4} {:<14} {:<6} {:<12} {:<3} {:<26} {:<20} STATUS",
                "ID",
                "IFACE",
                "KIND",
                "NETWORK",
                "W",
                "MODE",
                "ATTACHED"
            );
            for p in ports {
                out!(
                    "{:<4} {:<14} {:<6} {:<12} {:<3} {:<26} {:<20} {}",
                    p.id,
                    p.iface,
                    p.kind,
                    p.network,
                    p.worker,
                    p.mode,
                    p.attached.unwrap_or_else(|| "-".into()),
                    p.status
                );
            }
            Ok(())
        }
        Cmd::Port(PortCmd::Rm { iface }) => {
            call(
                &cli,
                Request::PortRm {
                    iface: iface.clone(),
                },
            )?;
            Ok(())
        }
        Cmd::Fdb(FdbCmd::Show { network, json }) => {
            let v = call(
                &cli,
                Request::FdbShow {
                    network: network.clone(),
                },
            )?;
            if *json {
                out!("{}", pretty(&v));
                return Ok(());
            }
            let es: Vec<FdbInfo> = parse(v)?;
            out!(
                "{:<12} {:<18} {:<20} {:<8} {:<6} HOST",
                "NETWORK",
                "MAC",
                "PORT",
                "TYPE",
                "AGE"
            );
            for e in es {
                out!(
                    "{:<12} {:<18} {:<20} {:<8} {:<6} {}",
                    e.network,
                    e.mac,
                    e.port,
                    e.kind,
                    e.age_secs,
                    e.host.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        Cmd::Fdb(FdbCmd::Add {
            network,
            mac,
            port,
            vtep,
            ip,
        }) => {
            call(
                &cli,
                Request::FdbAdd {
                    network: network.clone(),
                    mac: mac.clone(),
                    port: port.clone(),
                    vtep: vtep.clone(),
                    ip: ip.clone(),
                },
            )?;
            Ok(())
        }
        Cmd::Fdb(FdbCmd::Rm { network, mac }) => {
            call(
                &cli,
                Request::FdbRm {
                    network: network.clone(),
                    mac: mac.clone(),
                },
            )?;
            Ok(())
        }
        Cmd::Uplink(UplinkCmd::Add {
            iface,
            snat_ip,
            snat_ports,
            worker,
            vtep,
        }) => {
            let v = call(
                &cli,
                Request::UplinkAdd(UplinkConfig {
                    iface: iface.clone(),
                    snat_ip: snat_ip.clone(),
                    snat_ports: snat_ports.clone(),
                    worker: *worker,
                    vtep: vtep.clone(),
                }),
            )?;
            let u: Option<UplinkInfo> = parse(v)?;
            if let Some(u) = u {
                out!("uplink {iface}: snat {} ports {}", u.snat_ip, u.snat_ports);
            }
            Ok(())
        }
        Cmd::Uplink(UplinkCmd::Show) => {
            out!("{}", pretty(&call(&cli, Request::UplinkShow)?));
            Ok(())
        }
        Cmd::Uplink(UplinkCmd::Rm) => {
            call(&cli, Request::UplinkRm)?;
            Ok(())
        }
        Cmd::Publish {
            network,
            target,
            host_port,
            proto,
            host_ip,
        } => {
            let v = call(
                &cli,
                Request::Publish {
                    network: network.clone(),
                    target: target.clone(),
                    host_port: host_port.clone(),
                    proto: (*proto).into(),
                    host_ip: host_ip.clone(),
                    bind_host: true,
                },
            )?;
            let p: PublishedPort = parse(v)?;
            out!("{}", p.host_port);
            Ok(())
        }
        Cmd::Unpublish {
            network,
            host_port,
            proto,
        } => {
            call(
                &cli,
                Request::Unpublish {
                    network: network.clone(),
                    host_port: *host_port,
                    proto: (*proto).into(),
                },
            )?;
            Ok(())
        }
        Cmd::Peer(PeerCmd::Add { network, vtep }) => {
            call(
                &cli,
                Request::PeerAdd {
                    network: network.clone(),
                    vtep: vtep.clone(),
                },
            )?;
            Ok(())
        }
        Cmd::Peer(PeerCmd::Rm { network, vtep }) => {
            call(
                &cli,
                Request::PeerRm {
                    network: network.clone(),
                    vtep: vtep.clone(),
                },
            )?;
            Ok(())
        }
        Cmd::Peer(PeerCmd::Ls { json }) => {
            let v = call(&cli, Request::PeerLs)?;
            if *json {
                out!("{}", pretty(&v));
                return Ok(());
            }
            out!("{:<16} {:<10} {:<16} TYPE", "NETWORK", "VNI", "VTEP");
            let peers: Vec<PeerInfo> = parse(v.clone())?;
            for p in peers {
                out!(
                    "{:<16} {:<10} {:<16} {}",
                    p.network,
                    p.vni.map_or("-".to_string(), |n| n.to_string()),
                    p.vtep,
                    p.kind
                );
            }
            Ok(())
        }
        Cmd::Peers { json } => {
            let v = call(&cli, Request::Peers)?;
            if *json {
                out!("{}", pretty(&v));
                return Ok(());
            }
            out!(
                "{:<22} {:<22} {:<8} {:<18} {:<10} {:<8} ENTRIES",
                "NAME",
                "ADDRESS",
                "STATE",
                "EPOCH",
                "HEARD(ms)",
                "SEQ"
            );
            let me = &v["me"];
            let rows = std::iter::once(me).chain(v["members"].as_array().into_iter().flatten());
            for m in rows {
                out!(
                    "{:<22} {:<22} {:<8} {:<18} {:<10} {:<8} {}",
                    m["name"].as_str().unwrap_or("?"),
                    m["addr"].as_str().unwrap_or("?"),
                    m["state"].as_str().unwrap_or("?"),
                    m["epoch"],
                    m["last_heard_ms"]
                        .as_u64()
                        .map_or("-".to_string(), |x| x.to_string()),
                    m["seq"],
                    m["entries"]
                );
            }
            let st = &v["stats"];
            out!(
                "sent {} datagrams ({} B), received {} ({} B); refused: {} bad key, {} malformed, {} stale; {} failure notices",
                st["tx_packets"],
                st["tx_bytes"],
                st["rx_packets"],
                st["rx_bytes"],
                st["rx_bad_auth"],
                st["rx_malformed"],
                st["rx_stale"],
                st["down_notices"]
            );
            Ok(())
        }
        Cmd::Conntrack(ConntrackCmd::Show { json }) => {
            let v = call(&cli, Request::ConntrackShow)?;
            if *json {
                out!("{}", pretty(&v));
                return Ok(());
            }
            out!(
                "{:<5} {:<22} {:<22} {:<22} {:<22} {:<12} {:<6} AGE",
                "PROTO",
                "ORIG SRC",
                "ORIG DST",
                "REPLY SRC",
                "REPLY DST",
                "STATE",
                "WORKER"
            );
            for f in v["flows"].as_array().into_iter().flatten() {
                let st = &f["state"];
                let state = st["state"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| {
                        st["state"]["replied"].as_bool().map(|r| {
                            if r {
                                "REPLIED".into()
                            } else {
                                "UNREPLIED".into()
                            }
                        })
                    })
                    .unwrap_or_else(|| "-".into());
                out!(
                    "{:<5} {:<22} {:<22} {:<22} {:<22} {:<12} {:<6} {}",
                    f["orig"]["proto"].as_str().unwrap_or("?"),
                    f["orig"]["src"].as_str().unwrap_or("?"),
                    f["orig"]["dst"].as_str().unwrap_or("?"),
                    f["reply"]["src"].as_str().unwrap_or("?"),
                    f["reply"]["dst"].as_str().unwrap_or("?"),
                    state,
                    f["worker"],
                    f["age_secs"]
                );
            }
            out!(
                "{} flows (max {}, about {} bytes each); {} created, {} expired, {} refused (table full)",
                v["count"], v["max"], v["bytes_per_flow"], v["created"], v["expired"], v["refused_full"]
            );
            Ok(())
        }
        Cmd::Stats { json } => {
            let v = call(&cli, Request::Stats)?;
            if *json {
                out!("{}", pretty(&v));
                return Ok(());
            }
            out!(
                "{:<14} {:<12} {:>12} {:>14} {:>12} {:>14}  DROPS",
                "PORT",
                "NETWORK",
                "RX_PKTS",
                "RX_BYTES",
                "TX_PKTS",
                "TX_BYTES"
            );
            for p in v["ports"].as_array().cloned().unwrap_or_default() {
                let s = &p["stats"];
                let drops = s["drops"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                let name = p["attached"]
                    .as_str()
                    .unwrap_or(p["port"].as_str().unwrap_or("?"));
                out!(
                    "{:<14} {:<12} {:>12} {:>14} {:>12} {:>14}  {}",
                    name,
                    p["network"].as_str().unwrap_or(""),
                    s["rx_packets"],
                    s["rx_bytes"],
                    s["tx_packets"],
                    s["tx_bytes"],
                    if drops.is_empty() { "-".into() } else { drops }
                );
            }
            let workers: Vec<WorkerStats> =
                serde_json::from_value(v["workers"].clone()).unwrap_or_default();
            for w in workers {
                out!(
                    "worker {} pinned to {} allowed cores {} last ran on {}{} idle {} nice {} loops {} busy_loops {} sleeps {} handed_over {} handed_in {}",
                    w.id,
                    w.core.map_or("-".to_string(), |c| c.to_string()),
                    w.allowed_cores,
                    w.last_cpu.map_or("-".to_string(), |c| c.to_string()),
                    if w.placed_as_configured { "" } else { " (NOT where its configuration places it)" },
                    match w.idle {
                        IdleMode::Busy => "busy",
                        IdleMode::Adaptive { .. } => "adaptive",
                    },
                    w.nice.map_or("-".to_string(), |n| n.to_string()),
                    w.loops,
                    w.busy_loops,
                    w.sleeps,
                    w.handed_over,
                    w.handed_in
                );
            }
            if let Some(d) = v["dns"].as_object() {
                let counters: Vec<String> = d.iter().map(|(k, n)| format!("{k} {n}")).collect();
                out!("dns {}", counters.join(" "));
            }
            Ok(())
        }
    }
}

/// `vswitch run --cluster-*` flags over the `[cluster]` section.
fn apply_cluster_flags(
    cfg: &mut Config,
    listen: Option<String>,
    join: Vec<String>,
    key_file: Option<String>,
    name: Option<String>,
    etcd: Vec<String>,
) -> Result<(), String> {
    if listen.is_none()
        && join.is_empty()
        && key_file.is_none()
        && name.is_none()
        && etcd.is_empty()
    {
        return Ok(());
    }
    let mut c = cfg
        .cluster
        .take()
        .unwrap_or_else(vswitch_control::config::ClusterSection::empty);
    if listen.is_some() {
        c.listen = listen;
    }
    if !join.is_empty() {
        c.join = join;
    }
    if key_file.is_some() {
        c.key_file = key_file;
    }
    if name.is_some() {
        c.name = name;
    }
    if !etcd.is_empty() {
        c.backend = vswitch_control::config::ClusterBackend::Etcd;
        c.etcd_endpoints = etcd;
    }
    c.addrs().map_err(|e| e.to_string())?;
    cfg.cluster = Some(c);
    Ok(())
}
