//! Running under a service manager: the shipped systemd unit, and the
//! readiness and stopping notifications (`Type=notify`). Needs root.
mod common;
use common::{sh, Topo, ADAPTIVE};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification within 10 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The switch says READY=1 once its socket answers, RELOADING=1 and READY=1
/// around a SIGHUP, and STOPPING=1 on SIGTERM, on the socket systemd names
/// in NOTIFY_SOCKET.
#[test]
fn tells_the_service_manager_when_ready_and_stopping() {
    let mut t = Topo::new("sd");
    let path = t.tmp("notify.sock");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    t.start_switch_env(ADAPTIVE, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let ready = next(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means ready: the management socket answers now.
    t.vs_ok(&["network", "ls"]);
    // A reload (`systemctl reload`: SIGHUP) is announced around it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(t.switch_pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let reloading = next(&sock);
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    let ready = next(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    t.stop_switch();
    let stopping = next(&sock);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let _ = std::fs::remove_file(&path);
}

/// `packaging/vswitch.service` passes `systemd-analyze verify` (with
/// ExecStart pointed at the binary just built).
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/vswitch.service"
    ))
    .expect("packaging/vswitch.service");
    assert!(unit.contains("Type=notify") && unit.contains("Restart=on-failure"));
    if sh("sh", &["-c", "command -v systemd-analyze"])
        .stdout
        .is_empty()
    {
        eprintln!("systemd-analyze is not installed: the unit's syntax is not checked here");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vtsdunit{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("vswitch.service");
    std::fs::write(
        &p,
        unit.replace("/usr/local/bin/vswitch", env!("CARGO_BIN_EXE_vswitch")),
    )
    .unwrap();
    let o = sh(
        "systemd-analyze",
        &["verify", "--man=no", p.to_str().unwrap()],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&o.stderr);
    // Without a running systemd the tool may note that; the unit's own
    // lines must draw no complaint.
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("vswitch.service"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify:\n{err}");
}
