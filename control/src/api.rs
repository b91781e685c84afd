//! The management protocol: one JSON request per line on the Unix socket,
//! one JSON response line back.
use crate::config::{NetworkConfig, PortKind};
use serde::{Deserialize, Serialize};

/// How an attached container interface is built.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttachKind {
    /// A TAP device moved into the namespace (virtio-net offloads, fastest TCP).
    Tap,
    /// A veth pair, AF_XDP on the host end (fastest small packets).
    Veth,
}

/// A request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Create a network.
    NetworkCreate(NetworkConfig),
    /// List networks.
    NetworkLs,
    /// One network in detail.
    NetworkInspect {
        /// Name.
        name: String,
    },
    /// Remove a network (must have no ports).
    NetworkRm {
        /// Name.
        name: String,
    },
    /// Create a container interface in a namespace and attach it.
    Attach {
        /// Network.
        network: String,
        /// Namespace name (`/run/netns/NAME`).
        netns: String,
        /// Interface name inside it.
        ifname: String,
        /// TAP or veth.
        kind: AttachKind,
        /// Address with prefix.
        ip: Option<String>,
        /// MAC address.
        mac: Option<String>,
    },
    /// Remove an attached interface.
    Detach {
        /// Network.
        network: String,
        /// Namespace.
        netns: String,
        /// Interface name inside it.
        ifname: String,
    },
    /// Use an existing interface as a port.
    PortAdd {
        /// Network.
        network: String,
        /// Interface.
        iface: String,
        /// How to open it.
        kind: PortKind,
        /// Worker to poll it.
        worker: Option<usize>,
    },
    /// List ports.
    PortLs,
    /// Remove a port by interface name.
    PortRm {
        /// Interface.
        iface: String,
    },
    /// List FDB entries.
    FdbShow {
        /// Only this network.
        network: Option<String>,
    },
    /// Add a static FDB entry.
    FdbAdd {
        /// Network.
        network: String,
        /// MAC.
        mac: String,
        /// Port interface name (local entry).
        #[serde(default)]
        port: Option<String>,
        /// Remote VTEP (overlay entry).
        #[serde(default)]
        vtep: Option<String>,
        /// The MAC's IPv4 address: lets the switch answer ARP for it.
        #[serde(default)]
        ip: Option<String>,
    },
    /// Remove an FDB entry.
    FdbRm {
        /// Network.
        network: String,
        /// MAC.
        mac: String,
    },
    /// Counters.
    Stats,
    /// Declare the uplink.
    UplinkAdd(crate::config::UplinkConfig),
    /// Remove the uplink.
    UplinkRm,
    /// Show the uplink: addresses, routes, next hops.
    UplinkShow,
    /// Publish a container port on the host.
    Publish {
        /// Network of the container.
        network: String,
        /// `IP:PORT` of the container.
        target: String,
        /// Host port or range `N-M` (first free); `None`: any free port.
        host_port: Option<String>,
        /// `tcp` or `udp`.
        proto: Proto,
        /// Host address to listen on (default: all of the host's).
        host_ip: Option<String>,
    },
    /// Withdraw a published port.
    Unpublish {
        /// Network of the container.
        network: String,
        /// Host port.
        host_port: u16,
        /// `tcp` or `udp`.
        proto: Proto,
    },
    /// Tracked connections.
    ConntrackShow,
    /// Add a peer VTEP to an overlay network.
    PeerAdd {
        /// Network.
        network: String,
        /// VTEP address.
        vtep: String,
    },
    /// Remove a peer VTEP.
    PeerRm {
        /// Network.
        network: String,
        /// VTEP address.
        vtep: String,
    },
    /// List peers of every overlay network.
    PeerLs,
    /// Cluster members and sync counters.
    Peers,
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// What went wrong, and what to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Request {
    /// Whether it only reads: listings, stats, status. Everything else
    /// changes the switch (and is logged with its caller).
    pub fn is_query(&self) -> bool {
        matches!(
            self,
            Request::NetworkLs
                | Request::NetworkInspect { .. }
                | Request::PortLs
                | Request::FdbShow { .. }
                | Request::Stats
                | Request::UplinkShow
                | Request::ConntrackShow
                | Request::PeerLs
                | Request::Peers
        )
    }
}

impl Response {
    /// A failure with what to do about it.
    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            data: serde_json::Value::Null,
        }
    }
}

/// A network in listings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// Its configuration.
    #[serde(flatten)]
    pub config: NetworkConfig,
    /// Internal index.
    pub id: u16,
    /// Ports (interface names).
    pub ports: Vec<String>,
    /// Learned MACs right now.
    pub learned_macs: u32,
}

/// A port in listings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortInfo {
    /// Internal index.
    pub id: u16,
    /// Switch-side interface.
    pub iface: String,
    /// Kind.
    pub kind: PortKind,
    /// Network.
    pub network: String,
    /// Polling worker.
    pub worker: usize,
    /// `up`, or `gone: reason`.
    pub status: String,
    /// How the I/O is set up (XDP mode, hugepages, offloads).
    pub mode: String,
    /// Container side, if created by `attach`.
    pub attached: Option<String>,
}

/// An FDB entry in listings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FdbInfo {
    /// Network.
    pub network: String,
    /// MAC.
    pub mac: String,
    /// Port interface.
    pub port: String,
    /// `static` or `learned`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Seconds since last seen.
    pub age_secs: u32,
    /// For `synced` entries: the host that announced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// For `synced` entries: when it was installed here (µs since the Unix
    /// epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_unix_us: Option<u64>,
}
