//! A small seeded PRNG (SplitMix64) for tests whose random choices must be
//! reproducible: each run prints its seed, and an environment variable
//! replays it.

/// SplitMix64.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `$var` if set, else from the clock and the PID; prints
    /// `<label> figure: seed N (<var>=N replays it)`.
    #[must_use]
    pub fn from_env(var: &str, label: &str) -> Self {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos());
                #[expect(clippy::cast_possible_truncation, reason = "only the low bits matter")]
                let low = nanos as u64;
                low ^ u64::from(std::process::id())
            });
        eprintln!("{label} figure: seed {seed} ({var}={seed} replays it)");
        Self(seed)
    }

    #[must_use]
    pub fn with_seed(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An index in `0..n` (`n` > 0).
    pub fn index(&mut self, n: usize) -> usize {
        let n = u64::try_from(n).expect("a small bound");
        usize::try_from(self.below(n)).expect("below a usize bound")
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64().to_le_bytes()[0]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_numbers_within_bounds() {
        let (mut a, mut b) = (Rng::with_seed(42), Rng::with_seed(42));
        let xs: Vec<u64> = (0..100).map(|_| a.below(7)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.below(7)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| *x < 7));
        assert!((0..7).all(|v| xs.contains(&v)), "spread: {xs:?}");
    }
}
