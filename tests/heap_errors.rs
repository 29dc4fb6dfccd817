//! Heap errors through `GlobalAlloc`: each test commits one wrong free in a child process
//! (tests/common/child.rs) and checks what the default build does with it under each
//! `TIERALLOC_ON_ERROR`: `abort` (the default: one line on stderr naming the reason and the
//! pointer, then SIGABRT), `warn` (the same line, and the child goes on: the block is leaked
//! and the heap still works), `ignore` (nothing printed, the child goes on). A pointer outside
//! every segment given to C's `free` (`TierAlloc::c_free`) is left alone in every mode.
//! docs/security.md lists what is caught.
//!
//! The blocks are of size classes nothing else in the child uses (3 KiB, 10 KiB), so that the
//! page holds only the test's blocks: which checks fire depends on the page's count of live
//! blocks (docs/security.md says why).

#[path = "common/child.rs"]
mod child;

use std::alloc::{GlobalAlloc, Layout};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use tieralloc::TierAlloc;

#[global_allocator]
static GLOBAL: TierAlloc = TierAlloc::new();

/// A 3 KiB block (its class holds two blocks per 8 KiB carved).
const SMALL: usize = 3 << 10;
/// A 10 KiB block: a medium class, one block carved at a time.
const MEDIUM: usize = 10 << 10;
/// A large block (a page of whole slices).
const LARGE: usize = 200 << 10;
/// A huge block (a mapping of its own).
const HUGE: usize = 8 << 20;

/// The report of a block found free already (not only a count gone wrong).
const DOUBLE_FREE: &str = "tieralloc: error: double free (pointer";

/// The report of a block freed twice in a row found on a list later: the secure build
/// catches the second free itself (its freed marker, heap::secure).
const IN_A_ROW: &str = if cfg!(feature = "secure") {
    DOUBLE_FREE
} else {
    "double free: a free list links a block to itself"
};

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 16).unwrap()
}

fn alloc(size: usize) -> *mut u8 {
    // SAFETY: a non-zero size.
    let p = unsafe { GLOBAL.alloc(layout(size)) };
    assert!(!p.is_null());
    p
}

/// Frees `p` as if it were a block of `size` bytes (whether it is one is the test's point).
fn dealloc(p: *mut u8, size: usize) {
    // SAFETY: none: these tests break the contract on purpose, in a child process.
    unsafe { GLOBAL.dealloc(p, layout(size)) }
}

/// Says (on stderr, before the error) which pointer the wrong free passes, for the parent to
/// find in the report.
fn announce(p: *const u8) {
    eprintln!("wrong free of {:#018x}", p as usize);
}

/// After a wrong free in `warn` or `ignore` mode: the heap still works (blocks of every kind,
/// distinct, written and read back), and the child says so.
fn heap_still_works() {
    let mut v: Vec<Vec<u8>> = Vec::new();
    for (i, size) in [8, 100, SMALL, MEDIUM, LARGE, HUGE].into_iter().enumerate() {
        for k in 0..4 {
            v.push(vec![(i * 4 + k) as u8; size]);
        }
    }
    for (j, b) in v.iter().enumerate() {
        assert!(b.iter().all(|&x| x == j as u8), "block {j} corrupted");
    }
    let mut starts: Vec<usize> = v.iter().map(|b| b.as_ptr() as usize).collect();
    starts.sort_unstable();
    starts.dedup();
    assert_eq!(starts.len(), v.len(), "a block handed out twice");
    eprintln!("heap still works");
}

/// Runs `test` in a child under each mode and checks the outcome; `reason` is the report's
/// text (`None`: the wrong free is one that is left alone in every mode).
fn check(test: &str, reason: Option<&str>) {
    for mode in ["abort", "warn", "ignore"] {
        let mut cmd = child::this_test(test);
        cmd.env("TIERALLOC_ON_ERROR", mode)
            .env_remove("TIERALLOC_VERBOSE")
            .env_remove("TIERALLOC_SHOW_STATS");
        if mode == "abort" {
            // The default: the variable unset must behave as `abort`.
            cmd.env_remove("TIERALLOC_ON_ERROR");
        }
        let out = child::run(&mut cmd, Duration::from_secs(120));
        let pointer = out
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("wrong free of "))
            .unwrap_or_else(|| panic!("the child did not announce its pointer\n{out}"))
            .to_string();
        let reports: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("tieralloc: error: "))
            .collect();
        match (reason, mode) {
            (Some(reason), "abort") => {
                out.require(
                    out.status.and_then(|s| s.signal()) == Some(libc::SIGABRT),
                    "expected SIGABRT",
                );
                out.require(
                    reports.len() == 1
                        && reports[0].contains(reason)
                        && reports[0].ends_with(&format!("(pointer {pointer})")),
                    &format!("expected one report of {reason:?} about {pointer}"),
                );
                out.require(!out.stderr.contains("heap still works"), "went on");
            }
            (Some(reason), "warn") => {
                out.expect_test_passed();
                out.require(
                    reports.len() == 1
                        && reports[0].contains(reason)
                        && reports[0].ends_with(&format!("(pointer {pointer})")),
                    &format!("expected one report of {reason:?} about {pointer}"),
                );
                out.require(out.stderr.contains("heap still works"), "did not go on");
            }
            _ => {
                out.expect_test_passed();
                out.require(reports.is_empty(), "expected no report");
                out.require(out.stderr.contains("heap still works"), "did not go on");
            }
        }
    }
}

macro_rules! heap_error_test {
    ($(#[$doc:meta])* $name:ident, $child:ident, $reason:expr, $body:block) => {
        $(#[$doc])*
        #[test]
        fn $name() {
            check(stringify!($child), $reason);
        }

        #[test]
        fn $child() {
            if !child::is_child() {
                return;
            }
            $body
            heap_still_works();
        }
    };
}

heap_error_test!(
    /// The same thread frees a small block twice: the second free finds the page with no
    /// live block (`PAGE_CHECK_FREE`), and the block on its `local_free`.
    double_free_small_same_thread,
    child_double_free_small_same_thread,
    Some(DOUBLE_FREE),
    {
        let p = alloc(SMALL);
        dealloc(p, SMALL);
        announce(p);
        dealloc(p, SMALL);
    }
);

heap_error_test!(
    /// Two small blocks freed, then the first again (a delayed double free): the page's
    /// count of live blocks would go below zero, and the block is found on `local_free`.
    double_free_small_delayed,
    child_double_free_small_delayed,
    Some(DOUBLE_FREE),
    {
        let a = alloc(SMALL);
        let b = alloc(SMALL);
        dealloc(a, SMALL);
        dealloc(b, SMALL);
        announce(a);
        dealloc(a, SMALL);
    }
);

heap_error_test!(
    /// The owner frees a block twice in a row while other blocks of the page are live (both
    /// frees on the fast path, the count one too low since): found when the page looks
    /// empty one free early, its `local_free` linking that block to itself.
    double_free_in_a_row_found_when_the_page_empties,
    child_double_free_in_a_row_found_when_the_page_empties,
    Some(IN_A_ROW),
    {
        let a = alloc(MEDIUM);
        let b = alloc(MEDIUM);
        let p = alloc(MEDIUM);
        dealloc(p, MEDIUM);
        announce(p);
        dealloc(p, MEDIUM);
        dealloc(a, MEDIUM);
        std::hint::black_box(b);
    }
);

heap_error_test!(
    /// Another thread frees a small block, then its owner frees it again: the page says it
    /// has no live block while its remote list holds one.
    double_free_small_across_threads,
    child_double_free_small_across_threads,
    Some(DOUBLE_FREE),
    {
        let p = alloc(SMALL) as usize;
        std::thread::spawn(move || dealloc(p as *mut u8, SMALL))
            .join()
            .unwrap();
        announce(p as *const u8);
        dealloc(p as *mut u8, SMALL);
    }
);

heap_error_test!(
    /// Another thread frees one of the owner's blocks twice, another block in between: the
    /// owner's collection finds more remote frees than live blocks on the page.
    /// (The secure build: the third free, its marker set.)
    double_free_small_other_thread,
    child_double_free_small_other_thread,
    Some(if cfg!(feature = "secure") {
        DOUBLE_FREE
    } else {
        "double free: more blocks freed from other threads than the page has live"
    }),
    {
        let p = alloc(MEDIUM) as usize;
        let q = alloc(MEDIUM) as usize;
        // The report names the list's first block: the last one freed.
        announce(p as *const u8);
        std::thread::spawn(move || {
            dealloc(p as *mut u8, MEDIUM);
            dealloc(q as *mut u8, MEDIUM);
            dealloc(p as *mut u8, MEDIUM);
        })
        .join()
        .unwrap();
        tieralloc::collect();
    }
);

heap_error_test!(
    /// Another thread frees a block twice in a row while other blocks of the page stay live
    /// (so the count cannot tell): the owner's collection finds the block linked to itself
    /// on the list it is about to allocate from.
    double_free_small_other_thread_in_a_row,
    child_double_free_small_other_thread_in_a_row,
    Some(IN_A_ROW),
    {
        let keep = [alloc(MEDIUM), alloc(MEDIUM)];
        let p = alloc(MEDIUM) as usize;
        announce(p as *const u8);
        std::thread::spawn(move || {
            dealloc(p as *mut u8, MEDIUM);
            dealloc(p as *mut u8, MEDIUM);
        })
        .join()
        .unwrap();
        tieralloc::collect();
        std::hint::black_box(keep);
    }
);

heap_error_test!(
    /// A pointer 16 bytes into a small block.
    free_of_interior_pointer,
    child_free_of_interior_pointer,
    Some("not the start of a block"),
    {
        let p = alloc(SMALL);
        let q = p.wrapping_add(16);
        announce(q);
        dealloc(q, SMALL);
    }
);

heap_error_test!(
    /// A pointer one byte into a small block.
    free_of_unaligned_pointer,
    child_free_of_unaligned_pointer,
    Some("not the start of a block"),
    {
        let p = alloc(SMALL);
        let q = p.wrapping_add(1);
        announce(q);
        dealloc(q, SMALL);
    }
);

heap_error_test!(
    /// The same, freed by another thread (the remote path sends a pointer no block can start
    /// at to the slow path, which checks it).
    free_of_unaligned_pointer_from_other_thread,
    child_free_of_unaligned_pointer_from_other_thread,
    Some("not the start of a block"),
    {
        let q = alloc(SMALL).wrapping_add(3) as usize;
        announce(q as *const u8);
        std::thread::spawn(move || dealloc(q as *mut u8, SMALL))
            .join()
            .unwrap();
    }
);

heap_error_test!(
    /// A large block freed twice: its slices hold no page any more.
    double_free_large,
    child_double_free_large,
    Some("no block is in use there"),
    {
        let p = alloc(LARGE);
        dealloc(p, LARGE);
        announce(p);
        dealloc(p, LARGE);
    }
);

heap_error_test!(
    /// A huge block freed twice: its mapping sits in the thread's cache, holding no object.
    double_free_huge,
    child_double_free_huge,
    Some("double free of a huge block"),
    {
        let p = alloc(HUGE);
        dealloc(p, HUGE);
        announce(p);
        dealloc(p, HUGE);
    }
);

heap_error_test!(
    /// A pointer 4 KiB into a huge block.
    free_of_huge_interior_pointer,
    child_free_of_huge_interior_pointer,
    Some("not the start of a huge block"),
    {
        let p = alloc(HUGE);
        let q = p.wrapping_add(4096);
        announce(q);
        dealloc(q, HUGE);
    }
);

heap_error_test!(
    /// A stack address, outside every segment, through C's `free` (the drop-in's path): left
    /// alone in every mode, as glibc-compatible programs may pass such pointers (the dynamic
    /// loader's early blocks). (`GlobalAlloc::dealloc` reads the header of the pointer's
    /// segment without asking the segment map first: a foreign pointer there is undefined
    /// behaviour, not checked.)
    free_of_stack_pointer_is_left_alone,
    child_free_of_stack_pointer_is_left_alone,
    None,
    {
        let mut on_stack = [7u8; 64];
        let q = std::hint::black_box(on_stack.as_mut_ptr());
        announce(q);
        // SAFETY: c_free ignores pointers outside every tieralloc segment.
        unsafe { GLOBAL.c_free(q) };
        assert!(on_stack.iter().all(|&x| x == 7));
    }
);

heap_error_test!(
    /// A pointer 64 bytes into a large block, freed by another thread: the remote fast path
    /// sends every large block to the slow path, which checks the pointer against the page
    /// (the fast path would push it onto the page's list unchecked).
    free_of_large_interior_pointer_from_other_thread,
    child_free_of_large_interior_pointer_from_other_thread,
    Some("not the start of a block"),
    {
        let q = alloc(LARGE).wrapping_add(64) as usize;
        announce(q as *const u8);
        std::thread::spawn(move || dealloc(q as *mut u8, LARGE))
            .join()
            .unwrap();
    }
);

heap_error_test!(
    /// A block of a full page freed by another thread (it goes to the owner's delayed stack,
    /// the page being in the full queue), then by its owner, who also frees every other block
    /// of the page: when the owner drains its delayed stack the page has no live block left,
    /// which `free_local` reports.
    double_free_through_the_delayed_stack,
    child_double_free_through_the_delayed_stack,
    Some(DOUBLE_FREE),
    {
        // Enough 3 KiB blocks that the first page fills and the allocator moves past it
        // (which puts it in the full queue: remote frees into it go to the delayed stack).
        // Its pages (2 slices, 42 blocks) are few-block ones, which the queue walk keeps up
        // to two of (`FEW_BLOCKS`, `KEEP_SLICES`): the first is parked at the third page's
        // exhaustion, 127 blocks in (100 were enough with 1-slice pages of 21 blocks).
        let v: Vec<usize> = (0..200).map(|_| alloc(SMALL) as usize).collect();
        let p = v[0];
        std::thread::spawn(move || dealloc(p as *mut u8, SMALL))
            .join()
            .unwrap();
        announce(p as *const u8);
        for &b in &v {
            dealloc(b as *mut u8, SMALL);
        }
        tieralloc::collect();
    }
);

#[cfg(feature = "secure")]
heap_error_test!(
    /// The secure build: a freed block's link overwritten (a use after free) with the
    /// address of a live block, the classic way to have the allocator hand that block out
    /// again. The link decodes to no block of the page: reported when the block is handed
    /// out, and not followed (the next allocation is not the live block).
    forged_link_is_reported_not_followed,
    child_forged_link_is_reported_not_followed,
    Some("free list corrupted: a freed block was overwritten"),
    {
        let a = alloc(SMALL);
        let b = alloc(SMALL);
        let live = alloc(SMALL);
        dealloc(a, SMALL);
        dealloc(b, SMALL);
        announce(b);
        // SAFETY: none: a write after free, on purpose (b is free, its page still mapped).
        unsafe { (b as *mut usize).write_volatile(live as usize) };
        let x = alloc(SMALL);
        let y = alloc(SMALL);
        assert!(x != live && y != live, "the forged link was followed");
        std::hint::black_box((live, x, y));
    }
);

/// The secure build with `TIERALLOC_FILL_FREED=1`: a small block freed by its owner, and one
/// freed by another thread, read back filled with 0xdf past their link word and freed
/// marker (16 bytes); without the
/// option they keep what was written.
#[cfg(feature = "secure")]
#[test]
fn fill_freed_fills_freed_small_blocks() {
    for (fill, byte) in [("1", 0xdfu8), ("0", 0x5a)] {
        let mut cmd = child::this_test("child_fill_freed_fills_freed_small_blocks");
        cmd.env("TIERALLOC_FILL_FREED", fill)
            .env("EXPECT_BYTE", byte.to_string());
        let out = child::run(&mut cmd, Duration::from_secs(120));
        out.expect_test_passed();
    }
}

#[cfg(feature = "secure")]
#[test]
fn child_fill_freed_fills_freed_small_blocks() {
    if !child::is_child() {
        return;
    }
    let want: u8 = std::env::var("EXPECT_BYTE").unwrap().parse().unwrap();
    let keep = alloc(SMALL);
    let p = alloc(SMALL);
    let q = alloc(SMALL) as usize;
    // SAFETY: p and q are SMALL-byte blocks of ours.
    unsafe {
        p.write_bytes(0x5a, SMALL);
        (q as *mut u8).write_bytes(0x5a, SMALL);
    }
    dealloc(p, SMALL);
    std::thread::spawn(move || dealloc(q as *mut u8, SMALL))
        .join()
        .unwrap();
    for b in [p as usize, q] {
        for i in 16..SMALL {
            // SAFETY: none needed for the allocator: a read after free of a page that
            // stays mapped (`keep` holds it), on purpose.
            let v = unsafe { ((b + i) as *const u8).read_volatile() };
            assert_eq!(v, want, "byte {i} of a freed block");
        }
    }
    std::hint::black_box(keep);
}

#[cfg(feature = "secure")]
heap_error_test!(
    /// The secure build: a small block freed twice in a row by its owner while other blocks
    /// of its page stay live (both frees on the fast path, which the default build does not
    /// catch): the second free finds the block's freed marker, and the block on the page's
    /// list.
    double_free_with_live_neighbours,
    child_double_free_with_live_neighbours,
    Some(DOUBLE_FREE),
    {
        let keep = [alloc(SMALL), alloc(SMALL)];
        let p = alloc(SMALL);
        let q = alloc(SMALL);
        dealloc(p, SMALL);
        dealloc(q, SMALL);
        announce(p);
        dealloc(p, SMALL);
        std::hint::black_box(keep);
    }
);

#[cfg(feature = "secure")]
heap_error_test!(
    /// The secure build: the same with 8-byte blocks (16 bytes in the secure build, so that
    /// every block has room for its marker), and after the block was handed out and freed
    /// again in between (the marker is cleared when a block is handed out).
    double_free_of_a_tiny_block_after_reuse,
    child_double_free_of_a_tiny_block_after_reuse,
    Some(DOUBLE_FREE),
    {
        let keep: Vec<*mut u8> = (0..8).map(|_| alloc(8)).collect();
        let p = alloc(8);
        dealloc(p, 8);
        // Allocate until the block comes back (once its page's free list runs dry).
        let mut others = Vec::new();
        loop {
            let x = alloc(8);
            if x == p {
                break;
            }
            others.push(x);
            assert!(others.len() < 100_000, "the freed block never came back");
        }
        // Its free is a good one (no report: the marker was cleared when handed out).
        dealloc(p, 8);
        announce(p);
        dealloc(p, 8);
        std::hint::black_box((keep, others));
    }
);

/// The secure build: the blocks of a freshly carved page are handed out in a random order,
/// not one after the other in memory (the default build's carve). 896-byte blocks, a class
/// nothing else in the test process uses: 9 per carve of 8 KiB. (The requests are 8 bytes
/// short of it: a block holds its canary's trailer past the request.)
#[cfg(feature = "secure")]
#[test]
fn fresh_blocks_are_handed_out_in_a_random_order() {
    const SIZE: usize = 896;
    let mut v: Vec<usize> = Vec::with_capacity(64);
    for _ in 0..63 {
        v.push(alloc(SIZE - 8) as usize);
    }
    let next_in_memory = v.windows(2).filter(|w| w[1] == w[0] + SIZE).count();
    // A carve in address order makes nearly every step one block up; the shuffle makes none
    // inside a carve (its step is never 1), at most one where two carves meet.
    assert!(
        next_in_memory < 10,
        "{next_in_memory} of 62 allocations were the block after the previous one"
    );
    let mut sorted = v.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), v.len(), "a block handed out twice");
    for p in v {
        dealloc(p as *mut u8, SIZE - 8);
    }
}
