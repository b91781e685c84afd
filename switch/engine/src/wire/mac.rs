//! MAC addresses as 48-bit integers, the form the FDB keys on.
use std::fmt;

/// A MAC address packed into the low 48 bits of a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub u64);

impl Mac {
    /// The broadcast address.
    pub const BROADCAST: Mac = Mac(0xffff_ffff_ffff);

    /// From six bytes in wire order.
    #[inline]
    pub fn from_bytes(b: &[u8; 6]) -> Self {
        Mac(u64::from_be_bytes([
            0, 0, b[0], b[1], b[2], b[3], b[4], b[5],
        ]))
    }

    /// The six bytes in wire order.
    #[inline]
    pub fn bytes(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// Group bit set: broadcast or multicast.
    #[inline]
    pub fn is_multicast(self) -> bool {
        self.0 & (1 << 40) != 0
    }

    /// All zeros: never a valid source.
    #[inline]
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A MAC that did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes like 02:42:ac:11:00:02")]
pub struct MacParseError(pub String);

impl std::str::FromStr for Mac {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split([':', '-']) {
            if n == 6 || part.len() != 2 {
                return Err(MacParseError(s.to_string()));
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.to_string()))?;
            n += 1;
        }
        if n != 6 {
            return Err(MacParseError(s.to_string()));
        }
        Ok(Mac::from_bytes(&out))
    }
}

/// Destination and source MAC of an Ethernet frame, or `None` for a runt.
#[inline]
pub fn dst_src(frame: &[u8]) -> Option<(Mac, Mac)> {
    let h: &[u8; 14] = frame.get(..14)?.try_into().ok()?;
    // Two overlapping 8-byte big-endian reads (one load and a byte swap each).
    let a = u64::from_be_bytes(*h.first_chunk::<8>()?);
    let b = u64::from_be_bytes(*h[4..].first_chunk::<8>()?);
    Some((Mac(a >> 16), Mac(b & 0xffff_ffff_ffff)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_print_roundtrip() {
        let m: Mac = "02:42:AC:11:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        assert!(!m.is_multicast());
        assert!(Mac::BROADCAST.is_multicast());
        assert!("01:00:5e:00:00:01".parse::<Mac>().unwrap().is_multicast());
        assert!("02:42:ac:11:00".parse::<Mac>().is_err());
        assert!("02:42:ac:11:00:02:03".parse::<Mac>().is_err());
        assert!("zz:42:ac:11:00:02".parse::<Mac>().is_err());
    }

    #[test]
    fn runt_has_no_macs() {
        assert!(dst_src(&[0u8; 13]).is_none());
        let mut f = [0u8; 14];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        let (d, s) = dst_src(&f).unwrap();
        assert_eq!(d, Mac::BROADCAST);
        assert_eq!(s.to_string(), "02:00:00:00:00:01");
    }
}
