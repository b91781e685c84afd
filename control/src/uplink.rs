//! What the uplink needs besides its port: the guard that keeps the host
//! kernel from answering the switch's traffic, the SNAT port range, and the
//! host's own path to ports a runtime holds (the proxy is in `proxy`).
//!
//! The uplink port is an AF_PACKET socket: it receives a *copy* of every
//! frame while the kernel goes on processing the original. For frames the
//! switch owns (replies to its SNAT ports, published ports) the kernel would
//! answer with a RST or an ICMP port unreachable, so a netdev-family
//! nftables chain on the uplink's ingress hook drops the originals. Packet
//! sockets see frames before the ingress hook, so the switch still gets its
//! copy. The rules are made with `nft -f -` in one transaction (nftables'
//! netlink protocol is not something to hand-write); the table is named
//! after the switch's PID; it stays when the switch stops (see [`Guard::remove_script`]).
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The ports the kernel picks for its own connections in this namespace.
pub fn kernel_ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Checks a SNAT range against the kernel's ephemeral ports, or picks the
/// default: everything above them.
pub fn snat_range(want: Option<(u16, u16)>) -> Result<(u16, u16), String> {
    let (klo, khi) = kernel_ephemeral_range();
    match want {
        Some((lo, hi)) => {
            if lo <= khi && hi >= klo {
                return Err(format!(
                    "snat ports {lo}-{hi} overlap the kernel's ephemeral ports {klo}-{khi} \
                     (net.ipv4.ip_local_port_range); pick a range outside them"
                ));
            }
            if lo < 1024 {
                return Err(format!(
                    "snat ports {lo}-{hi} include privileged ports; start at 1024 or above"
                ));
            }
            Ok((lo, hi))
        }
        None => {
            if khi >= 65535 - 1024 {
                Err(format!(
                    "the kernel's ephemeral ports {klo}-{khi} leave too few ports above them; \
                     give the uplink snat_ports outside that range"
                ))
            } else {
                Ok((khi + 1, 65535))
            }
        }
    }
}

/// The nftables guard of one uplink.
#[derive(Debug)]
pub struct Guard {
    table: String,
    iface: String,
}

impl Guard {
    /// A guard for `iface`; nothing is installed until [`Guard::apply`].
    pub fn new(iface: &str) -> Self {
        Self {
            table: format!("vswitch_{}", std::process::id()),
            iface: iface.to_string(),
        }
    }

    /// Of the netdev tables `tables`, those guard tables whose switch is
    /// gone (its PID no longer runs): left by a switch killed with SIGKILL,
    /// or one stopped for good.
    pub fn stale(tables: &[String]) -> Vec<String> {
        tables
            .iter()
            .filter_map(|t| {
                let pid: u32 = t.strip_prefix("vswitch_")?.parse().ok()?;
                (pid != std::process::id()
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists())
                .then(|| t.clone())
            })
            .collect()
    }

    /// The script that removes table `t`.
    pub fn remove_table_script(t: &str) -> String {
        format!("table netdev {t}\ndelete table netdev {t}\n")
    }

    /// The script that installs (or replaces) the rules: drop, at the uplink's ingress,
    /// what is addressed to `snat_ip` on the SNAT ports, what is addressed
    /// to `published` ports on the host's addresses, and VXLAN for the local
    /// `vtep` when overlay networks exist.
    ///
    /// The published ports are elements of sets, not a rule each: the chain
    /// runs for every frame the uplink receives, and a set is one hash
    /// lookup however many ports there are (a rule per port made every frame
    /// walk all of them). [`Guard::element_script`] adds and removes one
    /// port without rewriting the table.
    pub fn script(
        &self,
        snat_ip: Ipv4Addr,
        snat: (u16, u16),
        local_ips: &[Ipv4Addr],
        published: &[(super::api::Proto, u16, Option<Ipv4Addr>)],
        vtep: Option<Ipv4Addr>,
    ) -> String {
        let mut rules = Vec::new();
        if let Some(v) = vtep {
            rules.push(format!("ip daddr {v} udp dport 4789 drop"));
        }
        for proto in ["tcp", "udp"] {
            rules.push(format!(
                "ip daddr {snat_ip} {proto} dport {}-{} drop",
                snat.0, snat.1
            ));
        }
        let mut all: Vec<String> = local_ips.iter().map(|i| i.to_string()).collect();
        if !local_ips.contains(&snat_ip) {
            all.push(snat_ip.to_string());
        }
        let mut sets = String::new();
        for proto in [super::api::Proto::Tcp, super::api::Proto::Udp] {
            let any: Vec<String> = published
                .iter()
                .filter(|(p, _, ip)| *p == proto && ip.is_none())
                .map(|(_, port, _)| port.to_string())
                .collect();
            let at: Vec<String> = published
                .iter()
                .filter(|(p, _, _)| *p == proto)
                .filter_map(|(_, port, ip)| ip.map(|i| format!("{i} . {port}")))
                .collect();
            let elements = |v: &[String]| {
                if v.is_empty() {
                    String::new()
                } else {
                    format!(" elements = {{ {} }};", v.join(", "))
                }
            };
            sets.push_str(&format!(
                "  set {proto}_any {{ type inet_service;{} }}\n  set {proto}_at {{ type ipv4_addr . inet_service;{} }}\n",
                elements(&any),
                elements(&at)
            ));
            rules.push(format!(
                "ip daddr {{ {} }} {proto} dport @{proto}_any drop",
                all.join(", ")
            ));
            rules.push(format!("ip daddr . {proto} dport @{proto}_at drop"));
        }
        format!(
            "table netdev {t}\ndelete table netdev {t}\ntable netdev {t} {{\n{sets}  chain ingress {{\n    type filter hook ingress device \"{d}\" priority -500; policy accept;\n    {r}\n  }}\n}}\n",
            t = self.table,
            d = self.iface,
            r = rules.join("\n    ")
        )
    }

    /// The script that adds (`add`) or removes one published port of the
    /// table [`Guard::script`] made.
    pub fn element_script(
        &self,
        add: bool,
        proto: super::api::Proto,
        port: u16,
        ip: Option<Ipv4Addr>,
    ) -> String {
        let verb = if add { "add" } else { "delete" };
        let (set, elem) = match ip {
            Some(i) => (format!("{proto}_at"), format!("{i} . {port}")),
            None => (format!("{proto}_any"), port.to_string()),
        };
        format!(
            "{verb} element netdev {t} {set} {{ {elem} }}\n",
            t = self.table
        )
    }

    /// The script that removes the rules. Nothing removes them when the
    /// switch stops: they keep the host from resetting the switch's
    /// connections until the next start replaces them (`uplink rm` removes
    /// them for good).
    pub fn remove_script(&self) -> String {
        Self::remove_table_script(&self.table)
    }
}

/// A published port that the host's own processes reach through the
/// kernel: one whose host port a runtime holds (rootful podman's conmon),
/// so that the switch's proxy cannot listen on it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalDnat {
    /// TCP or UDP.
    pub proto: super::api::Proto,
    /// The host port.
    pub port: u16,
    /// The host address it is limited to (`None`: every local address).
    pub host_ip: Option<Ipv4Addr>,
    /// The container's address and port.
    pub target: std::net::SocketAddrV4,
    /// The host's interface on the container's network (`vsgwN`).
    pub via: String,
}

/// Name of the `ip` table with the host's own path to such ports; one per
/// network namespace, as is the switch.
const LOCAL_TABLE: &str = "vswitch_local";

/// The script that installs (or, with no ports, removes) the host's own
/// path to `ports`: connections the host makes to a published port are
/// translated to the container in the output hook, and leave through the
/// network's host interface from the gateway's address (as the proxy's
/// do), so the container's answer comes back the same way.
pub fn local_dnat_script(ports: &[LocalDnat]) -> String {
    let mut s = format!("table ip {LOCAL_TABLE}\ndelete table ip {LOCAL_TABLE}\n");
    if ports.is_empty() {
        return s;
    }
    let mut dnat = Vec::new();
    let mut via: Vec<&str> = Vec::new();
    for p in ports {
        let daddr = match p.host_ip {
            Some(ip) => format!("ip daddr {ip}"),
            None => "fib daddr type local ip daddr != 127.0.0.0/8".to_string(),
        };
        dnat.push(format!(
            "{daddr} {} dport {} dnat to {}",
            p.proto, p.port, p.target
        ));
        if !via.contains(&p.via.as_str()) {
            via.push(&p.via);
        }
    }
    let masq: Vec<String> = via
        .iter()
        .map(|v| format!("oifname \"{v}\" ct status dnat masquerade"))
        .collect();
    s.push_str(&format!(
        "table ip {LOCAL_TABLE} {{\n  chain output {{\n    type nat hook output priority -100; policy accept;\n    {}\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    {}\n  }}\n}}\n",
        dnat.join("\n    "),
        masq.join("\n    ")
    ));
    s
}

/// Runs an nftables script in one transaction (`nft -f -`).
pub(crate) fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft (install the nftables package): {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the switch's rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
