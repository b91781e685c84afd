//! The TOML configuration file.
use serde::{Deserialize, Serialize};
use std::path::Path;
use vswitch_engine::worker::IdleMode;

/// Whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Switch-wide settings.
    #[serde(default)]
    pub switch: SwitchConfig,
    /// Worker threads (at least one).
    #[serde(default = "default_workers")]
    pub workers: Vec<WorkerConfig>,
    /// Networks created at start.
    #[serde(default)]
    pub networks: Vec<NetworkConfig>,
    /// Existing interfaces attached at start.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// The host's external interface: egress (SNAT) and published ports.
    #[serde(default)]
    pub uplink: Option<UplinkConfig>,
    /// Peer-table sync with the other hosts (overlay networks).
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    /// The networks' resolver.
    #[serde(default)]
    pub dns: DnsConfig,
}

/// `[dns]`: how much one container may ask of its network's resolver.
/// Beyond these, queries and TCP clients are refused and counted
/// (`vswitch stats`); a reload applies new values at once.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Queries a second one source may send (default 2,000).
    #[serde(default = "default_dns_rate")]
    pub rate: u32,
    /// Queries one source may send at once, after a quiet spell (default
    /// 4,000).
    #[serde(default = "default_dns_burst")]
    pub burst: u32,
    /// TCP clients one source may hold open (default 16).
    #[serde(default = "default_dns_tcp")]
    pub tcp_per_source: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            rate: default_dns_rate(),
            burst: default_dns_burst(),
            tcp_per_source: default_dns_tcp(),
        }
    }
}

fn default_dns_rate() -> u32 {
    2000
}

fn default_dns_burst() -> u32 {
    4000
}

fn default_dns_tcp() -> u32 {
    16
}

/// `[cluster]`: hosts sync their overlay peer tables themselves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `gossip` (embedded, default) or `etcd`.
    #[serde(default)]
    pub backend: ClusterBackend,
    /// Gossip: UDP address the agent binds, e.g. `10.0.0.1:7946`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Address the other hosts reach this one on; default: `listen` (which
    /// must then be a specific address).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Gossip: seed members (`ADDR:PORT`); any one alive is enough to join.
    #[serde(default)]
    pub join: Vec<String>,
    /// Gossip: file holding the shared key (at least 16 bytes, e.g. 32
    /// random ones).
    #[serde(default)]
    pub key_file: Option<String>,
    /// Host name, unique in the cluster; default: the advertised address
    /// (gossip) or the host name (etcd).
    #[serde(default)]
    pub name: Option<String>,
    /// Gossip: SWIM probe period.
    #[serde(default = "default_probe_ms")]
    pub probe_ms: u64,
    /// Gossip: a suspect member is declared down after this.
    #[serde(default = "default_suspect_ms")]
    pub suspect_ms: u64,
    /// Gossip: anti-entropy period.
    #[serde(default = "default_anti_entropy_ms")]
    pub anti_entropy_ms: u64,
    /// Gossip: tombstones of deleted entries live this long.
    #[serde(default = "default_tombstone_secs")]
    pub tombstone_secs: u64,
    /// etcd: client URLs (`http://10.0.0.5:2379`).
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    /// etcd: key prefix shared by the cluster.
    #[serde(default = "default_etcd_prefix")]
    pub etcd_prefix: String,
    /// etcd: lease TTL; a dead host is withdrawn this long after its last
    /// keep-alive.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: u64,
}

/// Which store the cluster tables live in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClusterBackend {
    /// Embedded SWIM gossip, no external service.
    #[default]
    Gossip,
    /// etcd v3 (cargo feature `etcd`).
    Etcd,
}

fn default_probe_ms() -> u64 {
    300
}
fn default_suspect_ms() -> u64 {
    1200
}
fn default_anti_entropy_ms() -> u64 {
    500
}
fn default_tombstone_secs() -> u64 {
    300
}
fn default_etcd_prefix() -> String {
    "/vswitch".into()
}
fn default_lease_ttl() -> u64 {
    2
}

impl ClusterSection {
    /// An empty section (gossip defaults) for the `vswitch run --cluster-*`
    /// flags to fill.
    pub fn empty() -> Self {
        Self {
            backend: ClusterBackend::Gossip,
            listen: None,
            advertise: None,
            join: Vec::new(),
            key_file: None,
            name: None,
            probe_ms: default_probe_ms(),
            suspect_ms: default_suspect_ms(),
            anti_entropy_ms: default_anti_entropy_ms(),
            tombstone_secs: default_tombstone_secs(),
            etcd_endpoints: Vec::new(),
            etcd_prefix: default_etcd_prefix(),
            lease_ttl_secs: default_lease_ttl(),
        }
    }

    /// Checks the section; returns the parsed addresses.
    pub fn addrs(&self) -> Result<ClusterAddrs, ConfigError> {
        let parse = |what: &str, s: &str| -> Result<std::net::SocketAddr, ConfigError> {
            s.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "cluster {what} {s:?} is not an ADDR:PORT like 10.0.0.1:7946"
                ))
            })
        };
        let listen = self
            .listen
            .as_deref()
            .map(|l| parse("listen", l))
            .transpose()?;
        let advertise = match (&self.advertise, listen) {
            (Some(a), _) => Some(parse("advertise", a)?),
            (None, Some(l)) if l.ip().is_unspecified() => {
                return Err(ConfigError::Invalid(format!(
                    "cluster listen {l} is a wildcard; give `advertise` (the address other hosts reach this one on)"
                )))
            }
            (None, l) => l,
        };
        let join = self
            .join
            .iter()
            .map(|j| parse("join", j))
            .collect::<Result<Vec<_>, _>>()?;
        match self.backend {
            ClusterBackend::Gossip => {
                if listen.is_none() {
                    return Err(ConfigError::Invalid(
                        "the gossip cluster needs `listen = \"ADDR:PORT\"` (or --cluster-listen)"
                            .into(),
                    ));
                }
                if self.key_file.is_none() {
                    return Err(ConfigError::Invalid(
                        "the gossip cluster needs `key_file` (or --cluster-key-file): 16+ secret bytes shared by every host".into(),
                    ));
                }
                if self.probe_ms == 0 || self.suspect_ms == 0 || self.anti_entropy_ms == 0 {
                    return Err(ConfigError::Invalid(
                        "cluster probe_ms, suspect_ms and anti_entropy_ms must be above 0".into(),
                    ));
                }
            }
            ClusterBackend::Etcd => {
                if self.etcd_endpoints.is_empty() {
                    return Err(ConfigError::Invalid(
                        "the etcd cluster backend needs `etcd_endpoints = [\"http://ADDR:2379\"]` (or --cluster-etcd)".into(),
                    ));
                }
                if self.lease_ttl_secs == 0 {
                    return Err(ConfigError::Invalid(
                        "cluster lease_ttl_secs must be above 0".into(),
                    ));
                }
            }
        }
        Ok(ClusterAddrs {
            listen,
            advertise,
            join,
        })
    }
}

/// Parsed `[cluster]` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAddrs {
    /// Bind (gossip).
    pub listen: Option<std::net::SocketAddr>,
    /// Advertised.
    pub advertise: Option<std::net::SocketAddr>,
    /// Seeds.
    pub join: Vec<std::net::SocketAddr>,
}

/// The uplink (`vswitch uplink add` takes the same settings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Interface name (e.g. `eth0`).
    pub iface: String,
    /// Source address for egress; default: the interface's first IPv4 address.
    pub snat_ip: Option<String>,
    /// SNAT source ports `LO-HI`; default: the ports above the kernel's
    /// ephemeral range (`net.ipv4.ip_local_port_range`).
    pub snat_ports: Option<String>,
    /// Worker that polls it (default: the least loaded).
    pub worker: Option<usize>,
    /// Local VTEP address for overlay networks; default: the SNAT address.
    #[serde(default)]
    pub vtep: Option<String>,
}

/// Switch-wide settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// FDB slots shared by all networks (about twice the sum of MAC limits; at that load fewer than 1 in 10,000 learns find both buckets full).
    #[serde(default = "default_fdb_capacity")]
    pub fdb_capacity: usize,
    /// Tracked connections (NAT flows) at most, over all workers, 1 to
    /// 8,388,608; new flows beyond are dropped and counted, established
    /// ones keep working. Each worker's table is sized for all of them (one
    /// worker's containers may hold every flow) and reserves ~13 bytes of
    /// index a flow at start (3.4 MiB per worker for the default); flow
    /// slots take memory as flows arrive.
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            fdb_capacity: default_fdb_capacity(),
            max_flows: default_max_flows(),
        }
    }
}

fn default_max_flows() -> usize {
    262_144
}

/// Core numbers a worker may name: those of a CPU set (`CPU_SETSIZE`).
pub const MAX_CORE: usize = 1024;

/// One worker thread.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Core to pin to; omit to let the scheduler choose among the cores no
    /// pinned worker takes.
    pub core: Option<usize>,
    /// `{ mode = "busy" }` or `{ mode = "adaptive", idle_after_us = 200, max_sleep_ms = 100 }`.
    #[serde(default)]
    pub idle: IdleMode,
    /// The worker thread's nice value, -20 (the default: packets go before
    /// the processes sharing its core, as the kernel's own packet path in
    /// softirq does) to 19.
    #[serde(default = "default_nice")]
    pub nice: i32,
}

/// Nice values the kernel takes.
pub const NICE_RANGE: std::ops::RangeInclusive<i32> = -20..=19;

fn default_nice() -> i32 {
    -20
}

/// A network (bridge domain).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Unique name.
    pub name: String,
    /// IPv4 subnet, e.g. `10.1.0.0/24`: the switch becomes its gateway,
    /// hands out addresses on attach and gives the host an interface on it.
    pub subnet: Option<String>,
    /// Gateway address inside the subnet (default: its first address).
    pub gateway: Option<String>,
    /// MTU given to attached interfaces; 0: automatic (1500, or 1450 on an
    /// overlay: the underlay's 1500 minus the 50 bytes of VXLAN).
    #[serde(default)]
    pub mtu: u32,
    /// Learned MAC entries allowed in this network.
    #[serde(default = "default_mac_limit")]
    pub mac_limit: u32,
    /// Seconds a learned MAC lives without being seen (0: never ages).
    #[serde(default = "default_aging")]
    pub aging_secs: u32,
    /// `bridge` (this host only) or `overlay` (VXLAN across hosts).
    #[serde(default)]
    pub driver: Driver,
    /// VXLAN network identifier (overlay networks), 1..=16777215.
    #[serde(default)]
    pub vni: Option<u32>,
    /// Peer VTEP addresses (overlay networks): head-end replication list.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Learn remote MACs from decapsulated frames (overlay networks).
    #[serde(default = "default_true")]
    pub learning: bool,
    /// Outer TTL of VXLAN packets.
    #[serde(default = "default_ttl")]
    pub ttl: u8,
    /// Set don't-fragment on VXLAN packets.
    #[serde(default)]
    pub df: bool,
    /// No egress and no published ports (`network create --internal`).
    #[serde(default)]
    pub internal: bool,
    /// Containers cannot reach each other, only the gateway, the host and
    /// the outside (`network create --no-icc`).
    #[serde(default)]
    pub no_icc: bool,
    /// Made by a runtime, which removes it too: a Docker network id.
    /// `None`: made by the config file or the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The interface a runtime's container gets when the runtime leaves
    /// the choice to the switch (Docker's endpoints); default TAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_kind: Option<crate::api::AttachKind>,
    /// Resolvers (IPv4 addresses) the network's resolver asks for names
    /// that are not the network's own (`network create --dns`); none: the
    /// host's `/etc/resolv.conf`. An `--internal` network asks no one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

impl NetworkConfig {
    /// A bridge network named `name` with every default.
    pub fn named(name: &str) -> Self {
        NetworkConfig {
            name: name.to_string(),
            subnet: None,
            gateway: None,
            mtu: 0,
            mac_limit: default_mac_limit(),
            aging_secs: default_aging(),
            driver: Driver::Bridge,
            vni: None,
            peers: Vec::new(),
            learning: true,
            ttl: default_ttl(),
            df: false,
            internal: false,
            no_icc: false,
            owner: None,
            attach_kind: None,
            dns: Vec::new(),
        }
    }
}

/// How a network reaches beyond this host.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A bridge domain on this host.
    #[default]
    Bridge,
    /// VXLAN across hosts (RFC 7348), over the uplink.
    Overlay,
}

fn default_true() -> bool {
    true
}
fn default_ttl() -> u8 {
    64
}

/// Kinds of port.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// AF_XDP socket on an interface.
    Afxdp,
    /// TAP device with virtio-net headers.
    Tap,
    /// AF_PACKET socket with virtio-net headers (the uplink, veth
    /// containers).
    Packet,
}

impl std::fmt::Display for PortKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            PortKind::Afxdp => "afxdp",
            PortKind::Tap => "tap",
            PortKind::Packet => "packet",
        })
    }
}

/// An existing interface as a port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Network it joins.
    pub network: String,
    /// Interface name.
    pub iface: String,
    /// How to open it.
    pub kind: PortKind,
    /// Worker that polls it (default: the least loaded).
    pub worker: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            switch: SwitchConfig::default(),
            workers: default_workers(),
            networks: Vec::new(),
            ports: Vec::new(),
            uplink: None,
            cluster: None,
            dns: DnsConfig::default(),
        }
    }
}

fn default_workers() -> Vec<WorkerConfig> {
    vec![WorkerConfig {
        core: None,
        idle: IdleMode::default(),
        nice: default_nice(),
    }]
}
fn default_fdb_capacity() -> usize {
    1 << 18
}
fn default_mac_limit() -> u32 {
    16384
}
fn default_aging() -> u32 {
    300
}

/// A configuration that cannot be used, and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Syntax or unknown keys.
    #[error("config {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// Semantics.
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let c: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers.is_empty() {
            return Err(ConfigError::Invalid(
                "at least one [[workers]] entry is needed".into(),
            ));
        }
        let max_flows = self.switch.max_flows;
        if !(1..=vswitch_engine::conntrack::MAX_FLOWS).contains(&max_flows) {
            return Err(ConfigError::Invalid(format!(
                "switch.max_flows = {max_flows}: give a number from 1 to {} (the conntrack index \
                 keeps a flow's slot in 23 bits)",
                vswitch_engine::conntrack::MAX_FLOWS
            )));
        }
        let d = self.dns;
        if d.rate == 0 || d.burst == 0 {
            return Err(ConfigError::Invalid(format!(
                "dns.rate = {}, dns.burst = {}: give at least 1 each (queries a second, and \
                 at once, one container may send)",
                d.rate, d.burst
            )));
        }
        if !(1..=crate::dns::MAX_TCP as u32).contains(&d.tcp_per_source) {
            return Err(ConfigError::Invalid(format!(
                "dns.tcp_per_source = {}: give a number from 1 to {}",
                d.tcp_per_source,
                crate::dns::MAX_TCP
            )));
        }
        // Whether a worker's core is one this process may use is checked at
        // start, against its CPU affinity (`vswitch_io::placement::Plan`):
        // the configuration alone cannot know.
        for (i, w) in self.workers.iter().enumerate() {
            if !NICE_RANGE.contains(&w.nice) {
                return Err(ConfigError::Invalid(format!(
                    "workers[{i}].nice = {}: give a nice value from -20 to 19",
                    w.nice
                )));
            }
            if let Some(c) = w.core {
                if c >= MAX_CORE {
                    return Err(ConfigError::Invalid(format!(
                        "workers[{i}].core = {c}: core numbers go up to {}",
                        MAX_CORE - 1
                    )));
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for n in &self.networks {
            validate_network(n)?;
            if !names.insert(&n.name) {
                return Err(ConfigError::Invalid(format!(
                    "network {:?} is defined twice",
                    n.name
                )));
            }
        }
        for p in &self.ports {
            if !names.contains(&p.network) {
                return Err(ConfigError::Invalid(format!(
                    "port {:?} names network {:?}, which no [[networks]] entry defines",
                    p.iface, p.network
                )));
            }
            if let Some(w) = p.worker {
                if w >= self.workers.len() {
                    return Err(ConfigError::Invalid(format!(
                        "port {:?} names worker {w}, but only {} are configured",
                        p.iface,
                        self.workers.len()
                    )));
                }
            }
        }
        if let Some(c) = &self.cluster {
            c.addrs()?;
        }
        if let Some(u) = &self.uplink {
            if let Some(w) = u.worker {
                if w >= self.workers.len() {
                    return Err(ConfigError::Invalid(format!(
                        "uplink {:?} names worker {w}, but only {} are configured",
                        u.iface,
                        self.workers.len()
                    )));
                }
            }
            if let Some(r) = &u.snat_ports {
                parse_port_range(r)?;
            }
            if let Some(ip) = &u.snat_ip {
                ip.parse::<std::net::Ipv4Addr>().map_err(|_| {
                    ConfigError::Invalid(format!("uplink snat_ip {ip:?} is not an IPv4 address"))
                })?;
            }
        }
        Ok(())
    }
}

/// Parses `LO-HI` (or a single port) into an inclusive range.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), ConfigError> {
    let bad = || {
        ConfigError::Invalid(format!(
            "port range {s:?} must be PORT or LO-HI with 1 <= LO <= HI <= 65535"
        ))
    };
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let lo: u16 = a.parse().map_err(|_| bad())?;
    let hi: u16 = b.parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// Checks one network definition (config file and `network create` alike).
pub fn validate_network(n: &NetworkConfig) -> Result<(), ConfigError> {
    if n.name.is_empty()
        || n.name.len() > 64
        || !n
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ConfigError::Invalid(format!(
            "network name {:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
            n.name
        )));
    }
    if n.mtu != 0 && !(68..=9000).contains(&n.mtu) {
        return Err(ConfigError::Invalid(format!(
            "network {:?}: mtu {} is outside 68..=9000",
            n.name, n.mtu
        )));
    }
    let subnet = match &n.subnet {
        Some(s) => Some(s.parse::<ipnetwork::IpNetwork>().map_err(|e| {
            ConfigError::Invalid(format!(
                "network {:?}: subnet {s:?} is not a CIDR like 10.1.0.0/24: {e}",
                n.name
            ))
        })?),
        None => None,
    };
    if let Some(s) = subnet {
        if !s.is_ipv4() || s.prefix() > 30 || s.ip() != s.network() {
            return Err(ConfigError::Invalid(format!(
                "network {:?}: subnet {s} must be an IPv4 network address with a prefix of /30 or shorter, like 10.1.0.0/24",
                n.name
            )));
        }
    }
    match (n.driver, n.vni) {
        (Driver::Overlay, Some(v)) if (1..=0xff_ffff).contains(&v) => {}
        (Driver::Overlay, _) => {
            return Err(ConfigError::Invalid(format!(
                "network {:?}: an overlay network needs --vni between 1 and 16777215",
                n.name
            )))
        }
        (Driver::Bridge, _) if !n.peers.is_empty() || n.vni.is_some() => {
            return Err(ConfigError::Invalid(format!(
                "network {:?}: --vni and peers are for --driver overlay",
                n.name
            )))
        }
        _ => {}
    }
    for p in &n.peers {
        p.parse::<std::net::Ipv4Addr>().map_err(|_| {
            ConfigError::Invalid(format!(
                "network {:?}: peer {p:?} is not an IPv4 VTEP address",
                n.name
            ))
        })?;
    }
    for d in &n.dns {
        d.parse::<std::net::Ipv4Addr>().map_err(|_| {
            ConfigError::Invalid(format!(
                "network {:?}: dns {d:?} is not an IPv4 address of a resolver",
                n.name
            ))
        })?;
    }
    if !n.dns.is_empty() && subnet.is_none() {
        return Err(ConfigError::Invalid(format!(
            "network {:?}: --dns needs a --subnet (the resolver answers on the gateway)",
            n.name
        )));
    }
    if (n.internal || n.no_icc) && subnet.is_none() {
        return Err(ConfigError::Invalid(format!(
            "network {:?}: --internal and --no-icc need a --subnet",
            n.name
        )));
    }
    if let Some(g) = &n.gateway {
        let ip: std::net::IpAddr = g.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "network {:?}: gateway {g:?} is not an IP address",
                n.name
            ))
        })?;
        match subnet {
            Some(s) if !s.contains(ip) => {
                return Err(ConfigError::Invalid(format!(
                    "network {:?}: gateway {ip} is outside subnet {s}",
                    n.name
                )))
            }
            None => {
                return Err(ConfigError::Invalid(format!(
                    "network {:?}: a gateway needs a subnet",
                    n.name
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(s).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn examples_parse() {
        for f in [
            "demo.toml",
            "edge-gateway.toml",
            "host-gateway.toml",
            "cluster-host.toml",
        ] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(f);
            Config::load(&p).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn cluster_errors_name_what_to_fix() {
        let e = parse("[cluster]\nlisten = \"0.0.0.0:7946\"\nkey_file = \"k\"\n").unwrap_err();
        assert!(e.contains("advertise"), "{e}");
        let e = parse("[cluster]\nlisten = \"10.0.0.1\"\nkey_file = \"k\"\n").unwrap_err();
        assert!(e.contains("ADDR:PORT"), "{e}");
        let e = parse("[cluster]\nlisten = \"10.0.0.1:7946\"\njoin = [\"x\"]\nkey_file = \"k\"\n")
            .unwrap_err();
        assert!(e.contains("join"), "{e}");
        let c = parse("[cluster]\nlisten = \"0.0.0.0:7946\"\nadvertise = \"10.0.0.1:7946\"\nkey_file = \"k\"\n")
            .unwrap();
        let a = c.cluster.unwrap().addrs().unwrap();
        assert_eq!(
            a.advertise.map(|a| a.to_string()).as_deref(),
            Some("10.0.0.1:7946")
        );
        let e = parse("[cluster]\nbackend = \"etcd\"\n").unwrap_err();
        assert!(e.contains("etcd_endpoints"), "{e}");
        let e = parse("[cluster]\nlisten = \"10.0.0.1:7946\"\n").unwrap_err();
        assert!(e.contains("key_file"), "{e}");
        parse("[cluster]\nbackend = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nname = \"a\"\n")
            .unwrap();
    }

    #[test]
    fn errors_name_what_to_fix() {
        let e = parse("[[networks]]\nname = \"a\"\nsubnet = \"10.0.0.0/33\"\n").unwrap_err();
        assert!(e.contains("subnet") && e.contains("CIDR"), "{e}");
        let e =
            parse("[[networks]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\ngateway = \"10.0.1.1\"\n")
                .unwrap_err();
        assert!(e.contains("outside subnet"), "{e}");
        let e =
            parse("[[ports]]\nnetwork = \"x\"\niface = \"v0\"\nkind = \"afxdp\"\n").unwrap_err();
        assert!(e.contains("no [[networks]] entry"), "{e}");
        let e =
            parse("[[ports]]\nnetwork = \"x\"\niface = \"v0\"\nkind = \"bogus\"\n").unwrap_err();
        assert!(e.contains("kind") || e.contains("variant"), "{e}");
        let e = parse("[switch]\nfdb_capacity = 10\nbogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = parse("[[workers]]\ncore = 4096\n").unwrap_err();
        assert!(e.contains("workers[0].core = 4096"), "{e}");
        parse("[[workers]]\ncore = 999\n").unwrap();
        let e = parse("[[workers]]\nnice = -21\n").unwrap_err();
        assert!(e.contains("workers[0].nice = -21"), "{e}");
        let c = parse("[[workers]]\ncore = 1\n[[workers]]\nnice = 5\n").unwrap();
        assert_eq!((c.workers[0].nice, c.workers[1].nice), (-20, 5));
        for bad in [0, 100_000_000] {
            let e = parse(&format!("[switch]\nmax_flows = {bad}\n")).unwrap_err();
            assert!(e.contains("max_flows") && e.contains("8388608"), "{e}");
        }
        parse("[switch]\nmax_flows = 8388608\n").unwrap();
        let e = parse("[dns]\nrate = 0\n").unwrap_err();
        assert!(e.contains("dns.rate = 0"), "{e}");
        let e = parse("[dns]\ntcp_per_source = 5000\n").unwrap_err();
        assert!(e.contains("from 1 to 1024"), "{e}");
        let c = parse("[dns]\nrate = 50000\nburst = 100000\n").unwrap();
        assert_eq!(
            (c.dns.rate, c.dns.burst, c.dns.tcp_per_source),
            (50_000, 100_000, 16)
        );
    }
}
