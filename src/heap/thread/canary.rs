//! The `secure` build's allocation paths that know the request's size, and the usable size
//! and in-place resize that read it back: each asks its bin for the request plus the
//! canary's trailer and writes the canary for the request (`heap::secure::canary`,
//! docs/security.md). Compiled only with the `secure` feature; `global.rs` calls these
//! instead of `alloc`'s plain paths.
//!
//! Owns: [`alloc_small`], [`alloc_small_zeroed`] (the global allocator's inline paths),
//! [`alloc_bin`], [`alloc_direct`], [`alloc_direct_pop`] (C `malloc`'s), [`usable_size`] and
//! [`resize`]. May touch: the `Heap` fields (`super`), `alloc` (the pop, the slow paths,
//! `alloc_generic`, which writes the canary itself), `tls`, `large` (the plain usable size
//! and resize), `heap::{secure, segment, size_class, error}`.

use super::alloc::{alloc_bin_slow, alloc_direct_slow, alloc_generic, pop_block_keyed, zero_block};
use super::tls::{heap_or_unset, own};
use super::Heap;
use crate::heap::secure::canary::{
    arm_found, arm_popped, fit, fit_slow, intact, report_bad, requested, TRAILER,
};
use crate::heap::segment::{page_of, segment_of, Page, PageKind, SegmentKind};
use crate::heap::size_class::bin_of;
use crate::sync::{AtomicU64, Ordering};

/// `GlobalAlloc::alloc` for `align <= 16` (`alloc::alloc_small` with room for the canary's
/// trailer past `size` bytes).
///
/// # Safety
/// `align <= 16` is a power of two; `size <= isize::MAX`.
#[inline(always)]
pub unsafe fn alloc_small(size: usize, align: usize) -> *mut u8 {
    let h = heap_or_unset();
    let s = (size + TRAILER).max(align);
    // SAFETY: as in alloc::alloc_small: h is this thread's heap or the unset heap (whose
    // pages have no free block); s <= the gate <= MEDIUM_MAX, so the bin is < NBINS; a block
    // popped from a page of the bin is `bin_size >= s` bytes.
    unsafe {
        if s <= (*h).fast_gate.load(Ordering::Relaxed) {
            let bin = bin_of(s);
            let page = *(*h).pages.get_unchecked(bin);
            let block = pop_armed(page, (*h).stats.allocs.get_unchecked(bin), size);
            if !block.is_null() {
                return block;
            }
            return bin_slow(h, bin, size);
        }
        alloc_generic(size, align, false)
    }
}

/// A block of `page`'s free list with its canary written for a request of `n` bytes,
/// counted on `counter`; null if the list is empty (the caller's slow path).
///
/// # Safety
/// As `alloc::pop_block_keyed`'s; the page's blocks hold at least `n + TRAILER` bytes.
#[inline(always)]
unsafe fn pop_armed(page: *mut Page, counter: &AtomicU64, n: usize) -> *mut u8 {
    // SAFETY: forwarded contract: a popped block is ours, big enough for n + TRAILER.
    unsafe {
        let (block, key) = pop_block_keyed(page, counter);
        if !block.is_null() {
            arm_popped(page, block as *mut u8, key, n);
        }
        block as *mut u8
    }
}

/// The slow path of a bin allocation for `n` bytes (`alloc::alloc_bin_slow`), then its
/// canary.
///
/// # Safety
/// As `alloc_bin_slow`'s; `n + TRAILER <= bin_size(bin)`.
#[cold]
#[inline(never)]
unsafe extern "C" fn bin_slow(h: *mut Heap, bin: usize, n: usize) -> *mut u8 {
    // The slow path leaves the page it took the block from (if it is ours) at the front of
    // the bin's queue; a thread's first allocation ran on the unset heap, whose pages hold none.
    // SAFETY: forwarded contract; the block (a bin's, or from a dead heap's node heap, which
    // wrote a canary for a request at least this big) holds n + TRAILER bytes.
    unsafe {
        let p = alloc_bin_slow(h, bin, false);
        fit_slow(*(*h).pages.get_unchecked(bin), p, n)
    }
}

/// `GlobalAlloc::alloc_zeroed` for `align <= 16`: as [`alloc_small`], the first `size`
/// bytes zero.
///
/// # Safety
/// As [`alloc_small`].
#[inline]
pub unsafe fn alloc_small_zeroed(size: usize, align: usize) -> *mut u8 {
    let h = own();
    let s = (size + TRAILER).max(align);
    // SAFETY: as in alloc_small; size <= the block's size.
    unsafe {
        if s <= h.fast_gate.load(Ordering::Relaxed) {
            let bin = bin_of(s);
            let page = *h.pages.get_unchecked(bin);
            let (block, key) = pop_block_keyed(page, h.stats.allocs.get_unchecked(bin));
            if !block.is_null() {
                zero_block(page, block, size);
                arm_popped(page, block as *mut u8, key, size);
                return block as *mut u8;
            }
            // The slow path clears the whole block, trailer too: written again after (the
            // full write, not fit_slow's).
            return arm_found(alloc_bin_slow(h.as_ptr(), bin, true), size);
        }
        alloc_generic(size, align, true)
    }
}

/// C `malloc`'s bin path for `n` bytes from `bin` (`alloc::alloc_bin`).
///
/// # Safety
/// `bin < NBINS` and `n + TRAILER <= bin_size(bin)`.
#[inline(always)]
pub unsafe fn alloc_bin(bin: usize, n: usize) -> *mut u8 {
    let h = heap_or_unset();
    // SAFETY: as in alloc::alloc_bin_in (the unset heap's pages have no free block).
    unsafe {
        let page = *(*h).pages.get_unchecked(bin);
        let block = pop_armed(page, (*h).stats.allocs.get_unchecked(bin), n);
        if !block.is_null() {
            return block;
        }
        bin_slow(h, bin, n)
    }
}

/// C `malloc`'s direct path for `n` bytes (`alloc::alloc_direct`): `w` is
/// `(n + TRAILER + 15) / 16`.
///
/// # Safety
/// `w <= DIRECT_MAX / 16`, as above.
#[inline(always)]
pub unsafe fn alloc_direct(w: usize, n: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe {
        let block = alloc_direct_pop(w, n);
        if !block.is_null() {
            return block;
        }
        direct_slow(w, n)
    }
}

/// [`alloc_direct`]'s pop alone (`alloc::alloc_direct_pop`): null where it would take its
/// slow path.
///
/// # Safety
/// As [`alloc_direct`].
#[inline(always)]
pub unsafe fn alloc_direct_pop(w: usize, n: usize) -> *mut u8 {
    let h = heap_or_unset();
    // SAFETY: as in alloc::alloc_direct_pop; the block is 16 w >= n + TRAILER bytes.
    unsafe {
        let page = *(*h).direct.get_unchecked(w);
        pop_armed(page, (*h).stats.direct_allocs.get_unchecked(w), n)
    }
}

/// [`alloc_direct`]'s slow path, then the canary.
///
/// # Safety
/// As [`alloc_direct`].
#[cold]
#[inline(never)]
unsafe extern "C" fn direct_slow(w: usize, n: usize) -> *mut u8 {
    // SAFETY: forwarded contract; as in bin_slow (the direct slot of w is its bin's current
    // page).
    unsafe {
        let p = alloc_direct_slow(w);
        fit_slow(*(*heap_or_unset()).direct.get_unchecked(w), p, n)
    }
}

/// The usable size of the block at `p`: for a bin block, the size its request asked for
/// (what its canary says: the bytes past it up to the trailer are checked at the free, so
/// they are not the program's to use); else `large::usable_size`.
///
/// # Safety
/// `p` is a live block of ours.
pub unsafe fn usable_size(p: *const u8) -> usize {
    // A large or huge block not in use (a wrong `realloc` of a freed one, which C's
    // `realloc` asks the size of first): none of it is the program's, and its descriptor's
    // size is not its (`resize` reports it).
    // SAFETY: forwarded contract (a pointer into one of our segments).
    if unsafe { live_elsewhere(p) }.is_err() {
        return 0;
    }
    let seg = segment_of(p);
    // SAFETY: p is live, so its segment and (in a normal segment) page descriptors are valid.
    unsafe {
        if (*seg).kind == SegmentKind::Normal {
            let page = page_of(seg, p);
            if (*page).kind == PageKind::Bin as u8 {
                // A canary overwritten already: the most the block could hold (the free
                // reports it).
                return requested(page, p)
                    .unwrap_or_else(|| super::large::usable_size(p).saturating_sub(TRAILER));
            }
        }
        super::large::usable_size(p)
    }
}

/// What [`resize`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// The block now holds the new size (its canary rewritten for it).
    InPlace,
    /// The caller moves the block (allocates, copies, frees the old one).
    Move,
    /// The block's canary was overwritten (reported, and the report returned): the caller
    /// moves it but leaves the old block alone (it leaks).
    Leak,
    /// Not a block in use: a large block already freed (its page gone), a huge one already
    /// freed (its mapping cached, holding no object) or a pointer inside one (reported, and
    /// the report returned): the caller returns null and touches nothing.
    Invalid,
}

/// `realloc`'s in-place step for the block at `p` (`stay`: the block may keep its place;
/// else it moves, once checked): a bin block with its freed marker set that is free
/// (`free::marked_block_is_free`, as its free would decide) is reported as a double free
/// (a `realloc` of a freed block must neither hand it back nor move it: the move's new
/// block could be that very block, taken off its free list, and the old one's free then
/// frees the new one); a bin block's canary is checked next (an overflow found here would be erased by
/// the rewrite), then the block keeps its place if it holds `new_size` and its trailer and
/// is not shrunk by more than half (as `large::resize_in_place` decides for bin blocks),
/// with its canary written for `new_size`. A large or huge block not in use (freed, or a
/// pointer inside one: [`live_elsewhere`]) is reported as its free would report it. Other
/// blocks: `thread::resize_in_place`.
///
/// # Safety
/// `p` is a block of ours, or a pointer into one of our segments (a wrong `realloc`: a
/// large or huge block freed, or not its start; a bin block freed).
pub unsafe fn resize(p: *mut u8, new_size: usize, stay: bool) -> Resize {
    let seg = segment_of(p);
    // SAFETY: p lies in a segment of ours (contract): its header and descriptors are
    // mapped; no page is held across the drain (looked up again below).
    unsafe {
        if (*seg).kind == SegmentKind::Normal {
            let page = page_of(seg, p);
            // A large block, or a bin block marked freed: another thread's free of it may
            // wait on the owner's delayed stack (a full or large page's), where neither the
            // page's state nor its lists show it. The owner takes those frees in first.
            let kind = (*page).kind;
            if kind == PageKind::Large as u8
                || kind == PageKind::Bin as u8
                    && crate::heap::secure::has_marker(p, crate::heap::secure::block_key(page, p))
            {
                super::free::drain_if_owner(seg);
                // The drain's tick may have given the segment back (p was free, then).
                if !crate::heap::segment::contains(p) {
                    crate::heap::error::report(crate::heap::error::HeapError::NotInUse, p);
                    return Resize::Invalid;
                }
            }
        }
    }
    // SAFETY: forwarded contract.
    if let Err(e) = unsafe { live_elsewhere(p) } {
        crate::heap::error::report(e, p);
        return Resize::Invalid;
    }
    // SAFETY: p is in a segment of ours (contract): its descriptors are valid, and, a bin
    // block's, the block is the caller's to write (or, freed, found by its marker first).
    unsafe {
        if (*seg).kind == SegmentKind::Normal {
            let page = page_of(seg, p);
            if (*page).kind == PageKind::Bin as u8 {
                let key = crate::heap::secure::block_key(page, p);
                if crate::heap::secure::has_marker(p, key)
                    && super::free::marked_block_is_free(seg, page, p)
                {
                    crate::heap::error::report(crate::heap::error::HeapError::DoubleFree, p);
                    return Resize::Invalid;
                }
                if !intact(page, p, key) {
                    report_bad(page, p);
                    return Resize::Leak;
                }
                let cap = (*page).keys.size();
                let room = new_size.saturating_add(TRAILER);
                if stay && room <= cap && (room * 2 >= cap || cap <= 32) {
                    fit(page, p, new_size);
                    return Resize::InPlace;
                }
                return Resize::Move;
            }
        }
        if stay && super::resize_in_place(p, new_size) {
            Resize::InPlace
        } else {
            Resize::Move
        }
    }
}

/// Whether `p` may be a block in use, as far as a large or huge block can tell: Err with
/// what the free of `p` would report when `p` lies in a huge mapping holding no object (a
/// freed huge block, cached) or not at its object's start, or in a normal segment's slice
/// that is not a page in use (a freed large block) or inside a large block, or is a large
/// block another thread has freed (waiting on its page's remote list). Bin pages are
/// Ok here (their blocks' freed markers tell, in `resize`).
///
/// # Safety
/// `p` points into one of our segments (its header and descriptors mapped).
unsafe fn live_elsewhere(p: *const u8) -> Result<(), crate::heap::error::HeapError> {
    use crate::heap::error::HeapError;
    let seg = segment_of(p);
    // SAFETY: the segment's header and (normal) descriptors are mapped (contract).
    unsafe {
        if (*seg).kind == SegmentKind::Huge {
            if (*seg).huge_offset == 0 {
                return Err(HeapError::HugeFreed);
            }
            if !core::ptr::eq(p, crate::heap::huge::object(seg)) {
                return Err(HeapError::HugeInterior);
            }
            return Ok(());
        }
        let page = page_of(seg, p);
        if (*page).kind == PageKind::Bin as u8 {
            return Ok(());
        }
        crate::heap::page::check_block(page, p)?;
        // A large page holds one block: one waiting on its remote list was freed by another
        // thread, and the owner's collection will give the page back.
        if (*page).thread_free.has_blocks() {
            return Err(HeapError::DoubleFree);
        }
        Ok(())
    }
}
