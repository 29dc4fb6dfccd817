//! Per-node live bytes when a large block is freed by a thread of another node: found by the
//! stress test (tests/stress_mi.rs) under `TIERALLOC_SIMULATE_NODES=2`, where after every
//! block was freed node 0 showed tens of MiB live and node 1 as many below zero (always a
//! multiple of 64 KiB: large blocks). Runs only with at least two nodes and two CPUs
//! (simulated or real); elsewhere it returns at once.

use std::sync::mpsc;
use std::thread;

#[global_allocator]
static A: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "stress_mi/support.rs"]
mod support;

/// Pins the calling thread to `cpu` and brings its heap there: the heap follows its CPU every
/// 16 slow paths, and freeing a large block is one.
fn go_to(cpu: usize) {
    assert!(support::pin(cpu), "cannot pin to CPU {cpu}");
    for _ in 0..64 {
        drop(std::hint::black_box(vec![1u8; 100 << 10]));
    }
}

fn node_live(s: &tieralloc::Stats, node: u32) -> i64 {
    s.nodes
        .iter()
        .find(|n| n.node == node)
        .map_or(0, |n| n.bytes_live)
}

#[test]
#[ignore = "known defect: a large block freed from another node is booked on the wrong node"]
fn large_block_freed_from_another_node_leaves_both_nodes_balanced() {
    let topo = tieralloc::topology();
    let cpus = support::allowed_cpus();
    let by_node = |node: u32| {
        let n = topo.nodes.iter().find(|n| n.id == node)?;
        n.cpus
            .iter()
            .map(|&c| c as usize)
            .find(|c| cpus.contains(c))
    };
    let (Some(cpu0), Some(cpu1)) = (by_node(0), by_node(1)) else {
        eprintln!("skipped: needs CPUs on two nodes (try TIERALLOC_SIMULATE_NODES=2)");
        return;
    };
    const SIZE: usize = 1 << 20;
    let before = tieralloc::stats();
    // The owner, on node 0, allocates and keeps running while the block is freed elsewhere.
    let (to_owner, owner_rx) = mpsc::channel::<()>();
    let (to_main, main_rx) = mpsc::channel::<usize>();
    let owner = thread::spawn(move || {
        go_to(cpu0);
        let v: Vec<u8> = vec![7u8; SIZE];
        to_main
            .send(Box::into_raw(v.into_boxed_slice()) as *mut u8 as usize)
            .unwrap();
        owner_rx.recv().unwrap();
        // Collects the remote free: the page empties and goes back.
        tieralloc::collect();
    });
    let p = main_rx.recv().unwrap();
    thread::spawn(move || {
        go_to(cpu1);
        let s = std::ptr::slice_from_raw_parts_mut(p as *mut u8, SIZE);
        // SAFETY: the owner handed us this boxed slice and no longer touches it.
        drop(unsafe { Box::from_raw(s) });
    })
    .join()
    .unwrap();
    to_owner.send(()).unwrap();
    owner.join().unwrap();
    for _ in 0..4 {
        tieralloc::collect();
    }
    let after = tieralloc::stats();
    eprintln!("{after}");
    assert_eq!(after.large_bytes_live, before.large_bytes_live, "{after}");
    // The block was on node 0 and is gone: both nodes back to where they were, to within the
    // threads' own small blocks (far below the 1 MiB block).
    for node in [0, 1] {
        let (was, now) = (node_live(&before, node), node_live(&after, node));
        assert!(
            now.abs_diff(was) < 64 << 10,
            "node {node}: live bytes {was} -> {now} after a {SIZE}-byte block on node 0 \
             was allocated and freed from node 1\n{after}"
        );
    }
}
