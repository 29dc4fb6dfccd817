//! Nodes for the tests whose threads run on several of them (a NUMA machine, or
//! `TIERALLOC_SIMULATE_NODES`, where CPU c is on node c % N): which nodes have CPUs, moving
//! the calling thread's heap to a node, and tending abandoned segments from a node's thread.
//!
//! A heap tends (collects the frees made into, and gives back the emptied memory of) only its
//! own node's abandoned segments, one of each kind per collection; a test that wants every
//! exited thread's memory back tends from a thread of every node the exited threads ran on.
//!
//! Shared by several test crates with `#[path = "common/nodes.rs"] mod nodes;`; each uses
//! part of it.
#![allow(dead_code)]

use std::thread;

/// The nodes with CPUs.
pub fn cpu_nodes() -> Vec<u32> {
    tieralloc::topology()
        .nodes
        .iter()
        .filter(|n| !n.cpus.is_empty())
        .map(|n| n.id)
        .collect()
}

/// Pins the calling thread to `node`'s CPUs and moves its heap there now (a collection
/// follows the thread's node; without one the heap would notice within 16 slow paths).
/// False, and nothing changed, if the node's CPUs are outside this process's cpuset.
pub fn move_to_node(node: u32) -> bool {
    if tieralloc::numa::pin_current_thread_to_node(node).is_err() {
        return false;
    }
    tieralloc::collect();
    true
}

/// `passes` collections by the calling thread: each tends one abandoned segment of each kind
/// of the thread's node, so a node with n abandoned segments is tended through by n passes.
pub fn collect_passes(passes: usize) {
    for _ in 0..passes {
        tieralloc::collect();
    }
}

/// A fresh thread, pinned to `node` if one is given, tends what is stranded once its heap
/// exists: eight collections. Nothing happens if `node`'s CPUs are outside this process's
/// cpuset. (The thread's own blocks that outlive it, such as its handle's result, leave a
/// segment abandoned on its node in turn.)
pub fn tend_from_fresh_thread(node: Option<u32>) {
    thread::spawn(move || {
        if let Some(node) = node {
            if tieralloc::numa::pin_current_thread_to_node(node).is_err() {
                return;
            }
        }
        let v = vec![1u8; 100];
        collect_passes(8);
        drop(v);
    })
    .join()
    .unwrap();
}
