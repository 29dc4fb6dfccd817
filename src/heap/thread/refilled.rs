//! Full pages that other threads' frees gave room: kept full until a page of their bin is
//! needed.
//!
//! A remote free into a full page (`PAGE_IN_FULL`, in no queue) goes to its owner's delayed
//! stack, and the owner's drain frees it into the page. The page used to go back in its bin's
//! queue then, where the owner's fast paths and ungated refills use it without the gate, so
//! no other thread could take in the frees that followed: an owner that went quiet after a
//! slow path that heard of them (a producer whose blocking `recv` allocates while its
//! results are being freed) kept those pages, nothing live in them, for good (14–24 MiB in 11
//! of 20 runs of the quiet producers under load). Now the drain leaves the page full and
//! puts it on its bin's refilled list; the allocation slow path takes the oldest one from
//! there before it makes a new page. A page on the list is in no queue, so a pass holding
//! the owner's gate may take it in like any full page (`quiet`), and the owner's collection
//! gives back the ones left with no live block.
//!
//! Owns: `Heap::refilled` and `Heap::refilled_tail` (a list per bin, linked through the
//! pages' `next/prev`, which a page in no queue does not use otherwise), and
//! `Heap::refilled_silent`. May touch: the listed pages' flags, lists and remote-free state,
//! `bins` (a page taken goes to the front of its queue), `free` (retiring a page), `counters`
//! (booking what a collect takes back), `purger` (the gate, the wake-up).
//!
//! Invariants: a page is on its bin's list only while it is a bin page of ours with
//! `PAGE_IN_FULL` and a live block; a full page on no list has null links. Every path that
//! takes a full page out of full or gives it back unlinks it first ([`unlink`]). Lists change
//! only under the heap's gate (the owner's slow paths, or a pass holding it), since passes
//! read and write them.

use super::counters::note_far_collected;
use super::free::retire_page;
use super::{purger, Heap, HeapRef};
use crate::heap::remote::NORMAL;
use crate::heap::segment::{Page, PAGE_IN_FULL};
use crate::heap::size_class::NBINS;
use crate::sync::Ordering;
use core::ptr::{self, addr_of, addr_of_mut};

/// Whether `p` is on its bin's refilled list of `h`.
///
/// # Safety
/// `h` is valid and its lists are the caller's (the gate); `p` is a full bin page of `h`.
#[inline]
pub(super) unsafe fn is_linked(h: *const Heap, p: *const Page) -> bool {
    // SAFETY: contract.
    unsafe {
        let bin = ((*p).bin as usize).min(NBINS - 1);
        !(*p).prev.is_null() || core::ptr::eq(*addr_of!((*h).refilled[bin]), p)
    }
}

/// Puts `p` at the back of its bin's refilled list, unless it is on it.
///
/// # Safety
/// As [`is_linked`]; `p` has `PAGE_IN_FULL` and a live block.
pub(super) unsafe fn link(h: *mut Heap, p: *mut Page) {
    // SAFETY: contract: the lists and the page's links are ours.
    unsafe {
        if is_linked(h, p) {
            return;
        }
        let bin = ((*p).bin as usize).min(NBINS - 1);
        let tail = *addr_of!((*h).refilled_tail[bin]);
        (*p).next = ptr::null_mut();
        (*p).prev = tail;
        if tail.is_null() {
            *addr_of_mut!((*h).refilled[bin]) = p;
        } else {
            (*tail).next = p;
        }
        *addr_of_mut!((*h).refilled_tail[bin]) = p;
    }
}

/// Takes `p` off its bin's refilled list, if it is on it.
///
/// # Safety
/// As [`is_linked`].
pub(super) unsafe fn unlink(h: *mut Heap, p: *mut Page) {
    // SAFETY: contract: the lists and the page's links are ours.
    unsafe {
        if !is_linked(h, p) {
            return;
        }
        let bin = ((*p).bin as usize).min(NBINS - 1);
        let (prev, next) = ((*p).prev, (*p).next);
        if prev.is_null() {
            *addr_of_mut!((*h).refilled[bin]) = next;
        } else {
            (*prev).next = next;
        }
        if next.is_null() {
            *addr_of_mut!((*h).refilled_tail[bin]) = prev;
        } else {
            (*next).prev = prev;
        }
        (*p).next = ptr::null_mut();
        (*p).prev = ptr::null_mut();
    }
}

/// The drain freed another thread's block into our full page `p`, which keeps a live block:
/// the page stays full, on its bin's refilled list. Its next remote frees go to its remote
/// list without a word to us (the delayed free that told us has put the page back to
/// `NORMAL`), so the heap is flagged `refilled_silent` for the passes, and the background
/// purger is told when we will have been quiet for a delay.
///
/// # Safety
/// `h` is the calling thread's heap, in a slow path; `p` as for [`link`].
pub(super) unsafe fn keep_full(h: HeapRef, p: *mut Page) {
    let _gate = purger::enter(h.as_ptr());
    // SAFETY: our page, our lists, under our gate (contract).
    unsafe { link(h.as_ptr(), p) };
    if !h.refilled_silent.load(Ordering::Relaxed) {
        h.refilled_silent.store(true, Ordering::Relaxed);
        // SAFETY: our own heap.
        let at = unsafe {
            purger::quiet_at(
                h.as_ptr(),
                crate::init::PURGE_DELAY_MS.load(Ordering::Relaxed),
            )
        };
        purger::notify_by(at);
    }
}

/// Takes the oldest page off `bin`'s refilled list, takes in its remote frees and makes it
/// the bin's current page. Null if the list is empty.
///
/// # Safety
/// `h` is the calling thread's heap, in a gated slow path; `bin < NBINS`.
pub(super) unsafe fn take(mut h: HeapRef, bin: usize) -> *mut Page {
    // SAFETY: the list's pages are ours (module invariant), under our gate (contract).
    unsafe {
        let p = h.refilled[bin];
        if p.is_null() {
            return p;
        }
        unlink(h.as_ptr(), p);
        (*p).flags &= !PAGE_IN_FULL;
        (*p).thread_free.try_set_state(NORMAL, false);
        let back = (*p).collect();
        h.returned = h.returned.saturating_add(back);
        note_far_collected(h, p, back);
        h.queue_push_front(bin, p);
        p
    }
}

/// The owner's collection of its refilled pages: takes in their remote frees and gives back
/// the pages left with no live block.
///
/// # Safety
/// `h` is the calling thread's heap, in a gated slow path that uses no page it looked up
/// before.
pub(super) unsafe fn collect(mut h: HeapRef) {
    // SAFETY: the lists' pages are ours (module invariant), under our gate (contract).
    unsafe {
        for bin in 0..NBINS {
            let mut p = h.refilled[bin];
            while !p.is_null() {
                let next = (*p).next;
                if (*p).thread_free.has_blocks() {
                    let back = (*p).collect();
                    h.returned = h.returned.saturating_add(back);
                    note_far_collected(h, p, back);
                    if (*p).used == 0 {
                        unlink(h.as_ptr(), p);
                        (*p).thread_free.try_set_state(NORMAL, false);
                        retire_page(h, p);
                    }
                }
                p = next;
            }
        }
    }
}
