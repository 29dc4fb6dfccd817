//! The `secure` build: a `realloc` of a block already freed is a free of a free block (the
//! old block's free is part of `realloc`'s work), so docs/security.md's "every double free of
//! a small or medium block, at the second free" covers it, and the default build's large and
//! huge double-free checks have their say too. Each case runs in a child under
//! `TIERALLOC_ON_ERROR=warn`: one block of each kind (small, medium, large, huge), freed by
//! its owner or by another thread (also into a full page, where the free waits on the
//! owner's delayed stack), then reallocated to a size it would keep in place (or, for
//! the huge one, grown); exactly one report must follow, and afterwards no block may be
//! handed out twice (the child allocates blocks of the freed one's size and checks that none
//! is the realloc's result or another of them).
//!
//! Review rev32: before the fix, `realloc`'s in-place step looked only at the canary, which
//! a free leaves intact, so the freed block was "resized" and handed back, still on its
//! page's free list; the next allocations handed it out again.

#![cfg(feature = "secure")]

#[path = "common/child.rs"]
mod child;

use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;
use tieralloc::TierAlloc;

#[global_allocator]
static GLOBAL: TierAlloc = TierAlloc::new();

/// The cases: (name, request size, size the realloc asks for, freed by another thread).
const CASES: &[(&str, usize, usize, bool)] = &[
    ("small", 100, 92, false),
    ("small_remote", 100, 92, true),
    // Freed by another thread into a full page: the free waits on the owner's delayed stack.
    ("small_delayed", 100, 92, true),
    ("medium", 20_000, 19_000, false),
    ("medium_remote", 20_000, 19_000, true),
    ("large", 300_000, 290_000, false),
    ("large_remote", 300_000, 290_000, true),
    ("huge", 5 << 20, (5 << 20) - 4096, false),
    ("huge_grow", 5 << 20, 9 << 20, false),
];

/// What the case's child may report (the free's own words for that kind of block).
fn expected(name: &str) -> &'static str {
    match name {
        "large" => "invalid free: no block is in use there",
        "large_remote" => "double free",
        "huge" | "huge_grow" => "double free of a huge block",
        _ => "double free",
    }
}

#[test]
fn a_realloc_of_a_freed_block_is_reported_and_hands_nothing_out_twice() {
    let mut failed = vec![];
    for &(name, ..) in CASES {
        let mut cmd = child::this_test("child_realloc_of_a_freed_block");
        cmd.env("TIERALLOC_ON_ERROR", "warn")
            .env("REV32_CASE", name);
        let out = child::run(&mut cmd, Duration::from_secs(60));
        let reports: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("tieralloc: error: "))
            .collect();
        let passed = out.stdout.contains("test result: ok. 1 passed");
        // Another thread's free of a large block (or of a full page's) waits on the page's
        // remote list or on the owner's delayed stack (then taken in first: the page may be
        // gone).
        let ok = passed
            && reports.len() == 1
            && (reports[0].starts_with(&format!("tieralloc: error: {}", expected(name)))
                || name == "large_remote"
                    && reports[0]
                        .starts_with("tieralloc: error: invalid free: no block is in use"));
        if !ok {
            failed.push(format!(
                "{name}: child passed {passed}, status {:?}, reports {reports:?}, stderr tail {:?}",
                out.status,
                out.stderr
                    .lines()
                    .filter(|l| l.contains("panicked")
                        || l.contains("handed")
                        || l.contains("assert"))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn child_realloc_of_a_freed_block() {
    if !child::is_child() {
        return;
    }
    let case = std::env::var("REV32_CASE").unwrap();
    let &(_, n, m, remote) = CASES.iter().find(|c| c.0 == case).unwrap();
    let l = Layout::from_size_align(n, 8).unwrap();
    // SAFETY: GlobalAlloc's contract, but for the test's one wrong call: the realloc of p
    // after its free (reported under warn).
    unsafe {
        // A live neighbour, so that the page stays in use.
        let keep = GLOBAL.alloc(l);
        // small_delayed: enough blocks to fill their first pages, every block live, p one
        // of the first page's (full: another thread's free of it goes on the delayed stack).
        let full: Vec<usize> = if case == "small_delayed" {
            (0..2000).map(|_| GLOBAL.alloc(l) as usize).collect()
        } else {
            vec![]
        };
        let p = if full.is_empty() {
            GLOBAL.alloc(l)
        } else {
            full[5] as *mut u8
        };
        assert!(!p.is_null() && !keep.is_null());
        if remote {
            let a = p as usize;
            std::thread::spawn(move || GLOBAL.dealloc(a as *mut u8, l))
                .join()
                .unwrap();
        } else {
            GLOBAL.dealloc(p, l);
        }
        let q = GLOBAL.realloc(p, l, m);
        eprintln!("realloc of freed {p:?} gave {q:?}");
        // Enough blocks to take every free block of the freed one's page (a 64 KiB page of
        // 112-byte blocks holds 585), up to 64 MiB.
        let count = (64usize << 20).div_ceil(n).min(2000);
        let mut got: Vec<usize> = (0..count).map(|_| GLOBAL.alloc(l) as usize).collect();
        for &b in &got {
            assert!(b != 0);
            assert!(q.is_null() || b != q as usize, "{b:#x} handed out again");
        }
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), count, "a block handed out twice");
        for b in got {
            GLOBAL.dealloc(b as *mut u8, l);
        }
        if !q.is_null() {
            GLOBAL.dealloc(q, Layout::from_size_align(m, 8).unwrap());
        }
        GLOBAL.dealloc(keep, l);
        for b in full.into_iter().filter(|&b| b != p as usize) {
            GLOBAL.dealloc(b as *mut u8, l);
        }
    }
}
