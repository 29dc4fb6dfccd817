//! Huge objects (over 2 MiB, one mapping each): the per-thread cache of freed mappings stays
//! within its byte bound, hands a cached mapping to a smaller request and keeps the tail
//! past the request's 4 MiB boundary cached where it is (no page moved), moves a cached mapping too small for a request into one
//! big enough (its resident pages serve the request), and `realloc` grows a huge object by
//! moving its pages.
//!
//! One test running the scenarios in order on one thread: the assertions look at which
//! addresses are mapped and resident, which a concurrently running test could change.

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// Resident bytes of `[p, p+len)` (page-rounded); 0 for pages that are not mapped at all.
fn resident(p: usize, len: usize) -> usize {
    let start = p & !(PAGE - 1);
    let pages = (p + len - start).div_ceil(PAGE);
    let mut total = 0;
    for i in 0..pages {
        let mut v = 0u8;
        // SAFETY: mincore only reads the page tables; an unmapped page gives ENOMEM.
        let r = unsafe { libc::mincore((start + i * PAGE) as *mut libc::c_void, PAGE, &mut v) };
        if r == 0 && v & 1 != 0 {
            total += PAGE;
        }
    }
    total
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 16).unwrap()
}

fn filled(size: usize, seed: u8) -> *mut u8 {
    // SAFETY: non-zero size.
    let p = unsafe { alloc(layout(size)) };
    assert!(!p.is_null());
    for i in 0..size {
        // SAFETY: p holds size bytes.
        unsafe { *p.add(i) = seed.wrapping_add((i / PAGE) as u8) };
    }
    p
}

fn check(p: *const u8, size: usize, seed: u8) {
    for i in (0..size).step_by(PAGE / 2) {
        // SAFETY: p holds at least size bytes.
        assert_eq!(
            unsafe { *p.add(i) },
            seed.wrapping_add((i / PAGE) as u8),
            "byte {i}"
        );
    }
}

/// A huge block of `size` bytes filled from `seed`, freed: its address, after checking that
/// the thread's cache kept the mapping (at least half of it still resident).
fn filled_freed_and_kept(size: usize, seed: u8) -> usize {
    let p = filled(size, seed) as usize;
    // SAFETY: live block.
    unsafe { dealloc(p as *mut u8, layout(size)) };
    assert!(
        resident(p, size) >= size / 2,
        "the freed mapping was not kept"
    );
    p
}

/// Freed mappings beyond the cache's byte bound (128 MiB a thread, `huge::cache::
/// CACHE_MAX_BYTES`) go back to the OS; a freed mapping that is cached serves the next
/// request that fits it. 48 blocks of 3 MiB: 144 MiB freed, so at least 16 MiB must go.
fn cache_is_bounded_and_reused() {
    const CACHE_MAX: usize = 128 * MIB;
    let size = 3 * MIB;
    let blocks: Vec<usize> = (0..48).map(|k| filled(size, k as u8) as usize).collect();
    for &b in &blocks {
        // SAFETY: live block of `size` bytes.
        unsafe { dealloc(b as *mut u8, layout(size)) };
    }
    let kept: usize = blocks.iter().map(|&b| resident(b, size)).sum();
    assert!(
        kept <= CACHE_MAX,
        "{} MiB of freed huge objects still resident",
        kept / MIB
    );
    // 32 slots of 4 MiB mappings, each 3 MiB resident: 96 MiB (a 64 MiB bound kept 48).
    assert!(
        kept > 64 * MIB,
        "only {} MiB of freed huge objects kept for reuse",
        kept / MIB
    );
    let again = filled(size, 9) as usize;
    assert!(blocks.contains(&again), "a cached mapping was not reused");
    // SAFETY: live block.
    unsafe { dealloc(again as *mut u8, layout(size)) };
}

/// A cached mapping much bigger than the request serves it from its first 4 MiB; the tail
/// past that boundary stays where it is, resident (no page moved, none given back), cached
/// as a mapping of its own, and serves the next request that fits it at that address.
fn big_mapping_serves_small_request_and_tail_stays_cached() {
    let big = 15 * MIB / 2;
    let p = filled_freed_and_kept(big, 1);
    let small = 5 * MIB / 2;
    let q = filled(small, 2) as usize;
    assert_eq!(q, p, "the cached mapping was not reused");
    check(q as *const u8, small, 2);
    // The object keeps the cached mapping's first 4 MiB (its usable size; the pages past
    // `small` in it stay resident, for a realloc that grows), less the secure build's guard
    // page at its end.
    // SAFETY: q is live.
    let usable = unsafe { tieralloc::usable_size(q as *const u8) };
    let seg = q & !(4 * MIB - 1);
    let guard = if cfg!(feature = "secure") { PAGE } else { 0 };
    assert_eq!(seg + 4 * MIB - guard, q + usable, "usable size {usable}");
    let tail = seg + 4 * MIB;
    let tail_len = p + big - tail;
    assert_eq!(
        resident(tail, tail_len),
        tail_len,
        "the tail was moved or given back"
    );
    // The tail (3.5 MiB and a bit) serves a 3 MiB request in place: its pages, not fresh.
    let r = filled(3 * MIB, 3) as usize;
    assert_eq!(
        r & !(4 * MIB - 1),
        tail,
        "the tail did not serve the next request"
    );
    check(r as *const u8, 3 * MIB, 3);
    // SAFETY: live blocks.
    unsafe {
        dealloc(r as *mut u8, layout(3 * MIB));
        dealloc(q as *mut u8, layout(small));
    }
}

/// Growing a huge object moves its pages to a bigger mapping: contents kept, the old
/// address no longer tieralloc's, the new one usable to its full size.
fn realloc_grows_by_moving_pages() {
    let mut size = 3 * MIB;
    let mut p = filled(size, 5);
    for next in [5 * MIB, 9 * MIB, 17 * MIB + 123] {
        // SAFETY: p is live with layout(size); next is non-zero.
        let q = unsafe { realloc(p, layout(size), next) };
        assert!(!q.is_null());
        check(q, size, 5);
        if q != p {
            assert!(
                !tieralloc::owns(p),
                "the old mapping is still ours after a move"
            );
        }
        assert!(tieralloc::owns(q));
        // SAFETY: q is live.
        assert!(unsafe { tieralloc::usable_size(q) } >= next);
        for i in size..next {
            // SAFETY: q holds next bytes.
            unsafe { *q.add(i) = 5u8.wrapping_add((i / PAGE) as u8) };
        }
        check(q, next, 5);
        p = q;
        size = next;
    }
    // SAFETY: live block.
    unsafe { dealloc(p, layout(size)) };
}

/// On a fresh thread (empty cache): a request bigger than every cached mapping takes over the
/// biggest one, moved into a mapping of the size needed. Its pages come along, resident and
/// with their contents (a fresh mapping would be all zeros and not resident), and the old
/// address is no longer tieralloc's. A zeroed request served the same way reads zeros.
fn small_cached_mapping_grows_into_a_bigger_request() {
    let small = 5 * MIB / 2;
    let p = filled_freed_and_kept(small, 3);
    let big = 7 * MIB / 2;
    // SAFETY: non-zero size.
    let q = unsafe { alloc(layout(big)) };
    assert!(!q.is_null());
    check(q, small, 3);
    assert!(
        resident(q as usize, small) >= small - PAGE,
        "the moved pages are not resident"
    );
    if q as usize != p {
        assert!(
            !tieralloc::owns(p as *const u8),
            "the old mapping is still ours"
        );
    }
    for i in (0..big).step_by(PAGE) {
        // SAFETY: q holds big bytes.
        unsafe { *q.add(i) = 0xAB };
    }
    // SAFETY: live block.
    unsafe { dealloc(q, layout(big)) };
    let bigger = 9 * MIB / 2;
    // SAFETY: non-zero size.
    let z = unsafe { alloc_zeroed(layout(bigger)) };
    assert!(!z.is_null());
    assert!(
        resident(z as usize, big) >= big / 2,
        "the cached mapping was not moved into the zeroed request"
    );
    for i in (0..bigger).step_by(PAGE / 4) {
        // SAFETY: z holds bigger bytes.
        assert_eq!(unsafe { *z.add(i) }, 0, "byte {i} of a zeroed request");
    }
    // SAFETY: live block.
    unsafe { dealloc(z, layout(bigger)) };
}

#[test]
fn huge_objects_cache_trim_and_grow() {
    // Each on a fresh thread, so each starts from an empty cache (the cache is per thread and
    // serves best fit: what one part leaves cached would serve the next part's requests).
    let parts: [fn(); 4] = [
        cache_is_bounded_and_reused,
        big_mapping_serves_small_request_and_tail_stays_cached,
        realloc_grows_by_moving_pages,
        small_cached_mapping_grows_into_a_bigger_request,
    ];
    for part in parts {
        std::thread::spawn(part).join().unwrap();
    }
}
