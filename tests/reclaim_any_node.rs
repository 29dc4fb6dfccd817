//! The reclaim of an emptied abandoned segment by a heap of any node (docs/correctness.md):
//! the free that brings such a segment's live count to 0 claims it and tends it, whichever
//! node the freeing thread runs on; the segment goes to its own node's pool, and every
//! node's live bytes come back exactly.
//!
//! Under `TIERALLOC_SIMULATE_NODES=2` (two CPU nodes): a thread of node 1 leaves blocks (a
//! large one and small ones) on its node-1 segment at exit, and the main thread, on node 0,
//! frees them all. A second check races such frees from threads of both nodes against their
//! collections (tending, adoption) over many rounds: the segments end up neither lost nor
//! listed twice (the counts come back), and the live bytes of each node are exact.
//!
//! Each check runs in a child process (the variable is read once, at start-up).

use std::time::Duration;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;
#[path = "common/nodes.rs"]
mod nodes;

fn run_child(inner: &str) {
    let mut cmd = child::on_simulated_nodes(inner, "2");
    child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Snapshot {
    live: i64,
    nodes: [i64; 2],
    committed: [u64; 2],
    segments: u64,
    abandoned: u64,
}

fn snapshot() -> Snapshot {
    let s = tieralloc::stats();
    let node = |n: u32| s.nodes.iter().find(|x| x.node == n).expect("node in stats");
    Snapshot {
        live: s.bytes_live as i64,
        nodes: [0, 1].map(|n| node(n).bytes_live),
        committed: [0, 1].map(|n| node(n).bytes_committed),
        segments: s.segments,
        abandoned: s.segments_abandoned,
    }
}

/// Slack for live bytes a thread's std machinery keeps once, for good (see tests/far_exit.rs).
const STD_SLACK: i64 = 1 << 10;

/// Blocks made by a fresh thread pinned to `node`: one of 300 KiB, then `small` of 64 B.
fn blocks_from_a_thread(node: u32, small: usize) -> Vec<Vec<u8>> {
    std::thread::spawn(move || {
        assert!(nodes::move_to_node(node), "pin to simulated node {node}");
        let mut v = Vec::with_capacity(small + 1);
        v.push(vec![0xa5u8; 300 << 10]);
        for i in 0..small {
            v.push(vec![i as u8; 64]);
        }
        for b in &v {
            // SAFETY: b is a live block of ours.
            let n = unsafe { tieralloc::probe::block_node(b.as_ptr()) };
            assert_eq!(n, node, "a block of the thread's own node");
        }
        v
    })
    .join()
    .unwrap()
}

/// A thread of node 1 that adopts every segment abandoned on node 1 and keeps it until told
/// to exit (blocks of 2 MiB until three in a row adopt nothing): a segment kept abandoned by
/// blocks that live for good (the standard library's, see `STD_SLACK`) is not adopted by the
/// checked thread then, whose blocks are alone in their segment.
fn keep_node_1_abandoned() -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let keeper = std::thread::spawn(move || {
        assert!(nodes::move_to_node(1), "pin to simulated node 1");
        let mut held = Vec::new();
        let mut quiet = 0;
        while quiet < 3 {
            let adopted = tieralloc::stats().pages_adopted;
            held.push(vec![1u8; 2 << 20]);
            quiet = if tieralloc::stats().pages_adopted == adopted {
                quiet + 1
            } else {
                0
            };
        }
        ready_tx.send(()).unwrap();
        done_rx.recv().unwrap();
        drop(held);
    });
    ready_rx.recv().unwrap();
    (done_tx, keeper)
}

fn check_cross_node_reclaim() {
    assert!(nodes::move_to_node(0), "pin to simulated node 0");
    drop(blocks_from_a_thread(1, 16));
    nodes::collect_passes(4);
    let (done, keeper) = keep_node_1_abandoned();
    let base = snapshot();
    let adopted = tieralloc::stats().pages_adopted;
    let blocks = blocks_from_a_thread(1, 16);
    assert_eq!(
        tieralloc::stats().pages_adopted,
        adopted,
        "the thread adopted"
    );
    let exited = snapshot();
    assert!(
        exited.nodes[1] - base.nodes[1] >= (300 << 10) + 16 * 64,
        "{exited:?} vs {base:?}"
    );
    // The last of these frees (by node 0) empties the node-1 segment: reclaimed at once.
    drop(blocks);
    let now = snapshot();
    let how = format!("{now:?} vs {base:?}");
    assert_eq!(now.abandoned, base.abandoned, "abandoned: {how}");
    for n in 0..2 {
        assert!(
            (now.nodes[n] - base.nodes[n]).abs() < STD_SLACK,
            "node {n} live: {how}"
        );
    }
    assert!((now.live - base.live).abs() < STD_SLACK, "total: {how}");
    // Pooled on node 1, and unmapped from there by the collections.
    nodes::collect_passes(4);
    let now = snapshot();
    let how = format!("{now:?} vs {base:?}");
    assert_eq!(now.segments, base.segments, "segments: {how}");
    assert_eq!(
        now.committed[1], base.committed[1],
        "node 1 committed: {how}"
    );
    done.send(()).unwrap();
    keeper.join().unwrap();
}

fn check_racing_reclaims() {
    assert!(nodes::move_to_node(0), "pin to simulated node 0");
    for node in [0, 1] {
        drop(blocks_from_a_thread(node, 8));
    }
    for node in [0, 1] {
        nodes::tend_from_fresh_thread(Some(node));
    }
    nodes::collect_passes(8);
    let base = snapshot();
    for round in 0..40u32 {
        // Blocks of exited threads of both nodes, freed from both nodes at once, each freer
        // collecting now and then (its collections tend and adopt what the other empties).
        let mut all = Vec::new();
        for node in [0, 1, 0, 1] {
            all.extend(blocks_from_a_thread(node, 24 + round as usize % 7));
        }
        let half = all.split_off(all.len() / 2);
        let freers: Vec<_> = [(0u32, all), (1, half)]
            .into_iter()
            .map(|(node, mut mine)| {
                std::thread::spawn(move || {
                    assert!(nodes::move_to_node(node));
                    let mut i = 0usize;
                    while let Some(b) = mine.pop() {
                        assert!(b.iter().all(|&x| x == b[0]));
                        drop(b);
                        i += 1;
                        if i % 5 == 0 {
                            tieralloc::collect();
                        }
                    }
                })
            })
            .collect();
        for f in freers {
            f.join().unwrap();
        }
    }
    for _ in 0..3 {
        for node in [0, 1] {
            nodes::tend_from_fresh_thread(Some(node));
        }
    }
    nodes::collect_passes(8);
    let now = snapshot();
    let how = format!("{now:?} vs {base:?}");
    assert!(now.abandoned <= base.abandoned + 2, "abandoned: {how}");
    for n in 0..2 {
        assert!(
            (now.nodes[n] - base.nodes[n]).abs() < 4 * STD_SLACK,
            "node {n} live: {how}"
        );
    }
    assert!((now.live - base.live).abs() < 4 * STD_SLACK, "total: {how}");
    let s = tieralloc::stats();
    assert_eq!(
        s.nodes.iter().map(|n| n.bytes_live).sum::<i64>(),
        s.bytes_live as i64,
        "the nodes' live bytes add up to the total"
    );
}

#[test]
fn inner_cross_node_reclaim() {
    if child::is_child() {
        check_cross_node_reclaim();
    }
}

#[test]
fn inner_racing_reclaims() {
    if child::is_child() {
        check_racing_reclaims();
    }
}

#[test]
fn a_segment_emptied_by_a_thread_of_another_node_is_reclaimed_exactly() {
    if !child::is_child() {
        run_child("inner_cross_node_reclaim");
    }
}

#[test]
fn reclaims_racing_from_both_nodes_lose_and_duplicate_nothing() {
    if !child::is_child() {
        run_child("inner_racing_reclaims");
    }
}
