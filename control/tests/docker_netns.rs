//! vswitch as Docker's network driver, driven by a real dockerd (Debian's
//! docker.io) that runs in the test's host namespace with a private socket,
//! data and exec root, and finds the switch's plugin socket in
//! /run/docker/plugins under a name of this test's own. Needs root.
mod common;
use common::{ok, Topo};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const HOST_IP: &str = "192.168.94.1";
const EXT_IP: &str = "192.168.94.2";
/// The client that matches Debian's daemon (a newer one may be on PATH).
const DOCKER: &str = "/usr/bin/docker";

/// A dockerd of the test's own; stopped, and its files removed, on drop.
struct Dockerd {
    child: Child,
    dir: PathBuf,
    host: String,
}

impl Dockerd {
    fn start(t: &Topo, dir: &Path) -> Self {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let d = dir.to_str().unwrap();
        let host = format!("unix://{d}/docker.sock");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", t.ns("host")))
            .args(["dockerd", "-H", &host])
            .args(["--data-root", &format!("{d}/data")])
            .args(["--exec-root", &format!("{d}/exec")])
            .args(["--pidfile", &format!("{d}/docker.pid")])
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd (scripts/install-deps.sh installs docker.io)");
        let mut d = Dockerd {
            child,
            dir: dir.to_path_buf(),
            host,
        };
        let t0 = Instant::now();
        while !d.docker(&["info"]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "dockerd did not answer:\n{}",
                d.log()
            );
            assert!(
                matches!(d.child.try_wait(), Ok(None)),
                "dockerd exited:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("docker client")
    }

    /// Runs `docker args`, which must succeed; its output.
    fn run(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}\ndockerd log (tail):\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// The page at `url`, fetched by a container of network `net`.
    fn fetch(&self, net: &str, url: &str) -> String {
        self.run(&[
            "run",
            "--rm",
            "--network",
            net,
            "vsbox",
            "wget",
            "-q",
            "-O",
            "-",
            url,
        ])
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let l = self.log();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn ip_of(&self, container: &str, network: &str) -> String {
        self.run(&[
            "inspect",
            container,
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        ])
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = self.docker(&["network", "prune", "-f"]);
        // dockerd stops its containerd and unmounts its sandboxes on SIGTERM.
        common::end_child(
            &mut self.child,
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_secs(20),
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the switch has for Docker endpoint ports (owner = endpoint id).
fn endpoints(t: &Topo) -> Vec<Value> {
    t.json(&["port", "ls", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["handoff"].is_string())
        .cloned()
        .collect()
}

#[test]
fn docker_runs_containers_on_vswitch_through_its_network_driver() {
    if common::sh("sh", &["-c", "command -v dockerd"])
        .stdout
        .is_empty()
    {
        panic!("dockerd is not installed (scripts/install-deps.sh installs docker.io)");
    }
    let mut t = Topo::new("dk");
    t.host_mounts = true;
    let up = t.add_ext(&format!("{HOST_IP}/24"), &format!("{EXT_IP}/24"));
    let driver = t.prefix.clone();
    let plugin = format!("/run/docker/plugins/{driver}.sock");
    let config = format!(
        "[[workers]]\nidle = {{ mode = \"adaptive\", idle_after_us = 500, max_sleep_ms = 20 }}\n[uplink]\niface = \"{up}\"\n"
    );
    let args = ["--docker-plugin", "--docker-plugin-socket", plugin.as_str()];
    t.start_switch_args(&config, &args);
    let dir = t.tmp("docker");
    let dockerd = Dockerd::start(&t, &dir);
    let rootfs = common::busybox_rootfs(&dir, "hello from docker");
    dockerd.run(&[
        "import",
        "--change",
        "CMD [\"/bin/sh\"]",
        rootfs.to_str().unwrap(),
        "vsbox",
    ]);

    // A network: Docker's pool, gateway and MTU become the switch's.
    let nid = dockerd.run(&[
        "network",
        "create",
        "-d",
        &driver,
        "--subnet",
        "10.84.0.0/24",
        "--gateway",
        "10.84.0.1",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "n1",
    ]);
    let nets = t.json(&["network", "ls", "--json"]);
    let n1 = nets
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["owner"] == nid.as_str())
        .unwrap_or_else(|| panic!("no switch network owned by {nid}: {nets}"))
        .clone();
    assert_eq!(n1["subnet"], "10.84.0.0/24", "{n1}");
    assert_eq!(n1["mtu"], 1400, "{n1}");
    let n1_name = n1["name"].as_str().unwrap().to_string();

    // A web server published on the host's port 18084.
    dockerd.run(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "n1",
        "-p",
        "18084:8080",
        "vsbox",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    let web_ip = dockerd.ip_of("web", "n1");
    assert_eq!(web_ip, "10.84.0.2", "Docker's IPAM gave the address");
    let eps = endpoints(&t);
    assert_eq!(eps.len(), 1, "one endpoint port on the switch: {eps:?}");
    assert!(
        eps[0]["attached"]
            .as_str()
            .unwrap()
            .contains(&format!("{}/exec/netns/", dir.display())),
        "recorded in Docker's sandbox: {eps:?}"
    );
    let mtu = dockerd.run(&["exec", "web", "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu, "1400", "the network's MTU inside the container");
    assert_eq!(
        t.curl("ext", &format!("http://{HOST_IP}:18084/")),
        "hello from docker",
        "the published port from outside, through the uplink"
    );
    assert_eq!(
        t.curl("host", &format!("http://{HOST_IP}:18084/")),
        "hello from docker",
        "the published port from the host itself"
    );

    // Docker's own resolver (127.0.0.11 in each container of a
    // user-defined network) finds a container of this driver's network by
    // its name, as on Docker's bridge.
    let by_name = dockerd.fetch("n1", "http://web:8080/");
    assert_eq!(by_name, "hello from docker", "a container by its name");

    // An address asked for with --ip.
    dockerd.run(&[
        "run",
        "-d",
        "--name",
        "fixed",
        "--network",
        "n1",
        "--ip",
        "10.84.0.50",
        "vsbox",
        "sleep",
        "300",
    ]);
    assert_eq!(dockerd.ip_of("fixed", "n1"), "10.84.0.50");
    let inspect = t.json(&["network", "inspect", &n1_name]);
    assert!(
        inspect["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["ip"] == "10.84.0.50"),
        "{inspect}"
    );
    dockerd.run(&["rm", "-f", "fixed"]);

    // An internal network: no way out, no default route.
    dockerd.run(&[
        "network",
        "create",
        "-d",
        &driver,
        "--internal",
        "--subnet",
        "10.86.0.0/24",
        "n3",
    ]);
    let routes = dockerd.run(&["run", "--rm", "--network", "n3", "vsbox", "ip", "route"]);
    assert!(
        routes.contains("10.86.0.0/24") && !routes.contains("default"),
        "{routes}"
    );
    dockerd.run(&["network", "rm", "n3"]);

    // Container to container, and out through SNAT to an external server.
    let ping = dockerd.run(&[
        "run",
        "--rm",
        "--network",
        "n1",
        "vsbox",
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        &web_ip,
    ]);
    assert!(ping.contains("2 packets received"), "{ping}");
    t.serve_http("ext", &format!("{EXT_IP}:8099"), "hello from outside");
    let out = dockerd.fetch("n1", &format!("http://{EXT_IP}:8099/"));
    assert_eq!(
        out, "hello from outside",
        "egress through the switch's SNAT"
    );

    // A second network, of veth interfaces, connected to the running
    // container and back.
    dockerd.run(&[
        "network",
        "create",
        "-d",
        &driver,
        "--subnet",
        "10.85.0.0/24",
        "-o",
        "vswitch.kind=veth",
        "n2",
    ]);
    dockerd.run(&["network", "connect", "n2", "web"]);
    let web_ip2 = dockerd.ip_of("web", "n2");
    assert_eq!(web_ip2, "10.85.0.2");
    let page = dockerd.fetch("n2", &format!("http://{web_ip2}:8080/"));
    assert_eq!(page, "hello from docker", "TCP between veth endpoints");
    let eps = endpoints(&t);
    assert_eq!(eps.len(), 2, "web is on both networks: {eps:?}");
    assert!(
        eps.iter().any(|p| p["kind"] == "packet") && eps.iter().any(|p| p["kind"] == "tap"),
        "one TAP, one veth: {eps:?}"
    );
    dockerd.run(&["network", "disconnect", "n2", "web"]);
    assert_eq!(endpoints(&t).len(), 1, "disconnect detached it");

    // The switch crashes and comes back: the container keeps its interface
    // and its published port.
    t.kill_switch();
    t.start_switch_args(&config, &args);
    assert_eq!(endpoints(&t).len(), 1, "the endpoint taken over");
    assert_eq!(
        t.curl("ext", &format!("http://{HOST_IP}:18084/")),
        "hello from docker",
        "the published port after a restart"
    );

    // With the switch stopped, Docker says why a container cannot start.
    t.stop_switch();
    let o = dockerd.docker(&["run", "--rm", "--network", "n1", "vsbox", "true"]);
    assert!(
        !o.status.success(),
        "a container started without the switch"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("docker run with the switch stopped: {err}");
    assert!(err.contains(&driver), "the error names the driver: {err}");
    t.start_switch_args(&config, &args);

    // Twenty containers at once: twenty addresses, twenty ports.
    let started: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..20)
            .map(|i| {
                let d = &dockerd;
                s.spawn(move || {
                    d.run(&[
                        "run",
                        "-d",
                        "--name",
                        &format!("c{i}"),
                        "--network",
                        "n1",
                        "vsbox",
                        "sleep",
                        "300",
                    ])
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(started.len(), 20);
    let mut ips: Vec<String> = (0..20)
        .map(|i| dockerd.ip_of(&format!("c{i}"), "n1"))
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20, "distinct addresses: {ips:?}");
    let inspect = t.json(&["network", "inspect", &n1_name]);
    assert_eq!(
        inspect["containers"].as_array().unwrap().len(),
        21,
        "the switch knows all of them: {inspect}"
    );
    let names: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    dockerd.run(&rm);

    // Removing the container removes its port, its address, its published
    // port and its interface.
    let handoff = endpoints(&t)[0]["handoff"].as_str().unwrap().to_string();
    dockerd.run(&["rm", "-f", "web"]);
    assert!(endpoints(&t).is_empty(), "no endpoint left");
    let inspect = t.json(&["network", "inspect", &n1_name]);
    assert_eq!(inspect["containers"], serde_json::json!([]), "{inspect}");
    assert_eq!(inspect["published"], serde_json::json!([]), "{inspect}");
    let links = ok(&t.exec("host", &["ip", "-o", "link"]));
    assert!(!links.contains(&handoff), "{handoff} is gone: {links}");

    dockerd.run(&["network", "rm", "n1", "n2"]);
    let nets = t.json(&["network", "ls", "--json"]);
    assert!(
        nets.as_array()
            .unwrap()
            .iter()
            .all(|n| n["owner"].is_null()),
        "docker network rm removed the switch's networks: {nets}"
    );
}
