//! A huge block (over 2 MiB) that `realloc` grows inside a placement scope: the block moves
//! (a bigger mapping, a new address), and a reallocation that moves its block inside a scope
//! places the new block by the scope (docs/tiers.md, "Deciding placement in code"), so the
//! grown block is on the scope's node, not kept on the node it was on.
//!
//! Under `TIERALLOC_SIMULATE_NODES=2,far=1` (a child process, since the variable is read at
//! start-up; pinned to CPU 0, node 0): a 4 MiB `Vec` built outside a `far()` scope and grown
//! to 20 MiB inside it is on node 2 afterwards; one grown inside a labelled `local()` scope
//! counts to its label.

use std::time::Duration;
use tieralloc::{with_placement, with_placement_labeled, Placed};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;
#[path = "common/live.rs"]
mod live;

/// The node `stats()` books the live block at `p` on.
fn node_of(p: *const u8) -> u32 {
    // SAFETY: live blocks of the global allocator that no other thread frees.
    unsafe { tieralloc::probe::block_node(p) }
}

#[test]
fn inner_a_huge_block_grown_in_a_scope_is_placed_by_it() {
    if !child::is_child() {
        return;
    }
    tieralloc::numa::pin_current_thread_to_node(0).unwrap();
    let far = Placed::far().unwrap();
    assert_eq!(far.node_id(), Some(2));

    let mut v: Vec<u8> = vec![1u8; 4 << 20];
    assert_eq!(node_of(v.as_ptr()), 0, "built outside the scope: node 0");
    let before = v.as_ptr();
    with_placement(far, || v.reserve_exact(16 << 20));
    assert_ne!(v.as_ptr(), before, "the grown block moved");
    assert_eq!(node_of(v.as_ptr()), 2, "grown (moved) in a far scope");
    assert!(v.iter().all(|&b| b == 1));

    let mut w: Vec<u8> = vec![2u8; 4 << 20];
    let local = Placed::local().unwrap();
    with_placement_labeled(local, "grown_huge", || w.reserve_exact(16 << 20));
    assert!(
        live::label_live("grown_huge") >= (20 << 20),
        "grown (moved) in a labelled scope: {} bytes to its label",
        live::label_live("grown_huge")
    );
    assert!(w.iter().all(|&b| b == 2));
}

#[test]
fn huge_blocks_grown_in_a_scope_are_placed_by_it() {
    if child::is_child() {
        return;
    }
    let mut cmd = child::on_simulated_nodes(
        "inner_a_huge_block_grown_in_a_scope_is_placed_by_it",
        "2,far=1",
    );
    child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
}
