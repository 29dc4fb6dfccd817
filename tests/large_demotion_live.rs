//! Per-node live bytes of a large block (64 KiB to 2 MiB) that a tier move put on another
//! node (docs/tiers.md, "Demotion and promotion" and "Statistics": `stats().nodes` and
//! `tiers::stats()[k].live_bytes` count the bytes live on each node). A demoted large block's
//! memory is on the far node (`Page::moved`, and its committed bytes follow), so its live
//! bytes must be counted there too while it lives, and come back off that node, not off its
//! segment's, when it is freed (by its thread, by another, or by another after its owner
//! exited) or promoted back. Review rev19
//! made huge blocks do so (`book_huge_moved`); large blocks kept their live bytes on the
//! segment's node.
//!
//! Runs in a child under `TIERALLOC_SIMULATE_NODES=2,far=1` (node 2 is the far tier), on a
//! thread pinned to a CPU of node 0.

use std::time::Duration;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

const BLOCK: usize = 1 << 20;

/// Live bytes of nodes 0, 1 and 2, and of tiers 0 and 1.
fn live() -> ([i64; 3], [i64; 2]) {
    let s = tieralloc::stats();
    let node = |n: u32| {
        s.nodes
            .iter()
            .find(|x| x.node == n)
            .map_or(0, |x| x.bytes_live)
    };
    let t = tieralloc::tiers::stats();
    (
        [node(0), node(1), node(2)],
        [t[0].live_bytes, t[1].live_bytes],
    )
}

fn diff(a: ([i64; 3], [i64; 2]), b: ([i64; 3], [i64; 2])) -> ([i64; 3], [i64; 2]) {
    (
        [a.0[0] - b.0[0], a.0[1] - b.0[1], a.0[2] - b.0[2]],
        [a.1[0] - b.1[0], a.1[1] - b.1[1]],
    )
}

/// Within 1 KiB on the CPU nodes (the statistics' and the thread machinery's own small
/// blocks), exactly on the far node (nothing else lives there).
fn near(d: ([i64; 3], [i64; 2]), want: ([i64; 3], [i64; 2]), what: &str) {
    let ok = (d.0[0] - want.0[0]).abs() <= 1024
        && (d.0[1] - want.0[1]).abs() <= 1024
        && d.0[2] == want.0[2]
        && (d.1[0] - want.1[0]).abs() <= 2048
        && d.1[1] == want.1[1];
    assert!(ok, "{what}: live bytes moved by {d:?}, expected {want:?}");
}

/// `how`: 0 freed by its thread, 1 freed by a thread of node 1, 2 promoted back and freed.
fn demote_then(how: u8) {
    let (Some(c0), Some(c1)) = (
        child::cpu_of_simulated_node(0),
        child::cpu_of_simulated_node(1),
    ) else {
        println!("skipped: no CPU of both simulated nodes");
        return;
    };
    let b = BLOCK as i64;
    std::thread::spawn(move || {
        tieralloc::numa::pin_current_thread_to_cpu(c0).unwrap();
        let _ = (vec![1u8; 100], live());
        tieralloc::collect();
        let before = live();
        let mut v = vec![7u8; BLOCK];
        near(diff(live(), before), ([b, 0, 0], [b, 0]), "allocated");
        // SAFETY: our own large block, not freed or resized while it moves.
        let r = unsafe { tieralloc::tiers::demote(v.as_mut_ptr(), v.len()) }.unwrap();
        assert_eq!((r.node, r.failed), (2, 0));
        near(diff(live(), before), ([0, 0, b], [0, b]), "while demoted");
        match how {
            0 => drop(v),
            1 => std::thread::spawn(move || {
                tieralloc::numa::pin_current_thread_to_cpu(c1).unwrap();
                assert!(v.iter().all(|&x| x == 7));
                drop(v);
            })
            .join()
            .unwrap(),
            _ => {
                // SAFETY: as above.
                let r = unsafe { tieralloc::tiers::promote(v.as_mut_ptr(), v.len()) }.unwrap();
                assert_eq!((r.node, r.failed), (0, 0));
                near(diff(live(), before), ([b, 0, 0], [b, 0]), "promoted back");
                drop(v);
            }
        }
        tieralloc::collect();
        near(diff(live(), before), ([0, 0, 0], [0, 0]), "freed");
    })
    .join()
    .unwrap();
}

fn run(name: &str, how: u8) {
    if !child::is_child() {
        let mut cmd = child::on_simulated_nodes(name, "2,far=1");
        return child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
    }
    if how == 3 {
        return demote_then_exit();
    }
    demote_then(how);
}

/// The owner (node 0) demotes the block and exits with it live; a node-1 thread frees it into
/// the exited owner's abandoned segment; threads of node 0 tend. Node 2 holds the block's
/// bytes exactly while it lives and none after.
fn demote_then_exit() {
    let (Some(c0), Some(c1)) = (
        child::cpu_of_simulated_node(0),
        child::cpu_of_simulated_node(1),
    ) else {
        println!("skipped: no CPU of both simulated nodes");
        return;
    };
    tieralloc::numa::pin_current_thread_to_cpu(c1).unwrap();
    let _ = (vec![1u8; 100], live());
    tieralloc::collect();
    let before = live();
    let v = std::thread::spawn(move || {
        tieralloc::numa::pin_current_thread_to_cpu(c0).unwrap();
        // The heap follows the thread to node 0 now (it started on node 1, the CPU it was
        // spawned on).
        tieralloc::collect();
        assert_eq!(tieralloc::probe::heap_node(), 0);
        let mut v = vec![7u8; BLOCK];
        // SAFETY: our own large block, not freed or resized while it moves.
        let r = unsafe { tieralloc::tiers::demote(v.as_mut_ptr(), v.len()) }.unwrap();
        assert_eq!((r.node, r.failed), (2, 0));
        v
    })
    .join()
    .unwrap();
    let during = diff(live(), before);
    assert_eq!(
        during.0[2], BLOCK as i64,
        "node 2 while the owner is gone: {during:?}"
    );
    assert!(v.iter().all(|&x| x == 7));
    drop(v);
    for _ in 0..2 {
        std::thread::spawn(move || {
            tieralloc::numa::pin_current_thread_to_cpu(c0).unwrap();
            for _ in 0..8 {
                tieralloc::collect();
            }
        })
        .join()
        .unwrap();
    }
    tieralloc::collect();
    let after = diff(live(), before);
    assert_eq!(after.0[2], 0, "node 2 after the free: {after:?}");
    assert_eq!(after.1[1], 0, "tier 1 after the free: {after:?}");
    assert!(
        after.0[0].abs() <= 4096 && after.0[1].abs() <= 4096,
        "nodes 0 and 1 after the free: {after:?}"
    );
}

#[test]
fn a_demoted_large_block_freed_after_its_owner_exited_leaves_nothing_on_the_far_node() {
    run(
        "a_demoted_large_block_freed_after_its_owner_exited_leaves_nothing_on_the_far_node",
        3,
    );
}

#[test]
fn a_demoted_large_block_counts_on_the_far_node_until_its_owner_frees_it() {
    run(
        "a_demoted_large_block_counts_on_the_far_node_until_its_owner_frees_it",
        0,
    );
}

#[test]
fn a_demoted_large_block_counts_on_the_far_node_until_another_node_frees_it() {
    run(
        "a_demoted_large_block_counts_on_the_far_node_until_another_node_frees_it",
        1,
    );
}

#[test]
fn a_promoted_large_block_counts_on_its_node_again() {
    run("a_promoted_large_block_counts_on_its_node_again", 2);
}
