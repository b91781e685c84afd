//! The switch as docker0 + iptables: gateway, SNAT with conntrack, published
//! ports, hairpin, isolation. Real namespaces, real clients and servers
//! (curl, python3 http.server, dnsmasq, iperf3, tcpdump). Needs root.
//!
//! Topology: containers — vswitch in "host" — uplink veth — "ext", which
//! holds 192.168.90.2 on the link and 203.0.113.10 behind it (reached
//! through the host's default route via 192.168.90.2).
mod common;
use common::{ok, Topo};
use std::time::Duration;

const HOST_IP: &str = "192.168.90.1";
const EXT_IP: &str = "192.168.90.2";
const REMOTE: &str = "203.0.113.10";
const PY: &str = "/usr/bin/python3";

fn topo(tag: &str, extra_cfg: &str) -> Topo {
    let mut t = Topo::new(tag);
    let up = t.add_ext(&format!("{HOST_IP}/24"), &format!("{EXT_IP}/24"));
    ok(&t.exec(
        "ext",
        &["ip", "addr", "add", &format!("{REMOTE}/32"), "dev", "lo"],
    ));
    ok(&t.exec("host", &["ip", "route", "add", "default", "via", EXT_IP]));
    t.start_switch(&format!(
        "[[workers]]\nidle = {{ mode = \"adaptive\", idle_after_us = 500, max_sleep_ms = 20 }}\n{extra_cfg}\n[uplink]\niface = \"{up}\"\n"
    ));
    t
}

/// Attaches container `c` to `net` with an address from IPAM; returns it.
fn attach(t: &mut Topo, net: &str, c: &str, kind: &str) -> String {
    if !std::path::Path::new(&format!("/run/netns/{}", t.ns(c))).exists() {
        t.add_ns(c);
    }
    t.vs_ok(&["attach", net, "--netns", &t.ns(c), "--kind", kind]);
    let v = t.json(&["network", "inspect", net]);
    let key = format!("{}:eth0", t.ns(c));
    v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["attached"].as_str() == Some(key.as_str()))
        .and_then(|x| x["ip"].as_str())
        .unwrap_or_else(|| panic!("no IPAM address for {c}: {v}"))
        .to_string()
}

fn curl(t: &Topo, from: &str, url: &str) -> Option<String> {
    let o = t.exec(from, &["curl", "-s", "-m", "5", url]);
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn drops(t: &Topo, key: &str, reason: &str) -> u64 {
    t.port_stats(key)["drops"][reason].as_u64().unwrap_or(0)
}

/// Serves `body` over HTTP on `port` from namespace `ns` (python3 http.server).
fn http_server(t: &mut Topo, ns: &str, port: u16, body: &str) {
    let dir = t.tmp(&format!("{ns}-www{port}"));
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("index.html"), body).unwrap();
    t.bg(
        ns,
        &[
            PY,
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "0.0.0.0",
            "--directory",
            dir.to_str().unwrap(),
        ],
    );
    wait_port(t, ns, port);
}

fn wait_port(t: &Topo, ns: &str, port: u16) {
    wait_socket(t, ns, "-Hltn", port);
}

/// Waits for a socket `ss OPTS` lists on `port` in namespace `ns`.
fn wait_socket(t: &Topo, ns: &str, opts: &str, port: u16) {
    for _ in 0..100 {
        let o = ok(&t.exec(ns, &["ss", opts, &format!("sport = :{port}")]));
        if !o.trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server on {ns}:{port} did not start");
}

/// Starts `tcpdump` with `filter` on the external end of the uplink, writing
/// to a file it returns once the capture is on (its header written).
fn capture_ext(t: &mut Topo, name: &str, filter: &str) -> std::path::PathBuf {
    let pcap = t.tmp(&format!("{name}.pcap"));
    let ex = format!("{}x", t.prefix);
    t.bg(
        "ext",
        &[
            "tcpdump",
            "-nni",
            &ex,
            "-U",
            "-w",
            pcap.to_str().unwrap(),
            filter,
        ],
    );
    for _ in 0..100 {
        if std::fs::metadata(&pcap).is_ok_and(|m| m.len() >= 24) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    pcap
}

/// The packets of a capture file, as tcpdump prints them.
fn read_capture(t: &Topo, pcap: &std::path::Path) -> String {
    ok(&t.exec(
        "ext",
        &["tcpdump", "-nr", pcap.to_str().unwrap(), "-c", "1000"],
    ))
}

/// Egress through SNAT: gateway, HTTP, DNS, UDP, ICMP errors translated back,
/// conntrack listing, iperf3; and the host keeps its own service on the
/// uplink address, with no RST from the host for the switch's flows.
#[test]
fn egress_snat_dns_icmp_and_host_untouched() {
    let mut t = topo("n1", "");
    t.vs_ok(&["network", "create", "app", "--subnet", "10.70.0.0/24"]);
    let ip1 = attach(&mut t, "app", "c1", "tap");
    let _ip2 = attach(&mut t, "app", "c2", "veth");
    assert_eq!(ip1, "10.70.0.2", "IPAM hands out the first free address");
    // The container got a default route via the gateway.
    let r = ok(&t.exec("c1", &["ip", "route", "show", "default"]));
    assert!(r.contains("via 10.70.0.1"), "{r}");
    // The switch answers ARP and ICMP echo for the gateway.
    assert!(t.ping("c1", "10.70.0.1", 2), "gateway ping\n{}", t.log());
    // And only the switch: the host's kernel, which also sees what a veth
    // container sends (its AF_PACKET port takes a copy), answers nothing.
    let gw_mac = t.json(&["network", "inspect", "app"])["gateway_mac"]
        .as_str()
        .unwrap()
        .to_string();
    let cap = t.spawn_in(
        "c2",
        &["timeout", "3", "tcpdump", "-l", "-eni", "eth0", "arp"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = t.exec("c2", &["ip", "neigh", "flush", "dev", "eth0"]);
    assert!(
        t.ping("c2", "10.70.0.1", 2),
        "gateway ping from veth\n{}",
        t.log()
    );
    let arp = String::from_utf8_lossy(
        &common::output_within(cap, Duration::from_secs(120), "tcpdump").stdout,
    )
    .into_owned();
    let replies: Vec<&str> = arp.lines().filter(|l| l.contains("is-at")).collect();
    assert!(!replies.is_empty(), "no ARP reply seen: {arp}");
    assert!(
        replies
            .iter()
            .all(|l| l.contains(&format!("10.70.0.1 is-at {gw_mac}"))),
        "only the switch answers for the gateway ({gw_mac}): {arp}"
    );

    http_server(&mut t, "ext", 8080, "hello from outside");
    http_server(&mut t, "host", 9090, "the host's own service");
    // Capture any RST the host kernel would send for the switch's flows.
    let pcap = capture_ext(
        &mut t,
        "rst",
        "tcp[tcpflags] & tcp-rst != 0 and src host 192.168.90.1",
    );

    for c in ["c1", "c2"] {
        for dst in [EXT_IP, REMOTE] {
            let body = curl(&t, c, &format!("http://{dst}:8080/"));
            assert_eq!(
                body.as_deref(),
                Some("hello from outside"),
                "{c} -> {dst}\n{}",
                t.log()
            );
        }
    }
    // ICMP echo through SNAT, tracked by identifier: both containers ping
    // the same outside hosts at once.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| t.ping("c1", REMOTE, 3));
        let b = s.spawn(|| t.ping("c2", REMOTE, 3));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a && b, "ping through SNAT\n{}", t.log());
    let ct = t.json(&["conntrack", "show", "--json"]);
    let icmp = ct["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["orig"]["proto"] == "icmp" && f["orig"]["dst"].as_str().unwrap().starts_with(REMOTE)
        })
        .count();
    assert_eq!(icmp, 2, "one ICMP flow per pinging container: {ct}");
    // The server saw the host's address, not the container's.
    let ss = ok(&t.exec("ext", &["ss", "-Htn", "state", "time-wait"]));
    assert!(ss.contains(HOST_IP) && !ss.contains("10.70.0."), "{ss}");
    // Conntrack lists the translation.
    let ct = t.json(&["conntrack", "show", "--json"]);
    let flows = ct["flows"].as_array().unwrap();
    assert!(
        flows.iter().any(
            |f| f["orig"]["src"].as_str().unwrap().starts_with("10.70.0.2:")
                && f["reply"]["dst"]
                    .as_str()
                    .unwrap()
                    .starts_with("192.168.90.1:")
        ),
        "{ct}"
    );

    // DNS through SNAT, from a real resolver.
    t.dnsmasq("ext", EXT_IP, &["--address=/svc.example/192.0.2.7"], None);
    std::thread::sleep(Duration::from_millis(500));
    let d = ok(&t.exec(
        "c1",
        &[
            "dig",
            "+short",
            "+time=2",
            "+tries=2",
            &format!("@{EXT_IP}"),
            "svc.example",
        ],
    ));
    assert_eq!(d.trim(), "192.0.2.7");

    // UDP echo, and a UDP flow answered by ICMP port unreachable.
    t.bg(
        "ext",
        &[
            PY,
            "-c",
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7777))\nwhile True:\n d,a=s.recvfrom(2048)\n s.sendto(d,a)\n",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    // Echo on the link address: a wildcard-bound UDP socket answers from the
    // address the route picks, so the echo must be asked on that one.
    let script = format!(
        r#"import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect(("{EXT_IP}", 7777))
s.send(b"ping-udp")
assert s.recv(64) == b"ping-udp"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
u.connect(("{EXT_IP}", 9))
try:
    u.send(b"x")
    u.recv(64)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"#
    );
    let out = ok(&t.exec("c2", &[PY, "-c", &script]));
    assert_eq!(
        out.trim(),
        "refused",
        "ICMP port unreachable must reach the container"
    );

    // The host's own service on the uplink address is still the host's.
    assert_eq!(
        curl(&t, "ext", &format!("http://{HOST_IP}:9090/")).as_deref(),
        Some("the host's own service")
    );
    // iperf3 through SNAT (a sanity floor, not a benchmark).
    t.bg("ext", &["iperf3", "-s", "-p", "5201"]);
    wait_port(&t, "ext", 5201);
    let j = ok(&t.exec(
        "c1",
        &["iperf3", "-c", EXT_IP, "-p", "5201", "-t", "2", "-J"],
    ));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    let bytes = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        bytes > 100_000_000,
        "iperf3 through SNAT moved {bytes} bytes"
    );

    std::thread::sleep(Duration::from_millis(300));
    let rsts = read_capture(&t, &pcap);
    let _ = std::fs::remove_file(&pcap);
    assert!(
        rsts.trim().is_empty(),
        "the host kernel reset the switch's flows:\n{rsts}"
    );
}

/// Published ports from outside, from the host, hairpin from containers,
/// host to container, random host port, unpublish.
#[test]
fn published_ports_hairpin_and_host_access() {
    let mut t = topo("n2", "");
    t.vs_ok(&["network", "create", "web", "--subnet", "10.71.0.0/24"]);
    t.vs_ok(&["network", "create", "other", "--subnet", "10.72.0.0/24"]);
    let web = attach(&mut t, "web", "w1", "tap");
    let w2_ip = attach(&mut t, "web", "w2", "veth");
    let _o = attach(&mut t, "other", "o1", "tap");
    http_server(&mut t, "w1", 80, "served by w1");
    let hp = t
        .vs_ok(&[
            "publish",
            "web",
            &format!("{web}:80"),
            "--host-port",
            "8081",
        ])
        .trim()
        .to_string();
    assert_eq!(hp, "8081");
    let url = format!("http://{HOST_IP}:8081/");
    assert_eq!(
        curl(&t, "ext", &url).as_deref(),
        Some("served by w1"),
        "from outside\n{}",
        t.log()
    );
    assert_eq!(
        curl(&t, "host", &url).as_deref(),
        Some("served by w1"),
        "from the host"
    );
    assert_eq!(
        curl(&t, "host", "http://127.0.0.1:8081/").as_deref(),
        Some("served by w1"),
        "from the host on loopback"
    );
    // Hairpin: containers through the host's address, from the same network
    // and from another one; the reply comes back through the switch.
    for c in ["w2", "w1", "o1"] {
        assert_eq!(
            curl(&t, c, &url).as_deref(),
            Some("served by w1"),
            "hairpin from {c}\n{}",
            t.log()
        );
    }
    // Host to container directly, as with docker0.
    assert_eq!(
        curl(&t, "host", &format!("http://{web}:80/")).as_deref(),
        Some("served by w1")
    );
    // A random free host port.
    let rp: u16 = t
        .vs_ok(&["publish", "web", &format!("{web}:80")])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        curl(&t, "ext", &format!("http://{HOST_IP}:{rp}/")).as_deref(),
        Some("served by w1")
    );
    // Two host ports to one container port: a client that reuses its
    // source port for the second (Linux picks ephemeral ports per
    // destination, so it often does) makes the same reply tuple as its
    // closed connection to the first. The new connection takes it over.
    for port in [8081, rp, 8081] {
        let o = t.exec(
            "ext",
            &[
                "curl",
                "-sS",
                "-m",
                "3",
                "--local-port",
                "45123",
                &format!("http://{HOST_IP}:{port}/"),
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "served by w1",
            "port {port} from source port 45123: curl {} {}\n{}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            t.vs_ok(&["stats"]),
            t.vs_ok(&["conntrack", "show"]),
            t.log()
        );
    }
    let v = t.json(&["network", "inspect", "web"]);
    let pubs = v["published"].as_array().unwrap();
    assert_eq!(pubs.len(), 2, "{v}");
    // Unpublished: gone from outside (and the kernel has nothing there).
    t.vs_ok(&["unpublish", "web", "--host-port", &rp.to_string()]);
    assert!(curl(&t, "ext", &format!("http://{HOST_IP}:{rp}/")).is_none());
    // iperf3 to a published port (DNAT): sanity floor.
    t.bg("w1", &["iperf3", "-s", "-p", "5201"]);
    wait_port(&t, "w1", 5201);
    t.vs_ok(&[
        "publish",
        "web",
        &format!("{web}:5201"),
        "--host-port",
        "15201",
    ]);
    let j = ok(&t.exec(
        "ext",
        &["iperf3", "-c", HOST_IP, "-p", "15201", "-t", "2", "-J"],
    ));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    let bytes = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        bytes > 100_000_000,
        "iperf3 to a published port moved {bytes} bytes"
    );
    // A container on two networks (eth0, eth1), as with `docker network connect`.
    t.vs_ok(&["attach", "web", "--netns", &t.ns("o1"), "--ifname", "eth1"]);
    let a = ok(&t.exec("o1", &["ip", "-4", "-o", "addr", "show", "eth1"]));
    assert!(a.contains("10.71.0."), "{a}");
    let d = ok(&t.exec("o1", &["ip", "route", "show", "default"]));
    assert!(
        d.contains("via 10.72.0.1") && !d.contains("10.71.0.1"),
        "the first network keeps the default route: {d}"
    );
    assert!(
        t.ping("o1", &web, 1),
        "o1 reaches w1 over its second interface"
    );
    // IPAM frees an address on detach and hands it out again, never twice.
    t.vs_ok(&["detach", "web", "--netns", &t.ns("w2")]);
    let w3 = attach(&mut t, "web", "w3", "tap");
    assert_eq!(w3, w2_ip, "the freed address is reused");
    let v = t.json(&["network", "inspect", "web"]);
    let mut ips: Vec<&str> = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ip"].as_str().unwrap())
        .collect();
    let n = ips.len();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), n, "an address was given twice: {v}");
    // Bad requests say what to fix.
    let e = t.vs(&["publish", "web", "10.71.0.99:80"]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("no container with address"));
}

/// `--internal` has no egress and no published ports; `--no-icc` keeps
/// containers apart but lets them out; networks never reach each other.
/// Checked with the switch's drop counters and the receivers' own counters.
#[test]
fn internal_no_icc_and_isolation() {
    let mut t = topo("n3", "");
    http_server(&mut t, "ext", 8080, "outside");
    t.vs_ok(&[
        "network",
        "create",
        "vault",
        "--subnet",
        "10.73.0.0/24",
        "--internal",
    ]);
    t.vs_ok(&[
        "network",
        "create",
        "solo",
        "--subnet",
        "10.74.0.0/24",
        "--no-icc",
    ]);
    let v1 = attach(&mut t, "vault", "v1", "tap");
    let s1 = attach(&mut t, "solo", "s1", "tap");
    let s2 = attach(&mut t, "solo", "s2", "veth");
    let k_v1 = format!("{}:eth0", t.ns("v1"));
    let k_s1 = format!("{}:eth0", t.ns("s1"));

    // Internal: gateway yes, outside no (counted), publish refused.
    assert!(t.ping("v1", "10.73.0.1", 1));
    let before = drops(&t, &k_v1, "internal");
    assert!(curl(&t, "v1", &format!("http://{EXT_IP}:8080/")).is_none());
    assert!(
        drops(&t, &k_v1, "internal") > before,
        "internal drop not counted"
    );
    let e = t.vs(&["publish", "vault", &format!("{v1}:80")]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("--internal"));

    // No-ICC: s1 cannot reach s2 (counted; s2 saw nothing), but goes out.
    let rx_before: u64 = ok(&t.exec("s2", &["cat", "/sys/class/net/eth0/statistics/rx_packets"]))
        .trim()
        .parse()
        .unwrap();
    let icc_before = drops(&t, &k_s1, "icc_blocked");
    assert!(
        !t.ping("s1", &s2, 2),
        "no-icc containers reached each other"
    );
    assert!(drops(&t, &k_s1, "icc_blocked") > icc_before);
    let rx_after: u64 = ok(&t.exec("s2", &["cat", "/sys/class/net/eth0/statistics/rx_packets"]))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(rx_before, rx_after, "s2 received frames from s1");
    assert!(t.ping("s1", "10.74.0.1", 1));
    assert_eq!(
        curl(&t, "s1", &format!("http://{EXT_IP}:8080/")).as_deref(),
        Some("outside")
    );
    let _ = s1;

    // Isolation between networks: routed traffic to another subnet is dropped.
    let iso_before = drops(&t, &k_s1, "isolated");
    assert!(!t.ping("s1", &v1, 1));
    assert!(drops(&t, &k_s1, "isolated") > iso_before);
}

/// 10,000 short TCP connections through SNAT: every one completes, each
/// used its own translated port, no collision.
#[test]
fn ten_thousand_short_connections() {
    let mut t = topo("n4", "[switch]\nmax_flows = 65536\n");
    // A wider SNAT range than the default (the test reconfigures the uplink):
    // 10,000 flows to one server stay in TIME_WAIT for 120 s.
    t.vs_ok(&["uplink", "rm"]);
    let up = format!("{}u", t.prefix);
    t.vs_ok(&["uplink", "add", &up, "--snat-ports", "10000-29999"]);
    t.vs_ok(&["network", "create", "burst", "--subnet", "10.75.0.0/24"]);
    attach(&mut t, "burst", "b1", "tap");
    // The server records each peer address and answers one byte.
    let log = t.tmp("peers.txt");
    let server = format!(
        r#"import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000))
s.listen(1024)
f = open("{}", "w")
while True:
    c, a = s.accept()
    c.recv(1)
    c.send(b"y")
    f.write("%s:%d\n" % a)
    f.flush()
    c.close()
"#,
        log.display()
    );
    t.bg("ext", &[PY, "-c", &server]);
    wait_port(&t, "ext", 7000);
    // The client prints the source port of each connection, in order; the
    // server logs the (translated) peer of each, in the same order.
    let client = format!(
        r#"import socket
ok = 0
ports = []
for i in range(10000):
    c = socket.create_connection(("{EXT_IP}", 7000), timeout=5)
    ports.append(c.getsockname()[1])
    c.send(b"x")
    if c.recv(1) == b"y":
        ok += 1
    c.close()
print(ok)
print(" ".join(map(str, ports)))
"#
    );
    let out = ok(&t.exec("b1", &[PY, "-c", &client]));
    let mut it = out.lines();
    assert_eq!(it.next().unwrap_or("").trim(), "10000", "{}", t.log());
    let inner: Vec<u16> = it
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let peers = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let lines: Vec<&str> = peers.lines().collect();
    assert_eq!(lines.len(), 10000);
    assert_eq!(inner.len(), 10000);
    // A translated port may serve again only the same container flow (a
    // reused source port re-opens its TIME_WAIT entry, as with Linux
    // conntrack); two different flows on one port would be a collision.
    let mut owner: std::collections::HashMap<u16, u16> = Default::default();
    for (l, cport) in lines.iter().zip(&inner) {
        let (ip, port) = l.rsplit_once(':').unwrap();
        assert_eq!(ip, HOST_IP, "server saw a container address: {l}");
        let p: u16 = port.parse().unwrap();
        assert!(
            (10000..=29999).contains(&p),
            "port {p} outside the SNAT range"
        );
        let o = *owner.entry(p).or_insert(*cport);
        assert_eq!(
            o, *cport,
            "SNAT port {p} given to two flows ({o} and {cport})"
        );
    }
    let ct = t.json(&["conntrack", "show", "--json"]);
    assert!(ct["created"].as_u64().unwrap() > 0);
    assert_eq!(ct["refused_full"].as_u64(), Some(0));
}

/// A UDP echo server on `port` in namespace `ns` that takes datagrams of up
/// to 64 KiB.
fn udp_echo(t: &mut Topo, ns: &str, port: u16) {
    t.bg(
        ns,
        &[
            PY,
            "-c",
            &format!(
                "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',{port}))\nwhile True:\n d,a=s.recvfrom(65535)\n s.sendto(d,a)\n"
            ),
        ],
    );
    wait_socket(t, ns, "-Hlun", port);
}

/// Sends one `size`-byte datagram from `ns` to `dst`:`port` and prints what
/// came back: "echoed", "refused" or "timeout".
fn udp_roundtrip(t: &Topo, ns: &str, dst: &str, port: u16, size: usize) -> String {
    let script = format!(
        r#"import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect(("{dst}", {port}))
d = bytes(i % 251 for i in range({size}))
try:
    s.send(d)
    print("echoed" if s.recv(65535) == d else "garbled")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"#
    );
    ok(&t.exec(ns, &[PY, "-c", &script])).trim().to_string()
}

/// Datagrams larger than the MTU cross the NAT as fragments, both ways and
/// through a published port; the receiving kernels reassemble them and check
/// their UDP checksums. An ICMP error from a container behind a published
/// port leaves with the host's address, as the kernel's NAT sends it.
#[test]
fn fragments_and_icmp_errors_through_nat() {
    let mut t = topo("n5", "");
    t.vs_ok(&["network", "create", "frag", "--subnet", "10.75.0.0/24"]);
    let ip1 = attach(&mut t, "frag", "c1", "tap");
    let _ip2 = attach(&mut t, "frag", "c2", "veth");
    udp_echo(&mut t, "ext", 7777);
    // Egress through SNAT: 4,000 and 20,000 bytes, 3 and 14 fragments each
    // way; a ping of 3,000 bytes.
    for c in ["c1", "c2"] {
        for size in [4000, 20000] {
            assert_eq!(
                udp_roundtrip(&t, c, EXT_IP, 7777, size),
                "echoed",
                "{size}-byte datagram from {c} through SNAT\n{}",
                t.log()
            );
        }
        let o = t.exec(
            c,
            &[
                "ping", "-c", "2", "-i", "0.2", "-W", "2", "-s", "3000", EXT_IP,
            ],
        );
        assert!(o.status.success(), "3,000-byte ping from {c}");
    }
    // A published UDP port: fragments from outside to the container and back.
    udp_echo(&mut t, "c1", 7000);
    t.vs_ok(&[
        "publish",
        "frag",
        &format!("{ip1}:7000"),
        "--host-port",
        "17000",
        "--proto",
        "udp",
    ]);
    assert_eq!(udp_roundtrip(&t, "ext", HOST_IP, 17000, 9000), "echoed");

    // A published UDP port with nothing listening: the container answers
    // with port unreachable, which must come from the host's address.
    t.vs_ok(&[
        "publish",
        "frag",
        &format!("{ip1}:7001"),
        "--host-port",
        "17001",
        "--proto",
        "udp",
    ]);
    let pcap = capture_ext(&mut t, "icmp", "icmp");
    assert_eq!(udp_roundtrip(&t, "ext", HOST_IP, 17001, 100), "refused");
    let mut seen = String::new();
    for _ in 0..40 {
        seen = read_capture(&t, &pcap);
        if seen.contains("unreachable") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&pcap);
    let unreach: Vec<&str> = seen.lines().filter(|l| l.contains("unreachable")).collect();
    assert!(
        !unreach.is_empty(),
        "no port unreachable on the wire:\n{seen}"
    );
    for l in &unreach {
        assert!(
            l.contains(&format!("IP {HOST_IP} > {EXT_IP}")),
            "an ICMP error that is not from the host's address:\n{seen}"
        );
    }
    assert!(
        !seen.contains("10.75.0."),
        "a container address on the uplink:\n{seen}"
    );
}
