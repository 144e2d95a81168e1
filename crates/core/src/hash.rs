//! A stable 64-bit hash (FNV-1a) for decisions that must not change between runs, machines or
//! Rust versions: which split a page of a corpus falls into, the seed of a layer's fresh
//! weights. (The standard library's hasher is randomised per process.)

/// FNV-1a over `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::fnv1a64;

    #[test]
    fn published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            fnv1a64(b"text/shared/guide/autocorr_url.html"),
            0x0f04_ad64_0e06_4c1c
        );
    }
}
