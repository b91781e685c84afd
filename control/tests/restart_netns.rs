//! The switch survives its own restart: what the CLI made (networks,
//! attachments, published ports, the uplink) is saved in the state
//! directory and put back; containers keep their interfaces (same ifindex,
//! MAC and address) across `kill -9` and `SIGTERM`; a TCP stream between
//! containers, a connection through SNAT and one to a published port all
//! carry on with the same translations. Also: a corrupt state file and an
//! unwritable state directory, `SIGHUP` reloads, containers gone while the
//! switch was down. Needs root.
//!
//! Topology: containers — vswitch in "host" — uplink veth — "ext"
//! (192.168.91.2).
mod common;
use common::{ok, Topo};
use std::time::{Duration, Instant};

const HOST_IP: &str = "192.168.91.1";
const EXT_IP: &str = "192.168.91.2";
const PY: &str = "/usr/bin/python3";
const WORKER: &str =
    "[[workers]]\nidle = { mode = \"adaptive\", idle_after_us = 500, max_sleep_ms = 20 }\n";

/// A TCP echo server on `port` (every connection in its own thread).
const ECHO_SERVER: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
def serve(c):
    while True:
        d = c.recv(4096)
        if not d:
            break
        c.sendall(d)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// One long-lived TCP connection to argv[1]:argv[2]: a line every 100 ms,
/// each echoed back, for argv[3] seconds. Prints its local address first
/// and "ok N" at the end; a reset or a 30 s silence fails it.
const ECHO_CLIENT: &str = r#"
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
print("local", "%s:%d" % c.getsockname(), flush=True)
n, end = 0, time.time() + float(sys.argv[3])
while time.time() < end:
    c.sendall(b"x" * 32 + b"\n")
    got = b""
    while len(got) < 33:
        d = c.recv(4096)
        if not d:
            print("closed by peer", flush=True)
            sys.exit(1)
        got += d
    n += 1
    time.sleep(0.1)
print("ok", n, flush=True)
"#;

fn topo(tag: &str) -> Topo {
    topo_with(tag, WORKER)
}

fn topo_with(tag: &str, cfg: &str) -> Topo {
    let mut t = Topo::new(tag);
    t.add_ext(&format!("{HOST_IP}/24"), &format!("{EXT_IP}/24"));
    t.start_switch(cfg);
    t
}

/// (ifindex, MAC, IPv4 addresses) of `ifname` in container `c`.
fn iface(t: &Topo, c: &str, ifname: &str) -> (String, String, String) {
    let j: serde_json::Value =
        serde_json::from_str(&ok(&t.exec(c, &["ip", "-j", "addr", "show", "dev", ifname])))
            .expect("ip -j");
    let l = &j[0];
    let addrs: Vec<String> = l["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    (
        l["ifindex"].to_string(),
        l["address"].as_str().unwrap().to_string(),
        addrs.join(","),
    )
}

fn wait_listen(t: &Topo, ns: &str, port: u16) {
    for _ in 0..100 {
        let o = ok(&t.exec(ns, &["ss", "-Hltn", &format!("sport = :{port}")]));
        if !o.trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server on {ns}:{port} did not start");
}

/// `network ls` and `inspect` without the figures that move (learned MACs).
fn networks(t: &Topo) -> serde_json::Value {
    let mut ls = t.json(&["network", "ls", "--json"]);
    for n in ls.as_array_mut().unwrap() {
        n.as_object_mut().unwrap().remove("learned_macs");
    }
    let mut inspect = t.json(&["network", "inspect", "web"]);
    inspect["network"]
        .as_object_mut()
        .unwrap()
        .remove("learned_macs");
    for p in inspect["ports"].as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("status");
    }
    serde_json::json!({ "ls": ls, "inspect": inspect })
}

/// The (orig, reply) tuples of the tracked flows.
fn flows(t: &Topo) -> Vec<(String, String)> {
    t.json(&["conntrack", "show", "--json"])["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["orig"].to_string(), f["reply"].to_string()))
        .collect()
}

/// Restarts the switch after `kill -9`; returns how long after the new
/// process was started a ping from `from` to `to` was first answered.
fn crash_and_restart(t: &mut Topo, cfg: &str, from: &str, to: &str) -> Duration {
    t.kill_switch();
    std::thread::sleep(Duration::from_millis(800));
    let t0 = Instant::now();
    t.start_switch(cfg);
    eprintln!(
        "the new switch answered on its socket {:?} after it was started",
        t0.elapsed()
    );
    loop {
        let o = t.exec(from, &["ping", "-c", "1", "-W", "0.1", to]);
        eprintln!("ping at {:?}: {}", t0.elapsed(), o.status);
        if o.status.success() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no traffic 10 s after the restart:\n{}",
            t.log()
        );
    }
}

/// Everything made with the CLI comes back after `kill -9`: networks,
/// containers' interfaces untouched, the published port, SNAT; a TCP stream
/// between containers, a connection through SNAT and one to a published
/// port all survive, with the same translations.
#[test]
fn cli_made_state_and_connections_survive_kill_9() {
    survive_kill_9("rs", WORKER);
}

/// The same with two workers: each connection comes back to the table of
/// its container's worker, whichever worker the uplink is on.
#[test]
fn connections_survive_kill_9_with_two_workers() {
    let t = survive_kill_9("r2", &format!("{WORKER}{WORKER}"));
    let ports = t.json(&["port", "ls", "--json"]);
    let worker_of = |name: &str| {
        ports
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                p["network"] == name || p["attached"].as_str().is_some_and(|a| a.contains(name))
            })
            .and_then(|p| p["worker"].as_u64())
            .unwrap_or_else(|| panic!("no port {name}: {ports}"))
    };
    assert_ne!(
        worker_of("(uplink)"),
        worker_of(&t.ns("c1")),
        "the SNAT container is on another worker than the uplink: {ports}"
    );
    // Each connection is back in its container's worker's table.
    let flows = t.json(&["conntrack", "show", "--json"]);
    for (dst, c) in [
        (format!("{EXT_IP}:7000"), "c1"),
        (format!("{HOST_IP}:8090"), "c2"),
    ] {
        let f = flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["orig"]["dst"] == dst.as_str())
            .unwrap_or_else(|| panic!("no flow to {dst}: {flows}"));
        assert_eq!(
            f["worker"].as_u64(),
            Some(worker_of(&t.ns(c))),
            "the flow to {dst} lives with {c}'s worker: {flows}\n{ports}"
        );
    }
    let stats = t.json(&["stats", "--json"]);
    let handed: u64 = stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["handed_over"].as_u64().unwrap_or(0))
        .sum();
    assert!(handed > 0, "replies were handed between workers: {stats}");
}

fn survive_kill_9(tag: &str, cfg: &str) -> Topo {
    let mut t = topo_with(tag, cfg);
    let up = format!("{}u", t.prefix);
    t.vs_ok(&["network", "create", "web", "--subnet", "10.73.0.0/24"]);
    t.vs_ok(&["uplink", "add", &up]);
    t.add_ns("c1");
    t.add_ns("c2");
    t.vs_ok(&["attach", "web", "--netns", &t.ns("c1"), "--kind", "tap"]);
    t.vs_ok(&["attach", "web", "--netns", &t.ns("c2"), "--kind", "veth"]);
    let (c1, c2) = ("10.73.0.2", "10.73.0.3");
    let before_ifs = (iface(&t, "c1", "eth0"), iface(&t, "c2", "eth0"));
    assert!(before_ifs.0 .2.contains(c1) && before_ifs.1 .2.contains(c2));
    // Servers: echo in ext (SNAT target) and in c2 (published as 8090).
    t.bg("ext", &[PY, "-c", ECHO_SERVER, "7000"]);
    t.bg("c2", &[PY, "-c", ECHO_SERVER, "7001"]);
    t.bg("c2", &["iperf3", "-s", "-1", "-B", c2, "-p", "5299"]);
    wait_listen(&t, "ext", 7000);
    wait_listen(&t, "c2", 7001);
    wait_listen(&t, "c2", 5299);
    t.vs_ok(&[
        "publish",
        "web",
        &format!("{c2}:7001"),
        "--host-port",
        "8090",
    ]);
    let nets_before = networks(&t);
    assert!(t.ping("c1", c2, 2), "c1 -> c2 before the restart");

    // Long-lived connections: container -> outside through SNAT, outside ->
    // published port, and an iperf3 stream container -> container.
    let snat = t.spawn_in("c1", &[PY, "-c", ECHO_CLIENT, EXT_IP, "7000", "10"]);
    let dnat = t.spawn_in("ext", &[PY, "-c", ECHO_CLIENT, HOST_IP, "8090", "10"]);
    let iperf = t.spawn_in(
        "c1",
        &[
            "iperf3", "-c", c2, "-p", "5299", "-t", "10", "-i", "1", "--json",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    let flows_before = flows(&t);
    assert!(
        flows_before.len() >= 2,
        "the SNAT and DNAT connections are tracked: {flows_before:?}"
    );

    let resumed = crash_and_restart(&mut t, cfg, "c1", c2);
    eprintln!("traffic resumed {resumed:?} after the new switch process started");
    assert!(
        resumed <= Duration::from_secs(1),
        "traffic resumed only {resumed:?} after the restart:\n{}",
        t.log()
    );
    assert!(
        t.log().contains("connections taken over"),
        "the flows were taken over:\n{}",
        t.log()
    );
    let flows_after = flows(&t);
    for f in &flows_before {
        assert!(
            flows_after.contains(f),
            "flow {f:?} kept its translation across the restart: {flows_after:?}"
        );
    }

    // The connections finish without a reset.
    for (name, c) in [("SNAT", snat), ("published port", dnat)] {
        let o = common::output_within(c, Duration::from_secs(120), name);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.contains("ok "),
            "the {name} connection across the restart: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = common::output_within(iperf, Duration::from_secs(120), "iperf3");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("iperf3 JSON");
    assert!(
        o.status.success() && j.get("error").is_none(),
        "iperf3 across the restart: {j}"
    );
    let intervals: Vec<f64> = j["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sum"]["bytes"].as_f64().unwrap_or(0.0))
        .collect();
    eprintln!("iperf3 bytes per second across the restart: {intervals:?}");
    assert!(
        intervals.iter().rev().take(3).all(|b| *b > 0.0),
        "the stream carries data again after the restart: {intervals:?}"
    );

    // Nothing changed for the containers or the networks.
    assert_eq!(
        (iface(&t, "c1", "eth0"), iface(&t, "c2", "eth0")),
        before_ifs,
        "the containers' interfaces are the same (ifindex, MAC, address)"
    );
    assert_eq!(networks(&t), nets_before, "network ls / inspect unchanged");
    // New connections: published port from outside, SNAT egress.
    let c = t.spawn_in("ext", &[PY, "-c", ECHO_CLIENT, HOST_IP, "8090", "0.3"]);
    assert!(
        common::output_within(c, Duration::from_secs(120), "a new connection")
            .status
            .success(),
        "published port after restart"
    );
    let c = t.spawn_in("c1", &[PY, "-c", ECHO_CLIENT, EXT_IP, "7000", "0.3"]);
    assert!(
        common::output_within(c, Duration::from_secs(120), "a new connection")
            .status
            .success(),
        "SNAT egress after restart"
    );
    t
}

/// SIGTERM keeps the containers' interfaces (an upgrade is a stop and a
/// start); `detach` and `network rm` remove them. A container whose
/// namespace went away while the switch was down is cleaned up and reported.
#[test]
fn sigterm_keeps_interfaces_detach_and_network_rm_remove_them() {
    let mut t = topo("rt");
    t.vs_ok(&["network", "create", "app", "--subnet", "10.74.0.0/24"]);
    for (c, kind) in [("c1", "tap"), ("c2", "veth"), ("c3", "tap")] {
        t.add_ns(c);
        t.vs_ok(&["attach", "app", "--netns", &t.ns(c), "--kind", kind]);
    }
    let before = iface(&t, "c1", "eth0");
    t.stop_switch();
    assert_eq!(
        iface(&t, "c1", "eth0"),
        before,
        "the TAP stays after SIGTERM"
    );
    assert!(t
        .exec("c2", &["ip", "link", "show", "eth0"])
        .status
        .success());
    // c3 goes while the switch is down (`ip netns del` leaves its
    // /etc/netns directory, with the resolv.conf attach wrote).
    let c3_resolv = format!("/etc/netns/{}/resolv.conf", t.ns("c3"));
    assert!(std::path::Path::new(&c3_resolv).exists());
    ok(&common::sh("ip", &["netns", "del", &t.ns("c3")]));
    t.start_switch(WORKER);
    assert!(t.ping("c1", "10.74.0.3", 3), "c1 -> c2 after the restart");
    let ports = t.vs_ok(&["port", "ls"]);
    assert!(
        !ports.contains(&t.ns("c3")),
        "c3 is gone from the ports:\n{ports}"
    );
    assert!(
        t.log().contains("namespace is gone"),
        "the gone container is reported:\n{}",
        t.log()
    );
    assert!(
        !std::path::Path::new(&c3_resolv).exists(),
        "its resolv.conf is removed with it"
    );
    // detach removes the interface; network rm the host's interface.
    t.vs_ok(&["detach", "app", "--netns", &t.ns("c1")]);
    assert!(!t
        .exec("c1", &["ip", "link", "show", "eth0"])
        .status
        .success());
    t.vs_ok(&["detach", "app", "--netns", &t.ns("c2")]);
    assert!(!t
        .exec("c2", &["ip", "link", "show", "eth0"])
        .status
        .success());
    let gw = t.json(&["network", "ls", "--json"])[0]["id"]
        .as_u64()
        .unwrap();
    t.vs_ok(&["network", "rm", "app"]);
    assert!(
        !t.exec("host", &["ip", "link", "show", &format!("vsgw{gw}")])
            .status
            .success(),
        "network rm removes the host's interface"
    );
    // And nothing comes back at the next start.
    t.stop_switch();
    t.start_switch(WORKER);
    assert_eq!(t.json(&["network", "ls", "--json"]), serde_json::json!([]));
}

/// A state file that does not parse stops the start with a message naming
/// it and what to do, and is left as it was.
#[test]
fn corrupt_state_file_is_refused_and_kept() {
    let mut t = topo("rc");
    t.vs_ok(&["network", "create", "n1", "--subnet", "10.75.0.0/24"]);
    t.stop_switch();
    let file = t.state_dir().join("state.json");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.truncate(text.len() / 2);
    std::fs::write(&file, &text).unwrap();
    let e = t.switch_fails(WORKER, &[]);
    assert!(
        e.contains("is not a vswitch state document") && e.contains(file.to_str().unwrap()),
        "{e}"
    );
    assert!(e.contains("mv "), "the error says what to do: {e}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        text,
        "left as it was"
    );
    // Moved aside as the message says: the switch starts empty.
    std::fs::rename(&file, file.with_extension("bad")).unwrap();
    t.start_switch(WORKER);
    assert_eq!(t.json(&["network", "ls", "--json"]), serde_json::json!([]));
}

/// Unmounts the state directory's tmpfs, also when the test fails.
struct Mounted(std::path::PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = common::sh("umount", &["-l", self.0.to_str().unwrap()]);
    }
}

/// A change that cannot be saved (the state directory is full) fails with a
/// clear error and changes nothing; what runs keeps running.
#[test]
fn unwritable_state_dir_refuses_changes_and_keeps_what_runs() {
    let mut t = Topo::new("ru");
    let dir = t.state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    ok(&common::sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            dir.to_str().unwrap(),
        ],
    ));
    let _m = Mounted(dir.clone());
    t.start_switch(WORKER);
    t.vs_ok(&["network", "create", "n1", "--subnet", "10.76.0.0/24"]);
    t.add_ns("c1");
    t.add_ns("c2");
    t.vs_ok(&["attach", "n1", "--netns", &t.ns("c1")]);
    t.vs_ok(&["attach", "n1", "--netns", &t.ns("c2")]);
    // The directory fills up (the switch holds its lock file open for
    // writing, so it cannot be remounted read-only under it).
    let filler = dir.join("filler");
    let _ = common::sh(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", filler.display()),
            "bs=64k",
            "count=100",
        ],
    );
    let o = t.vs(&["network", "create", "n2", "--subnet", "10.77.0.0/24"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a change that cannot be saved fails");
    assert!(
        e.contains("cannot save the switch's state") && e.contains("nothing was changed"),
        "{e}"
    );
    let nets = t.json(&["network", "ls", "--json"]);
    assert_eq!(nets.as_array().unwrap().len(), 1, "no n2: {nets}");
    assert!(!t
        .vs(&["detach", "n1", "--netns", &t.ns("c2")])
        .status
        .success());
    assert!(t.ping("c1", "10.76.0.3", 2), "what runs keeps running");
    std::fs::remove_file(&filler).unwrap();
    t.vs_ok(&["network", "create", "n2", "--subnet", "10.77.0.0/24"]);
    t.stop_switch();
}

/// SIGHUP re-reads the config file: a network added there appears, one
/// removed goes, the others (and their containers) are not touched; a
/// config that does not parse changes nothing.
#[test]
fn sighup_applies_the_config_difference() {
    let mut t = Topo::new("rh");
    let net =
        |name: &str, sn: &str| format!("[[networks]]\nname = \"{name}\"\nsubnet = \"{sn}\"\n");
    let a = net("a", "10.78.0.0/24");
    let b = net("b", "10.79.0.0/24");
    t.start_switch(&format!("{WORKER}{a}"));
    t.add_ns("c1");
    t.add_ns("c2");
    t.vs_ok(&["attach", "a", "--netns", &t.ns("c1")]);
    t.vs_ok(&["attach", "a", "--netns", &t.ns("c2")]);
    let before = (iface(&t, "c1", "eth0"), t.vs_ok(&["port", "ls"]));
    // A ping runs through every reload: none is lost.
    let ping = t.spawn_in("c1", &["ping", "-c", "40", "-i", "0.1", "10.78.0.3"]);
    let hup = |t: &Topo| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(t.switch_pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    };
    let names = |t: &Topo| -> Vec<String> {
        t.json(&["network", "ls", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect()
    };
    t.write_config(&format!("{WORKER}{a}{b}"));
    hup(&t);
    assert_eq!(names(&t), ["a", "b"], "b added:\n{}", t.log());
    t.write_config(&format!("{WORKER}{a}[[networks]\n"));
    hup(&t);
    assert_eq!(names(&t), ["a", "b"], "a broken config changes nothing");
    assert!(t.log().contains("config not reloaded"), "{}", t.log());
    t.write_config(&format!("{WORKER}{a}"));
    hup(&t);
    assert_eq!(names(&t), ["a"], "b removed:\n{}", t.log());
    let o = common::output_within(ping, Duration::from_secs(120), "ping");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(" 0% packet loss"),
        "no loss through the reloads:\n{out}"
    );
    assert_eq!(
        (iface(&t, "c1", "eth0"), t.vs_ok(&["port", "ls"])),
        before,
        "network a and its containers untouched"
    );
    // A network made through the API is the API's: a reload leaves it.
    t.vs_ok(&["network", "create", "api", "--subnet", "10.80.0.0/24"]);
    hup(&t);
    assert_eq!(names(&t), ["a", "api"]);
}
