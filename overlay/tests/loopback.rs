//! Three agents on loopback: convergence, withdrawal on leave, restart with a
//! new epoch, and a forged datagram refused.
use crossbeam::channel::{unbounded, Receiver};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use vswitch_overlay::{Cluster, ClusterConfig, Key, Value, View};

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn cfg(name: &str, port: u16, join: &[u16], epoch: u64) -> ClusterConfig {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    ClusterConfig {
        name: name.into(),
        epoch,
        listen: addr,
        advertise: addr,
        join: join.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect(),
        key: b"loopback test key 0123456789".to_vec(),
        probe_period: Duration::from_millis(200),
        probe_rtt: Duration::from_millis(100),
        suspect_to_down: Duration::from_millis(600),
        anti_entropy: Duration::from_millis(300),
        tombstone_ttl: Duration::from_secs(30),
        etcd: None,
    }
}

fn rows(vtep: u8, macs: &[u8]) -> BTreeMap<Key, Value> {
    let mut r = BTreeMap::new();
    r.insert(Key::Vtep, Value::Vtep(Ipv4Addr::new(10, 0, 0, vtep)));
    r.insert(Key::Member(42), Value::Member);
    for m in macs {
        r.insert(
            Key::Endpoint(42, [2, 0, 0, 0, vtep, *m]),
            Value::Endpoint(Some(Ipv4Addr::new(10, 9, vtep, *m))),
        );
    }
    r
}

fn start(c: ClusterConfig) -> (Cluster, Receiver<View>) {
    let (tx, rx) = unbounded();
    let cl = Cluster::start(c, move |v| {
        let _ = tx.send(v);
    })
    .expect("agent starts");
    (cl, rx)
}

/// Waits for a view that satisfies `ok`.
fn wait(rx: &Receiver<View>, what: &str, ok: impl Fn(&View) -> bool) -> View {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if ok(&v) => return v,
            Ok(_) => {}
            Err(_) => panic!("timed out waiting for: {what}"),
        }
    }
}

fn endpoints(v: &View, host: &str) -> usize {
    v.hosts
        .iter()
        .find(|h| h.name == host)
        .map_or(0, |h| h.endpoints.len())
}

#[test]
fn three_agents_converge_withdraw_and_replace() {
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let (a, ra) = start(cfg("a", pa, &[], 1));
    let (b, rb) = start(cfg("b", pb, &[pa], 1));
    let (mut c, rc) = start(cfg("c", pc, &[pa], 1));
    a.set_local(rows(1, &[1]));
    b.set_local(rows(2, &[1, 2]));
    c.set_local(rows(3, &[1, 2, 3]));
    wait(&ra, "a sees b and c", |v| {
        endpoints(v, "b") == 2 && endpoints(v, "c") == 3
    });
    wait(&rb, "b sees a and c", |v| {
        endpoints(v, "a") == 1 && endpoints(v, "c") == 3
    });
    // A local change reaches the others.
    c.set_local(rows(3, &[1]));
    wait(&ra, "a sees c's delete", |v| endpoints(v, "c") == 1);
    // c leaves: its rows are withdrawn on a and b.
    c.stop();
    wait(&ra, "a withdraws c", |v| {
        v.hosts.iter().all(|h| h.name != "c")
    });
    wait(&rb, "b withdraws c", |v| {
        v.hosts.iter().all(|h| h.name != "c")
    });
    drop(rc);
    // c comes back in a new run with other endpoints: they replace the old.
    let (c2, _rc2) = start(cfg("c", pc, &[pa], 2));
    c2.set_local(rows(3, &[7, 8]));
    let v = wait(&rb, "b sees c's new run", |v| {
        v.hosts
            .iter()
            .any(|h| h.name == "c" && h.epoch == 2 && h.endpoints.len() == 2)
    });
    let h = v.hosts.iter().find(|h| h.name == "c").unwrap();
    assert!(
        h.endpoints.iter().all(|e| e.1[5] == 7 || e.1[5] == 8),
        "{h:?}"
    );
    let st = b.status().expect("status");
    assert!(st
        .members
        .iter()
        .any(|m| m.name == "c" && m.state == "alive" && m.epoch == 2));
    assert_eq!(st.stats.rx_bad_auth, 0);

    // A forged datagram (right header, wrong key) is refused and counted.
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let forger = vswitch_overlay::wire::Key::new(b"not the cluster key!!").unwrap();
    let mut out = Vec::new();
    forger.seal(vswitch_overlay::wire::Kind::Sync, b"junk", &mut out);
    s.send_to(&out, ("127.0.0.1", pa)).unwrap();
    s.send_to(b"garbage", ("127.0.0.1", pa)).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let st = a.status().expect("status");
        if st.stats.rx_bad_auth >= 1 && st.stats.rx_malformed >= 1 {
            break;
        }
        assert!(Instant::now() < end, "forgery not counted: {:?}", st.stats);
        std::thread::sleep(Duration::from_millis(20));
    }
}
