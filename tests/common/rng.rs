//! A small xorshift generator for the tests that draw sizes and choices at random: one per
//! thread, no allocation, no shared state, the same sequence from the same seed.
//!
//! Shared by several test crates with `#[path = "common/rng.rs"] mod rng;`; each uses part of
//! it.
#![allow(dead_code)]

/// The generator's state (any value but 0).
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next value below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
