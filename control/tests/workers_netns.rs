//! Two workers on the machine's cores, with the containers' ports spread
//! over them: frames that cross from one worker's port to the other's (L2
//! between containers, SNAT to the outside through the uplink, a published
//! port, hairpin) are handed over between workers and arrive. Needs root.
mod common;
use common::{ok, Topo};
use std::time::Duration;

const HOST_IP: &str = "192.168.95.1";
const EXT_IP: &str = "192.168.95.2";

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
    ] {
        t.add_ns(c);
        t.attach("two", c, kind, ip);
    }
    // The ports are spread over both workers.
    let ports = t.json(&["port", "ls", "--json"]);
    let prefix = t.ns("");
    let worker_of = |c: &str| {
        let key = format!("{prefix}{c}:eth0");
        ports
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["attached"] == key.as_str())
            .and_then(|p| p["worker"].as_u64())
            .unwrap_or_else(|| panic!("no port for {c}: {ports}"))
    };
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
    ] {
        assert!(t.ping(a, b, 3), "{a} -> {b}\n{}", t.log());
    }
    let mut s = t.spawn_in("c2", &["iperf3", "-s", "-1", "-B", "10.66.0.12"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = ok(&t.exec("c1", &["iperf3", "-c", "10.66.0.12", "-t", "2", "-J"]));
    let _ = s.wait();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bytes = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        bytes > 10_000_000,
        "TCP across workers: only {bytes} bytes in 2 s"
    );

    // Out through SNAT from every container, whichever worker the uplink is on.
    t.serve_http("ext", &format!("{EXT_IP}:8099"), "hello from outside");
    for c in ["c1", "c2", "c3"] {
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
    for c in ["c1", "c3"] {
        assert_eq!(t.curl(c, &url), "hello from c2", "hairpin from {c}");
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
