//! The pool of empty segments gives them back to the OS: a collection unmaps the pooled
//! segments of its thread's node whose time is up, and a forced one (`tieralloc::collect`)
//! counts every pooled segment's time as up. Without it a program whose threads once held
//! much memory would keep it reserved (and, unpurged, resident) for good.
//!
//! The only test here: it reads process-wide counters.

use std::alloc::{GlobalAlloc, Layout};
use std::thread;

#[path = "common/nodes.rs"]
mod nodes;

#[global_allocator]
static A: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const SEGMENT: u64 = 4 << 20;

#[test]
fn a_collection_unmaps_the_pooled_segments() {
    // This thread and the worker (which inherits the affinity) on one node: a collection
    // looks only at its own node's pool. (If that node's CPUs are outside our cpuset, they
    // run where they may.)
    nodes::move_to_node(nodes::cpu_nodes()[0]);
    // A thread fills several segments with large blocks, frees them and exits: its emptied
    // segments go to the pool, unpurged.
    thread::spawn(|| {
        let l = Layout::from_size_align(256 << 10, 8).unwrap();
        let blocks: Vec<*mut u8> = (0..48)
            .map(|k| {
                // SAFETY: non-zero size.
                let p = unsafe { A.alloc(l) };
                assert!(!p.is_null());
                // SAFETY: p holds 256 KiB.
                unsafe { std::ptr::write_bytes(p, k, l.size()) };
                p
            })
            .collect();
        for p in blocks {
            // SAFETY: a live block of this layout, freed once.
            unsafe { A.dealloc(p, l) };
        }
    })
    .join()
    .unwrap();
    let before = tieralloc::stats();
    assert!(
        before.segments_pooled >= 1,
        "the exited thread's 12 MiB left no segment in the pool\n{before}"
    );
    tieralloc::collect();
    let after = tieralloc::stats();
    assert_eq!(after.segments_pooled, 0, "pooled segments kept\n{after}");
    assert!(
        after.bytes_reserved + before.segments_pooled * SEGMENT <= before.bytes_reserved,
        "reserved {} -> {} with {} segments unmapped from the pool",
        before.bytes_reserved,
        after.bytes_reserved,
        before.segments_pooled
    );
}
