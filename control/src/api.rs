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
    /// A veth pair; the switch's end is an AF_PACKET socket with virtio-net
    /// headers, so large TCP segments cross whole and the container keeps
    /// its TSO and checksum offload.
    Veth,
    /// A veth pair with an AF_XDP socket on the switch's end: the most
    /// small packets per second, but MTU-sized TCP segments (an XDP program
    /// on a veth turns its peer's TSO off, and the switch turns the
    /// container's checksum offload off: AF_XDP carries no checksum state).
    #[serde(rename = "veth-xdp")]
    VethXdp,
}

impl AttachKind {
    /// A veth pair, however its switch end is opened.
    pub fn is_veth(self) -> bool {
        matches!(self, AttachKind::Veth | AttachKind::VethXdp)
    }

    /// How the switch opens its end.
    pub fn port_kind(self) -> PortKind {
        match self {
            AttachKind::Tap => PortKind::Tap,
            AttachKind::Veth => PortKind::Packet,
            AttachKind::VethXdp => PortKind::Afxdp,
        }
    }
}

/// `true` (a serde default).
pub(crate) fn yes() -> bool {
    true
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
        /// Namespace: a name (`/run/netns/NAME`) or a path to a namespace
        /// file (`/proc/PID/ns/net`).
        netns: String,
        /// Interface name inside it.
        ifname: String,
        /// TAP or veth.
        kind: AttachKind,
        /// Address with prefix.
        ip: Option<String>,
        /// MAC address.
        mac: Option<String>,
        /// Who made it (a CNI container id), for garbage collection.
        #[serde(default)]
        owner: Option<String>,
        /// Names the container goes by on this network.
        #[serde(default)]
        aliases: Vec<String>,
    },
    /// Create a container interface in the switch's own namespace and
    /// attach it, for a runtime that moves it into the container itself
    /// and configures it there (Docker's `Join` names it as `SrcName`).
    AttachHandoff {
        /// Network.
        network: String,
        /// TAP or veth.
        kind: AttachKind,
        /// Address with prefix (the runtime's IPAM), if any.
        ip: Option<String>,
        /// MAC address.
        mac: Option<String>,
        /// Who made it (a Docker endpoint id): the attachment's key.
        owner: String,
        /// Names the container goes by on this network.
        #[serde(default)]
        aliases: Vec<String>,
    },
    /// A runtime moved a handed-off interface into this namespace (a path,
    /// such as Docker's sandbox key).
    AttachJoined {
        /// The attachment's owner.
        owner: String,
        /// The container's namespace.
        netns: String,
    },
    /// Remove every attachment `owner` made (none: nothing to do).
    DetachOwner {
        /// The owner.
        owner: String,
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
        /// Bind the host port (a proxy for the host's own processes, and
        /// proof that the port is free); `false` when a runtime holds it
        /// already (rootful podman's conmon).
        #[serde(default = "yes")]
        bind_host: bool,
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
    /// Who made the attachment (a CNI container or Docker endpoint id),
    /// if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A handed-off interface's name outside the container (the one its
    /// runtime moves, and gives back under that name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<String>,
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

/// What a request answers; [`Response::data`] carries it as JSON (a change
/// with nothing to report is `null`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// A change that succeeded.
    Done,
    /// `network ls`.
    Networks(Vec<NetworkInfo>),
    /// `network inspect`.
    Network(Box<NetworkDetail>),
    /// `attach`.
    Attached(Attached),
    /// `port add`.
    PortAdded(PortAdded),
    /// `port ls`.
    Ports(Vec<PortInfo>),
    /// `fdb show`.
    Fdb(Vec<FdbInfo>),
    /// `stats`.
    Stats(StatsReport),
    /// `uplink show` and `uplink add` (`None`: no uplink).
    Uplink(Option<Box<UplinkInfo>>),
    /// `publish`.
    Published(PublishedPort),
    /// `conntrack show`.
    Conntrack(ConntrackReport),
    /// `peer ls`.
    Peers(Vec<PeerInfo>),
    /// `peers`: the cluster's members and counters.
    Cluster(Box<vswitch_overlay::Status>),
}

/// `network inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkDetail {
    /// As in `network ls`.
    pub network: NetworkInfo,
    /// The gateway's MAC (networks with a subnet).
    pub gateway_mac: Option<String>,
    /// Containers with an address.
    pub containers: Vec<ContainerInfo>,
    /// Published ports.
    pub published: Vec<PublishedInfo>,
    /// Its ports.
    pub ports: Vec<PortInfo>,
}

/// A container with an address on a network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Address.
    pub ip: String,
    /// MAC.
    pub mac: String,
    /// NETNS:IFNAME.
    pub attached: String,
    /// Names it goes by on the network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Who made the attachment (a CNI container or Docker endpoint id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A published port of a network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishedInfo {
    /// TCP or UDP.
    pub proto: Proto,
    /// Port on the host.
    pub host_port: u16,
    /// Host address it is limited to.
    pub host_ip: Option<String>,
    /// CONTAINER_IP:PORT.
    pub target: String,
}

/// `attach`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attached {
    /// Port id.
    pub port: u16,
    /// The interface's MAC.
    pub mac: String,
    /// Its address, if the network gave one.
    pub ip: Option<String>,
    /// The network's gateway.
    pub gateway: Option<String>,
    /// A handed-off interface's name in the switch's namespace, for the
    /// runtime to move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<String>,
}

/// `port add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortAdded {
    /// Port id.
    pub id: u16,
}

/// `stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsReport {
    /// Per port.
    pub ports: Vec<PortStatsEntry>,
    /// Per worker.
    pub workers: Vec<crate::workers::WorkerStats>,
    /// The networks' resolver.
    #[serde(default)]
    pub dns: crate::dns::DnsCounters,
}

/// One port's counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortStatsEntry {
    /// Interface.
    pub port: String,
    /// Network.
    pub network: String,
    /// How it is opened.
    pub kind: crate::config::PortKind,
    /// NETNS:IFNAME for attached containers.
    pub attached: Option<String>,
    /// Counters.
    pub stats: vswitch_engine::stats::PortStatsSnapshot,
}

/// `uplink show`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UplinkInfo {
    /// Interface.
    pub iface: String,
    /// Its MAC.
    pub mac: String,
    /// SNAT source address.
    pub snat_ip: String,
    /// SNAT ports, LO-HI.
    pub snat_ports: String,
    /// Local VTEP.
    pub vtep: String,
    /// MTU.
    pub mtu: u32,
    /// The host's addresses on it.
    pub addresses: Vec<String>,
    /// Routes through it.
    pub routes: Vec<RouteInfo>,
    /// Next hops with their MACs.
    pub neighbours: Vec<NeighbourInfo>,
}

/// A route through the uplink.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteInfo {
    /// PREFIX/LEN.
    pub dst: String,
    /// Gateway (none: on link).
    pub via: Option<String>,
}

/// A next hop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeighbourInfo {
    /// Address.
    pub ip: String,
    /// MAC.
    pub mac: String,
}

/// `publish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The host port chosen.
    pub host_port: u16,
    /// TCP or UDP.
    pub proto: Proto,
    /// CONTAINER_IP:PORT.
    pub target: String,
}

/// `conntrack show`.
#[derive(Debug, Clone, Serialize)]
pub struct ConntrackReport {
    /// Every flow.
    pub flows: Vec<FlowInfo>,
    /// How many.
    pub count: usize,
    /// The bound.
    pub max: usize,
    /// Memory per flow at the bound.
    pub bytes_per_flow: usize,
    /// Flows created since start.
    pub created: u64,
    /// Flows expired since start.
    pub expired: u64,
    /// New flows refused: table full.
    pub refused_full: u64,
}

/// One tracked flow.
#[derive(Debug, Clone, Serialize)]
pub struct FlowInfo {
    /// First packet's tuple.
    pub orig: TupleInfo,
    /// Replies' tuple.
    pub reply: TupleInfo,
    /// Connection state.
    pub state: vswitch_engine::conntrack::State,
    /// Where the originator is (`uplink` or NETWORK/MAC).
    pub from: String,
    /// Where the responder is.
    pub to: String,
    /// Seconds since its last packet.
    pub age_secs: u32,
    /// Packets each way.
    pub packets: [u64; 2],
    /// The worker whose table holds it (its container's port's worker).
    #[serde(default)]
    pub worker: usize,
}

/// A 5-tuple.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TupleInfo {
    /// tcp, udp, icmp.
    pub proto: String,
    /// ADDR:PORT.
    pub src: String,
    /// ADDR:PORT.
    pub dst: String,
}

/// A flood-list entry of an overlay network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Network.
    pub network: String,
    /// Its VNI.
    pub vni: Option<u32>,
    /// Remote VTEP.
    pub vtep: String,
    /// `static` or `synced`.
    #[serde(rename = "type")]
    pub kind: String,
}
