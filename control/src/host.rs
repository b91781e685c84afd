//! The host side effects of the control plane, behind one trait: interfaces
//! and addresses (netlink, in the switch's namespace or a container's),
//! ports opened on them (AF_XDP, TAP, AF_PACKET), and the uplink guard's
//! nftables scripts. [`Kernel`] does them; the control logic's unit tests
//! run it against a fake that records what was asked and hands out ports on
//! memory, so they need no root.
use crate::config::PortKind;
use crate::netns::{self, LinkInfo, NetnsError, V4Route};
use std::net::{IpAddr, Ipv4Addr};
use vswitch_engine::port::Port;

/// A port opened on an interface, and how (for `port ls`).
pub type Opened = (Box<dyn Port>, String);

/// What the control plane asks of the host.
pub trait Host: Send {
    /// Whether network namespace `ns` (a name in `/run/netns`, or a path
    /// to a namespace file) exists.
    fn namespace_exists(&self, ns: &str) -> bool;
    /// Whether interface `name` exists in the switch's namespace.
    fn link_exists(&self, name: &str) -> bool;
    /// Opens `iface` (the switch's namespace) as a `kind` port; `persist`:
    /// a TAP made persistent.
    fn open_port(&self, kind: PortKind, iface: &str, persist: bool) -> Result<Opened, String>;
    /// Opens the persistent TAP `name` inside namespace `ns`; `None` when
    /// there is no such interface.
    fn open_tap_in(&self, ns: &str, name: &str) -> Result<Option<Opened>, String>;
    /// A veth pair: `host` here, `peer` in `ns` (`None`: here too), both
    /// with `mtu`; the host end kept quiet (no IPv6, no ARP).
    fn create_veth(
        &self,
        host: &str,
        peer: &str,
        ns: Option<&str>,
        mtu: u32,
    ) -> Result<(), NetnsError>;
    /// The interface with MAC `mac` in `ns` (`None`: here), if any.
    fn link_name_by_mac(&self, ns: Option<&str>, mac: [u8; 6]) -> Option<String>;
    /// Keeps the kernel quiet on an interface the switch owns.
    fn quiet_host_end(&self, name: &str);
    /// Keeps the kernel from answering ARP on the switch's end of a veth,
    /// which an AF_PACKET port shares with it.
    fn no_arp(&self, name: &str) -> Result<(), NetnsError>;
    /// Moves interface `name` into `ns`.
    fn move_to_ns(&self, name: &str, ns: &str) -> Result<(), NetnsError>;
    /// Renames `from` to `to` in `ns` (`None`: here) and sets its MAC, MTU,
    /// GSO size and addresses, then brings it up.
    #[allow(clippy::too_many_arguments)]
    fn configure(
        &self,
        ns: Option<&str>,
        from: &str,
        to: &str,
        mac: [u8; 6],
        mtu: u32,
        gso: Option<u32>,
        addrs: Vec<(IpAddr, u8)>,
    ) -> Result<(), NetnsError>;
    /// A default route via `gw` in `ns`.
    fn add_default_route(&self, ns: &str, gw: Ipv4Addr) -> Result<(), NetnsError>;
    /// Turns TX checksum offload off on `ifname` in `ns` (`None`: here).
    fn tx_csum_off(&self, ns: Option<&str>, ifname: &str) -> Result<(), NetnsError>;
    /// Deletes interface `name` in `ns` (`None`: here); `false` if absent.
    fn delete_link(&self, ns: Option<&str>, name: &str) -> Result<bool, NetnsError>;
    /// Index, MAC, MTU and addresses of `name`.
    fn link_info(&self, name: &str) -> Result<LinkInfo, NetnsError>;
    /// IPv4 routes through interface `index`.
    fn routes_via(&self, index: u32) -> Result<Vec<V4Route>, NetnsError>;
    /// Resolved neighbours on interface `index`.
    fn neighbours(&self, index: u32) -> Result<Vec<(Ipv4Addr, [u8; 6])>, NetnsError>;
    /// Asks the kernel to resolve `ip` on interface `index`.
    fn neighbour_use(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetnsError>;
    /// Runs an nftables script (one transaction).
    fn nft(&self, script: &str) -> Result<(), String>;
    /// The names of the netdev-family nftables tables.
    fn nft_netdev_tables(&self) -> Vec<String>;
    /// Writes `text` as named namespace `ns`'s `resolv.conf`
    /// (`/etc/netns/NS/resolv.conf`, which `ip netns exec` shows as
    /// `/etc/resolv.conf`), or removes it (`None`); a file the switch did
    /// not write is left alone.
    fn resolv_conf(&self, ns: &str, text: Option<&str>) -> Result<(), String>;
}

/// The real host.
#[derive(Debug, Default)]
pub struct Kernel;

impl Host for Kernel {
    fn namespace_exists(&self, ns: &str) -> bool {
        netns::open_ns(ns).is_ok()
    }

    fn link_exists(&self, name: &str) -> bool {
        netns::link_exists(name)
    }

    fn open_port(&self, kind: PortKind, iface: &str, persist: bool) -> Result<Opened, String> {
        open_port(kind, iface, persist).map_err(|e| e.to_string())
    }

    fn open_tap_in(&self, ns: &str, name: &str) -> Result<Option<Opened>, String> {
        let name = name.to_string();
        netns::with_ns(ns, move || {
            if nix::net::if_::if_nametoindex(name.as_str()).is_err() {
                return Ok(None);
            }
            open_port(PortKind::Tap, &name, true)
                .map(Some)
                .map_err(|e| NetnsError::Other(e.to_string()))
        })
        .map_err(|e| e.to_string())
    }

    fn create_veth(
        &self,
        host: &str,
        peer: &str,
        ns: Option<&str>,
        mtu: u32,
    ) -> Result<(), NetnsError> {
        netns::create_veth(host, peer, ns, mtu)?;
        netns::quiet_host_end(host);
        Ok(())
    }

    fn link_name_by_mac(&self, ns: Option<&str>, mac: [u8; 6]) -> Option<String> {
        netns::link_name_by_mac(ns, mac).ok().flatten()
    }

    fn quiet_host_end(&self, name: &str) {
        netns::quiet_host_end(name)
    }

    fn no_arp(&self, name: &str) -> Result<(), NetnsError> {
        netns::no_arp(name)
    }

    fn move_to_ns(&self, name: &str, ns: &str) -> Result<(), NetnsError> {
        netns::move_to_ns(name, ns)
    }

    fn configure(
        &self,
        ns: Option<&str>,
        from: &str,
        to: &str,
        mac: [u8; 6],
        mtu: u32,
        gso: Option<u32>,
        addrs: Vec<(IpAddr, u8)>,
    ) -> Result<(), NetnsError> {
        netns::configure(ns, from, to, mac, mtu, gso, addrs)
    }

    fn add_default_route(&self, ns: &str, gw: Ipv4Addr) -> Result<(), NetnsError> {
        netns::add_default_route(ns, gw).map(|_| ())
    }

    fn tx_csum_off(&self, ns: Option<&str>, ifname: &str) -> Result<(), NetnsError> {
        let name = ifname.to_string();
        let off = move || {
            vswitch_io::ethtool::set_tx_csum(&name, false)
                .map_err(|e| NetnsError::Other(e.to_string()))
        };
        match ns {
            Some(ns) => netns::with_ns(ns, off),
            None => off(),
        }
    }

    fn delete_link(&self, ns: Option<&str>, name: &str) -> Result<bool, NetnsError> {
        netns::delete_link(ns, name)
    }

    fn link_info(&self, name: &str) -> Result<LinkInfo, NetnsError> {
        netns::link_info(name)
    }

    fn routes_via(&self, index: u32) -> Result<Vec<V4Route>, NetnsError> {
        netns::routes_via(index)
    }

    fn neighbours(&self, index: u32) -> Result<Vec<(Ipv4Addr, [u8; 6])>, NetnsError> {
        netns::neighbours(index)
    }

    fn neighbour_use(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetnsError> {
        netns::neighbour_use(index, ip)
    }

    fn nft(&self, script: &str) -> Result<(), String> {
        crate::uplink::nft(script)
    }

    fn nft_netdev_tables(&self) -> Vec<String> {
        let Ok(out) = std::process::Command::new("nft")
            .args(["list", "tables", "netdev"])
            .output()
        else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("table netdev "))
            .map(|t| t.trim().to_string())
            .collect()
    }

    fn resolv_conf(&self, ns: &str, text: Option<&str>) -> Result<(), String> {
        // Only a named namespace has a directory `ip netns exec` reads.
        if ns.is_empty() || ns.contains('/') || ns.starts_with('.') {
            return Ok(());
        }
        let dir = std::path::Path::new("/etc/netns").join(ns);
        let file = dir.join("resolv.conf");
        let theirs =
            std::fs::read_to_string(&file).is_ok_and(|t| !t.starts_with(crate::dns::RESOLV_MARK));
        if theirs {
            return Ok(());
        }
        let what = |e: std::io::Error| format!("{}: {e}", file.display());
        match text {
            Some(t) => {
                std::fs::create_dir_all(&dir).map_err(what)?;
                let tmp = dir.join(".resolv.conf.vswitch");
                std::fs::write(&tmp, t).map_err(what)?;
                std::fs::rename(&tmp, &file).map_err(what)
            }
            None => {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(what(e)),
                }
                // The directory goes too if nothing else is in it.
                let _ = std::fs::remove_dir(&dir);
                Ok(())
            }
        }
    }
}

/// Opens a port of `kind` on `iface` in the calling thread's namespace.
fn open_port(kind: PortKind, iface: &str, persist: bool) -> Result<Opened, vswitch_io::IoError> {
    use vswitch_io::afxdp::{AfXdpConfig, AfXdpPort};
    use vswitch_io::tap::TapPort;
    Ok(match kind {
        PortKind::Afxdp => {
            let p = AfXdpPort::open(&AfXdpConfig {
                ifname: iface.to_string(),
                queue: 0,
            })?;
            let m = p.mode();
            let mode = format!(
                "xdp={} umem={}",
                if m.native { "native" } else { "generic" },
                if m.hugepages { "hugepages" } else { "pages" }
            );
            (Box::new(p), mode)
        }
        PortKind::Tap => {
            let t = TapPort::open(iface)?;
            if persist {
                t.set_persist(true)?;
            }
            (Box::new(t), "vnet_hdr tso csum".to_string())
        }
        PortKind::Packet => (
            Box::new(TapPort::open_packet(iface)?),
            "af_packet vnet_hdr tso csum".to_string(),
        ),
    })
}
