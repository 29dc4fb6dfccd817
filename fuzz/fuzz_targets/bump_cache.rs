//! Fuzz target `bump_cache`: tests/fuzz_targets/bump.rs.
#![no_main]

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "../../tests/fuzz_targets/bump.rs"]
mod bump;
#[allow(dead_code)]
#[path = "../../tests/fuzz_targets/common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bump::run(data));
