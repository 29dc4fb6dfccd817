//! The `secure` build's guard pages (docs/security.md): a `PROT_NONE` page between every
//! segment's header and its first block, the last slice of every normal segment, and a page
//! right after (and right before) every huge block, wherever the huge cache or a realloc put
//! its end. The parent reads /proc/self/maps to check each guard's place and protection
//! exactly; a child process (this binary again, tests/common/child.rs) makes the stray write
//! and must die of SIGSEGV.
#![cfg(feature = "secure")]

#[path = "common/child.rs"]
mod child;

use std::alloc::{GlobalAlloc, Layout};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use tieralloc::TierAlloc;

#[global_allocator]
static GLOBAL: TierAlloc = TierAlloc::new();

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;
const SEGMENT: usize = 4 * MIB;
const SLICE: usize = 64 << 10;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 16).unwrap()
}

fn alloc(size: usize) -> *mut u8 {
    // SAFETY: a non-zero size.
    let p = unsafe { GLOBAL.alloc(layout(size)) };
    assert!(!p.is_null());
    p
}

fn dealloc(p: *mut u8, size: usize) {
    // SAFETY: p is a live block of `size` bytes from `alloc`.
    unsafe { GLOBAL.dealloc(p, layout(size)) }
}

fn usable(p: *const u8) -> usize {
    // SAFETY: p is a live block of ours.
    unsafe { tieralloc::usable_size(p) }
}

/// The protection of the mapping holding `addr` ("rw-p", "---p"), from /proc/self/maps.
fn prot_at(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let range = f.next().unwrap();
        let perms = f.next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        );
        if (a..b).contains(&addr) {
            return perms.to_string();
        }
    }
    "unmapped".to_string()
}

/// Asserts that every OS page of `[from, to)` is read-write and the page at `to` is a guard.
#[track_caller]
fn assert_writable_then_guard(from: usize, to: usize) {
    assert_eq!(to % PAGE, 0, "{to:#x} is not page-aligned");
    let mut a = from & !(PAGE - 1);
    while a < to {
        assert_eq!(prot_at(a), "rw-p", "page {a:#x} in [{from:#x}, {to:#x})");
        a += PAGE;
    }
    assert_eq!(prot_at(to), "---p", "no guard right after {to:#x}");
}

/// Writes and reads back every byte of `[p, p+len)`.
fn fill_and_check(p: *mut u8, len: usize, v: u8) {
    // SAFETY: [p, p+len) is a live block of ours (callers pass a block and its usable size).
    let s = unsafe { std::slice::from_raw_parts_mut(p, len) };
    s.fill(v);
    assert!(s.iter().all(|&x| x == v));
}

/// Runs child test `name`, which must die of SIGSEGV after printing `reached` on stderr (so
/// it got as far as the stray access, and not on the way there).
fn expect_segv(name: &str, reached: &str) {
    let out = child::run(&mut child::this_test(name), Duration::from_secs(120));
    out.require(
        out.status.and_then(|s| s.signal()) == Some(libc::SIGSEGV),
        "expected SIGSEGV",
    );
    out.require(out.stderr.contains(reached), "died before the stray write");
}

/// On a thread of its own (a heap of its own, with a huge cache of its own).
fn on_new_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

/// A huge block of a page-multiple size has guards right after its end and right before its
/// start; malloc_usable_size stops at the tail guard.
#[test]
fn a_huge_block_has_a_guard_page_at_each_end() {
    let n = 8 * MIB;
    let p = alloc(n);
    assert_eq!(usable(p), n, "the usable size runs into the guard");
    assert_writable_then_guard(p as usize, p as usize + n);
    assert_eq!(prot_at(p as usize - 1), "---p", "no guard before the block");
    let seg = p as usize & !(SEGMENT - 1);
    assert_eq!(prot_at(seg), "rw-p", "the header");
    fill_and_check(p, n, 0x5a);
    dealloc(p, n);
}

#[test]
fn a_write_one_byte_past_a_huge_block_faults() {
    expect_segv(
        "child_a_write_one_byte_past_a_huge_block_faults",
        "writing past",
    );
}

#[test]
fn child_a_write_one_byte_past_a_huge_block_faults() {
    if !child::is_child() {
        return;
    }
    let n = 8 * MIB;
    let p = alloc(n);
    eprintln!("writing past the end");
    // SAFETY: none: the test's point is that this write faults.
    unsafe { std::ptr::write_volatile(p.add(n), 1) };
    eprintln!("the write past the end did not fault");
}

/// Blocks of the first page of a segment (the one from `BLOCKS_START`): 64-byte blocks taken
/// in a fresh thread until one lands on its first byte, that is right after the guard page
/// (found in /proc/self/maps). Up to 19 MiB of them: a heap may first fill segments it
/// adopted, whose first page holds another class; a segment it maps gives its first page to
/// the class that needs one. Returns the guard's end and the blocks, which the caller frees.
fn first_page_blocks() -> (usize, Vec<usize>) {
    on_new_thread(|| {
        let mut got = Vec::new();
        for _ in 0..300_000 {
            let p = alloc(64) as usize;
            got.push(p);
            let seg = p & !(SEGMENT - 1);
            // The first block is within the first quarter slice (the header is smaller).
            if p - seg <= SLICE / 4 && prot_at(p - 1) == "---p" {
                let guard = p - PAGE;
                assert_eq!(prot_at(guard - 1), "rw-p", "the guard is one page");
                assert_eq!(prot_at(seg), "rw-p", "the header");
                return (p, got);
            }
        }
        panic!("no 64-byte block at the start of a segment's first page");
    })
}

/// The page after a segment's header is a guard, and every byte of the first page's blocks
/// is usable: the first page starts past the guard (and is one guard page smaller).
#[test]
fn the_first_blocks_of_a_segment_follow_its_guard_and_are_whole() {
    let (first, blocks) = first_page_blocks();
    let seg = first & !(SEGMENT - 1);
    assert!(
        first - seg <= SLICE / 4,
        "the first block is far from the header"
    );
    for (i, &b) in blocks.iter().enumerate() {
        if b & !(SEGMENT - 1) == seg && b - seg < SLICE {
            fill_and_check(b as *mut u8, usable(b as *const u8), i as u8);
        }
    }
    // The segment's last slice is its end guard: nothing of the next segment's header can be
    // reached from this one's last blocks.
    assert_eq!(prot_at(seg + SEGMENT - SLICE), "---p");
    assert_eq!(prot_at(seg + SEGMENT - 1), "---p");
    assert_eq!(prot_at(seg + SEGMENT - SLICE - 1), "rw-p");
    for b in blocks {
        dealloc(b as *mut u8, 64);
    }
}

#[test]
fn a_write_just_before_a_segments_first_block_faults() {
    expect_segv(
        "child_a_write_just_before_a_segments_first_block_faults",
        "writing before",
    );
}

#[test]
fn child_a_write_just_before_a_segments_first_block_faults() {
    if !child::is_child() {
        return;
    }
    let (first, _blocks) = first_page_blocks();
    eprintln!("writing before the first block");
    // SAFETY: none: the test's point is that this write faults.
    unsafe { std::ptr::write_volatile((first - 1) as *mut u8, 1) };
    eprintln!("the write before the first block did not fault");
}

/// A huge mapping reused from the thread's cache for a smaller block (split at 4 MiB), then
/// for a bigger one (grown inside its reservation), and a block grown by realloc: each time
/// the guard is right after the block's new end and none is inside it.
#[test]
fn a_huge_block_reused_at_another_size_moves_its_guard() {
    on_new_thread(|| {
        let big = 12 * MIB;
        let p = alloc(big);
        fill_and_check(p, usable(p), 1);
        dealloc(p, big);
        // Smaller: the cached 12 MiB mapping is split at 8 MiB, in place.
        let small = 6 * MIB;
        let q = alloc(small);
        assert_eq!(q, p, "not served from the cache");
        let end = q as usize + usable(q);
        assert!(usable(q) >= small);
        assert_writable_then_guard(q as usize, end);
        fill_and_check(q, usable(q), 2);
        dealloc(q, small);
        // Bigger than the 8 MiB head it left, inside its reservation? No: the head's
        // reservation is 8 MiB. A 5 MiB block freed, then a 7 MiB one: it grows inside.
        let five = 5 * MIB;
        let r = alloc(five);
        let r_end = r as usize + usable(r);
        assert_writable_then_guard(r as usize, r_end);
        dealloc(r, five);
        let seven = 7 * MIB;
        let s = alloc(seven);
        assert_eq!(s, r, "not grown inside the cached mapping's reservation");
        assert!(usable(s) >= seven);
        // The old guard (at r_end) is inside the block now, writable; the new one follows.
        assert_writable_then_guard(s as usize, s as usize + usable(s));
        fill_and_check(s, usable(s), 3);
        // Grown by realloc (the pages move into a bigger mapping): the same again.
        let nine = 9 * MIB;
        // SAFETY: s is a live block of `seven` bytes.
        let t = unsafe { GLOBAL.realloc(s, layout(seven), nine) };
        assert!(!t.is_null());
        // SAFETY: t is a live block of at least nine bytes; its first seven MiB are s's.
        assert!(unsafe { std::slice::from_raw_parts(t, seven) }
            .iter()
            .all(|&x| x == 3));
        assert_writable_then_guard(t as usize, t as usize + usable(t));
        assert_eq!(prot_at(t as usize - 1), "---p", "no guard before the block");
        fill_and_check(t, usable(t), 4);
        dealloc(t, nine);
    });
}

/// A cached huge mapping that served a block aligned to 1 MiB (its front guard just under
/// 1 MiB) serves one aligned to 16 bytes: the old front guard, inside the new block now, is
/// read-write again (every byte written), and the new one is right before the block.
#[test]
fn a_reused_huge_mapping_moves_its_front_guard_to_the_new_start() {
    on_new_thread(|| {
        let n = 6 * MIB;
        let wide = Layout::from_size_align(n, MIB).unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { GLOBAL.alloc(wide) };
        assert!(!p.is_null());
        assert_eq!(
            p as usize % SEGMENT,
            MIB,
            "the block is not at 1 MiB of its mapping"
        );
        assert_eq!(prot_at(p as usize - 1), "---p", "no guard before the block");
        // SAFETY: p is a live block of this layout.
        unsafe { GLOBAL.dealloc(p, wide) };
        let q = alloc(n);
        let seg = p as usize & !(SEGMENT - 1);
        assert_eq!(
            q as usize & !(SEGMENT - 1),
            seg,
            "not served from the cache"
        );
        assert!(q < p, "the block does not start before the old one");
        assert_eq!(prot_at(q as usize - 1), "---p", "no guard before the block");
        assert_writable_then_guard(q as usize, q as usize + usable(q));
        fill_and_check(q, usable(q), 5);
        dealloc(q, n);
    });
}

/// Two cached huge mappings moved together (`mremap`) to serve a bigger block: neither
/// piece's guards are left inside it, and the assembled mapping's guard follows its end.
#[test]
fn huge_mappings_moved_together_leave_no_guard_inside_the_block() {
    on_new_thread(|| {
        let (a, b) = (alloc(6 * MIB), alloc(5 * MIB));
        fill_and_check(a, 6 * MIB, 0xa1);
        fill_and_check(b, 5 * MIB, 0xb2);
        dealloc(a, 6 * MIB);
        dealloc(b, 5 * MIB);
        let n = 10 * MIB;
        let c = alloc(n);
        let (ca, cb) = (c as usize, c as usize + usable(c));
        // SAFETY: c is a live block of n bytes (not zeroed: the moved pages keep their bytes).
        let (first, last) = unsafe { (*c, *c.add(n - 1)) };
        assert_eq!(
            (first, last),
            (0xa1, 0xb2),
            "not assembled from the cached pieces"
        );
        assert_writable_then_guard(ca, cb);
        assert_eq!(prot_at(ca - 1), "---p", "no guard before the block");
        fill_and_check(c, usable(c), 6);
        dealloc(c, n);
    });
}
