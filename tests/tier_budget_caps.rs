//! Tier budgets against memory that reaches a tier without a new allocation (docs/tiers.md,
//! "Budgets": a cap on a tier's committed bytes, over by less than one segment per thread for
//! small blocks):
//!
//! - a huge block that `realloc` grows in place (its pages moved to a bigger mapping on the
//!   same node) takes new committed bytes on its node as surely as a new block would, so it
//!   must not take them past the node's tier budget: past the budget the block moves instead,
//!   and the global allocator spills the new one to the next tier with room;
//! - a tier move (`tiers::demote`, the automatic demoter) of one of the allocator's blocks
//!   takes its committed bytes to the target tier, so it must not take that tier past its
//!   budget: it is refused (`TierError::OverBudget`), and the demoter leaves the block;
//! - a new page in one of the thread's own segments (free slices left by earlier frees)
//!   commits its bytes on the segment's node as a new segment would: the budget is asked
//!   there too, not only when a new segment is taken.
//!
//! Runs in children under `TIERALLOC_SIMULATE_NODES=2,far=1` (node 2 is the far tier), on a
//! thread pinned to a CPU of node 0.

use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;
use tieralloc::tiers::{self, Policy};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

const MIB: usize = 1 << 20;

/// Runs `f` in a child process of this test binary under `TIERALLOC_SIMULATE_NODES=2,far=1`
/// (node 2 the far tier), on a thread pinned to a CPU of node 0 whose heap has just collected;
/// `name` is the calling test's (the child runs it again). Skipped without such a CPU.
fn on_node_0_in_a_child(name: &str, f: impl FnOnce() + Send + 'static) {
    if !child::is_child() {
        let mut cmd = child::on_simulated_nodes(name, "2,far=1");
        return child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
    }
    let Some(cpu) = child::cpu_of_simulated_node(0) else {
        println!("skipped: no CPU of simulated node 0 allowed");
        return;
    };
    std::thread::spawn(move || {
        tieralloc::numa::pin_current_thread_to_cpu(cpu).expect("pin");
        tieralloc::collect();
        f()
    })
    .join()
    .unwrap();
}

#[test]
fn a_huge_block_grown_by_realloc_keeps_its_tier_within_budget() {
    on_node_0_in_a_child(
        "a_huge_block_grown_by_realloc_keeps_its_tier_within_budget",
        || {
            assert_eq!(tieralloc::probe::heap_node(), 0, "the heap is on node 0");
            let old = Layout::from_size_align(3 * MIB, 8).unwrap();
            // SAFETY: a non-zero size; written whole below.
            let p = unsafe { GLOBAL.alloc(old) };
            assert!(!p.is_null());
            // SAFETY: p holds old.size() bytes.
            unsafe { std::ptr::write_bytes(p, 0x5a, old.size()) };
            // SAFETY: p is a live block of ours that no other thread frees.
            assert_eq!(unsafe { tieralloc::probe::block_node(p) }, 0);
            let near = tiers::stats()[0].committed_bytes;
            let budget = near + 8 * MIB as u64;
            tiers::set_policy(&Policy {
                near_budget: Some(budget),
                ..Policy::default()
            })
            .unwrap();
            let new_size = 64 * MIB;
            // SAFETY: p was allocated with `old`; new_size is non-zero.
            let q = unsafe { GLOBAL.realloc(p, old, new_size) };
            assert!(!q.is_null());
            let after = tiers::stats();
            tiers::set_policy(&Policy::default()).unwrap();
            // SAFETY: q holds new_size bytes, the first old.size() of them copied or kept.
            let kept = unsafe { std::slice::from_raw_parts(q, old.size()) };
            assert!(kept.iter().all(|&b| b == 0x5a), "contents lost");
            // SAFETY: q is a live block of ours.
            let node = unsafe { tieralloc::probe::block_node(q) };
            // SAFETY: q was returned by realloc with new_size.
            unsafe { GLOBAL.dealloc(q, Layout::from_size_align(new_size, 8).unwrap()) };
            assert!(
                after[0].committed_bytes <= budget,
                "near tier committed {} MiB over its budget after a realloc grew a block in place \
             (block on node {node})",
                (after[0].committed_bytes - budget) / MIB as u64
            );
            assert_eq!(node, 2, "the grown block spills to the far tier");
        },
    );
}

/// On a thread pinned to node 0: two 8 MiB huge blocks and a 1 MiB large block allocated
/// there, then a far budget with 512 KiB of room left; explicit demotions of the first huge
/// block and the large one, then the automatic demoter over a few passes. The far tier stays within its budget and both blocks stay on
/// node 0 with their contents.
#[test]
fn a_demotion_does_not_take_the_far_tier_past_its_budget() {
    on_node_0_in_a_child(
        "a_demotion_does_not_take_the_far_tier_past_its_budget",
        || {
            let mut huge = vec![0x11u8; 8 * MIB];
            let mut large = vec![0x22u8; MIB];
            // Left to the automatic demoter.
            let huge2 = vec![0x33u8; 8 * MIB];
            let far = tiers::stats()[1].committed_bytes;
            let budget = far + (MIB / 2) as u64;
            tiers::set_policy(&Policy {
                far_budget: Some(budget),
                ..Policy::default()
            })
            .unwrap();
            // SAFETY: our own blocks, whole, not freed or resized while they move.
            let r_huge = unsafe { tiers::demote(huge.as_mut_ptr(), huge.len()) };
            let after_huge = tiers::stats()[1].committed_bytes;
            // SAFETY: as above.
            let r_large = unsafe { tiers::demote(large.as_mut_ptr(), large.len()) };
            let after_large = tiers::stats()[1].committed_bytes;
            let auto = tiers::start_auto_demotion(Duration::ZERO, Duration::from_millis(1))
                .expect("two tiers");
            std::thread::sleep(Duration::from_millis(50));
            let report = auto.stop();
            let after_auto = tiers::stats()[1].committed_bytes;
            tiers::set_policy(&Policy::default()).unwrap();
            assert!(huge.iter().all(|&b| b == 0x11) && large.iter().all(|&b| b == 0x22));
            assert!(huge2.iter().all(|&b| b == 0x33));
            println!("huge: {r_huge:?}, large: {r_large:?}, auto: {report:?}");
            for (what, c) in [
                ("the huge block's demotion", after_huge),
                ("the large block's demotion", after_large),
                ("the automatic demoter", after_auto),
            ] {
                assert!(
                    c <= budget,
                    "{what} took the far tier {} KiB past its budget",
                    (c - budget) >> 10
                );
            }
            for r in [r_huge, r_large] {
                assert!(
                    matches!(r, Err(tiers::TierError::OverBudget { tier: 1 })),
                    "a demotion over budget: {r:?}"
                );
            }
            assert_eq!(report.failures, 0, "a budget's refusal is no failure");
            // SAFETY: live blocks of ours.
            let nodes = unsafe {
                (
                    tieralloc::probe::block_node(huge.as_ptr()),
                    tieralloc::probe::block_node(large.as_ptr()),
                )
            };
            assert_eq!(nodes, (0, 0), "the blocks stay on node 0");
            // SAFETY: a live block of ours.
            assert_eq!(unsafe { tieralloc::probe::block_node(huge2.as_ptr()) }, 0);
        },
    );
}

/// On a thread pinned to node 0: 64 MiB of 32 KiB blocks, then all but one block in 64 freed,
/// so that the thread's segments (16 of them) stay its own, each with most of its slices free;
/// then a near budget with 1 MiB of room and 64 MiB of 32 KiB blocks again. The new pages
/// made in those segments commit bytes on node 0 as new segments would: the near tier must
/// stay within its budget plus less than one segment (the thread's one segment in flight),
/// the rest spilling to the far tier.
#[test]
fn small_blocks_in_the_threads_own_segments_keep_the_near_tier_within_budget() {
    on_node_0_in_a_child(
        "small_blocks_in_the_threads_own_segments_keep_the_near_tier_within_budget",
        || {
            let first: Vec<Box<[u8; 32768]>> = (0..2048).map(|_| Box::new([1u8; 32768])).collect();
            let kept: Vec<Box<[u8; 32768]>> = first.into_iter().step_by(64).collect();
            let near = tiers::stats()[0].committed_bytes;
            let budget = near + MIB as u64;
            tiers::set_policy(&Policy {
                near_budget: Some(budget),
                ..Policy::default()
            })
            .unwrap();
            let again: Vec<Box<[u8; 32768]>> = (0..2048).map(|_| Box::new([2u8; 32768])).collect();
            let s = tiers::stats();
            tiers::set_policy(&Policy::default()).unwrap();
            assert!(kept.iter().all(|b| b.iter().all(|&x| x == 1)));
            assert!(again.iter().all(|b| b.iter().all(|&x| x == 2)));
            drop((kept, again));
            let over = s[0].committed_bytes as i64 - budget as i64;
            assert!(
                over < 4 * MIB as i64,
                "the near tier went {} KiB past its budget (far tier {} MiB, {} spills)",
                over >> 10,
                s[1].committed_bytes >> 20,
                s[0].spills
            );
        },
    );
}

/// As the huge block's, for a large block grown in place over the free slices after it in
/// its segment (512 KiB to 1.5 MiB): the slices it takes commit bytes on its node. The budget
/// is set before the block is allocated, so that nothing else takes those slices meanwhile.
#[test]
fn a_large_block_grown_by_realloc_keeps_its_tier_within_budget() {
    on_node_0_in_a_child(
        "a_large_block_grown_by_realloc_keeps_its_tier_within_budget",
        || {
            assert_eq!(tieralloc::probe::heap_node(), 0, "the heap is on node 0");
            // Room for the block and 256 KiB more.
            let budget = tiers::stats()[0].committed_bytes + (768 << 10);
            tiers::set_policy(&Policy {
                near_budget: Some(budget),
                ..Policy::default()
            })
            .unwrap();
            let old = Layout::from_size_align(512 << 10, 8).unwrap();
            let new_size = 1536 << 10;
            // SAFETY: non-zero sizes; p written whole, reallocated, the result freed once.
            let (moved, node, committed) = unsafe {
                let p = GLOBAL.alloc(old);
                assert!(!p.is_null());
                assert_eq!(tieralloc::probe::block_node(p), 0);
                p.write_bytes(0x5b, old.size());
                let q = GLOBAL.realloc(p, old, new_size);
                assert!(!q.is_null());
                let committed = tiers::stats()[0].committed_bytes;
                assert!(std::slice::from_raw_parts(q, old.size())
                    .iter()
                    .all(|&b| b == 0x5b));
                let node = tieralloc::probe::block_node(q);
                GLOBAL.dealloc(q, Layout::from_size_align(new_size, 8).unwrap());
                (q != p, node, committed)
            };
            tiers::set_policy(&Policy::default()).unwrap();
            assert!(
                committed <= budget,
                "near tier committed {} KiB over its budget after a realloc grew a large block \
             (moved: {moved}, node {node})",
                (committed - budget) >> 10
            );
        },
    );
}
