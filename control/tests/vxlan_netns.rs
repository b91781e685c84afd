//! VXLAN overlay networks across hosts (namespaces joined by an underlay
//! veth), against vswitch and against the Linux kernel's VXLAN. Needs root.
mod common;
use common::{ok, Topo};
use std::time::Duration;

const A_IP: &str = "192.168.60.1";
const B_IP: &str = "192.168.60.2";

/// Host namespaces hA and hB on an underlay link.
fn underlay(tag: &str) -> Topo {
    let mut t = Topo::new(tag);
    t.add_ns("hB");
    let a = format!("{}a", t.prefix);
    let b = format!("{}b", t.prefix);
    t.link(
        "host",
        &a,
        &format!("{A_IP}/24"),
        "hB",
        &b,
        &format!("{B_IP}/24"),
    );
    t
}

fn switch_cfg(uplink: &str, nets: &str) -> String {
    format!(
        "[[workers]]\nidle = {{ mode = \"adaptive\", idle_after_us = 500, max_sleep_ms = 20 }}\n{nets}\n[uplink]\niface = \"{uplink}\"\n"
    )
}

fn overlay(name: &str, vni: u32, subnet: Option<&str>, peer: &str) -> String {
    let sn = subnet.map_or(String::new(), |s| format!("subnet = \"{s}\"\n"));
    format!("[[networks]]\nname = \"{name}\"\ndriver = \"overlay\"\nvni = {vni}\n{sn}peers = [\"{peer}\"]\n")
}

fn rx_packets(t: &Topo, ns: &str) -> u64 {
    ok(&t.exec(ns, &["cat", "/sys/class/net/eth0/statistics/rx_packets"]))
        .trim()
        .parse()
        .unwrap()
}

/// A permanent neighbour entry in container `ns` (no ARP for `ip`).
fn static_neigh(t: &Topo, ns: &str, ip: &str, mac: &str) {
    ok(&t.exec(
        ns,
        &["ip", "neigh", "replace", ip, "lladdr", mac, "dev", "eth0"],
    ));
}

fn iperf_bytes(t: &Topo, client: &str, server_ip: &str, port: &str) -> u64 {
    let j = ok(&t.exec(
        client,
        &["iperf3", "-c", server_ip, "-p", port, "-t", "2", "-J"],
    ));
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0)
}

/// Another vswitch in namespace `ns`, with its own files and socket; `Topo`
/// kills it (started through `bg`).
fn start_switch_in(t: &mut Topo, ns: &str, cfg: &str) -> std::path::PathBuf {
    let dir = t.tmp(ns);
    let _ = std::fs::create_dir_all(&dir);
    let c = dir.join("sw.toml");
    std::fs::write(&c, cfg).unwrap();
    let sock = dir.join("sw.sock");
    t.no_upstream(ns);
    t.bg(
        ns,
        &[
            env!("CARGO_BIN_EXE_vswitch"),
            "run",
            "--config",
            c.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
            "--state-dir",
            dir.join("state").to_str().unwrap(),
        ],
    );
    for _ in 0..100 {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return sock;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the switch in {ns} did not start");
}

fn vs_b(sock: &std::path::Path, args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vswitch"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "vswitch (host B) {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Two hosts, both vswitch: ping and iperf3 across, broadcast (ARP), remote
/// MACs in `fdb show`, and two VNIs with the same addresses kept apart.
#[test]
fn two_vswitch_hosts() {
    let mut t = underlay("x1");
    let (ua, ub) = (format!("{}a", t.prefix), format!("{}b", t.prefix));
    let nets_a = overlay("ov", 100, Some("10.80.0.0/24"), B_IP) + &overlay("ov2", 200, None, B_IP);
    let nets_b = overlay("ov", 100, Some("10.80.0.0/24"), A_IP) + &overlay("ov2", 200, None, A_IP);
    t.start_switch(&switch_cfg(&ua, &nets_a));
    let sb = start_switch_in(&mut t, "hB", &switch_cfg(&ub, &nets_b));
    for c in ["a1", "a2", "b1", "b2"] {
        t.add_ns(c);
    }
    t.vs_ok(&[
        "attach",
        "ov",
        "--netns",
        &t.ns("a1"),
        "--ip",
        "10.80.0.11/24",
    ]);
    vs_b(
        &sb,
        &[
            "attach",
            "ov",
            "--netns",
            &t.ns("b1"),
            "--ip",
            "10.80.0.12/24",
        ],
    );
    // VNI 200 reuses the same addresses, plus one that exists only there.
    t.vs_ok(&[
        "attach",
        "ov2",
        "--netns",
        &t.ns("a2"),
        "--ip",
        "10.80.0.11/24",
    ]);
    vs_b(
        &sb,
        &[
            "attach",
            "ov2",
            "--netns",
            &t.ns("b2"),
            "--ip",
            "10.80.0.13/24",
        ],
    );
    // Overlay MTU: underlay 1500 minus 50; a GSO size whose segments leave
    // as one UDP GSO datagram each.
    let l = ok(&t.exec("a1", &["ip", "-d", "link", "show", "eth0"]));
    assert!(l.contains("mtu 1450"), "{l}");
    let gso = vswitch_engine::pipeline::vxlan::overlay_gso_max_size(1450).unwrap();
    assert!(l.contains(&format!("gso_max_size {gso} ")), "{l}");

    assert!(t.ping("a1", "10.80.0.12", 3), "a1 -> b1\n{}", t.log());
    assert!(t.ping("b1", "10.80.0.11", 2), "b1 -> a1");
    let fdb = t.json(&["fdb", "show", "--network", "ov", "--json"]);
    let b1_mac = t.mac_of("b1", "eth0");
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == b1_mac.as_str() && e["port"] == format!("vtep:{B_IP}").as_str()),
        "b1's MAC must be learned on host B's VTEP: {fdb}"
    );
    // VNI isolation: 10.80.0.13 exists only in VNI 200; a1 (VNI 100) must
    // not reach it, and b2 must not even see a1's ARP.
    let before = rx_packets(&t, "b2");
    assert!(!t.ping("a1", "10.80.0.13", 2), "VNI 100 reached VNI 200");
    assert_eq!(
        rx_packets(&t, "b2"),
        before,
        "b2 received frames of VNI 100"
    );
    assert!(t.ping("a2", "10.80.0.13", 2), "a2 -> b2 inside VNI 200");

    t.bg("b1", &["iperf3", "-s", "-p", "5201"]);
    std::thread::sleep(Duration::from_millis(400));
    let bytes = iperf_bytes(&t, "a1", "10.80.0.12", "5201");
    assert!(
        bytes > 50_000_000,
        "iperf3 across the overlay moved {bytes} bytes"
    );

    // A container whose MTU is set above the overlay's: a DF packet that
    // cannot fit the underlay once encapsulated gets ICMP
    // fragmentation-needed with the overlay MTU, and the drop is counted.
    ok(&t.exec("a1", &["ip", "link", "set", "eth0", "mtu", "1500"]));
    let key = format!("{}:eth0", t.ns("a1"));
    let before = t.port_stats(&key)["drops"]["too_big"].as_u64().unwrap_or(0);
    let o = t.exec(
        "a1",
        &[
            "ping",
            "-M",
            "do",
            "-s",
            "1472",
            "-c",
            "2",
            "-W",
            "1",
            "10.80.0.12",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        out.contains("mtu = 1450") || out.contains("mtu=1450"),
        "{out}"
    );
    let after = t.port_stats(&key)["drops"]["too_big"].as_u64().unwrap_or(0);
    assert!(after > before, "too_big not counted");
    // Below the overlay MTU it still goes through.
    let o = t.exec(
        "a1",
        &[
            "ping",
            "-M",
            "do",
            "-s",
            "1400",
            "-c",
            "1",
            "-W",
            "1",
            "10.80.0.12",
        ],
    );
    assert!(o.status.success());
}

/// vswitch on host A, the Linux kernel's VXLAN (bridge + vxlan device) on
/// host B, in learning mode with a flood entry, then with static FDB
/// entries and learning off: ping and iperf3 in both directions.
#[test]
fn kernel_vxlan_peer() {
    for static_fdb in [false, true] {
        let mut t = underlay(if static_fdb { "x3" } else { "x2" });
        let (ua, ub) = (format!("{}a", t.prefix), format!("{}b", t.prefix));
        t.start_switch(&switch_cfg(
            &ua,
            &overlay("ov", 100, Some("10.80.0.0/24"), B_IP),
        ));
        t.add_ns("a1");
        t.add_ns("k1");
        t.vs_ok(&[
            "attach",
            "ov",
            "--netns",
            &t.ns("a1"),
            "--ip",
            "10.80.0.11/24",
        ]);
        let a1_mac = t.mac_of("a1", "eth0");
        // Host B: bridge + kernel VXLAN + a veth container.
        let vx = format!("{}v", t.prefix);
        let mut add = vec![
            "ip", "link", "add", &vx, "type", "vxlan", "id", "100", "dstport", "4789", "local",
            B_IP, "dev", &ub,
        ];
        if static_fdb {
            add.push("nolearning");
        }
        ok(&t.exec("hB", &add));
        ok(&t.exec("hB", &["ip", "link", "add", "br0", "type", "bridge"]));
        ok(&t.exec("hB", &["ip", "link", "set", &vx, "master", "br0", "up"]));
        ok(&t.exec("hB", &["ip", "link", "set", "br0", "up"]));
        ok(&t.exec(
            "hB",
            &[
                "bridge",
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                &vx,
                "dst",
                A_IP,
            ],
        ));
        if static_fdb {
            ok(&t.exec(
                "hB",
                &["bridge", "fdb", "append", &a1_mac, "dev", &vx, "dst", A_IP],
            ));
        }
        let kh = format!("{}k", t.prefix);
        ok(&common::sh(
            "ip",
            &[
                "link",
                "add",
                &kh,
                "netns",
                &t.ns("hB"),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &t.ns("k1"),
            ],
        ));
        ok(&t.exec("hB", &["ip", "link", "set", &kh, "master", "br0", "up"]));
        ok(&t.exec("k1", &["ip", "addr", "add", "10.80.0.21/24", "dev", "eth0"]));
        ok(&t.exec("k1", &["ip", "link", "set", "eth0", "mtu", "1450", "up"]));

        assert!(
            t.ping("a1", "10.80.0.21", 3),
            "vswitch -> kernel VXLAN\n{}",
            t.log()
        );
        assert!(t.ping("k1", "10.80.0.11", 2), "kernel VXLAN -> vswitch");
        t.bg("k1", &["iperf3", "-s", "-p", "5201"]);
        t.bg("a1", &["iperf3", "-s", "-p", "5202"]);
        std::thread::sleep(Duration::from_millis(400));
        let b = iperf_bytes(&t, "a1", "10.80.0.21", "5201");
        assert!(b > 50_000_000, "vswitch -> kernel: {b} bytes");
        let b = iperf_bytes(&t, "k1", "10.80.0.11", "5202");
        assert!(b > 50_000_000, "kernel -> vswitch: {b} bytes");
    }
}

/// Malformed and foreign VXLAN is dropped and counted by reason; the host's
/// own traffic on the underlay is untouched.
#[test]
fn malformed_and_foreign_vxlan_dropped() {
    let mut t = underlay("x4");
    let ua = format!("{}a", t.prefix);
    let ub = format!("{}b", t.prefix);
    t.start_switch(&switch_cfg(
        &ua,
        &overlay("ov", 100, Some("10.80.0.0/24"), B_IP),
    ));
    // A second address on host B: a VTEP that is not a peer.
    ok(&t.exec("hB", &["ip", "addr", "add", "192.168.60.3/24", "dev", &ub]));
    let send = |src: &str, payload_hex: &str| {
        let py = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{src}',0))\ns.sendto(bytes.fromhex('{payload_hex}'),('{A_IP}',4789))\n"
        );
        ok(&t.exec("hB", &["/usr/bin/python3", "-c", &py]));
    };
    // An inner broadcast frame (14 bytes) after each VXLAN header.
    let inner = "ffffffffffff02000000000108060000";
    let drops = |r: &str| -> u64 { t.port_stats(&ua)["drops"][r].as_u64().unwrap_or(0) };
    let (m0, v0, u0) = (
        drops("vxlan_malformed"),
        drops("vxlan_unknown_vni"),
        drops("vxlan_unknown_vtep"),
    );
    send(B_IP, &format!("0c00000000006400{inner}")); // bad flags
    send(B_IP, "0800000000"); // truncated
    send(B_IP, &format!("0800000000012c00{inner}")); // VNI 300: unknown
    send("192.168.60.3", &format!("0800000000006400{inner}")); // not a peer
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(drops("vxlan_malformed") - m0, 2, "{}", t.log());
    assert_eq!(drops("vxlan_unknown_vni") - v0, 1);
    assert_eq!(drops("vxlan_unknown_vtep") - u0, 1);
    // The host's own traffic on the underlay still flows.
    assert!(t.ping("hB", A_IP, 2));
    assert!(t.ping("host", B_IP, 1));
}

/// Three hosts on one underlay segment: broadcast reaches every host,
/// unknown unicast floods until the destination is learned, then only its
/// host sees the traffic; a static remote entry with an address makes the
/// switch answer ARP for it locally (no flood).
#[test]
fn three_hosts_replication_learning_and_arp_suppression() {
    let mut t = Topo::new("x5");
    // The underlay: a bridge in its own namespace, one veth per host.
    t.add_ns("hB");
    t.add_ns("hC");
    let ips = ["192.168.61.1", "192.168.61.2", "192.168.61.3"];
    let addrs: Vec<String> = ips.iter().map(|i| format!("{i}/24")).collect();
    let ups = t.underlay_bridge(&["host", "hB", "hC"], &addrs);
    let mut sockets = Vec::new();
    for (i, h) in ["host", "hB", "hC"].iter().enumerate() {
        let up = &ups[i];
        let peers: Vec<String> = ips
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("\"{p}\""))
            .collect();
        let cfg = switch_cfg(
            up,
            &format!(
                "[[networks]]\nname = \"ov\"\ndriver = \"overlay\"\nvni = 100\npeers = [{}]\n",
                peers.join(", ")
            ),
        );
        if i == 0 {
            t.start_switch(&cfg);
            sockets.push(t.sock.clone());
        } else {
            let sock = start_switch_in(&mut t, h, &cfg);
            sockets.push(sock);
        }
    }
    let cs = ["a1", "b1", "c1"];
    for (i, c) in cs.iter().enumerate() {
        t.add_ns(c);
        vs_b(
            &sockets[i],
            &[
                "attach",
                "ov",
                "--netns",
                &t.ns(c),
                "--ip",
                &format!("10.82.0.{}/24", 11 + i),
            ],
        );
    }
    std::thread::sleep(Duration::from_millis(300));

    // Broadcast from a1 reaches b1 and c1.
    let (b0, c0) = (rx_packets(&t, "b1"), rx_packets(&t, "c1"));
    let _ = t.exec("a1", &["ping", "-b", "-c", "1", "-W", "1", "10.82.0.255"]);
    assert!(rx_packets(&t, "b1") > b0, "broadcast did not reach host B");
    assert!(rx_packets(&t, "c1") > c0, "broadcast did not reach host C");

    // Unknown unicast: a1 knows b1's MAC (static neighbour), the switches do
    // not know where it is: the first frame floods to B and C.
    let b1_mac = t.mac_of("b1", "eth0");
    static_neigh(&t, "a1", "10.82.0.12", &b1_mac);
    let a1_mac = t.mac_of("a1", "eth0");
    static_neigh(&t, "b1", "10.82.0.11", &a1_mac);
    // b1's gratuitous ARP at attach (arp_notify) taught every switch where
    // it is: forget it everywhere first.
    for sock in &sockets {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_vswitch"))
            .arg("--socket")
            .arg(sock)
            .args(["fdb", "rm", "ov", "--mac", &b1_mac])
            .output();
    }
    let c0 = rx_packets(&t, "c1");
    assert!(t.ping("a1", "10.82.0.12", 1));
    assert!(
        rx_packets(&t, "c1") > c0,
        "unknown unicast must flood to host C"
    );
    // Learned now: further traffic to b1 stays off host C.
    let c1_before = rx_packets(&t, "c1");
    assert!(t.ping("a1", "10.82.0.12", 3));
    assert_eq!(
        rx_packets(&t, "c1"),
        c1_before,
        "learned unicast still flooded"
    );

    // ARP suppression: host A knows c1's MAC and address statically.
    let c1_mac = t.mac_of("c1", "eth0");
    t.vs_ok(&[
        "fdb",
        "add",
        "ov",
        "--mac",
        &c1_mac,
        "--vtep",
        ips[2],
        "--ip",
        "10.82.0.13",
    ]);
    let fdb = t.json(&["fdb", "show", "--network", "ov", "--json"]);
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == c1_mac.as_str()
                && e["type"] == "static"
                && e["port"] == format!("vtep:{}", ips[2]).as_str()),
        "{fdb}"
    );
    let _ = t.exec("a1", &["ip", "neigh", "flush", "dev", "eth0"]);
    // c1 knows a1 already, so the only ARP in play is a1's.
    static_neigh(&t, "c1", "10.82.0.11", &a1_mac);
    let b_before = rx_packets(&t, "b1");
    assert!(t.ping("a1", "10.82.0.13", 2), "a1 -> c1\n{}", t.log());
    assert_eq!(
        rx_packets(&t, "b1"),
        b_before,
        "a1's ARP request was flooded to host B instead of answered locally"
    );
    let neigh = ok(&t.exec("a1", &["ip", "neigh", "show", "10.82.0.13"]));
    assert!(neigh.contains(&c1_mac), "{neigh}");
}
