//! The one seeded generator of the workspace: SplitMix64. Crash and
//! simulation tests replay exactly from a seed, and the load generator builds
//! its xoshiro256** streams on it (`tandem_perf::prng`). Our own code, so a
//! dependency update can never change a recorded seed's sequence.

/// SplitMix64 (Steele, Lea, Flood 2014): a one-word generator used for seeding
/// and for stateless mixing of a few words into one.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }
}

/// The SplitMix64 finaliser: a bijective mix of one word.
pub fn mix64(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
