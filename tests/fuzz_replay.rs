//! Replays the committed fuzz corpus on stable: every file of `fuzz/corpus/<target>/` through
//! the same target function that cargo-fuzz runs (tests/fuzz_targets/*.rs), so every input
//! that ever found a bug, and the inputs that reach the most code, run in every test run.
//! The drop-in's target is replayed by preload/tests/fuzz_replay.rs. docs/correctness/fuzz.md
//! describes the targets and how to fuzz them.
//!
//! tieralloc is also this binary's global allocator, as in the fuzz binaries.

use std::path::Path;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "fuzz_targets/common.rs"]
mod common;
#[path = "common/corpus.rs"]
mod corpus;

#[path = "fuzz_targets/arena.rs"]
mod arena;
#[path = "fuzz_targets/bump.rs"]
mod bump;
#[path = "fuzz_targets/global.rs"]
mod global;
#[path = "fuzz_targets/placed.rs"]
mod placed;
#[path = "fuzz_targets/pool.rs"]
mod pool;
#[path = "fuzz_targets/slot_arena.rs"]
mod slot_arena;

/// Runs `f` on every file of `fuzz/corpus/<target>/`; the corpus must not be empty.
fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    corpus::replay(&dir, 10, f);
}

#[test]
fn tieralloc_corpus() {
    replay("tieralloc", global::run);
}

#[test]
fn arena_corpus() {
    replay("arena", arena::run);
}

#[test]
fn slot_arena_corpus() {
    replay("slot_arena", slot_arena::run);
}

#[test]
fn bump_cache_corpus() {
    replay("bump_cache", bump::run);
}

#[test]
fn pool_corpus() {
    replay("pool", pool::run);
}

#[test]
fn placed_corpus() {
    replay("placed", placed::run);
}
