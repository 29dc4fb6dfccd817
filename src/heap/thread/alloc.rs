//! Allocation: the fast paths, the refill behind them, and the dispatch of every request that
//! is not a plain bin one.
//!
//! Owns: the pop every allocation goes through (`pop_block`), `alloc_small` (the global
//! allocator's inline path and its size gate), `alloc_bin`, `alloc_direct`
//! (C `malloc`'s path through the direct table), their cold paths and the bin refill (local
//! frees, the queue walk, which passes nearly full pages over, a new page), and `alloc_generic` (aligned, large, huge, routed by
//! the tiers). May touch: the `Heap` fields (`super`), `bins`, `counters`, `tls`, `slices`
//! (a new page's slices), `large`, `node`, `registry` (init), `tick`, `purger` (its gate),
//! `free` (the drain),
//! `heap::{page, segment, size_class, remote}`, `sys::os`, `init` (the purge delay a medium
//! bin's first page waits out before its uncarved memory goes back), `heap::route` (the routing
//! call in `alloc_generic_in`), and `scoped` (a placement scope's diversion, first in
//! `alloc_generic_in`).

use super::bins::{direct_bin, page_to_full};
use super::counters::{bump, collect_remote};
use super::free::drain_delayed;
use super::large::{alloc_huge, alloc_large, make_budget_room};
use super::node::{dead_alloc, node_alloc};
use super::purger;
use super::refilled;
use super::registry::heap_init;
use super::scoped::{alloc_in_scope, Scope};
use super::slices::take_slices;
use super::tick::{heap_tick, note_idle};
use super::tls::{heap, heap_or_unset, is_unset, own};
use super::{empty_page, Heap, HeapRef, ACTIVE};
use crate::heap::page::links_to_itself;
use crate::heap::remote::Block;
use crate::heap::segment::{Page, Segment, LARGE_MAX, PAGE_IN_FULL, SLICE_SIZE};
use crate::heap::size_class::{
    bin_for_aligned, bin_of, page_slices, MEDIUM_MAX, MEDIUM_PAGE_SLICES,
};
use crate::init;
use crate::sync::{AtomicU64, Ordering};
use crate::sys::os;
use core::ptr;

/// `GlobalAlloc::alloc` for `align <= 16`: a block of `size.max(align)` bytes popped from its
/// bin's current page (the fast path) when the size is within the heap's inline gate, else
/// [`alloc_generic`]. The gate is `route::FAST_MAX` (lowered by a size threshold policy) read
/// through the heap, or 0 while a placement scope is active (see `scoped`): the one load
/// that tells both apart (one load more than reading the static). Null only when memory is
/// exhausted.
///
/// # Safety
/// `align <= 16` is a power of two.
#[inline(always)]
pub unsafe fn alloc_small(size: usize, align: usize) -> *mut u8 {
    let h = heap_or_unset();
    let s = size.max(align);
    // SAFETY: h is this thread's heap or the unset heap (readable; the unset heap's pages have
    // no free block, so alloc_bin_slow, which looks the real heap up, runs); s <= the gate <=
    // FAST_MAX <= MEDIUM_MAX, so bin_of gives a bin < NBINS; align: a power of two (contract).
    unsafe {
        if s <= (*h).fast_gate.load(Ordering::Relaxed) {
            alloc_bin_in(h, bin_of(s))
        } else {
            alloc_generic(size, align, false)
        }
    }
}

/// `GlobalAlloc::alloc_zeroed` for `align <= 16`: as [`alloc_small`], the first `size` bytes
/// zero.
///
/// # Safety
/// `align <= 16` is a power of two.
#[inline]
pub unsafe fn alloc_small_zeroed(size: usize, align: usize) -> *mut u8 {
    let h = own();
    let s = size.max(align);
    // SAFETY: as in alloc_small; size <= s <= the bin's block size.
    unsafe {
        if s <= h.fast_gate.load(Ordering::Relaxed) {
            alloc_bin_zeroed_in(h, bin_of(s), size)
        } else {
            alloc_generic(size, align, true)
        }
    }
}

/// Pops a block of `bin` (the fast path). Null only when memory is exhausted.
///
/// # Safety
/// `bin < NBINS`.
#[inline(always)]
pub unsafe fn alloc_bin(bin: usize) -> *mut u8 {
    let h = heap_or_unset();
    // SAFETY: forwarded contract; h is this thread's heap, or the unset heap, whose pages
    // have no free block, so that alloc_bin_slow (which looks the real heap up) runs.
    unsafe { alloc_bin_in(h, bin) }
}

/// C `malloc`'s fast path for `16 * w - 15 ..= 16 * w` bytes (0 ..= 16 for `w` 0), through
/// `Heap::direct`: a 16-byte aligned block. Null only when memory is exhausted.
///
/// # Safety
/// `w <= DIRECT_MAX / 16`.
#[inline(always)]
pub unsafe fn alloc_direct(w: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe {
        let block = alloc_direct_pop(w);
        if !block.is_null() {
            return block;
        }
        alloc_direct_slow(w)
    }
}

/// [`alloc_direct`]'s pop alone: null when the page has no free block (or the thread has no
/// heap yet), where `alloc_direct` would take its slow path. For callers that do something
/// of their own on failure and want a fast path with no stack frame (C++'s `new`).
///
/// # Safety
/// `w <= DIRECT_MAX / 16`.
#[inline(always)]
pub unsafe fn alloc_direct_pop(w: usize) -> *mut u8 {
    let h = heap_or_unset();
    // SAFETY: w < DIRECT_SLOTS (contract); h is this thread's heap or the unset one; a page in
    // `direct` with a free block is one of ours (EMPTY_PAGE's free is null, so it is never
    // written, and the unset heap's entries are all EMPTY_PAGE).
    unsafe {
        let page = *(*h).direct.get_unchecked(w);
        pop_block(page, (*h).stats.direct_allocs.get_unchecked(w)) as *mut u8
    }
}

/// Fetches the line of `next`, the block the next pop of a page hands out, into the cache:
/// that pop reads its link (and the program then writes the block), and its line was last
/// written by another thread's free, or left the cache since this thread's (`larson`: 83 % of
/// `malloc`'s samples stalled on that read). Fetched now, while the program uses the block
/// just popped. A prefetch never faults, so `next` may be null or anything.
#[inline(always)]
fn prefetch_next(next: *mut Block) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program sees and never faults,
    // whatever the address (SSE, which it needs, is in every x86-64 target).
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(next as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = next;
}

/// Takes the first block of `page`'s free list and counts it on `counter`; null if the list
/// is empty. The one pop every allocation path goes through.
///
/// # Safety
/// `page` is a page of the calling thread's heap (or EMPTY_PAGE, whose free list is always
/// empty, so it is never written) and `counter` one of that heap's counters.
#[inline(always)]
pub(super) unsafe fn pop_block(page: *mut Page, counter: &AtomicU64) -> *mut Block {
    // SAFETY: the page is ours (contract): its free list and counts are ours to change, and a
    // block on the free list is free, so its link is ours to read.
    unsafe {
        let block = (*page).free;
        if !block.is_null() {
            #[cfg(not(feature = "secure"))]
            let next = Block::next(block);
            // The secure build: the secret read once, for the link and the block's key.
            #[cfg(feature = "secure")]
            let secret = (*page).keys.secret();
            #[cfg(feature = "secure")]
            let next = Block::next_keyed(block, secret);
            // The secure build: a link that is not a block of the page is not followed (a
            // tail call, so that the paths the pop is inlined into need no stack frame).
            #[cfg(feature = "secure")]
            if !(*page).link_ok(next) {
                return crate::heap::secure::pop_bad_link(page, block, counter);
            }
            (*page).free = next;
            prefetch_next(next);
            (*page).used += 1;
            bump(counter, 1);
            // The secure build: no longer free (its freed marker cleared), and its canary
            // written (heap::secure::handed_out).
            #[cfg(feature = "secure")]
            crate::heap::secure::handed_out(page, block, secret);
        }
        block
    }
}

/// The secure build's [`pop_block`] for the paths that know the request's size
/// (`thread::canary`): the block's freed marker is cleared, but its canary is left for the
/// caller to write for the request (`canary::arm_popped`) in one store, not written for
/// the largest request first and then patched; returns the block's key with it (the key
/// decode computed). Null and an unspecified key if the list is empty.
///
/// # Safety
/// As [`pop_block`]'s; the caller writes the canary of the block it gets.
#[cfg(feature = "secure")]
#[inline(always)]
pub(super) unsafe fn pop_block_keyed(page: *mut Page, counter: &AtomicU64) -> (*mut Block, usize) {
    // SAFETY: as in pop_block.
    unsafe {
        let block = (*page).free;
        let secret = (*page).keys.secret();
        let key = crate::heap::remote::link_key::key_with(block, secret);
        if !block.is_null() {
            let next = Block::next_keyed(block, secret);
            if !(*page).link_ok(next) {
                // Armed for the largest request there; the caller writes it again.
                return (crate::heap::secure::pop_bad_link(page, block, counter), key);
            }
            (*page).free = next;
            prefetch_next(next);
            (*page).used += 1;
            bump(counter, 1);
            crate::heap::secure::clear_freed(block);
        }
        (block, key)
    }
}

/// Clears the first `size` bytes of `block`, just popped from `page`: only its link if the
/// page's free blocks are known to be zero.
///
/// # Safety
/// `block` is a block of `page` just handed out, at least `size` bytes long.
#[inline(always)]
pub(super) unsafe fn zero_block(page: *const Page, block: *mut Block, size: usize) {
    // SAFETY: the block is ours to write (contract).
    unsafe {
        if (*page).free_is_zero {
            // The link word itself: in the secure build `set_next(block, null)` would store
            // the block's key there (`remote::link_key::with_key`).
            *(block as *mut usize) = 0;
        } else {
            ptr::write_bytes(block as *mut u8, 0, size);
        }
    }
}

/// [`alloc_direct`] when the page has no free block (or the thread has no heap yet).
///
/// # Safety
/// `w <= DIRECT_MAX / 16`.
#[cold]
#[inline(never)]
pub(super) unsafe extern "C" fn alloc_direct_slow(w: usize) -> *mut u8 {
    let bin = direct_bin(w);
    let h = heap_or_unset();
    // SAFETY: 16 <= max(16 w, 16) <= DIRECT_MAX, so bin < NBINS; h is this thread's heap,
    // whose current page of `bin` (the one alloc_direct looked at) has no free block.
    unsafe {
        if is_unset(h) {
            return alloc_bin_first(bin);
        }
        alloc_bin_slow(h, bin, false)
    }
}

/// [`alloc_bin`] on a thread's first use of its heap slot.
///
/// # Safety
/// `bin < NBINS`.
#[cold]
#[inline(never)]
pub(super) unsafe extern "C" fn alloc_bin_first(bin: usize) -> *mut u8 {
    // SAFETY: forwarded contract; heap() is this thread's heap.
    unsafe { alloc_bin_in(heap(), bin) }
}

/// [`alloc_bin`] on heap `h`.
///
/// # Safety
/// `bin < NBINS`; `h` is this thread's heap, the unset heap, or a node heap whose lock we
/// hold (a [`HeapRef`]'s, or the unset placeholder: only read here).
#[inline(always)]
pub(super) unsafe fn alloc_bin_in(h: *mut Heap, bin: usize) -> *mut u8 {
    // SAFETY: h is usable by us (contract); pages[bin] is a valid page (maybe EMPTY_PAGE, whose
    // free is null, so we never write it).
    unsafe {
        let page = *(*h).pages.get_unchecked(bin);
        let block = pop_block(page, (*h).stats.allocs.get_unchecked(bin));
        if !block.is_null() {
            return block as *mut u8;
        }
        alloc_bin_slow(h, bin, false)
    }
}

/// [`alloc_bin_zeroed`] on heap `h`.
///
/// # Safety
/// `bin < NBINS` and `size <= bin_size(bin)`.
#[inline]
pub(super) unsafe fn alloc_bin_zeroed_in(h: HeapRef, bin: usize, size: usize) -> *mut u8 {
    // SAFETY: as in alloc_bin_in; the block is ours to write once popped.
    unsafe {
        let page = *h.pages.get_unchecked(bin);
        let block = pop_block(page, h.stats.allocs.get_unchecked(bin));
        if !block.is_null() {
            zero_block(page, block, size);
            return block as *mut u8;
        }
        // The slow path clears what needs clearing when asked to.
        alloc_bin_slow(h.as_ptr(), bin, true)
    }
}

/// The fast path found the bin's current page empty. The most common refill — blocks this
/// thread freed back to that page — is done here, in a function small enough to need no stack
/// frame; everything else tail-calls [`alloc_bin_slow_long`].
///
/// # Safety
/// `h` is this thread's heap, the unset heap, or a node heap whose lock we hold; `bin < NBINS`.
#[cold]
#[inline(never)]
pub(super) unsafe extern "C" fn alloc_bin_slow(h: *mut Heap, bin: usize, zero: bool) -> *mut u8 {
    #[cfg(test)]
    SLOW_CALLS.with(|c| c.set(c.get() + 1));
    if !zero && !is_unset(h) {
        // SAFETY: h is a real heap usable by us and bin < NBINS (contract); its current page
        // of `bin` is ours (or EMPTY_PAGE, whose local_free is null).
        unsafe {
            let h = HeapRef::new(h);
            let page = *h.pages.get_unchecked(bin);
            if refill_from_local(h, page) {
                return pop_fresh(h, page, bin, false);
            }
            if refill_from_next(h, bin, page) {
                return pop_fresh(h, *h.pages.get_unchecked(bin), bin, false);
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { alloc_bin_slow_long(h, bin, zero) }
}

/// [`alloc_bin_slow`] the long way: refill, collect, new page.
///
/// # Safety
/// As [`alloc_bin_slow`].
#[cold]
#[inline(never)]
pub(super) unsafe extern "C" fn alloc_bin_slow_long(
    h: *mut Heap,
    bin: usize,
    zero: bool,
) -> *mut u8 {
    #[cfg(test)]
    LONG_CALLS.with(|c| c.set(c.get() + 1));
    // The fast path ran on the unset heap: this thread's first allocation of this kind.
    let h = if is_unset(h) {
        own()
    } else {
        // SAFETY: not the unset heap, so this thread's or a locked node heap (contract).
        unsafe { HeapRef::new(h) }
    };
    let _gate = purger::enter(h.as_ptr());
    // SAFETY: forwarded contract.
    let p = unsafe { alloc_bin_refill(h, bin, zero) };
    if p.is_null() {
        os::set_enomem();
    }
    p
}

/// The slow path of a bin allocation: refills the bin's current page or finds another.
///
/// # Safety
/// `bin < NBINS`.
#[inline(always)]
pub(super) unsafe fn alloc_bin_refill(mut h: HeapRef, bin: usize, zero: bool) -> *mut u8 {
    // SAFETY: bin < NBINS (contract); the pages in h's queues are h's, so ours.
    unsafe {
        // The common refill (alloc_bin_slow tries it first, but not for zeroed blocks nor on
        // a thread's first allocation).
        let page = h.pages[bin];
        if refill_from_local(h, page) {
            return pop_fresh(h, page, bin, zero);
        }
        if h.state != ACTIVE && !heap_init(h) {
            let size = crate::heap::size_class::bin_size(bin);
            let align = (1usize << size.trailing_zeros()).min(os::OS_PAGE);
            return dead_alloc(h, size, align, zero);
        }
        heap_tick(h);
        drain_delayed(h);
        let mut page = h.pages[bin];
        // Full pages that other threads' frees refill (`remote_fed`) stay in the queue, up to
        // this many, before they are parked as full: a page that will get a block back soon
        // does not flip between full and not full (each flip is two slow paths and two atomic
        // state changes). A page its owner's frees refill is parked at once: left in the
        // queue, each walk would take the one or two blocks freed into it since the last,
        // and refills that small are a slow path every few allocations.
        let mut retain = FULL_PAGE_RETAIN;
        // The slices of the full pages kept so far (see `keeps_fit`).
        let mut kept_slices = 0usize;
        // The first page the walk sent to the back: meeting it again, the walk has seen them
        // all.
        let mut wrapped: *mut Page = ptr::null_mut();
        // A nearly full page (see `is_scant`) the walk found no better page than: it serves
        // if no new page can be had.
        let mut scant: *mut Page = ptr::null_mut();
        while !page.is_null() && page != empty_page() && page != wrapped {
            let next = (*page).next;
            collect_remote(h, page);
            if (*page).has_free() || (*page).extend() {
                if is_scant(page) {
                    let other = pass_scant(h, bin, page);
                    if other.is_null() {
                        scant = page;
                        break;
                    }
                    page = other;
                }
                if h.pages[bin] != page {
                    h.queue_remove(bin, page);
                    h.queue_push_front(bin, page);
                }
                if h.waiting.load(Ordering::Relaxed) {
                    bound_free(page);
                }
                return pop_fresh(h, page, bin, zero);
            }
            if retain > 0
                && ((*page).remote_fed || (*page).reserved < FEW_BLOCKS)
                && keeps_fit(kept_slices, (*page).slice_count)
            {
                retain -= 1;
                kept_slices += (*page).slice_count as usize;
                // To the back of the queue: the next walks look first at the pages that
                // have waited longest for frees, not at this one again (`linear` in
                // preload/bench: each walk met the same two empty pages first).
                if !next.is_null() {
                    h.queue_remove(bin, page);
                    h.queue_push_back(bin, page);
                    if wrapped.is_null() {
                        wrapped = page;
                    }
                }
                page = next;
                continue;
            }
            page_to_full(h, bin, page);
            if (*page).flags & PAGE_IN_FULL == 0 {
                // A remote free slipped in while it went full: it is back at the front.
                return pop_fresh(h, page, bin, zero);
            }
            page = next;
        }
        // A full page other threads' frees gave room (`refilled`), before a new page.
        let page = refilled::take(h, bin);
        if !page.is_null() && ((*page).has_free() || (*page).extend()) {
            if h.waiting.load(Ordering::Relaxed) {
                bound_free(page);
            }
            return pop_fresh(h, page, bin, zero);
        }
        let page = new_bin_page(h, bin);
        if page.is_null() {
            // No memory for a new page: the nearly full one serves, if it is still in our
            // queue: taking slices gives up our nearly full segments first (`abandon_full`),
            // its own among them perhaps, out of our queue and onto an abandoned list, where
            // another thread may adopt it.
            if !scant.is_null() && in_queue(h, bin, scant) {
                h.queue_remove(bin, scant);
                h.queue_push_front(bin, scant);
                return pop_fresh(h, scant, bin, zero);
            }
            return ptr::null_mut();
        }
        h.queue_push_front(bin, page);
        (*page).extend();
        pop_fresh(h, page, bin, zero)
    }
}

/// Whether `page` is in `bin`'s queue of `h` (a walk: only for a refill that found no new
/// page).
///
/// # Safety
/// `bin < NBINS`.
#[cold]
unsafe fn in_queue(h: HeapRef, bin: usize, page: *mut Page) -> bool {
    let mut p = h.pages[bin];
    // SAFETY: the pages in h's queue of `bin` are h's, so ours (contract).
    unsafe {
        while !p.is_null() && p != empty_page() {
            if p == page {
                return true;
            }
            p = (*p).next;
        }
    }
    false
}

/// [`alloc_bin_refill`]'s walk found `scant` (see [`is_scant`]): it goes to the back of the
/// queue to gather frees, and the next [`SCANT_PASS`] pages of the queue are looked at for
/// one with more room. Returns that page (in the queue, with a free block), or null: a new
/// page should serve (or, failing that, `scant` itself). Out of line: the walks that find a
/// page with room (nearly all) carry none of it.
///
/// # Safety
/// `bin < NBINS`; `scant` is a page of `h` in `bin`'s queue with a free block.
#[cold]
#[inline(never)]
unsafe fn pass_scant(mut h: HeapRef, bin: usize, scant: *mut Page) -> *mut Page {
    // SAFETY: the pages in h's queue of `bin` are h's, so ours (contract).
    unsafe {
        let mut page = (*scant).next;
        if !page.is_null() {
            h.queue_remove(bin, scant);
            h.queue_push_back(bin, scant);
        }
        let mut looked = 0;
        while looked < SCANT_PASS && !page.is_null() && page != scant {
            let next = (*page).next;
            collect_remote(h, page);
            if (*page).has_free() || (*page).extend() {
                if !is_scant(page) {
                    return page;
                }
                // To the back as well: the next walks reach the pages behind it.
                if !next.is_null() {
                    h.queue_remove(bin, page);
                    h.queue_push_back(bin, page);
                }
            }
            // One with no block is left where it is: the next walk parks it as full.
            looked += 1;
            page = next;
        }
        ptr::null_mut()
    }
}

/// The common refill: `page`, the current page of its bin, has blocks its owner freed; they
/// become its free list. Not on every 16th tick, which goes the long way instead (collect
/// remote frees, drain delayed frees, purge): the heartbeat that keeps that work going stays
/// deterministic. While the heap is `waiting` (memory waits to be purged) its tick is kept at
/// 15 mod 16 (see `heap_tick`), so every refill goes the long way, which reads the clock and
/// bounds what it hands out (see [`WAIT_REFILL`]), at no cost here. Returns whether `page`
/// now has a free block.
///
/// # Safety
/// `page` is `h`'s current page of some bin (or EMPTY_PAGE).
#[inline(always)]
pub(super) unsafe fn refill_from_local(mut h: HeapRef, page: *mut Page) -> bool {
    // SAFETY: the page is ours (EMPTY_PAGE's local_free is null, so it is never written).
    unsafe {
        if (*page).local_free.is_null() || h.tick & 15 == 15 {
            return false;
        }
        h.tick = h.tick.wrapping_add(1);
        // Not `local_to_free`: its check of the list's first block cost 12 instructions per
        // pair (+7 %) on `pairs` with 64-byte blocks, which refills a block or two at a time
        // (docs/security.md); the collection on the long way checks.
        (*page).move_local_to_free();
        true
    }
}

/// The next common refill, when the current page `page` of `bin` has nothing its owner freed
/// and nothing left to carve: the page behind it in the queue has free blocks, or blocks its owner freed (which become
/// its free list); it becomes the current page, and `page` goes to the back of the queue,
/// where the next queue walk collects its remote frees or parks it as full. A workload that
/// frees at random across many pages of a class (`linear` in preload/bench: blocks of up to
/// 16 KiB replaced at random, a slow path on nearly every other allocation) finds the block
/// its last free gave back without the long way's tick, drain and walk (266 instructions a
/// time there). Not on the ticks `refill_from_local` leaves to the long way, nor while the
/// heap is `waiting` (the same test). Returns whether the bin's current page (now the one
/// that was behind `page`) has a free block.
///
/// # Safety
/// `page` is `h`'s current page of `bin` (or EMPTY_PAGE, whose `next` is null); `bin < NBINS`.
#[inline(always)]
pub(super) unsafe fn refill_from_next(mut h: HeapRef, bin: usize, page: *mut Page) -> bool {
    // SAFETY: the pages of h's queue of `bin` are ours (contract), and the blocks on their
    // `local_free` are free: their links are ours to read.
    unsafe {
        let next = (*page).next;
        // A current page with blocks left to carve (or parked blocks to bring back) carves
        // them on the long way first.
        if next.is_null()
            || h.tick & 15 == 15
            || (*page).capacity != (*page).reserved
            || (*page).parked != 0
        {
            return false;
        }
        if (*next).free.is_null() {
            let list = (*next).local_free;
            // A list whose first block links to itself (freed twice in a row, other blocks
            // of the page live) is left to the long way, whose collection of the page
            // reports it (`Page::local_to_free`): taken as it is, that block would be handed
            // out twice. `refill_from_local` leaves the check out for its cost on `pairs`;
            // here it is a compare of the link the pop reads next anyway.
            if list.is_null() || links_to_itself(list) {
                return false;
            }
            (*next).move_local_to_free();
        }
        h.tick = h.tick.wrapping_add(1);
        h.queue_remove(bin, page);
        h.queue_push_back(bin, page);
        true
    }
}

/// The most blocks a refill hands to the fast path while the heap is `waiting`: the next
/// slow path, and with it a look at the clock (and a collection when one is due), comes at
/// the latest this many allocations later, whatever the traffic. A loop that allocates and
/// frees one size over and over (which never empties its page, nor fills it) would
/// otherwise run a whole page of blocks, a thousand 64-byte ones, between two slow paths.
/// The price, only while memory waits to be purged: one more slow path per this many
/// allocations of a bin, and the walk of this many links.
pub(super) const WAIT_REFILL: usize = 64;

/// Cuts `page`'s free list after [`WAIT_REFILL`] blocks; the rest becomes its `local_free`
/// (which a refill has just emptied; if it has not, the list is left whole).
///
/// # Safety
/// `page` is a page of the calling thread's heap.
#[cold]
unsafe fn bound_free(page: *mut Page) {
    // SAFETY: the page is ours, and the blocks on its free list are free: their links are
    // ours to read and write.
    unsafe {
        if !(*page).local_free.is_null() {
            return;
        }
        let mut b = (*page).free;
        for _ in 1..WAIT_REFILL {
            if b.is_null() {
                return;
            }
            #[cfg(feature = "secure")]
            if !(*page).link_ok(Block::next(b)) {
                // Left for the pop that reaches it, which reports it.
                return;
            }
            b = Block::next(b);
        }
        if b.is_null() {
            return;
        }
        let rest = Block::next(b);
        if !rest.is_null() {
            Block::set_next(b, ptr::null_mut());
            (*page).local_free = rest;
        }
    }
}

/// Whether `page` has room for at most 1/128 of its blocks (free, freed and not yet gathered,
/// or never carved): a refill from it would serve that few allocations before the next slow
/// path. A workload whose live blocks fill its pages exactly (a ring of 4096 64-byte blocks:
/// four 1024-block pages) otherwise finds one free block at a time, the one just freed, and
/// takes a slow path on every allocation. Such a page is passed over for one with more room,
/// or a new page when the queue has none: the bin then has a page of room, and pages wait to
/// gather frees, which bounds what waits on passed pages to 1/128 of their blocks. Always
/// false for pages of fewer than 128 blocks (each block is a worthwhile refill there), and
/// for a page whose last refill came from other threads' frees (`remote_fed`): those are
/// reused at once, so that what other threads give back is not left waiting while this one
/// takes new memory (issue 16 item 2).
///
/// # Safety
/// `page` is a page of the calling thread's heap (or EMPTY_PAGE).
#[inline(always)]
pub(super) unsafe fn is_scant(page: *const Page) -> bool {
    // SAFETY: the page is ours (contract); its counts are ours to read. A count off by a
    // wrong free (`mark_leaked`: used above reserved) wraps to a large room: not scant.
    unsafe {
        (*page).reserved.wrapping_sub((*page).used) <= (*page).reserved >> 7 && !(*page).remote_fed
    }
}

/// The most nearly full pages one queue walk passes over (see [`is_scant`]) before it takes
/// one: the walk stays short when many pages of a bin are nearly full.
const SCANT_PASS: usize = 4;

#[cfg(test)]
std::thread_local! {
    /// The calling thread's count of [`alloc_bin_slow`] calls (tests only: the refills a
    /// pattern of allocations and frees costs).
    static SLOW_CALLS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    /// The calling thread's count of [`new_bin_page`] calls (tests only).
    pub(super) static NEW_PAGES: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    /// The calling thread's count of [`alloc_bin_slow_long`] calls (tests only).
    static LONG_CALLS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// Full, remote-fed pages a queue walk leaves in place before parking further ones as full.
pub(super) const FULL_PAGE_RETAIN: usize = 2;
/// Pages of fewer blocks than this are left in the queue like remote-fed ones: each block is
/// a large share of the page, so one freed block is a worthwhile refill, and parking and
/// unparking such pages on every block would cost more than the walk. The 2- and 4-slice
/// pages of 2-8 KiB blocks (32 to 51 blocks) are among them, within [`KEEP_SLICES`].
pub(super) const FEW_BLOCKS: u32 = 64;

/// The most slices of full 2- and 4-slice pages a queue walk keeps (two 2-slice pages, or
/// one 4-slice page): the passes over a quiet heap leave a page in a queue alone, so what
/// other threads freed into a kept page stays resident while its owner is quiet (review
/// rev49: two kept 4-slice pages per quiet producer, `tests/idle.rs` in the `secure` build,
/// 11.5 MiB against its 11.1 MiB bound). 1-slice pages keep up to [`FULL_PAGE_RETAIN`];
/// 8-slice medium pages likewise, as before the multi-slice small pages; a sparse medium
/// bin's 2-slice pages ([`SPARSE_MEDIUM_SLICES`]) count as 2-slice pages.
pub(super) const KEEP_SLICES: usize = 4;

/// Whether a full page of `slices` slices may be kept in its queue after `kept` slices of
/// full pages were (see [`KEEP_SLICES`]).
#[inline]
fn keeps_fit(kept: usize, slices: u8) -> bool {
    !matches!(slices, 2 | 4) || kept + slices as usize <= KEEP_SLICES
}

/// Pops a block of `page`, which has one, counting it on `bin`; clears it if `zero`.
///
/// # Safety
/// `page` is a page of `h` in `bin`'s queue (so `bin < NBINS`) with a free block.
#[inline]
pub(super) unsafe fn pop_fresh(h: HeapRef, page: *mut Page, bin: usize, zero: bool) -> *mut u8 {
    // SAFETY: page is ours, in bin's queue (so bin < NBINS), and has a free block.
    unsafe {
        let block = pop_block(page, h.stats.allocs.get_unchecked(bin));
        if zero {
            zero_block(page, block, (*page).block_size as usize);
        }
        block as *mut u8
    }
}

/// Slices of a medium bin's page (blocks over 8 KiB) while the heap has handed out fewer than
/// [`SPARSE_MEDIUM_BLOCKS`] of the bin's blocks: a thread with a few blocks in each of its
/// medium bins holds 128 KiB runs for them, not 512 KiB ones (review rev53: `xthread`'s
/// threads, one to six blocks in each of up to six medium bins, held 35 to 50 slices each,
/// and `xthread 4 30 1000` peaked at 19.2 MiB against 15.5 with these pages, 11 runs).
pub(super) const SPARSE_MEDIUM_SLICES: usize = 2;
/// See [`SPARSE_MEDIUM_SLICES`]: past this many blocks a bin is busy, and its pages take
/// `MEDIUM_PAGE_SLICES` (fewer refills).
const SPARSE_MEDIUM_BLOCKS: u64 = 16;

/// A fresh page for `bin` from our segments, an adopted one, the pool, or the OS.
///
/// # Safety
/// `bin < NBINS`.
pub(super) unsafe fn new_bin_page(h: HeapRef, bin: usize) -> *mut Page {
    #[cfg(test)]
    NEW_PAGES.with(|c| c.set(c.get() + 1));
    let mut n = page_slices(bin);
    if n == MEDIUM_PAGE_SLICES {
        // SAFETY: bin < NBINS (contract); the counter is ours to read.
        let handed_out = unsafe { h.stats.allocs.get_unchecked(bin) }.load(Ordering::Relaxed);
        if handed_out < SPARSE_MEDIUM_BLOCKS {
            n = SPARSE_MEDIUM_SLICES;
        }
    }
    // SAFETY: an allocation's slow path: no walk over our blocks is in progress (a drain only
    // frees), and no page of our queues looked at before is used after this.
    let page = unsafe { take_slices(h, n, n == 1) };
    // SAFETY: the page take_slices hands out is a free run of one of our segments; bin <
    // NBINS (contract).
    unsafe {
        if page.is_null() {
            return ptr::null_mut();
        }
        let bytes = Segment::run_bytes((*page).slice_index(), n);
        if n > 1 && !(*page).fresh && h.pages[bin] == empty_page() {
            // The only page of a bin of multi-slice pages (blocks over 2 KiB), on resident
            // slices. Its blocks are carved one extension at a time, and a bin with a few
            // blocks live must not pin the whole run (128 to 512 KiB) for as long as the page
            // lives: what is still uncarved one to two
            // purge delays from now goes back to the OS then (`Segment::tend_tails`, from our
            // collections' walk over our segments, or another thread's pass if we have gone
            // quiet). Not now: a thread that carves the page
            // within the delay (a short-lived one that fills a few medium bins) would fault
            // every byte of it in again (`xthread` in preload/bench: 52 thousand faults
            // against 15 thousand). (A bin that already has pages is busy: its pages come and
            // go, and their memory is left as it is.)
            let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
            let tail = Segment::tail_len((*page).slice_index(), n);
            if delay == 0 {
                os::decommit((*page).start().add(SLICE_SIZE), tail);
            } else {
                Segment::book_tail(
                    (*page).segment(),
                    (*page).slice_index(),
                    os::now_ms(),
                    delay,
                );
                // Resident, and to be given back: counted like free slices (`take_slices` just
                // took the whole run off). So the heap is `holding`, and other threads' passes
                // give the tail back if we go quiet, even before our first collection (the
                // slices may come from a segment just adopted, counted nowhere yet).
                note_idle(h, tail);
            }
        }
        (*page).init_bin(bin, bytes);
        page
    }
}

/// Allocation of anything that is not a plain bin request: aligned, large, huge.
///
/// # Safety
/// None beyond GlobalAlloc's: `align` is a power of two.
#[cold]
pub unsafe extern "C" fn alloc_generic(size: usize, align: usize, zero: bool) -> *mut u8 {
    let h = own();
    let _gate = purger::enter(h.as_ptr());
    // SAFETY: forwarded contract.
    let p = unsafe { alloc_generic_in(h, size, align, zero) };
    if p.is_null() {
        os::set_enomem();
    }
    p
}

/// [`alloc_generic`] on heap `h` (this thread's, or a node heap whose lock we hold).
///
/// # Safety
/// `align` is a power of two.
pub(super) unsafe fn alloc_generic_in(
    h: HeapRef,
    size: usize,
    align: usize,
    zero: bool,
) -> *mut u8 {
    // SAFETY: each branch keeps to its callee's contract.
    unsafe {
        if (h.scope != Scope::None || h.scope_label != 0) && !h.shared {
            // The scope decides, before any tier policy; null: serve here as usual.
            let p = alloc_in_scope(h, size, align, zero);
            if !p.is_null() {
                return p;
            }
        }
        if crate::heap::route::ACTIVE.load(Ordering::Relaxed)
            && !h.shared
            && (h.state == ACTIVE || heap_init(h))
        {
            use crate::heap::route;
            let mut to = route::try_route(size, align, h.node);
            if to == Some(route::REFUSE) {
                // A threshold request the far tier's budget cannot take: first give back
                // what the budget counts there though nobody holds it, then ask once more
                // (counting a refusal if it still does not fit).
                make_budget_room(h, route::far_tier_nodes());
                to = route::route(size, align, h.node);
            }
            if let Some(node) = to {
                if node != h.node {
                    return node_alloc(node, size, align, zero);
                }
            }
        }
        // The secure build: a bin block holds the request and its canary's trailer, written
        // for the request's size (heap::secure::canary).
        #[cfg(feature = "secure")]
        let room = size.saturating_add(crate::heap::secure::canary::TRAILER);
        #[cfg(not(feature = "secure"))]
        let room = size;
        if align <= 16 && room <= MEDIUM_MAX {
            let bin = bin_of(room.max(align));
            let p = if zero {
                alloc_bin_zeroed_in(h, bin, size)
            } else {
                alloc_bin_in(h.as_ptr(), bin)
            };
            #[cfg(feature = "secure")]
            let p = crate::heap::secure::canary::arm_found(p, size);
            return p;
        }
        if align <= os::OS_PAGE && room <= MEDIUM_MAX {
            if let Some(bin) = bin_for_aligned(room, align) {
                let p = if zero {
                    alloc_bin_zeroed_in(h, bin, size)
                } else {
                    alloc_bin_in(h.as_ptr(), bin)
                };
                #[cfg(feature = "secure")]
                let p = crate::heap::secure::canary::arm_found(p, size);
                return p;
            }
        }
        if align <= SLICE_SIZE && size <= LARGE_MAX {
            return alloc_large(h, size, zero);
        }
        alloc_huge(h, size, align, zero)
    }
}

#[cfg(test)]
mod tests;
