//! Frees: the fast paths, the local and remote slow paths, and delayed frees.
//!
//! Owns: `free` and C's `free_c` (one segment-map load), the local free and what a page's
//! emptying or un-filling sets off, the remote free (a push on the page's list, or on the
//! owner's delayed stack when the page is full), adoption-on-free of abandoned segments (and
//! the count-down of their live hint), the dropped free into a fork child's quarantined
//! segment (`fork`), and the owner's drain of its delayed stack. May touch:
//! the `Heap` fields (`super`), `alloc` (whether a page is nearly full), `bins`, `counters`,
//! `tls`, `registry` (init on a first free), `slices` (adopt, reclaim, release), `large`
//! (huge frees), `tick`, `purger` (its gate), `heap::{segment, remote, delayed}`, `sys::os`,
//! `init` (the purge delay), `heap::{error, page, huge}` (checking a free and reporting a
//! wrong one: docs/security.md) and, in the `secure` build, `heap::secure` (the freed marker
//! and the canary).

use super::alloc::is_scant;
use super::bins::unfull;
use super::counters::{
    add, bump, counters, note_far_collected, note_far_large, CROSS_FREED_BYTES, CROSS_FREES,
    LARGE_BIN,
};
use super::large::free_huge;
use super::purger;
use super::refilled;
use super::registry::heap_init;
use super::slices::{adopt_segment, reclaim_emptied, release_segment_dirty, unlink_segment};
use super::tick::{heap_tick, note_idle};
use super::tls::{heap, heap_or_unset, is_unset};
use super::{Heap, HeapRef, ACTIVE, UNINIT};
use crate::heap::delayed;
use crate::heap::error::{report, HeapError};
use crate::heap::huge;
use crate::heap::page::{check_block, mark_leaked, PAGE_CHECK_FREE};
use crate::heap::remote::{Block, Pushed, NORMAL};
use crate::heap::segment::{
    map_tag, page_of, page_of_remote, segment_of, Page, PageKind, Segment, SegmentKind, ABANDONED,
    ABANDONED_FULL, FREES_QUARANTINED, MAX_NODES, PAGE_IN_FULL, QUARANTINED,
};
use crate::init;
use crate::sync::Ordering;
use crate::sys::os;
use core::ptr;

/// Frees `p` (any block tieralloc handed out, from any thread).
///
/// # Safety
/// `p` was returned by this allocator and is not freed yet.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    let seg = segment_of(p);
    // The unset heap owns no segment, so a thread's first free goes to free_other, which
    // looks the real heap up.
    let h = heap_or_unset();
    // SAFETY: p is a live block of ours, so its segment header is mapped and valid.
    unsafe {
        if (*seg).owner.load(Ordering::Relaxed) == h as usize {
            // We own seg, so h is not the unset heap (which owns nothing): this thread's.
            free_owned(HeapRef::new(h), seg, p);
        } else {
            free_other(h, seg, p);
        }
    }
}

/// C's `free`: like [`free`], but `p` may also be null or memory tieralloc never handed out
/// (ignored). One load of the segment map answers both "is it ours" and "do we own it".
///
/// # Safety
/// `p` is null, memory outside every tieralloc segment, or a live block of ours.
#[inline(always)]
pub unsafe fn free_c(p: *mut u8) {
    // SAFETY: forwarded contract; the empty hook compiles to nothing.
    unsafe { free_c_or(p, |_| ()) }
}

/// [`free_c`], handing a non-null pointer outside every tieralloc segment to `foreign`
/// instead of ignoring it (the secure drop-in's check of stack and static pointers,
/// docs/security.md). Only that path runs `foreign`: the others are [`free_c`]'s.
///
/// # Safety
/// As [`free_c`].
#[inline(always)]
pub unsafe fn free_c_or(p: *mut u8, foreign: impl FnOnce(*mut u8)) {
    let tag = map_tag(p);
    // The unset heap's tag is NO_TAG, which no entry holds: a thread's first free goes to
    // free_other like any other, which looks the real heap up.
    let h = heap_or_unset();
    // SAFETY: an entry equal to our tag means we own p's segment (segment::set_owner), so h
    // is this thread's heap (the unset one owns nothing), and a non-zero one that p lies in a
    // segment of ours, so (contract) p is a live block of it.
    unsafe {
        if tag == (*h).tag {
            free_owned(HeapRef::new(h), segment_of(p), p);
        } else if tag != 0 {
            free_other(h, segment_of(p), p);
        } else if !p.is_null() {
            foreign(p);
        }
    }
}

/// [`free`] of a block of a segment `h` owns.
///
/// The count of live blocks drops first and the block is pushed only on the fast path, so
/// that the slow path (`free_owned_slow`) can check the pointer before anything is written.
/// A page that had no live block left at its last free, or holds no block at all, carries
/// `PAGE_CHECK_FREE`: a free into it (which would take its count below zero: a double free,
/// or a stray pointer) takes the slow path through the same flags test as a full page. The
/// fast path costs no instruction more for it.
///
/// # Safety
/// `h` owns `seg`, and `p` is a live block of `seg` (or a wrong free, which the slow path
/// reports when it can tell: docs/security.md).
#[inline(always)]
pub(super) unsafe fn free_owned(h: HeapRef, seg: *mut Segment, p: *mut u8) {
    // SAFETY: the page is ours (contract), so its owner line is ours to write.
    unsafe {
        let page = page_of(seg, p);
        // The secure build: the block's key, for its marker, its canary and its link; a
        // block whose freed marker is set, or whose canary is not intact, or of a page that
        // is not a bin page (no canary), is looked at more closely before anything.
        #[cfg(feature = "secure")]
        let key = crate::heap::secure::block_key(page, p);
        #[cfg(feature = "secure")]
        // The canary first: its bounds test (the trailer inside the segment; a block is at
        // least 16 bytes) covers the marker's word too.
        if (*page).kind != PageKind::Bin as u8
            || !crate::heap::secure::canary::intact(page, p, key)
            || crate::heap::secure::has_marker_inside(p, key)
        {
            return free_suspect(h, page, p, key);
        }
        #[cfg(not(feature = "secure"))]
        let key = ();
        free_owned_in(h, page, p, key)
    }
}

/// The secure build's key of the block being freed (`heap::secure::block_key`); nothing in
/// the default build.
#[cfg(feature = "secure")]
type FreeKey = usize;
#[cfg(not(feature = "secure"))]
type FreeKey = ();

/// [`free_owned`] once its page is found (and, in the secure build, the freed marker
/// looked at).
///
/// # Safety
/// As [`free_owned`]; `page` is `p`'s page, `key` its key.
#[inline(always)]
unsafe fn free_owned_in(h: HeapRef, page: *mut Page, p: *mut u8, key: FreeKey) {
    // SAFETY: the page is ours (contract), so its owner line is ours to write.
    unsafe {
        // Counted before `used` drops, so that the branch tests the flags the decrement sets
        // (no compare, no flag kept in a register across the counter's add).
        bump(h.stats.frees.get_unchecked((*page).bin as usize), 1);
        // A flagged page (full, large, or with no live block) is not written before the slow
        // path holds the gate: a pass may be collecting a full page for a quiet owner
        // (`quiet`), and `used` is its to change meanwhile. The test comes first, at no cost:
        // the decrement's own flags still make the second branch.
        if (*page).flags != 0 {
            return free_owned_flagged(h, page, p);
        }
        let used = (*page).used.wrapping_sub(1);
        (*page).used = used;
        if used == 0 {
            return free_owned_slow(h, page, p);
        }
        let b = p as *mut Block;
        #[cfg(not(feature = "secure"))]
        {
            let () = key;
            Block::set_next(b, (*page).local_free);
        }
        #[cfg(feature = "secure")]
        {
            use crate::heap::secure::{fill_freed, set_marker};
            fill_freed(page, p, (*page).bin as usize);
            set_marker(p, key);
            Block::set_next_with_key(b, (*page).local_free, key);
        }
        (*page).local_free = b;
    }
}

/// [`free_owned`] when the count of a page with no flag set reaches 0 (or [`free_owned_flagged`]
/// once it has lowered a flagged page's): checks, under the gate, that `p` is a block of the
/// page in use and not free already, then pushes it and sets off the page event. A wrong free
/// is reported (`heap::error`); if the report returns, the page is left as it was before this
/// free (the block leaks).
///
/// # Safety
/// `page` is a page of `h` whose `used` [`free_owned`] has just lowered for `p`.
#[cold]
#[inline(never)]
pub(super) unsafe extern "C" fn free_owned_slow(h: HeapRef, page: *mut Page, p: *mut u8) {
    let _gate = purger::enter(h.as_ptr());
    // SAFETY: forwarded contract.
    unsafe { free_owned_checked(h, page, p) }
}

/// [`free_owned`] into a page with a flag set (full, large, or with no live block): its count
/// is lowered here, under the gate (see `quiet`: a pass may be collecting the page), then as
/// [`free_owned_slow`].
///
/// # Safety
/// As [`free_owned`]; `page` is `p`'s page, whose count is not yet lowered for `p`.
#[cold]
#[inline(never)]
unsafe extern "C" fn free_owned_flagged(h: HeapRef, page: *mut Page, p: *mut u8) {
    let _gate = purger::enter(h.as_ptr());
    // SAFETY: page is ours (contract); with the gate held no pass touches it.
    unsafe {
        (*page).used = (*page).used.wrapping_sub(1);
        free_owned_checked(h, page, p)
    }
}

/// [`free_owned_slow`]'s work, the gate held.
///
/// # Safety
/// As [`free_owned_slow`]; the caller holds `h`'s gate.
unsafe fn free_owned_checked(h: HeapRef, page: *mut Page, p: *mut u8) {
    // SAFETY: page is ours; nothing is written before the checks pass.
    unsafe {
        let err = match check_block(page, p) {
            Err(e) => Some((e, p as *const u8, false)),
            // A block of an OS page a trim gave back is free and on no list.
            Ok(()) if (*page).holds_parked(p) => {
                Some((HeapError::DoubleFree, p as *const u8, false))
            }
            Ok(()) => (*page).find_double_free(p as *mut Block),
        };
        if let Some((e, at, counts_wrong)) = err {
            report(e, at);
            // Only under TIERALLOC_ON_ERROR=warn|ignore: this free is not done.
            (*page).used = (*page).used.wrapping_add(1);
            if counts_wrong {
                // The page's count is off by an earlier wrong free: it must never look empty
                // again while a block of it may be live (it leaks instead).
                mark_leaked(&mut (*page).used);
            }
            if e == HeapError::FreeListLoop {
                // A list that would hand its looping block out again and again: dropped.
                (*page).free = ptr::null_mut();
                (*page).local_free = ptr::null_mut();
            }
            // Not a free after all: the count taken back (adding u64::MAX subtracts one).
            bump(
                &h.stats.frees[((*page).bin as usize).min(LARGE_BIN)],
                u64::MAX,
            );
            return;
        }
        #[cfg(feature = "secure")]
        crate::heap::secure::fill_freed(page, p, (*page).bin as usize);
        #[cfg(feature = "secure")]
        if (*page).kind == PageKind::Bin as u8 {
            crate::heap::secure::mark_freed(page, p);
        }
        let b = p as *mut Block;
        Block::set_next(b, (*page).local_free);
        (*page).local_free = b;
        // Checked; set again below if the page is left with no live block.
        (*page).flags &= !PAGE_CHECK_FREE;
        free_local_slow(h, page);
    }
}

/// The secure build: [`free_owned`] of a block whose freed marker is set. Reported as a
/// double free if the block is on one of its page's free lists (which the walk confirms, so
/// that a program's own data never causes a report); otherwise freed as usual. If the report
/// returns, the free is not done (nothing was changed).
///
/// # Safety
/// As [`free_owned_in`].
#[cfg(feature = "secure")]
#[cold]
#[inline(never)]
unsafe fn free_marked(h: HeapRef, page: *mut Page, p: *mut u8, key: FreeKey) {
    // SAFETY: the page is ours (contract); only a bin page's lists are walked.
    unsafe {
        if (*page).kind == PageKind::Bin as u8 && check_block(page, p).is_ok() {
            // The remote frees waiting on the page first, onto the lists the walk reads,
            // booked as every collection books them (a far page's blocks leave its count,
            // and their freers booked them off the far node already).
            super::counters::collect_remote(h, page);
            if crate::heap::secure::on_free_lists(page, p as *mut Block) {
                report(HeapError::DoubleFree, p);
                return;
            }
        }
        // Not free after all (the program's data matched the marker): a live block, whose
        // canary is checked as on the fast path.
        if (*page).kind == PageKind::Bin as u8 && !crate::heap::secure::canary::intact(page, p, key)
        {
            return crate::heap::secure::canary::report_bad(page, p);
        }
        free_owned_in(h, page, p, key)
    }
}

/// The secure build: whether `p`, a block of bin page `page` (of `seg`) whose freed marker
/// is set, is free: as a free would decide before it reports a double free. On the page's
/// owner thread the page's remote list is collected and its lists walked, under the gate
/// (`free_marked`'s confirmation: a program's own data never counts); from any other
/// thread, the marker alone (as `free_other` decides). For `realloc` (`canary::resize`),
/// which must not resize or move a free block.
///
/// # Safety
/// `page` is `p`'s page in `seg`, a live normal segment of ours.
#[cfg(feature = "secure")]
#[cold]
#[inline(never)]
pub(super) unsafe fn marked_block_is_free(seg: *mut Segment, page: *mut Page, p: *mut u8) -> bool {
    let h = heap_or_unset();
    // SAFETY: seg is live (contract); an owner equal to our heap makes the page ours, its
    // lists ours to collect and walk under our gate.
    unsafe {
        if is_unset(h) || (*seg).owner.load(Ordering::Acquire) != h as usize {
            return true;
        }
        let h = HeapRef::new(h);
        let _gate = purger::enter(h.as_ptr());
        if check_block(page, p).is_err() {
            return false;
        }
        super::counters::collect_remote(h, page);
        crate::heap::secure::on_free_lists(page, p as *mut Block)
    }
}

/// The secure build: before `realloc` (`canary::resize`) checks a large block of `seg`, or a
/// bin block whose freed marker is set, the owner takes in the frees other threads left on
/// its delayed stack (a large or full page's frees wait there, where neither the page's
/// state nor its lists show them): a block freed so is then on its page's list, or its page
/// given back, and the check sees it. Nothing for a segment we do not own.
///
/// # Safety
/// `seg` is a live normal segment of ours; the caller has looked up no page it uses after.
#[cfg(feature = "secure")]
#[cold]
#[inline(never)]
pub(super) unsafe fn drain_if_owner(seg: *mut Segment) {
    let h = heap_or_unset();
    // SAFETY: seg is live (contract); an active heap that owns it is this thread's.
    unsafe {
        if !is_unset(h)
            && (*h).state == ACTIVE
            && (*seg).owner.load(Ordering::Acquire) == h as usize
        {
            drain_delayed(HeapRef::new(h));
        }
    }
}

/// The secure build: [`free_owned`] of a block that did not pass its quick look: a block of a
/// page that is not a bin page (a large block, which has no canary, or a wrong pointer: the
/// usual path checks it), a block whose freed marker is set ([`free_marked`]), or a block
/// of a bin page whose canary is not intact (reported: a block of a parked OS page, freed
/// again; a pointer that is not a block start; or a write past the request,
/// `heap::secure::canary::report_bad`). If the report returns, nothing was changed (the
/// block leaks).
///
/// # Safety
/// As [`free_owned_in`].
#[cfg(feature = "secure")]
#[cold]
#[inline(never)]
unsafe fn free_suspect(h: HeapRef, page: *mut Page, p: *mut u8, key: FreeKey) {
    // Under the gate: the look at the page's lists (`free_marked`) collects it, and a full
    // page's lists may be a pass's meanwhile (`quiet`).
    let _gate = purger::enter(h.as_ptr());
    // SAFETY: forwarded contract; the page is ours.
    unsafe {
        if (*page).kind != PageKind::Bin as u8 {
            return free_owned_in(h, page, p, key);
        }
        if crate::heap::secure::has_marker(p, key) {
            return free_marked(h, page, p, key);
        }
        // A block of an OS page a trim gave back (free, its marker and trailer zero now): a
        // double free, not an overflow (the owner's own fields, read on its thread).
        if check_block(page, p).is_ok() && (*page).holds_parked(p) {
            return report(HeapError::DoubleFree, p);
        }
        crate::heap::secure::canary::report_bad(page, p);
    }
}

/// [`free`] on a thread's first use of its heap slot (a thread whose first call frees).
///
/// # Safety
/// As [`free`].
#[cold]
#[inline(never)]
pub(super) unsafe extern "C" fn free_first(p: *mut u8) {
    let _ = heap();
    // SAFETY: forwarded contract; the slot is set now, so free takes its normal path.
    unsafe { free(p) }
}

/// Frees a block of one of our own pages outside the fast path (delayed frees, adoption).
/// `count`: whether this free is counted here (false when the remote thread counted it).
/// A page with no live block left (a block freed twice) is reported, and the block left
/// alone if the report returns.
///
/// # Safety
/// `page` is a page of `h` in use and `b` a live block of it.
pub(super) unsafe fn free_local(h: HeapRef, page: *mut Page, b: *mut Block, count: bool) {
    // SAFETY: page is ours and b is a live block of it.
    unsafe {
        if !(*page).push_local_free(b) {
            return;
        }
        if count {
            bump(&h.stats.frees[(*page).bin as usize], 1);
        }
        if (*page).used == 0 || (*page).flags != 0 {
            if !count
                && (*page).used != 0
                && (*page).flags & PAGE_IN_FULL != 0
                && (*page).kind == PageKind::Bin as u8
            {
                // Another thread's free (the drain's) gave a full page room: it stays full,
                // on its bin's refilled list, where passes can reach it (`refilled`).
                return refilled::keep_full(h, page);
            }
            free_local_slow(h, page);
        }
    }
}

/// A local free left `page` empty or changed a page that is full or large: the page event,
/// then a tick.
///
/// # Safety
/// `page` is a page of `h` in use, whose block the caller has just freed.
#[cold]
#[inline(never)]
pub(super) unsafe extern "C" fn free_local_slow(h: HeapRef, page: *mut Page) {
    let _gate = purger::enter(h.as_ptr());
    // SAFETY: page is ours.
    unsafe {
        free_local_page_event(h, page);
        // Last: the tick may collect and retire pages, including this one.
        heap_tick(h);
    }
}

/// What a local free sets off on `page`: a large page goes back to its segment, a full one
/// back in its queue, an empty one (not its bin's current page, nor kept as the current
/// page or the bin's spare) back to its segment.
///
/// # Safety
/// As for [`free_local_slow`].
pub(super) unsafe fn free_local_page_event(mut h: HeapRef, page: *mut Page) {
    // SAFETY: page is ours.
    unsafe {
        if (*page).kind == PageKind::Large as u8 {
            free_large_page(h, page);
            return;
        }
        if (*page).flags & PAGE_IN_FULL != 0 {
            refilled::unlink(h.as_ptr(), page);
            unfull(h, page);
        }
        // An empty page goes back to its segment at once, unless it is its bin's current
        // page: that one stays (the next collection retires it if it is still empty then),
        // because retiring it would throw away exactly the free blocks the next allocations
        // need (in a FIFO workload the allocator would be left with one free block at a time
        // and take the slow path on every allocation). For the same reason, an empty page
        // becomes the current page instead when the current one is nearly full (`is_scant`):
        // its blocks serve the next allocations, which would otherwise take and carve a new
        // page (a ring of blocks that fills its pages all but one: every page's worth of
        // allocations, one page emptied and retired, one new page carved).
        //
        // Otherwise the page stays as the bin's spare, right behind the current page, if the
        // bin has none (the page there is not empty): the next walk, when the current page
        // runs out, meets it first and takes its blocks instead of carving a new page; the
        // next collection retires it if it is still empty then (`heap_collect`). A FIFO ring
        // whose live blocks do not fill their pages exactly (4096 blocks of 80 bytes: 5
        // pages and a block) empties its oldest page while the current one still has room,
        // and the page that would serve next has only the few blocks freed into it since:
        // without the spare, every page's worth of allocations retired one page and carved
        // a new one (and in the secure build shuffled its blocks and armed their keys).
        let bin = (*page).bin as usize;
        if (*page).used == 0 {
            let current = h.pages[bin];
            if current == page {
                // Stays the current page.
            } else if is_scant(current) {
                h.queue_remove(bin, page);
                h.queue_push_front(bin, page);
            } else if !has_spare(current, page) {
                h.queue_remove(bin, page);
                h.queue_remove(bin, current);
                h.queue_push_front(bin, page);
                h.queue_push_front(bin, current);
            } else {
                h.queue_remove(bin, page);
                retire_page_of(h, page);
                return;
            }
            // No live block: a free into it before the next allocation is a wrong one.
            (*page).flags |= PAGE_CHECK_FREE;
        }
    }
}

/// Whether the page behind `current` (a bin's current page) in its queue is the bin's
/// spare: a page with no live block, kept there by [`free_local_page_event`], other than
/// `page` (the one just emptied, which may already sit there).
///
/// # Safety
/// `current` is a page of the calling thread's heap, the front of its bin's queue.
#[inline]
unsafe fn has_spare(current: *const Page, page: *const Page) -> bool {
    // SAFETY: the queue's pages are ours (contract).
    unsafe {
        let next = (*current).next;
        !next.is_null() && !ptr::eq(next, page) && (*next).used == 0
    }
}

/// Retires an empty page outside a collection. If that empties its segment and we have
/// another one, the segment goes to the pool now: a thread that frees what others left behind
/// (and adopted their segments to do it) does not hold on to them until its next collection,
/// which may be far away if it hardly allocates.
///
/// # Safety
/// `page` is a page of `h` with no live block, in no queue.
pub(super) unsafe fn retire_page_of(h: HeapRef, page: *mut Page) {
    // SAFETY: page is ours, unused and in no queue; its segment is on our list.
    unsafe {
        let seg = (*page).segment();
        if retire_page(h, page) && (h.segments != seg || !(*seg).next.is_null()) {
            // Unpurged: the next thread that needs a segment takes it from the pool with its
            // memory still resident (no faults); the pool unmaps it after the delay otherwise.
            unlink_segment(h, seg);
            release_segment_dirty(seg, os::now_ms());
        }
    }
}

/// Gives back a large page of `h` whose block was freed, booking its bytes off.
///
/// # Safety
/// `page` is a large page of `h` with no live block.
pub(super) unsafe fn free_large_page(h: HeapRef, page: *mut Page) {
    // SAFETY: page is one of our large pages, now unused.
    unsafe {
        bump(&h.stats.large_free_bytes, (*page).block_size as u64);
        // A page on a far segment of h's (one it mapped or adopted, as a tier policy sent its
        // segments there): booked off that node as one of its own (see `note_far_adopted`).
        note_far_large(h, (*page).segment(), -((*page).block_size as i64));
        (*page).flags = 0;
        (*page).thread_free.force_state(NORMAL);
        retire_page(h, page);
    }
}

/// Gives an unused page's slices back to its segment, booking their bytes as waiting to be
/// purged (see `note_idle`). A segment left empty stays on our list until its purge time
/// (see `heap_collect`), so a thread that frees and reallocates a large object does not go
/// through the pool each time.
/// Returns true if the segment now has no page in use.
///
/// # Safety
/// `page` is a page of one of `h`'s segments with no live block, in no queue.
pub(super) unsafe fn retire_page(h: HeapRef, page: *mut Page) -> bool {
    // SAFETY: page is ours, unused and in no queue.
    unsafe {
        // A free into a page that holds no block takes the slow path, which reports it.
        (*page).flags = PAGE_CHECK_FREE;
        let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
        note_idle(
            h,
            Segment::run_bytes((*page).slice_index(), (*page).slice_count as usize),
        );
        Segment::free_page(page, os::now_ms(), delay)
    }
}

/// A free of a block we do not own: another thread's, an abandoned segment's, or a huge one
/// (or, from [`free_c`], one of our own when we have no tag: left to [`free_other_slow`]).
///
/// The common case, a small or large block of a live thread on our own node freed by an
/// active heap (every free of a producer/consumer hand-off), is handled here with no call
/// but the tail call to the rare paths, so it needs no stack frame; everything else goes to
/// [`free_other_slow`].
///
/// # Safety
/// `h` is this thread's heap or the unset one (from `tls::heap_or_unset`); `p` is a live
/// block of `seg`.
#[inline(never)]
pub(super) unsafe extern "C" fn free_other(h: *mut Heap, seg: *mut Segment, p: *mut u8) {
    // SAFETY: p is live, so seg is valid until we push p; we read what we need before. An
    // active heap is not the unset one (never active), so it is this thread's.
    unsafe {
        let owner = (*seg).owner.load(Ordering::Acquire);
        if (*h).state != ACTIVE
            || (*seg).kind == SegmentKind::Huge
            // 0: abandoned; QUARANTINED (1): dropped by the slow path. One compare.
            || owner <= QUARANTINED
            || owner == h as usize
            || (*seg).node as u32 != (*h).node
        {
            return free_other_slow(h, seg, p);
        }
        let h = HeapRef::new(h);
        // Only the descriptor's remote line is read or written here (see Page).
        let page = page_of_remote(seg, p);
        // A large block (rare: the slow path reads the owner's line to check it) or a pointer
        // no block can start at: checked there.
        if (*page).remote_bin as usize == LARGE_BIN || p as usize & 7 != 0 {
            return free_other_slow(h.as_ptr(), seg, p);
        }
        // An active heap of the block's node: its own counters, no per-node correction (see
        // count_node_free). A page's bin is at most LARGE_BIN = NBINS, inside the array.
        bump(h.stats.frees.get_unchecked((*page).remote_bin as usize), 1);
        bump(&h.stats.remote_frees, 1);
        #[cfg(feature = "secure")]
        {
            use crate::heap::secure::{block_key, canary, fill_freed, has_marker, set_marker};
            let key = block_key(page, p);
            // Another thread's block, whose lists are not ours to walk: the marker alone
            // (see is_marked_freed) is reported.
            if has_marker(p, key) {
                return report(HeapError::DoubleFree, p);
            }
            // Its canary: only the page's keys (this line) and the block are read.
            if !canary::intact(page, p, key) {
                return canary::report_bad(page, p);
            }
            fill_freed(page, p, (*page).remote_bin as usize);
            set_marker(p, key);
        }
        if let Pushed::Delayed = (*page).thread_free.push(p as *mut Block) {
            free_delayed(seg, page, p);
        }
    }
}

/// Ends a remote free that found the page in the owner's full queue: the block goes on the
/// owner heap's delayed stack instead of the page's list.
///
/// # Safety
/// `thread_free.push` of `p` on `page` (of `seg`) just returned `Pushed::Delayed`.
#[cold]
#[inline(never)]
pub(super) unsafe extern "C" fn free_delayed(seg: *mut Segment, page: *mut Page, p: *mut u8) {
    // SAFETY: the state is DELAYED_FREEING, so the owner cannot leave until we finish.
    let quiet_at = unsafe {
        let owner = (*seg).owner.load(Ordering::Acquire) as *mut Heap;
        // Read before the owner may leave (at `finish`): no pass visits it before it has
        // been quiet for a delay.
        let quiet_at = purger::quiet_at(owner, init::PURGE_DELAY_MS.load(Ordering::Relaxed));
        delayed::finish(&(*owner).delayed.0, &(*page).thread_free, p as *mut Block);
        quiet_at
    };
    // A quiet owner does not take the block in: the background purger's pass does
    // (`quiet`), so an asleep purger must hear of it, and one not started yet must start (a
    // program whose last calls are these frees has no slow path left that would start it).
    if purger::wanted() {
        let h = heap_or_unset();
        // SAFETY: our own heap (or the unset one, never active), read on our thread; the
        // free is done, so nothing of it is in use while the thread's creation allocates.
        unsafe {
            if (*h).state == ACTIVE && !(*h).walking && !(*h).shared {
                purger::maybe_start();
            }
        }
    }
    // Also after a start (ours, or another thread's that ours lost to): the handshake's fence
    // orders the push before a look of the new thread's (review rev17: on weak memory, a
    // purger started then could miss it).
    purger::notify_by(quiet_at);
}

/// [`free_other`] for everything but the common case: a heap's first free, a huge object, an
/// abandoned segment, a block of another node, a heap that is no longer active.
///
/// # Safety
/// As for [`free_other`].
#[cold]
#[inline(never)]
pub(super) unsafe extern "C" fn free_other_slow(h: *mut Heap, seg: *mut Segment, p: *mut u8) {
    // SAFETY: p is live (contract), so its segment header is mapped.
    if unsafe { (*seg).owner.load(Ordering::Relaxed) } == QUARANTINED {
        // A segment a fork child found in the hands of a thread the fork stopped inside a
        // slow path: its pages' state may be torn, so nothing of it is read or written, and
        // the block is lost (`fork`). Its owner never changes again, and was written before
        // any thread but the child's first existed.
        FREES_QUARANTINED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if is_unset(h) {
        // SAFETY: forwarded contract.
        return unsafe { free_first(p) };
    }
    // SAFETY: not the unset heap, so this thread's (contract).
    let h = unsafe { HeapRef::new(h) };
    let _gate = purger::enter(h.as_ptr());
    // SAFETY: p is live, so seg is valid until we push p; we read what we need before.
    unsafe {
        if h.state == UNINIT {
            // Register this thread's heap (counters, exit hook) at its first free, so that it
            // can adopt what it frees into. A DEAD heap never comes back (see DEAD); one that
            // is not active counts into the retired totals.
            heap_init(h);
        }
        if (*seg).kind == SegmentKind::Huge {
            // A huge mapping holding no object (cached after a free) has huge_offset 0, so
            // its "object" is its header, which no pointer handed out is.
            if p != huge::object(seg) {
                let e = if (*seg).huge_offset == 0 {
                    HeapError::HugeFreed
                } else {
                    HeapError::HugeInterior
                };
                report(e, p);
                return;
            }
            // It may stay in our huge cache, resident, until the delay has passed.
            note_idle(h, (*seg).map_size);
            free_huge(h, seg);
            return;
        }
        let page = page_of(seg, p);
        // Every free that is not the owner's fast path or the common remote one comes here
        // (large blocks, unaligned pointers, other nodes, abandoned segments, a first free):
        // the block must be one its page holds.
        if let Err(e) = check_block(page, p) {
            report(e, p);
            return;
        }
        let owner = (*seg).owner.load(Ordering::Acquire);
        let mut last = false;
        if owner == h.addr() {
            // Our own block, reaching here from C's free because we have no tag (see
            // free_c): an ordinary local free.
            free_owned(h, seg, p);
            return;
        }
        #[cfg(feature = "secure")]
        if (*page).kind == PageKind::Bin as u8 {
            use crate::heap::secure::{canary, fill_freed, is_marked_freed, mark_freed};
            // As on the fast remote path: another heap's (or no heap's) lists.
            if is_marked_freed(page, p) {
                return report(HeapError::DoubleFree, p);
            }
            if !canary::intact(page, p, crate::heap::secure::block_key(page, p)) {
                return canary::report_bad(page, p);
            }
            fill_freed(page, p, (*page).bin as usize);
            mark_freed(page, p);
        }
        if owner == 0 {
            // Abandoned: adopt the whole segment, so that the blocks we free into it are the
            // ones we allocate next, then free locally. (Our live block keeps the segment from
            // being released meanwhile.) Only a heap of the segment's node takes it, so its
            // pages stay where they are. A segment its owner left at exit (the room list) is
            // taken only by a heap with no room of its own: a thread with free slices does
            // not need it, and keeping it would hide its memory from the threads that do (a
            // thread that joins workers and frees what they left would hold every segment it
            // frees into while the next workers map new ones). A segment given up (nearly)
            // full by a live heap is taken by whoever frees into it first, as that list is
            // meant for (see `abandon_full`). Pages an adopter empties are given back at once,
            // but for one per bin kept as the current page or the spare until the next
            // collection (see free_local_page_event).
            let node = ((*seg).node as usize).min(MAX_NODES - 1);
            if h.state == ACTIVE
                && node as u32 == h.node
                && (ABANDONED_FULL[node].claim(seg, h.addr(), h.tag)
                    || (!has_room(h) && ABANDONED[node].claim(seg, h.addr(), h.tag)))
            {
                adopt_segment(h, seg);
                free_local(h, page, p as *mut Block, true);
                return;
            }
            // Left abandoned: the free that brings its live hint to 0 gives it back (below).
            // Never below 0: a hint a missed reclaim left at 0 stays there (the segment
            // waits for its node's tending) instead of wrapping to usize::MAX.
            last = (*seg)
                .live_hint
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
                == Ok(1);
        }
        let (c, shared) = counters(h);
        add(&c.frees[(*page).bin as usize], 1, shared);
        add(&c.remote_frees, 1, shared);
        // A large block's bytes are booked off its node by the heap that takes the emptied
        // page back (`free_large_page`, `release_empty_page`); here only the free counts.
        let bytes = if (*page).bin as usize == LARGE_BIN {
            0
        } else {
            (*page).block_size as u64
        };
        count_node_free(h, (*seg).node, bytes);
        if last && h.state == ACTIVE && reclaim_emptied(h, seg, page, p) {
            return;
        }
        if let Pushed::Delayed = (*page).thread_free.push(p as *mut Block) {
            free_delayed(seg, page, p);
        }
    }
}

/// Whether one of `h`'s segments has a free slice (so its next page needs no other
/// segment): such a heap does not adopt the segments left at exit that it frees into (see
/// `free_other_slow`).
fn has_room(h: HeapRef) -> bool {
    let mut seg = h.segments;
    // SAFETY: the segments on our list are ours.
    unsafe {
        while !seg.is_null() {
            if (*seg).free_slices != 0 {
                return true;
            }
            seg = (*seg).next;
        }
    }
    false
}

/// Books a remote free of `bytes` living on `node` for the per-node totals: a free from a
/// thread of another node (or from a heap that is not active, whose counters no longer
/// belong to any node) lowers that node's live bytes directly.
#[inline]
pub(super) fn count_node_free(h: HeapRef, node: u16, bytes: u64) {
    let n = (node as usize).min(MAX_NODES - 1);
    let active = h.state == ACTIVE;
    if active && node as u32 == h.node {
        return;
    }
    if active {
        bump(&h.stats.foreign_free_bytes, bytes);
    }
    if node as u32 != h.node {
        CROSS_FREES[n].fetch_add(1, Ordering::Relaxed);
    }
    // Release: `stats()` reads these first (acquire) and the heaps' counters after, so a
    // free it counts comes with the allocation that preceded it (review rev35; on x86 the
    // same locked add as a relaxed one).
    CROSS_FREED_BYTES[n].fetch_add(bytes, Ordering::Release);
}

/// Takes in blocks that other threads freed into our full pages.
///
/// # Safety
/// The caller uses no page of `h` it looked up before the drain after it returns: a freed
/// block can empty a page, which is then retired (and a tick inside may collect).
/// Out of line (as it was before its far-page booking, which tipped it into
/// `alloc_bin_slow_long` and shifted the `pairs` instruction count by 0.7 per pair).
#[inline(never)]
pub(super) unsafe fn drain_delayed(mut h: HeapRef) {
    if h.delayed.0.is_empty() {
        return;
    }
    // The blocks still on the stack are counted as used by their pages, which must stay
    // ours until they are freed: no rehome (which gives every segment away) until the
    // walk is over. Drains nest (a free's tick may collect, which drains), hence the save.
    let was_walking = h.walking;
    h.walking = true;
    // The stack is borrowed shared through the raw pointer while the walk's frees form short
    // `&mut Heap`s (free_local, its tick, a nested drain): allowed because the stack is
    // interior-mutable (its head is an atomic). `walking` keeps the frees from giving pages away.
    let hp = h.as_ptr();
    // SAFETY: every block on our delayed stack belongs to a page we own (module invariant);
    // the shared borrow of the stack may overlap `&mut Heap`s (interior mutability, above).
    unsafe {
        delayed::drain(
            &(*hp).delayed.0,
            |b| {
                let page = page_of(segment_of(b as *const u8), b as *const u8);
                (page, &(*page).thread_free)
            },
            |b, page| {
                // The remote thread counted the free (on the block's node: see
                // note_far_collected).
                (*hp).returned = (*hp).returned.saturating_add(1);
                note_far_collected(h, page, 1);
                free_local(h, page, b, false);
            },
        );
    }
    h.walking = was_walking;
}
