//! What a reader of `stats()` can see while threads exit (review rev35). A thread's exit (and
//! a heap's move to another node, `rehome`) folds its heap's per-node net live bytes into the
//! retired totals under the registry lock; `stats()` walks the live heaps under that lock. A
//! fold between the walk and the read of the retired totals counted that heap's net twice:
//! a thread that freed 2 MiB of another thread's blocks and exited showed its node 2 MiB
//! below the truth, below zero.

use std::time::Duration;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

const BLOCKS: usize = 64;
const SIZE: usize = 32 << 10;

struct Send_(Vec<usize>);

fn node_live() -> (i64, i64) {
    let s = tieralloc::stats();
    let min = s.nodes.iter().map(|n| n.bytes_live).min().unwrap_or(0);
    let sum = s.nodes.iter().map(|n| n.bytes_live).sum();
    (min, sum)
}

#[test]
fn a_thread_exiting_while_stats_reads_is_not_counted_twice() {
    const NAME: &str = "a_thread_exiting_while_stats_reads_is_not_counted_twice";
    if !child::is_child() {
        let mut cmd = child::this_test(NAME);
        cmd.env_remove("TIERALLOC_SIMULATE_NODES");
        return child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
    }
    let rounds: usize = std::env::var("STATS_SNAPSHOT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut low, mut low_sum, mut reads) = (i64::MAX, i64::MAX, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (m, s) = node_live();
                low = low.min(m);
                low_sum = low_sum.min(s);
                reads += 1;
            }
            (low, low_sum, reads)
        })
    };
    for _ in 0..rounds {
        let blocks = Send_(
            (0..BLOCKS)
                .map(|_| Box::into_raw(Box::new([1u8; SIZE])) as usize)
                .collect(),
        );
        std::thread::spawn(move || {
            let b = blocks;
            for p in b.0 {
                // SAFETY: each a live `Box<[u8; SIZE]>` made above, freed once here.
                drop(unsafe { Box::from_raw(p as *mut [u8; SIZE]) });
            }
        })
        .join()
        .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (low, low_sum, reads) = reader.join().unwrap();
    println!("{reads} reads, lowest node {low}, lowest sum {low_sum}");
    assert!(
        low >= 0 && low_sum >= 0,
        "a node's live bytes read below zero: lowest node {low}, lowest sum {low_sum} ({reads} reads, {rounds} exits of threads that freed {} B each)",
        BLOCKS * SIZE
    );
}

/// One thread allocates 2 MiB a round and hands the blocks to a long-lived thread that frees
/// them, 20 000 rounds, under `TIERALLOC_SIMULATE_NODES=2` with both threads unpinned (the
/// scheduler moves them between the two CPUs, so between nodes: many frees are cross-node,
/// booked in `CROSS_FREED_BYTES`, and heaps move). A reader calls `stats()` throughout. A
/// snapshot reads heaps one after another while their owners count, so it may be off by the
/// blocks in flight, a few of them (bound: 256 KiB, eight 32 KiB blocks); it must not count
/// frees of blocks allocated after it read the allocating heap: that drove a node hundreds of
/// MB below zero when the reader was held up between the heap walk and its read of the
/// cross-node frees.
#[test]
fn cross_node_frees_while_stats_reads_stay_within_the_blocks_in_flight() {
    const NAME: &str = "cross_node_frees_while_stats_reads_stay_within_the_blocks_in_flight";
    if !child::is_child() {
        let mut cmd = child::on_simulated_nodes(NAME, "2");
        return child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut low, mut reads) = (i64::MAX, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                low = low.min(node_live().0);
                reads += 1;
            }
            (low, reads)
        })
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Send_>(4);
    let freer = std::thread::spawn(move || {
        for b in rx {
            for p in b.0 {
                // SAFETY: each a live `Box<[u8; SIZE]>` made below, freed once here.
                drop(unsafe { Box::from_raw(p as *mut [u8; SIZE]) });
            }
        }
    });
    let rounds = 20_000;
    for _ in 0..rounds {
        let blocks = Send_(
            (0..BLOCKS)
                .map(|_| Box::into_raw(Box::new([1u8; SIZE])) as usize)
                .collect(),
        );
        tx.send(blocks).unwrap();
    }
    drop(tx);
    freer.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (low, reads) = reader.join().unwrap();
    println!("{reads} reads, lowest node {low}");
    assert!(
        low >= -256 * 1024,
        "a node's live bytes read far below zero: lowest {low} ({reads} reads, {rounds} rounds of {} B)",
        BLOCKS * SIZE
    );
}
