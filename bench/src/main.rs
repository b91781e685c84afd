//! `vswitch-bench`: the pipeline on memory, and the helpers `bench/run.sh`
//! uses for the end-to-end comparison with the kernel (UDP RTT with
//! hdrhistogram, the results table, JSON and chart).
use clap::{Parser, Subcommand};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod chart;
mod cluster;
mod nat;
mod pipeline;
mod vxlan;

#[derive(Parser)]
#[command(about = "vswitch benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// L2 pipeline stages on memory: 64-byte frames, batches of 32.
    Pipeline {
        /// Batches to run per case.
        #[arg(long, default_value_t = 700_000)]
        batches: usize,
        /// Run only the case with this many learned MACs (1 or 100000).
        #[arg(long)]
        only: Option<u64>,
    },
    /// Peer-table sync across many hosts (namespaces): propagation, repair
    /// of a lost update, withdrawal of a dead host, control traffic. Root.
    Cluster(cluster::Opts),
    /// NAT pipeline on memory: established SNAT flows, 1 and 1,000,000.
    Nat {
        /// Batches to run per case.
        #[arg(long, default_value_t = 200_000)]
        batches: usize,
        /// Run only the case with this many flows (1 or 1000000).
        #[arg(long)]
        only: Option<u32>,
        /// Keep the flow entries in a mapping of this file (on tmpfs, as
        /// the switch keeps them in /run/vswitch), not anonymous memory.
        #[arg(long)]
        flow_file: Option<std::path::PathBuf>,
    },
    /// Accept TCP connections and close them at once (connection-rate server).
    AcceptServer {
        /// Address to bind.
        #[arg(long)]
        bind: String,
        /// Accepting threads (one `SO_REUSEPORT` listener each).
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Open and reset TCP connections as fast as possible; prints
    /// connections per second (handshakes completed).
    Connrate {
        /// Server address.
        #[arg(long)]
        to: String,
        /// Seconds to run.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Parallel connecting threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Connections each thread keeps in flight (non-blocking sockets
        /// and one readiness wait for all of them); 0: one blocking
        /// `connect` at a time.
        #[arg(long, default_value_t = 0)]
        inflight: usize,
    },
    /// VXLAN pipeline on memory: encapsulation and decapsulation.
    Vxlan {
        /// Batches to run per case.
        #[arg(long, default_value_t = 500_000)]
        batches: usize,
    },
    /// Echo UDP datagrams back to their sender (RTT server).
    UdpEcho {
        /// Address to bind.
        #[arg(long)]
        bind: String,
    },
    /// Measure UDP round trips against `udp-echo`; prints p50/p99 in µs.
    Rtt {
        /// Echo server address.
        #[arg(long)]
        to: String,
        /// Round trips.
        #[arg(long, default_value_t = 5000)]
        count: u64,
        /// Pause between round trips, µs.
        #[arg(long, default_value_t = 100)]
        interval_us: u64,
    },
    /// Turn a results file (lines: `metric unit kernel vswitch`) into the
    /// table, JSON and SVG chart.
    Report {
        /// Results lines written by run.sh.
        #[arg(long)]
        input: PathBuf,
        /// Commit id to record.
        #[arg(long)]
        commit: String,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Pipeline { batches, only } => {
            pipeline::run(batches, only);
            Ok(())
        }
        Cmd::Nat {
            batches,
            only,
            flow_file,
        } => {
            nat::run(batches, only, flow_file.as_deref());
            Ok(())
        }
        Cmd::Cluster(o) => cluster::run(&o),
        Cmd::Vxlan { batches } => {
            vxlan::run(batches);
            Ok(())
        }
        Cmd::AcceptServer { bind, threads } => accept_server(&bind, threads),
        Cmd::Connrate {
            to,
            secs,
            threads,
            inflight: 0,
        } => connrate(&to, secs, threads),
        Cmd::Connrate {
            to,
            secs,
            threads,
            inflight,
        } => connrate_nonblocking(&to, secs, threads, inflight),
        Cmd::UdpEcho { bind } => udp_echo(&bind),
        Cmd::Rtt {
            to,
            count,
            interval_us,
        } => rtt(&to, count, interval_us),
        Cmd::Report { input, commit, out } => chart::report(&input, &commit, &out),
    };
    if let Err(e) = r {
        eprintln!("vswitch-bench: {e}");
        std::process::exit(1);
    }
}

/// Accepts and drops connections on `threads` threads, each with its own
/// `SO_REUSEPORT` listener and a deep backlog. One thread with the default
/// backlog of 128 starved beside the clients on a shared core: its queue
/// overflowed, the kernel dropped SYNs, and each drop cost a client a 1 s
/// retransmit timeout, so the figure measured the server, not the datapath.
fn accept_server(bind: &str, threads: usize) -> Result<(), String> {
    use nix::sys::socket::{self as so, sockopt};
    let addr: std::net::SocketAddrV4 = bind.parse().map_err(|e| format!("{bind}: {e}"))?;
    let listeners = (0..threads.max(1))
        .map(|_| {
            let fd = so::socket(
                so::AddressFamily::Inet,
                so::SockType::Stream,
                so::SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            so::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            so::setsockopt(&fd, sockopt::ReusePort, &true)?;
            so::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &so::SockaddrIn::from(addr),
            )?;
            // -1: the kernel's net.core.somaxconn (4096 by default).
            so::listen(&fd, so::Backlog::MAXALLOWABLE)?;
            Ok(std::net::TcpListener::from(fd))
        })
        .collect::<nix::Result<Vec<_>>>()
        .map_err(|e| format!("listen on {bind}: {e}"))?;
    let hs: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            std::thread::spawn(move || {
                for c in l.incoming() {
                    drop(c);
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    Ok(())
}

/// Each thread connects, and closes with SO_LINGER 0 (a RST: no TIME_WAIT
/// on the client, so its ports do not run out); counts completed handshakes.
fn connrate(to: &str, secs: u64, threads: usize) -> Result<(), String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let addr: std::net::SocketAddr = to.parse().map_err(|e| format!("{to}: {e}"))?;
    let done = std::sync::Arc::new(AtomicU64::new(0));
    let failed = std::sync::Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (done, failed) = (done.clone(), failed.clone());
            std::thread::spawn(move || {
                while Instant::now() < end {
                    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                        Ok(c) => {
                            reset_on_close(&c);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    print_rate(
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        t0,
    );
    Ok(())
}

/// SO_LINGER 0: closing the socket sends a RST, so the client keeps no
/// TIME_WAIT and its ports do not run out.
fn reset_on_close(s: &impl std::os::fd::AsFd) {
    let _ = nix::sys::socket::setsockopt(
        s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

/// The connection-rate result as one JSON line.
fn print_rate(done: u64, failed: u64, t0: Instant) {
    println!(
        "{}",
        serde_json::json!({
            "conn_per_sec": done as f64 / t0.elapsed().as_secs_f64(),
            "connections": done,
            "failed": failed,
        })
    );
}

/// [`connrate`] with `inflight` non-blocking connects per thread: a
/// thread waits once for whichever of them completes, opens the next, and
/// closes each completed one with a RST; a connect that has not completed
/// after 1 s counts as failed.
fn connrate_nonblocking(
    to: &str,
    secs: u64,
    threads: usize,
    inflight: usize,
) -> Result<(), String> {
    use mio::net::TcpStream;
    use mio::{Events, Interest, Poll, Token};
    let addr: std::net::SocketAddr = to.parse().map_err(|e| format!("{to}: {e}"))?;
    let end = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let run = move || -> std::io::Result<(u64, u64)> {
        let mut poll = Poll::new()?;
        let mut events = Events::with_capacity(inflight);
        let mut slots: Vec<Option<(TcpStream, Instant)>> = (0..inflight).map(|_| None).collect();
        let (mut done, mut failed) = (0u64, 0u64);
        let open = |poll: &Poll, i: usize| -> std::io::Result<(TcpStream, Instant)> {
            let mut s = TcpStream::connect(addr)?;
            poll.registry()
                .register(&mut s, Token(i), Interest::WRITABLE)?;
            Ok((s, Instant::now()))
        };
        for (i, slot) in slots.iter_mut().enumerate() {
            *slot = Some(open(&poll, i)?);
        }
        while Instant::now() < end {
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            let ready: Vec<usize> = events.iter().map(|e| e.token().0).collect();
            for i in ready {
                let Some((s, _)) = slots.get_mut(i).and_then(Option::take) else {
                    continue;
                };
                match s.take_error()? {
                    None if s.peer_addr().is_ok() => {
                        reset_on_close(&s);
                        done += 1;
                    }
                    _ => failed += 1,
                }
                drop(s);
                slots[i] = Some(open(&poll, i)?);
            }
            for (i, slot) in slots.iter_mut().enumerate() {
                if slot
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() > Duration::from_secs(1))
                {
                    failed += 1;
                    *slot = Some(open(&poll, i)?);
                }
            }
        }
        Ok((done, failed))
    };
    let hs: Vec<_> = (0..threads.max(1))
        .map(|_| std::thread::spawn(run))
        .collect();
    let (mut done, mut failed) = (0, 0);
    for h in hs {
        let (d, f) = h
            .join()
            .map_err(|_| "a connecting thread panicked".to_string())?
            .map_err(|e| e.to_string())?;
        done += d;
        failed += f;
    }
    print_rate(done, failed, t0);
    Ok(())
}

fn udp_echo(bind: &str) -> Result<(), String> {
    let s = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
}

fn rtt(to: &str, count: u64, interval_us: u64) -> Result<(), String> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    s.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)
        .map_err(|e| e.to_string())?;
    let mut lost = 0u64;
    let mut buf = [0u8; 64];
    // Warm-up: ARP, FDB learning.
    for _ in 0..10 {
        let _ = s.send(&[0u8; 8]);
        let _ = s.recv(&mut buf);
    }
    for seq in 0..count {
        let t0 = Instant::now();
        s.send(&seq.to_be_bytes()).map_err(|e| e.to_string())?;
        loop {
            match s.recv(&mut buf) {
                Ok(8) if buf[..8] == seq.to_be_bytes() => {
                    let _ = h.record(t0.elapsed().as_nanos() as u64);
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(interval_us));
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({ "p50_us": us(0.5), "p99_us": us(0.99), "lost": lost, "count": count })
    );
    Ok(())
}

/// A port of the benchmark snapshots: no offloads, fresh counters.
pub(crate) fn port_view(
    id: u16,
    net: Option<vswitch_engine::fdb::NetId>,
) -> Option<vswitch_engine::tables::PortView> {
    Some(vswitch_engine::tables::PortView {
        id,
        name: format!("p{id}"),
        net,
        worker: 0,
        caps: vswitch_engine::port::PortCaps::default(),
        stats: std::sync::Arc::new(vswitch_engine::stats::PortStats::default()),
    })
}

/// Shared by the pipeline bench.
pub(crate) fn cpu_mhz() -> f64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}
