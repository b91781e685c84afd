//! `vswitch-bench`: the pipeline on memory, and the helpers `bench/run.sh`
//! uses for the end-to-end comparison with the kernel (UDP RTT with
//! hdrhistogram, the results table, JSON and chart).
use clap::{Parser, Subcommand};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod chart;
mod pipeline;

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
        Cmd::Pipeline { batches } => {
            pipeline::run(batches);
            Ok(())
        }
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
