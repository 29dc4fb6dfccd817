//! Explicit requests (`Placed::far()`) from several threads at once racing for the last room
//! of a tier budget (docs/tiers.md, "Budgets": an explicit request whose tier cannot take it
//! within its budget returns `AllocError`). Each request was checked against the committed
//! bytes before any of them had mapped its block, so all of them could pass: 7 of 8 requests
//! of 8 MiB were served against 20 MiB of room, 36 MiB past the budget. An admitted request
//! now holds its bytes reserved until its block is allocated.
//!
//! Runs in a child under `TIERALLOC_SIMULATE_NODES=2,far=1` (node 2 is the far tier).

use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Barrier};
use std::time::Duration;
use tieralloc::tiers::{self, Policy};
use tieralloc::Placed;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

const MIB: usize = 1 << 20;
const THREADS: usize = 8;

#[test]
fn far_requests_racing_for_the_last_room_stay_within_the_budget() {
    if !child::is_child() {
        let mut cmd = child::on_simulated_nodes(
            "far_requests_racing_for_the_last_room_stay_within_the_budget",
            "2,far=1",
        );
        return child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
    }
    let far = Placed::far().expect("a far tier");
    let l = Layout::from_size_align(8 * MIB, 8).unwrap();
    for round in 0..50 {
        let base = tiers::stats()[1].committed_bytes;
        // Room for two of the requests, not three.
        let budget = base + 20 * MIB as u64;
        tiers::set_policy(&Policy {
            far_budget: Some(budget),
            ..Policy::default()
        })
        .unwrap();
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    far.allocate(l)
                        .ok()
                        .map(|p| p.cast::<u8>().as_ptr() as usize)
                })
            })
            .collect();
        let got: Vec<usize> = threads
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        let committed = tiers::stats()[1].committed_bytes;
        tiers::set_policy(&Policy::default()).unwrap();
        for &p in &got {
            // SAFETY: allocated above by `far` with `l`, freed once.
            unsafe { far.deallocate(NonNull::new(p as *mut u8).unwrap(), l) };
        }
        assert!(
            (1..=2).contains(&got.len()) && committed <= budget,
            "round {round}: {} of {THREADS} requests of 8 MiB served against 20 MiB of room, \
             the far tier {} KiB past its budget",
            got.len(),
            (committed as i64 - budget as i64) / 1024
        );
    }
}
