//! The control logic against a fake host: no root, no netlink, no devices.
//! The fake keeps interfaces as (namespace, name) pairs, hands out ports on
//! memory and records the nftables scripts; the state directory and the
//! flow file are in a temporary directory.
use super::*;
use crate::host::Opened;
use crate::netns::{LinkInfo, NetnsError, V4Route};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;
use vswitch_engine::memport::MemPort;

#[derive(Default)]
struct World {
    namespaces: BTreeSet<String>,
    /// (namespace, name); `""` is the switch's own.
    links: BTreeSet<(String, String)>,
    /// Addresses configured, by (namespace, name).
    addrs: BTreeMap<(String, String), Vec<(IpAddr, u8)>>,
    /// TAPs made persistent.
    persistent: BTreeSet<String>,
    /// Veth pairs: host end → (namespace, the peer's name now).
    veths: BTreeMap<String, (String, String)>,
    /// MACs set, by (namespace, name).
    macs: BTreeMap<(String, String), [u8; 6]>,
    nft: Vec<String>,
    fail_configure: bool,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<World>>);

impl World {
    /// Moves and renames an interface (`None`: the switch's namespace), as
    /// the kernel does: it keeps its MAC, and a veth its peer.
    fn rename(
        &mut self,
        ns: Option<&str>,
        from: &str,
        to_ns: Option<&str>,
        to: &str,
    ) -> Result<(), NetnsError> {
        if !self.links.remove(&key(ns, from)) {
            return Err(NetnsError::NoLink(from.into()));
        }
        self.links.insert(key(to_ns, to));
        if let Some(m) = self.macs.remove(&key(ns, from)) {
            self.macs.insert(key(to_ns, to), m);
        }
        for peer in self.veths.values_mut() {
            if *peer == key(ns, from) {
                *peer = key(to_ns, to);
            }
        }
        Ok(())
    }
}

impl Fake {
    fn w(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }
    fn has(&self, ns: &str, name: &str) -> bool {
        self.w().links.contains(&(ns.into(), name.into()))
    }
}

fn mem(name: &str) -> Opened {
    let (p, _h) = MemPort::new(name, 64, PortCaps::default());
    (Box::new(p.discard_tx()), "memory".into())
}

fn key(ns: Option<&str>, name: &str) -> (String, String) {
    (ns.unwrap_or("").to_string(), name.to_string())
}

impl Host for Fake {
    fn namespace_exists(&self, ns: &str) -> bool {
        self.w().namespaces.contains(ns)
    }
    fn link_exists(&self, name: &str) -> bool {
        self.has("", name)
    }
    fn open_port(&self, kind: PortKind, iface: &str, persist: bool) -> Result<Opened, String> {
        let mut w = self.w();
        let k = key(None, iface);
        match kind {
            PortKind::Tap => {
                w.links.insert(k);
                if persist {
                    w.persistent.insert(iface.into());
                }
            }
            _ if !w.links.contains(&k) => return Err(format!("no interface {iface}")),
            _ => {}
        }
        Ok(mem(iface))
    }
    fn open_tap_in(&self, ns: &str, name: &str) -> Result<Option<Opened>, String> {
        Ok(self.has(ns, name).then(|| mem(name)))
    }
    fn create_veth(
        &self,
        host: &str,
        peer: &str,
        ns: Option<&str>,
        _mtu: u32,
    ) -> Result<(), NetnsError> {
        let mut w = self.w();
        w.links.insert(key(None, host));
        w.links.insert(key(ns, peer));
        w.veths.insert(host.into(), key(ns, peer));
        Ok(())
    }
    fn link_name_by_mac(&self, ns: Option<&str>, mac: [u8; 6]) -> Option<String> {
        let ns = ns.unwrap_or("");
        self.w()
            .macs
            .iter()
            .find(|((n, _), m)| n == ns && **m == mac)
            .map(|((_, name), _)| name.clone())
    }
    fn quiet_host_end(&self, _name: &str) {}
    fn no_arp(&self, _name: &str) -> Result<(), NetnsError> {
        Ok(())
    }
    fn move_to_ns(&self, name: &str, ns: &str) -> Result<(), NetnsError> {
        self.w().rename(None, name, Some(ns), name)
    }
    fn configure(
        &self,
        ns: Option<&str>,
        from: &str,
        to: &str,
        mac: [u8; 6],
        _mtu: u32,
        _gso: Option<u32>,
        addrs: Vec<(IpAddr, u8)>,
    ) -> Result<(), NetnsError> {
        let mut w = self.w();
        if w.fail_configure {
            return Err(NetnsError::Other("configure refused (test)".into()));
        }
        w.rename(ns, from, ns, to)?;
        w.addrs.insert(key(ns, to), addrs);
        w.macs.insert(key(ns, to), mac);
        Ok(())
    }
    fn add_default_route(&self, _ns: &str, _gw: Ipv4Addr) -> Result<(), NetnsError> {
        Ok(())
    }
    fn tx_csum_off(&self, _ns: Option<&str>, _ifname: &str) -> Result<(), NetnsError> {
        Ok(())
    }
    fn delete_link(&self, ns: Option<&str>, name: &str) -> Result<bool, NetnsError> {
        let mut w = self.w();
        let gone = w.links.remove(&key(ns, name));
        // A veth goes with its peer.
        if ns.is_none() {
            if let Some((pns, peer)) = w.veths.remove(name) {
                w.links.remove(&(pns, peer));
            }
        }
        Ok(gone)
    }
    fn link_info(&self, name: &str) -> Result<LinkInfo, NetnsError> {
        if !self.has("", name) {
            return Err(NetnsError::NoLink(name.into()));
        }
        Ok(LinkInfo {
            index: 7,
            mac: [2, 0, 0, 0, 0, 7],
            mtu: 1500,
            v4: vec![(Ipv4Addr::new(192, 0, 2, 1), 24)],
        })
    }
    fn routes_via(&self, _index: u32) -> Result<Vec<V4Route>, NetnsError> {
        Ok(Vec::new())
    }
    fn neighbours(&self, _index: u32) -> Result<Vec<(Ipv4Addr, [u8; 6])>, NetnsError> {
        Ok(Vec::new())
    }
    fn neighbour_use(&self, _index: u32, _ip: Ipv4Addr) -> Result<(), NetnsError> {
        Ok(())
    }
    fn nft(&self, script: &str) -> Result<(), String> {
        self.w().nft.push(script.to_string());
        Ok(())
    }
    fn resolv_conf(&self, _ns: &str, _text: Option<&str>) -> Result<(), String> {
        Ok(())
    }
    fn nft_netdev_tables(&self) -> Vec<String> {
        Vec::new()
    }
}

struct Bed {
    dir: std::path::PathBuf,
    host: Fake,
}

impl Bed {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vsstate-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let host = Fake::default();
        {
            let mut w = host.w();
            for ns in ["c1", "c2", "c3"] {
                w.namespaces.insert(ns.into());
            }
        }
        Self { dir, host }
    }

    fn config(extra: &str) -> Config {
        let c: Config = toml::from_str(&format!(
            "[switch]\nfdb_capacity = 4096\nmax_flows = 1024\n\
             [[workers]]\nidle = {{ mode = \"adaptive\", idle_after_us = 100, max_sleep_ms = 50 }}\n{extra}"
        ))
        .expect("config");
        c
    }

    /// A switch over this bed's state directory and host.
    fn start(&self, cfg: &Config) -> Result<State, CmdError> {
        let (store, saved) =
            Store::open(&self.dir.join("state")).map_err(|e| CmdError(e.to_string()))?;
        let allowed = vswitch_io::placement::allowed_here().unwrap();
        let plan = Plan::new(allowed, &[None]).unwrap();
        State::start(
            cfg,
            plan,
            store,
            saved,
            &self.dir.join("flows"),
            Box::new(self.host.clone()),
        )
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ok(s: &mut State, req: Request) -> serde_json::Value {
    let r = s.handle(req.clone());
    assert!(r.ok, "{req:?}: {:?}", r.error);
    r.data
}

fn net(name: &str, subnet: &str) -> Request {
    Request::NetworkCreate(NetworkConfig {
        subnet: Some(subnet.into()),
        ..NetworkConfig::named(name)
    })
}

fn attach(network: &str, ns: &str, kind: AttachKind) -> Request {
    Request::Attach {
        network: network.into(),
        netns: ns.into(),
        ifname: "eth0".into(),
        kind,
        ip: None,
        mac: None,
        owner: None,
        aliases: Vec::new(),
    }
}

fn detach(network: &str, ns: &str) -> Request {
    Request::Detach {
        network: network.into(),
        netns: ns.into(),
        ifname: "eth0".into(),
    }
}

#[test]
fn attach_gives_addresses_in_order_and_detach_frees_them() {
    let b = Bed::new("ipam");
    let mut s = b.start(&Bed::config("")).unwrap();
    ok(&mut s, net("n1", "10.9.0.0/24"));
    assert!(b.host.has("", "vsgw0"), "the host's interface on n1");
    assert!(b.host.w().persistent.contains("vsgw0"));
    let a = ok(&mut s, attach("n1", "c1", AttachKind::Veth));
    assert_eq!(a["ip"], "10.9.0.2");
    assert_eq!(a["gateway"], "10.9.0.1");
    let a = ok(&mut s, attach("n1", "c2", AttachKind::Tap));
    assert_eq!(a["ip"], "10.9.0.3");
    assert!(b.host.has("c1", "eth0") && b.host.has("c2", "eth0"));
    assert_eq!(
        b.host.w().addrs[&key(Some("c1"), "eth0")],
        vec![("10.9.0.2".parse().unwrap(), 24)]
    );
    let again = s.handle(attach("n1", "c1", AttachKind::Veth));
    assert!(again.error.unwrap().contains("already attached"));
    ok(&mut s, detach("n1", "c1"));
    assert!(!b.host.has("c1", "eth0"), "detach deletes the veth");
    let a = ok(&mut s, attach("n1", "c3", AttachKind::Tap));
    assert_eq!(a["ip"], "10.9.0.2", "a freed address is given again");
    let e = s
        .handle(attach("n1", "nope", AttachKind::Tap))
        .error
        .unwrap();
    assert!(e.contains("nope"), "{e}");
    s.shutdown();
}

#[test]
fn a_failed_attach_leaves_nothing_behind() {
    let b = Bed::new("fail");
    let mut s = b.start(&Bed::config("")).unwrap();
    ok(&mut s, net("n1", "10.9.0.0/24"));
    let links_before = b.host.w().links.clone();
    b.host.w().fail_configure = true;
    for kind in [AttachKind::Veth, AttachKind::Tap] {
        let e = s.handle(attach("n1", "c1", kind)).error.unwrap();
        assert!(e.contains("configure refused"), "{e}");
        assert_eq!(
            b.host.w().links,
            links_before,
            "{kind:?}: no interface left"
        );
        let ports: Vec<_> = s.port_infos().into_iter().map(|p| p.iface).collect();
        assert_eq!(ports, ["vsgw0"], "{kind:?}: no port left");
    }
    b.host.w().fail_configure = false;
    let a = ok(&mut s, attach("n1", "c1", AttachKind::Tap));
    assert_eq!(
        a["ip"], "10.9.0.2",
        "the address was not kept by the failures"
    );
    s.shutdown();
}

#[test]
fn saved_state_is_put_back_under_the_same_ids_addresses_and_ports() {
    let b = Bed::new("restore");
    let mut s = b.start(&Bed::config("")).unwrap();
    ok(&mut s, net("a", "10.9.0.0/24"));
    ok(&mut s, net("b", "10.8.0.0/24"));
    ok(&mut s, Request::NetworkRm { name: "a".into() });
    ok(&mut s, net("c", "10.7.0.0/24"));
    for (ns, kind) in [
        ("c1", AttachKind::Veth),
        ("c2", AttachKind::Tap),
        ("c3", AttachKind::Tap),
    ] {
        ok(&mut s, attach("c", ns, kind));
    }
    let nets = s.network_infos();
    let ports = serde_json::to_value(s.port_infos()).unwrap();
    let hosts = s.networks["c"].l3.as_ref().unwrap().hosts.clone();
    s.shutdown();
    drop(s);
    // c3 goes while the switch is down; its TAP goes with its namespace.
    {
        let mut w = b.host.w();
        w.namespaces.remove("c3");
        w.links.remove(&key(Some("c3"), "eth0"));
    }
    let mut s = b.start(&Bed::config("")).unwrap();
    let back = s.network_infos();
    assert_eq!(
        back.iter()
            .map(|n| (&n.config.name, n.id))
            .collect::<Vec<_>>(),
        nets.iter()
            .map(|n| (&n.config.name, n.id))
            .collect::<Vec<_>>(),
        "the same networks under the same ids"
    );
    let mut want = ports.as_array().unwrap().clone();
    want.retain(|p| p["attached"] != "c3:eth0");
    assert_eq!(
        serde_json::to_value(s.port_infos()).unwrap(),
        serde_json::json!(want)
    );
    let mut hosts_want = hosts.clone();
    hosts_want.retain(|_, (_, at)| at != "c3:eth0");
    assert_eq!(s.networks["c"].l3.as_ref().unwrap().hosts, hosts_want);
    // A new c3: its address is the first free one again, not a taken one.
    b.host.w().namespaces.insert("c3".into());
    let a = ok(&mut s, attach("c", "c3", AttachKind::Tap));
    assert_eq!(
        a["ip"], "10.7.0.4",
        "c3 had .4: .2 and .3 are c1's and c2's"
    );
    s.shutdown();
}

#[test]
fn the_config_merges_over_saved_state_and_reloads_apply_the_difference() {
    let b = Bed::new("merge");
    let n = |name: &str, sn: &str, mtu: u32| {
        format!("[[networks]]\nname = \"{name}\"\nsubnet = \"{sn}\"\nmtu = {mtu}\n")
    };
    let mut s = b
        .start(&Bed::config(&n("cfg1", "10.1.0.0/24", 1500)))
        .unwrap();
    ok(&mut s, net("api", "10.2.0.0/24"));
    ok(&mut s, attach("cfg1", "c1", AttachKind::Tap));
    let names = |s: &State| s.networks.keys().cloned().collect::<Vec<_>>();
    // Added to the config: made. The API's network stays.
    s.reload(&Bed::config(&format!(
        "{}{}",
        n("cfg1", "10.1.0.0/24", 1500),
        n("cfg2", "10.3.0.0/24", 1500)
    )));
    assert_eq!(names(&s), ["api", "cfg1", "cfg2"]);
    // Changed: cfg2 (unused) is made anew; cfg1 (a container on it) is kept.
    s.reload(&Bed::config(&format!(
        "{}{}",
        n("cfg1", "10.1.0.0/24", 1400),
        n("cfg2", "10.3.0.0/24", 1400)
    )));
    assert_eq!(s.networks["cfg2"].cfg.mtu, 1400);
    assert_eq!(s.networks["cfg1"].cfg.mtu, 1500, "in use: kept as it runs");
    // The same config at the next start: nothing changes.
    let before = serde_json::to_value(s.desired()).unwrap();
    s.shutdown();
    drop(s);
    let mut s = b
        .start(&Bed::config(&format!(
            "{}{}",
            n("cfg1", "10.1.0.0/24", 1400),
            n("cfg2", "10.3.0.0/24", 1400)
        )))
        .unwrap();
    assert_eq!(serde_json::to_value(s.desired()).unwrap(), before);
    // Gone from the config: removed, unless in use.
    s.reload(&Bed::config(""));
    assert_eq!(names(&s), ["api", "cfg1"], "cfg2 removed, cfg1 in use");
    ok(&mut s, detach("cfg1", "c1"));
    s.reload(&Bed::config(""));
    assert_eq!(names(&s), ["api"]);
    s.shutdown();
}

#[test]
fn a_change_that_cannot_be_saved_changes_nothing() {
    let b = Bed::new("unsaved");
    let mut s = b.start(&Bed::config("")).unwrap();
    ok(&mut s, net("n1", "10.9.0.0/24"));
    // A directory where the temporary file goes: every write fails (even
    // as root).
    let blocker = b.dir.join("state").join("state.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let r = s.handle(net("n2", "10.8.0.0/24"));
    let e = r.error.unwrap();
    assert!(
        e.contains("cannot save the switch's state") && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(s.networks.keys().collect::<Vec<_>>(), ["n1"]);
    assert!(!b.host.has("", "vsgw1"), "no interface made");
    // Queries still work; once the directory takes writes, so do changes.
    assert!(s.handle(Request::NetworkLs).ok);
    std::fs::remove_dir(&blocker).unwrap();
    ok(&mut s, net("n2", "10.8.0.0/24"));
    s.shutdown();
}

#[test]
fn the_uplink_guard_drops_the_switchs_ports_and_stays_after_a_stop() {
    let b = Bed::new("guard");
    b.host.w().links.insert(key(None, "up0"));
    let mut s = b.start(&Bed::config("")).unwrap();
    ok(&mut s, net("n1", "10.9.0.0/24"));
    ok(&mut s, attach("n1", "c1", AttachKind::Tap));
    ok(
        &mut s,
        Request::UplinkAdd(
            toml::from_str("iface = \"up0\"\nsnat_ports = \"61000-65535\"").unwrap(),
        ),
    );
    // A host port the kernel picks (free on this machine).
    let p = ok(
        &mut s,
        Request::Publish {
            network: "n1".into(),
            target: "10.9.0.2:80".into(),
            host_port: None,
            proto: Proto::Udp,
            host_ip: None,
            bind_host: true,
        },
    );
    let hp = p["host_port"].as_u64().unwrap();
    // The guard's table exists: the port is one element added to a set.
    let full = |b: &Bed| {
        b.host
            .w()
            .nft
            .iter()
            .rev()
            .find(|x| x.contains("chain ingress"))
            .cloned()
            .unwrap()
    };
    let g = full(&b);
    assert!(
        g.contains("ip daddr 192.0.2.1 tcp dport 61000-65535 drop"),
        "{g}"
    );
    assert!(g.contains("udp dport @udp_any drop"), "{g}");
    let last = b.host.w().nft.last().cloned().unwrap();
    assert!(
        last.starts_with("add element netdev vswitch_")
            && last.contains(&format!("udp_any {{ {hp} }}")),
        "{last}"
    );
    let n = b.host.w().nft.len();
    s.shutdown();
    drop(s);
    assert_eq!(b.host.w().nft.len(), n, "a stop leaves the guard");
    let mut s = b.start(&Bed::config("")).unwrap();
    // Rewritten at the start, and the port put back in its set.
    let since: Vec<String> = b.host.w().nft[n..].to_vec();
    assert!(
        since.iter().any(|x| x.contains("chain ingress")),
        "{since:?}"
    );
    assert!(
        since
            .iter()
            .any(|x| x.contains(&format!("udp_any {{ {hp} }}"))
                || x.contains(&format!("elements = {{ {hp} }}"))),
        "{since:?}"
    );
    ok(
        &mut s,
        Request::Unpublish {
            network: "n1".into(),
            host_port: hp as u16,
            proto: Proto::Udp,
        },
    );
    let last = b.host.w().nft.last().cloned().unwrap();
    assert!(last.starts_with("delete element netdev vswitch_"), "{last}");
    // A port a runtime holds (not bound by the switch): the guard and the
    // host's own path to it are rewritten, with it and then without it.
    let held = |on: bool| Request::Publish {
        network: "n1".into(),
        target: "10.9.0.2:80".into(),
        host_port: on.then(|| "18090".to_string()),
        proto: Proto::Tcp,
        host_ip: None,
        bind_host: false,
    };
    ok(&mut s, held(true));
    let g = full(&b);
    assert!(g.contains("elements = { 18090 }"), "{g}");
    let n = b.host.w().nft.len();
    ok(
        &mut s,
        Request::Unpublish {
            network: "n1".into(),
            host_port: 18090,
            proto: Proto::Tcp,
        },
    );
    let since: Vec<String> = b.host.w().nft[n..].to_vec();
    assert!(!since.is_empty(), "nothing rewritten");
    assert!(
        since.iter().all(|x| !x.contains("18090")),
        "the port is still in the rules: {since:?}"
    );
    let g = full(&b);
    assert!(!g.contains("18090"), "{g}");
    ok(&mut s, Request::UplinkRm);
    assert!(b.host.w().nft.last().unwrap().contains("delete table"));
    s.shutdown();
}

fn handoff(network: &str, owner: &str, kind: AttachKind, ip: &str) -> Request {
    Request::AttachHandoff {
        network: network.into(),
        kind,
        ip: Some(ip.into()),
        mac: None,
        owner: owner.into(),
        aliases: Vec::new(),
    }
}

#[test]
fn a_handed_off_interface_is_found_wherever_its_runtime_put_it() {
    let b = Bed::new("handoff");
    let mut s = b.start(&Bed::config("")).unwrap();
    ok(&mut s, net("d", "10.6.0.0/24"));
    // Docker's CreateEndpoint: made here, with the runtime's address.
    let tap = ok(&mut s, handoff("d", "ep1", AttachKind::Tap, "10.6.0.5/24"));
    let veth = ok(&mut s, handoff("d", "ep2", AttachKind::Veth, "10.6.0.6/24"));
    let (tname, vname) = (
        tap["handoff"].as_str().unwrap().to_string(),
        veth["handoff"].as_str().unwrap().to_string(),
    );
    assert!(b.host.has("", &tname) && b.host.has("", &vname));
    assert_eq!(tap["ip"], "10.6.0.5");
    assert!(
        b.host.w().addrs[&key(None, &tname)].is_empty(),
        "the runtime sets the address, not the switch"
    );
    let again = s.handle(handoff("d", "ep1", AttachKind::Tap, "10.6.0.7/24"));
    assert!(
        again.error.unwrap().contains("ep1"),
        "one interface per owner"
    );
    // Join: the runtime moves both into its sandbox and renames them.
    ok(
        &mut s,
        Request::AttachJoined {
            owner: "ep1".into(),
            netns: "c1".into(),
        },
    );
    {
        let mut w = b.host.w();
        w.rename(None, &tname, Some("c1"), "eth0").unwrap();
        w.rename(None, &vname, Some("c1"), "eth1").unwrap();
    }
    let ports = serde_json::to_value(s.port_infos()).unwrap();
    s.shutdown();
    drop(s);
    // A restart takes both over: the TAP by its MAC in the sandbox, the
    // veth by its end here.
    let mut s = b.start(&Bed::config("")).unwrap();
    assert_eq!(serde_json::to_value(s.port_infos()).unwrap(), ports);
    // DeleteEndpoint after Docker moved the TAP back under its name, and
    // with the veth still in the sandbox.
    b.host.w().rename(Some("c1"), "eth0", None, &tname).unwrap();
    ok(
        &mut s,
        Request::DetachOwner {
            owner: "ep1".into(),
        },
    );
    ok(
        &mut s,
        Request::DetachOwner {
            owner: "ep2".into(),
        },
    );
    ok(
        &mut s,
        Request::DetachOwner {
            owner: "ep2".into(),
        },
    );
    assert!(!b.host.has("", &tname) && !b.host.has("c1", "eth1"));
    assert!(s.networks["d"].l3.as_ref().unwrap().hosts.is_empty());
    assert_eq!(s.port_infos().len(), 1, "only the gateway's port is left");
    s.shutdown();
}
