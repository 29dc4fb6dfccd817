//! The `secure` build's canaries (`heap::secure::canary`, docs/security.md): a write of one
//! byte or more past the size asked for is reported when the block is freed (by its owner or
//! another thread) or reallocated, whatever the block's slack, on every allocation path of
//! the global allocator and of the C entry points; a program that stays inside its blocks
//! gets no report, and `usable_size` and in-place `realloc` keep the canary true.
//!
//! Each test runs in a child process (tests/common/child.rs) under
//! `TIERALLOC_ON_ERROR=warn`: the child says on stderr which pointer it overflows before
//! freeing it, and the parent checks that the reports on stderr are exactly those, in order,
//! each `heap overflow: canary overwritten`, and that the child went on to pass. One test
//! checks the default mode (abort). Run with `cargo test --release --features secure --test
//! secure_canary`.
#![cfg(feature = "secure")]

#[path = "common/child.rs"]
mod child;

use std::alloc::{GlobalAlloc, Layout};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use tieralloc::TierAlloc;

#[global_allocator]
static GLOBAL: TierAlloc = TierAlloc::new();

/// The start of the report of an overflow.
const OVERFLOW: &str = "tieralloc: error: heap overflow: canary overwritten";
/// The most a bin block serves (`MEDIUM_MAX`): larger blocks have no canary.
const MEDIUM_MAX: usize = 64 << 10;
/// What the child writes before it overflows a block (before the report's pointer).
const ANNOUNCE: &str = "overflowed ";

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

fn alloc(n: usize) -> *mut u8 {
    // SAFETY: a non-zero size.
    let p = unsafe { GLOBAL.alloc(layout(n, 8)) };
    assert!(!p.is_null());
    p
}

fn dealloc(p: *mut u8, n: usize) {
    // SAFETY: p is a live block of n bytes (overflowed or not: the test's point).
    unsafe { GLOBAL.dealloc(p, layout(n, 8)) }
}

/// Writes `len` bytes of `v` at `p + from` (inside the block, or past its request on
/// purpose).
fn write(p: *mut u8, from: usize, len: usize, v: u8) {
    for i in from..from + len {
        // SAFETY: inside the block's bytes (which may be past the request: the test's
        // point; never past the block, see `with_live_neighbour`).
        unsafe { p.add(i).write_volatile(v) };
    }
}

/// Says which block the child is about to overflow (the parent expects its report).
fn announce(p: *const u8) {
    eprintln!("{ANNOUNCE}{:#018x}", p as usize);
}

/// Allocates `n` bytes, fills them, writes `len` bytes of `v` past them, announces and
/// frees the block.
fn overflow_and_free(n: usize, len: usize, v: u8) {
    let p = alloc(n);
    write(p, 0, n, 0x11);
    announce(p);
    write(p, n, len, v);
    dealloc(p, n);
}

/// The block sizes of every bin from 16 bytes on (as `heap::size_class`: multiples of 16 up
/// to 128, then four classes per power of two up to 64 KiB).
fn class_sizes() -> Vec<usize> {
    let mut v: Vec<usize> = (1..=8).map(|k| 16 * k).collect();
    for k in 7..16 {
        for r in 1..=4 {
            v.push((1 << k) + r * (1 << (k - 2)));
        }
    }
    assert_eq!(*v.last().unwrap(), MEDIUM_MAX);
    v
}

/// Runs `f` on a block of `n` bytes and its next neighbour in memory, with the neighbour after
/// that live too, all blocks of the test's: an overflow of up to 32 bytes past the request
/// then writes over the canary and, if the slack is short, the neighbours' first bytes (at
/// most 24 bytes past the block), never anything else's. Enough blocks are allocated to use
/// whole carves (whose order is random). `f` frees the block and the neighbour; the others
/// are freed after (no report: their canaries are at their ends, out of reach).
fn with_live_neighbours(n: usize, f: impl FnOnce(*mut u8, *mut u8)) {
    let size = class_sizes().into_iter().find(|&c| c >= n + 8).unwrap();
    let count = (4 * 8192 / size).max(64);
    let blocks: Vec<usize> = (0..count).map(|_| alloc(n) as usize).collect();
    let set: std::collections::HashSet<usize> = blocks.iter().copied().collect();
    let victim = *blocks
        .iter()
        .find(|&&b| set.contains(&(b + size)) && set.contains(&(b + 2 * size)))
        .expect("a block with two live neighbours");
    f(victim as *mut u8, (victim + size) as *mut u8);
    for b in blocks {
        if b != victim && b != victim + size {
            dealloc(b as *mut u8, n);
        }
    }
}

/// Runs the child test `name` under `TIERALLOC_ON_ERROR=warn` and checks that it passed, that
/// it announced at least `min` overflows, and that the reports are exactly one
/// [`OVERFLOW`] per announced pointer, in order.
fn expect_reports(name: &str, min: usize) {
    let mut cmd = child::this_test(name);
    cmd.env("TIERALLOC_ON_ERROR", "warn")
        .env_remove("TIERALLOC_FILL_FREED")
        .env_remove("TIERALLOC_VERBOSE")
        .env_remove("TIERALLOC_SHOW_STATS");
    let out = child::run(&mut cmd, Duration::from_secs(120));
    out.expect_test_passed();
    let announced: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix(ANNOUNCE))
        .collect();
    let reports: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("tieralloc: error: "))
        .collect();
    out.require(
        announced.len() >= min,
        &format!("expected at least {min} overflows"),
    );
    out.require(
        reports.len() == announced.len(),
        &format!(
            "{} reports for {} overflows",
            reports.len(),
            announced.len()
        ),
    );
    for (r, p) in reports.iter().zip(&announced) {
        out.require(
            r.starts_with(OVERFLOW) && r.ends_with(&format!("(pointer {p})")),
            &format!("expected an overflow report about {p}, got {r:?}"),
        );
    }
}

macro_rules! canary_test {
    ($(#[$doc:meta])* $name:ident, $child:ident, $min:expr, $body:block) => {
        $(#[$doc])*
        #[test]
        fn $name() {
            expect_reports(stringify!($child), $min);
        }

        #[test]
        fn $child() {
            if !child::is_child() {
                return;
            }
            $body
        }
    };
}

/// Request sizes across the classes: small, around 16-byte steps, medium, up to the largest
/// block with its trailer.
const SIZES: [usize; 20] = [
    1, 7, 8, 9, 15, 16, 24, 40, 100, 129, 500, 1000, 1025, 3000, 5000, 8192, 10000, 30000, 60000,
    65528,
];

canary_test!(
    /// One byte past the request (an off-by-one, writing a string's terminating 0 or a
    /// letter), freed by the owner: reported, whatever the slack.
    overflow_by_one_is_reported,
    child_overflow_by_one_is_reported,
    2 * SIZES.len(),
    {
        for n in SIZES {
            overflow_and_free(n, 1, 0);
            overflow_and_free(n, 1, b'A');
        }
    }
);

canary_test!(
    /// 32 bytes past the request: the slack's first byte and, when the slack is shorter, the
    /// trailer (and the neighbour's first bytes: a live block of the test's). From a 16-byte
    /// block (a request of up to 8 bytes) the write covers the neighbour's canary too (its
    /// last 8 bytes): reported when the neighbour is freed.
    overflow_by_32_is_reported,
    child_overflow_by_32_is_reported,
    SIZES.len() + 3,
    {
        for n in SIZES {
            with_live_neighbours(n, |p, next| {
                write(p, 0, n, 0x22);
                announce(p);
                write(p, n, 32, 0x5a);
                dealloc(p, n);
                if n + 8 <= 16 {
                    announce(next);
                }
                dealloc(next, n);
            });
        }
    }
);

canary_test!(
    /// At every class boundary: a request that fills its block but the trailer (no slack: the
    /// byte past it is the trailer's first), one and eight bytes short of that, and one
    /// more (the next class, the most slack): one byte over is reported in each.
    overflow_at_every_class_boundary_is_reported,
    child_overflow_at_every_class_boundary_is_reported,
    class_sizes().len() * 4 - 2,
    {
        for b in class_sizes() {
            for n in [b - 8, b - 9, b - 16, b - 7] {
                if n == 0 || n + 8 > MEDIUM_MAX {
                    continue;
                }
                overflow_and_free(n, 1, 0x33);
            }
        }
    }
);

canary_test!(
    /// A block overflowed on one thread and freed by another (the remote free's path), by one
    /// byte and by 32, and the other way round.
    overflow_freed_by_another_thread_is_reported,
    child_overflow_freed_by_another_thread_is_reported,
    3 * 6,
    {
        for n in [24, 100, 1000, 3000, 10000, 60000] {
            let p = alloc(n);
            write(p, 0, n, 1);
            announce(p);
            write(p, n, 1, 0);
            let p = p as usize;
            std::thread::spawn(move || dealloc(p as *mut u8, n))
                .join()
                .unwrap();
            with_live_neighbours(n, |p, next| {
                announce(p);
                write(p, n, 32, 0x44);
                let p = p as usize;
                std::thread::spawn(move || dealloc(p as *mut u8, n))
                    .join()
                    .unwrap();
                dealloc(next, n);
            });
            let p = std::thread::spawn(move || {
                let p = alloc(n);
                announce(p);
                write(p, n, 1, 0x55);
                p as usize
            })
            .join()
            .unwrap();
            dealloc(p as *mut u8, n);
        }
    }
);

canary_test!(
    /// `realloc`: a block grown or shrunk in place has its canary written for the new size
    /// (writing all of the new size is no overflow, one byte past it is); an overflowed block
    /// is reported when reallocated (in place or moved), once, and the new block is clean.
    realloc_keeps_the_canary_for_the_new_size,
    child_realloc_keeps_the_canary_for_the_new_size,
    4,
    {
        // SAFETY: blocks of ours with the layouts given.
        unsafe {
            // 100 bytes: a 112-byte block (100 + 8 fits). Grown to 104 in place (104 + 8 =
            // 112), all written: no report.
            let p = alloc(100);
            write(p, 0, 100, 1);
            let q = GLOBAL.realloc(p, layout(100, 8), 104);
            assert_eq!(q, p, "grown in place");
            write(q, 0, 104, 2);
            // Shrunk to 60 in place: one byte past 60 is an overflow now.
            let r = GLOBAL.realloc(q, layout(104, 8), 60);
            assert_eq!(r, q, "shrunk in place");
            assert!((0..60).all(|i| *r.add(i) == 2));
            announce(r);
            write(r, 60, 1, 0);
            dealloc(r, 60);

            // Overflowed, then grown in place: reported at the realloc; the block it returns
            // holds the old bytes and frees cleanly.
            let p = alloc(100);
            write(p, 0, 100, 3);
            announce(p);
            write(p, 100, 1, 0);
            let q = GLOBAL.realloc(p, layout(100, 8), 104);
            assert!(!q.is_null());
            assert!((0..100).all(|i| *q.add(i) == 3));
            dealloc(q, 104);

            // Overflowed, then grown past its block (a move): reported at the realloc.
            let p = alloc(100);
            write(p, 0, 100, 4);
            announce(p);
            write(p, 100, 4, 0x77);
            let q = GLOBAL.realloc(p, layout(100, 8), 5000);
            assert!(!q.is_null() && q != p);
            assert!((0..100).all(|i| *q.add(i) == 4));
            write(q, 0, 5000, 5);
            dealloc(q, 5000);

            // Moved cleanly, then the new block overflowed.
            let p = alloc(24);
            write(p, 0, 24, 6);
            let q = GLOBAL.realloc(p, layout(24, 8), 3000);
            assert!((0..24).all(|i| *q.add(i) == 6));
            write(q, 0, 3000, 7);
            announce(q);
            write(q, 3000, 1, 0);
            dealloc(q, 3000);
        }
    }
);

canary_test!(
    /// Zeroed blocks: the request's bytes are zero (on the fast path and on a class's first,
    /// slow, allocation), a clean free is not reported, an overflow is.
    zeroed_blocks_have_their_canary,
    child_zeroed_blocks_have_their_canary,
    SIZES.len(),
    {
        for n in SIZES {
            for _ in 0..3 {
                // SAFETY: a non-zero size.
                let p = unsafe { GLOBAL.alloc_zeroed(layout(n, 8)) };
                assert!((0..n).all(|i| unsafe { *p.add(i) } == 0), "{n} bytes zeroed");
                write(p, 0, n, 0x66);
                dealloc(p, n);
            }
            // SAFETY: a non-zero size.
            let p = unsafe { GLOBAL.alloc_zeroed(layout(n, 8)) };
            announce(p);
            write(p, n, 1, 0x01);
            dealloc(p, n);
        }
    }
);

canary_test!(
    /// Blocks aligned above 16 bytes (served from a bin whose blocks are multiples of the
    /// alignment, through the generic path): aligned, a clean free is not reported, an
    /// overflow is.
    aligned_blocks_have_their_canary,
    child_aligned_blocks_have_their_canary,
    4 * 4,
    {
        for align in [32, 64, 256, 4096] {
            for n in [1, 24, 200, 3000] {
                let l = layout(n, align);
                // SAFETY: a non-zero size, a valid alignment; freed with the same layout.
                unsafe {
                    let p = GLOBAL.alloc(l);
                    assert_eq!(p as usize % align, 0);
                    write(p, 0, n, 9);
                    GLOBAL.dealloc(p, l);
                    let p = GLOBAL.alloc(l);
                    announce(p);
                    write(p, n, 1, 0);
                    GLOBAL.dealloc(p, l);
                }
            }
        }
    }
);

canary_test!(
    /// C's `malloc` and `free` (`TierAlloc::c_malloc`, `c_malloc_fast`, `c_free`): the
    /// direct path (up to 1 KiB), the bin path past it, and a huge request (no canary, no
    /// report). `usable_size` says the size asked for; writing all of it is no overflow.
    c_malloc_blocks_have_their_canary,
    child_c_malloc_blocks_have_their_canary,
    2 * 6 + 1,
    {
        // SAFETY: C's contract: each block freed once.
        unsafe {
            for n in [0usize, 1, 24, 1000, 2000, 40000] {
                let p = GLOBAL.c_malloc(n);
                assert_eq!(tieralloc::usable_size(p), n);
                write(p, 0, n, 1);
                GLOBAL.c_free(p);
                let p = GLOBAL.c_malloc(n);
                announce(p);
                write(p, n, 1, 0);
                GLOBAL.c_free(p);
                // Eight bytes past it: the trailer's, or the slack's.
                let p = GLOBAL.c_malloc(n);
                announce(p);
                write(p, n, 8, 0x41);
                GLOBAL.c_free(p);
            }
            // The fast pop alone (C++'s `new`): a block of a class in use, overflowed.
            let keep = GLOBAL.c_malloc(40);
            let p = GLOBAL.c_malloc_fast(40);
            assert!(!p.is_null());
            announce(p);
            write(p, 40, 1, 0);
            GLOBAL.c_free(p);
            GLOBAL.c_free(keep);
            // A huge block: no canary, and writing its usable size is fine.
            let h = GLOBAL.c_malloc(8 << 20);
            write(h, 0, 8 << 20, 1);
            GLOBAL.c_free(h);
        }
    }
);

canary_test!(
    /// `usable_size` of a bin block is the size asked for, whatever the class: writing all
    /// of it is no overflow.
    usable_size_is_the_request,
    child_usable_size_is_the_request,
    0,
    {
        for b in class_sizes() {
            for n in [b - 8, b - 9, b - 7, b / 2 + 1] {
                if n + 8 > MEDIUM_MAX {
                    continue;
                }
                let p = alloc(n);
                // SAFETY: p is a live block of ours.
                let u = unsafe { tieralloc::usable_size(p) };
                assert_eq!(u, n, "usable size of a {n}-byte request");
                write(p, 0, u, 0xee);
                dealloc(p, n);
            }
        }
    }
);

canary_test!(
    /// Mixed traffic that stays inside its blocks, on four threads: every size from 1 byte
    /// to 70 KiB (bin, large), zeroed and aligned ones, blocks written to their last byte,
    /// reallocated up and down, a third freed by another thread: no report, and every block
    /// keeps what was written.
    mixed_traffic_gets_no_false_report,
    child_mixed_traffic_gets_no_false_report,
    0,
    {
        let (tx, rx) = std::sync::mpsc::channel::<(usize, usize, u8)>();
        let freer = std::thread::spawn(move || {
            for (p, n, v) in rx {
                // SAFETY: a live block of n bytes handed over by its allocating thread.
                assert!((0..n).all(|i| unsafe { *(p as *const u8).add(i) } == v));
                dealloc(p as *mut u8, n);
            }
        });
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                    let mut rnd = move || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x
                    };
                    let mut live: Vec<(usize, usize, usize, u8)> = Vec::new();
                    for i in 0..20_000u64 {
                        let r = rnd();
                        let n = match r % 8 {
                            0..=3 => 1 + (r >> 8) as usize % 128,
                            4..=5 => 1 + (r >> 8) as usize % 4096,
                            6 => 1 + (r >> 8) as usize % MEDIUM_MAX,
                            _ => 1 + (r >> 8) as usize % (70 << 10),
                        };
                        let align = if (r >> 40) & 15 == 0 { 64 } else { 8 };
                        let v = i as u8;
                        // SAFETY: non-zero sizes; each block freed once with its layout.
                        unsafe {
                            let p = if (r >> 44) & 7 == 0 {
                                GLOBAL.alloc_zeroed(layout(n, align))
                            } else {
                                GLOBAL.alloc(layout(n, align))
                            };
                            write(p, 0, n, v);
                            live.push((p as usize, n, align, v));
                            if live.len() > 64 || (r >> 50) & 1 == 0 {
                                let k = (r >> 20) as usize % live.len();
                                let (p, n, align, v) = live.swap_remove(k);
                                assert!((0..n).all(|i| *(p as *const u8).add(i) == v));
                                match (r >> 52) & 3 {
                                    0 if align == 8 => {
                                        // Reallocated to a size near or far from the old.
                                        let m = if (r >> 54) & 1 == 0 {
                                            (n + (r >> 56) as usize % 24).max(1)
                                        } else {
                                            1 + (r >> 30) as usize % 8192
                                        };
                                        let q = GLOBAL.realloc(p as *mut u8, layout(n, 8), m);
                                        let keep = n.min(m);
                                        assert!((0..keep).all(|i| *q.add(i) == v));
                                        write(q, 0, m, v);
                                        live.push((q as usize, m, 8, v));
                                    }
                                    1 if align == 8 => tx.send((p, n, v)).unwrap(),
                                    _ => GLOBAL.dealloc(p as *mut u8, layout(n, align)),
                                }
                            }
                        }
                    }
                    for (p, n, align, _) in live {
                        // SAFETY: live blocks with their layouts.
                        unsafe { GLOBAL.dealloc(p as *mut u8, layout(n, align)) };
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        drop(tx);
        freer.join().unwrap();
    }
);

/// The default mode: the report, then SIGABRT, at the free of a block overflowed by one
/// byte.
#[test]
fn an_overflow_aborts_by_default() {
    let mut cmd = child::this_test("child_an_overflow_aborts_by_default");
    cmd.env_remove("TIERALLOC_ON_ERROR");
    let out = child::run(&mut cmd, Duration::from_secs(120));
    let pointer = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix(ANNOUNCE))
        .unwrap_or_else(|| panic!("no pointer announced\n{out}"))
        .to_string();
    out.require(
        out.status.and_then(|s| s.signal()) == Some(libc::SIGABRT),
        "expected SIGABRT",
    );
    let reports: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("tieralloc: error: "))
        .collect();
    out.require(
        reports.len() == 1
            && reports[0].starts_with(OVERFLOW)
            && reports[0].ends_with(&format!("(pointer {pointer})")),
        "expected one overflow report",
    );
    out.require(!out.stderr.contains("went on"), "went on after the report");
}

#[test]
fn child_an_overflow_aborts_by_default() {
    if !child::is_child() {
        return;
    }
    overflow_and_free(24, 1, 0);
    eprintln!("went on");
}
