//! Connections an earlier switch process left in the flow file, on their way
//! back into the workers' tables.
//!
//! A flow lives with the worker of its container's port (see
//! `vswitch_engine::conntrack::Conntrack`), which is known only once that
//! port is back. With one worker, every flow goes to it at once, before any
//! port. With several, each container's flows go to its port's worker just
//! before the port is handed to it, so no packet of theirs arrives first;
//! meanwhile the NAT ports of their SNAT flows are held (replies to them are
//! dropped and counted, not given to the host kernel, which would reset the
//! connections). Once the saved state is back, SNAT flows of containers that
//! did not come back as attachments go to the worker whose block holds
//! their NAT port, and the rest are dropped.
use super::*;
use std::collections::HashMap;
use vswitch_engine::conntrack::{block_of, FlowEntry};

/// Carried flows not yet in a worker's table, by container.
#[derive(Default)]
pub(super) struct Carried {
    by_container: HashMap<(NetId, Mac), Vec<FlowEntry>>,
}

/// The container a flow lives with: the source of a SNAT flow, the target
/// of a published port's (from the uplink or a hairpin).
fn inside(f: &Flow) -> Option<(NetId, Mac)> {
    match (f.orig_side, f.reply_side) {
        (Side::Container { net, mac }, Side::Uplink) => Some((net, mac)),
        (_, Side::Container { net, mac }) => Some((net, mac)),
        _ => None,
    }
}

/// The NAT port replies on the uplink find a SNAT flow by.
fn snat_port(f: &Flow) -> Option<(u8, u16)> {
    (f.reply_side == Side::Uplink && f.orig_side != Side::Uplink)
        .then_some((f.reply.proto, f.reply.dport))
}

impl State {
    /// Hands `flows` (an earlier process's) to the workers: all to the one
    /// worker there is, or kept for their containers' ports.
    pub(super) fn carry(&mut self, flows: Vec<FlowEntry>) {
        if flows.is_empty() {
            return;
        }
        if self.workers.len() == 1 {
            self.workers.send(0, Command::Adopt { flows });
            return;
        }
        for e in flows {
            let f = e.flow();
            let Some(key) = inside(&f) else {
                continue;
            };
            if let Some((proto, port)) = snat_port(&f) {
                self.tables.ct.ports.hold(proto, port);
            }
            self.carried.by_container.entry(key).or_default().push(e);
        }
    }

    /// Before port `(net, mac)` goes to `worker`: its container's carried
    /// flows go there first, and their NAT ports with them.
    pub(super) fn carry_to_port(&mut self, net: NetId, mac: Mac, worker: usize) {
        let Some(flows) = self.carried.by_container.remove(&(net, mac)) else {
            return;
        };
        for e in &flows {
            if let Some((proto, port)) = snat_port(&e.flow()) {
                self.tables.ct.ports.give(proto, port, worker);
            }
        }
        self.workers.send(worker, Command::Adopt { flows });
    }

    /// Once the saved state is back: SNAT flows whose container did not
    /// come back as an attachment go to the worker whose block holds their
    /// NAT port (a container behind a plain port still finds them there if
    /// that port is on that worker); the rest are dropped. No port stays
    /// held.
    pub(super) fn settle_carried(&mut self) {
        let left = std::mem::take(&mut self.carried.by_container);
        let n = self.workers.len();
        let range = self.uplink.as_ref().map(|u| u.snat);
        let mut per_worker: Vec<Vec<FlowEntry>> = vec![Vec::new(); n];
        let mut dropped = 0;
        for e in left.into_values().flatten() {
            let f = e.flow();
            let owner = snat_port(&f)
                .zip(range)
                .and_then(|((_, port), r)| block_of(port, r, n));
            match owner {
                Some(w) => per_worker[w].push(e),
                None => dropped += 1,
            }
        }
        self.tables.ct.ports.unhold_all();
        for (w, flows) in per_worker.into_iter().enumerate() {
            if !flows.is_empty() {
                self.workers.send(w, Command::Adopt { flows });
            }
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "connections of the previous switch dropped: their containers did not come back"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_engine::conntrack::{State as CtState, Tuple, PROTO_TCP};

    fn flow(orig_side: Side, reply_side: Side) -> Flow {
        let t = Tuple {
            src: 1,
            dst: 2,
            sport: 3,
            dport: 40_000,
            proto: PROTO_TCP,
        };
        Flow {
            orig: t,
            reply: t,
            orig_side,
            reply_side,
            state: CtState::Udp { replied: false },
            last_seen: 0,
            packets: [0; 2],
        }
    }

    #[test]
    fn a_flow_lives_with_its_source_for_snat_and_its_target_for_published_ports() {
        let a = Side::Container {
            net: 1,
            mac: Mac(0xa),
        };
        let b = Side::Container {
            net: 2,
            mac: Mac(0xb),
        };
        let snat = flow(a, Side::Uplink);
        assert_eq!(inside(&snat), Some((1, Mac(0xa))));
        assert_eq!(snat_port(&snat), Some((PROTO_TCP, 40_000)));
        let dnat = flow(Side::Uplink, b);
        assert_eq!(inside(&dnat), Some((2, Mac(0xb))));
        assert_eq!(snat_port(&dnat), None);
        let hairpin = flow(a, b);
        assert_eq!(inside(&hairpin), Some((2, Mac(0xb))));
        assert_eq!(snat_port(&hairpin), None);
        assert_eq!(inside(&flow(Side::Uplink, Side::Uplink)), None);
    }
}
