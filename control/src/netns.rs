//! Interfaces in other network namespaces, through netlink (rtnetlink).
//!
//! Each operation runs on a short-lived thread that has entered the target
//! namespace (`setns`), so its netlink socket talks to that namespace's
//! kernel tables; the switch's own threads never change namespace.
use futures::TryStreamExt;
use rtnetlink::{new_connection, Handle, LinkUnspec, LinkVeth};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// A netlink or namespace operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace does not exist.
    #[error("network namespace {0:?} not found (expected /run/netns/{0}; create it with `ip netns add {0}`)")]
    NoNamespace(String),
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

/// Opens `/run/netns/NAME`.
pub fn open_ns(name: &str) -> Result<OwnedFd, NetnsError> {
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
/// with `mtu`, and moves `peer` into namespace `ns`.
pub fn create_veth(host: &str, peer: &str, ns: &str, mtu: u32) -> Result<(), NetnsError> {
    let nsfd = open_ns(ns)?;
    let (host, peer) = (host.to_string(), peer.to_string());
    run_in(None, move |h| {
        Box::pin(async move {
            h.link()
                .add(LinkVeth::new(&host, &peer).mtu(mtu).build())
                .execute()
                .await
                .map_err(nl)?;
            let hi = index_of(&h, &host).await?;
            h.link()
                .set(LinkUnspec::new_with_index(hi).mtu(mtu).up().build())
                .execute()
                .await
                .map_err(nl)?;
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

/// Inside `ns`: renames `from` to `to`, sets MAC, MTU, addresses, brings it up.
pub fn configure(
    ns: &str,
    from: &str,
    to: &str,
    mac: [u8; 6],
    mtu: u32,
    addrs: Vec<(IpAddr, u8)>,
) -> Result<(), NetnsError> {
    let (from, to) = (from.to_string(), to.to_string());
    run_in(Some(ns), move |h| {
        Box::pin(async move {
            let i = index_of(&h, &from).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(i)
                        .name(to.clone())
                        .address(mac.to_vec())
                        .mtu(mtu)
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| {
                    NetnsError::Netlink(format!("configure {to}: {e} (is the name already taken?)"))
                })?;
            for (ip, prefix) in addrs {
                h.address().add(i, ip, prefix).execute().await.map_err(nl)?;
            }
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

/// Turns IPv6 off on a switch-side interface, so the host does not chatter
/// (router solicitations, DAD) into the network through it.
pub fn quiet_host_end(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
}
