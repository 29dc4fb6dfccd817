//! Replays the committed fuzz corpus of the drop-in's entry points on stable: every file of
//! `fuzz/corpus/dropin/` through tests/fuzz_targets/dropin.rs, the function cargo-fuzz runs.
//! Linking this crate makes its `malloc` & co. the process's (as under LD_PRELOAD) and
//! tieralloc the Rust global allocator. docs/correctness/fuzz.md describes the targets.

use std::path::Path;
use tieralloc_preload as _;

#[path = "../../tests/fuzz_targets/common.rs"]
mod common;
#[path = "../../tests/common/corpus.rs"]
mod corpus;
#[path = "../../tests/fuzz_targets/dropin.rs"]
mod dropin;

/// Runs the target on every file of `fuzz/corpus/dropin/`; the corpus must not be empty.
#[test]
fn dropin_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dropin");
    corpus::replay(&dir, 10, dropin::run);
}
