//! Heap errors in C programs under the drop-in: tests/c/heap_errors.c commits one error per
//! run (double frees of every kind; frees of interior, unaligned, stack, static, loader and
//! `mmap`ed pointers; of large and huge blocks; overflows, an underflow, a write after free),
//! each run under `LD_PRELOAD` with a timeout. The table below says what the default build
//! does with each, and [`SECURE_CASES`] where the secure build differs: a caught one ends with
//! SIGABRT and one report line naming the error and the pointer (or, for an overflow, with
//! SIGSEGV: the write, or the allocator meeting what it broke); one not caught (or left alone
//! on purpose: pointers outside every segment that are not provably a stack or a loaded
//! object's data) runs on and prints "survived". The reported ones are run again with
//! `TIERALLOC_ON_ERROR=warn` (the report, and the program survives) and `ignore` (no report,
//! and it survives). docs/security.md keeps the same table, with what glibc, mimalloc,
//! jemalloc and tcmalloc do.
//!
//! Needs the library built first (`cargo build -p tieralloc-preload --release`; it is found
//! next to this test executable) and `cc`.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[path = "../../tests/common/child.rs"]
mod child;

/// What a case's run must end with.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Not caught: the program runs on, prints "survived" and exits 0, with no report.
    Survives,
    /// SIGABRT after exactly one report line that holds this text and the pointer.
    Reports(&'static str),
    /// Killed by SIGSEGV, with no report (an overflow's write or what it broke).
    Crashes,
}

use Expect::{Crashes, Reports, Survives};

/// Each case of tests/c/heap_errors.c and what the default build does with it.
const CASES: &[(&str, Expect)] = &[
    ("double_free_immediate", Reports("double free (pointer")),
    ("double_free_delayed", Reports("double free (pointer")),
    ("double_free_interleaved", Reports("double free (pointer")),
    ("double_free_after_reuse", Reports("double free (pointer")),
    // Other blocks of the page stay live, and the block is not the last one freed: only the
    // secure build tells (SECURE_CASES).
    ("double_free_with_live_neighbours", Survives),
    (
        "double_free_other_thread",
        Reports("more blocks freed from other threads than the page has live"),
    ),
    (
        "double_free_across_threads",
        Reports("double free (pointer"),
    ),
    ("free_interior", Reports("not the start of a block")),
    ("free_unaligned", Reports("not the start of a block")),
    (
        "free_unaligned_other_thread",
        Reports("not the start of a block"),
    ),
    // Outside every segment: the default build's free leaves such pointers alone
    // (preload/src/lib.rs); the secure one reports the stack and static ones.
    ("free_stack", Survives),
    ("free_static", Survives),
    ("free_stack_thread", Survives),
    // realloc copies what it can read and leaves the old address alone.
    ("realloc_stack", Survives),
    // Left alone by both builds: the loader's early blocks and image, and mmap'ed memory.
    ("free_loader_block", Survives),
    ("free_loader_image", Survives),
    ("free_mmap", Survives),
    ("double_free_large", Reports("no block is in use there")),
    ("free_large_interior", Reports("not the start of a block")),
    ("double_free_huge", Reports("double free of a huge block")),
    (
        "free_huge_interior",
        Reports("not the start of a huge block"),
    ),
    // Into a live neighbour (or the block's slack): nothing of the allocator's is there.
    ("overflow_small_1", Survives),
    ("overflow_small_32", Survives),
    ("underflow_small_8", Survives),
    // An allocation after it follows a free block's link the write replaced.
    ("overflow_small_1mib", Crashes),
    // The byte past the huge block lies in the rest of its mapping.
    ("overflow_huge_1", Survives),
    // The freed block is not handed out by the next two allocations.
    ("use_after_free_write", Survives),
];

/// Where the secure build differs from [`CASES`]: its freed marker (src/heap/secure.rs)
/// catches every double free of a small block at the second free, its check of pointers
/// outside every segment (preload/src/foreign.rs) the stack and static ones, its checked
/// links the free list the 1 MiB overflow wrote over, the guard page after a huge block
/// the write one byte past it, and the canary past a small block the writes of 1 and 32
/// bytes past it.
const SECURE_CASES: &[(&str, Expect)] = &[
    (
        "double_free_with_live_neighbours",
        Reports("double free (pointer"),
    ),
    ("double_free_other_thread", Reports("double free (pointer")),
    ("free_stack", Reports("free of a stack address")),
    ("free_static", Reports("free of a static address")),
    ("free_stack_thread", Reports("free of a stack address")),
    ("realloc_stack", Reports("free of a stack address")),
    // The block's own canary, at its free (the write also overwrote the links of the free
    // blocks after it: under `warn` the allocations that follow report those too).
    (
        "overflow_small_1mib",
        Reports("heap overflow: canary overwritten"),
    ),
    // The guard page right after every huge block (src/heap/huge.rs).
    ("overflow_huge_1", Crashes),
    // The canary past the 64 bytes asked for (src/heap/secure/canary.rs), checked at the free.
    (
        "overflow_small_1",
        Reports("heap overflow: canary overwritten"),
    ),
    (
        "overflow_small_32",
        Reports("heap overflow: canary overwritten"),
    ),
];

/// The table for the secure build (`secure`) or the default one.
fn table(secure: bool) -> Vec<(&'static str, Expect)> {
    CASES
        .iter()
        .map(|&(case, expect)| {
            let over = SECURE_CASES.iter().find(|&&(c, _)| c == case);
            match over {
                Some(&(_, e)) if secure => (case, e),
                _ => (case, expect),
            }
        })
        .collect()
}

/// Compiles tests/c/heap_errors.c into a scratch directory (once per test process).
fn program() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("tieralloc-heap-errors-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create a scratch directory");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/heap_errors.c");
        let out = dir.join("heap_errors");
        let st = Command::new("cc")
            .args(["-O1", "-w", "-fno-builtin", "-pthread", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("run cc (apt-get install -y build-essential)");
        assert!(st.success(), "compiling {} failed", src.display());
        out
    })
    .clone()
}

/// The secure drop-in, `libtieralloc_preload_secure.so`, next to the default one (scripts/
/// test.sh builds it: `cargo build -p tieralloc-preload --release --features secure
/// --target-dir target/secure`, copied under that name into target/release/). `None` if it
/// is not built, unless `TIERALLOC_REQUIRE_SECURE=1` (CI), which makes that a failure.
fn secure_library() -> Option<PathBuf> {
    const LIB: &str = "libtieralloc_preload_secure.so";
    let exe = std::env::current_exe().expect("the test knows its own path");
    let deps = exe.parent().expect("the test executable is in a directory");
    let lib = deps.join("..").join(LIB);
    if lib.is_file() {
        return Some(lib);
    }
    assert!(
        std::env::var_os("TIERALLOC_REQUIRE_SECURE").is_none(),
        "{} not built (scripts/test.sh builds it)",
        lib.display()
    );
    eprintln!(
        "{} not built: the secure build's run skipped",
        lib.display()
    );
    None
}

/// Runs one case under the drop-in `lib` with `TIERALLOC_ON_ERROR=mode` (`None`: unset).
fn run_with(lib: &Path, case: &str, mode: Option<&str>) -> child::Outcome {
    let mut cmd = Command::new(program());
    cmd.arg(case)
        .env("LD_PRELOAD", lib)
        .env_remove("TIERALLOC_VERBOSE")
        .env_remove("TIERALLOC_SHOW_STATS")
        .env_remove("TIERALLOC_ON_ERROR");
    if let Some(m) = mode {
        cmd.env("TIERALLOC_ON_ERROR", m);
    }
    child::run(&mut cmd, Duration::from_secs(60))
}

fn reports(out: &child::Outcome) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.starts_with("tieralloc: error: "))
        .collect()
}

#[test]
fn the_default_build_catches_what_the_table_says() {
    catches_what_the_table_says(&child::preload_library(), false);
}

/// The secure drop-in catches what the default one does, every double free of a small block,
/// the frees of stack and static addresses and the free list the 1 MiB overflow broke
/// (SECURE_CASES: 22 of the 27 cases; glibc 22), reported the same way, and leaves the
/// loader's blocks and image and `mmap`ed memory alone. The cases it adds beyond the table,
/// use after free through a forged link, are in tests/heap_errors.rs.
#[test]
fn the_secure_build_catches_at_least_what_the_default_does() {
    if let Some(lib) = secure_library() {
        catches_what_the_table_says(&lib, true);
    }
}

fn catches_what_the_table_says(lib: &Path, secure: bool) {
    let mut caught = 0;
    for (case, expect) in table(secure) {
        let out = run_with(lib, case, None);
        let signal = out.status.and_then(|s| s.signal());
        match expect {
            Reports(reason) => {
                let r = reports(&out);
                out.require(
                    signal == Some(libc::SIGABRT)
                        && r.len() == 1
                        && r[0].contains(reason)
                        && r[0].contains("(pointer 0x"),
                    &format!("{case}: expected SIGABRT and one report of {reason:?}"),
                );
                caught += 1;
            }
            Crashes => {
                out.require(
                    signal == Some(libc::SIGSEGV) && reports(&out).is_empty(),
                    &format!("{case}: expected SIGSEGV and no report"),
                );
                caught += 1;
            }
            Survives => {
                out.expect_success("survived");
                out.require(reports(&out).is_empty(), &format!("{case}: no report"));
            }
        }
    }
    assert_eq!(caught, if secure { 22 } else { 14 });
}

#[test]
fn warn_reports_and_goes_on_ignore_goes_on_silently() {
    warn_and_ignore(&child::preload_library(), false);
}

/// As the default build's: `warn` and `ignore` leave the pointer (or block) alone and go on,
/// for the secure build's own reports too (a stack or static address given to `free` or
/// `realloc` is left alone as the default build does).
#[test]
fn the_secure_build_warns_and_ignores_as_the_default_does() {
    if let Some(lib) = secure_library() {
        warn_and_ignore(&lib, true);
    }
}

fn warn_and_ignore(lib: &Path, secure: bool) {
    for (case, expect) in table(secure) {
        let Reports(reason) = expect else { continue };
        let out = run_with(lib, case, Some("warn"));
        out.expect_success("survived");
        let r = reports(&out);
        // The 1 MiB overflow wrote over more than one thing of the allocator's: once the
        // program goes on past the first report, it meets the rest (one report each).
        let reports_allowed = if case == "overflow_small_1mib" { 16 } else { 1 };
        out.require(
            !r.is_empty() && r.len() <= reports_allowed && r[0].contains(reason),
            &format!("{case}: one report of {reason:?} first, at most {reports_allowed}"),
        );
        let out = run_with(lib, case, Some("ignore"));
        out.expect_success("survived");
        out.require(reports(&out).is_empty(), &format!("{case}: no report"));
    }
}
