//! xorshift64*: a small, fast, seeded generator whose sequence depends only on its seed.
//!
//! Owns: the generator's state; touches nothing else (no allocation, no I/O).
//!
//! Shared, with `#[path = ...] mod rng;`, by benches/workloads (every allocator sees the same
//! sizes and slots) and tests/stress.rs (a failure replays from its seed), so it uses only the
//! standard library.

/// xorshift64* state; never zero.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    #[inline(always)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in 0..n (modulo bias, negligible for the small `n` used here).
    #[inline(always)]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform-ish in lo..=hi.
    #[inline(always)]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }
}
