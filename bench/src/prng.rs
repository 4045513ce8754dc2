//! The deterministic pseudo-random generator behind every workload choice.
//!
//! A run must be reproducible from its `--seed`: the same seed gives the same
//! sequence of offsets, read/write choices and crash-checker LBAs on any
//! machine. We use our own generator rather than a crate so the sequence can
//! never change under us with a dependency update. `SplitMix64` turns one seed
//! into well-mixed state words (and derives independent per-queue streams);
//! `xoshiro256**` produces the stream. Neither is cryptographic; both are fast
//! enough to call once per I/O without showing in a profile.

pub use tandem_env::prng::{mix64, SplitMix64};

/// xoshiro256** (Blackman and Vigna 2018).
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`. Different seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        let mut sm = SplitMix64::new(seed);
        let s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        // SplitMix64 output is a bijection of distinct counter values, so all
        // four words cannot be zero (the one state xoshiro must avoid).
        Rng { s }
    }

    /// An independent stream for worker `index` of a run seeded with `seed`,
    /// so that queue 3 draws the same offsets whatever the queue count.
    pub fn for_stream(seed: u64, index: u64) -> Self {
        Rng::new(mix64(seed ^ mix64(index.wrapping_add(0x5851_f42d_4c95_7f2d))))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform value in `0..bound` without modulo bias (Lemire's
    /// multiply-and-reject). `bound` must be non-zero.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "Rng::below needs a non-empty range");
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u8) -> bool {
        self.below(100) < u64::from(percent)
    }

    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_different_seeds_differ() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let mut c = Rng::new(43);
        let xs: Vec<u64> = (0..64).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..64).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..64).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        assert_ne!(Rng::for_stream(42, 0).next_u64(), Rng::for_stream(42, 1).next_u64());
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 1234567, from the reference C code.
        let mut sm = SplitMix64::new(1234567);
        assert_eq!(sm.next_u64(), 6457827717110365317);
        assert_eq!(sm.next_u64(), 3203168211198807973);
    }

    #[test]
    fn below_stays_in_range_and_is_roughly_uniform() {
        let mut rng = Rng::new(7);
        let buckets = 10u64;
        let draws = 100_000u64;
        let mut counts = [0u64; 10];
        for _ in 0..draws {
            let v = rng.below(buckets);
            assert!(v < buckets);
            counts[v as usize] += 1;
        }
        // Each bucket expects 10000 with a standard deviation of about 95;
        // 10% slack is more than ten deviations, so this fails only if biased.
        for (bucket, &count) in counts.iter().enumerate() {
            assert!((9_000..=11_000).contains(&count), "bucket {bucket} got {count}");
        }
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn percent_matches_its_rate() {
        let mut rng = Rng::new(99);
        let hits = (0..100_000).filter(|_| rng.percent(70)).count();
        assert!((68_500..=71_500).contains(&hits), "70% gave {hits}");
        assert!((0..1000).all(|_| !rng.percent(0)));
        assert!((0..1000).all(|_| rng.percent(100)));
    }

    #[test]
    fn fill_covers_odd_lengths() {
        let mut rng = Rng::new(1);
        let mut buf = [0u8; 13];
        rng.fill(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
        assert!(buf[8..].iter().any(|&b| b != 0));
    }
}
