//! Fuzz target `slot_arena`: tests/fuzz_targets/slot_arena.rs.
#![no_main]

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[allow(dead_code)]
#[path = "../../tests/fuzz_targets/common.rs"]
mod common;
#[path = "../../tests/fuzz_targets/slot_arena.rs"]
mod slot_arena;

libfuzzer_sys::fuzz_target!(|data: &[u8]| slot_arena::run(data));
