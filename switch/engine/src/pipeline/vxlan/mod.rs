//! VXLAN (RFC 7348): overlay networks across hosts over the uplink.
//!
//! A remote VTEP appears to the L2 stages as a port number at or above
//! [`REMOTE_BASE`] (`REMOTE_BASE + index` into the snapshot's VTEP list), so
//! the FDB learns remote MACs like local ones and the forward stage needs no
//! special case. At dispatch, a frame for such a "port" is encapsulated in
//! place (the 50 bytes of outer Ethernet, IPv4, UDP and VXLAN headers go into
//! the headroom) and queued on the uplink. Broadcast, multicast and unknown
//! unicast from a local port go to every local port and to every peer of the
//! network (head-end replication); what arrives from a tunnel is flooded to
//! local ports only (split horizon).
//!
//! TSO segments are cut to the inner MSS before encapsulation; a partial
//! checksum keeps its request, moved past the outer headers, so the uplink
//! (AF_PACKET with virtio-net headers) still lets the kernel finish it.
pub mod decap;
pub mod encap;

use crate::port::PortId;

pub use decap::{coalesce, decap, Decap, DecapCache};
pub use encap::{flood_remote, overlay_gso_max_size, to_remote, EncapCache};

/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// Most UDP payload one GSO super-datagram carries: what the 16-bit IPv4
/// total length leaves after the IPv4 and UDP headers.
pub(crate) const MAX_SUPER_PAYLOAD: usize = 65535 - 20 - 8;
/// Outer Ethernet + IPv4 + UDP + VXLAN.
pub const ENCAP_LEN: usize = 14 + 20 + 8 + 8;
/// Port numbers from here on name remote VTEPs.
pub const REMOTE_BASE: PortId = 0x8000;

/// Whether `p` names a remote VTEP.
#[inline]
pub fn is_remote(p: PortId) -> bool {
    p >= REMOTE_BASE
}

#[cfg(test)]
mod tests;
