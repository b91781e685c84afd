//! Hosts sync their overlay peer tables themselves (`[cluster]`): three
//! hosts as namespaces on an underlay bridge, no static peers or FDB
//! entries. Needs root.
mod common;
use common::{ok, Topo};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const HOSTS: [&str; 3] = ["host", "h1", "h2"];
const ETCD_IP: &str = "192.168.62.254";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Gossip,
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Etcd,
}

fn host_ip(i: usize) -> String {
    format!("192.168.62.{}", i + 1)
}

struct Host {
    backend: Backend,
    ns: &'static str,
    uplink: String,
    sock: PathBuf,
    log: PathBuf,
    cfg: PathBuf,
    pid: u32,
}

/// Three hosts on a bridge in namespace `ul`, each with an uplink veth; for
/// etcd, Debian's etcd listening on the bridge in `ul`.
fn underlay(t: &mut Topo, backend: Backend) -> (Vec<Host>, Option<u32>) {
    for h in &HOSTS[1..] {
        t.add_ns(h);
    }
    let addrs: Vec<String> = (0..HOSTS.len())
        .map(|i| format!("{}/24", host_ip(i)))
        .collect();
    let ups = t.underlay_bridge(&HOSTS, &addrs);
    let dir = t.tmp("cl");
    let _ = std::fs::create_dir_all(&dir);
    let etcd = (backend == Backend::Etcd).then(|| {
        ok(&t.exec(
            "ul",
            &["ip", "addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"],
        ));
        start_etcd(t, &dir)
    });
    std::fs::write(dir.join("key"), b"a shared secret of 32 bytes ....").unwrap();
    let hosts = HOSTS
        .iter()
        .zip(ups)
        .map(|(h, up)| Host {
            backend,
            ns: h,
            uplink: up,
            sock: dir.join(format!("{h}.sock")),
            log: dir.join(format!("{h}.log")),
            cfg: dir.join(format!("{h}.toml")),
            pid: 0,
        })
        .collect();
    (hosts, etcd)
}

/// Debian's etcd on the underlay bridge (its own namespace); its data dir
/// is kept across restarts. Returns its PID.
fn start_etcd(t: &mut Topo, dir: &Path) -> u32 {
    let data = dir.join("etcd");
    let client = format!("http://{ETCD_IP}:2379");
    let cmd = vswitch_overlay::etcd_single_node_cmd(&client, data.to_str().unwrap());
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let pid = t.bg_log("ul", &args, &dir.join("etcd.log"));
    until("etcd answers", Duration::from_secs(20), || {
        t.exec("ul", &["curl", "-sf", &format!("{client}/health")])
            .status
            .success()
    });
    pid
}

/// etcd's JSON gateway (`/v3/...`) from the underlay namespace.
#[cfg(feature = "etcd")]
fn etcd_api(t: &Topo, path: &str, body: &str) -> serde_json::Value {
    let url = format!("http://{ETCD_IP}:2379/v3/{path}");
    let o = ok(&t.exec("ul", &["curl", "-sf", "-X", "POST", &url, "-d", body]));
    serde_json::from_str(&o).expect("etcd JSON")
}

/// The config of host `i`: one overlay network, no peers, `[cluster]`
/// joining through host 0 (gossip) or etcd.
fn config(h: &Host, i: usize, key: &Path) -> String {
    let cluster = match h.backend {
        Backend::Gossip => format!(
            "[cluster]\nlisten = \"{}:7946\"\njoin = [\"{}:7946\"]\nkey_file = \"{}\"\nname = \"{}\"\n\
             probe_ms = 200\nsuspect_ms = 800\nanti_entropy_ms = 300\n",
            host_ip(i),
            host_ip(0),
            key.display(),
            h.ns
        ),
        Backend::Etcd => format!(
            "[cluster]\nbackend = \"etcd\"\netcd_endpoints = [\"http://{ETCD_IP}:2379\"]\nname = \"{}\"\n\
             advertise = \"{}:7946\"\nlease_ttl_secs = 2\n",
            h.ns,
            host_ip(i)
        ),
    };
    format!(
        "[[workers]]\nidle = {{ mode = \"adaptive\", idle_after_us = 500, max_sleep_ms = 20 }}\n\
         [[networks]]\nname = \"ov\"\ndriver = \"overlay\"\nvni = 300\nsubnet = \"10.90.0.0/24\"\n\
         [uplink]\niface = \"{}\"\n{cluster}",
        h.uplink,
    )
}

fn start(t: &mut Topo, h: &mut Host, i: usize) {
    let key = h.cfg.with_file_name("key");
    let text = config(h, i, &key);
    start_with(t, h, &text);
}

/// Starts host `h` with configuration `text`.
fn start_with(t: &mut Topo, h: &mut Host, text: &str) {
    std::fs::write(&h.cfg, text).unwrap();
    let _ = std::fs::remove_file(&h.sock);
    // Each start of a host begins with no saved state.
    let state = h.cfg.with_extension("state");
    let _ = std::fs::remove_dir_all(&state);
    t.no_upstream(h.ns);
    h.pid = t.bg_log(
        h.ns,
        &[
            env!("CARGO_BIN_EXE_vswitch"),
            "run",
            "--config",
            h.cfg.to_str().unwrap(),
            "--socket",
            h.sock.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &h.log,
    );
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if std::os::unix::net::UnixStream::connect(&h.sock).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the switch in {} did not start:\n{}",
        h.ns,
        std::fs::read_to_string(&h.log).unwrap_or_default()
    );
}

fn vs(h: &Host, args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vswitch"))
        .arg("--socket")
        .arg(&h.sock)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "vswitch ({}) {args:?}: {}\nlog:\n{}",
        h.ns,
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(&h.log).unwrap_or_default()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(h: &Host, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&vs(h, args)).expect("JSON")
}

/// The synced FDB entries of host `h`: (MAC, source host).
fn synced(h: &Host) -> Vec<(String, String)> {
    json(h, &["fdb", "show", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "synced")
        .map(|e| {
            (
                e["mac"].as_str().unwrap().to_string(),
                e["host"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Polls until `cond` holds (returns how long it took), or fails with `what`.
fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not within {limit:?}: {what}");
}

/// Attaches container `c` (named `c` for DNS) to host `h`'s overlay
/// network; returns its address.
fn attach(t: &mut Topo, h: &Host, c: &str, mac: &str) -> String {
    t.add_ns(c);
    vs(
        h,
        &[
            "attach",
            "ov",
            "--netns",
            &t.ns(c),
            "--mac",
            mac,
            "--name",
            c,
        ],
    );
    // The address IPAM gave, as the container sees it.
    let a = ok(&t.exec(c, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]));
    a.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no address on {c}: {a}"))
        .to_string()
}

/// Whether every host sees the two others alive.
fn all_alive(hosts: &[Host]) -> bool {
    hosts.iter().all(|h| {
        json(h, &["peers", "--json"])["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "alive")
            .count()
            == 2
    })
}

fn member_state(h: &Host, name: &str) -> Option<(String, u64)> {
    let v = json(h, &["peers", "--json"]);
    v["members"].as_array().unwrap().iter().find_map(|m| {
        (m["name"] == name).then(|| {
            (
                m["state"].as_str().unwrap().to_string(),
                m["epoch"].as_u64().unwrap(),
            )
        })
    })
}

const MACS: [&str; 3] = [
    "02:90:00:00:00:10",
    "02:90:00:00:00:11",
    "02:90:00:00:00:12",
];

fn has(list: &[(String, String)], mac: &str, host: &str) -> bool {
    list.iter().any(|(m, h)| m == mac && h == host)
}

#[test]
fn three_hosts_sync_endpoints_gossip() {
    three_hosts_sync_endpoints(Backend::Gossip, "c1");
}

#[cfg(feature = "etcd")]
#[test]
fn three_hosts_sync_endpoints_etcd() {
    three_hosts_sync_endpoints(Backend::Etcd, "c3");
}

#[test]
fn partition_heals_and_forgeries_are_refused_gossip() {
    partition_heals(Backend::Gossip, "c2");
}

#[cfg(feature = "etcd")]
#[test]
fn partition_heals_etcd() {
    partition_heals(Backend::Etcd, "c4");
}

/// Containers on three hosts reach each other with nothing typed but
/// `attach`; IPAM does not hand out an address another host uses; detach,
/// a killed switch and a restarted one are followed everywhere.
fn three_hosts_sync_endpoints(backend: Backend, tag: &str) {
    let mut t = Topo::new(tag);
    let (mut hosts, _) = underlay(&mut t, backend);
    for (i, h) in hosts.iter_mut().enumerate() {
        start(&mut t, h, i);
    }
    // Membership: every host sees the two others alive.
    until("all members alive", Duration::from_secs(10), || {
        all_alive(&hosts)
    });
    // Container 0 first; once host 1 knows its address, IPAM there skips it.
    let ip0 = attach(&mut t, &hosts[0], "c0", MACS[0]);
    until("host 1 learns c0", Duration::from_secs(5), || {
        has(&synced(&hosts[1]), MACS[0], "host")
    });
    let ip1 = attach(&mut t, &hosts[1], "c1", MACS[1]);
    let ip2 = attach(&mut t, &hosts[2], "c2", MACS[2]);
    assert_ne!(
        ip0, ip1,
        "IPAM gave host 1 the address of a container on host 0"
    );
    let ips = [ip0, ip1, ip2];
    for (i, h) in hosts.iter().enumerate() {
        until(
            &format!("{} learns the others", h.ns),
            Duration::from_secs(5),
            || {
                let s = synced(h);
                (0..3)
                    .filter(|j| *j != i)
                    .all(|j| has(&s, MACS[j], HOSTS[j]))
            },
        );
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
        assert!(
            t.ping(&format!("c{a}"), &ips[b], 2),
            "c{a} cannot ping c{b} ({})",
            ips[b]
        );
    }
    // Names too: each container finds the others by name, through the
    // resolver of its own host.
    for (a, b) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
        let c = format!("c{a}");
        until(
            &format!("c{a} resolves c{b}"),
            Duration::from_secs(5),
            || t.getent(&c, &format!("c{b}")).as_deref() == Some(ips[b].as_str()),
        );
    }
    // Flood lists came from the cluster too.
    let st = json(&hosts[0], &["peers", "--json"]);
    assert_eq!(st["me"]["entries"].as_u64(), Some(4), "{st}"); // VTEP, VNI, c0 and its name
    assert_eq!(st["stats"]["rx_bad_auth"], 0);
    assert_eq!(st["stats"]["rx_malformed"], 0);

    // Detach withdraws everywhere, the name too.
    vs(&hosts[2], &["detach", "ov", "--netns", &t.ns("c2")]);
    for h in &hosts[..2] {
        until("c2 withdrawn after detach", Duration::from_secs(3), || {
            !synced(h).iter().any(|(m, _)| m == MACS[2])
        });
    }
    until("c2's name withdrawn", Duration::from_secs(3), || {
        t.getent("c0", "c2").is_none()
    });
    // Back, then the switch on host 2 dies without a word.
    vs(
        &hosts[2],
        &[
            "attach",
            "ov",
            "--netns",
            &t.ns("c2"),
            "--mac",
            MACS[2],
            "--ip",
            &ips[2],
        ],
    );
    until("c2 back on host 0", Duration::from_secs(3), || {
        has(&synced(&hosts[0]), MACS[2], "h2")
    });
    let (_, epoch_before) = member_state(&hosts[0], "h2").unwrap();
    t.stop_child(hosts[2].pid, Signal::SIGKILL);
    for h in &hosts[..2] {
        let took = until(
            "a killed host's entries withdrawn",
            Duration::from_secs(6),
            || !synced(h).iter().any(|(_, src)| src == "h2"),
        );
        eprintln!("{}: h2's entries withdrawn {took:?} after the kill", h.ns);
    }
    if backend == Backend::Gossip {
        // The first survivor whose suspicion ran out told the other at once.
        let notices: u64 = hosts[..2]
            .iter()
            .map(|h| {
                json(h, &["peers", "--json"])["stats"]["down_notices"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum();
        assert!(notices >= 1, "no failure notice between the survivors");
    }
    assert!(!t.ping("c0", &ips[2], 1));
    // Restarted: a new run, with another container; the old MAC does not
    // come back.
    let mut h2 = hosts.pop().unwrap();
    start(&mut t, &mut h2, 2);
    // The new container comes once the host has the cluster's tables, so
    // its gratuitous ARP (arp_notify) reaches c0 and replaces the old MAC
    // in c0's neighbour cache.
    until(
        "the restarted host learns c0",
        Duration::from_secs(5),
        || has(&synced(&h2), MACS[0], "host"),
    );
    let new_mac = "02:90:00:00:00:22";
    // The old container's interface outlived the killed switch; this run
    // (which kept no state) replaces the container.
    ok(&t.exec("c2", &["ip", "link", "del", "eth0"]));
    vs(
        &h2,
        &[
            "attach",
            "ov",
            "--netns",
            &t.ns("c2"),
            "--mac",
            new_mac,
            "--ip",
            &ips[2],
        ],
    );
    until(
        "the restarted host's new entries",
        Duration::from_secs(5),
        || {
            let s = synced(&hosts[0]);
            has(&s, new_mac, "h2") && !s.iter().any(|(m, _)| m == MACS[2])
        },
    );
    let (state, epoch_after) = member_state(&hosts[0], "h2").unwrap();
    assert_eq!(state, "alive");
    assert!(
        epoch_after > epoch_before,
        "epoch {epoch_after} !> {epoch_before}"
    );
    assert!(t.ping("c0", &ips[2], 2), "c0 cannot reach the new c2");
    hosts.push(h2);
}

/// Hosts that join first and are configured afterwards, as a user does with
/// the CLI: each adds its uplink, creates the overlay network and attaches a
/// container only once the cluster is up. A network made at run time gets
/// the entries and flood list the cluster already holds for its VNI.
#[test]
fn networks_made_after_joining_get_the_cluster_entries() {
    let mut t = Topo::new("cj");
    let (mut hosts, _) = underlay(&mut t, Backend::Gossip);
    let key = hosts[0].cfg.with_file_name("key");
    for (i, h) in hosts.iter_mut().enumerate() {
        let text = format!(
            "[[workers]]\nidle = {{ mode = \"adaptive\", idle_after_us = 500, max_sleep_ms = 20 }}\n\
             [cluster]\nlisten = \"{}:7946\"\njoin = [\"{}:7946\"]\nkey_file = \"{}\"\nname = \"{}\"\n\
             probe_ms = 200\nsuspect_ms = 800\nanti_entropy_ms = 300\n",
            host_ip(i),
            host_ip(0),
            key.display(),
            h.ns
        );
        start_with(&mut t, h, &text);
    }
    until("all members alive", Duration::from_secs(10), || {
        all_alive(&hosts)
    });
    // Hosts 0 and 1 set up and attach first; host 2 only after it holds
    // their rows.
    let mut ips = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        if i == 2 {
            until(
                "host 2's agent holds both others' endpoints",
                Duration::from_secs(5),
                || {
                    let v = json(h, &["peers", "--json"]);
                    v["members"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|m| m["entries"].as_u64() == Some(4))
                },
            );
        }
        vs(h, &["uplink", "add", &h.uplink]);
        vs(
            h,
            &[
                "network",
                "create",
                "ov",
                "--driver",
                "overlay",
                "--vni",
                "5151",
                "--subnet",
                "10.91.0.0/24",
            ],
        );
        ips.push(attach(&mut t, h, &format!("c{i}"), MACS[i]));
    }
    for (i, h) in hosts.iter().enumerate() {
        until(
            &format!("{} has the others' containers", h.ns),
            Duration::from_secs(3),
            || {
                let s = synced(h);
                (0..3)
                    .filter(|j| *j != i)
                    .all(|j| has(&s, MACS[j], HOSTS[j]))
            },
        );
        let peers = json(h, &["peer", "ls", "--json"]);
        for j in (0..3).filter(|j| *j != i) {
            assert!(
                peers
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["vtep"] == host_ip(j).as_str()
                        && p["type"] == "synced"
                        && p["vni"] == 5151),
                "{}: no synced flood-list entry for {}: {peers}",
                h.ns,
                host_ip(j)
            );
        }
    }
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1), (0, 1)] {
        assert!(
            t.ping(&format!("c{a}"), &ips[b], 2),
            "c{a} cannot ping c{b} ({})",
            ips[b]
        );
    }
}

/// A partition is detected and heals; (gossip) a forged or malformed
/// datagram is refused and counted, and changes nothing.
fn partition_heals(backend: Backend, tag: &str) {
    let mut t = Topo::new(tag);
    let (mut hosts, _) = underlay(&mut t, backend);
    for (i, h) in hosts.iter_mut().enumerate() {
        start(&mut t, h, i);
    }
    attach(&mut t, &hosts[0], "c0", MACS[0]);
    attach(&mut t, &hosts[2], "c2", MACS[2]);
    until("host 0 learns c2", Duration::from_secs(10), || {
        has(&synced(&hosts[0]), MACS[2], "h2")
    });
    // Cut host 2 off the cluster (the gossip port, or etcd); the data plane
    // is untouched.
    let rules = match backend {
        Backend::Gossip => "table inet vtpart {\n chain in { type filter hook input priority 0; udp dport 7946 drop; }\n chain out { type filter hook output priority 0; udp dport 7946 drop; }\n}\n",
        Backend::Etcd => "table inet vtpart {\n chain in { type filter hook input priority 0; tcp sport 2379 drop; }\n chain out { type filter hook output priority 0; tcp dport 2379 drop; }\n}\n",
    };
    ok(&t.exec("h2", &["nft", rules]));
    until(
        "partition detected on host 0",
        Duration::from_secs(8),
        || !has(&synced(&hosts[0]), MACS[2], "h2"),
    );
    if backend == Backend::Gossip {
        // With etcd, the cut-off host keeps its last view.
        until(
            "partition detected on host 2",
            Duration::from_secs(8),
            || !has(&synced(&hosts[2]), MACS[0], "host"),
        );
    }
    // A change on host 0 during the partition reaches host 2 after it.
    attach(&mut t, &hosts[0], "c0b", "02:90:00:00:00:30");
    ok(&t.exec("h2", &["nft", "delete", "table", "inet", "vtpart"]));
    let t0 = Instant::now();
    let healed = || {
        let s2 = synced(&hosts[2]);
        has(&synced(&hosts[0]), MACS[2], "h2")
            && has(&s2, MACS[0], "host")
            && has(&s2, "02:90:00:00:00:30", "host")
    };
    while !healed() {
        if t0.elapsed() > Duration::from_secs(15) {
            for h in &hosts {
                eprintln!("{}: {:?}\n{}", h.ns, synced(h), vs(h, &["peers"]));
                eprintln!("{}", std::fs::read_to_string(&h.log).unwrap_or_default());
            }
            panic!("not healed within 15 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t0.elapsed();
    eprintln!("healed {took:?} after the cut was removed");
    if backend != Backend::Gossip {
        return;
    }

    // Forgeries, sent from host 1's address to host 0's cluster port: a
    // well-formed datagram under another key, and junk.
    let before = json(&hosts[0], &["peers", "--json"]);
    let script = "import hmac,hashlib,socket,sys\n\
        body=b'VSWC\\x01\\x01'+bytes(20)\n\
        tag=hmac.new(b'not the cluster key at all!!',body,hashlib.sha256).digest()[:16]\n\
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
        s.sendto(body+tag,(sys.argv[1],7946))\n\
        s.sendto(b'garbage',(sys.argv[1],7946))\n";
    ok(&t.exec("h1", &["python3", "-c", script, &host_ip(0)]));
    until("forgeries counted", Duration::from_secs(3), || {
        let v = json(&hosts[0], &["peers", "--json"]);
        v["stats"]["rx_bad_auth"].as_u64() > before["stats"]["rx_bad_auth"].as_u64()
            && v["stats"]["rx_malformed"].as_u64() > before["stats"]["rx_malformed"].as_u64()
    });
    let after = json(&hosts[0], &["peers", "--json"]);
    assert_eq!(
        before["members"].as_array().map(|m| m.len()),
        after["members"].as_array().map(|m| m.len())
    );
    assert!(has(&synced(&hosts[0]), MACS[2], "h2"));
}

/// etcd restarts under the hosts: their watches resume from their revision
/// and their leases come back. A host cut off while the history it missed
/// is compacted lists the table again, and catches up.
#[cfg(feature = "etcd")]
#[test]
fn etcd_watch_resumes_and_relists_after_compaction() {
    let mut t = Topo::new("c5");
    let (mut hosts, etcd) = underlay(&mut t, Backend::Etcd);
    let dir = t.tmp("cl");
    for (i, h) in hosts.iter_mut().enumerate() {
        start(&mut t, h, i);
    }
    attach(&mut t, &hosts[0], "c0", MACS[0]);
    until("host 2 learns c0", Duration::from_secs(10), || {
        has(&synced(&hosts[2]), MACS[0], "host")
    });
    // Restart etcd (same data): a change afterwards still arrives.
    t.stop_child(etcd.unwrap(), Signal::SIGTERM);
    start_etcd(&mut t, &dir);
    attach(&mut t, &hosts[1], "c1", MACS[1]);
    until(
        "host 2 learns c1 after the etcd restart",
        Duration::from_secs(15),
        || has(&synced(&hosts[2]), MACS[1], "h1"),
    );
    // Cut host 2 off etcd, change things, compact the history it missed.
    let rules = "table inet vtpart {\n chain in { type filter hook input priority 0; tcp sport 2379 drop; }\n chain out { type filter hook output priority 0; tcp dport 2379 drop; }\n}\n";
    ok(&t.exec("h2", &["nft", rules]));
    // Long enough for its keep-alives to fail: its watch is then broken.
    until(
        "host 2 is dropped from etcd",
        Duration::from_secs(10),
        || {
            !has(&synced(&hosts[0]), MACS[2], "h2")
                && json(&hosts[0], &["peers", "--json"])["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().all(|m| m["name"] != "h2"))
        },
    );
    vs(&hosts[0], &["detach", "ov", "--netns", &t.ns("c0")]);
    attach(&mut t, &hosts[0], "c0b", "02:90:00:00:00:30");
    let rev = etcd_api(&t, "kv/range", "{\"key\":\"AA==\"}")["header"]["revision"]
        .as_str()
        .unwrap()
        .to_string();
    etcd_api(
        &t,
        "kv/compaction",
        &format!("{{\"revision\":\"{rev}\",\"physical\":true}}"),
    );
    ok(&t.exec("h2", &["nft", "delete", "table", "inet", "vtpart"]));
    until(
        "host 2 catches up after the compaction",
        Duration::from_secs(20),
        || {
            let s = synced(&hosts[2]);
            has(&s, "02:90:00:00:00:30", "host") && !s.iter().any(|(m, _)| m == MACS[0])
        },
    );
    let st = json(&hosts[2], &["peers", "--json"]);
    assert!(
        st["stats"]["relists"].as_u64() >= Some(1),
        "no re-list: {st}"
    );
}
