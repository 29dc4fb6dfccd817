//! Bin queues and the direct table.
//!
//! Owns: each bin's queue of pages (`pages`, `tails`, linked through the pages' `next/prev`),
//! the direct table (`direct`: C `malloc`'s current page per 16-byte size step, always equal
//! to `pages` of that size's bin), and moving a page in and out of its queue as it goes full
//! and gets room again. May touch: the `Heap` fields (`super`), the page descriptors and
//! their remote-free state (`heap::{segment, remote}`), `heap::size_class`, `counters` (the
//! far-page booking of what a collect takes back).

use super::counters::note_far_collected;
use super::{empty_page, Heap, HeapRef};
use crate::heap::remote::{NORMAL, USE_DELAYED};
use crate::heap::segment::{Page, PAGE_IN_FULL};
use crate::heap::size_class::bin_of;
use core::ptr;

/// The largest request `alloc_direct` serves.
pub const DIRECT_MAX: usize = 1024;
/// Entries of `Heap::direct`: sizes 0..=DIRECT_MAX by 16-byte steps.
pub(super) const DIRECT_SLOTS: usize = DIRECT_MAX / 16 + 1;

impl Heap {
    /// Makes `p` the current page of `bin`, in `pages` and in the `direct` entries of the
    /// sizes that bin serves.
    #[inline]
    pub(super) fn set_head(&mut self, bin: usize, p: *mut Page) {
        self.pages[bin] = p;
        let size = crate::heap::size_class::bin_size(bin);
        if bin == 0 || size > DIRECT_MAX {
            // The 8-byte bin is below C's 16-byte minimum; the rest have no direct entry.
            return;
        }
        // Every class from 16 B on is a multiple of 16, so the sizes of this bin, rounded up
        // to 16, are the multiples of 16 above the previous class up to this one (and 0 for
        // the 16-byte bin).
        let lo = if bin == 1 {
            0
        } else {
            crate::heap::size_class::bin_size(bin - 1) / 16 + 1
        };
        for e in &mut self.direct[lo..=size / 16] {
            *e = p;
        }
    }

    /// Puts `p` at the front of `bin`'s queue: it becomes the bin's current page.
    ///
    /// # Safety
    /// `p` is one of this heap's bin pages of `bin`, in no queue; `bin < NBINS`.
    #[inline]
    pub(super) unsafe fn queue_push_front(&mut self, bin: usize, p: *mut Page) {
        // SAFETY: p is one of our bin pages in no queue; bin < NBINS.
        unsafe {
            let head = self.pages[bin];
            (*p).prev = ptr::null_mut();
            if head == empty_page() {
                (*p).next = ptr::null_mut();
                self.tails[bin] = p;
            } else {
                (*p).next = head;
                (*head).prev = p;
            }
            self.set_head(bin, p);
        }
    }

    /// Puts `p` at the back of `bin`'s queue.
    ///
    /// # Safety
    /// As for [`Heap::queue_push_front`].
    #[inline]
    pub(super) unsafe fn queue_push_back(&mut self, bin: usize, p: *mut Page) {
        // SAFETY: as for push_front.
        unsafe {
            if self.pages[bin] == empty_page() {
                return self.queue_push_front(bin, p);
            }
            let tail = self.tails[bin];
            (*p).next = ptr::null_mut();
            (*p).prev = tail;
            (*tail).next = p;
            self.tails[bin] = p;
        }
    }

    /// Takes `p` out of `bin`'s queue.
    ///
    /// # Safety
    /// `p` is in `bin`'s queue of this heap.
    #[inline]
    pub(super) unsafe fn queue_remove(&mut self, bin: usize, p: *mut Page) {
        // SAFETY: p is in bin's queue.
        unsafe {
            let (prev, next) = ((*p).prev, (*p).next);
            if self.trim_at == p {
                self.trim_at = next;
            }
            if prev.is_null() {
                self.set_head(bin, if next.is_null() { empty_page() } else { next });
            } else {
                (*prev).next = next;
            }
            if next.is_null() {
                self.tails[bin] = prev;
            } else {
                (*next).prev = prev;
            }
            (*p).next = ptr::null_mut();
            (*p).prev = ptr::null_mut();
        }
    }
}

/// The bin whose current page `Heap::direct` slot `w` holds: slot `w` serves sizes up to
/// `16 w`, and slots 0 and 1 both the 16-byte bin.
#[inline(always)]
pub(super) fn direct_bin(w: usize) -> usize {
    bin_of((w * 16).max(16))
}

/// Takes `page` (which has no free block) out of its queue and marks it full.
///
/// # Safety
/// `page` is a page of `h` in `bin`'s queue.
pub(super) unsafe fn page_to_full(mut h: HeapRef, bin: usize, page: *mut Page) {
    // SAFETY: page is ours and in bin's queue.
    unsafe {
        h.queue_remove(bin, page);
        (*page).flags |= PAGE_IN_FULL;
        (*page).thread_free.try_set_state(USE_DELAYED, false);
        // A remote free may have landed before the state changed: look once more.
        if (*page).thread_free.has_blocks() {
            let back = (*page).collect();
            note_far_collected(h, page, back);
            if (*page).has_free() {
                // Back in the queue at once, at the front: the caller takes from it now.
                (*page).flags &= !PAGE_IN_FULL;
                (*page).thread_free.try_set_state(NORMAL, false);
                h.queue_push_front(bin, page);
            }
        }
    }
}

/// Puts a full page that has room again back in its bin's queue (at the back).
///
/// # Safety
/// `page` is one of `h`'s full bin pages (`PAGE_IN_FULL`, in no queue).
pub(super) unsafe fn unfull(mut h: HeapRef, page: *mut Page) {
    // SAFETY: page is one of our full bin pages.
    unsafe {
        (*page).flags &= !PAGE_IN_FULL;
        // If a delayed free is in flight it ends in NORMAL by itself.
        (*page).thread_free.try_set_state(NORMAL, false);
        // At the back: a page with one block back should not become the current page.
        h.queue_push_back((*page).bin as usize, page);
    }
}
