//! Fuzz target `arena`: tests/fuzz_targets/arena.rs.
#![no_main]

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "../../tests/fuzz_targets/arena.rs"]
mod arena;
#[allow(dead_code)]
#[path = "../../tests/fuzz_targets/common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| arena::run(data));
