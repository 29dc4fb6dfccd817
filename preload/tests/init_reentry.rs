//! The drop-in's initialisation allocating through itself (issue 14, item 4): glibc's
//! `pthread_atfork` mallocs when its table of handlers grows, and tieralloc registers its fork
//! handlers from inside its first allocation. That inner allocation used to register the
//! calling thread's heap a second time (a loop in the registry): `malloc_stats` and every
//! later thread start or exit spun forever. See tests/c/init_atfork.c.
//!
//! The library is found next to this test executable, where
//! `cargo build -p tieralloc-preload --release` puts it (build it first). Needs `cc`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[path = "../../tests/common/child.rs"]
mod child;

#[test]
fn an_allocation_made_by_the_initialisation_registers_the_heap_once() {
    let c_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    let exe = child::compile_c(
        &c_dir.join("init_atfork.c"),
        "init_atfork",
        &["-fno-builtin"],
    );
    // The library that fills glibc's table of fork handlers before the drop-in's constructor
    // runs (tests/c/atfork48.c): without it the drop-in initialises before the program's own
    // 48 registrations, and nothing re-enters (with the registry's guard taken out, the
    // program hangs with it and passes without it).
    let lib = child::compile_c(
        &c_dir.join("atfork48.c"),
        "libatfork48.so",
        &["-shared", "-fPIC"],
    );
    // Preloaded after the drop-in: the loader runs the constructors of preloaded libraries
    // last-listed first.
    let preload = format!("{} {}", child::preload_library().display(), lib.display());
    // A hang guard, not a measurement: the program takes milliseconds.
    let r = child::run(
        Command::new(&exe)
            .env("LD_PRELOAD", preload)
            .env_remove("TIERALLOC_SHOW_STATS"),
        Duration::from_secs(30),
    );
    for f in [&exe, &lib] {
        if let Some(dir) = f.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    r.require(
        r.status.is_some(),
        "the program hung (a heap registered twice loops the registry)",
    );
    r.expect_success("init_atfork ok 1");
    let stderr = r.stderr;
    // malloc_stats printed the table once, with the class of the 100-byte block.
    assert_eq!(stderr.matches("class").count(), 1, "stderr: {stderr}");
}

/// Fork handlers a program registered before its first allocation (a library's constructor
/// does so), each allocating memory that needs new segments: glibc runs them while its own
/// malloc is unlocked, so they may allocate. tieralloc's handlers were registered at its first
/// allocation, after them: its prepare handler ran first and held every segment list's lock
/// through the program's prepare handler, and its parent and child handlers let go of them
/// only after the program's. Each run hung (review rev13: killed at the guard, all three),
/// spinning in `LockedList::push_abandoned` under `take_slices`. See tests/c/atfork_handlers.c.
#[test]
fn fork_handlers_registered_before_the_first_allocation_may_allocate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/atfork_handlers.c");
    let exe = child::compile_c(&src, "atfork-handlers", &[]);
    for which in ["prepare", "parent", "child"] {
        // A hang guard, not a measurement: the program takes milliseconds.
        let r = child::run(
            Command::new(&exe)
                .arg(which)
                .env("LD_PRELOAD", child::preload_library())
                .env_remove("TIERALLOC_SHOW_STATS"),
            Duration::from_secs(30),
        );
        r.require(
            r.status.is_some(),
            &format!("the program hung allocating in its {which} fork handler"),
        );
        r.expect_success(&format!("atfork_handlers {which} ok"));
    }
    if let Some(dir) = exe.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
