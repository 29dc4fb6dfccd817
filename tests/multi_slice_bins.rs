//! Bin pages of more than one slice for small blocks (review rev49): 2049–4096 B blocks get
//! 2-slice pages and 4097–8192 B blocks 4-slice ones (`size_class::page_slices`). A page's
//! blocks fill all its slices; a free into its second to fourth slice, by the owner or by
//! another thread, finds the page (`back`, `remote_back`), and the block comes back; the usable
//! size and an in-place realloc see the class; a 4-slice page that ends at the segment's last
//! slice (the default build) works like any other, and the `secure` build never puts a block
//! in that slice (its end guard).
//!
//! Each scenario runs in a child process of its own, so that its thread's heap is new and
//! its first page lies where the test expects.

#[path = "common/child.rs"]
mod child;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashSet;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const SLICE: usize = 64 << 10;
const SEGMENT: usize = 4 << 20;
/// Classes, their pages' slices: a request 64 bytes short of the class (the `secure` build's
/// trailer fits).
const CLASSES: [(usize, usize); 4] = [(3072, 2), (4096, 2), (5120, 4), (8192, 4)];
const LIMIT: Duration = Duration::from_secs(60);

fn layout(class: usize) -> Layout {
    Layout::from_size_align(class - 64, 8).unwrap()
}

fn alloc_filled(class: usize, seed: u8) -> usize {
    // SAFETY: non-zero size.
    let p = unsafe { GLOBAL.alloc(layout(class)) };
    assert!(!p.is_null());
    // SAFETY: p holds the request's bytes.
    unsafe { std::ptr::write_bytes(p, seed, class - 64) };
    p as usize
}

fn check_and_free(p: usize, class: usize, seed: u8) {
    // SAFETY: a live block of the request's size.
    let s = unsafe { std::slice::from_raw_parts(p as *const u8, class - 64) };
    let bad = s.iter().filter(|&&b| b != seed).count();
    assert_eq!(
        bad, 0,
        "{bad} bytes of the {class} B block {p:#x} overwritten"
    );
    // SAFETY: live, allocated with this layout.
    unsafe { GLOBAL.dealloc(p as *mut u8, layout(class)) };
}

fn seed_of(k: usize) -> u8 {
    (k % 251) as u8 + 1
}

/// One class's first page, filled by its thread: its blocks lie in `slices` slices from a
/// slice boundary, as many as fit; another thread frees every block that starts past the
/// first slice (frees into slices 2..=slices); the owner gets exactly those back, the rest
/// intact; usable size and realloc in place see the class.
fn first_page_round_trip(class: usize, slices: usize) {
    let cap = slices * SLICE / class;
    let blocks: Vec<usize> = (0..cap).map(|k| alloc_filled(class, seed_of(k))).collect();
    let p0 = *blocks.iter().min().unwrap();
    assert_eq!(p0 % SLICE, 0, "{class}: the first page starts on a slice");
    let end = p0 + slices * SLICE;
    let inside = blocks.iter().filter(|&&p| p >= p0 && p < end).count();
    assert_eq!(
        inside, cap,
        "{class}: a page of {slices} slices holds {cap} blocks"
    );
    for &p in &blocks {
        assert_eq!(
            (p - p0) % class,
            0,
            "{class}: {p:#x} not on the page's grid"
        );
        // SAFETY: a live block.
        let u = unsafe { tieralloc::usable_size(p as *const u8) };
        assert!((class - 64..=class).contains(&u), "{class}: usable {u}");
    }
    // Another thread frees every block past the first slice.
    let far: Vec<(usize, u8)> = blocks
        .iter()
        .enumerate()
        .filter(|&(_, &p)| p - p0 >= SLICE)
        .map(|(k, &p)| (p, seed_of(k)))
        .collect();
    assert!(
        far.len() >= cap / 2 - 1,
        "{class}: {} blocks past slice 1",
        far.len()
    );
    let sent = far.clone();
    std::thread::spawn(move || {
        for (p, s) in sent {
            check_and_free(p, class, s);
        }
    })
    .join()
    .unwrap();
    let freed: HashSet<usize> = far.iter().map(|b| b.0).collect();
    let again: Vec<usize> = (0..far.len()).map(|_| alloc_filled(class, 0xA5)).collect();
    let got: HashSet<usize> = again.iter().copied().collect();
    assert_eq!(got.len(), freed.len(), "{class}: blocks handed out twice");
    assert_eq!(
        got.difference(&freed).count(),
        0,
        "{class}: the blocks other threads freed into slices 2..={slices} did not come back first"
    );
    // The owner's own frees into the far slices, then realloc in place inside the class.
    for &p in &again {
        check_and_free(p, class, 0xA5);
    }
    for (k, &p) in blocks.iter().enumerate() {
        if p - p0 < SLICE {
            // SAFETY: live; the new size is inside the block's usable size.
            let u = unsafe { tieralloc::usable_size(p as *const u8) };
            let q = unsafe { GLOBAL.realloc(p as *mut u8, layout(class), u) } as usize;
            assert_eq!(q, p, "{class}: a realloc to the usable size moved");
            let l = Layout::from_size_align(u, 8).unwrap();
            // SAFETY: q holds u bytes, the first class - 64 the seed.
            let s = unsafe { std::slice::from_raw_parts(q as *const u8, class - 64) };
            assert!(
                s.iter().all(|&b| b == seed_of(k)),
                "{class}: realloc lost bytes"
            );
            // SAFETY: live, now of layout l.
            unsafe { GLOBAL.dealloc(q as *mut u8, l) };
        }
    }
}

#[test]
fn small_blocks_fill_multi_slice_pages_and_take_frees_in_every_slice() {
    if !child::in_child(
        "small_blocks_fill_multi_slice_pages_and_take_frees_in_every_slice",
        LIMIT,
    ) {
        return;
    }
    for (class, slices) in CLASSES {
        // A thread of its own: a new heap, whose first page of the class is the test's.
        std::thread::spawn(move || first_page_round_trip(class, slices))
            .join()
            .unwrap();
    }
}

/// A 4-slice page at the end of a segment: a 1-slice page at slice 0 (1 KiB blocks), a
/// 2-slice page at slices 1-2 (4 KiB), a 1-slice page at 3, then 8 KiB pages at 4-7, ...,
/// 60-63 (default build; in the `secure` build slice 63 is the end guard, and no block lies
/// there). Every 8 KiB block in the segment's last four slices is freed by another thread and
/// comes back; the rest keep their bytes.
#[test]
fn a_four_slice_page_at_the_segment_end() {
    if !child::in_child("a_four_slice_page_at_the_segment_end", LIMIT) {
        return;
    }
    // The lists, made here: made by the thread, they would take blocks of its pages (480
    // addresses are a 4 KiB block). And the thread that frees, started here: once the segment
    // is full, a new one (for any block of ours) gives it up (`abandon_full`), and the first
    // thread that frees into it then takes it over.
    let (mut small, mut mid, mut big) = (
        Vec::with_capacity(112),
        Vec::with_capacity(32),
        Vec::with_capacity(480),
    );
    let mut again: Vec<usize> = Vec::with_capacity(64);
    let shared = Arc::new((
        Mutex::new(Vec::<(usize, u8)>::with_capacity(64)),
        Barrier::new(2),
    ));
    let theirs = shared.clone();
    let freer = std::thread::spawn(move || {
        theirs.1.wait();
        for &(p, s) in theirs.0.lock().unwrap().iter() {
            check_and_free(p, 8192, s);
        }
        theirs.1.wait();
    });
    std::thread::spawn(move || {
        let secure = cfg!(feature = "secure");
        // Slice 0's page: 48 KiB of 1 KiB blocks (44 past the secure build's guard page).
        let first = if secure { 44 } else { 48 };
        small.extend((0..first).map(|_| alloc_filled(1024, 7)));
        mid.extend((0..32).map(|_| alloc_filled(4096, 9)));
        small.extend((0..64).map(|_| alloc_filled(1024, 7)));
        big.extend((0..15 * 32).map(|k| alloc_filled(8192, seed_of(k))));
        let seg = big[0] & !(SEGMENT - 1);
        let slice = |p: usize| (p - (p & !(SEGMENT - 1))) / SLICE;
        let ours = |p: usize| p & !(SEGMENT - 1) == seg;
        let all = small.iter().chain(&mid).chain(&big);
        assert!(
            !secure || all.clone().all(|&p| slice(p) != 63),
            "a block in the end guard"
        );
        let last = big
            .iter()
            .filter(|&&p| ours(p))
            .map(|&p| slice(p))
            .max()
            .unwrap();
        assert_eq!(
            last,
            if secure { 59 } else { 63 },
            "the segment's last 8 KiB page"
        );
        let n0 = big.iter().filter(|&&p| ours(p)).count();
        assert_eq!(
            n0,
            if secure { 14 * 32 } else { 15 * 32 },
            "8 KiB blocks in {seg:#x}"
        );
        {
            let mut tail = shared.0.lock().unwrap();
            for (k, &p) in big.iter().enumerate() {
                if ours(p) && slice(p) > last - 4 {
                    tail.push((p, seed_of(k)));
                }
            }
            assert_eq!(tail.len(), 32, "blocks of the segment's last 8 KiB page");
        }
        shared.1.wait();
        shared.1.wait();
        again.extend((0..32).map(|_| alloc_filled(8192, 0x3C)));
        let tail = shared.0.lock().unwrap();
        let freed: HashSet<usize> = tail.iter().map(|b| b.0).collect();
        let back: HashSet<usize> = again.iter().copied().collect();
        assert_eq!(back.len(), 32, "blocks handed out twice");
        let reused = back.intersection(&freed).count();
        assert_eq!(
            reused, 32,
            "blocks freed at the segment's end not reused first"
        );
        for p in again {
            check_and_free(p, 8192, 0x3C);
        }
        for (k, &p) in big.iter().enumerate() {
            if !freed.contains(&p) {
                check_and_free(p, 8192, seed_of(k));
            }
        }
        for p in mid {
            check_and_free(p, 4096, 9);
        }
        for p in small {
            check_and_free(p, 1024, 7);
        }
    })
    .join()
    .unwrap();
    freer.join().unwrap();
}
