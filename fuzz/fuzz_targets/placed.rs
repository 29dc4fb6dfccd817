//! Fuzz target `placed`: tests/fuzz_targets/placed.rs.
#![no_main]

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[allow(dead_code)]
#[path = "../../tests/fuzz_targets/common.rs"]
mod common;
#[path = "../../tests/fuzz_targets/placed.rs"]
mod placed;

libfuzzer_sys::fuzz_target!(|data: &[u8]| placed::run(data));
