//! The secure drop-in's look at a foreign pointer (preload/src/foreign.rs) against the
//! loader's locks: tests/c/free_in_phdr_walk.c frees `mmap`ed memory from a `dl_iterate_phdr`
//! callback (which holds `dl_load_write_lock`) while another thread's `dlopen` holds
//! `dl_load_lock` and waits for the write lock. Both builds leave such a pointer alone, so the
//! program must finish; the hang guard of 60 s is not a measurement.
//!
//! Found by a review of 1446afe: the secure build hung there in every run. Its `dladdr`
//! took `dl_load_lock` while the callback's thread held `dl_load_write_lock`, the order
//! opposite to `dlopen`'s. A walk with `dl_iterate_phdr` instead (only the recursive write
//! lock) passes that test but hangs a fork child whose parent had another thread inside a
//! `dl_iterate_phdr` walk at the fork (glibc 2.36 resets `dl_load_lock` in the child, not
//! `dl_load_write_lock`). Fixed with `_dl_find_object` (lock-free, glibc 2.35), which passes
//! both.
//!
//! Needs the libraries built first (`cargo build -p tieralloc-preload --release`, and the
//! secure one: scripts/test.sh) and `cc`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[path = "../../tests/common/child.rs"]
mod child;

/// Compiles tests/c/free_in_phdr_walk.c into a scratch directory (once per test process).
fn program() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/free_in_phdr_walk.c");
        child::compile_c(&src, "free_in_phdr_walk", &[])
    })
    .clone()
}

/// The secure drop-in (`child::secure_preload_library`).
fn secure_library() -> Option<PathBuf> {
    child::secure_preload_library()
}

/// Runs the program with `args` under the drop-in `lib`: it must finish (60 s hang guard),
/// leaving the `mmap`ed pointer alone.
fn finishes_under(lib: &Path, args: &[&str]) {
    let mut cmd = Command::new(program());
    cmd.args(args)
        .env("LD_PRELOAD", lib)
        .env_remove("TIERALLOC_ON_ERROR")
        .env_remove("TIERALLOC_VERBOSE");
    let out = child::run(&mut cmd, Duration::from_secs(60));
    out.expect_success("survived");
    out.require(
        !out.stderr.contains("tieralloc: error"),
        "an mmap'ed pointer is left alone",
    );
}

#[test]
fn a_free_inside_a_phdr_walk_during_a_dlopen_finishes_under_the_default_build() {
    finishes_under(&child::preload_library(), &[]);
}

#[test]
fn a_free_inside_a_phdr_walk_during_a_dlopen_finishes_under_the_secure_build() {
    if let Some(lib) = secure_library() {
        finishes_under(&lib, &[]);
    }
}

/// A fork child's free of a foreign pointer while another thread of the parent was inside a
/// `dl_iterate_phdr` walk at the fork: passes with `dladdr` (whose lock glibc resets in the
/// child) and with `_dl_find_object` (no lock); a walk with `dl_iterate_phdr` hangs here.
#[test]
fn a_fork_child_frees_a_foreign_pointer_while_a_parent_thread_walked_the_objects() {
    finishes_under(&child::preload_library(), &["fork"]);
    if let Some(lib) = secure_library() {
        finishes_under(&lib, &["fork"]);
    }
}
