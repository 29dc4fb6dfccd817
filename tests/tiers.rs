//! Tier API on a machine with a single tier (the test machines): the calls that need a far
//! tier say so instead of doing something else. Placement on a real multi-tier machine is
//! checked in the NUMA VM (tests/numa_vm.rs).

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

use std::time::Duration;

#[test]
fn auto_demotion_needs_a_far_tier() {
    let tiers = tieralloc::topology().tiers.len();
    let r =
        tieralloc::tiers::start_auto_demotion(Duration::from_millis(10), Duration::from_millis(5));
    if tiers < 2 {
        let e = r.expect_err("one tier: nowhere to demote to");
        assert!(e.to_string().contains("tier"), "the error says why: {e}");
    } else {
        let d = r.expect("a far tier exists");
        // Huge blocks come and go while the demoter runs: frees wait out its claims.
        for i in 0..50u8 {
            let v = vec![i; 3 << 20];
            assert!(v.iter().all(|b| *b == i));
        }
        let _ = d.stop();
    }
}

#[test]
fn huge_blocks_survive_concurrent_frees_and_reuse() {
    // The huge registry (used by the demoter) takes every huge block in and out: many threads
    // allocating and freeing huge blocks at once must neither lose nor corrupt any.
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..40u8 {
                    let len = (3 << 20) + (i as usize) * 4096;
                    // black_box: a block that is only written and read back may be
                    // optimised away with its allocator calls (seen in the `secure` build:
                    // no huge allocation at all).
                    let mut v = std::hint::black_box(vec![0u8; len]);
                    v[0] = t;
                    v[len - 1] = i;
                    std::thread::yield_now();
                    assert_eq!((v[0], v[len - 1]), (t, i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("huge churn thread");
    }
    let s = tieralloc::stats();
    assert!(s.huge_allocs >= 160, "{s}");
}

#[test]
fn arena_moves_its_big_chunks_or_says_why() {
    let mut arena: tieralloc::Arena<[u64; 64]> = tieralloc::Arena::new();
    for i in 0..20_000u64 {
        arena.alloc([i; 64]);
    }
    let tiers = tieralloc::topology().tiers.len();
    match arena.demote() {
        // One tier: the "slowest tier" is tier 0, where the chunks are already.
        Ok(r) => {
            assert!(r.chunks_moved >= 3, "big chunks are whole blocks: {r:?}");
            assert!(r.chunks_skipped >= 1, "the first, small chunks stay: {r:?}");
            assert_eq!(r.pages_failed, 0, "{r:?}");
        }
        Err(e) => panic!("demote on a {tiers}-tier machine: {e}"),
    }
    assert!(arena
        .iter_mut()
        .enumerate()
        .all(|(i, v)| v[0] == i as u64 && v[63] == i as u64));
}
