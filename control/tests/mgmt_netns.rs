//! The management socket: who may use it, and clients that misbehave.
//! Needs root (the switch runs in a namespace; `setpriv` plays another user).
mod common;
use common::{sh, Topo, ADAPTIVE};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// `vswitch network ls` as user and group 65534 with supplementary `groups`.
fn as_nobody(t: &Topo, groups: &str) -> std::process::Output {
    sh(
        "setpriv",
        &[
            "--reuid",
            "65534",
            "--regid",
            "65534",
            &format!("--groups={groups}"),
            env!("CARGO_BIN_EXE_vswitch"),
            "--socket",
            t.sock.to_str().unwrap(),
            "network",
            "ls",
        ],
    )
}

fn line(c: &mut UnixStream, req: &[u8]) -> serde_json::Value {
    c.write_all(req).unwrap();
    let mut l = String::new();
    BufReader::new(c.try_clone().unwrap())
        .read_line(&mut l)
        .unwrap();
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
}

#[test]
fn socket_is_root_and_group_only() {
    let mut t = Topo::new("ms");
    // The socket's directory must let the other user reach the socket.
    let dir = t.sock.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    t.start_switch(ADAPTIVE);
    let m = std::fs::metadata(&t.sock).unwrap();
    assert_eq!(m.mode() & 0o777, 0o660, "mode {:o}", m.mode());
    assert_eq!((m.uid(), m.gid()), (0, 0));
    let o = as_nobody(&t, "4242");
    assert!(!o.status.success(), "another user used a root-only socket");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    t.stop_switch();

    // With --socket-group, its members may.
    t.start_switch_args(ADAPTIVE, &["--socket-group", "4242"]);
    let m = std::fs::metadata(&t.sock).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o660, 0, 4242));
    let o = as_nobody(&t, "4242");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = as_nobody(&t, "4243");
    assert!(!o.status.success(), "a user outside the group got in");
    t.stop_switch();

    // An unknown group name is a clear error at start.
    let err = t.switch_fails(ADAPTIVE, &["--socket-group", "no-such-group-here"]);
    assert!(err.contains("no such group"), "{err}");
}

#[test]
fn misbehaving_clients_do_not_hold_up_others() {
    let mut t = Topo::new("mb");
    t.start_switch(ADAPTIVE);
    // A client that stalls in the middle of a request.
    let mut stalled = UnixStream::connect(&t.sock).unwrap();
    stalled.write_all(b"{\"cmd\": \"network_").unwrap();
    // A client that sends 100 MB without a newline, from another thread.
    let sock = t.sock.clone();
    let flood = std::thread::spawn(move || {
        let mut c = UnixStream::connect(&sock).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0usize;
        for _ in 0..100 {
            match c.write_all(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(_) => break, // the switch closed the connection
            }
        }
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        (sent, answer)
    });
    // Meanwhile others are answered at once.
    for _ in 0..5 {
        let t0 = Instant::now();
        t.vs_ok(&["network", "ls"]);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }
    let (sent, answer) = flood.join().unwrap();
    assert!(sent < 100 << 20, "the switch read all 100 MB");
    assert!(answer.contains("larger than 1048576 bytes"), "{answer:?}");
    // Malformed lines get an error and the connection goes on.
    let mut c = UnixStream::connect(&t.sock).unwrap();
    let r = line(&mut c, b"this is not json\n");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().unwrap().contains("malformed request"),
        "{r}"
    );
    let r = line(
        &mut c,
        b"{\"cmd\": \"network_create\", \"name\": \"mgmt\"}\n",
    );
    assert_eq!(r["ok"], true, "{r}");
    // A change is logged with who asked.
    let log = t.log();
    let me = std::process::id();
    assert!(
        log.lines().any(|l| l.contains("NetworkCreate")
            && l.contains("uid=Some(0)")
            && l.contains(&format!("pid=Some({me})"))),
        "no logged caller:\n{log}"
    );
    // The stalled client is told and dropped after the idle timeout.
    stalled
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.contains("not finished within"), "{answer:?}");
}
