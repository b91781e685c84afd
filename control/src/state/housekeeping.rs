//! The periodic tick: FDB aging, neighbour resolution, worker events.
//! (Each worker expires its own connections.)
use super::*;

impl State {
    /// Periodic work: FDB aging and worker events.
    pub fn housekeeping(&mut self) {
        let now = self.clock.now_secs();
        self.neighbour_work();
        let ages: BTreeMap<NetId, u32> = self
            .networks
            .values()
            .map(|n| (n.id, n.cfg.aging_secs))
            .collect();
        // A slice per tick too, so that a pass over the table takes a tenth of
        // the shortest aging time (1 to 30 s): an entry outlives its aging
        // time by at most that, and an idle switch does not read the whole
        // table (4 MiB by default, cold in cache) ten times a second.
        let aged = match ages.values().copied().filter(|a| *a > 0).min() {
            Some(shortest) => {
                let pass_ms = u128::from(shortest) * 100;
                let ticks = (pass_ms / HOUSEKEEPING_TICK.as_millis().max(1)).clamp(10, 300);
                let slice = self.tables.fdb.buckets().div_ceil(ticks as usize);
                self.tables
                    .fdb
                    .age_some(now, slice, |net| ages.get(&net).copied().filter(|a| *a > 0))
            }
            None => 0,
        };
        if aged > 0 {
            tracing::debug!(aged, "FDB entries aged out");
        }
        let mut changed = false;
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                Event::PortGone { id, reason } => {
                    if let Some(p) = self.ports.get_mut(&id) {
                        tracing::warn!(port = %p.iface, %reason, "port gone; remove it with `port rm` or `detach`");
                        p.gone = Some(reason);
                        changed = true;
                    }
                    self.tables.fdb.retain_not(0, |e| e.port == id);
                }
            }
        }
        if changed {
            self.publish();
            // A port that died takes its endpoints with it.
            self.sync_local();
        }
    }
}
