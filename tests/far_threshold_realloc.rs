//! The size threshold policy against `realloc` (docs/tiers.md, "Size threshold": every
//! allocation of at least N bytes is served from the far node's heap). A block under the
//! threshold that `realloc` grows to the threshold or past it is a block of at least N bytes
//! handed out by the global allocator: it must be on the far node, as the same request made
//! by `alloc` would be, even when the block could have grown in place (a large block over
//! free slices of its segment, a huge block into a bigger mapping). A `Vec` that grows by
//! pushes reaches its size by such `realloc`s only.
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

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Under a threshold of `threshold` bytes, on a thread of node 0: a block of `from` bytes
/// (under the threshold, so on node 0) grown by `realloc` to `to` bytes (at least the
/// threshold). Returns the node of the grown block; its contents are checked.
fn grow_across(threshold: usize, from: usize, to: usize) -> Option<u32> {
    let cpu = child::cpu_of_simulated_node(0)?;
    let node = std::thread::spawn(move || {
        tieralloc::numa::pin_current_thread_to_cpu(cpu).expect("pin");
        tieralloc::collect();
        tiers::set_policy(&Policy {
            far_threshold: Some(threshold),
            ..Policy::default()
        })
        .unwrap();
        let old = Layout::from_size_align(from, 8).unwrap();
        // SAFETY: non-zero size; written whole, then reallocated and freed once.
        let node = unsafe {
            let p = GLOBAL.alloc(old);
            assert!(!p.is_null());
            p.write_bytes(0x6b, from);
            assert_eq!(
                tieralloc::probe::block_node(p),
                0,
                "under the threshold: node 0"
            );
            let q = GLOBAL.realloc(p, old, to);
            assert!(!q.is_null());
            assert!(std::slice::from_raw_parts(q, from)
                .iter()
                .all(|&b| b == 0x6b));
            let node = tieralloc::probe::block_node(q);
            GLOBAL.dealloc(q, Layout::from_size_align(to, 8).unwrap());
            node
        };
        tiers::set_policy(&Policy::default()).unwrap();
        node
    })
    .join()
    .unwrap();
    Some(node)
}

fn run(name: &str, threshold: usize, from: usize, to: usize) {
    if !child::is_child() {
        let mut cmd = child::on_simulated_nodes(name, "2,far=1");
        return child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
    }
    match grow_across(threshold, from, to) {
        None => println!("skipped: no CPU of simulated node 0 allowed"),
        Some(node) => assert_eq!(
            node, 2,
            "a block grown by realloc from {from} to {to} bytes under a threshold of \
             {threshold} is on node {node}, not the far node 2"
        ),
    }
}

#[test]
fn a_large_block_grown_past_the_threshold_goes_far() {
    run(
        "a_large_block_grown_past_the_threshold_goes_far",
        MIB,
        512 * KIB,
        3 * MIB / 2,
    );
}

#[test]
fn a_huge_block_grown_past_the_threshold_goes_far() {
    run(
        "a_huge_block_grown_past_the_threshold_goes_far",
        8 * MIB,
        3 * MIB,
        16 * MIB,
    );
}

#[test]
fn a_medium_block_grown_past_the_threshold_goes_far() {
    run(
        "a_medium_block_grown_past_the_threshold_goes_far",
        44 * KIB,
        40 * KIB,
        45 * KIB,
    );
}
