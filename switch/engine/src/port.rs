//! The one trait every port implements: AF_XDP, TAP and in-memory.
use crate::packet::{Packet, PacketPool};
use std::os::fd::BorrowedFd;

/// Index of a port in the switch (global, assigned by the control plane).
pub type PortId = u16;

/// Offloads a port accepts on transmit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCaps {
    /// Takes checksum-partial frames (virtio-net `NEEDS_CSUM`).
    pub csum: bool,
    /// Takes TCP segments larger than the MTU (virtio-net GSO).
    pub tso: bool,
    /// Largest frame it sends, without segmentation (Ethernet header included).
    pub max_frame: usize,
}

/// A port that can no longer be used.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The interface went away (deleted underneath the switch).
    #[error("interface is gone: {0}")]
    Gone(String),
    /// Any other fatal I/O error.
    #[error("port I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Outcome of one transmit burst.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxResult {
    /// Frames handed to the kernel/peer.
    pub sent: usize,
    /// Bytes of those frames.
    pub bytes: usize,
    /// Frames dropped because the ring or queue was full.
    pub full: usize,
    /// Frames the kernel refused.
    pub errors: usize,
    /// Frames not sent because the link is down.
    pub down: usize,
}

/// A poll-mode port: receive and transmit in bursts, never block.
pub trait Port: Send {
    /// Human-readable name (interface name).
    fn name(&self) -> &str;
    /// What the port accepts on transmit.
    fn caps(&self) -> PortCaps;
    /// Receives up to `max` frames into buffers from `pool`, appending to `out`.
    fn rx_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError>;
    /// Sends every frame of `pkts` (draining it) and returns the buffers to `pool`.
    fn tx_burst(&mut self, pkts: &mut Vec<Packet>, pool: &mut PacketPool) -> TxResult;
    /// A file descriptor that becomes readable when frames arrive, for
    /// adaptive idle mode. `None`: the worker sleeps briefly instead.
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Moves the drops the port itself saw since the last call (frames
    /// that never became packets, kernel ring drops) into `drops`.
    fn take_drops(&mut self, _drops: &mut crate::stats::BatchDrops) {}
    /// Periodic housekeeping while idle (reclaim TX completions, kick rings).
    fn idle(&mut self) -> Result<(), PortError> {
        Ok(())
    }
}
