//! Service discovery: the switch answers DNS for its networks, as Docker's
//! embedded DNS and aardvark-dns do for theirs.
//!
//! Every network with a gateway answers queries sent to its gateway
//! address (the host's interface on the network), port 53, UDP and TCP:
//! A records for the names and aliases of the containers attached to that
//! network, PTR records for their addresses. A container on two networks
//! is found on each by that network's containers only: each network has its
//! own names ([`NetZone`]). Other names are forwarded to upstream resolvers
//! (the host's `/etc/resolv.conf`) and their answers cached as their TTLs
//! allow; an `--internal` network forwards nothing.
//!
//! The answering runs in its own thread ([`server`]); control publishes the
//! networks' names to it ([`Resolver::set`]) whenever they change, as it
//! publishes snapshots to the workers. No worker ever waits on it: queries
//! reach it through the host's interface like any traffic for the host.
pub mod answer;
pub mod cache;
mod server;

use crossbeam::channel::Sender;
use mio::{Poll, Waker};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use server::{MAX_QUERY, MAX_TCP};

/// One network's names, as the resolver answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetZone {
    /// The network's name (for logs).
    pub network: String,
    /// Its gateway address: where the resolver listens for it.
    pub gw: Ipv4Addr,
    /// Its subnet (address, prefix length): only its containers are answered.
    pub subnet: (Ipv4Addr, u8),
    /// Where other names are asked, in order; none: nothing is forwarded.
    pub upstreams: Vec<SocketAddr>,
    /// Names and aliases (lowercase, no final dot) → addresses.
    pub names: HashMap<String, Vec<Ipv4Addr>>,
    /// Address → the container's name.
    pub ptr: HashMap<Ipv4Addr, String>,
    /// A container's address on this network → the gateways of the other
    /// networks its namespace is attached to: it sees their names too.
    pub also: HashMap<Ipv4Addr, Vec<Ipv4Addr>>,
}

impl NetZone {
    /// Whether `ip` is in the network's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let len = self.subnet.1.min(32);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        (u32::from(ip) ^ u32::from(self.subnet.0)) & mask == 0
    }
}

/// What the resolver has done, by outcome.
#[derive(Debug, Default, Serialize)]
pub struct DnsStats {
    /// Queries taken (from a network's own containers, within the rate).
    pub queries: AtomicU64,
    /// Answered from the network's names (A, PTR, NXDOMAIN for its own
    /// addresses, REFUSED where nothing is forwarded).
    pub answered: AtomicU64,
    /// Asked upstream.
    pub forwarded: AtomicU64,
    /// Answered from the cache.
    pub cache_hits: AtomicU64,
    /// Dropped: not from the network's subnet (e.g. from the uplink's side).
    pub refused_source: AtomicU64,
    /// Dropped: over the per-source rate.
    pub rate_limited: AtomicU64,
    /// Dropped: over the size bound.
    pub oversized: AtomicU64,
    /// Malformed (answered FORMERR when they had a header, else dropped).
    pub malformed: AtomicU64,
    /// TCP clients refused: over the per-source or overall bound.
    pub tcp_refused: AtomicU64,
    /// Not a plain query of class IN (answered NOTIMP).
    pub unsupported: AtomicU64,
    /// An upstream did not answer in time.
    pub upstream_timeouts: AtomicU64,
    /// Answered SERVFAIL: no upstream answered, or too many questions waited.
    pub servfail: AtomicU64,
}

/// The resolver's counters as `vswitch stats` shows them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsCounters {
    /// See [`DnsStats`].
    pub queries: u64,
    /// See [`DnsStats`].
    pub answered: u64,
    /// See [`DnsStats`].
    pub forwarded: u64,
    /// See [`DnsStats`].
    pub cache_hits: u64,
    /// See [`DnsStats`].
    pub refused_source: u64,
    /// See [`DnsStats`].
    pub rate_limited: u64,
    /// See [`DnsStats`].
    pub oversized: u64,
    /// See [`DnsStats`].
    pub malformed: u64,
    /// See [`DnsStats`].
    #[serde(default)]
    pub tcp_refused: u64,
    /// See [`DnsStats`].
    pub unsupported: u64,
    /// See [`DnsStats`].
    pub upstream_timeouts: u64,
    /// See [`DnsStats`].
    pub servfail: u64,
}

impl DnsStats {
    /// A copy of the counters.
    pub fn counters(&self) -> DnsCounters {
        let l = |a: &AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        DnsCounters {
            queries: l(&self.queries),
            answered: l(&self.answered),
            forwarded: l(&self.forwarded),
            cache_hits: l(&self.cache_hits),
            refused_source: l(&self.refused_source),
            rate_limited: l(&self.rate_limited),
            oversized: l(&self.oversized),
            malformed: l(&self.malformed),
            tcp_refused: l(&self.tcp_refused),
            unsupported: l(&self.unsupported),
            upstream_timeouts: l(&self.upstream_timeouts),
            servfail: l(&self.servfail),
        }
    }
}

/// Control's handle on the resolver thread (which lives as long as the
/// process).
#[derive(Debug, Clone)]
pub struct Resolver {
    tx: Sender<server::Cmd>,
    waker: Arc<Waker>,
    /// Its counters.
    pub stats: Arc<DnsStats>,
}

impl std::fmt::Debug for server::Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            server::Cmd::Zones(z) => write!(f, "Zones({})", z.len()),
            server::Cmd::Limits(l) => write!(f, "Limits({l:?})"),
        }
    }
}

impl Resolver {
    /// Starts the resolver thread (`vswitch-dns`), with no network yet.
    pub fn start(limits: crate::config::DnsConfig) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), server::WAKE)?);
        let (tx, rx) = crossbeam::channel::unbounded();
        let stats = Arc::new(DnsStats::default());
        let srv = server::Server::new(poll, rx, stats.clone(), limits)?;
        std::thread::Builder::new()
            .name("vswitch-dns".into())
            .spawn(move || srv.run())?;
        Ok(Self { tx, waker, stats })
    }

    /// New bounds per source (a reloaded `[dns]`).
    pub fn limit(&self, limits: crate::config::DnsConfig) {
        if self.tx.send(server::Cmd::Limits(limits)).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// The networks' names now (the resolver listens on exactly these
    /// networks' gateways).
    pub fn set(&self, zones: Vec<NetZone>) {
        if self.tx.send(server::Cmd::Zones(zones)).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// The IPv4 nameservers of a `resolv.conf` text, port 53, in order.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
        })
        .map(|ip| SocketAddr::new(ip.into(), 53))
        .collect()
}

/// What `vswitch attach` writes to `/etc/netns/NS/resolv.conf` (which
/// `ip netns exec` shows the container as its `/etc/resolv.conf`): the
/// network's gateway as nameserver. The first line marks it as the
/// switch's, so that it is only ever replaced or removed by the switch.
pub fn resolv_conf_for(gw: Ipv4Addr) -> String {
    format!("{RESOLV_MARK}\nnameserver {gw}\noptions ndots:0\n")
}

/// First line of a `resolv.conf` the switch wrote.
pub const RESOLV_MARK: &str = "# written by vswitch: the network's resolver on its gateway";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_in_order_and_ipv6_ones_left_out() {
        let t = "# comment\nsearch example.org\nnameserver 192.0.2.1\nnameserver ::1\n nameserver 192.0.2.2 \noptions edns0\n";
        assert_eq!(
            nameservers(t),
            vec![
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "192.0.2.2:53".parse().unwrap()
            ]
        );
    }
}
