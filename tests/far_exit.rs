//! Large blocks on a thread heap's far segment that outlive their thread (docs/correctness.md,
//! "Per-node live bytes of blocks a tier policy ... placed on another node's segment").
//!
//! Under `TIERALLOC_SIMULATE_NODES=2,far=1` a thread of node 0 takes a segment of the far,
//! CPU-less node 2 for its heap (a near budget spent: its next segment spills there), then
//! allocates three 300 KiB blocks, which are carved from that segment's free slices. While
//! they live, node 2's live bytes hold them, before and after the thread's exit. The blocks
//! are freed by the main thread (node 0) after the thread has exited, or by the thread itself
//! before it exits: either way, after collections, node 2's live bytes are back to their
//! baseline exactly (the total and the CPU nodes' within 1 KiB, see `STD_SLACK`), and the far
//! segment is gone (no segment abandoned, node 2's committed bytes and the segment count as
//! before). A third check leaves one block live at the exit: nobody frees into the segment,
//! yet collections tend it (the freed blocks' pages are purged).
//!
//! Each check runs in a child process (the variable is read once, at start-up).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tieralloc::tiers::{self, Policy};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;
#[path = "common/nodes.rs"]
mod nodes;

/// The far node of `2,far=1`.
const FAR: u32 = 2;
/// Bytes of each large block (5 slices of 64 KiB once rounded up).
const SIZE: usize = 300 << 10;
/// How many.
const N: usize = 3;

fn run_child(inner: &str) {
    let mut cmd = child::on_simulated_nodes(inner, "2,far=1");
    child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
}

/// What the checks compare: live bytes (total and per node), node 2's committed bytes, and
/// the segments mapped and abandoned.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Snapshot {
    live: i64,
    nodes: [i64; 3],
    far_committed: u64,
    segments: u64,
    abandoned: u64,
}

fn snapshot() -> Snapshot {
    let s = tieralloc::stats();
    let node = |n: u32| {
        s.nodes
            .iter()
            .find(|x| x.node == n)
            .unwrap_or_else(|| panic!("stats() shows no node {n}"))
    };
    Snapshot {
        live: s.bytes_live as i64,
        nodes: [0, 1, 2].map(|n| node(n).bytes_live),
        far_committed: node(FAR).bytes_committed,
        segments: s.segments,
        abandoned: s.segments_abandoned,
    }
}

/// The addresses of the blocks the last thread freed before its exit (0: none), kept without
/// allocating (a block the thread allocated would keep its far segment abandoned).
static FREED: [AtomicUsize; N] = [const { AtomicUsize::new(0) }; N];

/// How many of the pages of the blocks of `SIZE` bytes at `addrs` (page-aligned: large
/// blocks start at a slice) are resident (mincore).
fn resident(addrs: &[usize]) -> usize {
    let pages = SIZE / 4096;
    let mut v = vec![0u8; pages];
    let mut n = 0;
    for &a in addrs {
        // SAFETY: [a, a + SIZE) is in a segment that stays mapped (abandoned, with a block
        // live); mincore only reads residency into v, which has a byte per page.
        let r = unsafe { libc::mincore(a as *mut libc::c_void, SIZE, v.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        n += v.iter().filter(|&&b| b & 1 != 0).count();
    }
    n
}

fn node_of(p: *const u8) -> u32 {
    // SAFETY: p is a live block of ours.
    unsafe { tieralloc::probe::block_node(p) }
}

/// On a fresh thread pinned to node 0: a segment of node 2 for its heap (one small block
/// allocated while the near budget is spent), then `N` blocks of `SIZE` bytes carved from it.
/// All but the first `keep` blocks are freed on the thread before it exits; those are handed
/// back, with node 2's live bytes while all were the thread's.
fn far_blocks_from_a_thread(keep: usize) -> (Vec<Vec<u8>>, i64) {
    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(N);
    std::thread::spawn(move || {
        assert!(nodes::move_to_node(0), "pin to simulated node 0");
        assert_eq!(tieralloc::probe::heap_node(), 0);
        tiers::set_policy(&Policy {
            near_budget: Some(1),
            ..Policy::default()
        })
        .unwrap();
        let small = Box::new(7u64);
        tiers::set_policy(&Policy::default()).unwrap();
        assert_eq!(node_of(&*small as *const u64 as *const u8), FAR);
        for i in 0..N {
            blocks.push(vec![i as u8 + 1; SIZE]);
        }
        drop(small);
        for b in &blocks {
            assert_eq!(
                node_of(b.as_ptr()),
                FAR,
                "a large block not on the far segment"
            );
        }
        let far_live = snapshot().nodes[FAR as usize];
        for (i, f) in FREED.iter().enumerate() {
            let a = blocks
                .get(i)
                .filter(|_| i >= keep)
                .map_or(0, |b| b.as_ptr() as usize);
            f.store(a, Ordering::Relaxed);
        }
        blocks.truncate(keep);
        (blocks, far_live)
    })
    .join()
    .unwrap()
}

/// Slack for the total and the CPU nodes' live bytes: the standard library's thread machinery
/// allocates a 48-byte and a 96-byte block once, for good, in one round or the other
/// (timing; seen with and without the fix), on the node of the main thread's heap, which may
/// still be node 1 where the process started before the pin to node 0 (a heap moves at its
/// next tick): a CI run saw node 1 +144 B. The far node and the segment counts are exact.
const STD_SLACK: i64 = 1 << 10;

/// The checks of both children: while the blocks live (after their thread's exit) node 2
/// holds them; after their frees and a collection, everything is as at the baseline.
fn check(free_here: bool) {
    // The threads start on node 0 (they inherit the affinity). Warm-up: the spawn, the
    // pinning and the snapshots allocate what they keep for good before the baseline.
    assert!(nodes::move_to_node(0), "pin to simulated node 0");
    drop(far_blocks_from_a_thread(0).0);
    nodes::collect_passes(4);
    let base = snapshot();
    let (blocks, owned) = far_blocks_from_a_thread(if free_here { 0 } else { N });
    for (i, b) in blocks.iter().enumerate() {
        assert!(b.iter().all(|&x| x == i as u8 + 1));
    }
    if !free_here {
        let grew = owned - base.nodes[FAR as usize];
        assert!(
            grew >= (N * SIZE) as i64,
            "far node live +{grew} B while {N} blocks of {SIZE} B lived there (their thread's)"
        );
        let s = snapshot();
        let grew = s.nodes[FAR as usize] - base.nodes[FAR as usize];
        assert!(
            grew >= (N * SIZE) as i64,
            "far node live +{grew} B after the thread's exit, with {N} blocks of {SIZE} B there \
             ({s:?} vs {base:?})"
        );
    }
    drop(blocks);
    nodes::collect_passes(4);
    let now = snapshot();
    let how = format!("after the frees (free_here: {free_here}): {now:?} vs {base:?}");
    assert!(
        (now.live - base.live).abs() < STD_SLACK,
        "total live: {how}"
    );
    assert!(
        (now.nodes[0] - base.nodes[0]).abs() < STD_SLACK,
        "node 0 live: {how}"
    );
    assert!(
        (now.nodes[1] - base.nodes[1]).abs() < STD_SLACK,
        "node 1 live: {how}"
    );
    assert_eq!(now.nodes[2], base.nodes[2], "far node live: {how}");
    assert_eq!(
        now.far_committed, base.far_committed,
        "far node committed: {how}"
    );
    assert_eq!(now.segments, base.segments, "segments: {how}");
    assert_eq!(now.abandoned, base.abandoned, "segments abandoned: {how}");
}

/// A far segment left with one block live: the thread frees two of its three blocks and
/// exits. Nobody frees into the segment, so only a collection's tending reaches it: the next
/// collections (of the main thread, on node 0) purge its free slices (node 2's committed bytes
/// drop by the two blocks' slices at least) and leave the live block booked on node 2; the
/// last free then gives the segment back.
fn check_tended() {
    assert!(nodes::move_to_node(0), "pin to simulated node 0");
    drop(far_blocks_from_a_thread(0).0);
    nodes::collect_passes(4);
    let base = snapshot();
    let (mut blocks, _) = far_blocks_from_a_thread(1);
    let exited = snapshot();
    let freed: Vec<usize> = FREED
        .iter()
        .map(|f| f.load(Ordering::Relaxed))
        .filter(|&a| a != 0)
        .collect();
    assert_eq!(freed.len(), N - 1);
    assert_eq!(
        resident(&freed),
        (N - 1) * SIZE / 4096,
        "pages of the blocks freed before the exit resident"
    );
    assert_eq!(
        exited.abandoned,
        base.abandoned + 1,
        "{exited:?} vs {base:?}"
    );
    nodes::collect_passes(4);
    let tended = snapshot();
    let slice = 64 << 10;
    let block = SIZE.div_ceil(slice) * slice;
    assert_eq!(
        resident(&freed),
        0,
        "pages of the blocks freed before the exit resident after four collections"
    );
    assert_eq!(
        tended.nodes[FAR as usize] - base.nodes[FAR as usize],
        block as i64,
        "far node live, one block left: {tended:?} vs {base:?}"
    );
    assert!(blocks[0].iter().all(|&x| x == 1));
    blocks.clear();
    nodes::collect_passes(4);
    let now = snapshot();
    assert_eq!(
        now.nodes[FAR as usize], base.nodes[FAR as usize],
        "{now:?} vs {base:?}"
    );
    assert_eq!(now.far_committed, base.far_committed, "{now:?} vs {base:?}");
    assert_eq!(now.abandoned, base.abandoned, "{now:?} vs {base:?}");
}

#[test]
fn inner_one_left_after_the_thread_exits() {
    if child::is_child() {
        check_tended();
    }
}

#[test]
fn inner_freed_after_the_thread_exits() {
    if child::is_child() {
        check(false);
    }
}

#[test]
fn inner_freed_before_the_thread_exits() {
    if child::is_child() {
        check(true);
    }
}

#[test]
fn far_large_blocks_freed_before_their_thread_exits_leave_nothing() {
    if !child::is_child() {
        run_child("inner_freed_before_the_thread_exits");
    }
}

#[test]
fn a_far_segment_left_with_a_live_block_is_tended_by_collections() {
    if !child::is_child() {
        run_child("inner_one_left_after_the_thread_exits");
    }
}

#[test]
fn far_large_blocks_that_outlive_their_thread_leave_nothing() {
    if !child::is_child() {
        run_child("inner_freed_after_the_thread_exits");
    }
}
