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
//! pages' `next/prev`, which a page in no queue does not use otherwise),
//! `Heap::refilled_silent`, and the trim's cursor (`refilled_trim_at`, `refilled_trim_bin`). May touch: the listed pages' flags, lists and remote-free state,
//! `bins` (a page taken goes to the front of its queue), `free` (retiring a page), `counters`
//! (booking what a collect takes back), `purger` (the gate, the wake-up), `heap::trim`
//! (the listed pages' trims, for `trim::trim_sparse`).
//!
//! Invariants: a page is on its bin's list only while it is a bin page of ours with
//! `PAGE_IN_FULL` and a live block; a full page on no list has null links. Every path that
//! takes a full page out of full or gives it back unlinks it first ([`unlink`]). Lists change
//! only under the heap's gate (the owner's slow paths, or a pass holding it), since passes
//! read and write them.

use super::counters::collect_remote;
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
        if *addr_of!((*h).refilled_trim_at) == p {
            *addr_of_mut!((*h).refilled_trim_at) = next;
        }
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
        collect_remote(h, p);
        h.queue_push_front(bin, p);
        p
    }
}

/// The owner's collection of its refilled pages: takes in their remote frees and gives back
/// the pages left with no live block. With no page left on any list, no page takes frees
/// without a word: `refilled_silent` is cleared, so passes stop visiting for it.
///
/// # Safety
/// `h` is the calling thread's heap, in a gated slow path that uses no page it looked up
/// before.
pub(super) unsafe fn collect(h: HeapRef) {
    // SAFETY: the lists' pages are ours (module invariant), under our gate (contract).
    unsafe {
        for bin in 0..NBINS {
            let mut p = h.refilled[bin];
            while !p.is_null() {
                let next = (*p).next;
                if (*p).thread_free.has_blocks() {
                    collect_remote(h, p);
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
    if h.refilled.iter().all(|p| p.is_null()) {
        h.refilled_silent.store(false, Ordering::Relaxed);
    }
}

/// Pages of the refilled lists [`trim`] looks at per call (the queues' walk has its own
/// budget, `trim::TRIM_VISITS`).
pub(super) const TRIM_VISITS: usize = 256;

/// The trim's look at the refilled lists (`trim::trim_sparse`, before a new segment): their
/// sparse pages' all-free OS pages go back as the queues' do (invariant 21), else a page
/// that other threads' frees left with a few live blocks, in no queue, kept them resident
/// for as long as its bin did not need a page. At most [`TRIM_VISITS`] pages from where the
/// last call stopped (the cursor `refilled_trim_at` in `refilled_trim_bin`'s list; null: the
/// next bin's front), walking at most about `blocks` blocks (lowered by those walked), and
/// the cursor moves past them. A page left with parked blocks only stays listed: `extend`
/// brings them back when it is taken.
///
/// # Safety
/// `h` is the calling thread's heap, in a gated slow path (no block of its pages is being
/// popped, no list of them walked).
pub(super) unsafe fn trim(mut h: HeapRef, blocks: &mut usize) {
    let mut visits = TRIM_VISITS;
    #[cfg(test)]
    if let v @ 1.. = super::trim::TRIM_VISITS_TEST.with(|c| c.get()) {
        visits = v;
    }
    let mut bin = (h.refilled_trim_bin as usize).min(NBINS - 1);
    let mut p = h.refilled_trim_at;
    // Each list once at most, the cursor's own again at the end (its front part).
    let mut lists_left = NBINS + 1;
    // SAFETY: the lists' pages are ours (module invariant), under our gate (contract); the
    // cursor is null or a page of `bin`'s list (`unlink` moves it on from a page it takes off).
    unsafe {
        while visits > 0 && *blocks > 0 {
            if p.is_null() {
                if lists_left == 0 {
                    break;
                }
                lists_left -= 1;
                bin = (bin + 1) % NBINS;
                p = h.refilled[bin];
                continue;
            }
            visits -= 1;
            if (*p).worth_trimming() {
                *blocks = blocks.saturating_sub((*p).capacity as usize);
                (*p).trim();
            }
            p = (*p).next;
        }
    }
    h.refilled_trim_at = p;
    h.refilled_trim_bin = bin as u8;
}

#[cfg(test)]
mod tests {
    use super::super::alloc::alloc_bin;
    use super::super::free::free;
    use super::super::quiet::tests::full_pages;
    use super::super::tick::collect_now;
    use super::super::tls::own;
    use super::super::trim::{trim_sparse, TRIM_VISITS_TEST};
    use super::is_linked;
    use crate::heap::segment::{page_of, segment_of, Page};
    use crate::heap::size_class::bin_of;

    fn page(p: usize) -> *mut Page {
        // SAFETY: p is a live block, so its segment header is mapped.
        unsafe { page_of(segment_of(p as *const u8), p as *const u8) }
    }

    /// Frees `blocks` on a thread of its own (remote frees).
    fn free_elsewhere(blocks: Vec<usize>) {
        std::thread::spawn(move || {
            for b in blocks {
                // SAFETY: live blocks of another thread's, each freed once.
                unsafe { free(b as *mut u8) };
            }
        })
        .join()
        .unwrap();
    }

    /// Another thread frees the first of `mine` in each of `pages` (the first remote free into
    /// each full page, onto our delayed stack), then our collection drains them: the pages go
    /// on their refilled list. Returns the blocks freed.
    fn hear_of_one_free_per_page(pages: &[usize], mine: &[usize]) -> Vec<usize> {
        let first: Vec<usize> = pages
            .iter()
            .map(|&p| *mine.iter().find(|&&b| page(b) as usize == p).unwrap())
            .collect();
        free_elsewhere(first.clone());
        collect_now();
        first
    }

    /// `n` full pages of `bin` on our refilled list, left sparse: another thread frees one
    /// block of each (which our drain hears of: the pages go on the list), then all but the
    /// last block of each without a word, and our collection takes those in. Returns the
    /// pages, the block kept live in each, and our other blocks of the bin (live too).
    fn sparse_listed_pages(bin: usize, n: usize) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        let (pages, mine, rest) = full_pages(bin, n);
        let first = hear_of_one_free_per_page(&pages, &mine);
        let keep: Vec<usize> = pages
            .iter()
            .map(|&p| {
                *mine
                    .iter()
                    .filter(|&&b| page(b) as usize == p)
                    .max()
                    .unwrap()
            })
            .collect();
        free_elsewhere(
            mine.iter()
                .copied()
                .filter(|b| !first.contains(b) && !keep.contains(b))
                .collect(),
        );
        collect_now();
        (pages, keep, rest)
    }

    /// Pages that another thread's frees left sparse after their owner heard of the first
    /// free are trimmed like the pages of its queues (invariant 21): the trim before a new
    /// segment gives their all-free OS pages back. On a refilled list (in no queue) the trim
    /// never saw them, and they stayed resident for as long as one block of each lived.
    #[test]
    fn sparse_pages_on_a_refilled_list_are_trimmed() {
        const PAGES: usize = 4;
        std::thread::spawn(|| {
            let bin = bin_of(64);
            let (pages, keep, rest) = sparse_listed_pages(bin, PAGES);
            // As before a new segment (the first look notes a page's count, the second trims).
            // SAFETY: our heap, on a slow path of ours (nothing of it in use here).
            unsafe {
                trim_sparse(own());
                trim_sparse(own());
            }
            // SAFETY: our pages, each holding its kept block.
            let trimmed = pages
                .iter()
                .filter(|&&p| unsafe { (*(p as *mut Page)).parked != 0 })
                .count();
            // The pages serve again, their parked blocks among the rest (`take`, `extend`),
            // each block once and none of the live ones.
            let mut seen: std::collections::HashSet<usize> =
                keep.iter().chain(&rest).copied().collect();
            // Until every block of the pages is live again (or a bound: they never come back).
            let full = || {
                pages.iter().all(|&p| {
                    let p = p as *mut Page;
                    // SAFETY: our pages, read on our thread.
                    unsafe { (*p).used == (*p).reserved }
                })
            };
            let mut again = Vec::new();
            while !full() && again.len() < 16 * 1024 {
                // SAFETY: bin < NBINS.
                again.push(unsafe { alloc_bin(bin) } as usize);
            }
            let twice = again.iter().filter(|&&b| !seen.insert(b)).count();
            let reused = again
                .iter()
                .filter(|&&b| pages.contains(&(page(b) as usize)))
                .count();
            // SAFETY: as above.
            let expected: usize = pages
                .iter()
                .map(|&p| unsafe { (*(p as *mut Page)).reserved } as usize - 1)
                .sum();
            // The rest last: live until now, they keep the bin's current page (which a trim
            // passes over) from being one of the test's.
            for b in keep.into_iter().chain(rest).chain(again) {
                // SAFETY: our block, freed once.
                unsafe { free(b as *mut u8) };
            }
            assert_eq!(
                trimmed, PAGES,
                "pages trimmed of {PAGES} with one live 64-byte block each"
            );
            assert_eq!(twice, 0, "blocks handed out while live");
            assert_eq!(
                reused, expected,
                "blocks of the trimmed pages handed out again (all but the kept one of each)"
            );
        })
        .join()
        .unwrap();
    }

    /// More pages on the refilled lists than one trim looks at are all trimmed over a few
    /// calls: the look goes on where the last one stopped. It used to start at the lists'
    /// fronts every time, so the pages past the first [`super::TRIM_VISITS`] were never
    /// looked at (here the budget is 4 pages a call, as `TRIM_VISITS_TEST` sets it).
    #[test]
    fn the_trim_of_long_refilled_lists_goes_on_where_it_stopped() {
        const PAGES: usize = 10;
        std::thread::spawn(|| {
            TRIM_VISITS_TEST.with(|c| c.set(4));
            let (pages, keep, rest) = sparse_listed_pages(bin_of(64), PAGES);
            // SAFETY: our heap and pages, read on our thread between calls.
            let linked = pages
                .iter()
                .filter(|&&p| unsafe { is_linked(own().as_ptr(), p as *mut Page) })
                .count();
            let trimmed = || {
                pages
                    .iter()
                    // SAFETY: our pages, read on our thread between calls.
                    .filter(|&&p| unsafe { (*(p as *mut Page)).parked != 0 })
                    .count()
            };
            // Each page is looked at twice (the first look notes its count): 5 calls of 4.
            for _ in 0..6 {
                // SAFETY: our heap, on a slow path of ours (nothing of it in use here).
                unsafe { trim_sparse(own()) };
            }
            let n = trimmed();
            TRIM_VISITS_TEST.with(|c| c.set(0));
            for b in keep.into_iter().chain(rest) {
                // SAFETY: our block, freed once.
                unsafe { free(b as *mut u8) };
            }
            assert_eq!(linked, PAGES, "pages on the refilled list");
            assert_eq!(n, PAGES, "pages trimmed after 6 calls of 4 looks");
        })
        .join()
        .unwrap();
    }

    /// Once the owner's collection leaves no page on its refilled lists, no page of it takes
    /// frees without a word, and passes no longer visit it for that: `refilled_silent` is
    /// cleared (before, only a pass cleared it, so a busy owner's heap kept it for good).
    #[test]
    fn an_owner_whose_refilled_lists_empty_is_no_longer_visited_for_them() {
        std::thread::spawn(|| {
            let (pages, mine, rest) = full_pages(bin_of(64), 2);
            let first = hear_of_one_free_per_page(&pages, &mine);
            let silent = || own().refilled_silent.load(crate::sync::Ordering::Relaxed);
            let linked = || {
                pages
                    .iter()
                    // SAFETY: our heap and pages, read on our thread between calls.
                    .filter(|&&p| unsafe { is_linked(own().as_ptr(), p as *mut Page) })
                    .count()
            };
            let (silent_then, linked_then) = (silent(), linked());
            free_elsewhere(
                mine.iter()
                    .copied()
                    .filter(|b| !first.contains(b))
                    .collect(),
            );
            collect_now();
            let (silent_after, linked_after) = (silent(), linked());
            for b in rest {
                // SAFETY: our block, freed once.
                unsafe { free(b as *mut u8) };
            }
            assert_eq!(linked_then, 2, "pages on the refilled list after the drain");
            assert!(silent_then, "the heap not flagged while pages were listed");
            assert_eq!(
                linked_after, 0,
                "emptied pages still listed after a collection"
            );
            assert!(!silent_after, "the heap still flagged with no page listed");
        })
        .join()
        .unwrap();
    }

    /// The secure build: blocks of pages on a refilled list, freed by another thread (onto the
    /// page's remote list, without a word), then freed again by their owner and by a third
    /// thread: each second free is found (nothing changes), and the pages then hand out each
    /// of their blocks once (review rev22).
    #[cfg(feature = "secure")]
    #[test]
    fn double_frees_into_refilled_pages_change_nothing() {
        let _e = crate::heap::error::ignore_errors_for_test();
        std::thread::spawn(|| {
            let bin = bin_of(64);
            let (pages, mine, rest) = full_pages(bin, 2);
            let first = hear_of_one_free_per_page(&pages, &mine);
            let later: Vec<usize> = mine
                .iter()
                .copied()
                .filter(|b| !first.contains(b))
                .step_by(3)
                .collect();
            free_elsewhere(later.clone());
            // SAFETY: our heap and pages, read between calls.
            let linked = pages
                .iter()
                .all(|&p| unsafe { is_linked(own().as_ptr(), p as *mut Page) });
            // Freed again: by us (the owner), then by another thread.
            for &b in later.iter().take(4) {
                // SAFETY: the test's wrong frees (reported, ignored).
                unsafe { free(b as *mut u8) };
            }
            free_elsewhere(later.iter().skip(4).take(4).copied().collect());
            collect_now();
            let live: std::collections::HashSet<usize> = mine
                .iter()
                .copied()
                .filter(|b| !first.contains(b) && !later.contains(b))
                .chain(rest.iter().copied())
                .collect();
            let mut seen = live.clone();
            let mut twice = 0;
            let mut again = Vec::new();
            for _ in 0..4096 {
                // SAFETY: bin < NBINS.
                let b = unsafe { alloc_bin(bin) } as usize;
                if !seen.insert(b) {
                    twice += 1;
                }
                again.push(b);
            }
            for b in live.into_iter().chain(again) {
                // SAFETY: our block, freed once.
                unsafe { free(b as *mut u8) };
            }
            assert!(linked, "the pages were on their refilled list");
            assert_eq!(twice, 0, "blocks handed out twice or while live");
        })
        .join()
        .unwrap();
    }
}
