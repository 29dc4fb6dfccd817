//! Fuzz target `pool`: tests/fuzz_targets/pool.rs.
#![no_main]

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[allow(dead_code)]
#[path = "../../tests/fuzz_targets/common.rs"]
mod common;
#[path = "../../tests/fuzz_targets/pool.rs"]
mod pool;

libfuzzer_sys::fuzz_target!(|data: &[u8]| pool::run(data));
