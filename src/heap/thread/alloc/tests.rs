//! The refill's tests: which pages a bin's refill takes, passes over or keeps, counted in
//! slow paths and new pages.

use super::super::free::free;
use super::super::large::alloc_huge;
use super::super::tick::heap_collect;
use super::super::tls::heap;
use super::super::tls::own;
use super::refill_from_local;
use super::{alloc_bin, is_scant, FEW_BLOCKS, LONG_CALLS, NEW_PAGES, SLOW_CALLS};
use crate::heap::segment::{page_of, segment_of, Page, PAGE_IN_FULL};
use crate::heap::size_class::bin_of;
use crate::sync::Ordering;
use crate::sys::os;

/// A page emptied while its bin's current page is nearly full becomes the current page,
/// its blocks kept for the next allocations (which would otherwise take and carve a new
/// page); the nearly full page stays in the queue. Before, the emptied page went back to
/// its segment at once and the next allocations came from the nearly full page.
#[test]
fn a_page_emptied_while_the_current_one_is_nearly_full_becomes_current() {
    std::thread::spawn(|| {
        let bin = bin_of(64);
        // SAFETY: this thread's heap, used only by this thread; each block freed once;
        // the pointers looked up are live blocks of ours.
        unsafe {
            let page_of_ptr = |p: *mut u8| page_of(segment_of(p), p);
            let mut of_a = vec![alloc_bin(bin)];
            let a = page_of_ptr(of_a[0]);
            let mut of_b = vec![];
            // A filled; B, the next page, filled but for a few blocks.
            loop {
                let p = alloc_bin(bin);
                if page_of_ptr(p) == a {
                    of_a.push(p);
                    continue;
                }
                of_b.push(p);
                if is_scant(page_of_ptr(p)) {
                    break;
                }
            }
            let b = page_of_ptr(of_b[0]);
            assert_eq!((*heap()).pages[bin], b);
            assert!(
                (*a).flags & PAGE_IN_FULL != 0,
                "the exhausted page was not parked"
            );
            assert_eq!((*a).used as usize, of_a.len());
            for &p in &of_a {
                free(p);
            }
            assert_eq!(
                (*heap()).pages[bin],
                a,
                "the emptied page did not become current"
            );
            assert_eq!((*a).used, 0);
            assert_eq!(
                (*a).capacity,
                (*a).reserved,
                "the emptied page was given back"
            );
            assert_eq!((*a).next, b, "the nearly full page left the queue");
            // The next allocations reuse its blocks.
            of_a.clear();
            for _ in 0..2 {
                let p = alloc_bin(bin);
                assert_eq!(page_of_ptr(p), a);
                of_a.push(p);
            }
            for p in of_a.into_iter().chain(of_b) {
                free(p);
            }
        }
    })
    .join()
    .unwrap();
}

/// A ring of 64-byte blocks that fills its pages exactly, freed oldest first and
/// allocated again into the freed slot (the `pairs` benchmark at a fixed size), refills
/// in bulk: at most one slow path per 32 allocations. Without the pass over nearly full
/// pages, the only free block is the one just freed, and every allocation takes the slow
/// path (20 000 slow paths for 20 000 pairs).
#[test]
fn a_ring_that_fills_its_pages_exactly_refills_in_bulk() {
    std::thread::spawn(|| {
        let bin = bin_of(64);
        let mut ring = Vec::with_capacity(8192);
        // SAFETY: this thread's heap, used only by this thread; each block freed once.
        unsafe {
            // Until the bin's current page is full: every page of the ring is then full.
            loop {
                let p = alloc_bin(bin);
                assert!(!p.is_null());
                ring.push(p);
                let page = (*heap()).pages[bin];
                if ring.len() >= 2048 && (*page).used == (*page).reserved {
                    break;
                }
            }
            let n = ring.len();
            let pairs = 20_000;
            let before = SLOW_CALLS.with(|c| c.get());
            for k in 0..pairs {
                let slot = &mut ring[k % n];
                free(*slot);
                *slot = alloc_bin(bin);
                assert!(!slot.is_null());
                slot.write(k as u8);
            }
            let slow = SLOW_CALLS.with(|c| c.get()) - before;
            assert!(
                slow <= pairs as u64 / 32,
                "{slow} slow paths for {pairs} pairs on a ring of {n} blocks"
            );
            for p in ring {
                free(p);
            }
        }
    })
    .join()
    .unwrap();
}

/// A FIFO ring whose live blocks do not fill their pages exactly (4096 blocks of 80
/// bytes: five 819-block pages and a block) reuses its pages: its oldest page empties
/// while the current one still has room, and stays as the bin's spare
/// (`free::free_local_page_event`) until the current page runs out. Without the spare,
/// each page's worth of allocations retired the emptied page and carved a new one (61
/// new pages for 50 000 pairs).
#[test]
fn a_fifo_ring_that_does_not_fill_its_pages_reuses_them() {
    std::thread::spawn(|| {
        const RING: usize = 8192;
        let bin = bin_of(80);
        assert_eq!(crate::heap::size_class::bin_size(bin), 80);
        // SAFETY: this thread's heap, used only by this thread; each block freed once.
        unsafe {
            let mut ring: Vec<*mut u8> = (0..RING).map(|_| alloc_bin(bin)).collect();
            let pairs = 50_000;
            let before = NEW_PAGES.with(|c| c.get());
            for k in 0..pairs {
                let slot = &mut ring[k % RING];
                free(*slot);
                *slot = alloc_bin(bin);
                assert!(!slot.is_null());
                slot.write(k as u8);
            }
            let new = NEW_PAGES.with(|c| c.get()) - before;
            assert!(new <= 4, "{new} new pages for {pairs} pairs");
            for p in ring {
                free(p);
            }
        }
    })
    .join()
    .unwrap();
}

/// Fills two pages of `bin` (a class of few blocks a page) until neither has anything left
/// to hand out: `f` first, then `g`, which is the bin's current page with `f` right behind it.
/// Returns `(f, g, every block allocated)`.
///
/// # Safety
/// Called on a thread of its own (the bin's queue holds no other page), whose blocks the
/// caller frees.
unsafe fn two_exhausted_pages(bin: usize) -> (*mut Page, *mut Page, Vec<*mut u8>) {
    // SAFETY: this thread's heap; the pointers looked up are live blocks of ours.
    unsafe {
        let page_of_ptr = |p: *mut u8| page_of(segment_of(p), p);
        let exhausted = |pg: *mut Page| {
            (*pg).free.is_null() && (*pg).local_free.is_null() && (*pg).capacity == (*pg).reserved
        };
        let mut live = vec![alloc_bin(bin)];
        let f = page_of_ptr(live[0]);
        assert!((*f).reserved < FEW_BLOCKS);
        while !exhausted(f) {
            live.push(alloc_bin(bin));
        }
        live.push(alloc_bin(bin));
        let g = page_of_ptr(*live.last().unwrap());
        assert_ne!(g, f);
        while !exhausted(g) {
            let p = alloc_bin(bin);
            assert_eq!(page_of_ptr(p), g, "g did not carve its own blocks first");
            live.push(p);
        }
        assert_eq!(own().pages[bin], g);
        assert_eq!((*g).next, f);
        (f, g, live)
    }
}

/// A block freed into the page behind the bin's exhausted current page is handed out from
/// there without the long way (no tick, drain or queue walk): that page becomes current,
/// the exhausted one goes to the back of the queue. `linear` in preload/bench frees at
/// random across many pages of few blocks, and took the long way on 44 % of its
/// allocations. A current page that still has blocks to carve carves them first
/// (`exhausted_pages_are_parked_unless_remote_fed_or_of_few_blocks` met a page taken
/// before its own carve when this refill did not check).
#[test]
fn a_free_into_the_page_behind_the_current_one_refills_without_the_long_way() {
    std::thread::spawn(|| {
        let bin = bin_of(2000);
        // SAFETY: this thread's heap, used only by this thread; each block freed once;
        // the pointers looked up are live blocks of ours.
        unsafe {
            let page_of_ptr = |p: *mut u8| page_of(segment_of(p), p);
            // Two exhausted pages: g current, f behind it.
            let (f, g, mut live) = two_exhausted_pages(bin);
            // A block of f freed: f's local list.
            let i = live.iter().position(|&p| page_of_ptr(p) == f).unwrap();
            let freed = live.swap_remove(i);
            free(freed);
            // Not on a tick the common refills leave to the long way.
            let mut h = own();
            h.tick = 0;
            let long = LONG_CALLS.with(|c| c.get());
            let p = alloc_bin(bin);
            assert_eq!(p, freed, "the freed block was not handed out");
            assert_eq!(
                LONG_CALLS.with(|c| c.get()),
                long,
                "the refill took the long way"
            );
            assert_eq!(own().pages[bin], f);
            assert_eq!((*f).next, g, "the exhausted page did not go to the back");
            assert_eq!((*g).next, core::ptr::null_mut());
            live.push(p);
            for p in live {
                free(p);
            }
        }
    })
    .join()
    .unwrap();
}

/// A block of the page behind the exhausted current page freed twice in a row by its owner
/// while other blocks of that page are live (both frees on the fast path, so its
/// `local_free` links the block to itself) is not handed out twice by the refill from that
/// page: the refill leaves such a list to the long way, whose collection reports it
/// (docs/security.md: "when the list is collected on the allocator's long way"). The
/// `secure` build reports the second free itself (its freed marker). Seen failing when the
/// refill made the list the free list unchecked: the same block came back twice.
#[test]
fn a_block_freed_twice_in_a_row_behind_the_current_page_is_not_handed_out_twice() {
    std::thread::spawn(|| {
        let _ignoring = crate::heap::error::ignore_errors_for_test();
        let bin = bin_of(2000);
        // SAFETY: this thread's heap, used only by this thread; every block freed once but
        // the one freed twice on purpose (the report returns: errors ignored).
        unsafe {
            let page_of_ptr = |p: *mut u8| page_of(segment_of(p), p);
            let (f, _g, mut live) = two_exhausted_pages(bin);
            // A block of f freed twice in a row, other blocks of f live.
            let i = live.iter().position(|&p| page_of_ptr(p) == f).unwrap();
            let twice = live.swap_remove(i);
            assert!((*f).used >= 2);
            free(twice);
            free(twice);
            let mut h = own();
            h.tick = 0;
            let a = alloc_bin(bin);
            let b = alloc_bin(bin);
            assert_ne!(a, b, "one block handed out twice");
            assert!(!live.contains(&a) && !live.contains(&b));
            // The default build: the long way's collection of f reported the list and
            // dropped it (f leaks: its count marked wrong).
            #[cfg(not(feature = "secure"))]
            assert!(
                (*f).used >= crate::heap::page::LEAKED,
                "the list was not reported"
            );
            live.push(a);
            live.push(b);
            for p in live {
                free(p);
            }
        }
    })
    .join()
    .unwrap();
}

/// A collection that leaves the heap `waiting` (more than `tick::WAIT_BYTES` resident and
/// waiting to be purged: here an 8 MiB block in the huge cache) sends the next refill the
/// long way, which reads the clock and bounds what it hands out, as `note_idle` does: the
/// common refills skip the ticks set to 15 mod 16. Before, a collection on a tick at 0 mod
/// 16 let up to 15 short refills (each up to a page of blocks, unbounded) run first (found
/// by the review of the refill from the page behind the current one).
#[test]
fn a_collection_that_leaves_memory_waiting_sends_the_next_refill_the_long_way() {
    std::thread::spawn(|| {
        let bin = bin_of(64);
        // SAFETY: this thread's heap, used only by this thread; each block freed once.
        unsafe {
            let a = alloc_bin(bin);
            let b = alloc_bin(bin);
            let big = alloc_huge(own(), 8 << 20, 16, false);
            assert!(!big.is_null());
            free(big);
            assert!(
                own().huge_cache.held() >= 8 << 20,
                "the block was not cached"
            );
            let mut h = own();
            h.tick = 0;
            h.waiting.store(false, Ordering::Relaxed);
            // A long delay: nothing is purged, so the 8 MiB stay waiting.
            heap_collect(own(), os::now_ms(), 10_000);
            assert!(own().waiting.load(Ordering::Relaxed));
            free(a);
            let page = own().pages[bin];
            assert_eq!(page, page_of(segment_of(b), b));
            assert!(!(*page).local_free.is_null());
            assert!(
                !refill_from_local(own(), page),
                "a short refill while memory waits to be purged"
            );
            free(b);
        }
    })
    .join()
    .unwrap();
}

/// A thread's first blocks of a medium bin (over 8 KiB) go on pages of
/// `SPARSE_MEDIUM_SLICES` slices, not 512 KiB ones; once it has handed out
/// `SPARSE_MEDIUM_BLOCKS` of them, its new pages take `MEDIUM_PAGE_SLICES` (review rev53:
/// `xthread`'s threads held a 512 KiB page for each medium bin they put one to six blocks in).
#[test]
fn a_sparse_medium_bin_takes_small_pages_until_it_is_busy() {
    std::thread::spawn(|| {
        let bin = bin_of(40 << 10);
        // SAFETY: this thread's heap, used only by this thread; each block freed once; the
        // pointers looked up are live blocks of ours.
        unsafe {
            let slices = |p: *mut u8| (*page_of(segment_of(p), p)).slice_count as usize;
            let mut live = Vec::new();
            let first = alloc_bin(bin);
            assert_eq!(slices(first), 2, "the first page of a medium bin");
            live.push(first);
            for _ in 0..24 {
                live.push(alloc_bin(bin));
            }
            let last = *live.last().unwrap();
            assert_eq!(
                slices(last),
                crate::heap::size_class::MEDIUM_PAGE_SLICES,
                "a busy medium bin's page"
            );
            for p in live {
                free(p);
            }
        }
    })
    .join()
    .unwrap();
}

/// Review rev55: a sparse page of the largest medium class (64 KiB blocks on 2 slices, never
/// slice 0, so no segment header in it) holds two blocks in both builds (the `secure`
/// build's canary trailer lies inside the block, its keys in the page descriptor): the
/// largest request of the class, through the global allocator, filled whole and freed (the
/// `secure` build checks each canary on the free), through the paths the global allocator
/// takes in each build.
#[test]
fn a_sparse_page_of_the_largest_medium_class_holds_two_blocks() {
    #[cfg(feature = "secure")]
    use super::super::canary::alloc_small;
    #[cfg(not(feature = "secure"))]
    use super::alloc_small;
    use crate::heap::size_class::MEDIUM_MAX;
    std::thread::spawn(|| {
        let size = MEDIUM_MAX - 64;
        // SAFETY: each block allocated with `size` bytes (align 8), written within them,
        // freed once; the pages looked up are those of live blocks of ours.
        unsafe {
            let blocks: Vec<*mut u8> = (0..3).map(|_| alloc_small(size, 8)).collect();
            let page = |p: *mut u8| page_of(segment_of(p), p);
            let first = page(blocks[0]);
            assert_eq!((*first).slice_count, 2, "a sparse medium page");
            assert_eq!((*first).block_size as usize, MEDIUM_MAX);
            assert_eq!((*first).reserved, 2);
            assert_eq!(page(blocks[1]), first, "the page's second block");
            assert_ne!(page(blocks[2]), first, "a third block on the same page");
            for (i, &p) in blocks.iter().enumerate() {
                assert!(!p.is_null());
                core::ptr::write_bytes(p, 0xA0 + i as u8, size);
            }
            for (i, &p) in blocks.iter().enumerate() {
                assert!((0..size).all(|k| *p.add(k) == 0xA0 + i as u8));
                free(p);
            }
        }
    })
    .join()
    .unwrap();
}
