//! The only source of randomness in a run: a BLAKE3 extendable output keyed by the seed and a
//! stream name, so adding a draw in one actor never shifts the draws of another.

/// A deterministic pseudo-random stream.
pub struct Rng {
    reader: blake3::OutputReader,
}

impl Rng {
    /// The stream `name` of run `seed`.
    pub fn new(seed: u64, name: &str) -> Rng {
        let mut h = blake3::Hasher::new_derive_key("agora/sim/rng/v1");
        h.update(&seed.to_le_bytes());
        h.update(name.as_bytes());
        Rng {
            reader: h.finalize_xof(),
        }
    }

    /// 64 uniform bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.reader.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// Uniform in `0..n` (0 when `n` is 0), by multiply-shift: no modulo bias worth a draw.
    pub fn below(&mut self, n: u64) -> u64 {
        let wide = u128::from(self.next_u64()) * u128::from(n);
        u64::try_from(wide >> 64).unwrap_or(0)
    }

    /// Uniform in `lo..=hi` (`lo` when `hi <= lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `ppm` parts per million.
    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        self.below(1_000_000) < u64::from(ppm)
    }

    /// 32 uniform bytes.
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.reader.fill(&mut b);
        b
    }

    /// 16 uniform bytes.
    pub fn bytes16(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        self.reader.fill(&mut b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn same_seed_same_stream_and_streams_differ() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::new(7, "x");
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::new(7, "x");
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::new(7, "y");
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut r = Rng::new(1, "below");
        assert!((0..1000).all(|_| r.below(10) < 10));
        assert_eq!(r.below(0), 0);
    }
}
