//! Counters: per-port traffic and drops by reason.
//!
//! Each port's counters are written by the one worker that owns the port, once
//! per batch, and read by the control thread at any time (relaxed atomics).
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal: $doc:literal,)*) => {
        /// Why a frame (or a learning event) was dropped.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum DropReason { $(#[doc = $doc] $variant,)* }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// Number of reasons.
            pub const COUNT: usize = Self::ALL.len();
            /// The name shown by `vswitch stats`.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
        }
    };
}

drop_reasons! {
    Runt => "runt": "Shorter than an Ethernet header.",
    BadSrcMac => "bad_src_mac": "Source MAC is multicast or zero.",
    NoNetwork => "no_network": "Ingress port belongs to no network.",
    SamePort => "same_port": "Destination was learned on the ingress port.",
    LearnLimit => "learn_limit": "Source not learned: the network's MAC limit is reached (frame still forwarded).",
    LearnTableFull => "learn_table_full": "Source not learned: the FDB has no free slot (frame still forwarded).",
    PortDown => "port_down": "Output port is gone or not yet up.",
    TxFull => "tx_full": "Output port's transmit ring or queue was full.",
    TxError => "tx_error": "The kernel refused the frame on transmit.",
    HandoffFull => "handoff_full": "Queue to another worker (the one that owns the output port, or the frame's connection) was full.",
    BadOffload => "bad_offload": "Malformed checksum/segmentation request from a TAP.",
    TooBig => "too_big": "Frame larger than the output port accepts.",
    RxError => "rx_error": "The port received something that is not a frame (e.g. a bad virtio-net header).",
    RxRingFull => "rx_ring_full": "The kernel dropped frames for this socket: RX ring full or fill ring empty (AF_XDP), receive buffer full (AF_PACKET uplink).",
    Isolated => "isolated": "Addressed to another network's subnet: networks are isolated.",
    Internal => "internal": "Egress or published-port traffic of an --internal network.",
    IccBlocked => "icc_blocked": "Container to container in a --no-icc network (for a broadcast: the copies other containers would have had).",
    NoRoute => "no_route": "Routed frame with no uplink, no route, or no host interface to deliver to.",
    NeighMiss => "neigh_miss": "Next hop's MAC not known yet (resolution requested from the kernel).",
    TtlExceeded => "ttl_exceeded": "Routed IPv4 packet whose TTL ran out.",
    BadL3 => "bad_l3": "Malformed or unsupported packet for the gateway (truncated, wrong IPv4 header checksum, IP options cut, fragment, not IPv4).",
    CtFull => "ct_full": "New flow refused: the connection tracking table is full (existing flows still pass).",
    NatPortsExhausted => "nat_ports_exhausted": "New flow refused: no free SNAT port for that destination.",
    NatPortHeld => "nat_port_held": "Reply to a NAT port whose connection is being taken over after a restart (its container's port is not back yet); not left to the kernel, which would reset it.",
    NoContainer => "no_container": "Published port or reply for a container address the network does not know.",
    VxlanMalformed => "vxlan_malformed": "VXLAN packet truncated, or with bad flags or reserved bits.",
    VxlanUnknownVni => "vxlan_unknown_vni": "VXLAN packet for a VNI no overlay network uses.",
    VxlanUnknownVtep => "vxlan_unknown_vtep": "VXLAN packet from a VTEP that is not a peer of the network.",
    ToKernel => "to_kernel": "Uplink frame that is not the switch's: left to the host kernel (a copy; not lost).",
}

/// Counters of one port.
#[derive(Debug, Default)]
pub struct PortStats {
    /// Frames received.
    pub rx_packets: AtomicU64,
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Frames sent.
    pub tx_packets: AtomicU64,
    /// Bytes sent.
    pub tx_bytes: AtomicU64,
    /// Drops by [`DropReason`].
    pub drops: [AtomicU64; DropReason::COUNT],
}

impl PortStats {
    /// Adds received traffic.
    #[inline]
    pub fn add_rx(&self, packets: u64, bytes: u64) {
        self.rx_packets.fetch_add(packets, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds sent traffic.
    #[inline]
    pub fn add_tx(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `n` drops for `reason`.
    #[inline]
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Current value of a drop counter.
    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// A copy for display.
    pub fn snapshot(&self) -> PortStatsSnapshot {
        PortStatsSnapshot {
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), self.drops_of(*r)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }
}

/// Plain copy of [`PortStats`].
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PortStatsSnapshot {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Non-zero drop counters by reason name.
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// Drops counted locally during one batch, flushed to [`PortStats`] once.
#[derive(Debug, Default, Clone)]
pub struct BatchDrops {
    counts: [u32; DropReason::COUNT],
    any: bool,
}

impl BatchDrops {
    /// Counts one drop.
    #[inline]
    pub fn add(&mut self, r: DropReason) {
        self.add_n(r, 1);
    }

    /// Counts `n` drops.
    #[inline]
    pub fn add_n(&mut self, r: DropReason, n: u32) {
        if n > 0 {
            self.counts[r as usize] = self.counts[r as usize].saturating_add(n);
            self.any = true;
        }
    }

    /// Adds the counts to `stats` and clears them.
    #[inline]
    pub fn flush(&mut self, stats: &PortStats) {
        if !self.any {
            return;
        }
        for (i, c) in self.counts.iter_mut().enumerate() {
            if *c != 0 {
                stats.drops[i].fetch_add(*c as u64, Ordering::Relaxed);
                *c = 0;
            }
        }
        self.any = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unique_and_flush() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        let s = PortStats::default();
        let mut b = BatchDrops::default();
        b.add(DropReason::Runt);
        b.add(DropReason::Runt);
        b.flush(&s);
        b.flush(&s);
        assert_eq!(s.drops_of(DropReason::Runt), 2);
        assert_eq!(s.snapshot().drops.get("runt"), Some(&2));
    }
}
