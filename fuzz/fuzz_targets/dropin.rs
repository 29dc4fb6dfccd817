//! Fuzz target `dropin`: tests/fuzz_targets/dropin.rs.
#![no_main]

// The preload crate brings its own global allocator (tieralloc) and exports malloc & co.
#[allow(unused_imports)]
use tieralloc_preload as _;

#[allow(dead_code)]
#[path = "../../tests/fuzz_targets/common.rs"]
mod common;
#[path = "../../tests/fuzz_targets/dropin.rs"]
mod dropin;

libfuzzer_sys::fuzz_target!(|data: &[u8]| dropin::run(data));
