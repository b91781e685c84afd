//! Runtime changes do not disturb traffic on other ports. Needs root.
mod common;
use common::{ok, Topo, ADAPTIVE};

/// A fast ping runs between two containers while others are attached and
/// detached, a network is created and removed, and static entries change:
/// not one of its packets may be lost.
#[test]
fn attach_detach_does_not_disturb_other_ports() {
    let mut t = Topo::new("rt");
    for c in ["c1", "c2", "c3", "c4"] {
        t.add_ns(c);
    }
    t.start_switch(ADAPTIVE);
    t.vs_ok(&["network", "create", "blue", "--subnet", "10.66.0.0/24"]);
    t.vs_ok(&[
        "attach",
        "blue",
        "--netns",
        &t.ns("c1"),
        "--ip",
        "10.66.0.11/24",
    ]);
    t.vs_ok(&[
        "attach",
        "blue",
        "--netns",
        &t.ns("c2"),
        "--kind",
        "veth",
        "--ip",
        "10.66.0.2/24",
    ]);
    assert!(t.ping("c1", "10.66.0.2", 1));
    // 400 pings 10 ms apart: about 4 s of traffic.
    let pinger = t.spawn_in(
        "c1",
        &["ping", "-c", "400", "-i", "0.01", "-W", "1", "10.66.0.2"],
    );
    for round in 0..3 {
        let kind = if round % 2 == 0 { "tap" } else { "veth" };
        t.vs_ok(&[
            "attach",
            "blue",
            "--netns",
            &t.ns("c3"),
            "--kind",
            kind,
            "--ip",
            "10.66.0.3/24",
        ]);
        t.vs_ok(&[
            "attach",
            "blue",
            "--netns",
            &t.ns("c4"),
            "--kind",
            "veth",
            "--ip",
            "10.66.0.4/24",
        ]);
        assert!(t.ping("c3", "10.66.0.4", 1), "new ports do not forward");
        t.vs_ok(&["network", "create", "tmp"]);
        t.vs_ok(&[
            "fdb",
            "add",
            "blue",
            "--mac",
            "02:00:00:00:99:99",
            "--port",
            &format!("{}:eth0", t.ns("c3")),
        ]);
        t.vs_ok(&["fdb", "rm", "blue", "--mac", "02:00:00:00:99:99"]);
        t.vs_ok(&["network", "rm", "tmp"]);
        t.vs_ok(&["detach", "blue", "--netns", &t.ns("c3")]);
        t.vs_ok(&["detach", "blue", "--netns", &t.ns("c4")]);
    }
    let out = common::output_within(pinger, std::time::Duration::from_secs(120), "ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("400 packets transmitted, 400 received"),
        "pings lost while other ports changed:\n{text}"
    );
    // Detached interfaces are gone from their namespaces.
    let links = ok(&t.exec("c3", &["ip", "-o", "link"]));
    assert!(!links.contains("eth0"), "{links}");
}
