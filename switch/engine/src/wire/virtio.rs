//! `struct virtio_net_hdr`, the 10-byte header a TAP opened with
//! `IFF_VNET_HDR` puts in front of each frame, and the offload work it carries.

/// Size of the header (no `num_buffers`; `TUNSETVNETHDRSZ` keeps the default).
pub const VNET_HDR_LEN: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const F_DATA_VALID: u8 = 2;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_UDP: u8 = 3;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

/// A checksum the sender left for someone else to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsumPartial {
    /// Where summing starts (offset in the Ethernet frame).
    pub start: u16,
    /// Where the result goes, relative to `start`.
    pub offset: u16,
}

/// Kind of segmentation a large frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4.
    Tcp4,
    /// TCP over IPv6.
    Tcp6,
    /// UDP, segmented per datagram (USO).
    UdpL4,
    /// UDP fragmentation offload (legacy UFO); never negotiated by vswitch.
    Ufo,
}

/// Segmentation a large frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// Protocol to segment.
    pub kind: GsoKind,
    /// Payload bytes per segment (MSS).
    pub size: u16,
    /// Length of the Ethernet + IP + L4 headers.
    pub hdr_len: u16,
    /// The ECN (CWR) bit is in use.
    pub ecn: bool,
}

/// Offload work attached to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    /// The L4 checksum is partial.
    pub csum: Option<CsumPartial>,
    /// The frame is a large segment to be cut.
    pub gso: Option<Gso>,
    /// The sender vouches that checksums are correct.
    pub data_valid: bool,
}

impl Offload {
    /// Nothing to do.
    #[inline]
    pub fn is_none(&self) -> bool {
        self.csum.is_none() && self.gso.is_none()
    }
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VnetError {
    /// Shorter than a header.
    #[error("truncated virtio-net header")]
    Truncated,
    /// A GSO type vswitch does not handle.
    #[error("unknown virtio-net GSO type {0}")]
    UnknownGso(u8),
}

/// Parses a header in the (little-endian) layout TAP uses on this host.
pub fn parse(h: &[u8]) -> Result<Offload, VnetError> {
    let h: &[u8; VNET_HDR_LEN] = h
        .get(..VNET_HDR_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(VnetError::Truncated)?;
    let flags = h[0];
    let gso_type = h[1];
    let hdr_len = u16::from_le_bytes([h[2], h[3]]);
    let gso_size = u16::from_le_bytes([h[4], h[5]]);
    let csum_start = u16::from_le_bytes([h[6], h[7]]);
    let csum_offset = u16::from_le_bytes([h[8], h[9]]);
    let csum = (flags & F_NEEDS_CSUM != 0).then_some(CsumPartial {
        start: csum_start,
        offset: csum_offset,
    });
    let kind = match gso_type & !GSO_ECN {
        GSO_NONE => None,
        GSO_TCPV4 => Some(GsoKind::Tcp4),
        GSO_TCPV6 => Some(GsoKind::Tcp6),
        GSO_UDP_L4 => Some(GsoKind::UdpL4),
        GSO_UDP => Some(GsoKind::Ufo),
        other => return Err(VnetError::UnknownGso(other)),
    };
    let gso = kind.map(|kind| Gso {
        kind,
        size: gso_size,
        hdr_len,
        ecn: gso_type & GSO_ECN != 0,
    });
    Ok(Offload {
        csum,
        gso,
        data_valid: flags & F_DATA_VALID != 0,
    })
}

/// Writes the header for `o` into `out` (at least [`VNET_HDR_LEN`] bytes).
pub fn emit(o: &Offload, out: &mut [u8]) {
    let mut flags = 0;
    let (mut start, mut offset) = (0u16, 0u16);
    if let Some(c) = o.csum {
        flags |= F_NEEDS_CSUM;
        start = c.start;
        offset = c.offset;
    } else if o.data_valid {
        flags |= F_DATA_VALID;
    }
    let (mut gso_type, mut hdr_len, mut size) = (GSO_NONE, 0u16, 0u16);
    if let Some(g) = o.gso {
        gso_type = match g.kind {
            GsoKind::Tcp4 => GSO_TCPV4,
            GsoKind::Tcp6 => GSO_TCPV6,
            GsoKind::UdpL4 => GSO_UDP_L4,
            GsoKind::Ufo => GSO_UDP,
        } | if g.ecn { GSO_ECN } else { 0 };
        hdr_len = g.hdr_len;
        size = g.size;
    }
    out[0] = flags;
    out[1] = gso_type;
    out[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    out[4..6].copy_from_slice(&size.to_le_bytes());
    out[6..8].copy_from_slice(&start.to_le_bytes());
    out[8..10].copy_from_slice(&offset.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_tso_partial() {
        let o = Offload {
            csum: Some(CsumPartial {
                start: 34,
                offset: 16,
            }),
            gso: Some(Gso {
                kind: GsoKind::Tcp4,
                size: 1448,
                hdr_len: 66,
                ecn: false,
            }),
            data_valid: false,
        };
        let mut h = [0u8; VNET_HDR_LEN];
        emit(&o, &mut h);
        assert_eq!(parse(&h).unwrap(), o);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse(&[0; 5]), Err(VnetError::Truncated));
        let mut h = [0u8; VNET_HDR_LEN];
        h[1] = 9;
        assert_eq!(parse(&h), Err(VnetError::UnknownGso(9)));
        assert!(parse(&[0; VNET_HDR_LEN]).unwrap().is_none());
    }
}
