//! Heap errors in C programs under the drop-in: tests/c/heap_errors.c commits one error per
//! run (double frees of every kind, frees of interior, unaligned, stack and static pointers,
//! of large and huge blocks), each run under `LD_PRELOAD` with a timeout. The table below says
//! which the default build catches: a caught one ends with SIGABRT and one report line naming
//! the error and the pointer; one not caught (or left alone on purpose: pointers outside
//! every segment, which `free` ignores) runs on and prints "survived". The caught ones are
//! run again with `TIERALLOC_ON_ERROR=warn` (the report, and the program survives) and
//! `ignore` (no report, and it survives). docs/security.md keeps the same table.
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

/// Each case of tests/c/heap_errors.c and the report the default build gives (`None`: not
/// caught: the program survives).
const CASES: &[(&str, Option<&str>)] = &[
    ("double_free_immediate", Some("double free (pointer")),
    ("double_free_delayed", Some("double free (pointer")),
    ("double_free_interleaved", Some("double free (pointer")),
    ("double_free_after_reuse", Some("double free (pointer")),
    // Other blocks of the page stay live, and the block is not the last one freed: only the
    // secure build tells (SECURE_CASES).
    ("double_free_with_live_neighbours", None),
    (
        "double_free_other_thread",
        Some("more blocks freed from other threads than the page has live"),
    ),
    ("double_free_across_threads", Some("double free (pointer")),
    ("free_interior", Some("not the start of a block")),
    ("free_unaligned", Some("not the start of a block")),
    (
        "free_unaligned_other_thread",
        Some("not the start of a block"),
    ),
    // Outside every segment: free leaves such pointers alone (preload/src/lib.rs).
    ("free_stack", None),
    ("free_static", None),
    ("double_free_large", Some("no block is in use there")),
    ("free_large_interior", Some("not the start of a block")),
    ("double_free_huge", Some("double free of a huge block")),
    ("free_huge_interior", Some("not the start of a huge block")),
];

/// Where the secure build's report differs from [`CASES`]: its freed marker (src/heap/
/// secure.rs) catches every double free of a small block at the second free.
const SECURE_CASES: &[(&str, Option<&str>)] = &[
    (
        "double_free_with_live_neighbours",
        Some("double free (pointer"),
    ),
    ("double_free_other_thread", Some("double free (pointer")),
];

/// The table for the secure build (`secure`) or the default one.
fn table(secure: bool) -> Vec<(&'static str, Option<&'static str>)> {
    CASES
        .iter()
        .map(|&(case, reason)| {
            let over = SECURE_CASES.iter().find(|&&(c, _)| c == case);
            match over {
                Some(&(_, r)) if secure => (case, r),
                _ => (case, reason),
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
            .status()
            .expect("run cc (apt-get install -y build-essential)");
        assert!(st.success(), "compiling {} failed", src.display());
        out
    })
    .clone()
}

/// Runs one case under the drop-in with `TIERALLOC_ON_ERROR=mode` (`None`: unset).
fn run(case: &str, mode: Option<&str>) -> child::Outcome {
    run_with(&child::preload_library(), case, mode)
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

/// The secure drop-in catches what the default one does and every double free of a small
/// block (SECURE_CASES: 14 of the 16 cases, glibc 15; the two it leaves are the pointers
/// outside every segment, left alone by design), reported the same way. The cases it adds
/// beyond the table, use after free through a forged link, are in tests/heap_errors.rs.
#[test]
fn the_secure_build_catches_at_least_what_the_default_does() {
    if let Some(lib) = secure_library() {
        catches_what_the_table_says(&lib, true);
    }
}

fn catches_what_the_table_says(lib: &Path, secure: bool) {
    let mut caught = 0;
    for (case, reason) in table(secure) {
        let out = run_with(lib, case, None);
        match reason {
            Some(reason) => {
                let r = reports(&out);
                out.require(
                    out.status.and_then(|s| s.signal()) == Some(libc::SIGABRT)
                        && r.len() == 1
                        && r[0].contains(reason)
                        && r[0].contains("(pointer 0x"),
                    &format!("{case}: expected SIGABRT and one report of {reason:?}"),
                );
                caught += 1;
            }
            None => {
                out.expect_success("survived");
                out.require(reports(&out).is_empty(), &format!("{case}: no report"));
            }
        }
    }
    assert_eq!(caught, if secure { 14 } else { 13 });
}

#[test]
fn warn_reports_and_goes_on_ignore_goes_on_silently() {
    for &(case, reason) in CASES {
        let Some(reason) = reason else { continue };
        let out = run(case, Some("warn"));
        out.expect_success("survived");
        let r = reports(&out);
        out.require(
            r.len() == 1 && r[0].contains(reason),
            &format!("{case}: one report of {reason:?}"),
        );
        let out = run(case, Some("ignore"));
        out.expect_success("survived");
        out.require(reports(&out).is_empty(), &format!("{case}: no report"));
    }
}
