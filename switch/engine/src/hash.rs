//! The engine's hash mixers, in one place: murmur3's finalizer for keyed
//! table hashes (conntrack), its first half for integer keys the control
//! plane chooses (addresses, VXLAN source ports), and the multipliers of
//! the FDB's multiplicative (Fibonacci) two-choice buckets.

/// The first multiplier of murmur3's fmix64.
const FMIX_C1: u64 = 0xff51_afd7_ed55_8ccd;
/// The second multiplier of murmur3's fmix64.
const FMIX_C2: u64 = 0xc4ce_b9fe_1a85_ec53;

/// 2^64 divided by the golden ratio: Fibonacci hashing's multiplier (the
/// high bits of `k * FIB` depend on every bit of `k`).
pub const FIB: u64 = 0x9e37_79b9_7f4a_7c15;
/// A second odd multiplier with the same property (murmur3's), for a
/// second, independent bucket choice.
pub const FIB2: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// murmur3's fmix64: a full avalanche of 64 bits.
#[inline]
pub fn fmix64(x: u64) -> u64 {
    let x = mix_half(x);
    let x = x.wrapping_mul(FMIX_C2);
    x ^ (x >> 33)
}

/// The first half of fmix64 (xor-shift, multiply, xor-shift): enough to
/// spread keys nobody can aim (the control plane's addresses), at half the
/// cost.
#[inline]
pub fn mix_half(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(FMIX_C1);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmix64_is_murmur3s_finalizer() {
        // Reference values of murmur3's fmix64.
        assert_eq!(fmix64(0), 0);
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
        // One flipped input bit flips about half the output bits.
        let flips: u32 = (0..64)
            .map(|b| (fmix64(0x1234_5678) ^ fmix64(0x1234_5678 ^ (1 << b))).count_ones())
            .sum();
        assert!((64 * 24..64 * 40).contains(&flips), "{flips}");
    }
}
