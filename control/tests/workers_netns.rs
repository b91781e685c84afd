//! Two workers on the machine's cores, with the containers' ports spread
//! over them: frames that cross from one worker's port to the other's (L2
//! between containers, SNAT to the outside through the uplink, a published
//! port, hairpin, VXLAN to and from a kernel VTEP) are handed over between
//! workers and arrive. Containers on AF_XDP ports take part: their frames
//! travel in the UMEM frame they arrived in, and come back to it from
//! whichever worker sends or drops them. Needs root.
mod common;
use common::{ok, wait_within, Topo};
use std::time::Duration;

const HOST_IP: &str = "192.168.95.1";
const EXT_IP: &str = "192.168.95.2";

/// The worker that polls container `c`'s port, from `port ls --json`.
/// (`prefix`: the test's namespace prefix.)
fn port_worker(prefix: &str, ports: &serde_json::Value, c: &str) -> u64 {
    let key = format!("{prefix}{c}:eth0");
    ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["attached"] == key.as_str())
        .and_then(|p| p["worker"].as_u64())
        .unwrap_or_else(|| panic!("no port for {c}: {ports}"))
}

#[test]
fn frames_cross_between_two_workers() {
    let mut t = Topo::new("w2");
    let up = t.add_ext(&format!("{HOST_IP}/24"), &format!("{EXT_IP}/24"));
    let idle = "idle = { mode = \"adaptive\", idle_after_us = 500, max_sleep_ms = 20 }";
    t.start_switch(&format!(
        "[[workers]]\n{idle}\n[[workers]]\n{idle}\n[uplink]\niface = \"{up}\"\n"
    ));
    t.vs_ok(&["network", "create", "two", "--subnet", "10.66.0.0/24"]);
    for (c, kind, ip) in [
        ("c1", "tap", "10.66.0.11/24"),
        ("c2", "veth", "10.66.0.12/24"),
        ("c3", "tap", "10.66.0.13/24"),
        ("x1", "veth-xdp", "10.66.0.14/24"),
    ] {
        t.add_ns(c);
        t.attach("two", c, kind, ip);
    }
    // The ports are spread over both workers.
    let ports = t.json(&["port", "ls", "--json"]);
    let prefix = t.ns("");
    let worker_of = |c: &str| port_worker(&prefix, &ports, c);
    let (w1, w2, w3) = (worker_of("c1"), worker_of("c2"), worker_of("c3"));
    assert!(
        w1 != w2 || w2 != w3,
        "the containers' ports are on both workers: {ports}"
    );
    let uplink_worker = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["network"] == "(uplink)")
        .and_then(|p| p["worker"].as_u64())
        .unwrap();

    // Between containers on different workers, both ways.
    for (a, b) in [
        ("c1", "10.66.0.12"),
        ("c2", "10.66.0.13"),
        ("c3", "10.66.0.11"),
        ("x1", "10.66.0.11"),
        ("c1", "10.66.0.14"),
    ] {
        assert!(t.ping(a, b, 3), "{a} -> {b}\n{}", t.log());
    }
    // TCP from a TAP and from an AF_XDP container: 2 s of segments are far
    // more than the AF_XDP port's 1,024 receive frames, so its frames must
    // come back from the packets they were lent to.
    for (cli, worker) in [("c1", w1), ("x1", worker_of("x1"))] {
        let mut s = t.spawn_in("c2", &["iperf3", "-s", "-1", "-B", "10.66.0.12"]);
        std::thread::sleep(Duration::from_millis(300));
        let out = ok(&t.exec(cli, &["iperf3", "-c", "10.66.0.12", "-t", "2", "-J"]));
        assert!(
            wait_within(&mut s, Duration::from_secs(20)),
            "iperf3 server did not end"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let bytes = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
        assert!(
            bytes > 10_000_000,
            "TCP from {cli} (worker {worker}) to c2 (worker {w2}): only {bytes} bytes in 2 s"
        );
    }

    // Out through SNAT from every container, whichever worker the uplink is on.
    t.serve_http("ext", &format!("{EXT_IP}:8099"), "hello from outside");
    for c in ["c1", "c2", "c3", "x1"] {
        assert_eq!(
            t.curl(c, &format!("http://{EXT_IP}:8099/")),
            "hello from outside",
            "{c} (worker {}) through the uplink (worker {uplink_worker})\n{}",
            worker_of(c),
            t.log()
        );
    }
    // A published port on c2, from outside and from c1 and c3 (hairpin).
    t.serve_http("c2", "10.66.0.12:8080", "hello from c2");
    t.vs_ok(&["publish", "two", "10.66.0.12:8080", "--host-port", "18095"]);
    let url = format!("http://{HOST_IP}:18095/");
    assert_eq!(t.curl("ext", &url), "hello from c2", "published port");
    for c in ["c1", "c3", "x1"] {
        assert_eq!(t.curl(c, &url), "hello from c2", "hairpin from {c}");
    }
    // Each connection lives with its container's worker: what arrived for
    // the other worker's containers on the uplink was handed over.
    let stats = t.json(&["stats", "--json"]);
    let w = &stats["workers"][uplink_worker as usize];
    assert!(
        w["handed_over"].as_u64().unwrap_or(0) > 0,
        "the uplink's worker handed replies to the containers' worker: {stats}"
    );
    let flows = t.json(&["conntrack", "show", "--json"]);
    assert!(
        flows["count"].as_u64().unwrap_or(0) >= 3,
        "control lists every worker's flows: {flows}"
    );
    // VXLAN: an overlay network whose containers sit on both workers, with
    // the kernel's VXLAN in the external namespace as the other VTEP.
    // Encapsulated frames go from a container's worker to the uplink's,
    // decapsulated ones the other way.
    let vx = format!("{}v", t.prefix);
    let ex = format!("{}x", t.prefix);
    for cmd in [
        vec![
            "ip", "link", "add", &vx, "type", "vxlan", "id", "77", "dstport", "4789", "local",
            EXT_IP, "dev", &ex,
        ],
        vec!["ip", "addr", "add", "10.67.0.99/24", "dev", &vx],
        vec!["ip", "link", "set", &vx, "mtu", "1450", "up"],
        vec![
            "bridge",
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            &vx,
            "dst",
            HOST_IP,
        ],
    ] {
        ok(&t.exec("ext", &cmd));
    }
    t.vs_ok(&[
        "network",
        "create",
        "ov",
        "--driver",
        "overlay",
        "--vni",
        "77",
        "--subnet",
        "10.67.0.0/24",
        "--peer",
        EXT_IP,
    ]);
    for (c, kind, ip) in [
        ("c4", "tap", "10.67.0.11/24"),
        ("c5", "veth", "10.67.0.12/24"),
        ("c6", "veth-xdp", "10.67.0.13/24"),
    ] {
        t.add_ns(c);
        t.attach("ov", c, kind, ip);
    }
    let ports = t.json(&["port", "ls", "--json"]);
    let prefix = t.ns("");
    let worker_of = |c: &str| port_worker(&prefix, &ports, c);
    assert!(
        worker_of("c4") != uplink_worker || worker_of("c5") != uplink_worker,
        "an overlay container on another worker than the uplink's: {ports}"
    );
    for c in ["c4", "c5"] {
        assert!(
            t.ping(c, "10.67.0.99", 3),
            "{c} (worker {}) -> the kernel's VTEP (uplink on worker {uplink_worker})\n{}",
            worker_of(c),
            t.log()
        );
    }
    assert!(t.ping("c4", "10.67.0.12", 3), "c4 -> c5 on the overlay");
    t.serve_http("ext", "10.67.0.99:8098", "hello through the tunnel");
    // From c6 the outer header goes into its UMEM frame's headroom.
    for c in ["c4", "c5", "c6"] {
        assert_eq!(
            t.curl(c, "http://10.67.0.99:8098/"),
            "hello through the tunnel",
            "TCP from {c} through the tunnel"
        );
    }
    // Every worker forwarded something.
    let stats = t.json(&["stats", "--json"]);
    for w in stats["workers"].as_array().unwrap() {
        assert!(
            w["busy_loops"].as_u64().unwrap_or(0) > 0,
            "an idle worker: {stats}"
        );
    }
}
