//! The VXLAN header (RFC 7348, section 5), as a view over a buffer in the
//! manner of smoltcp's `wire` types (which have none for VXLAN).
//!
//! ```text
//!  0               1               2               3
//! |R|R|R|R|I|R|R|R|           Reserved (24 bits)                  |
//! |        VXLAN Network Identifier (VNI)         |   Reserved    |
//! ```

/// Length of the header.
pub const HEADER_LEN: usize = 8;

/// The I flag: the VNI is valid.
const FLAG_I: u8 = 0x08;

/// A VXLAN header at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// A view over `buffer` without checking its length (the caller did).
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// A view over `buffer`, `None` if it is shorter than the header.
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= HEADER_LEN).then_some(Self { buffer })
    }

    #[inline]
    fn word(&self) -> u64 {
        let b = self.buffer.as_ref();
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// The I flag is set and every reserved bit is clear, as a receiver
    /// must check (section 5: "reserved fields ... MUST be set to zero").
    #[inline]
    pub fn is_valid(&self) -> bool {
        self.word() & 0xffff_ffff_0000_00ff == (FLAG_I as u64) << 56
    }

    /// The 24-bit network identifier.
    #[inline]
    pub fn vni(&self) -> u32 {
        (self.word() >> 8) as u32 & 0x00ff_ffff
    }

    /// What follows the header: the inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Writes a header for `vni`: the I flag set, the reserved fields zero.
    #[inline]
    pub fn init(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        b[..HEADER_LEN].copy_from_slice(&[0; HEADER_LEN]);
        b[0] = FLAG_I;
        b[4..7].copy_from_slice(&vni.to_be_bytes()[1..4]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_reserved_bits() {
        let mut b = [0xffu8; 12];
        VxlanPacket::new_unchecked(&mut b[..]).init(0x12_3456);
        assert_eq!(&b[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        let v = VxlanPacket::new_checked(&b[..]).unwrap();
        assert!(v.is_valid());
        assert_eq!(v.vni(), 0x12_3456);
        assert_eq!(v.payload(), &[0xff; 4]);
        // Any reserved bit, or the I flag missing: not valid.
        for (at, bit) in [
            (0, 0x80),
            (0, 0x01),
            (1, 0x01),
            (3, 0x80),
            (7, 0x01),
            (0, 0x08),
        ] {
            let mut c = b;
            c[at] ^= bit;
            assert!(
                !VxlanPacket::new_unchecked(&c[..]).is_valid(),
                "{at}/{bit:#x}"
            );
        }
        assert!(VxlanPacket::new_checked(&b[..7]).is_none());
    }
}
