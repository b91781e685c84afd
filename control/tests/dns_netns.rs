//! Service discovery with real clients: glibc's `getent hosts` (through the
//! `resolv.conf` `attach` writes), `dig` and busybox `nslookup` in
//! namespaced containers ask the switch's resolver on their gateway. Names
//! and aliases resolve on their network, over UDP and TCP, with PTR for
//! their addresses; a container on two networks sees both; a name of
//! another network does not leak; other names come from an upstream
//! (dnsmasq outside; a network's own with `--dns`), cached; an
//! `--internal` network forwards nothing;
//! detach withdraws the name; the resolver answers no one outside the
//! networks (shown reachable on the host's path first); malformed queries
//! are answered FORMERR and counted. Needs root.
mod common;
use common::{ok, Topo, ADAPTIVE};

const HOST_IP: &str = "192.168.93.1";
const EXT_IP: &str = "192.168.93.2";
const EXTERNAL: &str = "198.51.100.7";
const EXT_DNS2: &str = "192.168.93.3";
const EXTERNAL2: &str = "198.51.100.8";

/// Removes the switch's `/etc/netns/NS` files of this test's namespaces,
/// also when the test fails.
struct EtcNetns(Vec<String>);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
    }
}

fn dig(t: &Topo, c: &str, args: &[&str]) -> String {
    let mut a = vec!["dig", "+time=2", "+tries=1"];
    a.extend_from_slice(args);
    String::from_utf8_lossy(&t.exec(c, &a).stdout).to_string()
}

fn short(t: &Topo, c: &str, args: &[&str]) -> String {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    dig(t, c, &a).trim().to_string()
}

fn dns_stats(t: &Topo) -> serde_json::Value {
    t.json(&["stats", "--json"])["dns"].clone()
}

#[test]
fn containers_find_each_other_by_name() {
    let mut t = Topo::new("dn");
    let up = t.add_ext(&format!("{HOST_IP}/24"), &format!("{EXT_IP}/24"));
    let names = ["host", "c1", "c2", "c3", "c4"].map(|c| t.ns(c));
    let _etc = EtcNetns(names.to_vec());
    // The switch's upstream: dnsmasq outside, which knows external.test.
    let hostdir = format!("/etc/netns/{}", t.ns("host"));
    std::fs::create_dir_all(&hostdir).unwrap();
    std::fs::write(
        format!("{hostdir}/resolv.conf"),
        format!("nameserver {EXT_IP}\n"),
    )
    .unwrap();
    let dnsmasq_log = t.state_dir().with_file_name("dnsmasq.log");
    t.dnsmasq(
        "ext",
        EXT_IP,
        &[
            &format!("--address=/external.test/{EXTERNAL}"),
            "--local-ttl=60",
        ],
        Some(&dnsmasq_log),
    );
    // A second upstream, for the network that names its own (--dns).
    ok(&t.exec(
        "ext",
        &[
            "ip",
            "addr",
            "add",
            &format!("{EXT_DNS2}/24"),
            "dev",
            &format!("{}x", t.prefix),
        ],
    ));
    t.dnsmasq(
        "ext",
        EXT_DNS2,
        &[
            &format!("--address=/external.test/{EXTERNAL2}"),
            "--local-ttl=60",
        ],
        None,
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    t.start_switch(&format!("{ADAPTIVE}[uplink]\niface = \"{up}\"\n"));
    t.vs_ok(&["network", "create", "a", "--subnet", "10.81.0.0/24"]);
    t.vs_ok(&[
        "network",
        "create",
        "b",
        "--subnet",
        "10.82.0.0/24",
        "--dns",
        EXT_DNS2,
    ]);
    t.vs_ok(&[
        "network",
        "create",
        "priv",
        "--subnet",
        "10.83.0.0/24",
        "--internal",
    ]);
    for c in ["c1", "c2", "c3", "c4"] {
        t.add_ns(c);
    }
    let attach = |net: &str, c: &str, ifname: &str, ip: &str, names: &[&str]| {
        let ns = t.ns(c);
        let mut a = vec![
            "attach", net, "--netns", &ns, "--ifname", ifname, "--kind", "tap", "--ip", ip,
        ];
        for (i, n) in names.iter().enumerate() {
            a.push(if i == 0 { "--name" } else { "--alias" });
            a.push(n);
        }
        t.vs_ok(&a);
    };
    attach("a", "c1", "eth0", "10.81.0.11/24", &["web", "www"]);
    attach("a", "c2", "eth0", "10.81.0.12/24", &["client"]);
    attach("b", "c2", "eth1", "10.82.0.12/24", &["client"]);
    attach("b", "c3", "eth0", "10.82.0.13/24", &["db"]);
    attach("priv", "c4", "eth0", "10.83.0.14/24", &["vault"]);
    // A name refused with what to fix; nothing attached.
    let bad = t.vs(&[
        "attach",
        "a",
        "--netns",
        &t.ns("c3"),
        "--ifname",
        "eth9",
        "--name",
        "no good",
    ]);
    assert!(
        !bad.status.success()
            && String::from_utf8_lossy(&bad.stderr).contains("letters, digits, hyphens"),
        "{bad:?}"
    );

    // `attach` pointed each container's resolver at its gateway.
    let rc = std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", t.ns("c1"))).unwrap();
    assert!(rc.contains("nameserver 10.81.0.1"), "{rc}");

    // Names and aliases on the same network, through glibc, dig, busybox.
    assert_eq!(
        t.getent("c2", "web").as_deref(),
        Some("10.81.0.11"),
        "{}",
        t.log()
    );
    assert_eq!(t.getent("c2", "WWW").as_deref(), Some("10.81.0.11"));
    assert_eq!(short(&t, "c2", &["@10.81.0.1", "web"]), "10.81.0.11");
    let o = ok(&t.exec("c2", &["busybox", "nslookup", "www", "10.81.0.1"]));
    assert!(o.contains("10.81.0.11"), "busybox nslookup: {o}");
    // Over TCP, and PTR for an address.
    assert_eq!(
        short(&t, "c2", &["+tcp", "@10.81.0.1", "web"]),
        "10.81.0.11"
    );
    assert_eq!(short(&t, "c2", &["@10.81.0.1", "-x", "10.81.0.11"]), "web.");
    // A container on two networks sees both; the others only their own.
    assert_eq!(t.getent("c2", "db").as_deref(), Some("10.82.0.13"));
    assert_eq!(t.getent("c1", "db"), None, "b's name leaked into a");
    assert_eq!(t.getent("c3", "web"), None, "a's name leaked into b");
    assert_eq!(t.getent("c3", "client").as_deref(), Some("10.82.0.12"));

    // Other names come from upstream, and the second time from the cache.
    assert_eq!(t.getent("c1", "external.test").as_deref(), Some(EXTERNAL));
    assert_eq!(short(&t, "c2", &["@10.81.0.1", "external.test"]), EXTERNAL);
    // Network b asks its own resolver (--dns).
    assert_eq!(short(&t, "c3", &["@10.82.0.1", "external.test"]), EXTERNAL2);
    let s = dns_stats(&t);
    assert!(s["forwarded"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["cache_hits"].as_u64().unwrap() >= 1, "{s}");
    // An --internal network resolves its own names and forwards nothing.
    assert_eq!(t.getent("c4", "vault").as_deref(), Some("10.83.0.14"));
    let refused = dig(&t, "c4", &["@10.83.0.1", "internal-only.external.test"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
    let upstream_saw = std::fs::read_to_string(&dnsmasq_log).unwrap_or_default();
    assert!(
        upstream_saw.contains("query[A] external.test") && !upstream_saw.contains("internal-only"),
        "dnsmasq's log: {upstream_saw}"
    );

    // Detach withdraws the name at once, and the resolv.conf with it.
    t.vs_ok(&["detach", "a", "--netns", &t.ns("c1")]);
    let gone = dig(&t, "c2", &["@10.81.0.1", "web"]);
    assert!(
        gone.contains("status: ") && !gone.contains("10.81.0.11"),
        "an answer, without the detached container: {gone}"
    );
    assert!(!std::path::Path::new(&format!("/etc/netns/{}/resolv.conf", t.ns("c1"))).exists());

    // Not an open resolver: the host's path from outside reaches the
    // gateway address (it answers ping), the resolver does not answer.
    ok(&t.exec(
        "ext",
        &["ip", "route", "add", "10.81.0.0/24", "via", HOST_IP],
    ));
    assert!(
        t.ping("ext", "10.81.0.1", 2),
        "the gateway is reachable from outside"
    );
    let before = dns_stats(&t)["refused_source"].as_u64().unwrap();
    let outside = dig(&t, "ext", &["@10.81.0.1", "web"]);
    assert!(
        outside.contains("timed out") || outside.contains("no servers"),
        "{outside}"
    );
    assert!(dns_stats(&t)["refused_source"].as_u64().unwrap() > before);

    // Hostile queries: a name whose compression pointer points at itself
    // gets FORMERR; a runt is dropped; both are counted; the resolver goes on.
    let hostile = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
loop = bytes([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1])
s.sendto(loop, ("10.81.0.1", 53))
r = s.recv(512)
print("rcode", r[3] & 15, "id", r[0] * 256 + r[1])
s.sendto(b"\x01\x02", ("10.81.0.1", 53))
"#;
    let o = ok(&t.exec("c2", &["python3", "-c", hostile]));
    assert!(
        o.contains("rcode 1 id 4660"),
        "FORMERR with the query's id: {o}"
    );
    assert_eq!(short(&t, "c2", &["@10.81.0.1", "client"]), "10.81.0.12");
    assert!(
        dns_stats(&t)["malformed"].as_u64().unwrap() >= 2,
        "{}",
        dns_stats(&t)
    );

    // A flood from one source is cut to its rate (counted); the others are
    // still answered, and so is the flooder once it slows down.
    let flood = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
q = bytes([0x12, 0x35, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 6]) + b"client" + bytes([0, 0, 1, 0, 1])
import time
# 60,000 queries over ~1.5 s: past the burst and the rate however fast the
# resolver answers (a socket buffer that overflows loses some, not all).
for _ in range(60):
    for _ in range(1000):
        s.sendto(q, ("10.81.0.1", 53))
    time.sleep(0.02)
"#;
    ok(&t.exec("c2", &["python3", "-c", flood]));
    assert!(
        dns_stats(&t)["rate_limited"].as_u64().unwrap() > 0,
        "{}",
        dns_stats(&t)
    );
    assert_eq!(short(&t, "c3", &["@10.82.0.1", "db"]), "10.82.0.13");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(short(&t, "c2", &["@10.81.0.1", "client"]), "10.81.0.12");

    // TCP clients are bounded per source ([dns] tcp_per_source, 16): the
    // 17th to 20th connections are closed unanswered (counted) while the
    // first 16 are answered, and another container is still answered.
    let many = r#"
import socket, struct, time
q = bytes([0x12, 0x36, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 6]) + b"client" + bytes([0, 0, 1, 0, 1])
held = [socket.create_connection(("10.81.0.1", 53), timeout=2) for _ in range(20)]
time.sleep(0.3)
answered = 0
for s in held:
    try:
        s.sendall(struct.pack("!H", len(q)) + q)
        answered += len(s.recv(2)) == 2
    except OSError:
        pass
print(answered)
"#;
    let before = dns_stats(&t)["tcp_refused"].as_u64().unwrap();
    assert_eq!(ok(&t.exec("c2", &["python3", "-c", many])).trim(), "16");
    assert_eq!(dns_stats(&t)["tcp_refused"].as_u64().unwrap() - before, 4);
    assert_eq!(short(&t, "c3", &["+tcp", "@10.82.0.1", "db"]), "10.82.0.13");
    assert_eq!(
        short(&t, "c2", &["+tcp", "@10.81.0.1", "client"]),
        "10.81.0.12"
    );
}
