//! A tier budget and the huge cache: the freed huge mappings a thread keeps for reuse count as
//! committed on their node until the purge delay, so a budget set just above what the program
//! uses could refuse an explicit request only because of them. The request first gives the
//! thread's cache back (review rev7 of the 128 MiB cache: a `Placed` request was refused while
//! the thread's own cache held the room).

use allocator_api2::alloc::Allocator;
use std::alloc::{GlobalAlloc, Layout};
use tieralloc::tiers::{self, Policy};
use tieralloc::Placed;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const MIB: usize = 1 << 20;

#[test]
fn a_budget_does_not_refuse_a_request_for_the_threads_own_cached_mappings() {
    // Run on a thread of its own: the cache is the thread's. Pinned to the CPU it starts on:
    // under simulated nodes a thread the scheduler moves changes node, and the move gives its
    // cache back, so the budget below would be set without it and the request rightly
    // refused (review rev19: 1 run in 7 under `TIERALLOC_SIMULATE_NODES=2`).
    std::thread::spawn(|| {
        // SAFETY: a plain query of the calling thread's CPU.
        let cpu = unsafe { libc::sched_getcpu() };
        tieralloc::numa::pin_current_thread_to_cpu(cpu.max(0) as u32).expect("pin");
        let home = Placed::local().expect("a local handle");
        let node = tieralloc::probe::heap_node();
        let tier = tiers::stats()
            .into_iter()
            .find(|t| t.nodes.contains(&node))
            .expect("the home node has a tier");
        // 96 MiB freed into the thread's huge cache (within its 128 MiB bound, 32 slots).
        let l = Layout::from_size_align(3 * MIB, 8).unwrap();
        let blocks: Vec<usize> = (0..24)
            // SAFETY: a non-zero size; each block written whole, freed once below.
            .map(|_| unsafe {
                let p = GLOBAL.alloc(l);
                assert!(!p.is_null());
                std::ptr::write_bytes(p, 1, l.size());
                p as usize
            })
            .collect();
        for &p in &blocks {
            // SAFETY: allocated above with `l`, freed once.
            unsafe { GLOBAL.dealloc(p as *mut u8, l) };
        }
        let committed = tiers::stats()[tier.index].committed_bytes;
        // Room for 16 MiB more than is committed now, the cache included: a 32 MiB request
        // fits only once the cache (96 MiB) is given back.
        tiers::set_policy(&Policy {
            tier_budgets: vec![(tier.index, committed + 16 * MIB as u64)],
            ..Policy::default()
        })
        .unwrap();
        let refused = tiers::stats()[tier.index].refused;
        let want = Layout::from_size_align(32 * MIB, 8).unwrap();
        let got = home.allocate(want);
        let after = tiers::stats()[tier.index].clone();
        tiers::set_policy(&Policy::default()).unwrap();
        let got = got.expect("refused although the thread's own cache held the room");
        assert_eq!(after.refused, refused, "a refusal was counted");
        // SAFETY: allocated above by `home` with `want`.
        unsafe { home.deallocate(got.cast(), want) };
    })
    .join()
    .unwrap();
}
