//! Worker placement is decided without a race: at every start, whatever the
//! size of the switch's environment and whatever other threads the start
//! spawns (the uplink's proxy, the cluster's), each pinned worker runs on
//! its core alone and every other thread on the remaining cores. Checked
//! through `vswitch stats --json` and, independently, in `/proc`. Needs root
//! and at least two cores.
mod common;
use common::Topo;
use std::collections::BTreeMap;
use vswitch_io::placement;

const STARTS: usize = 32;

/// The cores this test process may use.
fn allowed() -> Vec<usize> {
    placement::allowed_here()
        .expect("affinity")
        .into_iter()
        .collect()
}

/// `0-2,5` for [0, 1, 2, 5], as the kernel prints `Cpus_allowed_list`.
fn list(cores: &[usize]) -> String {
    placement::list(&cores.iter().copied().collect())
}

struct Variant {
    name: &'static str,
    config: String,
    /// Expected allowed cores of worker i.
    workers: Vec<String>,
    /// Expected nice value of worker i.
    nice: Vec<i32>,
    publish: bool,
}

/// Thread name, `Cpus_allowed_list` and nice value (`stat` field 19) of
/// every thread of process `pid`.
fn threads(pid: u32) -> Vec<(String, String, i32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let t = t.expect("task").path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.join("stat")).unwrap_or_default();
        let Some(cpus) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        else {
            continue; // the thread has just exited
        };
        // Fields after the command (which may hold spaces) start at 3.
        let Some(nice) = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(19 - 3))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        out.push((comm.trim().to_string(), cpus.trim().to_string(), nice));
    }
    out
}

fn check(t: &Topo, v: &Variant, start: usize, control: &str) {
    let ctx = format!("start {start} ({})", v.name);
    let stats = t.json(&["stats", "--json"]);
    let ws = stats["workers"].as_array().expect("workers in stats");
    assert_eq!(ws.len(), v.workers.len(), "{ctx}: {stats}");
    for (i, w) in ws.iter().enumerate() {
        assert_eq!(
            w["allowed_cores"].as_str(),
            Some(v.workers[i].as_str()),
            "{ctx}: worker {i} in stats: {w}\n{}",
            t.log()
        );
        assert_eq!(w["placed_as_configured"], true, "{ctx}: {w}");
        assert_eq!(w["nice"].as_i64(), Some(v.nice[i] as i64), "{ctx}: {w}");
        let last = w["last_cpu"].as_u64().expect("last_cpu") as usize;
        let allowed_list: Vec<usize> = v.workers[i]
            .split(',')
            .flat_map(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
                None => vec![r.parse().unwrap()],
            })
            .collect();
        assert!(
            allowed_list.contains(&last),
            "{ctx}: worker {i} ran on {last}: {w}"
        );
    }
    // The kernel's view of every thread, not the switch's own report.
    let mut workers_seen = BTreeMap::new();
    for (comm, cpus, nice) in threads(t.switch_pid()) {
        if let Some(id) = comm.strip_prefix("vswitch-worker") {
            let id: usize = id.parse().expect("worker id");
            assert_eq!(cpus, v.workers[id], "{ctx}: thread {comm} allowed {cpus}");
            assert_eq!(nice, v.nice[id], "{ctx}: thread {comm} nice {nice}");
            workers_seen.insert(id, cpus);
        } else {
            assert_eq!(
                cpus, control,
                "{ctx}: thread {comm:?} is allowed cores {cpus}, the control cores are {control}"
            );
            assert_eq!(
                nice, 0,
                "{ctx}: thread {comm:?} nice {nice}: only workers change it"
            );
        }
    }
    assert_eq!(
        workers_seen.len(),
        v.workers.len(),
        "{ctx}: {workers_seen:?}"
    );
}

#[test]
fn workers_are_placed_as_configured_at_every_start() {
    let cores = allowed();
    assert!(
        cores.len() >= 2,
        "this test needs two cores to put a worker apart from control; allowed: {cores:?}"
    );
    let wcore = *cores.last().unwrap();
    let control = list(&cores[..cores.len() - 1]);
    let mut t = Topo::new("pl");
    t.add_ns("ext");
    t.add_ns("c1");
    let up = format!("{}u", t.prefix);
    t.link(
        "host",
        &up,
        "192.168.71.1/24",
        "ext",
        "eth0",
        "192.168.71.2/24",
    );
    let key = t.tmp("cluster.key");
    std::fs::write(&key, [7u8; 32]).expect("key file");
    let net = "[[networks]]\nname = \"blue\"\nsubnet = \"10.71.0.0/24\"\n";
    let busy = format!("[[workers]]\ncore = {wcore}\nidle = {{ mode = \"busy\" }}\n");
    let adaptive = format!(
        "[[workers]]\ncore = {wcore}\nidle = {{ mode = \"adaptive\", idle_after_us = 200, max_sleep_ms = 20 }}\n"
    );
    let unpinned = "[[workers]]\nidle = { mode = \"adaptive\", idle_after_us = 200, max_sleep_ms = 20 }\nnice = 3\n";
    let uplink = format!("[uplink]\niface = \"{up}\"\n");
    let variants = [
        Variant {
            name: "busy",
            config: format!("{busy}{net}"),
            workers: vec![wcore.to_string()],
            nice: vec![-20],
            publish: false,
        },
        Variant {
            name: "adaptive, uplink and a published port's proxy",
            config: format!("{adaptive}{net}{uplink}"),
            workers: vec![wcore.to_string()],
            nice: vec![-20],
            publish: true,
        },
        Variant {
            name: "busy, uplink and gossip cluster",
            config: format!(
                "{busy}[[networks]]\nname = \"ov\"\ndriver = \"overlay\"\nvni = 71\n\
                 subnet = \"10.72.0.0/24\"\n{uplink}[cluster]\nlisten = \"192.168.71.1:7946\"\n\
                 key_file = \"{}\"\n",
                key.display()
            ),
            workers: vec![wcore.to_string()],
            nice: vec![-20],
            publish: false,
        },
        Variant {
            name: "one pinned worker and one unpinned",
            config: format!("{busy}{unpinned}{net}"),
            workers: vec![wcore.to_string(), control.clone()],
            nice: vec![-20, 3],
            publish: false,
        },
    ];
    for start in 0..STARTS {
        let v = &variants[start % variants.len()];
        // A different environment size at every start: the slow starts this
        // guards against came and went with it.
        let pad = "x".repeat(start);
        t.start_switch_env(&v.config, &[("VSWITCH_TEST_PAD", &pad)]);
        if v.publish {
            let c1 = t.ns("c1");
            t.vs_ok(&["attach", "blue", "--netns", &c1, "--ip", "10.71.0.2/24"]);
            t.vs_ok(&["publish", "blue", "10.71.0.2:80", "--host-port", "18071"]);
            assert!(
                threads(t.switch_pid())
                    .iter()
                    .any(|(c, _, _)| c == "vswitch-proxy"),
                "no proxy thread: {:?}",
                threads(t.switch_pid())
            );
        }
        check(&t, v, start, &control);
        let text = t.vs_ok(&["stats"]);
        assert!(
            text.contains(&format!(
                "worker 0 pinned to {wcore} allowed cores {wcore} last ran on {wcore}"
            )),
            "start {start}: {text}"
        );
        if v.publish {
            // What the API made is saved across starts: take it back, so
            // that every start begins from its configuration alone.
            t.vs_ok(&["unpublish", "blue", "--host-port", "18071"]);
            t.vs_ok(&["detach", "blue", "--netns", &t.ns("c1")]);
        }
        t.stop_switch();
    }
    let _ = std::fs::remove_file(&key);
}

/// A worker pinned to a core this process may not use is refused at start
/// with an error that names the core.
#[test]
fn a_core_outside_the_affinity_is_a_clear_error() {
    let cores = allowed();
    let outside = (0..1024)
        .find(|c| !cores.contains(c))
        .expect("a core outside");
    let t = Topo::new("pe");
    let err = t.switch_fails(
        &format!("[[workers]]\ncore = {outside}\nidle = {{ mode = \"busy\" }}\n"),
        &[],
    );
    assert!(
        err.contains(&format!("workers[0].core = {outside}"))
            && err.contains(&format!("cores {}", list(&cores))),
        "{err}"
    );
    // The switch did not stay up.
    assert!(std::os::unix::net::UnixStream::connect(&t.sock).is_err());
}
