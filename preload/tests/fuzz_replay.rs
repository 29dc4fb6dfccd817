//! Replays the committed fuzz corpus of the drop-in's entry points on stable: every file of
//! `fuzz/corpus/dropin/` through tests/fuzz_targets/dropin.rs, the function cargo-fuzz runs.
//! Linking this crate makes its `malloc` & co. the process's (as under LD_PRELOAD) and
//! tieralloc the Rust global allocator. docs/correctness/fuzz.md describes the targets.

use std::path::Path;
use tieralloc_preload as _;

#[path = "../../tests/fuzz_targets/common.rs"]
mod common;
#[path = "../../tests/fuzz_targets/dropin.rs"]
mod dropin;

#[test]
fn dropin_corpus() {
    replay("corpus", 10);
}

/// Runs the target on every file of `fuzz/<set>/dropin/` (sorted); there must be `min`.
fn replay(set: &str, min: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(set)
        .join("dropin");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= min,
        "{}: only {} inputs",
        dir.display(),
        files.len()
    );
    for path in files {
        let data = std::fs::read(&path).unwrap();
        // Name the input if it fails.
        struct Name<'a>(&'a Path);
        impl Drop for Name<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    eprintln!("fuzz input that failed: {}", self.0.display());
                }
            }
        }
        let _name = Name(&path);
        dropin::run(&data);
    }
}
