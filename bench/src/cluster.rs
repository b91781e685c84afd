//! Peer-table sync with many hosts: `vswitch-bench cluster`.
//!
//! Builds N hosts as network namespaces on one underlay bridge (its own
//! namespace), runs a `vswitch` in each with `[cluster]` (adaptive worker,
//! one overlay network, one container TAP), and measures:
//!
//! * propagation: a local change (`fdb add` of an endpoint) until it is
//!   installed on every other host — each peer stamps the moment it
//!   programmed the entry (`fdb show`'s `synced_unix_us`), the bench stamps
//!   the moment before it sent the command; deletes are timed by polling;
//! * repair: the same change while one host drops every cluster datagram
//!   from the origin (an nftables rule in its namespace), so only
//!   anti-entropy through a third host can bring it;
//! * failure: a switch killed with SIGKILL, until no live host holds its
//!   entries (polled);
//! * control traffic per host per second, idle and during the changes.
//!
//! Everything it makes is named with `--prefix` and removed at the end, also
//! on error (with `VSB_KEEP` set in the environment, the switches' logs and
//! configs stay in `$TMPDIR/<prefix>-dir` for a look afterwards); it never panics (the release profile aborts), errors return.
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vswitch_control::api::Request;
use vswitch_control::mgmt::request;

/// Options (`vswitch-bench cluster --help`).
#[derive(clap::Args)]
pub struct Opts {
    /// Hosts (namespaces, one switch each).
    #[arg(long, default_value_t = 16)]
    pub hosts: usize,
    /// Changes timed (each an add and a delete).
    #[arg(long, default_value_t = 40)]
    pub changes: usize,
    /// Lost-update trials.
    #[arg(long, default_value_t = 8)]
    pub losses: usize,
    /// Hosts killed.
    #[arg(long, default_value_t = 3)]
    pub kills: usize,
    /// Seconds of idle control traffic measured.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// The vswitch binary.
    #[arg(long, default_value = "target/release/vswitch")]
    pub vswitch: PathBuf,
    /// Prefix of namespace and link names.
    #[arg(long, default_value = "vsbc")]
    pub prefix: String,
    /// `gossip`, or `etcd` (Debian's etcd in the underlay namespace; needs
    /// a vswitch built with `--features etcd`).
    #[arg(long, default_value = "gossip")]
    pub backend: String,
}

const ETCD_IP: &str = "192.168.70.254";

struct Host {
    ns: String,
    name: String,
    ip: String,
    uplink: String,
    sock: PathBuf,
    child: Option<Child>,
}

struct Topo {
    prefix: String,
    namespaces: Vec<String>,
    hosts: Vec<Host>,
    etcd: Option<Child>,
    dir: PathBuf,
}

fn sh(args: &[&str]) -> Result<String, String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if !o.status.success() {
        return Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Drop for Topo {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut c) = h.child.take() {
                stop(&mut c, nix::sys::signal::Signal::SIGTERM);
            }
        }
        if let Some(mut c) = self.etcd.take() {
            stop(&mut c, nix::sys::signal::Signal::SIGTERM);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        if std::env::var_os("VSB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn stop(c: &mut Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if matches!(c.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Topo {
    fn ns(&mut self, name: &str) -> Result<String, String> {
        let ns = format!("{}{name}", self.prefix);
        let _ = sh(&["ip", "netns", "del", &ns]);
        sh(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
        ])?;
        Ok(ns)
    }
}

fn call(h: &Host, req: &Request) -> Result<serde_json::Value, String> {
    let r = request(&h.sock, req)?;
    if r.ok {
        Ok(r.data)
    } else {
        Err(format!(
            "{}: {}",
            h.name,
            r.error.unwrap_or_else(|| "request failed".into())
        ))
    }
}

/// Synced entries of a host: MAC → (source host, installed at µs).
fn synced(h: &Host) -> Result<BTreeMap<String, (String, u64)>, String> {
    let v = call(
        h,
        &Request::FdbShow {
            network: Some("ov".into()),
        },
    )?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "synced")
        .filter_map(|e| {
            Some((
                e["mac"].as_str()?.to_string(),
                (
                    e["host"].as_str()?.to_string(),
                    e["synced_unix_us"].as_u64()?,
                ),
            ))
        })
        .collect())
}

/// Bytes the hosts' underlay interfaces sent and received (the wire, with
/// every header; in this bench nothing but the cluster uses the underlay).
fn wire_bytes(hosts: &[&Host]) -> Result<(u64, u64), String> {
    let mut tx = 0;
    let mut rx = 0;
    for h in hosts {
        let rd = |c: &str| -> Result<u64, String> {
            sh(&[
                "ip",
                "netns",
                "exec",
                &h.ns,
                "cat",
                &format!("/sys/class/net/{}/statistics/{c}", h.uplink),
            ])?
            .trim()
            .parse::<u64>()
            .map_err(|e| e.to_string())
        };
        tx += rd("tx_bytes")?;
        rx += rd("rx_bytes")?;
    }
    Ok((tx, rx))
}

fn wait_for(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Result<bool, String>,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f()? {
            return Ok(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("not within {limit:?}: {what}"))
}

fn fdb_add(h: &Host, mac: &str, ip: &str) -> Result<(), String> {
    call(
        h,
        &Request::FdbAdd {
            network: "ov".into(),
            mac: mac.into(),
            port: Some(format!("{}:ct0", h.ns)),
            vtep: None,
            ip: Some(ip.into()),
        },
    )
    .map(|_| ())
}

fn fdb_rm(h: &Host, mac: &str) -> Result<(), String> {
    call(
        h,
        &Request::FdbRm {
            network: "ov".into(),
            mac: mac.into(),
        },
    )
    .map(|_| ())
}

fn hist() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Debian's etcd on the underlay bridge, in the underlay namespace.
fn start_etcd(ul: &str, dir: &std::path::Path) -> Result<Child, String> {
    sh(&[
        "ip",
        "netns",
        "exec",
        ul,
        "ip",
        "addr",
        "add",
        &format!("{ETCD_IP}/24"),
        "dev",
        "br0",
    ])?;
    let client = format!("http://{ETCD_IP}:2379");
    let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
    let data = dir.join("etcd");
    let mut c = Command::new("ip")
        .args(["netns", "exec", ul])
        .args(vswitch_overlay::etcd_single_node_cmd(
            &client,
            &data.to_string_lossy(),
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start etcd (apt install etcd-server): {e}"))?;
    let up = wait_for("etcd health", Duration::from_secs(20), || {
        Ok(sh(&[
            "ip",
            "netns",
            "exec",
            ul,
            "curl",
            "-sf",
            &format!("{client}/health"),
        ])
        .is_ok())
    });
    if let Err(e) = up {
        stop(&mut c, nix::sys::signal::Signal::SIGTERM);
        return Err(e);
    }
    Ok(c)
}

/// Runs the benchmark; prints `RESULT metric unit - value lower` lines for
/// `bench/run.sh` and a `JSON` summary.
pub fn run(o: &Opts) -> Result<(), String> {
    if o.hosts < 4 {
        return Err("--hosts must be at least 4".into());
    }
    if o.hosts > 200 {
        return Err("--hosts at most 200 (one /24 underlay)".into());
    }
    let dir = std::env::temp_dir().join(format!("{}-dir", o.prefix));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let etcd = match o.backend.as_str() {
        "gossip" => false,
        "etcd" => true,
        b => return Err(format!("--backend {b:?}: give gossip or etcd")),
    };
    let mut t = Topo {
        prefix: o.prefix.clone(),
        namespaces: Vec::new(),
        hosts: Vec::new(),
        etcd: None,
        dir: dir.clone(),
    };
    let ul = t.ns("ul")?;
    sh(&[
        "ip", "netns", "exec", &ul, "ip", "link", "add", "br0", "type", "bridge",
    ])?;
    sh(&["ip", "netns", "exec", &ul, "ip", "link", "set", "br0", "up"])?;
    if etcd {
        t.etcd = Some(start_etcd(&ul, &dir)?);
    }
    let key = dir.join("key");
    std::fs::write(&key, b"benchmark cluster key, 32 bytes.").map_err(|e| e.to_string())?;
    let t_start = Instant::now();
    for i in 0..o.hosts {
        let ns = t.ns(&format!("h{i}"))?;
        let up = format!("{}u{i}", o.prefix);
        let br = format!("{}p{i}", o.prefix);
        sh(&[
            "ip", "link", "add", &up, "netns", &ns, "type", "veth", "peer", "name", &br, "netns",
            &ul,
        ])?;
        sh(&[
            "ip", "netns", "exec", &ul, "ip", "link", "set", &br, "master", "br0", "up",
        ])?;
        let ip = format!("192.168.70.{}", i + 1);
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &up,
        ])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &up, "up"])?;
        let name = format!("h{i}");
        let cluster = if etcd {
            format!(
                "[cluster]\nbackend = \"etcd\"\netcd_endpoints = [\"http://{ETCD_IP}:2379\"]\n\
                 name = \"{name}\"\nadvertise = \"{ip}:7946\"\nlease_ttl_secs = 2\n"
            )
        } else {
            format!(
                "[cluster]\nlisten = \"{ip}:7946\"\njoin = [\"192.168.70.1:7946\", \"192.168.70.2:7946\"]\n\
                 key_file = \"{}\"\nname = \"{name}\"\n",
                key.display()
            )
        };
        let cfg = format!(
            "[switch]\nfdb_capacity = 4096\nmax_flows = 1024\n\
             [[workers]]\nidle = {{ mode = \"adaptive\", idle_after_us = 200, max_sleep_ms = 50 }}\n\
             [[networks]]\nname = \"ov\"\ndriver = \"overlay\"\nvni = 700\nsubnet = \"10.95.0.0/16\"\n\
             [uplink]\niface = \"{up}\"\n{cluster}"
        );
        let cp = dir.join(format!("{name}.toml"));
        std::fs::write(&cp, cfg).map_err(|e| e.to_string())?;
        let sock = dir.join(format!("{name}.sock"));
        let log =
            std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&o.vswitch)
            .arg("run")
            .arg("--config")
            .arg(&cp)
            .arg("--socket")
            .arg(&sock)
            .arg("--state-dir")
            .arg(dir.join(format!("{name}-state")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", o.vswitch.display()))?;
        t.hosts.push(Host {
            ns,
            name,
            ip,
            uplink: up,
            sock,
            child: Some(child),
        });
    }
    for h in &t.hosts {
        wait_for(
            &format!("{} socket", h.name),
            Duration::from_secs(20),
            || Ok(std::os::unix::net::UnixStream::connect(&h.sock).is_ok()),
        )?;
        call(
            h,
            &Request::Attach {
                network: "ov".into(),
                netns: h.ns.clone(),
                ifname: "ct0".into(),
                kind: vswitch_control::api::AttachKind::Tap,
                ip: None,
                mac: None,
                owner: None,
                aliases: Vec::new(),
            },
        )?;
    }
    let n = o.hosts;
    let conv = wait_for("initial convergence", Duration::from_secs(60), || {
        for h in &t.hosts {
            if synced(h)?.len() < n - 1 {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    eprintln!(
        "{n} hosts up and converged {:.1}s after the first switch started ({:.1}s after the last attach)",
        t_start.elapsed().as_secs_f64(),
        conv.as_secs_f64()
    );

    // Idle control traffic.
    let all: Vec<&Host> = t.hosts.iter().collect();
    let (b0, r0) = wire_bytes(&all)?;
    let i0 = Instant::now();
    std::thread::sleep(Duration::from_secs(o.idle_secs));
    let (b1, r1) = wire_bytes(&all)?;
    let secs = i0.elapsed().as_secs_f64();
    let idle_bps = (b1 - b0) as f64 / secs / n as f64;
    let idle_rx_bps = (r1 - r0) as f64 / secs / n as f64;

    // Propagation of adds and deletes.
    let mut add = hist()?;
    let mut del = hist()?;
    let (cb0, _) = wire_bytes(&all)?;
    let c0 = Instant::now();
    for k in 0..o.changes {
        let origin = &t.hosts[k % n];
        let mac = format!("02:cc:00:00:{:02x}:{:02x}", k >> 8, k & 0xff);
        let ip = format!("10.95.{}.{}", 100 + (k >> 8), k & 0xff);
        let t0 = unix_us();
        fdb_add(origin, &mac, &ip)?;
        for h in t.hosts.iter().filter(|h| h.name != origin.name) {
            let mut at = 0;
            wait_for(
                &format!("{mac} on {}", h.name),
                Duration::from_secs(10),
                || {
                    Ok(match synced(h)?.get(&mac) {
                        Some((src, a)) if *src == origin.name => {
                            at = *a;
                            true
                        }
                        _ => false,
                    })
                },
            )?;
            add.record(at.saturating_sub(t0).max(1))
                .map_err(|e| e.to_string())?;
        }
        let t1 = Instant::now();
        fdb_rm(origin, &mac)?;
        let mut left: Vec<&Host> = t.hosts.iter().filter(|h| h.name != origin.name).collect();
        wait_for(&format!("{mac} withdrawn"), Duration::from_secs(10), || {
            let mut still = Vec::new();
            for h in left.drain(..) {
                if synced(h)?.contains_key(&mac) {
                    still.push(h);
                } else {
                    del.record((t1.elapsed().as_micros() as u64).max(1))
                        .map_err(|e| e.to_string())?;
                }
            }
            left = still;
            Ok(left.is_empty())
        })?;
    }
    let (cb1, _) = wire_bytes(&all)?;
    let churn_bps = (cb1 - cb0) as f64 / c0.elapsed().as_secs_f64() / n as f64;
    let churn_rate = (2 * o.changes) as f64 / c0.elapsed().as_secs_f64();

    // Lost updates: the victim drops every cluster datagram from the origin.
    let mut repair = hist()?;
    for k in 0..o.losses {
        let origin = &t.hosts[(k * 3 + 1) % n];
        let victim = &t.hosts[(k * 3 + 2) % n];
        // Gossip: the victim drops every datagram from the origin until the
        // change reaches it some other way (anti-entropy through a third
        // host). etcd: the victim's connection to etcd is cut for 500 ms
        // around the change, so its watch stream stalls.
        let rule = if etcd {
            "table inet vsbloss {\n chain in { type filter hook input priority 0; tcp sport 2379 drop; }\n}\n".to_string()
        } else {
            format!(
                "table inet vsbloss {{\n chain in {{ type filter hook input priority 0; ip saddr {} udp dport 7946 drop; }}\n}}\n",
                origin.ip
            )
        };
        sh(&["ip", "netns", "exec", &victim.ns, "nft", &rule])?;
        let mac = format!("02:cd:00:00:00:{:02x}", k & 0xff);
        let t0 = unix_us();
        let r = (|| {
            fdb_add(origin, &mac, &format!("10.95.200.{}", k & 0xff))?;
            if etcd {
                std::thread::sleep(Duration::from_millis(500));
                sh(&[
                    "ip", "netns", "exec", &victim.ns, "nft", "delete", "table", "inet", "vsbloss",
                ])?;
            }
            let mut at = 0;
            wait_for("repair of a lost update", Duration::from_secs(10), || {
                Ok(match synced(victim)?.get(&mac) {
                    Some((_, a)) => {
                        at = *a;
                        true
                    }
                    None => false,
                })
            })?;
            Ok::<u64, String>(at)
        })();
        let _ = sh(&[
            "ip", "netns", "exec", &victim.ns, "nft", "delete", "table", "inet", "vsbloss",
        ]);
        let at = r?;
        repair
            .record(at.saturating_sub(t0).max(1))
            .map_err(|e| e.to_string())?;
        fdb_rm(origin, &mac)?;
    }

    // Dead hosts: SIGKILL, until no live host holds their entries.
    let mut dead = hist()?;
    for k in 0..o.kills.min(n - 3) {
        let i = n - 1 - k;
        let name = t.hosts[i].name.clone();
        if let Some(mut c) = t.hosts[i].child.take() {
            let t0 = Instant::now();
            stop(&mut c, nix::sys::signal::Signal::SIGKILL);
            let mut left: Vec<&Host> = t.hosts[..i].iter().collect();
            wait_for(
                &format!("{name}'s entries withdrawn"),
                Duration::from_secs(20),
                || {
                    let mut still = Vec::new();
                    for h in left.drain(..) {
                        if synced(h)?.values().any(|(src, _)| *src == name) {
                            still.push(h);
                        }
                    }
                    left = still;
                    Ok(left.is_empty())
                },
            )?;
            eprintln!(
                "killed {name} at unix {:.3}; withdrawn everywhere after {} ms",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64())
                    - t0.elapsed().as_secs_f64(),
                t0.elapsed().as_millis()
            );
            dead.record((t0.elapsed().as_micros() as u64).max(1))
                .map_err(|e| e.to_string())?;
        }
    }

    let q = |h: &Histogram<u64>, p: f64| ms(h.value_at_quantile(p));
    let summary = serde_json::json!({
        "hosts": n,
        "changes": o.changes,
        "add_p50_ms": q(&add, 0.5), "add_p99_ms": q(&add, 0.99), "add_max_ms": ms(add.max()),
        "delete_p50_ms": q(&del, 0.5), "delete_p99_ms": q(&del, 0.99),
        "lost_update_repair_p50_ms": q(&repair, 0.5), "lost_update_repair_max_ms": ms(repair.max()),
        "dead_host_withdrawn_p50_ms": q(&dead, 0.5), "dead_host_withdrawn_max_ms": ms(dead.max()),
        "backend": o.backend,
        "idle_tx_bytes_per_host_s": idle_bps, "idle_rx_bytes_per_host_s": idle_rx_bps,
        "churn_bytes_per_host_s": churn_bps, "churn_changes_per_s": churn_rate,
    });
    println!("JSON {summary}");
    let lines = [
        ("cluster_change_p99", "ms", q(&add, 0.99)),
        ("cluster_delete_p99_polled", "ms", q(&del, 0.99)),
        ("cluster_lost_update_repair_max", "ms", ms(repair.max())),
        ("cluster_dead_host_withdrawn_max", "ms", ms(dead.max())),
        ("cluster_ctrl_idle_tx_per_host", "B/s", idle_bps),
        ("cluster_ctrl_churn_tx_per_host", "B/s", churn_bps),
    ];
    for (m, u, v) in lines {
        println!("RESULT {m}_{n}h_{} {u} - {v:.1} lower", o.backend);
    }
    Ok(())
}
