//! The purge schedule of a segment's free slices: each freed slice waits one to two purge
//! delays resident (a page taken there meanwhile faults nothing in), then goes back to the
//! OS; slices whose purge the kernel refused (locked memory) are tried again on a doubling
//! backoff.
//!
//! Owns: the `purge_*` fields of the segment header and the steps over them. May touch: the
//! `free_slices` (read) and `dirty` bitmaps, `sys::os` (the decommit).

use super::{run_mask, Segment, SLICE_SIZE};
use crate::sys::os;

/// The shortest wait before free slices whose purge the kernel refused are tried again (ms;
/// the purge delay if longer): see [`Segment::note_refused`].
pub const PURGE_RETRY_MIN_MS: u64 = 10;
/// The longest wait between two tries (ms): slices locked for good cost one `madvise` a
/// minute, slices unlocked at last go back within a minute.
pub const PURGE_RETRY_MAX_MS: u64 = 60_000;

impl Segment {
    /// Books slices `mask`, just freed, for purging no sooner than `delay` ms from `now`.
    ///
    /// # Safety
    /// The caller owns `seg` and the slices of `mask` are free.
    #[inline]
    pub unsafe fn schedule_purge(seg: *mut Segment, mask: u64, now: u64, delay: u64) {
        // SAFETY: the caller owns the segment's bitmaps.
        unsafe {
            let s = &mut *seg;
            if mask == 0 {
                return;
            }
            s.purge_recent |= mask;
            s.purge_recent_ms = now;
            if s.purge_at == 0 {
                s.purge_at = now + delay;
            }
        }
    }

    /// Whether the segment has resident free slices that were freed since the last purge
    /// step, the last of them less than `delay` ms before `now`. Slices freed a full delay
    /// ago are not recent, whether a step has run since or not: the step due now purges them
    /// all ([`purge_step`](Segment::purge_step)) and leaves nothing due, so an empty segment
    /// that waited for them to age would never be looked at again (it stayed its owner's,
    /// mapped, for good: tests/idle.rs `a_threads_emptied_segments_go_back_after_its_own_collections`).
    ///
    /// # Safety
    /// The caller owns `seg`.
    #[inline]
    pub unsafe fn has_recent_free(seg: *const Segment, now: u64, delay: u64) -> bool {
        // SAFETY: the caller owns the segment's bitmaps.
        unsafe {
            (*seg).purge_recent & (*seg).free_slices & (*seg).dirty != 0
                && now < (*seg).purge_recent_ms.saturating_add(delay)
        }
    }

    /// One purge step, due at `purge_at`: returns the slices that were already free at the
    /// previous step (and still are) to the OS, and moves the slices freed since then up to
    /// be purged at the next step, `delay` ms from now. Every slice is so purged between one
    /// and two delays after it was freed (plus the collection interval), and a slice that is
    /// freed and taken again in between never goes back to the OS: a steady churn of pages
    /// does not fault its memory in again and again. When the last slice freed since the
    /// previous step was freed a full delay ago (a step long overdue), those go too.
    ///
    /// # Safety
    /// The caller owns `seg`.
    pub unsafe fn purge_step(seg: *mut Segment, now: u64, delay: u64) {
        // SAFETY: exclusive access to the header's purge fields per the contract. Field by
        // field through the raw pointer, never a `&mut Segment`: the background purger calls
        // this while the owner's fast path writes the same segment's `pages`.
        unsafe {
            let free_dirty = (*seg).free_slices & (*seg).dirty;
            let mut due = (*seg).purge_pending & free_dirty;
            let mut recent = (*seg).purge_recent & free_dirty;
            if now >= (*seg).purge_recent_ms.saturating_add(delay) {
                due |= recent;
                recent = 0;
            }
            let refused = Segment::decommit_mask(seg, due);
            (*seg).purge_pending = recent;
            (*seg).purge_recent = 0;
            (*seg).purge_at = if recent != 0 { now + delay } else { 0 };
            Segment::note_refused(seg, refused, now, delay);
        }
    }

    /// Books every free resident slice for purging one delay from `now`, for a segment that
    /// changes hands: the refusals of its last owner are forgotten, so those slices are tried
    /// afresh on the delay's schedule and back off from the start if the kernel refuses again
    /// (review rev12: a carried minute-long backoff, and a retry that purged freshly booked
    /// slices before their delay).
    ///
    /// # Safety
    /// The caller owns `seg` (or has just taken it off a list).
    pub unsafe fn book_all_free(seg: *mut Segment, now: u64, delay: u64) {
        // SAFETY: exclusive access per the contract; field by field (see purge_step).
        unsafe {
            (*seg).purge_refused = 0;
            (*seg).purge_backoff = 0;
            Segment::schedule_purge(seg, (*seg).free_slices & (*seg).dirty, now, delay);
        }
    }

    /// Books `refused` (slices whose purge the kernel just refused) for a try after the
    /// backoff, which doubles with every refusal: the first try waits the purge delay (at
    /// least [`PURGE_RETRY_MIN_MS`]), later ones up to [`PURGE_RETRY_MAX_MS`]; or at the try
    /// already booked for slices refused before, if that is sooner. Nothing if `refused` is
    /// 0.
    ///
    /// # Safety
    /// The caller owns `seg`.
    pub unsafe fn note_refused(seg: *mut Segment, refused: u64, now: u64, delay: u64) {
        if refused == 0 {
            return;
        }
        // SAFETY: the caller owns the segment's purge fields; through the raw pointer, field
        // by field (see purge_step).
        unsafe {
            let b = (*seg).purge_backoff;
            let b = if b == 0 {
                delay.max(PURGE_RETRY_MIN_MS)
            } else {
                b.saturating_mul(2)
            }
            .min(PURGE_RETRY_MAX_MS);
            (*seg).purge_backoff = b;
            // Slices refused before and still waiting keep the try they were promised: a
            // refusal that joins them does not put it off (review rev15: a locked slice
            // refused every 30 s put it a minute off each time, and slices unlocked meanwhile
            // never went back). The newcomers are tried then too, sooner than their own
            // backoff: one `madvise` more.
            let at = now.saturating_add(b);
            (*seg).purge_retry_at = if (*seg).purge_refused != 0 {
                (*seg).purge_retry_at.min(at)
            } else {
                at
            };
            (*seg).purge_refused |= refused;
        }
    }

    /// Tries again the purge of the slices the kernel refused, when their backoff is over:
    /// those still free and resident go back to the OS, or, refused again, wait twice as
    /// long. Returns when the next try is due (0: none).
    ///
    /// # Safety
    /// The caller owns `seg`.
    pub unsafe fn retry_refused(seg: *mut Segment, now: u64, delay: u64) -> u64 {
        // SAFETY: the caller owns the segment's bitmaps; free slices hold no live block.
        unsafe {
            if (*seg).purge_refused == 0 {
                return 0;
            }
            if now < (*seg).purge_retry_at {
                return (*seg).purge_retry_at;
            }
            let m = (*seg).purge_refused & (*seg).free_slices & (*seg).dirty;
            (*seg).purge_refused = 0;
            let refused = Segment::decommit_mask(seg, m);
            if refused == 0 {
                (*seg).purge_backoff = 0;
                return 0;
            }
            Segment::note_refused(seg, refused, now, delay);
            (*seg).purge_retry_at
        }
    }

    /// Bytes of free slices that may be resident and that a purge step may give back: not
    /// those whose purge the kernel refused, which wait for their retry (counted, a heap
    /// under `mlockall` with more than `WAIT_BYTES` of them stayed `waiting` for good, every
    /// slow path reading the clock and every refill bounded: review rev15).
    ///
    /// # Safety
    /// The caller owns `seg`.
    #[inline]
    pub unsafe fn resident_free_bytes(seg: *const Segment) -> usize {
        // SAFETY: the caller owns the segment's bitmaps.
        unsafe {
            ((*seg).free_slices & (*seg).dirty & !(*seg).purge_refused).count_ones() as usize
                * SLICE_SIZE
        }
    }

    /// Slices `mask` are taken for a page: their refusal, if any, is forgotten (a later free
    /// books them afresh), and once no refused slice is left the backoff starts over, so the
    /// next refusal waits the delay, not twice the last wait (review rev15).
    ///
    /// # Safety
    /// The caller owns `seg`.
    #[inline]
    pub unsafe fn forget_refused(seg: *mut Segment, mask: u64) {
        // SAFETY: the caller owns the segment's purge fields (field by field: see purge_step).
        unsafe {
            if (*seg).purge_refused & mask != 0 {
                (*seg).purge_refused &= !mask;
                if (*seg).purge_refused == 0 {
                    (*seg).purge_backoff = 0;
                }
            }
        }
    }

    /// Returns the physical memory of the slices of `mask` (free, dirty) to the OS. Returns
    /// the slices whose purge the kernel refused (they stay dirty).
    ///
    /// # Safety
    /// The caller owns `seg` and the slices of `mask` hold no live block.
    unsafe fn decommit_mask(seg: *mut Segment, mask: u64) -> u64 {
        // SAFETY: the caller owns seg and the slices of mask hold no live block. `dirty` is
        // written through the raw pointer, never a `&mut Segment` (see purge_step).
        unsafe {
            let mut todo = mask;
            let mut refused = 0;
            while todo != 0 {
                let i = todo.trailing_zeros() as usize;
                let run = (!(todo >> i)).trailing_zeros() as usize;
                let start = Segment::slice_start(seg, i);
                let m = run_mask(run) << i;
                todo &= !m;
                // Refused (locked memory: mlock, mlockall): the slices keep their contents,
                // so they stay dirty (a page made there must not count as zeroed).
                if os::decommit(start, Segment::run_bytes(i, run)) {
                    (*seg).dirty &= !m;
                } else if run == 1 {
                    refused |= m;
                } else {
                    // The kernel stops at the first locked mapping of the range (EINVAL):
                    // the slices past it were not even tried, and may not be locked (review
                    // rev15: a never-locked slice after a locked one stayed resident for
                    // good). Slice by slice, then: each refusal is its own.
                    for j in i..i + run {
                        if os::decommit(Segment::slice_start(seg, j), Segment::run_bytes(j, 1)) {
                            (*seg).dirty &= !(1u64 << j);
                        } else {
                            refused |= 1u64 << j;
                        }
                    }
                }
            }
            refused
        }
    }

    /// Returns the physical memory of free, dirty slices to the OS (owner or lock holder),
    /// and clears the purge schedule. Returns the slices whose purge the kernel refused: the
    /// caller books them for a retry ([`note_refused`](Segment::note_refused)) if the segment
    /// stays its own; a segment that changes hands has its free slices booked again by its
    /// next owner.
    ///
    /// # Safety
    /// The caller owns `seg` (or holds the lock of the list it is on, or has it busy on that
    /// list: `LockedList::try_visit`).
    pub unsafe fn purge_free(seg: *mut Segment) -> u64 {
        // SAFETY: exclusive access to the header's purge fields per the contract (field by
        // field, never a `&mut Segment`: see purge_step); free slices hold no live block.
        unsafe {
            (*seg).purge_at = 0;
            (*seg).purge_recent = 0;
            (*seg).purge_pending = 0;
            (*seg).purge_refused = 0;
            (*seg).purge_backoff = 0;
            Segment::decommit_mask(seg, (*seg).free_slices & (*seg).dirty)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::segment::{Page, SEGMENTS, SEGMENT_SIZE};
    use core::sync::atomic::Ordering;

    /// Locked free slices: refused, tried again after the delay, then after twice as long
    /// each time (capped); once unlocked, the next try gives them back and the backoff
    /// starts over. A try leaves alone a slice taken for a page meanwhile.
    #[test]
    fn refused_purges_are_tried_again_on_a_doubling_backoff() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone; the ranges are inside it.
        unsafe {
            let a = Segment::take_slices(seg, 1, false); // slice 1
            let b = Segment::take_slices(seg, 1, false); // slice 2
            let (sa, sb) = ((*a).start(), (*b).start());
            core::ptr::write_bytes(sa, 0xab, SLICE_SIZE);
            core::ptr::write_bytes(sb, 0xcd, SLICE_SIZE);
            let (ma, mb) = (1u64 << 1, 1u64 << 2);
            let _ = Segment::free_page(a, 1000, 100);
            let _ = Segment::free_page(b, 1000, 100);
            for s in [sa, sb] {
                assert_eq!(libc::mlock(s as *const libc::c_void, SLICE_SIZE), 0);
            }
            // Due at 1100, a full delay after the frees: refused.
            Segment::purge_step(seg, 1100, 100);
            assert_eq!((*seg).purge_at, 0, "off the delay's schedule");
            assert_eq!((*seg).purge_refused, ma | mb);
            assert_eq!(((*seg).purge_backoff, (*seg).purge_retry_at), (100, 1200));
            assert_eq!(
                (*seg).dirty & (ma | mb),
                ma | mb,
                "refused slices stay dirty"
            );
            // Not yet due: nothing tried.
            assert_eq!(Segment::retry_refused(seg, 1199, 100), 1200);
            assert_eq!((*seg).purge_backoff, 100);
            // Due, still locked: twice the wait.
            assert_eq!(Segment::retry_refused(seg, 1200, 100), 1400);
            assert_eq!(Segment::retry_refused(seg, 1400, 100), 1800);
            (*seg).purge_backoff = 50_000;
            assert_eq!(
                Segment::retry_refused(seg, 1800, 100),
                1800 + PURGE_RETRY_MAX_MS,
                "capped"
            );
            // Both unlocked; a is taken for a page again and freed at once (at 1900): its
            // refusal is forgotten with the take, so the retry gives back b only, and a waits
            // out its own delay (review rev12: the retry purged it early).
            libc::munlock(sa as *const libc::c_void, SLICE_SIZE);
            libc::munlock(sb as *const libc::c_void, SLICE_SIZE);
            assert_eq!(
                Segment::resident_free_bytes(seg),
                0,
                "refused slices wait for their retry, not a step"
            );
            let a2 = Segment::take_slices(seg, 1, false);
            assert_eq!((*a2).start(), sa, "the lowest dirty run is reused");
            assert_eq!((*seg).purge_refused, mb, "a taken: its refusal forgotten");
            assert_ne!((*seg).purge_backoff, 0, "b still waits: the backoff stays");
            core::ptr::write_bytes(sa, 0xef, SLICE_SIZE);
            let _ = Segment::free_page(a2, 1900, 100);
            assert_eq!(
                Segment::retry_refused(seg, 1800 + PURGE_RETRY_MAX_MS, 100),
                0
            );
            assert_eq!((*seg).dirty & mb, 0, "unlocked: given back");
            assert_eq!(*sb, 0, "given back: reads as zero");
            assert_eq!(*sa, 0xef, "freed again: waits for its own step");
            assert_eq!(((*seg).purge_refused, (*seg).purge_backoff), (0, 0));
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A segment that changes hands forgets its refusals: its free resident slices wait a
    /// delay on the new owner's schedule, not a retry due at once nor a minute's backoff.
    #[test]
    fn a_segment_changing_hands_forgets_its_refusals() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone.
        unsafe {
            let p = Segment::take_slices(seg, 1, false); // slice 1
            let _ = Segment::free_page(p, 1000, 100);
            let m = 1u64 << 1;
            Segment::note_refused(seg, m, 1000, 100);
            (*seg).purge_backoff = PURGE_RETRY_MAX_MS;
            Segment::book_all_free(seg, 5000, 100);
            assert_eq!(((*seg).purge_refused, (*seg).purge_backoff), (0, 0));
            assert_ne!((*seg).purge_at, 0, "a step is set");
            assert_ne!((*seg).purge_recent & m, 0, "booked on the delay's schedule");
            assert_eq!(Segment::retry_refused(seg, 5000, 100), 0, "no retry left");
            assert_ne!((*seg).dirty & m, 0, "not purged before its delay");
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Review rev15: refusals that keep coming do not put off the retry of slices refused
    /// before. Slice 1 is refused and backs off to the minute's cap; it is unlocked; from
    /// then on another locked slice is freed (and refused by its purge step) every 30 s,
    /// while collections look every second. Slice 1 must go back within a minute of its
    /// last refusal (`PURGE_RETRY_MAX_MS`: "slices unlocked at last go back within a
    /// minute"); each new refusal set `purge_retry_at` a whole backoff from its own time,
    /// later than the try already due, so slice 1 was never tried again.
    #[test]
    fn review_new_refusals_do_not_put_off_a_due_retry() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone; the ranges are inside it.
        unsafe {
            let a = Segment::take_slices(seg, 1, false); // slice 1
                                                         // Slice 2 stays in use: slice 1 is a free run of its own, not one `madvise` with
                                                         // the locked slices (which would be refused as a whole).
            let _gap = Segment::take_slices(seg, 1, false);
            let bs: [*mut Page; 6] = core::array::from_fn(|_| Segment::take_slices(seg, 1, false));
            let sa = (*a).start();
            core::ptr::write_bytes(sa, 0xab, SLICE_SIZE);
            for &b in &bs {
                core::ptr::write_bytes((*b).start(), 0xcd, SLICE_SIZE);
                assert_eq!(
                    libc::mlock((*b).start() as *const libc::c_void, SLICE_SIZE),
                    0
                );
            }
            assert_eq!(libc::mlock(sa as *const libc::c_void, SLICE_SIZE), 0);
            let delay = 100;
            let _ = Segment::free_page(a, 1000, delay);
            Segment::purge_step(seg, 1000 + delay, delay);
            // Back off to the cap, still locked.
            let mut t = Segment::retry_refused(seg, 1000 + delay, delay);
            // (A `loop`: the backoff changes through `seg`, which a `while` condition hides.)
            loop {
                if (*seg).purge_backoff >= PURGE_RETRY_MAX_MS {
                    break;
                }
                t = Segment::retry_refused(seg, t, delay);
            }
            let last_refusal = t - PURGE_RETRY_MAX_MS;
            libc::munlock(sa as *const libc::c_void, SLICE_SIZE);
            // A collection every second; a locked slice freed every 30 s.
            let mut now = last_refusal;
            let mut next_b = 0;
            let mut back_at = None;
            while now <= last_refusal + 3 * PURGE_RETRY_MAX_MS {
                if (now - last_refusal) % 30_000 == 0 && next_b < bs.len() {
                    let _ = Segment::free_page(bs[next_b], now, delay);
                    next_b += 1;
                }
                if (*seg).purge_at != 0 && now >= (*seg).purge_at {
                    Segment::purge_step(seg, now, delay);
                }
                let _ = Segment::retry_refused(seg, now, delay);
                if back_at.is_none() && (*seg).dirty & (1 << 1) == 0 {
                    back_at = Some(now);
                }
                now += 1000;
            }
            for &b in &bs {
                libc::munlock((*b).start() as *const libc::c_void, SLICE_SIZE);
            }
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
            let back_after = back_at.map(|t| t - last_refusal);
            assert!(
                back_after.is_some_and(|d| d <= PURGE_RETRY_MAX_MS),
                "slice 1, unlocked, went back {back_after:?} ms after its last refusal \
                 (None: not within {} ms)",
                3 * PURGE_RETRY_MAX_MS
            );
        }
    }

    /// Review rev15: a free slice that was never locked goes back even when the free run it
    /// lies in starts with a locked one. One `madvise` over the run stops at the locked
    /// slice's mapping with `EINVAL`, before the slices past it, and the whole run counted as
    /// refused: slice 2 (never locked) stayed resident and `dirty` through its purge step and
    /// every retry for three minutes.
    #[test]
    fn review_a_locked_slice_does_not_keep_the_free_slices_after_it_resident() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone; the ranges are inside it.
        unsafe {
            let l = Segment::take_slices(seg, 1, false); // slice 1, locked
            let u = Segment::take_slices(seg, 1, false); // slice 2, never locked
            let (sl, su) = ((*l).start(), (*u).start());
            core::ptr::write_bytes(sl, 0xab, SLICE_SIZE);
            core::ptr::write_bytes(su, 0xcd, SLICE_SIZE);
            assert_eq!(libc::mlock(sl as *const libc::c_void, SLICE_SIZE), 0);
            let delay = 100;
            let _ = Segment::free_page(l, 1000, delay);
            let _ = Segment::free_page(u, 1000, delay);
            let mu = 1u64 << 2;
            Segment::purge_step(seg, 1000 + delay, delay);
            let mut now = 1000 + delay;
            while (*seg).purge_refused & mu != 0 && now <= 1000 + 3 * PURGE_RETRY_MAX_MS {
                now = Segment::retry_refused(seg, now, delay).max(now + 1);
            }
            let (dirty, first) = ((*seg).dirty & mu != 0, *su);
            libc::munlock(sl as *const libc::c_void, SLICE_SIZE);
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
            assert!(
                !dirty && first == 0,
                "slice 2 (never locked) still dirty: {dirty}, first byte {first:#x}, \
                 {} ms after it was freed",
                now - 1000
            );
        }
    }

    /// Review rev15: once every refused slice is taken again, the backoff starts over: the
    /// next refusal waits the delay, not twice the last (up to a minute) wait.
    #[test]
    fn the_backoff_starts_over_once_no_refused_slice_is_left() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone.
        unsafe {
            let p = Segment::take_slices(seg, 1, false); // slice 1
            let _ = Segment::free_page(p, 1000, 100);
            Segment::note_refused(seg, 1 << 1, 1100, 100);
            (*seg).purge_backoff = PURGE_RETRY_MAX_MS;
            let again = Segment::take_slices(seg, 1, false);
            assert_eq!((*again).slice_index(), 1);
            assert_eq!(((*seg).purge_refused, (*seg).purge_backoff), (0, 0));
            let _ = Segment::free_page(again, 2000, 100);
            Segment::note_refused(seg, 1 << 1, 2100, 100);
            assert_eq!(
                (*seg).purge_retry_at,
                2200,
                "the delay, not a doubled minute"
            );
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// With a delay of 0 the first retry waits `PURGE_RETRY_MIN_MS`.
    #[test]
    fn the_first_retry_waits_at_least_the_minimum() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone.
        unsafe {
            Segment::note_refused(seg, 0, 5, 0);
            assert_eq!((*seg).purge_refused, 0, "nothing refused, nothing booked");
            Segment::note_refused(seg, 1 << 3, 5, 0);
            assert_eq!((*seg).purge_retry_at, 5 + PURGE_RETRY_MIN_MS);
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
