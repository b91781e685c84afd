//! Steering: a flow lives in the connection table of one worker, the worker
//! of its container's port (see [`crate::conntrack::Conntrack`]); a packet
//! of it that arrives on another worker is handed to that one, which runs
//! it through the pipeline as if it had received it.
//!
//! Which worker, from the packet alone, before any lookup:
//! - to a published port (from the uplink, or a container's hairpin): the
//!   worker of the published container's port (`Published::worker`);
//! - to a NAT port of the host (replies of SNAT flows, ICMP errors about
//!   them): the worker that owns the port ([`crate::conntrack::NatPorts`]);
//! - anything else stays where it arrived.
//!
//! A frame is handed over once: the receiving worker does not steer it
//! again, even if a new snapshot moved things meanwhile.
use super::gateway::Ctx;
use super::Action;
use crate::conntrack::PortOwner;
use crate::stats::DropReason;
use crate::tables::{Published, UplinkView};

/// Who this worker is among the workers, for one batch.
#[derive(Debug, Clone, Copy)]
pub struct Steer {
    me: u16,
    workers: u16,
    /// The batch was handed over by another worker: it stays here.
    handed: bool,
}

impl Default for Steer {
    fn default() -> Self {
        Self::new(0, 1)
    }
}

impl Steer {
    /// Worker `me` of `workers`.
    pub fn new(me: usize, workers: usize) -> Self {
        Self {
            me: me as u16,
            workers: workers.max(1) as u16,
            handed: false,
        }
    }

    /// The same worker, for a batch another worker handed over.
    pub fn handed_over(self) -> Self {
        Self {
            handed: true,
            ..self
        }
    }

    /// This worker's index.
    #[inline]
    pub fn me(&self) -> usize {
        self.me as usize
    }

    /// How many workers there are.
    #[inline]
    pub fn workers(&self) -> usize {
        self.workers as usize
    }

    /// Whether frames may be handed over from here at all.
    #[inline]
    pub fn active(&self) -> bool {
        self.workers > 1 && !self.handed
    }

    /// The action handing a frame to `owner`, unless that is this worker
    /// (or the frame was handed over already).
    #[inline]
    pub fn to(&self, owner: usize) -> Option<Action> {
        (self.active() && owner != self.me as usize).then_some(Action::Steer(owner as u16))
    }
}

impl Ctx<'_> {
    /// Where a packet to a host address's port (or ICMP identifier) `port`
    /// belongs, if not here: to the worker of the container `published`
    /// there (the snapshot's, which the caller looked up), or to the worker
    /// that owns the NAT port. A reply to a port held for a flow being
    /// taken over is dropped and counted. Only asked while frames may be
    /// handed over ([`Steer::active`]).
    #[inline]
    pub(super) fn steer_local(
        &self,
        u: &UplinkView,
        proto: u8,
        port: u16,
        published: Option<&Published>,
    ) -> Option<Action> {
        let owner =
            match published {
                Some(pb) => pb.worker as usize,
                None => match self.tables.ct.ports.owner(
                    proto,
                    port,
                    u.snat_ports,
                    self.steer.workers(),
                )? {
                    PortOwner::Worker(w) => w,
                    PortOwner::Held => return Some(Action::Drop(DropReason::NatPortHeld)),
                },
            };
        self.steer.to(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_handed_over_once_and_never_to_its_own_worker() {
        let s = Steer::new(1, 2);
        assert_eq!(s.to(0), Some(Action::Steer(0)));
        assert_eq!(s.to(1), None);
        assert_eq!(s.handed_over().to(0), None);
        assert_eq!(Steer::new(0, 1).to(3), None, "one worker steers nothing");
    }
}
