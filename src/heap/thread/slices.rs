//! A heap's segments: taking slices for a new page, abandoning, adopting and releasing
//! segments.
//!
//! Owns: the heap's segment list (`segments`), where a new page's slices come from (our
//! segments, an abandoned one of our node, the pool, a new mapping; a tier policy's node for
//! a new segment through `route::segment_node`, whose abandoned segments come first there),
//! giving up (nearly) full segments, adopting abandoned ones, the live hint of an abandoned
//! segment and reclaiming one that other threads' frees emptied (`reclaim_emptied`), and
//! handing empty ones to the pool. May touch: the `Heap` fields (`super`), `bins` (queue
//! changes of adopted pages), `counters`, `free` (the drain, large-page release), `purger`
//! (waking it), `heap::error` (a double free found by a reclaim), `tick` (the `waiting`
//! threshold and `note_idle`, tending a reclaimed segment), `trim` (the trim of sparse pages
//! before a new segment), `heap::{segment, remote}`, `sys::os`, `init` (the purge delay),
//! `heap::route` (the spill call in `take_slices`) and `large` (the huge cache given back when
//! a new segment's mapping is refused: `map_making_room`).

use super::bins::unfull;
use super::counters::{
    book_tended_large, bump, note_far_abandoned, note_far_adopted, note_far_large,
};
use super::free::{drain_delayed, free_large_page};
use super::large::map_making_room;
use super::purger;
use super::refilled;
use super::tick::{note_idle, tend_abandoned, WAIT_BYTES};
use super::trim::trim_sparse;
use super::{HeapRef, ACTIVE};
use crate::heap::error::{report, HeapError};
use crate::heap::page::{PAGE_CHECK_FREE, PAGE_PARKED};
use crate::heap::remote::{Block, NORMAL, USE_DELAYED};
use crate::heap::segment::{
    list_push_front, list_unlink, set_owner, Page, PageKind, Segment, ABANDONED, ABANDONED_FULL,
    MAX_NODES, NO_TAG, PAGES_ABANDONED, PAGES_ADOPTED, PAGE_IN_FULL, PAGE_SLICES, POOLS, SEGMENTS,
    SLICE_SIZE,
};
use crate::init;
use crate::sync::Ordering;
use crate::sys::os;
use core::ptr;

/// Runs `f` on every page in use in `seg` (owner only).
///
/// # Safety
/// The caller owns `seg` (or holds it off every list).
pub(super) unsafe fn for_each_used_page(seg: *mut Segment, mut f: impl FnMut(*mut Page)) {
    // SAFETY: the caller owns seg; descriptors of pages in use are valid.
    unsafe {
        let mut i = 0;
        // Not past the `secure` build's end guard: it is in no free run, yet no page.
        while i < PAGE_SLICES {
            if (*seg).free_slices & (1u64 << i) != 0 {
                i += 1;
                continue;
            }
            let p = (*seg).pages.as_mut_ptr().add(i);
            let n = ((*p).slice_count as usize).max(1);
            f(p);
            i += n;
        }
    }
}

/// [`for_each_used_page`] over every segment of the list that starts at `first` (each
/// segment's successor read before its pages are walked).
///
/// # Safety
/// As [`for_each_used_page`], for every segment on the list; `f` takes no segment off it.
pub(super) unsafe fn for_each_used_page_on(first: *mut Segment, mut f: impl FnMut(*mut Page)) {
    let mut seg = first;
    // SAFETY: forwarded contract.
    unsafe {
        while !seg.is_null() {
            let next = (*seg).next;
            for_each_used_page(seg, &mut f);
            seg = next;
        }
    }
}

/// Books every free resident slice of `seg` for purging, one purge delay from `now`: for a
/// segment that changes hands (abandoned, adopted, taken from the pool) with such slices.
///
/// # Safety
/// The caller owns `seg` (or has just taken it off a list).
pub(super) unsafe fn book_free_slices(seg: *mut Segment, now: u64) {
    let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
    // SAFETY: exclusive access per the contract.
    unsafe { Segment::book_all_free(seg, now, delay) }
}

/// Purges a segment that holds nothing and puts it in its node's pool.
///
/// # Safety
/// The caller owns `seg`, which is on no list and has no page in use.
pub(super) unsafe fn release_segment(seg: *mut Segment, now: u64) {
    // SAFETY: the caller owned seg and it has no page in use.
    unsafe {
        Segment::purge_free(seg);
        release_segment_dirty(seg, now);
    }
}

/// What a walk over a heap's segments leaves to purge ([`purge_segments`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Left {
    /// Resident free bytes with a purge step due, uncarved tails included.
    pub bytes: usize,
    /// When the next step, tail step or retry of a refused purge is due (ms; 0: none).
    pub due: u64,
}

impl Left {
    /// Whether any step waits, due or not: the heap is `holding`.
    pub fn any(self) -> bool {
        self.bytes > 0 || self.due != 0
    }
}

/// The earlier of two due times, 0 meaning none.
#[inline]
pub(super) fn earlier(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    }
}

/// The purge steps that are due in the segment list `list` (a heap's `segments`), by `now`
/// with a purge delay of `delay` ms (0: everything, now): an empty segment none of whose
/// slices was freed recently (since its last step and less than a delay ago) goes to its
/// node's pool ([`release_segment`]); the others have their due slices purged, the uncarved
/// memory of their pages whose time has come given back ([`Segment::tend_tails`]), and the
/// slices whose purge the kernel refused tried again once their backoff is over
/// ([`Segment::retry_refused`]). Returns the resident free bytes left in the segments that
/// stay with a purge step due, uncarved tails included, and when the next step of any kind
/// is due. The one walk of the owner's collection (`tick::heap_collect`) and of a pass over
/// another heap (`purger`'s `purge_heap`): an empty segment must leave here, not be purged
/// step by step, for its last step leaves it nothing due (`purge_at` 0), and no collection
/// looks at a segment with nothing due, so it would stay its owner's, mapped, for good
/// (tests/idle.rs `an_idle_threads_segments_purged_by_others_still_go_back`).
///
/// # Safety
/// The caller owns the list and its segments (their owner, or a pass holding the owner's
/// gate), and uses none it released after this returns.
pub(super) unsafe fn purge_segments(list: *mut *mut Segment, now: u64, delay: u64) -> Left {
    // SAFETY: the list and its segments are ours (contract); a segment is read before it is
    // released, never after.
    unsafe {
        let mut left = Left::default();
        let mut seg = *list;
        while !seg.is_null() {
            let next = (*seg).next;
            if (*seg).tails != 0 {
                left.bytes += Segment::tend_tails(seg, now, delay, delay == 0);
            }
            if (*seg).purge_at != 0 && now >= (*seg).purge_at {
                if (*seg).used_pages == 0 && !Segment::has_recent_free(seg, now, delay) {
                    list_unlink(list, seg);
                    release_segment(seg, now);
                    // In the pool now, no longer ours to read.
                    seg = next;
                    continue;
                } else if delay == 0 {
                    let refused = Segment::purge_free(seg);
                    Segment::note_refused(seg, refused, now, delay);
                } else {
                    Segment::purge_step(seg, now, delay);
                }
            }
            left.due = earlier(left.due, Segment::retry_refused(seg, now, delay));
            // Only while a step is due: free slices that stay resident with none due are those
            // the kernel refused to drop (locked memory), which only the backoff's retries
            // look at; counted, they kept the heap `holding` and every pass visiting it
            // (review rev10), and under `mlockall` `waiting` for good.
            if (*seg).purge_at != 0 {
                left.bytes += Segment::resident_free_bytes(seg);
            }
            // `tails_at` is 0 whenever no tail is booked (`Segment::drop_tail`).
            left.due = earlier(left.due, earlier((*seg).purge_at, (*seg).tails_at));
            seg = next;
        }
        left
    }
}

/// Puts a segment that holds nothing in its node's pool as it is, resident slices and all:
/// the next thread that needs a segment reuses them without faults, and the pool unmaps it
/// if nobody has taken it within the purge delay.
///
/// # Safety
/// As for [`release_segment`].
pub(super) unsafe fn release_segment_dirty(seg: *mut Segment, now: u64) {
    // SAFETY: the caller owned seg and it has no page in use.
    unsafe {
        set_owner(seg, 0, NO_TAG);
        (*seg).purge_at = now + init::PURGE_DELAY_MS.load(Ordering::Relaxed);
        let node = ((*seg).node as usize).min(MAX_NODES - 1);
        POOLS[node].push(seg);
    }
}

/// Lets go of a segment its owner keeps no more (thread exit, a dead heap's in a fork child):
/// as it is to its node's pool if nothing in it is live, else onto its node's abandoned list
/// for others to adopt. Its list links are cleared first.
///
/// # Safety
/// The caller owns `seg` or acts for its dead owner, has taken it off its owner's list, and
/// no thread can start a delayed free on its pages any more (`NEVER_DELAYED`).
pub(super) unsafe fn let_go(seg: *mut Segment, now: u64) {
    // SAFETY: exclusive use per the contract.
    unsafe {
        (*seg).next = ptr::null_mut();
        (*seg).prev = ptr::null_mut();
        if (*seg).used_pages == 0 {
            release_segment_dirty(seg, now);
        } else {
            book_free_slices(seg, now);
            PAGES_ABANDONED.fetch_add((*seg).used_pages as usize, Ordering::Relaxed);
            set_live_hint(seg);
            ABANDONED[((*seg).node as usize).min(MAX_NODES - 1)].push_abandoned(seg);
        }
    }
}

/// Counts the blocks of `seg` still out (`used` less the remote frees waiting on each page)
/// into its `live_hint`, just before it goes on an abandoned list (whose release store
/// publishes it). Every free into it from then on takes one off (`free_other_slow`), and the
/// one that takes it to 0 claims the segment and gives it back if it is empty
/// ([`reclaim_emptied`]). A free that read the owner before the segment was let go takes
/// nothing off (its block counts as out), so the hint may stay above 0 with nothing live:
/// then the collections' tending finds it. It is only ever acted on after a claim and a check.
///
/// # Safety
/// The caller owns `seg` (or acts for its dead owner) and is about to put it on an abandoned
/// list; its pages are `NEVER_DELAYED`.
pub(super) unsafe fn set_live_hint(seg: *mut Segment) {
    // SAFETY: exclusive use per the contract; a page's `used` is its owner's to read.
    unsafe {
        let mut out = 0usize;
        for_each_used_page(seg, |p| {
            out += (*p).used.saturating_sub((*p).thread_free.pending()) as usize;
        });
        (*seg).live_hint.store(out, Ordering::Relaxed);
    }
}

/// The free of `p` (a block of `page` in `seg`, abandoned) took `seg`'s live hint to 0: if
/// this thread can claim `seg` off its abandoned list, frees `p` into it and tends it at once
/// (every page's remote frees collected, empty pages given back), so that a segment emptied
/// by other threads' frees goes to the pool now, resident (the next thread that needs a
/// segment reuses it without faults), instead of waiting abandoned until a collection tends
/// it. A segment found not empty after all (the hint is only a hint) goes back to its list.
/// Any active heap may do this, of whatever node: nothing moves (a segment emptied goes to its
/// own node's pool, one that is not back to its node's list) and the large pages it gives back
/// are booked off the segment's node (`release_empty_page`). So a segment of a node no thread
/// runs on (a CPU-less far node's, left by a thread whose heap a tier policy gave it) does not
/// wait, emptied, for a collection of its node. Returns false, having done nothing, if the
/// segment was no longer abandoned: the caller frees `p` as any remote free.
///
/// # Safety
/// `h` is this thread's active heap; `p` is a live block of `page`, a page of `seg` in use,
/// and the caller has counted its free.
pub(super) unsafe fn reclaim_emptied(
    h: HeapRef,
    seg: *mut Segment,
    page: *mut Page,
    p: *mut u8,
) -> bool {
    // SAFETY: our live block keeps seg mapped; once claimed, seg is ours until tended back.
    unsafe {
        let node = ((*seg).node as usize).min(MAX_NODES - 1);
        if !(ABANDONED[node].claim(seg, h.addr(), h.tag)
            || ABANDONED_FULL[node].claim(seg, h.addr(), h.tag))
        {
            return false;
        }
        // Ours now: the block goes on the page's local list (the caller counted the free),
        // and the tending collects the rest and gives back what is empty. A page with no
        // live block left was sent a block twice: reported, and the block left alone.
        let b = p as *mut Block;
        if (*page).used == 0 {
            report(HeapError::DoubleFree, p);
        } else {
            Block::set_next(b, (*page).local_free);
            (*page).local_free = b;
            (*page).used -= 1;
        }
        tend_abandoned(h, seg, os::now_ms(), false);
        // The segment may have gone to the pool: a sleeping background purger must hear of
        // it, or the pooled memory waits for the next collection of some heap.
        purger::notify();
        true
    }
}

#[cfg(test)]
std::thread_local! {
    /// Tests: the calling thread's [`take_slices`] adopts no segment and maps none (as if
    /// the OS refused the mapping), after trimming and giving up its full segments as usual.
    pub(super) static NO_NEW_SEGMENT: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// `n` slices from one of our segments, adopting or mapping a segment if none has room.
///
/// # Safety
/// As for [`abandon_full`], which this may call: no page of `h` in use by the caller, no walk
/// over blocks of its pages in progress.
pub(super) unsafe fn take_slices(mut h: HeapRef, n: usize, allow_slice0: bool) -> *mut Page {
    // SAFETY: forwarded contract.
    let p = unsafe { take_slices_in(h, n, allow_slice0) };
    // SAFETY: a page take_slices_in hands out is a run of one of our segments.
    if !p.is_null() && !unsafe { (*p).fresh } {
        // Resident slices reused: that much less waits to be purged (see `note_idle`).
        h.idle_bytes = h.idle_bytes.saturating_sub(n * SLICE_SIZE);
        if h.idle_bytes <= WAIT_BYTES {
            h.waiting.store(false, Ordering::Relaxed);
        }
    }
    p
}

/// [`take_slices`]'s search.
///
/// # Safety
/// As for [`take_slices`].
unsafe fn take_slices_in(mut h: HeapRef, n: usize, allow_slice0: bool) -> *mut Page {
    // SAFETY: all segments on our list are ours; the rest per the contract.
    unsafe {
        // Resident free slices of any of our segments first, then any free slices: new memory
        // is touched only when no segment has a resident run that fits.
        // A page commits its bytes on its segment's node: not in a segment whose tier's
        // budget is spent while a slower tier has room (the new segment below spills there).
        let budget = crate::heap::route::ACTIVE.load(Ordering::Relaxed) && !h.shared;
        let bytes = n * SLICE_SIZE;
        for dirty_only in [true, false] {
            let mut seg = h.segments;
            while !seg.is_null() {
                if !(budget && crate::heap::route::would_spill((*seg).node as u32, bytes)) {
                    let p = Segment::take_slices_from(seg, n, allow_slice0, dirty_only);
                    if !p.is_null() {
                        return p;
                    }
                }
                seg = (*seg).next;
            }
        }
        // Adopt abandoned segments of our node first: their free slices and live pages are
        // reused. Not by a label heap: its pages must hold its label's blocks only (see
        // `labels`).
        let node = h.node as usize;
        #[cfg(test)]
        let no_new = NO_NEW_SEGMENT.with(|c| c.get());
        #[cfg(not(test))]
        let no_new = false;
        let spill = budget && crate::heap::route::would_spill(node as u32, bytes);
        if h.label == 0 && !no_new && !spill {
            let p = adopt_from(h, node, n, allow_slice0);
            if !p.is_null() {
                return p;
            }
        }
        // About to take a new segment: first give back the all-free OS pages of sparse pages.
        trim_sparse(h);
        // Then give up the segments of ours that are (nearly) full,
        // unless other threads have been freeing our blocks back to us since the last one
        // (a producer whose consumers return its messages keeps its segments).
        if h.returned == 0 {
            abandon_full(h);
        }
        h.returned = 0;
        if no_new {
            // Tests: as if the pool were empty and the OS refused a new segment.
            return ptr::null_mut();
        }
        // A tier budget may send the new segment to another node (spill).
        let node = if crate::heap::route::ACTIVE.load(Ordering::Relaxed) && !h.shared {
            (crate::heap::route::segment_node(node as u32) as usize).min(MAX_NODES - 1)
        } else {
            node
        };
        // Sent to another node (a spill, a ratio): the segments exited threads left abandoned
        // there with room come first, as our own node's do above. A CPU-less far node has no
        // thread of its own to adopt them (review rev45: every new thread mapped a new far
        // segment while they waited, two to four times the segments).
        if node != h.node as usize && h.label == 0 {
            let p = adopt_from(h, node, n, allow_slice0);
            if !p.is_null() {
                return p;
            }
        }
        let mut seg = POOLS[node].pop(h.addr(), h.tag);
        if seg.is_null() {
            // Refused (out of address space): the huge cache's mappings make way.
            seg = map_making_room(h, || Segment::map_normal(node as u32, true));
            if seg.is_null() {
                return ptr::null_mut();
            }
            set_owner(seg, h.addr(), h.tag);
        }
        // A pooled segment may come with resident free slices: they are due for purging like
        // any others.
        (*seg).purge_at = 0;
        book_free_slices(seg, os::now_ms());
        link_segment(h, seg);
        note_segment_idle(h, seg);
        Segment::take_slices(seg, n, allow_slice0)
    }
}

/// Adopts the segments on `node`'s abandoned list (those left with room) for `h` until one
/// has `n` free slices in a run, and takes them: null if none had (the ones adopted stay
/// `h`'s).
///
/// # Safety
/// As for [`take_slices`]; `h` has no label.
unsafe fn adopt_from(h: HeapRef, node: usize, n: usize, allow_slice0: bool) -> *mut Page {
    // SAFETY: a segment popped for h is h's (forwarded contract).
    unsafe {
        while ABANDONED[node].count.load(Ordering::Relaxed) > 0 {
            let seg = ABANDONED[node].pop(h.addr(), h.tag);
            if seg.is_null() {
                break;
            }
            adopt_segment(h, seg);
            let p = Segment::take_slices(seg, n, allow_slice0);
            if !p.is_null() {
                return p;
            }
        }
        ptr::null_mut()
    }
}

/// Whether a page can give out no block without a free coming back first: nothing free,
/// nothing left to carve, no remote free waiting to be collected (a large page always: its
/// one block is out). A page that other threads are freeing into is not exhausted: its owner
/// is about to reuse those blocks (a producer whose consumers free its messages).
///
/// # Safety
/// `p` is the descriptor of a page in use in a segment the caller owns.
#[inline]
pub(super) unsafe fn page_exhausted(p: *const Page) -> bool {
    // SAFETY: p is a descriptor of a page in use in one of our segments.
    unsafe {
        (*p).kind == PageKind::Large as u8
            || ((*p).free.is_null()
                && (*p).local_free.is_null()
                && (*p).capacity == (*p).reserved
                && (*p).parked == 0
                && !(*p).thread_free.has_blocks())
    }
}

/// Whether `seg` (ours) has no free slice and at most a quarter of its pages can still give
/// out a block.
///
/// # Safety
/// The caller owns `seg`.
pub(super) unsafe fn segment_nearly_full(seg: *mut Segment) -> bool {
    // SAFETY: seg is ours (caller).
    unsafe {
        if (*seg).free_slices != 0 {
            return false;
        }
        let (mut pages, mut open) = (0u32, 0u32);
        for_each_used_page(seg, |p| {
            pages += 1;
            open += !page_exhausted(p) as u32;
        });
        open * 4 <= pages
    }
}

/// Gives up our (nearly) full segments when we are about to take a new one. Such a segment
/// is of little use to us until its blocks are freed, and whoever frees into it first takes
/// it over (claim on free) and allocates from what it freed. This is what lets memory one
/// thread filled be reused by others while that thread lives: a thread that builds a data
/// set and hands it to workers (then waits for them) would otherwise keep every block they
/// free, uncollected, until its own next slow path. If we free into it ourselves, we take it
/// back the same way. These segments go to a list of their own, which `take_slices` does not
/// search, so a thread that only grows does not adopt them back again and again.
///
/// # Safety
/// `h` is in a slow path that uses no page of it afterwards, and no walk over blocks of its
/// pages is in progress (the segments given up may be adopted by another thread at once).
pub(super) unsafe fn abandon_full(h: HeapRef) {
    // SAFETY: every segment looked at is on our list; the rest per the contract.
    unsafe {
        if h.shared || h.state != ACTIVE {
            return;
        }
        // Each pass abandons one segment (or finds none): the list may change under a drain.
        for _ in 0..64 {
            let mut seg = h.segments;
            while !seg.is_null() && !segment_nearly_full(seg) {
                seg = (*seg).next;
            }
            if seg.is_null() {
                return;
            }
            abandon_segment(h, seg);
        }
    }
}

/// Abandons one (nearly) full segment of ours, the way thread exit abandons all of them.
///
/// # Safety
/// `seg` is on `h`'s list, and as for [`abandon_full`].
pub(super) unsafe fn abandon_segment(mut h: HeapRef, seg: *mut Segment) {
    // SAFETY: seg is ours; the steps are release_all's, for one segment.
    unsafe {
        // 1. No more delayed frees for its pages (waits out one in flight), then take in
        //    those already delayed, while the pages are still ours.
        for_each_used_page(seg, |p| (*p).thread_free.set_never_delayed());
        drain_delayed(h);
        // Draining can give pages back and even release segments: go on only if seg is still
        // on our list.
        let mut s = h.segments;
        while !s.is_null() && s != seg {
            s = (*s).next;
        }
        if s.is_null() {
            return;
        }
        // 2. Out of our queues (the pages that could still give out a block go with it) and
        //    off our list, onto the full abandoned list.
        for_each_used_page(seg, |p| {
            if (*p).kind == PageKind::Bin as u8 {
                if (*p).flags & PAGE_IN_FULL == 0 {
                    h.queue_remove((*p).bin as usize, p);
                } else {
                    refilled::unlink(h.as_ptr(), p);
                }
            }
        });
        note_far_abandoned(h, seg);
        unlink_segment(h, seg);
        book_free_slices(seg, os::now_ms());
        PAGES_ABANDONED.fetch_add((*seg).used_pages as usize, Ordering::Relaxed);
        set_live_hint(seg);
        ABANDONED_FULL[((*seg).node as usize).min(MAX_NODES - 1)].push_abandoned(seg);
    }
}

/// Puts `seg` on `h`'s segment list.
///
/// # Safety
/// `h` owns `seg`, which is on no list.
pub(super) unsafe fn link_segment(mut h: HeapRef, seg: *mut Segment) {
    // SAFETY: seg is ours and on no list; our segment list is ours alone.
    unsafe { list_push_front(core::ptr::addr_of_mut!(h.segments), seg) }
}

/// Takes `seg` off `h`'s segment list.
///
/// # Safety
/// `seg` is on `h`'s list.
pub(super) unsafe fn unlink_segment(mut h: HeapRef, seg: *mut Segment) {
    // SAFETY: seg is on our list, which is ours alone.
    unsafe { list_unlink(core::ptr::addr_of_mut!(h.segments), seg) }
}

/// Takes over an abandoned segment whose owner we just became.
///
/// # Safety
/// `h` has just become `seg`'s owner (claimed it, or popped it off an abandoned list for
/// `h`), and `seg` is on no list.
pub(super) unsafe fn adopt_segment(mut h: HeapRef, seg: *mut Segment) {
    // SAFETY: we own seg now (its owner field holds our address); its pages are NEVER_DELAYED,
    // so no thread is in a delayed free on them.
    unsafe {
        link_segment(h, seg);
        (*seg).purge_at = 0;
        let now = os::now_ms();
        let mut adopted = 0usize;
        for_each_used_page(seg, |p| {
            adopted += 1;
            (*p).thread_free.force_state(NORMAL);
            // Only a trim's mark stays (see PAGE_PARKED).
            (*p).flags &= PAGE_PARKED;
            (*p).next = ptr::null_mut();
            (*p).prev = ptr::null_mut();
            (*p).collect();
            if (*p).used == 0 {
                release_empty_page(h, p, now, init::PURGE_DELAY_MS.load(Ordering::Relaxed));
                return;
            }
            if (*p).kind == PageKind::Large as u8 {
                (*p).flags |= PAGE_IN_FULL;
                (*p).thread_free.try_set_state(USE_DELAYED, false);
                if (*p).thread_free.has_blocks() {
                    (*p).collect();
                    if (*p).used == 0 {
                        free_large_page(h, p);
                    }
                }
            } else if (*p).has_room() {
                h.queue_push_back((*p).bin as usize, p);
            } else {
                (*p).flags |= PAGE_IN_FULL;
                (*p).thread_free.try_set_state(USE_DELAYED, false);
                if (*p).thread_free.has_blocks() {
                    (*p).collect();
                    if (*p).has_free() {
                        unfull(h, p);
                    }
                }
            }
        });
        PAGES_ADOPTED.fetch_add(adopted, Ordering::Relaxed);
        // A far segment's live blocks are none of ours (see `note_far_adopted`).
        note_far_adopted(h, seg);
        // Free slices it came with are due for purging like any others.
        book_free_slices(seg, now);
        note_segment_idle(h, seg);
    }
}

/// Books what a segment `h` has just taken over (from the pool, or adopted) holds to purge:
/// its resident free slices, and its pages' booked tails (each page's run past its first
/// slice, as booked: an over-estimate of what is still uncarved, which the next collection
/// corrects; review rev55: 7 slices a tail, counted before sparse medium pages of 2 slices,
/// was 7 times theirs). So the heap is `holding` from now on, and
/// other threads' passes purge it if it goes quiet before its first collection (review
/// rev10: a thread that took a resident pooled segment and went quiet kept it for good).
///
/// # Safety
/// `h` owns `seg`.
unsafe fn note_segment_idle(h: HeapRef, seg: *mut Segment) {
    // SAFETY: we own seg (contract).
    let bytes = unsafe { Segment::resident_free_bytes(seg) + Segment::tail_bytes(seg) };
    if bytes > 0 {
        note_idle(h, bytes);
    }
}

/// Gives back a page found empty outside the free path in a segment `h` took from an
/// abandoned list (adoption, tending, a reclaim), keeping the large-object byte counters
/// right: a large page's bytes leave the segment's node (`book_tended_large`), wherever `h`
/// runs.
///
/// # Safety
/// `p` is a page of a segment `h` owns, taken off an abandoned list for `h` (an active heap),
/// with no live block, in no queue.
pub(super) unsafe fn release_empty_page(h: HeapRef, p: *mut Page, now: u64, delay: u64) {
    // SAFETY: forwarded contract.
    unsafe { release_page(h, p, now, delay, false) }
}

/// [`release_empty_page`] for a page of a segment on `h`'s own list (thread exit): a large
/// page on a far segment of `h` was booked on its node by `h` (`note_far_large`), which takes
/// that back.
///
/// # Safety
/// `p` is a page of a segment on `h`'s list, with no live block, in no queue.
pub(super) unsafe fn release_own_page(h: HeapRef, p: *mut Page, now: u64, delay: u64) {
    // SAFETY: forwarded contract.
    unsafe { release_page(h, p, now, delay, true) }
}

/// [`release_empty_page`] (`own` false) and [`release_own_page`] (`own` true).
///
/// # Safety
/// As for the one called.
unsafe fn release_page(h: HeapRef, p: *mut Page, now: u64, delay: u64, own: bool) {
    // SAFETY: p is one of our pages with no live block.
    unsafe {
        if (*p).kind == PageKind::Large as u8 {
            let bytes = (*p).block_size as u64;
            bump(&h.stats.large_free_bytes, bytes);
            if own {
                note_far_large(h, (*p).segment(), -(bytes as i64));
            } else {
                book_tended_large(h, (*p).segment(), bytes);
            }
        }
        // As `retire_page`: a free into the given-back page (a double free of its block) is
        // checked on the slow path.
        (*p).flags = PAGE_CHECK_FREE;
        Segment::free_page(p, now, delay);
    }
}

/// Segments in the node pools and abandoned right now (for statistics).
pub fn segment_counts() -> (usize, usize, usize) {
    let pooled = POOLS.iter().map(|p| p.count.load(Ordering::Relaxed)).sum();
    let abandoned = ABANDONED
        .iter()
        .chain(ABANDONED_FULL.iter())
        .map(|p| p.count.load(Ordering::Relaxed))
        .sum();
    (SEGMENTS.load(Ordering::Relaxed), pooled, abandoned)
}
