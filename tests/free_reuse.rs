//! A thread's own frees into its full pages come back to it: a full page sits in no queue, so
//! the free that gives it room again must put it back (`free_owned` takes the slow path for a
//! page with flags set), or its freed blocks wait until the page empties.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashSet;
use std::thread;

#[global_allocator]
static A: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[test]
fn blocks_freed_into_full_pages_by_their_owner_are_reused() {
    const SIZE: usize = 200;
    const N: usize = 4000; // about 13 pages of this class, all but the last full
    let reused = thread::spawn(|| {
        let l = Layout::from_size_align(SIZE, 8).unwrap();
        // SAFETY (all allocations below): non-zero size.
        let blocks: Vec<*mut u8> = (0..N).map(|_| unsafe { A.alloc(l) }).collect();
        assert!(blocks.iter().all(|p| !p.is_null()));
        // Every other block freed by this thread, the owner: every page has room again.
        let (freed, kept): (Vec<_>, Vec<_>) = blocks
            .into_iter()
            .enumerate()
            .partition(|(k, _)| k % 2 == 0);
        let freed: HashSet<usize> = freed
            .into_iter()
            .map(|(_, p)| {
                // SAFETY: a live block of this layout, freed once.
                unsafe { A.dealloc(p, l) };
                p as usize
            })
            .collect();
        // SAFETY: a layout of non-zero size.
        let again: Vec<*mut u8> = (0..N / 2).map(|_| unsafe { A.alloc(l) }).collect();
        let reused = again
            .iter()
            .filter(|&&p| freed.contains(&(p as usize)))
            .count();
        for p in again.into_iter().chain(kept.into_iter().map(|(_, p)| p)) {
            // SAFETY: a live block of this layout, freed once.
            unsafe { A.dealloc(p, l) };
        }
        reused
    })
    .join()
    .unwrap();
    // All of them in practice; a page's worth of slack.
    assert!(
        reused >= N / 2 - 400,
        "only {reused} of {} blocks the owner freed into its full pages were reused",
        N / 2
    );
}
