//! A far tier's budget and memory freed there (review rev40, the configuration matrix): a block
//! allocated on the far tier within its budget and freed is room for the next one.
//!
//! Under `TIERALLOC_SIMULATE_NODES=2,far=1` with a far budget of 3 MiB, one thread allocates a
//! 2 MiB block on the far node and frees it, ten times over: through the global allocator with
//! `TIERALLOC_FAR_THRESHOLD=1M` (a threshold request, refused when the far budget cannot take
//! it) and through `Placed::far()` (an explicit request, refused the same way). Only one block
//! is ever live, so every allocation fits the budget. The freed block waits in the far node's
//! heap (another thread's free into it, collected at that heap's next collection) and its
//! memory stays committed until purged; the purge delay is an hour, so that nothing is purged
//! by time while the loop runs and the test does not depend on timing.
//!
//! Each check runs in a child process (the variables are read once, at start-up).

use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::time::Duration;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

/// Bytes of each block: a large block (over 64 KiB, under the huge threshold).
const SIZE: usize = 2 << 20;
const ROUNDS: usize = 10;

fn run_child(name: &str, threshold: bool) {
    let mut cmd = child::on_simulated_nodes(name, "2,far=1");
    cmd.env("TIERALLOC_TIER_BUDGET", "far:3M")
        .env("TIERALLOC_PURGE_DELAY_MS", "3600000")
        .env_remove("TIERALLOC_BACKGROUND_PURGE")
        // No backtrace on a failure: symbolizing allocates buffers over the threshold, which
        // the spent budget refuses, and the standard library's out-of-memory hook then waits
        // for the backtrace lock its own thread holds (seen: the child hung).
        .env("RUST_BACKTRACE", "0");
    if threshold {
        cmd.env("TIERALLOC_FAR_THRESHOLD", "1M");
    }
    child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
}

/// Writes and checks the block's first and last bytes, then frees it with `free`.
fn use_block(p: *mut u8, round: usize, free: impl FnOnce(*mut u8)) {
    // SAFETY: p is a live block of SIZE bytes.
    unsafe {
        p.write(round as u8);
        p.add(SIZE - 1).write(!(round as u8));
        assert_eq!(
            (p.read(), p.add(SIZE - 1).read()),
            (round as u8, !(round as u8))
        );
    }
    free(p);
}

/// Failed before the fix: round 1 of 10 got null (the far node's 2 MiB freed in round 0 still
/// committed: 2 MiB + 2 MiB over the 3 MiB budget), and `tiers::stats()` counted the refusal.
#[test]
fn a_threshold_block_freed_on_the_far_tier_makes_room_for_the_next() {
    const NAME: &str = "a_threshold_block_freed_on_the_far_tier_makes_room_for_the_next";
    if !child::is_child() {
        run_child(NAME, true);
        return;
    }
    let layout = Layout::from_size_align(SIZE, 8).unwrap();
    for round in 0..ROUNDS {
        // SAFETY: a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        let far = tieralloc::tiers::stats();
        assert!(
            !p.is_null(),
            "round {round} of {ROUNDS}: a {SIZE}-byte threshold request refused with one block \
             freed before it and nothing of ours live on the far tier (budget 3 MiB)\n{far:#?}"
        );
        // SAFETY: p is the live block of `layout` allocated above.
        use_block(p, round, |p| unsafe { std::alloc::dealloc(p, layout) });
    }
}

/// The same through `Placed::far()`. Failed before the fix the same way: round 1 refused.
#[test]
fn a_placed_far_block_freed_makes_room_for_the_next() {
    const NAME: &str = "a_placed_far_block_freed_makes_room_for_the_next";
    if !child::is_child() {
        run_child(NAME, false);
        return;
    }
    let far = tieralloc::Placed::far().unwrap();
    assert_eq!(far.node_id(), Some(2));
    let layout = Layout::from_size_align(SIZE, 8).unwrap();
    for round in 0..ROUNDS {
        let p = far.allocate(layout).unwrap_or_else(|_| {
            panic!(
                "round {round} of {ROUNDS}: a {SIZE}-byte Placed::far() request refused with \
                 one block freed before it (budget 3 MiB)\n{:#?}",
                tieralloc::tiers::stats()
            )
        });
        let p = p.as_ptr() as *mut u8;
        // SAFETY: p is the live block of `layout` the handle allocated above.
        use_block(p, round, |p| unsafe {
            far.deallocate(std::ptr::NonNull::new(p).unwrap(), layout)
        });
    }
}
