//! The uncarved memory of a bin page made on resident slices: kept resident for a purge
//! delay or two (a thread that carves the page meanwhile faults none of it in again), then
//! given back if it is still uncarved (a bin with a few blocks live does not pin the run).
//!
//! Owns: the `tails`, `tails_new` and `tails_at` fields of the segment header and the tail
//! steps over them. May touch: the page descriptors' carve extent (`capacity`, `block_size`,
//! `slice_count`, read only), `sys::os` (the give-back).

use super::{Page, PageKind, Segment};
use crate::sys::os;
use core::ptr;

impl Segment {
    /// Books the bin page at slice `i` of `seg` as keeping its uncarved memory resident: the
    /// next [tail step](Segment::tend_tails) gives it back if it is set for a delay from now
    /// (no step was set), else the one after; so it stays at least `delay` ms.
    ///
    /// # Safety
    /// The caller owns `seg`, and `i` is the first slice of one of its bin pages.
    pub unsafe fn book_tail(seg: *mut Segment, i: usize, now: u64, delay: u64) {
        // SAFETY: the caller owns the segment's bitmaps (contract).
        unsafe {
            (*seg).tails |= 1u64 << i;
            if (*seg).tails_at == 0 {
                // No step is set: the first, a delay from now, gives this one back.
                (*seg).tails_at = now.saturating_add(delay);
            } else {
                // The step set may be sooner than a delay from now: this one waits for the
                // step after it.
                (*seg).tails_new |= 1u64 << i;
            }
        }
    }

    /// Takes slice `i` out of the tail bitmaps (its page was given back, taken, or its tail
    /// is done). With the last tail gone no step is set (`tails_at` 0, as a tail step leaves
    /// it): a step time left behind would stay in the past for good, and the segment look due
    /// to every walk (review rev12: a page given back before its tail step).
    ///
    /// # Safety
    /// As for [`tend_tails`](Segment::tend_tails): the caller owns `seg`'s bitmaps.
    #[inline]
    pub unsafe fn drop_tail(seg: *mut Segment, i: usize) {
        // SAFETY: the caller owns the bitmaps (contract); raw places, as in tend_tails.
        unsafe {
            (*seg).tails &= !(1u64 << i);
            (*seg).tails_new &= !(1u64 << i);
            if (*seg).tails == 0 {
                (*seg).tails_at = 0;
            }
        }
    }

    /// The bytes a bin page of `n` slices starting at slice `i` books as its tail: its run
    /// past its first slice (which it keeps). `alloc::new_bin_page` counts this in
    /// `note_idle` when it books the tail, and [`tail_bytes`](Segment::tail_bytes) counts it
    /// again when a heap takes the segment over: one definition, so the two cannot differ
    /// (review rev55: they did, 7 slices against 1 for a 2-slice page).
    #[inline]
    pub fn tail_len(i: usize, n: usize) -> usize {
        Segment::run_bytes(i, n).saturating_sub(super::SLICE_SIZE)
    }

    /// The bytes of the booked tails of `seg`'s pages as booked (each page's
    /// [`tail_len`](Segment::tail_len)): what a heap that takes the segment over has to give
    /// back of them at most.
    ///
    /// # Safety
    /// As for [`tend_tails`](Segment::tend_tails): the caller owns `seg`'s bitmaps and
    /// pages' slow-path fields.
    pub unsafe fn tail_bytes(seg: *mut Segment) -> usize {
        // SAFETY: the caller owns the bitmaps and the pages' slow-path fields (contract);
        // `slice_count` read through a raw place, as in tend_tails.
        unsafe {
            let mut bytes = 0usize;
            let mut todo = (*seg).tails;
            while todo != 0 {
                let i = todo.trailing_zeros() as usize;
                todo &= todo - 1;
                if Segment::starts_bin_page(seg, i) {
                    let page = Segment::page_place(seg, i);
                    let n = *ptr::addr_of!((*page).slice_count) as usize;
                    bytes += Segment::tail_len(i, n);
                }
            }
            bytes
        }
    }

    /// The descriptor of slice `i` of `seg`, as a raw place: the tail steps read its fields one
    /// by one, never through a reference (the owner's fast path may be writing its free list).
    ///
    /// # Safety
    /// `seg` is a mapped segment and `i` one of its slices.
    #[inline]
    unsafe fn page_place(seg: *mut Segment, i: usize) -> *mut Page {
        // SAFETY: `pages` holds a descriptor per slice (contract: `i` is one); no reference
        // is formed.
        unsafe { ptr::addr_of_mut!((*seg).pages).cast::<Page>().add(i) }
    }

    /// Whether slice `i` of `seg` starts a bin page in use: what every `tails` bit must name
    /// (invariant 25 of docs/correctness.md); a bit that does not is dropped unread.
    ///
    /// # Safety
    /// As for [`tend_tails`](Segment::tend_tails): the caller owns `seg`'s slow-path fields.
    pub unsafe fn starts_bin_page(seg: *mut Segment, i: usize) -> bool {
        // SAFETY: the caller owns the fields read (contract), read through raw places.
        unsafe {
            let page = Segment::page_place(seg, i);
            (*seg).free_slices & (1u64 << i) == 0
                && *ptr::addr_of!((*page).kind) == PageKind::Bin as u8
                && *ptr::addr_of!((*page).back) == 0
        }
    }

    /// One tail step, when it is due by `now` (or every tail at once if `all`): gives back
    /// the uncarved memory of the pages booked by [`book_tail`](Segment::book_tail) before
    /// the previous step, from the OS page past each one's last carved block to its end
    /// (`MADV_DONTNEED`: blocks carved there later fault it in again, zeroed); those booked
    /// since wait for the next step, `delay` ms later. So a page keeps it between one and two
    /// delays (plus the interval of the caller's visits). Returns the uncarved bytes the
    /// pages left waiting keep resident.
    ///
    /// # Safety
    /// The caller owns `seg`'s pages' slow-path fields: its owner on a slow path, a holder of
    /// the owner's gate, or the holder of the segment taken off a list; so no page of it is
    /// carved meanwhile.
    pub unsafe fn tend_tails(seg: *mut Segment, now: u64, delay: u64, all: bool) -> usize {
        // Read field by field through raw places, never a reference to a page or the
        // header: the owner's fast path may be writing the same pages' free lists.
        // SAFETY: the contract makes the tail fields and the pages' `capacity` (changed only
        // by a carve), `block_size` and `slice_count` stable and ours; the range given back
        // is past every carved block, so it holds nothing live.
        unsafe {
            let step = all || now >= (*seg).tails_at;
            let keep = if all {
                0
            } else if step {
                (*seg).tails_new
            } else {
                (*seg).tails
            };
            let mut left = 0usize;
            let mut todo = (*seg).tails;
            while todo != 0 {
                let i = todo.trailing_zeros() as usize;
                todo &= todo - 1;
                // Not the first slice of a bin page in use (a fork child's dead thread stopped
                // inside `free_page`, between its bitmaps' stores): dropped, never given back.
                if !Segment::starts_bin_page(seg, i) {
                    Segment::drop_tail(seg, i);
                    continue;
                }
                let page = Segment::page_place(seg, i);
                let start = Segment::slice_start(seg, i) as usize;
                let carved = *ptr::addr_of!((*page).capacity) as usize
                    * *ptr::addr_of!((*page).block_size) as usize;
                let from = (start + carved + os::OS_PAGE - 1) & !(os::OS_PAGE - 1);
                let n = *ptr::addr_of!((*page).slice_count) as usize;
                let end = start + Segment::run_bytes(i, n);
                if keep & (1u64 << i) != 0 {
                    left += end.saturating_sub(from);
                    continue;
                }
                if from < end {
                    // Refused (locked memory): the bytes stay, zero or not; nothing counts
                    // them as zero (the page's `fresh` is false), so nothing is wrong.
                    os::decommit(from as *mut u8, end - from);
                }
                Segment::drop_tail(seg, i);
            }
            if step {
                (*seg).tails_new = 0;
                (*seg).tails_at = if (*seg).tails != 0 {
                    now.saturating_add(delay)
                } else {
                    0
                };
            }
            left
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SEGMENTS, SEGMENT_SIZE, SLICE_SIZE};
    use super::*;
    use crate::sync::Ordering;

    /// Resident 4 KiB pages of `[p, p + len)`.
    fn resident(p: usize, len: usize) -> usize {
        let mut v = vec![0u8; len / os::OS_PAGE];
        // SAFETY: the range is mapped (inside the test's segment) and `v` has a byte per page.
        let r = unsafe { libc::mincore(p as *mut _, len, v.as_mut_ptr()) };
        assert_eq!(r, 0);
        v.iter().filter(|&&b| b & 1 != 0).count()
    }

    /// A tail booked before a step waits for the next one; one booked after a step's time
    /// was set waits for the one after; each gives back only what is past its carved blocks.
    #[test]
    fn a_tail_waits_one_to_two_delays_and_keeps_what_is_carved() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone; the writes are inside its pages.
        unsafe {
            let a = Segment::take_slices(seg, 8, false); // slices 1-8
            let b = Segment::take_slices(seg, 8, false); // slices 9-16
            for p in [a, b] {
                (*p).init_bin(crate::heap::size_class::bin_of(20 << 10), 8 * SLICE_SIZE);
                core::ptr::write_bytes((*p).start(), 1, 8 * SLICE_SIZE);
                (*p).capacity = 3;
            }
            let size = (*a).block_size as usize;
            let carved = |p: *mut Page| {
                let s = (*p).start() as usize;
                let c = (s + 3 * size + os::OS_PAGE - 1) & !(os::OS_PAGE - 1);
                (c, s + 8 * SLICE_SIZE - c)
            };
            let (ai, bi) = ((*a).slice_index(), (*b).slice_index());
            Segment::book_tail(seg, ai, 1000, 100);
            assert_eq!((*seg).tails_at, 1100);
            let (ac, an) = carved(a);
            let (bc, bn) = carved(b);
            // Not due: all kept, all counted.
            assert_eq!(Segment::tend_tails(seg, 1050, 100, false), an);
            assert_eq!(resident(ac, an), an / os::OS_PAGE);
            Segment::book_tail(seg, bi, 1099, 100);
            // The first step gives back a, for which it was set; b, booked when the step was
            // already set (1 ms before it), waits for the next.
            assert_eq!(Segment::tend_tails(seg, 1100, 100, false), bn);
            assert_eq!(resident(ac, an), 0, "a's uncarved memory given back");
            assert_eq!(
                resident((*a).start() as usize, ac - (*a).start() as usize),
                (ac - (*a).start() as usize) / os::OS_PAGE,
                "a's carved blocks kept"
            );
            assert_eq!(
                resident(bc, bn),
                bn / os::OS_PAGE,
                "b waits for the next step"
            );
            assert_eq!(((*seg).tails, (*seg).tails_at), (1u64 << bi, 1200));
            assert_eq!(Segment::tend_tails(seg, 1199, 100, false), bn);
            assert_eq!(Segment::tend_tails(seg, 1200, 100, false), 0);
            assert_eq!(resident(bc, bn), 0, "b's uncarved memory given back");
            assert_eq!(((*seg).tails, (*seg).tails_new, (*seg).tails_at), (0, 0, 0));
            // A page freed with its tail booked takes its bit with it.
            Segment::book_tail(seg, ai, 1300, 100);
            Segment::free_page(a, 1300, 100);
            assert_eq!((*seg).tails & (1u64 << ai), 0);
            assert_eq!(Segment::tend_tails(seg, 1300, 100, true), 0);
            Segment::free_page(b, 1300, 100);
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Review rev55: a segment taken over counts its booked tails by the pages' own runs: a
    /// sparse medium page's (2 slices) is one slice, not the 7 of an 8-slice page's (which
    /// made a heap that adopted an exited thread's segment of 12 sparse tails count 5.25 MiB
    /// to purge against 0.75, over `WAIT_BYTES`). A stale bit (a free slice) counts nothing.
    #[test]
    fn booked_tails_count_by_their_pages_runs() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone.
        unsafe {
            let a = Segment::take_slices(seg, 2, false); // slices 1-2
            let b = Segment::take_slices(seg, 8, false); // slices 3-10
            let c = Segment::take_slices(seg, 2, false); // slices 11-12
            for (p, n) in [(a, 2), (b, 8), (c, 2)] {
                (*p).init_bin(crate::heap::size_class::bin_of(20 << 10), n * SLICE_SIZE);
                Segment::book_tail(seg, (*p).slice_index(), 1000, 100);
            }
            assert_eq!(Segment::tail_bytes(seg), (1 + 7 + 1) * SLICE_SIZE);
            // `c` freed with its bit left (as a fork child's half-done `free_page`).
            let ci = (*c).slice_index();
            Segment::free_page(c, 1000, 100);
            (*seg).tails |= 1u64 << ci;
            assert_eq!(Segment::tail_bytes(seg), (1 + 7) * SLICE_SIZE);
            Segment::tend_tails(seg, 1000, 100, true);
            Segment::free_page(a, 1300, 100);
            Segment::free_page(b, 1300, 100);
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Review (rev9): a carved extent that ends inside an OS page (10 KiB blocks: three end
    /// 2 KiB into the eighth page) keeps that page and every carved byte; the test above uses
    /// 20 KiB blocks, whose carved extent always ends on a page boundary, so it passes as
    /// well with the give-back rounded down (over the last carved block).
    #[test]
    fn a_tail_keeps_the_os_page_its_last_carved_block_ends_in() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone; the writes are inside its page.
        unsafe {
            let a = Segment::take_slices(seg, 8, false);
            (*a).init_bin(crate::heap::size_class::bin_of(10 << 10), 8 * SLICE_SIZE);
            let size = (*a).block_size as usize;
            assert_eq!(
                size % os::OS_PAGE,
                2048,
                "a block size that is not whole pages"
            );
            core::ptr::write_bytes((*a).start(), 0x5A, 8 * SLICE_SIZE);
            (*a).capacity = 3;
            let s = (*a).start();
            Segment::book_tail(seg, (*a).slice_index(), 1000, 100);
            Segment::tend_tails(seg, 1100, 100, false);
            let bad = (0..3 * size).filter(|&k| *s.add(k) != 0x5A).count();
            assert_eq!(bad, 0, "{bad} bytes of the carved blocks lost");
            Segment::free_page(a, 1300, 100);
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Review (rev9), a simulated state: `free_page` set the run free before it cleared the
    /// page's `tails` bit, so a fork child whose dead thread stopped between the two had a
    /// free run with a bit set. The run is then taken for a page that starts elsewhere
    /// (`take_slices_from` clears only its own first bit). `tend_tails` trusted the stale
    /// bit: it read the old page's carve extent from what is now a continuation descriptor
    /// and gave back the live page's memory (503 808 bytes). Now the bit is cleared first,
    /// and `tend_tails` drops a bit whose slice does not start a bin page in use.
    #[test]
    fn a_stale_tail_bit_over_a_new_page_is_not_given_back() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone; the writes are inside its pages.
        unsafe {
            let x = Segment::take_slices(seg, 8, false); // slices 1-8
            let a = Segment::take_slices(seg, 8, false); // slices 9-16
            (*a).init_bin(crate::heap::size_class::bin_of(20 << 10), 8 * SLICE_SIZE);
            (*a).capacity = 1;
            let ai = (*a).slice_index();
            Segment::book_tail(seg, ai, 1000, 100);
            Segment::free_page(x, 1000, 100);
            // `free_page(a)` cut short after its `free_slices` store (a fork snapshot).
            (*seg).free_slices |= super::super::run_mask(8) << ai;
            (*seg).used_pages -= 1;
            // A 16-slice page over slices 1-16, every byte written.
            let b = Segment::take_slices(seg, 16, false);
            assert_eq!((*b).slice_index(), 1);
            core::ptr::write_bytes((*b).start(), 0x77, 16 * SLICE_SIZE);
            Segment::tend_tails(seg, 1100, 100, true);
            let s = (*b).start();
            let lost = (0..16 * SLICE_SIZE).filter(|&k| *s.add(k) != 0x77).count();
            assert_eq!(
                lost, 0,
                "{lost} bytes of a live page given back by a stale tail bit"
            );
            Segment::free_page(b, 1300, 100);
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
