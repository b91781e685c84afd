//! The `vswitch` command line: subcommands and their arguments (clap).
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use vswitch_control::api::Proto;

#[derive(Parser)]
#[command(
    name = "vswitch",
    version,
    about = "Userspace virtual switch for container hosts"
)]
pub(crate) struct Cli {
    /// Management socket of the running switch.
    #[arg(
        long,
        global = true,
        env = "VSWITCH_SOCKET",
        default_value = "/run/vswitch/vswitch.sock"
    )]
    pub(crate) socket: PathBuf,
    /// Seconds to wait for the switch's answer before giving up.
    #[arg(long, global = true, env = "VSWITCH_TIMEOUT", default_value_t = 60)]
    pub(crate) timeout: u64,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Run the switch in the foreground.
    Run {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Sync overlay peer tables with other hosts: UDP ADDR:PORT to bind
        /// (overrides `[cluster] listen`).
        #[arg(long)]
        cluster_listen: Option<String>,
        /// Seed members to join, ADDR:PORT[,...].
        #[arg(long, value_delimiter = ',')]
        cluster_join: Vec<String>,
        /// File with the cluster's shared key (16+ bytes).
        #[arg(long)]
        cluster_key_file: Option<String>,
        /// This host's name in the cluster (default: the listen address).
        #[arg(long)]
        cluster_name: Option<String>,
        /// Keep the cluster tables in etcd instead of gossiping: client
        /// URLs, URL[,...] (needs a build with `--features etcd`).
        #[arg(long, value_delimiter = ',')]
        cluster_etcd: Vec<String>,
        /// Group (name or number) whose members may use the management
        /// socket; without it, only root may.
        #[arg(long)]
        socket_group: Option<String>,
        /// Where the switch keeps what it has been told (networks,
        /// attachments, published ports, ...) to put it back when it starts
        /// again.
        #[arg(long, env = "VSWITCH_STATE_DIR", default_value = "/var/lib/vswitch")]
        state_dir: PathBuf,
        /// Also serve Docker's network driver API, so that `docker network
        /// create -d vswitch` makes vswitch networks.
        #[arg(long)]
        docker_plugin: bool,
        /// Where to serve it: dockerd finds a plugin named NAME at
        /// /run/docker/plugins/NAME.sock.
        #[arg(long, default_value = vswitch_control::docker::DEFAULT_SOCKET, requires = "docker_plugin")]
        docker_plugin_socket: PathBuf,
    },
    /// Networks (bridge domains).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Create an interface in a network namespace and attach it.
    Attach {
        /// Network to join.
        network: String,
        /// Network namespace (as in `ip netns`).
        #[arg(long)]
        netns: String,
        /// Interface name inside the namespace.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// tap (virtio-net offloads), veth (AF_PACKET with virtio-net
        /// headers on the switch's end: large TCP segments) or veth-xdp
        /// (AF_XDP on the switch's end: the most small packets per second).
        #[arg(long, value_enum, default_value = "tap")]
        kind: KindArg,
        /// Address with prefix, e.g. 10.1.0.2/24.
        #[arg(long)]
        ip: Option<String>,
        /// MAC address (default: derived from network, namespace and name).
        #[arg(long)]
        mac: Option<String>,
        /// The container's name on the network: the network's other
        /// containers look it up with DNS (its address's PTR answers it).
        #[arg(long)]
        name: Option<String>,
        /// Another name it is found by (repeat for more).
        #[arg(long = "alias")]
        aliases: Vec<String>,
    },
    /// Remove an attached interface.
    Detach {
        /// Network.
        network: String,
        /// Network namespace.
        #[arg(long)]
        netns: String,
        /// Interface name inside the namespace.
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// Existing interfaces as ports.
    #[command(subcommand)]
    Port(PortCmd),
    /// Forwarding database.
    #[command(subcommand)]
    Fdb(FdbCmd),
    /// Per-port counters and drops by reason.
    Stats {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The host's external interface: egress with SNAT, published ports.
    #[command(subcommand)]
    Uplink(UplinkCmd),
    /// Publish a container port on the host's addresses (DNAT).
    Publish {
        /// Network of the container.
        network: String,
        /// Container address and port, e.g. 10.1.0.2:80.
        target: String,
        /// Host port, or a range N-M to take the first free one (default: any free port).
        #[arg(long)]
        host_port: Option<String>,
        /// Protocol.
        #[arg(long, value_enum, default_value = "tcp")]
        proto: ProtoArg,
        /// Host address to accept on (default: all of the host's).
        #[arg(long)]
        host_ip: Option<String>,
    },
    /// Withdraw a published port.
    Unpublish {
        /// Network of the container.
        network: String,
        /// Host port.
        #[arg(long)]
        host_port: u16,
        /// Protocol.
        #[arg(long, value_enum, default_value = "tcp")]
        proto: ProtoArg,
    },
    /// Connection tracking.
    #[command(subcommand)]
    Conntrack(ConntrackCmd),
    /// Peer VTEPs of overlay networks (static).
    #[command(subcommand)]
    Peer(PeerCmd),
    /// Cluster members (hosts syncing their overlay tables with this one).
    Peers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum DriverArg {
    Bridge,
    Overlay,
}

#[derive(Subcommand)]
pub(crate) enum PeerCmd {
    /// Add a peer VTEP to an overlay network.
    Add {
        /// Network.
        network: String,
        /// VTEP address.
        #[arg(long)]
        vtep: String,
    },
    /// List peers.
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a peer VTEP.
    Rm {
        /// Network.
        network: String,
        /// VTEP address.
        #[arg(long)]
        vtep: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ProtoArg {
    Tcp,
    Udp,
}

impl From<ProtoArg> for Proto {
    fn from(p: ProtoArg) -> Self {
        match p {
            ProtoArg::Tcp => Proto::Tcp,
            ProtoArg::Udp => Proto::Udp,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum UplinkCmd {
    /// Declare the uplink.
    Add {
        /// Interface (stays the host's: the switch takes only its own traffic).
        iface: String,
        /// Source address for egress (default: the interface's address).
        #[arg(long)]
        snat_ip: Option<String>,
        /// SNAT source ports LO-HI (default: above the kernel's ephemeral range).
        #[arg(long)]
        snat_ports: Option<String>,
        /// Worker to poll it.
        #[arg(long)]
        worker: Option<usize>,
        /// Local VTEP address for overlay networks (default: the SNAT address).
        #[arg(long)]
        vtep: Option<String>,
    },
    /// Show the uplink, its routes and next hops (JSON).
    Show,
    /// Remove the uplink.
    Rm,
}

#[derive(Subcommand)]
pub(crate) enum ConntrackCmd {
    /// List tracked flows with their translations.
    Show {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum KindArg {
    Tap,
    Veth,
    VethXdp,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum PortKindArg {
    Afxdp,
    Tap,
}

#[derive(Subcommand)]
pub(crate) enum NetworkCmd {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one network as JSON.
    Inspect {
        /// Name.
        name: String,
    },
    /// Remove a network with no ports.
    Rm {
        /// Name.
        name: String,
    },
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    /// Name.
    pub(crate) name: String,
    /// Subnet, e.g. 10.1.0.0/24.
    #[arg(long)]
    pub(crate) subnet: Option<String>,
    /// Gateway address in the subnet.
    #[arg(long)]
    pub(crate) gateway: Option<String>,
    /// MTU of attached interfaces (default 1500; 1450 on an overlay).
    #[arg(long)]
    pub(crate) mtu: Option<u32>,
    /// `bridge` (this host) or `overlay` (VXLAN across hosts).
    #[arg(long, value_enum, default_value = "bridge")]
    pub(crate) driver: DriverArg,
    /// VXLAN network identifier (overlay).
    #[arg(long)]
    pub(crate) vni: Option<u32>,
    /// Peer VTEP (overlay; repeat for several).
    #[arg(long = "peer")]
    pub(crate) peers: Vec<String>,
    /// Do not learn remote MACs from decapsulated frames (overlay).
    #[arg(long)]
    pub(crate) no_learning: bool,
    /// Outer TTL of VXLAN packets (overlay).
    #[arg(long, default_value_t = 64)]
    pub(crate) ttl: u8,
    /// Set don't-fragment on VXLAN packets (overlay).
    #[arg(long)]
    pub(crate) df: bool,
    /// Learned MACs allowed.
    #[arg(long, default_value_t = 16384)]
    pub(crate) mac_limit: u32,
    /// Seconds before an unseen MAC is forgotten (0: never).
    #[arg(long, default_value_t = 300)]
    pub(crate) aging: u32,
    /// No egress and no published ports.
    #[arg(long)]
    pub(crate) internal: bool,
    /// Containers cannot reach each other (only the gateway, host and outside).
    #[arg(long)]
    pub(crate) no_icc: bool,
    /// A resolver for names that are not the network's own (repeat for
    /// more; default: the host's /etc/resolv.conf).
    #[arg(long)]
    pub(crate) dns: Vec<String>,
}

#[derive(Subcommand)]
pub(crate) enum PortCmd {
    /// Add an existing interface.
    Add {
        /// Network.
        network: String,
        /// Interface.
        #[arg(long)]
        iface: String,
        /// How to open it.
        #[arg(long, value_enum)]
        kind: PortKindArg,
        /// Worker to poll it.
        #[arg(long)]
        worker: Option<usize>,
    },
    /// List ports.
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a port.
    Rm {
        /// Interface.
        iface: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum FdbCmd {
    /// List entries.
    Show {
        /// Only this network.
        #[arg(long)]
        network: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Add a static entry: on a local port, or (overlay) behind a remote VTEP.
    Add {
        /// Network.
        network: String,
        /// MAC.
        #[arg(long)]
        mac: String,
        /// Port: switch-side interface or NETNS:IFNAME.
        #[arg(long, conflicts_with = "vtep", required_unless_present = "vtep")]
        port: Option<String>,
        /// Remote VTEP address (overlay networks).
        #[arg(long)]
        vtep: Option<String>,
        /// The MAC's IPv4 address: the switch answers ARP for it (suppression).
        #[arg(long)]
        ip: Option<String>,
    },
    /// Remove an entry.
    Rm {
        /// Network.
        network: String,
        /// MAC.
        #[arg(long)]
        mac: String,
    },
}
