//! A topology of network namespaces with a vswitch inside a "host" namespace.
//! Everything it makes is named with a per-test prefix and removed on drop,
//! also when the test fails (panics unwind through `Drop`).
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Real-namespace tests share two cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub struct Topo {
    pub prefix: String,
    namespaces: Vec<String>,
    switch: Option<Child>,
    children: Vec<Child>,
    pub sock: PathBuf,
    dir: PathBuf,
    /// Start the switch with `nsenter --net=` (the host's mount namespace,
    /// as a service runs) instead of `ip netns exec` (a mount namespace of
    /// its own, which misses mounts made later, such as Docker's sandboxes).
    pub host_mounts: bool,
    _serial: MutexGuard<'static, ()>,
}

pub fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (run scripts/install-deps.sh)"))
}

/// How long one command in a test may run. Everything a test runs ends in
/// seconds; one that does not (a client waiting on a stalled path, a tool's
/// own bug) fails its test with what the switch saw, instead of holding CI
/// until its time runs out.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Waits up to `limit` for child `c` to exit; kills it after that and
/// returns false.
pub fn wait_within(c: &mut Child, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if matches!(c.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
    false
}

/// `wait_with_output` for at most `limit`: a child still running then is
/// killed and fails the test, naming `what`.
pub fn output_within(c: Child, limit: Duration, what: &str) -> Output {
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(c.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => {
            let _ = waiter.join();
            o.unwrap_or_else(|e| panic!("{what}: {e}"))
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waiter.join();
            panic!("{what} did not finish within {limit:?}")
        }
    }
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Sends `sig` to child `c` (`ip netns exec` execs its command, so the PID
/// is the process itself) and waits up to `grace` for it to exit; kills it
/// after that. Returns whether it exited by itself.
pub fn end_child(c: &mut Child, sig: nix::sys::signal::Signal, grace: Duration) -> bool {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
    wait_within(c, grace)
}

impl Topo {
    /// `tag`: a short name of the test (prefix = "vt" + tag + pid).
    pub fn new(tag: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "namespace tests need root (CI runs as root; locally: sudo -E cargo test)"
        );
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = format!("vt{tag}{}", std::process::id() % 10000);
        let dir = std::env::temp_dir().join(format!("{prefix}-dir"));
        let _ = std::fs::create_dir_all(&dir);
        let mut t = Self {
            sock: dir.join("vswitch.sock"),
            prefix,
            namespaces: Vec::new(),
            switch: None,
            children: Vec::new(),
            dir,
            host_mounts: false,
            _serial: serial,
        };
        t.add_ns("host");
        t
    }

    /// A path in the test's own directory, removed with the topology.
    pub fn tmp(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts dnsmasq in namespace `name` as a real DNS server on `listen`
    /// only: no host files, no resolv.conf; `args` say what it answers.
    /// With `log`, its queries are logged there. Ended with the topology.
    pub fn dnsmasq(
        &mut self,
        name: &str,
        listen: &str,
        args: &[&str],
        log: Option<&std::path::Path>,
    ) {
        let listen = format!("--listen-address={listen}");
        let pid = format!(
            "--pid-file={}",
            self.tmp(&format!("dnsmasq-{listen}.pid")).display()
        );
        let mut a = vec![
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            listen.as_str(),
            pid.as_str(),
        ];
        a.extend_from_slice(args);
        match log {
            Some(log) => {
                a.extend(["--log-queries", "--log-facility=-"]);
                self.bg_log(name, &a, log);
            }
            None => self.bg(name, &a),
        }
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn add_ns(&mut self, name: &str) -> String {
        let ns = self.ns(name);
        let _ = sh("ip", &["netns", "del", &ns]);
        ok(&sh("ip", &["netns", "add", &ns]));
        self.namespaces.push(ns.clone());
        ok(&self.exec(name, &["ip", "link", "set", "lo", "up"]));
        // Quiet containers: no IPv6 chatter to confuse counters and aging.
        let _ = self.exec(name, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        let _ = self.exec(
            name,
            &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
        );
        ns
    }

    /// Runs `args` in namespace `name`, for at most [`COMMAND_LIMIT`].
    pub fn exec(&self, name: &str, args: &[&str]) -> Output {
        self.exec_within(name, args, COMMAND_LIMIT)
    }

    /// Runs `args` in namespace `name`; one still running after `limit` is
    /// killed and fails the test with what the switch and the namespace's
    /// sockets show.
    pub fn exec_within(&self, name: &str, args: &[&str], limit: Duration) -> Output {
        let ns = self.ns(name);
        let secs = limit.as_secs().max(1).to_string();
        let mut a = vec!["-k", "5", secs.as_str(), "ip", "netns", "exec", ns.as_str()];
        a.extend_from_slice(args);
        let t0 = Instant::now();
        let o = sh("timeout", &a);
        if t0.elapsed() >= limit && matches!(o.status.code(), Some(124) | Some(137)) {
            panic!(
                "{args:?} in {ns} did not finish within {secs} s\n{}",
                self.diagnose(name)
            );
        }
        o
    }

    /// What to look at when a command hangs: the sockets of namespace
    /// `name`, the switch's counters and the end of its log.
    pub fn diagnose(&self, name: &str) -> String {
        let out = |o: Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };
        let ns = self.ns(name);
        let sockets = out(sh(
            "timeout",
            &["5", "ip", "netns", "exec", &ns, "ss", "-tnio"],
        ));
        let stats = out(self.vs(&["--timeout", "5", "stats"]));
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "sockets in {ns}:\n{sockets}\nswitch stats:\n{stats}\nswitch log (end):\n{}",
            tail.join("\n")
        )
    }

    pub fn spawn_in(&self, name: &str, args: &[&str]) -> Child {
        let ns = self.ns(name);
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn in namespace")
    }

    /// Starts a long-running process (a server) in namespace `name`; it is
    /// killed when the topology is dropped.
    pub fn bg(&mut self, name: &str, args: &[&str]) {
        let ns = self.ns(name);
        let c = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in namespace");
        self.children.push(c);
    }

    /// Like `bg`, with stderr written to `log`; returns the PID (`ip netns
    /// exec` execs, so it is the process itself).
    pub fn bg_log(&mut self, name: &str, args: &[&str], log: &std::path::Path) -> u32 {
        let ns = self.ns(name);
        let f = std::fs::File::create(log).expect("log file");
        let c = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn in namespace");
        let pid = c.id();
        self.children.push(c);
        pid
    }

    /// Sends `sig` to a child started with `bg`/`bg_log`, waits for it and
    /// forgets it.
    pub fn stop_child(&mut self, pid: u32, sig: nix::sys::signal::Signal) {
        let Some(i) = self.children.iter().position(|c| c.id() == pid) else {
            return;
        };
        let mut c = self.children.remove(i);
        end_child(&mut c, sig, Duration::from_secs(5));
    }

    /// An "ext" namespace behind the host's uplink: a veth `<prefix>u` in
    /// "host" with `host_cidr`, `<prefix>x` in "ext" with `ext_cidr`.
    /// Returns the uplink's name.
    pub fn add_ext(&mut self, host_cidr: &str, ext_cidr: &str) -> String {
        self.add_ns("ext");
        let up = format!("{}u", self.prefix);
        let ex = format!("{}x", self.prefix);
        self.link("host", &up, host_cidr, "ext", &ex, ext_cidr);
        up
    }

    /// A veth pair between namespaces `a` and `b` with addresses (CIDR).
    pub fn link(&self, a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str) {
        ok(&sh(
            "ip",
            &[
                "link",
                "add",
                a_if,
                "netns",
                &self.ns(a),
                "type",
                "veth",
                "peer",
                "name",
                b_if,
                "netns",
                &self.ns(b),
            ],
        ));
        for (n, i, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
            ok(&self.exec(n, &["ip", "addr", "add", ip, "dev", i]));
            ok(&self.exec(n, &["ip", "link", "set", i, "up"]));
        }
    }

    /// A bridge `br0` in namespace `ul` (made here) and one veth per host
    /// (namespaces made already, "host" included) with its address (CIDR)
    /// on the host end; returns the host ends' names (`<prefix>u<i>`).
    pub fn underlay_bridge(&mut self, hosts: &[&str], addrs: &[String]) -> Vec<String> {
        self.add_ns("ul");
        ok(&self.exec("ul", &["ip", "link", "add", "br0", "type", "bridge"]));
        ok(&self.exec("ul", &["ip", "link", "set", "br0", "up"]));
        let mut ups = Vec::new();
        for (i, (h, a)) in hosts.iter().zip(addrs).enumerate() {
            let up = format!("{}u{i}", self.prefix);
            let br = format!("{}p{i}", self.prefix);
            ok(&sh(
                "ip",
                &[
                    "link",
                    "add",
                    &up,
                    "netns",
                    &self.ns(h),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &br,
                    "netns",
                    &self.ns("ul"),
                ],
            ));
            ok(&self.exec("ul", &["ip", "link", "set", &br, "master", "br0", "up"]));
            ok(&self.exec(h, &["ip", "addr", "add", a, "dev", &up]));
            ok(&self.exec(h, &["ip", "link", "set", &up, "up"]));
            ups.push(up);
        }
        ups
    }

    pub fn write_config(&self, text: &str) -> PathBuf {
        let p = self.dir.join("vswitch.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }

    /// Starts `vswitch run` in the host namespace and waits for its socket.
    pub fn start_switch(&mut self, config: &str) {
        self.start_switch_env(config, &[]);
    }

    /// Like `start_switch`, with extra variables in the switch's environment.
    pub fn start_switch_env(&mut self, config: &str, env: &[(&str, &str)]) {
        self.start_switch_with(config, env, &[]);
    }

    /// Like `start_switch`, with extra arguments to `vswitch run`.
    pub fn start_switch_args(&mut self, config: &str, args: &[&str]) {
        self.start_switch_with(config, &[], args);
    }

    /// Gives the switch that will run in namespace `name` no upstream
    /// resolver (a `resolv.conf` without nameservers, unless the test wrote
    /// its own): its networks then answer other names REFUSED at once
    /// instead of asking the machine's resolver, which no test may reach.
    pub fn no_upstream(&self, name: &str) {
        let dir = format!("/etc/netns/{}", self.ns(name));
        let file = format!("{dir}/resolv.conf");
        if !std::path::Path::new(&file).exists() {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(&file, "# a test's switch: no resolver outside the test\n");
        }
    }

    fn start_switch_with(&mut self, config: &str, env: &[(&str, &str)], args: &[&str]) {
        self.no_upstream("host");
        let cfg = self.write_config(config);
        let log = std::fs::File::create(self.dir.join("vswitch.log")).expect("log file");
        let ns = self.ns("host");
        let mut launch = if self.host_mounts {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"));
            c
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns]);
            c
        };
        let child = launch
            .args([env!("CARGO_BIN_EXE_vswitch"), "run", "--config"])
            .arg(&cfg)
            .arg("--socket")
            .arg(&self.sock)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vswitch");
        self.switch = Some(child);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if std::os::unix::net::UnixStream::connect(&self.sock).is_ok() {
                return;
            }
            assert!(
                self.switch_alive(),
                "vswitch exited at start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("vswitch did not open its socket:\n{}", self.log());
    }

    /// The switch's state directory (kept across its restarts in this
    /// topology).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The running switch's PID (`ip netns exec` and `nsenter` exec it).
    pub fn switch_pid(&self) -> u32 {
        self.switch.as_ref().expect("switch started").id()
    }

    /// Stops the switch with SIGTERM and waits for it to exit.
    pub fn stop_switch(&mut self) {
        let Some(mut c) = self.switch.take() else {
            return;
        };
        if !end_child(
            &mut c,
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_secs(5),
        ) {
            panic!(
                "vswitch did not stop on SIGTERM within 5 s:\n{}",
                self.log()
            );
        }
    }

    /// Kills the switch with SIGKILL (a crash) and waits for it to be gone.
    pub fn kill_switch(&mut self) {
        if let Some(mut c) = self.switch.take() {
            end_child(
                &mut c,
                nix::sys::signal::Signal::SIGKILL,
                Duration::from_secs(5),
            );
        }
    }

    /// Runs `vswitch run` with `config` and `args` in the host namespace,
    /// expecting it to fail at start; returns what it printed on stderr.
    pub fn switch_fails(&self, config: &str, args: &[&str]) -> String {
        let cfg = self.write_config(config);
        let mut a = vec![
            env!("CARGO_BIN_EXE_vswitch"),
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--socket",
            self.sock.to_str().unwrap(),
        ];
        let state = self.state_dir();
        if !args.contains(&"--state-dir") {
            a.extend(["--state-dir", state.to_str().unwrap()]);
        }
        a.extend_from_slice(args);
        let o = self.exec("host", &a);
        assert!(
            !o.status.success(),
            "vswitch started with {config:?} {args:?}"
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn switch_alive(&mut self) -> bool {
        matches!(self.switch.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vswitch.log")).unwrap_or_default()
    }

    /// Runs a `vswitch` client command.
    pub fn vs(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vswitch"))
            .arg("--socket")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vswitch client")
    }

    pub fn vs_ok(&self, args: &[&str]) -> String {
        let o = self.vs(args);
        assert!(
            o.status.success(),
            "vswitch {args:?} failed: {}\nswitch log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.vs_ok(args)).expect("JSON output")
    }

    /// Per-port stats keyed by "netns:ifname" (attached) or interface name.
    pub fn port_stats(&self, key: &str) -> serde_json::Value {
        let v = self.json(&["stats", "--json"]);
        v["ports"]
            .as_array()
            .and_then(|a| {
                a.iter().find(|p| {
                    p["attached"].as_str() == Some(key) || p["port"].as_str() == Some(key)
                })
            })
            .map(|p| p["stats"].clone())
            .unwrap_or_else(|| panic!("no port {key} in stats: {v}"))
    }

    pub fn mac_of(&self, name: &str, ifname: &str) -> String {
        let o = ok(&self.exec(name, &["cat", &format!("/sys/class/net/{ifname}/address")]));
        o.trim().to_string()
    }

    /// Attaches namespace `c` to network `net` as a `kind` container with
    /// address `ip` (CIDR).
    pub fn attach(&self, net: &str, c: &str, kind: &str, ip: &str) {
        self.vs_ok(&[
            "attach",
            net,
            "--netns",
            &self.ns(c),
            "--kind",
            kind,
            "--ip",
            ip,
        ]);
    }

    /// Serves `body` as `/` over HTTP on `addr` (IP:PORT) from namespace
    /// `ns` (busybox httpd), until the topology is dropped.
    pub fn serve_http(&mut self, ns: &str, addr: &str, body: &str) {
        let dir = self
            .dir
            .join(format!("www-{ns}-{}", addr.replace(':', "-")));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), body).unwrap();
        let d = dir.to_str().unwrap().to_string();
        self.bg(ns, &["busybox", "httpd", "-f", "-p", addr, "-h", &d]);
        std::thread::sleep(Duration::from_millis(300));
    }

    /// The body `url` answers from namespace `from`, trying for up to 5 s
    /// (empty if it never answers).
    pub fn curl(&self, from: &str, url: &str) -> String {
        let mut body = String::new();
        for _ in 0..50 {
            let o = self.exec(from, &["curl", "-s", "-m", "2", url]);
            body = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !body.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        body
    }

    /// The address container `c` gets for `name` from glibc (`getent
    /// hosts`, through its `resolv.conf`), if any.
    pub fn getent(&self, c: &str, name: &str) -> Option<String> {
        let o = self.exec(c, &["getent", "hosts", name]);
        o.status.success().then(|| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        })
    }

    pub fn ping(&self, from: &str, to: &str, count: u32) -> bool {
        self.exec(
            from,
            &["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "1", to],
        )
        .status
        .success()
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        // SIGTERM first, so a switch removes what it made.
        for mut c in self.children.drain(..) {
            end_child(
                &mut c,
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(3),
            );
        }
        if let Some(mut c) = self.switch.take() {
            end_child(
                &mut c,
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(5),
            );
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = sh("ip", &["netns", "del", &ns]);
            // The resolv.conf an attach wrote stays with an attachment a
            // stopped switch keeps; the namespace is gone, so is it.
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub const ADAPTIVE: &str =
    "[[workers]]\nidle = { mode = \"adaptive\", idle_after_us = 500, max_sleep_ms = 50 }\n";

/// A container image's root file system as a tar in `dir`: busybox and its
/// applets, and `page` as /www/index.html.
pub fn busybox_rootfs(dir: &std::path::Path, page: &str) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "www"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static; scripts/install-deps.sh installs it)");
    let applets = ok(&sh("/bin/busybox", &["--list"]));
    for a in applets.lines().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
    }
    std::fs::write(root.join("www/index.html"), page).unwrap();
    let tar = dir.join("rootfs.tar");
    ok(&sh(
        "tar",
        &[
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    ));
    tar
}
