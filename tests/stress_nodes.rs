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

/// CPUs of nodes 0 and 1, or None (then the test is skipped).
fn two_nodes() -> Option<(usize, usize)> {
    let topo = tieralloc::topology();
    let cpus = support::allowed_cpus();
    let by_node = |node: u32| {
        let n = topo.nodes.iter().find(|n| n.id == node)?;
        n.cpus
            .iter()
            .map(|&c| c as usize)
            .find(|c| cpus.contains(c))
    };
    let r = by_node(0).zip(by_node(1));
    if r.is_none() {
        eprintln!("skipped: needs CPUs on two nodes (try TIERALLOC_SIMULATE_NODES=2)");
    }
    r
}

/// A thread on node 0 allocates `count` blocks of `size` bytes and stays alive; a thread on
/// node 1 frees them all; the owner collects. Then every node's live bytes must be back
/// where they were, to within the threads' own small blocks (under 64 KiB).
fn allocate_on_0_free_on_1(size: usize, count: usize) {
    // The counters are process-wide: one scenario at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((cpu0, cpu1)) = two_nodes() else {
        return;
    };
    let before = tieralloc::stats();
    let (to_owner, owner_rx) = mpsc::channel::<()>();
    let (to_main, main_rx) = mpsc::channel::<Vec<usize>>();
    let owner = thread::spawn(move || {
        go_to(cpu0);
        let blocks = (0..count)
            .map(|_| Box::into_raw(vec![7u8; size].into_boxed_slice()) as *mut u8 as usize)
            .collect();
        to_main.send(blocks).unwrap();
        owner_rx.recv().unwrap();
        // Collects the remote frees: pages empty and go back.
        tieralloc::collect();
    });
    let blocks = main_rx.recv().unwrap();
    thread::spawn(move || {
        go_to(cpu1);
        for p in blocks {
            let s = std::ptr::slice_from_raw_parts_mut(p as *mut u8, size);
            // SAFETY: the owner handed us these boxed slices and no longer touches them.
            drop(unsafe { Box::from_raw(s) });
        }
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
    for node in [0, 1] {
        let (was, now) = (node_live(&before, node), node_live(&after, node));
        assert!(
            now.abs_diff(was) < 64 << 10,
            "node {node}: live bytes {was} -> {now} after {count} blocks of {size} bytes on \
             node 0 were allocated and freed from node 1\n{after}"
        );
    }
}

#[test]
fn large_block_freed_from_another_node_leaves_both_nodes_balanced() {
    allocate_on_0_free_on_1(1 << 20, 1);
}

/// 4 000 blocks of 1 KiB: 63 full pages, so most frees take the delayed path.
#[test]
fn small_blocks_freed_from_another_node_leave_both_nodes_balanced() {
    allocate_on_0_free_on_1(1000, 4000);
}
