//! Interfaces in other network namespaces, through netlink (rtnetlink).
//!
//! Each operation runs on a short-lived thread that has entered the target
//! namespace (`setns`), so its netlink socket talks to that namespace's
//! kernel tables; the switch's own threads never change namespace.
use futures::TryStreamExt;
use rtnetlink::{new_connection, Handle, LinkUnspec, LinkVeth};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// A netlink or namespace operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace does not exist.
    #[error("network namespace {0:?} not found (expected /run/netns/{0}; create it with `ip netns add {0}`)")]
    NoNamespace(String),
    /// A path that is not a network namespace.
    #[error("{path:?} is not a network namespace ({why}); give a name from `ip netns` or a path such as /run/netns/NAME or /proc/PID/ns/net")]
    NotNamespace {
        /// The path.
        path: String,
        /// What it is, or why it cannot be opened.
        why: String,
    },
    /// Entering it failed.
    #[error("cannot enter network namespace {ns:?}: {source}")]
    Enter {
        /// Namespace.
        ns: String,
        /// Why.
        source: nix::Error,
    },
    /// The interface does not exist.
    #[error("no interface {0:?} in that namespace")]
    NoLink(String),
    /// Netlink said no.
    #[error("netlink: {0}")]
    Netlink(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

fn nl(e: impl std::fmt::Display) -> NetnsError {
    NetnsError::Netlink(e.to_string())
}

/// Opens a network namespace: `NAME` (`/run/netns/NAME`, as `ip netns`
/// names them) or an absolute path to a namespace file, as container
/// runtimes pass it (`/run/netns/netns-<uuid>`, `/proc/PID/ns/net`).
pub fn open_ns(name: &str) -> Result<OwnedFd, NetnsError> {
    if name.starts_with('/') {
        let not = |why: String| NetnsError::NotNamespace {
            path: name.to_string(),
            why,
        };
        let fd = OwnedFd::from(std::fs::File::open(name).map_err(|e| not(e.to_string()))?);
        // A namespace file lives on nsfs (a bind mount of one, as in
        // /run/netns, too); entering it checks that it is a network one.
        let fs = nix::sys::statfs::fstatfs(&fd).map_err(|e| not(e.to_string()))?;
        if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(not("not a namespace file".into()));
        }
        return Ok(fd);
    }
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(NetnsError::NoNamespace(name.to_string()));
    }
    std::fs::File::open(format!("/run/netns/{name}"))
        .map(OwnedFd::from)
        .map_err(|_| NetnsError::NoNamespace(name.to_string()))
}

/// Runs `f` with a netlink handle inside namespace `ns` (`None`: the switch's own).
pub fn run_in<T: Send + 'static>(
    ns: Option<&str>,
    f: impl FnOnce(
            Handle,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, NetnsError>> + Send>>
        + Send
        + 'static,
) -> Result<T, NetnsError> {
    let fd = ns.map(open_ns).transpose()?;
    let ns_name = ns.unwrap_or("").to_string();
    std::thread::spawn(move || {
        if let Some(fd) = &fd {
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                |source| NetnsError::Enter {
                    ns: ns_name,
                    source,
                },
            )?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| NetnsError::Other(format!("tokio runtime: {e}")))?;
        rt.block_on(async move {
            let (conn, handle, _) = new_connection().map_err(nl)?;
            tokio::spawn(conn);
            f(handle).await
        })
    })
    .join()
    .map_err(|_| NetnsError::Other("netlink thread panicked".into()))?
}

/// Runs a plain closure inside namespace `ns` (ioctls, sysctls).
pub fn with_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    let fd = open_ns(ns)?;
    let ns_name = ns.to_string();
    std::thread::spawn(move || {
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
            NetnsError::Enter {
                ns: ns_name,
                source,
            }
        })?;
        f()
    })
    .join()
    .map_err(|_| NetnsError::Other("namespace thread panicked".into()))?
}

async fn index_of(h: &Handle, name: &str) -> Result<u32, NetnsError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        _ => Err(NetnsError::NoLink(name.to_string())),
    }
}

/// Whether interface `name` exists in the switch's namespace.
pub fn link_exists(name: &str) -> bool {
    let n = name.to_string();
    run_in(None, move |h| {
        Box::pin(async move { index_of(&h, &n).await })
    })
    .is_ok()
}

/// Creates veth `host`<->`peer` in the switch's namespace, brings `host` up
/// with `mtu`, and moves `peer` into namespace `ns` (`None`: it stays here,
/// for a runtime to move).
pub fn create_veth(host: &str, peer: &str, ns: Option<&str>, mtu: u32) -> Result<(), NetnsError> {
    let nsfd = ns.map(open_ns).transpose()?;
    let (host, peer) = (host.to_string(), peer.to_string());
    run_in(None, move |h| {
        Box::pin(async move {
            h.link()
                .add(LinkVeth::new(&host, &peer).mtu(mtu).build())
                .execute()
                .await
                .map_err(nl)?;
            let hi = index_of(&h, &host).await?;
            // NOARP: the switch's end is not the host's; without it the
            // host's kernel, which also sees what the container sends,
            // would answer the container's ARP for the host's addresses
            // (the gateway's among them) with this end's MAC.
            h.link()
                .set(
                    LinkUnspec::new_with_index(hi)
                        .mtu(mtu)
                        .arp(false)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(nl)?;
            let Some(nsfd) = nsfd else {
                return Ok(());
            };
            let pi = index_of(&h, &peer).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(pi)
                        .setns_by_fd(nsfd.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl)?;
            Ok(())
        })
    })
}

/// The name of the interface with MAC `mac` in `ns` (`None`: the switch's
/// own), if there is one.
pub fn link_name_by_mac(ns: Option<&str>, mac: [u8; 6]) -> Result<Option<String>, NetnsError> {
    use netlink_packet_route::link::LinkAttribute;
    run_in(ns, move |h| {
        Box::pin(async move {
            let mut links = h.link().get().execute();
            while let Some(l) = links.try_next().await.map_err(nl)? {
                let has_mac = l
                    .attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Address(m) if m.as_slice() == mac));
                if has_mac {
                    return Ok(l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    }));
                }
            }
            Ok(None)
        })
    })
}

/// Moves interface `name` of the switch's namespace into `ns`.
pub fn move_to_ns(name: &str, ns: &str) -> Result<(), NetnsError> {
    let nsfd = open_ns(ns)?;
    let name = name.to_string();
    run_in(None, move |h| {
        Box::pin(async move {
            let i = index_of(&h, &name).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(i)
                        .setns_by_fd(nsfd.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl)
        })
    })
}

/// Inside `ns` (`None`: the switch's own): renames `from` to `to`, sets MAC,
/// MTU, GSO size (when given), addresses, brings it up.
pub fn configure(
    ns: Option<&str>,
    from: &str,
    to: &str,
    mac: [u8; 6],
    mtu: u32,
    gso_max_size: Option<u32>,
    addrs: Vec<(IpAddr, u8)>,
) -> Result<(), NetnsError> {
    let (from, to) = (from.to_string(), to.to_string());
    run_in(ns, move |h| {
        Box::pin(async move {
            let i = index_of(&h, &from).await?;
            let mut link = LinkUnspec::new_with_index(i)
                .name(to.clone())
                .address(mac.to_vec())
                .mtu(mtu);
            if let Some(g) = gso_max_size {
                link = link.append_extra_attribute(
                    netlink_packet_route::link::LinkAttribute::GsoMaxSize(g),
                );
            }
            h.link().set(link.build()).execute().await.map_err(|e| {
                NetnsError::Netlink(format!("configure {to}: {e} (is the name already taken?)"))
            })?;
            for (ip, prefix) in addrs {
                h.address().add(i, ip, prefix).execute().await.map_err(nl)?;
            }
            // Announce the address with a gratuitous ARP when the link comes
            // up, so peers that knew it at another MAC (a replaced or
            // restarted container) update at once. This thread is in `ns`,
            // so /proc/sys/net is that namespace's.
            let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{to}/arp_notify"), "1");
            h.link()
                .set(LinkUnspec::new_with_index(i).up().build())
                .execute()
                .await
                .map_err(nl)
        })
    })
}

/// Deletes interface `name` in `ns` (`None`: the switch's own); `Ok(false)`
/// if it was not there.
pub fn delete_link(ns: Option<&str>, name: &str) -> Result<bool, NetnsError> {
    let name = name.to_string();
    run_in(ns, move |h| {
        Box::pin(async move {
            let Ok(i) = index_of(&h, &name).await else {
                return Ok(false);
            };
            h.link().del(i).execute().await.map_err(nl)?;
            Ok(true)
        })
    })
}

/// Sets NOARP on interface `name` of the switch's namespace: the kernel
/// answers no ARP request that arrives on it.
pub fn no_arp(name: &str) -> Result<(), NetnsError> {
    let name = name.to_string();
    run_in(None, move |h| {
        Box::pin(async move {
            let i = index_of(&h, &name).await?;
            h.link()
                .set(LinkUnspec::new_with_index(i).arp(false).build())
                .execute()
                .await
                .map_err(nl)
        })
    })
}

/// Turns IPv6 off on a switch-side interface, so the host does not chatter
/// (router solicitations, DAD) into the network through it.
pub fn quiet_host_end(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
}

/// What the switch needs to know about an interface it shares with the host.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// MAC address.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// IPv4 addresses with prefix lengths, primary first.
    pub v4: Vec<(Ipv4Addr, u8)>,
}

/// Index, MAC and IPv4 addresses of `name` in the switch's namespace.
pub fn link_info(name: &str) -> Result<LinkInfo, NetnsError> {
    use netlink_packet_route::address::AddressAttribute;
    use netlink_packet_route::link::LinkAttribute;
    let name = name.to_string();
    run_in(None, move |h| {
        Box::pin(async move {
            let mut links = h.link().get().match_name(name.clone()).execute();
            let Ok(Some(l)) = links.try_next().await else {
                return Err(NetnsError::NoLink(name));
            };
            let mut mac = [0u8; 6];
            let mut mtu = 1500;
            for a in &l.attributes {
                match a {
                    LinkAttribute::Address(b) if b.len() == 6 => mac.copy_from_slice(b),
                    LinkAttribute::Mtu(m) => mtu = *m,
                    _ => {}
                }
            }
            let index = l.header.index;
            let mut v4 = Vec::new();
            let mut addrs = h.address().get().set_link_index_filter(index).execute();
            while let Some(m) = addrs.try_next().await.map_err(nl)? {
                for a in &m.attributes {
                    if let AddressAttribute::Local(IpAddr::V4(ip)) = a {
                        v4.push((*ip, m.header.prefix_len));
                    }
                }
            }
            Ok(LinkInfo {
                index,
                mac,
                mtu,
                v4,
            })
        })
    })
}

/// An IPv4 route of the main table that leaves through one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V4Route {
    /// Destination prefix.
    pub dst: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
    /// Gateway, if not directly connected.
    pub via: Option<Ipv4Addr>,
}

/// The main table's IPv4 unicast routes through interface `index`.
pub fn routes_via(index: u32) -> Result<Vec<V4Route>, NetnsError> {
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteType};
    run_in(None, move |h| {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut routes = h
                .route()
                .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            while let Some(r) = routes.try_next().await.map_err(nl)? {
                if r.header.kind != RouteType::Unicast {
                    continue;
                }
                let (mut dst, mut via, mut oif, mut table) =
                    (Ipv4Addr::UNSPECIFIED, None, None, r.header.table as u32);
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        RouteAttribute::Table(t) => table = *t,
                        _ => {}
                    }
                }
                if oif == Some(index) && table == 254 {
                    out.push(V4Route {
                        dst,
                        len: r.header.destination_prefix_length,
                        via,
                    });
                }
            }
            Ok(out)
        })
    })
}

/// The kernel's resolved IPv4 neighbours on interface `index`.
pub fn neighbours(index: u32) -> Result<Vec<(Ipv4Addr, [u8; 6])>, NetnsError> {
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
    run_in(None, move |h| {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut ns = h.neighbours().get().execute();
            while let Some(n) = ns.try_next().await.map_err(nl)? {
                if n.header.ifindex != index
                    || matches!(
                        n.header.state,
                        NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
                    )
                {
                    continue;
                }
                let (mut ip, mut mac) = (None, None);
                for a in &n.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                            let mut m = [0u8; 6];
                            m.copy_from_slice(l);
                            mac = Some(m);
                        }
                        _ => {}
                    }
                }
                if let (Some(ip), Some(mac)) = (ip, mac) {
                    out.push((ip, mac));
                }
            }
            Ok(out)
        })
    })
}

/// Asks the kernel to resolve (or re-confirm) `ip` on interface `index`, as
/// if it were about to send to it (`NTF_USE`); the answer shows up in
/// [`neighbours`].
pub fn neighbour_use(index: u32, ip: Ipv4Addr) -> Result<(), NetnsError> {
    use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
    run_in(None, move |h| {
        Box::pin(async move {
            h.neighbours()
                .add(index, IpAddr::V4(ip))
                .flags(NeighbourFlags::Use)
                .state(NeighbourState::Delay)
                .replace()
                .execute()
                .await
                .map_err(nl)
        })
    })
}

/// Adds a default route via `gw` inside `ns`; `Ok(false)` if it has one.
pub fn add_default_route(ns: &str, gw: Ipv4Addr) -> Result<bool, NetnsError> {
    run_in(Some(ns), move |h| {
        Box::pin(async move {
            let msg = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .build();
            match h.route().add(msg).execute().await {
                Ok(()) => Ok(true),
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.code.map(|c| c.get()) == Some(-libc::EEXIST) =>
                {
                    Ok(false)
                }
                Err(e) => Err(nl(e)),
            }
        })
    })
}
