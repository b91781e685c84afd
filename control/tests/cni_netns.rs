//! vswitch as a CNI plugin, driven as a runtime drives it: the `vswitch`
//! binary run with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS` (a path:
//! `/run/netns/NAME` as podman passes it, `/proc/PID/ns/net` as others do),
//! `CNI_IFNAME`, `CNI_ARGS`, and the network configuration on stdin. Real
//! namespaces, ping, an HTTP server behind a port mapping reached from an
//! external namespace. Needs root.
mod common;
use common::{ok, Topo};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const HOST_IP: &str = "192.168.92.1";
const EXT_IP: &str = "192.168.92.2";

/// Runs the plugin; returns (exit status success, stdout as JSON or null).
fn cni(cmd: &str, conf: &Value, env: &[(&str, &str)]) -> (bool, Value) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vswitch"))
        .env("CNI_COMMAND", cmd)
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    c.stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let o = common::output_within(c, Duration::from_secs(120), "the CNI plugin");
    let out = String::from_utf8_lossy(&o.stdout);
    let v = if out.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("plugin output {out:?}: {e}"))
    };
    (o.status.success(), v)
}

fn env<'a>(id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
    ]
}

#[test]
fn a_runtime_puts_containers_on_vswitch_through_the_cni_plugin() {
    let mut t = Topo::new("cn");
    let up = t.add_ext(&format!("{HOST_IP}/24"), &format!("{EXT_IP}/24"));
    t.start_switch(&format!(
        "[[workers]]\nidle = {{ mode = \"adaptive\", idle_after_us = 500, max_sleep_ms = 20 }}\n[uplink]\niface = \"{up}\"\n"
    ));
    let sock = t.sock.to_str().unwrap().to_string();
    let sock = sock.as_str();
    let c1 = t.add_ns("c1");
    let c2 = t.add_ns("c2");
    let c1_path = format!("/run/netns/{c1}");

    // VERSION, as runtimes call it first.
    let (okv, v) = cni("VERSION", &json!({ "cniVersion": "1.0.0" }), &[]);
    assert!(okv, "{v}");
    for ver in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(
            v["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&json!(ver)),
            "{v}"
        );
    }

    // ADD: the network is made on first use; IP= from CNI_ARGS; a port
    // mapping whose host port a runtime already holds (as conmon does).
    let conf = json!({
        "cniVersion": "1.0.0", "name": "cninet", "type": "vswitch", "socket": sock,
        "subnet": "10.81.0.0/24",
        "runtimeConfig": {
            "portMappings": [{ "hostPort": 18081, "containerPort": 8080, "protocol": "tcp" }],
            "aliases": { "cninet": ["web", "www"] }
        }
    });
    t.bg(
        "host",
        &["python3", "-c", "import socket,time; s=socket.socket(); s.bind(('0.0.0.0',18081)); s.listen(); time.sleep(120)"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut e1 = env("ctr1", &c1_path);
    e1.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.81.0.50"));
    let (oka, r) = cni("ADD", &conf, &e1);
    assert!(oka, "ADD: {r}\n{}", t.log());
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][0]["sandbox"], c1_path.as_str());
    assert_eq!(r["interfaces"][0]["mac"], t.mac_of("c1", "eth0").as_str());
    assert_eq!(r["ips"][0]["address"], "10.81.0.50/24");
    assert_eq!(r["ips"][0]["gateway"], "10.81.0.1");
    assert!(
        r["ips"][0].get("version").is_none(),
        "1.0.0 results have no version"
    );
    assert_eq!(
        r["routes"][0],
        json!({ "dst": "0.0.0.0/0", "gw": "10.81.0.1" })
    );
    let a = ok(&t.exec("c1", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]));
    assert!(a.contains("10.81.0.50/24"), "{a}");

    // A second container by /proc/PID/ns/net, veth, CNI 0.4.0.
    let log = t.tmp("sleep.log");
    let holder = t.bg_log("c2", &["sleep", "120"], &log);
    let c2_path = format!("/proc/{holder}/ns/net");
    let conf2 = json!({
        "cniVersion": "0.4.0", "name": "cninet", "type": "vswitch", "socket": sock, "kind": "veth"
    });
    let mut e2 = env("ctr2", &c2_path);
    e2.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=db"));
    let (okb, r2) = cni("ADD", &conf2, &e2);
    assert!(okb, "ADD by /proc path: {r2}");
    assert_eq!(
        r2["ips"][0]["version"], "4",
        "0.4.0 results carry the IP version"
    );
    let c2_ip = r2["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(t.ping("c1", &c2_ip, 2), "c1 -> c2");
    assert!(t.ping("c2", "10.81.0.50", 2), "c2 -> c1");

    // The port mapping: from outside, to a server in c1, through the
    // switch's DNAT while another process holds the host port.
    let www = t.tmp("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from c1").unwrap();
    t.bg(
        "c1",
        &[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
            www.to_str().unwrap(),
        ],
    );
    let mut body = String::new();
    for _ in 0..50 {
        let o = t.exec(
            "ext",
            &["curl", "-s", "-m", "2", &format!("http://{HOST_IP}:18081/")],
        );
        body = String::from_utf8_lossy(&o.stdout).into_owned();
        if body.contains("hello") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(body, "hello from c1", "the mapped port from outside");
    let inspect = t.json(&["network", "inspect", "cninet"]);
    let c1_info = inspect["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ip"] == "10.81.0.50")
        .cloned()
        .unwrap();
    assert_eq!(c1_info["aliases"], json!(["web", "www"]), "{inspect}");
    let c2_info = inspect["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ip"] == c2_ip.as_str())
        .cloned()
        .unwrap();
    assert_eq!(c2_info["aliases"], json!(["db"]), "the pod name: {inspect}");
    assert_eq!(inspect["published"][0]["host_port"], 18081);

    // CHECK: present, and an unknown container.
    assert!(cni("CHECK", &conf, &e1).0);
    let (okc, err) = cni("CHECK", &conf, &env("nobody", "/run/netns/nobody"));
    assert!(!okc && err["code"] == 3, "{err}");

    // DEL removes the interface and the mapping; again, it still succeeds.
    assert!(cni("DEL", &conf, &e1).0);
    assert!(!t
        .exec("c1", &["ip", "link", "show", "eth0"])
        .status
        .success());
    let inspect = t.json(&["network", "inspect", "cninet"]);
    assert_eq!(inspect["published"], json!([]), "{inspect}");
    assert!(cni("DEL", &conf, &e1).0, "DEL is idempotent");
    // The container's namespace gone first (its process exited): DEL works.
    t.stop_child(holder, nix::sys::signal::Signal::SIGKILL);
    let _ = std::fs::remove_file(&log);
    ok(&common::sh("ip", &["netns", "del", &c2]));
    assert!(
        cni("DEL", &conf2, &env("ctr2", &c2_path)).0,
        "DEL after the namespace is gone"
    );

    // GC (1.1): what the runtime no longer lists is detached.
    let c3 = t.add_ns("c3");
    let conf3 =
        json!({ "cniVersion": "1.1.0", "name": "cninet", "type": "vswitch", "socket": sock });
    assert!(cni("ADD", &conf3, &env("ctr3", &format!("/run/netns/{c3}"))).0);
    let mut gc = conf3.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "ctr3", "ifname": "eth0" }]);
    assert!(cni("GC", &gc, &[]).0);
    assert!(
        t.exec("c3", &["ip", "link", "show", "eth0"])
            .status
            .success(),
        "a valid attachment stays"
    );
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(cni("GC", &gc, &[]).0);
    assert!(
        !t.exec("c3", &["ip", "link", "show", "eth0"])
            .status
            .success(),
        "GC detached it"
    );
    assert!(cni("STATUS", &conf3, &[]).0);

    // Errors are CNI error objects with a non-zero exit.
    let nonet =
        json!({ "cniVersion": "1.0.0", "name": "nonet", "type": "vswitch", "socket": sock });
    let (okn, e) = cni("ADD", &nonet, &env("ctr4", &format!("/run/netns/{c3}")));
    assert!(
        !okn && e["code"] == 7 && e["msg"].as_str().unwrap().contains("nonet"),
        "{e}"
    );
    let away = json!({ "cniVersion": "1.0.0", "name": "cninet", "type": "vswitch", "socket": "/nonexistent.sock" });
    let (oka2, e) = cni("ADD", &away, &env("ctr4", &format!("/run/netns/{c3}")));
    assert!(!oka2 && e["code"] == 11, "{e}");
    let (oks, e) = cni("STATUS", &away, &[]);
    assert!(!oks && e["code"] == 50, "{e}");
    let old = json!({ "cniVersion": "9.9.9", "name": "cninet", "type": "vswitch", "socket": sock });
    let (okv2, e) = cni("ADD", &old, &env("ctr4", &format!("/run/netns/{c3}")));
    assert!(!okv2 && e["code"] == 1, "{e}");
    let (okp, e) = cni("ADD", &conf, &env("ctr5", "/etc/hostname"));
    assert!(
        !okp && e["msg"]
            .as_str()
            .unwrap()
            .contains("not a network namespace"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&www);
}

/// Podman (CNI backend) runs real containers on vswitch: `podman run
/// --network vsnet -p HOST:CONTAINER` gives the container an address from
/// the switch, the published port answers from outside, another container
/// reaches it (by its address, and by its name through the switch's
/// resolver), and `podman rm` takes it all away. Podman runs in the
/// switch's namespace (`nsenter --net`), with its own storage and config
/// under a temporary directory; the image is busybox-static imported from a
/// tar (no registry).
#[test]
fn podman_runs_containers_on_vswitch() {
    if common::sh("sh", &["-c", "command -v podman"])
        .stdout
        .is_empty()
    {
        panic!("podman is not installed (scripts/install-deps.sh installs it)");
    }
    let mut t = Topo::new("pm");
    let up = t.add_ext("192.168.93.1/24", "192.168.93.2/24");
    t.start_switch(&format!(
        "[[workers]]\nidle = {{ mode = \"adaptive\", idle_after_us = 500, max_sleep_ms = 20 }}\n[uplink]\niface = \"{up}\"\n"
    ));
    let dir = t.tmp("podman");
    let _cleanup = Podman(dir.clone());
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["cni", "net.d"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let rootfs = common::busybox_rootfs(&dir, "hello from podman");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vswitch"), dir.join("cni/vswitch")).unwrap();
    let d = dir.to_str().unwrap();
    std::fs::write(
        dir.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{d}/cni\"]\nnetwork_config_dir = \"{d}/net.d\"\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("net.d/vsnet.conflist"),
        json!({
            "cniVersion": "1.0.0", "name": "vsnet",
            "plugins": [{
                "type": "vswitch", "socket": t.sock, "subnet": "10.82.0.0/24",
                "capabilities": { "portMappings": true, "aliases": true }
            }]
        })
        .to_string(),
    )
    .unwrap();
    let host_ns = format!("--net=/run/netns/{}", t.ns("host"));
    let podman = |args: &[&str]| -> std::process::Output {
        let mut a = vec![
            host_ns.as_str(),
            "podman",
            "--root",
            &format!("{d}/root"),
            "--runroot",
            &format!("{d}/run"),
            "--tmpdir",
            &format!("{d}/tmp"),
            "--storage-driver",
            "vfs",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        a.extend(args.iter().map(|s| s.to_string()));
        Command::new("nsenter")
            .args(&a)
            .env("CONTAINERS_CONF", dir.join("containers.conf"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let run = |args: &[&str]| -> String {
        let o = podman(args);
        assert!(
            o.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    run(&[
        "import",
        "--change",
        "CMD [\"/bin/sh\"]",
        rootfs.to_str().unwrap(),
        "localhost/vsbox",
    ]);
    run(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "vsnet",
        "-p",
        "18082:8080",
        "localhost/vsbox",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    let ip = run(&[
        "inspect",
        "web",
        "--format",
        "{{.NetworkSettings.Networks.vsnet.IPAddress}}",
    ]);
    assert_eq!(ip, "10.82.0.2", "the address the switch gave");
    let ports = t.json(&["port", "ls", "--json"]);
    assert!(
        ports.to_string().contains("/run/netns/netns-"),
        "the container's interface is a vswitch port: {ports}"
    );
    let mut body = String::new();
    for _ in 0..50 {
        let o = t.exec(
            "ext",
            &["curl", "-s", "-m", "2", "http://192.168.93.1:18082/"],
        );
        body = String::from_utf8_lossy(&o.stdout).into_owned();
        if !body.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        body.trim(),
        "hello from podman",
        "the published port from outside"
    );
    let ping = run(&[
        "run",
        "--rm",
        "--network",
        "vsnet",
        "--cap-add",
        "NET_RAW",
        "localhost/vsbox",
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        &ip,
    ]);
    assert!(ping.contains("2 packets received"), "{ping}");
    // From the host itself, whose port 18082 conmon holds.
    assert_eq!(
        t.curl("host", "http://192.168.93.1:18082/"),
        "hello from podman",
        "the published port from the host"
    );
    // Out through the switch's SNAT to a server outside.
    t.serve_http("ext", "192.168.93.2:8099", "hello from outside");
    let out = run(&[
        "run",
        "--rm",
        "--network",
        "vsnet",
        "localhost/vsbox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://192.168.93.2:8099/",
    ]);
    assert_eq!(out, "hello from outside", "egress through SNAT");
    // By name: the switch answers the network's names on the gateway, which
    // the CNI result names as the containers' nameserver.
    let by_name = run(&[
        "run",
        "--rm",
        "--network",
        "vsnet",
        "localhost/vsbox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://web:8080/",
    ]);
    assert_eq!(
        by_name, "hello from podman",
        "another container finds web by its name"
    );
    // `podman network reload` runs DEL and ADD again: the same address and
    // MAC (podman passes them back as IP= and MAC=), reachable from the
    // host and from other containers. Podman 4.3's second ADD carries no
    // runtimeConfig, so the port mapping its DEL withdrew is not made
    // again (docs/RUNTIMES.md).
    run(&["network", "reload", "web"]);
    assert_eq!(
        run(&[
            "inspect",
            "web",
            "--format",
            "{{.NetworkSettings.Networks.vsnet.IPAddress}}"
        ]),
        ip
    );
    assert_eq!(
        t.curl("host", &format!("http://{ip}:8080/")),
        "hello from podman",
        "reachable after a network reload"
    );
    // Twenty containers started at once get twenty addresses.
    let ips: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..20)
            .map(|i| {
                let run = &run;
                s.spawn(move || {
                    let name = format!("c{i}");
                    run(&[
                        "run",
                        "-d",
                        "--name",
                        &name,
                        "--network",
                        "vsnet",
                        "localhost/vsbox",
                        "sleep",
                        "300",
                    ]);
                    run(&[
                        "inspect",
                        &name,
                        "--format",
                        "{{.NetworkSettings.Networks.vsnet.IPAddress}}",
                    ])
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 20, "{ips:?}");
    let names: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    let mut rm = vec!["rm", "-f", "-t", "0"];
    rm.extend(names.iter().map(String::as_str));
    run(&rm);
    // With the switch stopped, podman says why a container cannot start.
    t.stop_switch();
    let o = podman(&[
        "run",
        "--rm",
        "--network",
        "vsnet",
        "localhost/vsbox",
        "true",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a container started without the switch"
    );
    assert!(e.contains("vswitch is not running"), "{e}");
    t.start_switch(&format!(
        "[[workers]]\nidle = {{ mode = \"adaptive\", idle_after_us = 500, max_sleep_ms = 20 }}\n[uplink]\niface = \"{up}\"\n"
    ));
    run(&["rm", "-f", "web"]);
    let ports = t.json(&["port", "ls", "--json"]);
    assert!(
        !ports.to_string().contains("/run/netns/netns-"),
        "podman rm detached it: {ports}"
    );
    let inspect = t.json(&["network", "inspect", "vsnet"]);
    assert_eq!(
        inspect["published"],
        json!([]),
        "and withdrew its port: {inspect}"
    );
}

/// Removes podman's containers and storage, also when the test fails.
struct Podman(std::path::PathBuf);
impl Drop for Podman {
    fn drop(&mut self) {
        let d = self.0.to_str().unwrap_or_default();
        let _ = Command::new("podman")
            .args([
                "--root",
                &format!("{d}/root"),
                "--runroot",
                &format!("{d}/run"),
            ])
            .args([
                "--tmpdir",
                &format!("{d}/tmp"),
                "--storage-driver",
                "vfs",
                "rm",
                "-a",
                "-f",
            ])
            .env("CONTAINERS_CONF", self.0.join("containers.conf"))
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
