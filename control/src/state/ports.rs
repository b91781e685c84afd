//! Ports: ids, the worker each runs on, opening and closing them.
use super::*;
use crate::api::{PortStatsEntry, StatsReport};

/// What [`State::port_add_with`] adds.
pub(super) struct NewPort<'a> {
    pub network: &'a str,
    pub iface: &'a str,
    pub kind: PortKind,
    pub worker: Option<usize>,
    pub attach: Option<Attachment>,
    pub id: Option<PortId>,
    pub opened: Option<(Box<dyn Port>, String)>,
}

impl State {
    pub(super) fn alloc_port_id(&mut self) -> Result<PortId, CmdError> {
        for _ in 0..MAX_PORTS {
            let id = self.next_port;
            self.next_port = if (self.next_port as usize) + 1 >= MAX_PORTS {
                1
            } else {
                self.next_port + 1
            };
            if !self.ports.contains_key(&id) {
                return Ok(id);
            }
        }
        err(format!("too many ports (limit {})", MAX_PORTS - 1))
    }

    pub(super) fn pick_worker(&self, want: Option<usize>) -> Result<usize, CmdError> {
        if let Some(w) = want {
            if w >= self.workers.len() {
                return err(format!(
                    "worker {w} does not exist; this switch runs {} worker(s)",
                    self.workers.len()
                ));
            }
            return Ok(w);
        }
        Ok((0..self.workers.len())
            .min_by_key(|w| self.ports.values().filter(|p| p.worker == *w).count())
            .unwrap_or(0))
    }

    /// Opens `iface` as a `kind` port; `persist`: a TAP made persistent
    /// (it outlives the switch, for a restarted one to take over).
    pub(super) fn open_port(
        &self,
        kind: PortKind,
        iface: &str,
        persist: bool,
    ) -> Result<(Box<dyn Port>, String), CmdError> {
        self.host.open_port(kind, iface, persist).map_err(CmdError)
    }

    /// Adds a port on `iface`, opened here.
    pub(super) fn port_add(
        &mut self,
        network: &str,
        iface: &str,
        kind: PortKind,
        worker: Option<usize>,
        attach: Option<Attachment>,
    ) -> Result<PortId, CmdError> {
        self.port_add_with(NewPort {
            network,
            iface,
            kind,
            worker,
            attach,
            id: None,
            opened: None,
        })
    }

    /// Adds a port: `p.opened` when the caller opened it (a TAP taken over
    /// in a container's namespace), `p.id` to keep the id it had.
    pub(super) fn port_add_with(&mut self, p: NewPort<'_>) -> Result<PortId, CmdError> {
        let NewPort {
            network,
            iface,
            kind,
            worker,
            attach,
            id,
            opened,
        } = p;
        if kind != PortKind::Packet && !self.networks.contains_key(network) {
            return err(format!(
                "no network {network:?} (create it with `vswitch network create {network}`)"
            ));
        }
        if self.ports.values().any(|p| p.iface == iface) {
            return err(format!("interface {iface:?} is already a port"));
        }
        let want_worker = worker;
        let worker = self.pick_worker(worker)?;
        // The container whose connections an earlier process left come
        // back with its port.
        let carried = attach
            .as_ref()
            .and_then(|a| Some((self.networks.get(network)?.id, a.mac)));
        let id = match id {
            Some(id) if !self.ports.contains_key(&id) && (id as usize) < MAX_PORTS && id > 0 => id,
            _ => self.alloc_port_id()?,
        };
        let (port, mode) = match opened {
            Some(o) => o,
            None => self.open_port(kind, iface, false)?,
        };
        let rec = PortRec {
            id,
            iface: iface.to_string(),
            kind,
            net: network.to_string(),
            worker,
            want_worker,
            caps: port.caps(),
            stats: Arc::new(PortStats::default()),
            gone: None,
            mode,
            attach,
            system: false,
            from_config: false,
        };
        tracing::info!(port = id, iface, %kind, network, worker, "port added");
        self.ports.insert(id, rec);
        if id >= self.next_port {
            self.next_port = if (id as usize) + 1 >= MAX_PORTS {
                1
            } else {
                id + 1
            };
        }
        self.publish();
        if let Some((net, mac)) = carried {
            self.carry_to_port(net, mac, worker);
        }
        self.workers.send(worker, Command::AddPort { id, port });
        Ok(id)
    }

    pub(super) fn remove_port(&mut self, id: PortId) -> Option<PortRec> {
        let rec = self.ports.remove(&id)?;
        self.publish();
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.workers
            .send(rec.worker, Command::RemovePort { id, ack: tx });
        if rx.recv_timeout(std::time::Duration::from_secs(5)).is_err() {
            tracing::warn!(port = id, "worker did not confirm port removal");
        }
        // The worker no longer receives on it: nothing can re-learn onto it.
        self.tables.fdb.retain_not(0, |e| e.port == id);
        self.statics.retain(|_, (_, p)| *p != Some(id));
        Some(rec)
    }

    pub(super) fn port_rm_by_name(&mut self, iface: &str) -> Result<(), CmdError> {
        let Some(id) = self.ports.values().find(|p| p.iface == iface).map(|p| p.id) else {
            return err(format!(
                "no port on interface {iface:?} (see `vswitch port ls`)"
            ));
        };
        if self.ports[&id].system {
            return err(format!(
                "port {iface:?} belongs to the switch (a network's host interface or the uplink); \
                 it goes with `network rm` or `uplink rm`"
            ));
        }
        if let Some(a) = &self.ports[&id].attach {
            if a.handoff {
                return err(format!(
                    "port {iface:?} is a container's, made for its runtime ({}); remove the container or disconnect it from the network",
                    a.owner.as_deref().unwrap_or("?")
                ));
            }
            return err(format!(
                "port {iface:?} was made by attach; use `vswitch detach {} --netns {} --ifname {}`",
                self.ports[&id].net, a.netns, a.ifname
            ));
        }
        self.remove_port(id);
        Ok(())
    }

    pub(super) fn port_infos(&self) -> Vec<PortInfo> {
        self.ports
            .values()
            .map(|p| PortInfo {
                id: p.id,
                iface: p.iface.clone(),
                kind: p.kind,
                network: p.net.clone(),
                worker: p.worker,
                status: p
                    .gone
                    .as_ref()
                    .map_or("up".to_string(), |r| format!("gone: {r}")),
                mode: p.mode.clone(),
                attached: p.attach.as_ref().map(|a| a.label()),
                owner: p.attach.as_ref().and_then(|a| a.owner.clone()),
                handoff: p
                    .attach
                    .as_ref()
                    .filter(|a| a.handoff)
                    .map(|a| a.ifname.clone()),
            })
            .collect()
    }

    pub(super) fn stats(&self) -> StatsReport {
        let ports: Vec<_> = self
            .ports
            .values()
            .map(|p| PortStatsEntry {
                port: p.iface.clone(),
                network: p.net.clone(),
                kind: p.kind,
                attached: p.attach.as_ref().map(|a| a.label()),
                stats: p.stats.snapshot(),
            })
            .collect();
        let workers = self.workers.stats();
        StatsReport {
            ports,
            workers,
            dns: self.dns.stats.counters(),
        }
    }
}
