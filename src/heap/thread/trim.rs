//! When and which sparse pages are trimmed (their all-free OS pages given back: `heap::trim`).
//!
//! Owns: the heap's trim cursor (`trim_at`, `trim_bin`) and [`trim_sparse`], the bounded walk
//! over the bin queues run before the heap takes a new segment (`slices::take_slices_in`):
//! memory that a program freed at random, leaving each page a few live blocks, goes back to
//! the OS before more is mapped. Not before every new page: a program whose pages come and
//! go in resident slices (`pairs`) would pay the walk often for nothing.
//! May touch: the `Heap` fields (`super`), the page descriptors of our queues
//! (`heap::{segment, trim}`), `heap::size_class`, `refilled` (the trim of its lists' pages).

use super::{empty_page, HeapRef};
use crate::heap::size_class::NBINS;
use core::ptr;

/// Pages looked at per call (each a read of its descriptor's line).
pub(super) const TRIM_VISITS: usize = 1024;
/// Blocks the trims of one call may walk (the work per call stays well under what mapping
/// and faulting in the new 4 MiB segment costs).
pub(super) const TRIM_BLOCKS: usize = 128 << 10;

#[cfg(test)]
std::thread_local! {
    /// Tests: the pages one call of the calling thread's [`trim_sparse`] looks at, if not 0
    /// (then the cursor stops inside a queue after a few pages).
    pub(super) static TRIM_VISITS_TEST: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// Trims the sparse pages of our refilled lists (`refilled::trim`), then those (other than
/// each bin's current page) among the next [`TRIM_VISITS`] pages of our bin queues from the
/// cursor on, walking at most about [`TRIM_BLOCKS`] blocks in all, and moves the cursor past
/// them.
///
/// # Safety
/// `h` is the caller's heap, on an allocation's slow path (no block of its pages is being
/// popped, no list of them walked).
pub(super) unsafe fn trim_sparse(mut h: HeapRef) {
    let mut visits = TRIM_VISITS;
    #[cfg(test)]
    if let v @ 1.. = TRIM_VISITS_TEST.with(|c| c.get()) {
        visits = v;
    }
    let mut blocks = TRIM_BLOCKS;
    // The full pages other threads' frees gave room, in no queue (`refilled`).
    // SAFETY: forwarded contract.
    unsafe { super::refilled::trim(h, &mut blocks) };
    let mut bin = h.trim_bin as usize;
    let mut p = h.trim_at;
    let mut bins_left = NBINS;
    // SAFETY: `trim_at` is null or a page of `trim_bin`'s queue (queue_remove moves it on
    // from a page it takes out), and `next` links pages of that queue: all ours.
    unsafe {
        while visits > 0 && blocks > 0 {
            if p.is_null() {
                if bins_left == 0 {
                    break;
                }
                bins_left -= 1;
                bin = (bin + 1) % NBINS;
                p = h.pages[bin];
                if p == empty_page() {
                    p = ptr::null_mut();
                }
                continue;
            }
            visits -= 1;
            // Not a bin's current page: the fast path is taking its blocks.
            if p != h.pages[bin] && (*p).worth_trimming() {
                blocks = blocks.saturating_sub((*p).capacity as usize);
                (*p).trim();
            }
            p = (*p).next;
        }
    }
    h.trim_at = p;
    h.trim_bin = bin as u8;
}
