//! `TierAlloc`'s GlobalAlloc methods against a shadow model: tests/fuzz_targets/global.rs.
#![no_main]

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[allow(dead_code)]
#[path = "../../tests/fuzz_targets/common.rs"]
mod common;
#[path = "../../tests/fuzz_targets/global.rs"]
mod global;

libfuzzer_sys::fuzz_target!(|data: &[u8]| global::run(data));
