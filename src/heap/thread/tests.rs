//! Tests of the thread heap's internals: the huge cache's fit, page retirement by
//! collections, node heaps, descriptors, tags, the segment map's owner entries, the
//! parking of exhausted pages, and a refill that finds no new page. May touch everything of `heap::thread` (a child module).

use super::alloc::{alloc_bin, alloc_generic, is_scant, FEW_BLOCKS, NEW_PAGES};
use super::free::{free, free_c};
use super::large::{alloc_huge, resize_in_place};
use super::node::{node_alloc, NODE_HEAPS, NODE_HEAPS_USED};
use super::registry::{give_tag, heap_done, take_tag, REGISTRY};
use super::slices::NO_NEW_SEGMENT;
use super::tick::{collect_now, heap_collect};
use super::tls::{heap, own};
use super::{empty_page, HeapRef};
use crate::heap::huge;
use crate::heap::segment::{
    map_tag, page_of, page_of_remote, segment_of, set_owner, Page, BLOCKS_START, FIRST_TAG, NO_TAG,
    PAGE_IN_FULL, SLICE_SIZE,
};
use crate::heap::size_class::bin_of;
use crate::sync::Ordering;
use crate::sys::os;
use core::ptr;

/// A cached huge mapping far bigger than a small huge request (1 byte aligned to 128 KiB)
/// serves it from its first 4 MiB, and its tail moves into a mapping of its own that stays
/// cached. (The fallback that enlarged the biggest cached mapping once took a bigger one
/// and shrank it under the request: `map_size - old_map` underflowed, found by the
/// `tieralloc` fuzz target.)
#[test]
fn a_far_too_big_cached_mapping_serves_a_small_request_and_keeps_its_tail() {
    std::thread::spawn(|| {
        // SAFETY: this thread's heap, used only by this thread; each block freed once.
        unsafe {
            let h = own();
            let big = alloc_huge(h, 7 << 20, 16, false);
            assert!(!big.is_null());
            free(big);
            let cached = |h: HeapRef| h.huge_cache.largest();
            let before = cached(h).expect("a freed 7 MiB block is cached");
            assert!(before >= 7 << 20);
            let small = alloc_huge(h, 1, 128 << 10, false);
            assert!(!small.is_null());
            assert_eq!(small as usize % (128 << 10), 0);
            assert_eq!(
                segment_of(small),
                segment_of(big),
                "not served from the cache"
            );
            assert_eq!(
                cached(h),
                Some(before - crate::heap::segment::SEGMENT_SIZE),
                "the tail past the first 4 MiB is not cached"
            );
            free(small);
        }
    })
    .join()
    .unwrap();
}

/// Runs `f` on a fresh thread (an empty huge cache) until a run takes less than half the
/// purge delay: the cache gives back what has waited that long, and a loaded machine may
/// stall a run. Each run has a thread of its own: a run after a slow one on the same thread
/// began with the mappings the slow one left cached (CI saw `freed_buffers_are_moved_
/// together_to_serve_a_bigger_one` find a 1 MiB tail cached that way). `f` returns what went
/// wrong, if anything.
fn huge_cache_case(f: fn(HeapRef) -> Result<(), String>) {
    let delay = crate::init::PURGE_DELAY_MS.load(Ordering::Relaxed);
    for _ in 0..5 {
        let (r, took) = std::thread::spawn(move || {
            let t0 = os::now_ms();
            let r = f(own());
            (r, os::now_ms() - t0)
        })
        .join()
        .unwrap();
        if took < delay / 2 {
            return r.unwrap();
        }
    }
    panic!("every run took longer than half the purge delay");
}

/// Fills `len` bytes at `p` with `v`.
///
/// # Safety
/// `p` is a live block of at least `len` bytes.
unsafe fn fill(p: *mut u8, len: usize, v: u8) {
    // SAFETY: forwarded contract.
    unsafe { ptr::write_bytes(p, v, len) }
}

/// The first offset (a page's first byte, or the last byte) of `len` bytes at `p` that is
/// 0: a page that was faulted in afresh, not moved from a freed buffer.
///
/// # Safety
/// `p` is a live block of at least `len` bytes.
unsafe fn fresh_page(p: *const u8, len: usize) -> Option<usize> {
    // SAFETY: forwarded contract.
    (0..len)
        .step_by(os::OS_PAGE)
        .chain([len - 1])
        // SAFETY: o < len, inside the live block (contract).
        .find(|&o| unsafe { *p.add(o) } == 0)
}

/// The offsets (from `p`) of the pages of the `len` bytes at `p` that are not resident
/// (`mincore`), outside `[skip.0, skip.1)`.
///
/// # Safety
/// `p` is a live block of at least `len` bytes.
unsafe fn absent_page(p: *const u8, len: usize, skip: (usize, usize)) -> Option<usize> {
    let start = p as usize & !(os::OS_PAGE - 1);
    let pages = (p as usize + len - start).div_ceil(os::OS_PAGE);
    let mut v = vec![0u8; pages];
    // SAFETY: [start, start + pages pages) is mapped (it holds the live block), and v has one
    // byte per page.
    let r = unsafe {
        libc::mincore(
            start as *mut libc::c_void,
            pages * os::OS_PAGE,
            v.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "mincore failed");
    (0..pages)
        .filter(|&i| v[i] & 1 == 0)
        .map(|i| (start + i * os::OS_PAGE).saturating_sub(p as usize))
        .find(|&o| o < skip.0 || o >= skip.1)
}

/// Issue 16: a freed 20 MiB buffer (more than the 8 MiB the cache used to keep) serves the
/// next one of that size: same mapping, its pages still resident (their old contents show:
/// no page was faulted in afresh).
#[test]
fn a_freed_20_mib_buffer_serves_the_next_one_with_its_pages() {
    huge_cache_case(|h| {
        let n = 20 << 20;
        // SAFETY: this thread's heap; each block freed once, used within its size.
        unsafe {
            let a = alloc_huge(h, n, 16, false);
            assert!(!a.is_null());
            fill(a, n, 0x5a);
            free(a);
            let b = alloc_huge(h, n, 16, false);
            assert!(!b.is_null());
            let fresh = fresh_page(b, n);
            free(b);
            if b != a {
                return Err(format!("a new mapping at {b:?}, not {a:?}"));
            }
            match fresh {
                Some(o) => Err(format!("fresh page at offset {o}")),
                None => Ok(()),
            }
        }
    });
}

/// Issue 16: a request bigger than every cached mapping gets several of them moved together
/// into one mapping (biggest first): every page of the new block comes from the freed ones
/// (resident before it is touched), the biggest first.
#[test]
fn freed_buffers_are_moved_together_to_serve_a_bigger_one() {
    huge_cache_case(|h| {
        // SAFETY: this thread's heap; each block freed once, used within its size.
        unsafe {
            let a = alloc_huge(h, 6 << 20, 16, false);
            let b = alloc_huge(h, 5 << 20, 16, false);
            assert!(!a.is_null() && !b.is_null());
            fill(a, 6 << 20, 0xa1);
            fill(b, 5 << 20, 0xb2);
            free(a);
            free(b);
            let n = 10 << 20;
            let c = alloc_huge(h, n, 16, false);
            assert!(!c.is_null());
            // Before any read (a read of a fresh page maps the zero page). The second piece's
            // header pages were never written (only the header's first lines are), nor (the
            // secure build) the first piece's tail guard and the second's front guard: skipped.
            let (off, ma) = huge::layout_for(6 << 20, 16).unwrap();
            let skip = (ma - off - huge::TAIL_GUARD, ma - off + BLOCKS_START);
            let fresh = absent_page(c, n, skip);
            let (first, last) = (*c, *c.add(n - 1));
            let held = h.huge_cache.held_count();
            free(c);
            if let Some(o) = fresh {
                return Err(format!("fresh page at offset {o}"));
            }
            if (first, last) != (0xa1, 0xb2) {
                return Err(format!("first byte {first:#x}, last {last:#x}"));
            }
            // 6 + 5 MiB (plus two headers) hold 10 MiB (plus one): the rest, about 1 MiB,
            // lies under the request's 4 MiB boundary (12 MiB), so it stays with the block
            // (splitting it off would move pages again) and nothing is left cached.
            let (_, mb) = huge::layout_for(5 << 20, 16).unwrap();
            let (_, mc) = huge::layout_for(n, 16).unwrap();
            assert!(ma + mb - mc >= huge::SPLIT_MIN && ma + mb <= huge::reservation(mc));
            if held != (0, 0) {
                return Err(format!("cache holds {held:?}, not nothing"));
            }
            Ok(())
        }
    });
}

/// Issue 16: the cache keeps at most `CACHE_MAX_BYTES`, as much of it as the freed mappings
/// fill, and gives all of it back once the purge delay has passed since they were freed.
#[test]
fn the_huge_cache_keeps_its_bytes_and_gives_them_back_after_the_delay() {
    huge_cache_case(|mut h| {
        let n = 20 << 20;
        let (_, ms) = huge::layout_for(n, 16).unwrap();
        // SAFETY: this thread's heap; each block freed once, used within its size.
        unsafe {
            let mut live = [ptr::null_mut(); 6];
            for p in live.iter_mut() {
                *p = alloc_huge(h, n, 16, false);
                assert!(!p.is_null());
                **p = 1;
            }
            for p in live {
                free(p);
            }
            let freed = os::now_ms();
            let held = h.huge_cache.held_count();
            let fits = huge::CACHE_MAX_BYTES / ms;
            if held != (fits * ms, fits) {
                return Err(format!("cache holds {held:?}, not {fits} x {ms} bytes"));
            }
            let delay = crate::init::PURGE_DELAY_MS.load(Ordering::Relaxed);
            h.huge_cache.expire(freed, delay.max(1));
            let kept = h.huge_cache.held_count();
            h.huge_cache.expire(freed + delay, delay);
            let after = h.huge_cache.held_count();
            if kept != held || after != (0, 0) {
                return Err(format!("before the delay {kept:?}, after it {after:?}"));
            }
            Ok(())
        }
    });
}

/// A class that allocated since the last collection keeps its empty current page through
/// the next one; a collection after a quiet interval gives it back.
#[test]
fn an_empty_current_page_stays_while_its_class_allocates() {
    std::thread::spawn(|| {
        let bin = bin_of(3000);
        // SAFETY: this thread's heap, used only by this thread; the block is freed once.
        unsafe {
            let p = alloc_bin(bin);
            assert!(!p.is_null());
            free(p);
            let h = heap();
            let page = (*h).pages[bin];
            assert_ne!(page, empty_page());
            assert_eq!((*page).used, 0);
            heap_collect(HeapRef::new(h), os::now_ms(), 100);
            assert_eq!((*h).pages[bin], page, "page of an active class given back");
            heap_collect(HeapRef::new(h), os::now_ms(), 100);
            assert_eq!((*h).pages[bin], empty_page(), "page of a quiet class kept");
        }
    })
    .join()
    .unwrap();
}

/// A node heap that was used is marked so, and a collection run by any thread reaches it:
/// a block freed into it from here is taken back into its page by our collection.
#[test]
fn collections_reach_the_node_heaps_that_were_used() {
    std::thread::spawn(|| {
        // SAFETY: blocks from node_alloc, each freed once; b stays live until the end, so
        // the page of a and b stays in use and its descriptor valid; the node heap's page
        // is read only under its lock.
        unsafe {
            let b = node_alloc(0, 1000, 16, false);
            let mut a = node_alloc(0, 1000, 16, false);
            assert!(!a.is_null() && !b.is_null());
            assert_ne!(NODE_HEAPS_USED.load(Ordering::Relaxed) & 1, 0);
            // b may have been the last block of its page: then a and a second block
            // share the next one.
            let (b, spare) = if page_of(segment_of(a), a) == page_of(segment_of(b), b) {
                (b, ptr::null_mut())
            } else {
                let next = a;
                a = node_alloc(0, 1000, 16, false);
                assert!(!a.is_null());
                (next, b)
            };
            let page = page_of(segment_of(a), a);
            assert_eq!(
                page,
                page_of(segment_of(b), b),
                "a fresh page held one block"
            );
            let used = {
                let _g = NODE_HEAPS[0].lock.lock();
                (*page).used
            };
            free(a); // a remote free: the node heap owns the page
            collect_now();
            let _g = NODE_HEAPS[0].lock.lock();
            assert_eq!((*page).used, used - 1, "the node heap was not collected");
            drop(_g);
            free(b);
            if !spare.is_null() {
                free(spare);
            }
        }
    })
    .join()
    .unwrap();
}

/// Every slice of a page in use leads to the same page and bin from the owner's line of
/// its descriptor and from the remote line: small, medium and large pages, slices given
/// back when a large object shrinks in place and taken when it grows.
#[test]
fn both_lines_of_a_descriptor_agree() {
    std::thread::spawn(|| {
        let check = |p: *mut u8, len: usize| {
            let seg = segment_of(p);
            // SAFETY: p is a live block of ours of at least len bytes.
            unsafe {
                for off in (0..len).step_by(SLICE_SIZE / 2).chain([len - 1]) {
                    let q = p.add(off);
                    let page = page_of(seg, q);
                    assert_eq!(page, page_of_remote(seg, q), "offset {off} of {len}");
                    assert_eq!((*page).bin, (*page).remote_bin);
                }
            }
        };
        let sizes = [16, 100, 3000, 20_000, 60_000, 100_000, 700_000, 1_500_000];
        // SAFETY: blocks of this thread's heap, each freed once.
        unsafe {
            let mut live = vec![];
            for &n in &sizes {
                for _ in 0..3 {
                    let p = alloc_generic(n, 16, false);
                    assert!(!p.is_null());
                    check(p, n);
                    live.push((p, n));
                }
            }
            // A large object shrinks in place, then grows in place again.
            let (p, n) = live[live.len() - 1];
            assert!(resize_in_place(p, n / 3));
            check(p, n / 3);
            if resize_in_place(p, n) {
                check(p, n);
            }
            for (p, _) in live {
                free(p);
            }
        }
    })
    .join()
    .unwrap();
}

/// The tag tests change what tags are left; they run one at a time.
static TAG_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Tags are handed out once each, never 0, `MAP_UNOWNED` or `NO_TAG`; when none is left
/// the answer is `NO_TAG`; given back, they are handed out again.
#[test]
fn heap_tags_are_unique_until_they_run_out() {
    let _t = TAG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let take = || {
        let _g = REGISTRY.lock.lock();
        // SAFETY: we hold the registry lock.
        unsafe { take_tag() }
    };
    let mut taken = vec![];
    loop {
        let t = take();
        if t == NO_TAG {
            break;
        }
        taken.push(t);
    }
    // Heaps of other tests' threads hold a few.
    assert!(taken.len() > 65_000, "only {} tags", taken.len());
    let mut sorted = taken.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), taken.len(), "a tag handed out twice");
    assert!(sorted[0] >= FIRST_TAG && sorted[sorted.len() - 1] < NO_TAG);
    {
        let _g = REGISTRY.lock.lock();
        for &t in &taken {
            // SAFETY: we hold the registry lock; these tags are in no map entry.
            unsafe { give_tag(t) };
        }
    }
    let again = take();
    assert_ne!(again, NO_TAG);
    let _g = REGISTRY.lock.lock();
    // SAFETY: as above.
    unsafe { give_tag(again) };
}

/// A heap's segments carry its tag in the segment map while it owns them; when it lets
/// go (thread exit) the entry no longer names it, and the block is still known as ours.
/// Memory that is not ours maps to 0, and C's free ignores it.
#[test]
fn the_segment_map_names_the_owner_while_it_owns() {
    let _t = TAG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    std::thread::spawn(|| {
        // SAFETY: this thread's heap; heap_done runs with no block of it in use by us
        // but p, which stays live across it and is freed once, after.
        unsafe {
            let p = alloc_bin(bin_of(64));
            let h = heap();
            let tag = (*h).tag;
            assert!((FIRST_TAG..NO_TAG).contains(&tag));
            assert_eq!(map_tag(p), tag);
            let seg = segment_of(p);
            heap_done(h);
            assert_eq!((*h).tag, NO_TAG);
            assert_ne!((*seg).owner.load(Ordering::Relaxed), h as usize);
            assert_ne!(map_tag(p), 0, "a live block's segment left the map");
            free_c(p);
        }
    })
    .join()
    .unwrap();
    let local = 7u64;
    let boxed = Box::new(7u64);
    assert_eq!(map_tag(&local as *const u64 as *const u8), 0);
    assert_eq!(map_tag(&*boxed as *const u64 as *const u8), 0);
    assert_eq!(map_tag(usize::MAX as *const u8), 0);
    // SAFETY: null and memory outside every tieralloc segment, which free_c ignores.
    unsafe {
        free_c(ptr::null_mut());
        free_c(&*boxed as *const u64 as *mut u8);
    }
    assert_eq!(*boxed, 7);
}

/// A heap with no tag (all were taken when it started) still frees its own blocks through
/// C's free as local frees: each counted once, as a free of its class, none as remote;
/// and the blocks come back to it.
#[test]
fn a_heap_without_a_tag_frees_its_own_blocks_locally() {
    let _t = TAG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    std::thread::spawn(|| {
        // SAFETY: this thread's heap and blocks, each freed once; set_owner on segments
        // we own, as taking them with no tag would have done.
        unsafe {
            let bin = bin_of(48);
            let first = alloc_bin(bin);
            let h = heap();
            // Become a heap that got no tag.
            {
                let _g = REGISTRY.lock.lock();
                let mut seg = (*h).segments;
                while !seg.is_null() {
                    set_owner(seg, h as usize, NO_TAG);
                    seg = (*seg).next;
                }
                give_tag((*h).tag);
                (*h).tag = NO_TAG;
            }
            assert_eq!(map_tag(first), crate::heap::segment::MAP_UNOWNED);
            let frees = (*h).stats.frees[bin].load(Ordering::Relaxed);
            let remote = (*h).stats.remote_frees.load(Ordering::Relaxed);
            let blocks: Vec<*mut u8> = (0..1000).map(|_| alloc_bin(bin)).collect();
            assert!(blocks.iter().all(|p| !p.is_null()));
            free_c(first);
            for &p in &blocks {
                free_c(p);
            }
            assert_eq!((*h).stats.frees[bin].load(Ordering::Relaxed), frees + 1001);
            assert_eq!((*h).stats.remote_frees.load(Ordering::Relaxed), remote);
            // Freed locally: no page of the class has a block out (a remote free would
            // leave them counted as used until collected).
            let mut page = (*h).pages[bin];
            assert_ne!(page, empty_page());
            while !page.is_null() {
                assert_eq!((*page).used, 0);
                assert!(!(*page).thread_free.has_blocks());
                page = (*page).next;
            }
        }
    })
    .join()
    .unwrap();
}

/// Which exhausted pages a queue walk parks as full: one its owner's frees (or nobody's)
/// refilled last is parked at once; one that other threads' frees refilled last stays in
/// the queue, and so does a page of few (big) blocks.
#[test]
fn exhausted_pages_are_parked_unless_remote_fed_or_of_few_blocks() {
    /// Allocates blocks of `bin` from `page`, the current page, until it has nothing left
    /// to hand out (the next allocation takes the slow path).
    ///
    /// # Safety
    /// `page` is the current page of `bin` in this thread's heap.
    unsafe fn exhaust(bin: usize, page: *mut Page, out: &mut Vec<usize>) {
        // SAFETY: the page is ours (contract); its owner reads its fields.
        unsafe {
            while !((*page).free.is_null()
                && (*page).local_free.is_null()
                && (*page).capacity == (*page).reserved)
            {
                let p = alloc_bin(bin);
                assert_eq!(page_of(segment_of(p), p), page);
                out.push(p as usize);
            }
        }
    }
    std::thread::spawn(|| {
        // SAFETY: this thread's heap; every block is freed once, by one thread.
        unsafe {
            let parked = |page: *mut Page| (*page).flags & PAGE_IN_FULL != 0;
            let page_of_addr = |p: usize| page_of(segment_of(p as *const u8), p as *const u8);
            let mut live = vec![];
            // A page nobody refilled, of many blocks: parked when it runs out.
            let bin = bin_of(64);
            let first = alloc_bin(bin);
            live.push(first as usize);
            let a = page_of_addr(first as usize);
            assert!((*a).reserved >= FEW_BLOCKS);
            exhaust(bin, a, &mut live);
            live.push(alloc_bin(bin) as usize);
            let b = page_of_addr(*live.last().unwrap());
            assert_ne!(b, a);
            assert!(
                parked(a),
                "an exhausted page its owner refills stayed in the queue"
            );
            // A page that other threads' frees refilled: stays in the queue.
            exhaust(bin, b, &mut live);
            let of_b: Vec<usize> = live
                .iter()
                .copied()
                .filter(|&p| page_of_addr(p) == b)
                .take(2)
                .collect();
            live.retain(|p| !of_b.contains(p));
            std::thread::spawn(move || {
                // Live blocks handed to this thread, freed once (the outer SAFETY).
                for p in of_b {
                    free(p as *mut u8);
                }
            })
            .join()
            .unwrap();
            for _ in 0..2 {
                let p = alloc_bin(bin);
                assert_eq!(
                    page_of_addr(p as usize),
                    b,
                    "the remote frees were not reused"
                );
                live.push(p as usize);
            }
            assert!((*b).remote_fed);
            live.push(alloc_bin(bin) as usize);
            assert_ne!(page_of_addr(*live.last().unwrap()), b);
            assert!(!parked(b), "an exhausted remote-fed page was parked");
            // A page of few blocks: stays in the queue (one slice: 32 blocks of 2 KiB).
            let big = bin_of(2000);
            let first = alloc_bin(big);
            live.push(first as usize);
            let f = page_of_addr(first as usize);
            assert!((*f).reserved < FEW_BLOCKS);
            exhaust(big, f, &mut live);
            live.push(alloc_bin(big) as usize);
            assert_ne!(page_of_addr(*live.last().unwrap()), f);
            assert!(!parked(f), "an exhausted page of few blocks was parked");
            // A second one exhausted: the walk passes both (each sent to the back of the
            // queue) and does not come round to them again, which would park them.
            let g = page_of_addr(*live.last().unwrap());
            exhaust(big, g, &mut live);
            live.push(alloc_bin(big) as usize);
            let k = page_of_addr(*live.last().unwrap());
            assert!(k != f && k != g);
            assert!(
                !parked(f) && !parked(g),
                "a walk came round to the pages it passed"
            );
            let h = own();
            let order = |h: HeapRef| {
                let mut v = vec![];
                let mut p = h.pages[big];
                while !p.is_null() {
                    v.push(p);
                    p = (*p).next;
                }
                assert_eq!(*v.last().unwrap(), h.tails[big]);
                v
            };
            assert_eq!(order(h), [k, g, f]);
            // A block of each of g and f freed; k exhausted: the walk passes k, sending it
            // to the back, and takes g, so f (which waited longer than k) comes next.
            for pg in [g, f] {
                let i = live.iter().position(|&p| page_of_addr(p) == pg).unwrap();
                free(live.swap_remove(i) as *mut u8);
            }
            exhaust(big, k, &mut live);
            live.push(alloc_bin(big) as usize);
            assert_eq!(page_of_addr(*live.last().unwrap()), g);
            assert_eq!(
                order(h),
                [g, f, k],
                "a page the walk passed stayed before others"
            );
            // 2- and 4-slice pages of few blocks: kept too, up to `KEEP_SLICES` slices per
            // walk (review rev49: a quiet owner's passes never reach a page in a queue). Two
            // 3000 B pages (2 slices) are both kept; of two 8000 B pages (4 slices) the walk
            // keeps the one it meets first and parks the other.
            for (size, both_kept) in [(3000, true), (8000, false)] {
                let m = bin_of(size);
                let first = alloc_bin(m);
                live.push(first as usize);
                let e = page_of_addr(first as usize);
                assert!((*e).reserved < FEW_BLOCKS && (*e).slice_count > 1);
                exhaust(m, e, &mut live);
                live.push(alloc_bin(m) as usize);
                let e2 = page_of_addr(*live.last().unwrap());
                assert_ne!(e2, e);
                assert!(!parked(e), "an exhausted {size} B page was parked");
                exhaust(m, e2, &mut live);
                live.push(alloc_bin(m) as usize);
                let e3 = page_of_addr(*live.last().unwrap());
                assert!(e3 != e && e3 != e2);
                assert!(
                    !parked(e2),
                    "the {size} B page the walk met first was parked"
                );
                assert_eq!(
                    !parked(e),
                    both_kept,
                    "{size} B pages: the second exhausted page (kept: {both_kept})"
                );
            }
            for p in live {
                free(p as *mut u8);
            }
        }
    })
    .join()
    .unwrap();
}

/// A refill that found only a nearly full page (`is_scant`) and could get no new one
/// serves from that page only if it is still ours: taking slices gives up our nearly full
/// segments first (`abandon_full`), the nearly full page's among them, out of our queue
/// and onto the abandoned list, where any thread may adopt it. Before, the refill took the
/// page back to the front of its queue from the abandoned segment (and `queue_remove` of
/// a page in no queue emptied the bin's queue): two heaps would allocate from one page.
#[test]
fn a_refill_with_no_new_page_does_not_take_a_nearly_full_page_it_gave_up() {
    std::thread::spawn(|| {
        let bin = bin_of(64);
        // SAFETY: this thread's heap, used only by this thread; each block freed once;
        // the pointers looked up are live blocks of ours.
        unsafe {
            let page_of_ptr = |p: *mut u8| page_of(segment_of(p), p);
            // Page A filled; the next block opens page B; four blocks of A freed, so A
            // is nearly full (in the queue behind B, its blocks freed).
            let mut small = vec![alloc_bin(bin)];
            let a = page_of_ptr(small[0]);
            let first_b = loop {
                let p = alloc_bin(bin);
                if page_of_ptr(p) != a {
                    break p;
                }
                small.push(p);
            };
            for p in small.drain(..4) {
                free(p);
            }
            assert!(is_scant(a));
            small.push(first_b);
            // No new segment to be had, and every free slice of ours taken by pages of
            // 1 KiB blocks, filled; meanwhile no segment is given up (as if other threads
            // had been returning our blocks).
            NO_NEW_SEGMENT.with(|c| c.set(true));
            let mut filler = vec![];
            loop {
                (*heap()).returned = 1;
                let p = alloc_bin(bin_of(1024));
                if p.is_null() {
                    break;
                }
                filler.push(p);
            }
            assert_eq!((*heap()).pages[bin], page_of_ptr(first_b));
            (*heap()).returned = 0;
            // B runs out; the refill finds only A, nearly full, gives the (nearly full)
            // segments up and finds no new page.
            let mut got = vec![];
            loop {
                let p = alloc_bin(bin);
                if p.is_null() {
                    break;
                }
                let owner = (*segment_of(p)).owner.load(Ordering::Relaxed);
                assert_eq!(
                    owner,
                    heap() as usize,
                    "a block handed out from a segment the heap gave up"
                );
                got.push(p);
                assert!(got.len() <= 4096);
            }
            NO_NEW_SEGMENT.with(|c| c.set(false));
            for p in small.into_iter().chain(got).chain(filler) {
                free(p);
            }
        }
    })
    .join()
    .unwrap();
}

/// Fills a page of `bin` (page A) and opens the next (page B) with one block: the blocks of
/// A, A, B's first block and B. On this thread's heap.
///
/// # Safety
/// The calling thread's heap, used only by this thread.
unsafe fn fill_a_page_and_open_the_next(
    bin: usize,
) -> (Vec<*mut u8>, *mut Page, *mut u8, *mut Page) {
    // SAFETY: called on live blocks of ours only: their descriptors are valid.
    let page = |p: *mut u8| unsafe { page_of(segment_of(p), p) };
    // SAFETY: the calling thread's heap (contract).
    let mut a = vec![unsafe { alloc_bin(bin) }];
    let pa = page(a[0]);
    let first_b = loop {
        // SAFETY: as above.
        let p = unsafe { alloc_bin(bin) };
        assert!(!p.is_null());
        if page(p) != pa {
            break p;
        }
        a.push(p);
    };
    (a, pa, first_b, page(first_b))
}

/// A page that empties while its bin's current page still has room stays behind the
/// current page as the bin's spare (`free_local_page_event`), and serves when the
/// current page runs out: no new page is carved. Before, it went back to its segment at
/// once and the bin took a new page.
#[test]
fn an_emptied_page_waits_behind_the_current_one_and_serves_next() {
    std::thread::spawn(|| {
        let bin = bin_of(256);
        // SAFETY: called on live blocks of ours only: their descriptors are valid.
        let page = |p: *mut u8| unsafe { page_of(segment_of(p), p) };
        // SAFETY: this thread's heap, used only by this thread; each block freed once.
        unsafe {
            // No clock-driven collection during the test (it would retire the spare).
            (*heap()).next_purge_ms = u64::MAX;
            let (a, pa, first_b, pb) = fill_a_page_and_open_the_next(bin);
            for p in a {
                free(p);
            }
            let h = heap();
            assert_eq!((*h).pages[bin], pb);
            assert_eq!(
                (*pb).next,
                pa,
                "the emptied page is not behind the current one"
            );
            assert_eq!((*pa).used, 0);
            // B runs out: A serves next.
            let before = NEW_PAGES.with(|c| c.get());
            let mut b = vec![first_b];
            let next = loop {
                let p = alloc_bin(bin);
                if page(p) != pb {
                    break p;
                }
                b.push(p);
            };
            assert_eq!(page(next), pa, "the spare did not serve");
            assert_eq!(NEW_PAGES.with(|c| c.get()), before);
            free(next);
            for p in b {
                free(p);
            }
        }
    })
    .join()
    .unwrap();
}

/// A page kept as its bin's spare (emptied behind the current page) that a trim finds
/// sparse (all its OS pages free: all parked) serves next all the same, every block once:
/// its parked blocks come back when the walk reaches it, and no new page is carved.
#[test]
fn a_trimmed_spare_serves_every_block_once() {
    std::thread::spawn(|| {
        let bin = bin_of(256);
        // SAFETY: called on live blocks of ours only: their descriptors are valid.
        let page = |p: *mut u8| unsafe { page_of(segment_of(p), p) };
        // SAFETY: this thread's heap, used only by this thread; each block freed once.
        unsafe {
            // No clock-driven collection during the test (it would retire the spare).
            (*heap()).next_purge_ms = u64::MAX;
            let (a, pa, first_b, pb) = fill_a_page_and_open_the_next(bin);
            let blocks_a = a.len();
            for p in a {
                free(p);
            }
            assert_eq!((*pb).next, pa, "the emptied page is not the spare");
            // A trim's two looks (the first notes the count).
            assert!(!(*pa).worth_trimming());
            assert!((*pa).worth_trimming());
            assert!((*pa).trim() > 0, "nothing parked");
            let before = NEW_PAGES.with(|c| c.get());
            let mut live = std::collections::HashSet::new();
            assert!(live.insert(first_b as usize));
            let mut from_a = 0;
            while from_a < blocks_a {
                let p = alloc_bin(bin);
                assert!(live.insert(p as usize), "a block handed out twice");
                if page(p) == pa {
                    from_a += 1;
                } else {
                    assert_eq!(page(p), pb, "a new page before the spare was used up");
                }
            }
            assert_eq!(NEW_PAGES.with(|c| c.get()), before);
            assert_eq!((*pa).used as usize, blocks_a);
            for p in live {
                free(p as *mut u8);
            }
        }
    })
    .join()
    .unwrap();
}

/// FIFO rings of a few sizes whose live counts change as they go (pages emptied behind the
/// current one, nearly full pages passed over, spares), with trims of sparse pages and
/// collections in between: every block handed out is distinct from the live ones and keeps
/// what was written into it until freed.
#[test]
fn rings_with_trims_and_collections_keep_every_block_once() {
    std::thread::spawn(|| {
        let sizes = [64usize, 80, 256, 1024];
        let mut rings: Vec<std::collections::VecDeque<(usize, u8)>> = vec![Default::default(); 4];
        let mut live = std::collections::HashSet::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        // SAFETY: this thread's heap, used only by this thread; each block freed once, and
        // only the bytes of a block handed out are written or read.
        unsafe {
            for step in 0..200_000u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = (x % 4) as usize;
                let size = sizes[k];
                // Each ring's target length drifts: 0..4096 blocks.
                let target = ((step / 1000 + k as u32 * 7) % 9) as usize * 512;
                if rings[k].len() < target || (x >> 8) % 3 == 0 && rings[k].len() < 4096 {
                    let p = alloc_bin(bin_of(size));
                    assert!(!p.is_null());
                    assert!(live.insert(p as usize), "a block handed out twice");
                    let tag = (x >> 16) as u8;
                    // Half the block: the secure build's canary lies at its end.
                    ptr::write_bytes(p, tag, size / 2);
                    rings[k].push_back((p as usize, tag));
                } else if let Some((p, tag)) = rings[k].pop_front() {
                    let b = p as *mut u8;
                    assert!(
                        (0..size / 2).all(|i| *b.add(i) == tag),
                        "a live block overwritten"
                    );
                    live.remove(&p);
                    free(b);
                }
                if step % 5000 == 0 {
                    super::trim::trim_sparse(HeapRef::new(heap()));
                }
                if step % 20000 == 0 {
                    heap_collect(HeapRef::new(heap()), os::now_ms(), 100);
                }
            }
            for (k, ring) in rings.into_iter().enumerate() {
                for (p, tag) in ring {
                    let b = p as *mut u8;
                    assert!((0..sizes[k] / 2).all(|i| *b.add(i) == tag));
                    free(b);
                }
            }
        }
    })
    .join()
    .unwrap();
}
