//! Review rev19: a thread that moves between nodes, and tier placement, under simulated nodes
//! (`TIERALLOC_SIMULATE_NODES`: CPU c is on node c % N, so pinning a thread to CPU 1 moves it
//! to node 1). Each scenario runs in a child process of its own (the variable is read once per
//! process); the parent checks that the child's one test passed.
//!
//! - A `Placed::local()` scope places "on the thread's home node, decided at each allocation"
//!   (`Placed::local`, `Scope::Local`). A thread that moved to another node and then allocates
//!   only inside such a scope (labelled, or with a tier policy set, so that the scope
//!   diverts) must get memory of the node it runs on, not of the node its heap was on when its
//!   own heap last took a slow path (the scope's allocations never reach that heap's ticks).
//! - A huge block demoted to the far node and then freed: the per-node live bytes of
//!   `stats()` go back to where they were on every node (they must not stay up on the node the
//!   block was allocated on and below zero on the far node).

use std::alloc::{alloc, dealloc, Layout};
use std::time::Duration;
use tieralloc::{place_labeled, Placed};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

/// Runs the test `name` of this binary in a child on simulated nodes `nodes`.
fn run_child(name: &str, nodes: &str) {
    let mut cmd = child::on_simulated_nodes(name, nodes);
    child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
}

/// A CPU of simulated node `node` (of two) this process may run on.
fn cpu_of(node: u32) -> Option<u32> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel writes at most its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if libc::sched_getaffinity(0, core::mem::size_of_val(&set), &mut set) != 0 {
            return None;
        }
        set
    };
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: every index is below CPU_SETSIZE.
        .find(|&c| c % 2 == node as usize && unsafe { libc::CPU_ISSET(c, &set) })
        .map(|c| c as u32)
}

/// The node the allocator books the live block `p` on.
fn node_of(p: *const u8) -> u32 {
    // SAFETY: callers pass live blocks of the global allocator that no other thread frees.
    unsafe { tieralloc::probe::block_node(p) }
}

/// On a fresh thread: settle its heap on node 0, move the thread to node 1 (pinning only: no
/// allocator call outside the scope after the move), then allocate 200 small blocks inside a
/// local scope (`labelled` or not). Returns the nodes the blocks are booked on.
fn local_scope_after_a_move(labelled: bool) -> Option<Vec<u32>> {
    let (c0, c1) = (cpu_of(0)?, cpu_of(1)?);
    let nodes = std::thread::spawn(move || {
        tieralloc::numa::pin_current_thread_to_cpu(c0).unwrap();
        let warm = vec![1u8; 100];
        tieralloc::collect();
        assert_eq!(
            tieralloc::probe::heap_node(),
            0,
            "the heap starts on node 0"
        );
        let local = Placed::local().expect("local placement");
        tieralloc::numa::pin_current_thread_to_cpu(c1).unwrap();
        let here = tieralloc::numa::current_cpu_and_node().map(|(_, n)| n);
        assert_eq!(here, Some(1), "the thread runs on node 1 now");
        let blocks: Vec<Box<[u8; 100]>> = if labelled {
            let _g = place_labeled(local, "rev19-local");
            (0..200).map(|_| Box::new([5u8; 100])).collect()
        } else {
            let _g = tieralloc::place(local);
            (0..200).map(|_| Box::new([5u8; 100])).collect()
        };
        let nodes: Vec<u32> = blocks.iter().map(|b| node_of(b.as_ptr())).collect();
        drop((blocks, warm));
        nodes
    })
    .join()
    .unwrap();
    Some(nodes)
}

fn check_all_on_node_1(nodes: Option<Vec<u32>>) {
    let Some(nodes) = nodes else {
        println!("skipped: this process may not run on CPUs of both simulated nodes");
        return;
    };
    let off = nodes.iter().filter(|&&n| n != 1).count();
    assert_eq!(
        off,
        0,
        "{off} of {} blocks of a local scope on node 1 are booked elsewhere: {:?}",
        nodes.len(),
        &nodes[..nodes.len().min(8)]
    );
}

#[test]
fn a_labelled_local_scope_follows_a_moved_thread() {
    if !child::is_child() {
        return run_child("a_labelled_local_scope_follows_a_moved_thread", "2");
    }
    check_all_on_node_1(local_scope_after_a_move(true));
}

#[test]
fn a_local_scope_under_a_tier_policy_follows_a_moved_thread() {
    if !child::is_child() {
        return run_child(
            "a_local_scope_under_a_tier_policy_follows_a_moved_thread",
            "2,far=1",
        );
    }
    // A policy that is on (so that a local scope diverts) and routes nothing here: only
    // requests of 1 GiB or more go far.
    tieralloc::tiers::set_policy(&tieralloc::tiers::Policy {
        far_threshold: Some(1 << 30),
        ..Default::default()
    })
    .unwrap();
    check_all_on_node_1(local_scope_after_a_move(false));
}

/// `stats()`'s live bytes on node `n`.
fn live_on(n: u32) -> i64 {
    tieralloc::stats()
        .nodes
        .iter()
        .find(|s| s.node == n)
        .map_or(0, |s| s.bytes_live)
}

#[test]
fn a_demoted_huge_block_leaves_no_live_bytes_behind_once_freed() {
    if !child::is_child() {
        return run_child(
            "a_demoted_huge_block_leaves_no_live_bytes_behind_once_freed",
            "2,far=1",
        );
    }
    let Some(c0) = cpu_of(0) else {
        println!("skipped: no CPU of node 0");
        return;
    };
    std::thread::spawn(move || {
        tieralloc::numa::pin_current_thread_to_cpu(c0).unwrap();
        // Warm up: the thread's heap and whatever the statistics allocate.
        let _ = (vec![1u8; 100], tieralloc::stats());
        let layout = Layout::from_size_align(8 << 20, 16).unwrap();
        let before: Vec<i64> = (0..3).map(live_on).collect();
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(node_of(p), 0);
        // SAFETY: our own huge block, written, then moved whole (nobody frees it meanwhile).
        let r = unsafe {
            p.write_bytes(3, layout.size());
            tieralloc::tiers::demote(p, layout.size())
        }
        .expect("demotion");
        assert_eq!((r.node, r.failed), (2, 0));
        assert_eq!(node_of(p), 2, "the block is booked on the far node");
        let during: Vec<i64> = (0..3).map(live_on).collect();
        // SAFETY: the block is ours, freed once with its layout.
        unsafe { dealloc(p, layout) };
        let after: Vec<i64> = (0..3).map(live_on).collect();
        let diff: Vec<i64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        println!("live per node: before {before:?}, while demoted {during:?}, after {after:?}");
        // Each node's live bytes back to where they were (1 KiB of slack for the statistics'
        // own small blocks), none left on node 0 and none below zero on node 2.
        for (n, d) in diff.iter().enumerate() {
            assert!(
                d.abs() <= 1024,
                "node {n}: live bytes moved by {d} after the demoted block was freed \
                 (before {before:?}, after {after:?})"
            );
        }
        // While it lived on node 2, node 2 carried it.
        assert!(
            during[2] - before[2] >= layout.size() as i64,
            "node 2 did not count the demoted block: {before:?} -> {during:?}"
        );
    })
    .join()
    .unwrap();
}
