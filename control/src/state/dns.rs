//! The networks' names as the resolver answers them (`crate::dns`): built
//! from the attachments whenever the snapshot is published, and the
//! resolver configuration of the containers `attach` makes.
use super::*;
use crate::dns::{self, NetZone};
use std::collections::HashMap;

/// Whether `name` can be looked up: DNS labels of letters, digits,
/// hyphens and underscores (RFC 1123 host names, and the underscores
/// container runtimes put in the names they make up, `naughty_booth`),
/// dots between labels.
pub(super) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The names a user gave (`attach --name/--alias`): all valid, or an
/// error that says what to fix.
pub(super) fn check_names(names: &[String]) -> Result<(), CmdError> {
    match names.iter().find(|n| !valid_name(n)) {
        Some(n) => err(format!(
            "{n:?} is not a name containers can look up: use letters, digits, hyphens and \
             underscores (labels of at most 63, joined by dots)"
        )),
        None => Ok(()),
    }
}

/// The names a runtime gave: a container's start never fails for a name;
/// one that cannot be looked up is left out, with a warning.
pub(super) fn runtime_names(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| {
            let ok = valid_name(n);
            if !ok {
                tracing::warn!(name = %n, "a runtime's name for its container cannot be looked up with DNS; left out");
            }
            ok
        })
        .collect()
}

impl State {
    /// The names every network with a gateway answers.
    pub(super) fn dns_zones(&self) -> Vec<NetZone> {
        // Namespace → (network, address) of each of its attachments.
        let mut by_ns: HashMap<&str, Vec<(&str, Ipv4Addr)>> = HashMap::new();
        for p in self.ports.values() {
            if let Some(a) = &p.attach {
                if let (false, Some(ip)) = (a.netns.is_empty(), a.ip) {
                    by_ns
                        .entry(a.netns.as_str())
                        .or_default()
                        .push((p.net.as_str(), ip));
                }
            }
        }
        let gw_of = |net: &str| {
            self.networks
                .get(net)
                .and_then(|n| n.l3.as_ref())
                .map(|l| l.gw)
        };
        let gateways: Vec<Ipv4Addr> = self
            .networks
            .values()
            .filter_map(|n| n.l3.as_ref().map(|l| l.gw))
            .collect();
        self.networks
            .values()
            .filter_map(|n| {
                let l3 = n.l3.as_ref()?;
                let mut z = NetZone {
                    network: n.cfg.name.clone(),
                    gw: l3.gw,
                    subnet: (l3.subnet.network(), l3.subnet.prefix()),
                    // Never itself (a loop), nothing for --internal.
                    upstreams: if n.cfg.internal {
                        Vec::new()
                    } else if !n.cfg.dns.is_empty() {
                        n.cfg
                            .dns
                            .iter()
                            .filter_map(|d| d.parse::<Ipv4Addr>().ok())
                            .map(|ip| SocketAddr::new(ip.into(), 53))
                            .collect()
                    } else {
                        self.upstreams
                            .iter()
                            .filter(|u| !matches!(u.ip(), std::net::IpAddr::V4(ip) if gateways.contains(&ip)))
                            .copied()
                            .collect()
                    },
                    names: HashMap::new(),
                    ptr: HashMap::new(),
                    also: HashMap::new(),
                };
                for p in self.ports.values().filter(|p| p.net == n.cfg.name) {
                    let Some(a) = &p.attach else {
                        continue;
                    };
                    let Some(ip) = a.ip else {
                        continue;
                    };
                    for name in &a.aliases {
                        z.names.entry(name.to_ascii_lowercase()).or_default().push(ip);
                    }
                    if let Some(first) = a.aliases.first() {
                        z.ptr.insert(ip, first.to_ascii_lowercase());
                    }
                    let others: Vec<Ipv4Addr> = by_ns
                        .get(a.netns.as_str())
                        .into_iter()
                        .flatten()
                        .filter(|(net, _)| *net != n.cfg.name)
                        .filter_map(|(net, _)| gw_of(net))
                        .collect();
                    if !others.is_empty() {
                        z.also.insert(ip, others);
                    }
                }
                // The other hosts' containers on an overlay network, from
                // the cluster (their own addresses are not on this host).
                for (name, ips) in self.synced.names.get(&n.id).into_iter().flatten() {
                    let e = z.names.entry(name.clone()).or_default();
                    for ip in ips {
                        if !e.contains(ip) {
                            e.push(*ip);
                        }
                        z.ptr.entry(*ip).or_insert_with(|| name.clone());
                    }
                }
                Some(z)
            })
            .collect()
    }

    /// Hands the networks' names to the resolver if they changed.
    pub(super) fn publish_dns(&self) {
        let zones = self.dns_zones();
        let mut last = self.dns_published.borrow_mut();
        if *last != zones {
            self.dns.set(zones.clone());
            *last = zones;
        }
    }

    /// Points a container's resolver at its first network's gateway
    /// (`/etc/netns/NS/resolv.conf`), or takes the file away when the
    /// container has no network with a gateway left.
    pub(super) fn container_resolv_conf(&self, ns: &str) {
        if ns.is_empty() {
            return;
        }
        let gw = self
            .ports
            .values()
            .filter_map(|p| Some((p.attach.as_ref()?, p)))
            .filter(|(a, _)| a.netns == ns)
            .find_map(|(_, p)| self.networks.get(&p.net)?.l3.as_ref().map(|l| l.gw));
        let text = gw.map(dns::resolv_conf_for);
        if let Err(e) = self.host.resolv_conf(ns, text.as_deref()) {
            tracing::warn!(netns = ns, error = %e, "cannot write the container's resolv.conf");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_dns_labels() {
        for ok in ["web", "api-1", "db.internal", "A1", "naughty_booth"] {
            check_names(&[ok.to_string()]).unwrap();
        }
        for bad in ["", "-web", "web-", "a..b", "we b", "wéb", &"x".repeat(64)] {
            let e = check_names(&[bad.to_string()]).unwrap_err();
            assert!(e.0.contains("letters, digits, hyphens"), "{bad:?}: {e:?}");
        }
        // A runtime's container starts anyway, without the bad name.
        assert_eq!(
            runtime_names(vec!["web".into(), "we b".into(), "w_1".into()]),
            ["web", "w_1"]
        );
    }
}
