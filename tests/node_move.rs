//! Threads that move between nodes, under simulated nodes (`TIERALLOC_SIMULATE_NODES=2`: a
//! thread's home node is its CPU modulo 2, so pinning it to CPU 1 moves it to node 1).
//!
//! Each scenario runs in a child process with the simulation switched on (the variable is
//! read once per process); the parent runs it under a time limit that only guards against a
//! hang (a corrupted queue can loop) and checks that the child ran and passed.
//!
//! - A thread moves to another node just before it drains its delayed frees: the drain must
//!   not hand its segments away while the rest of the list still points into them (issue 14,
//!   defect 1: one block handed to two threads).
//! - A thread frees a huge block, moves to the other node, and allocates one: it gets memory
//!   of its new node, not the mapping its cache kept from the old one (issue 14, defect 3).

use std::alloc::{alloc, dealloc, Layout};
use std::collections::BTreeMap;
use std::sync::{mpsc, Barrier};
use std::time::Duration;
use tieralloc::probe;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

/// Printed by a child scenario that ran to its end.
const DONE: &str = "node-move scenario done";

/// Runs the test `name` of this binary in a child process with two simulated nodes, and
/// fails with its output if it fails or does not finish (a hang guard: the scenario takes
/// well under a second).
fn run_child(name: &str) {
    let mut cmd = child::this_test(name);
    cmd.env("TIERALLOC_SIMULATE_NODES", "2")
        .env_remove("TIERALLOC_NUMA");
    child::run(&mut cmd, Duration::from_secs(120)).expect_success(DONE);
}

fn in_child() -> bool {
    child::is_child()
}

/// A CPU of simulated node 0 and one of node 1 (CPU c is on node c % 2) that this process
/// may run on, if it may run on both nodes. Found once, before any thread is pinned (a
/// pinned thread, and every thread it starts, may run on its one CPU only).
fn node_cpus() -> Option<[u32; 2]> {
    static CPUS: std::sync::OnceLock<Option<[u32; 2]>> = std::sync::OnceLock::new();
    *CPUS.get_or_init(find_node_cpus)
}

fn find_node_cpus() -> Option<[u32; 2]> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel writes at most its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if libc::sched_getaffinity(0, core::mem::size_of_val(&set), &mut set) != 0 {
            return None;
        }
        set
    };
    // SAFETY: every index is below CPU_SETSIZE.
    let allowed = |c: usize| unsafe { libc::CPU_ISSET(c, &set) };
    let first = |parity: usize| {
        (0..libc::CPU_SETSIZE as usize)
            .find(|&c| c % 2 == parity && allowed(c))
            .map(|c| c as u32)
    };
    Some([first(0)?, first(1)?])
}

/// Pins the calling thread to a CPU of simulated node `node`.
fn pin_node(node: u32) {
    let cpu = node_cpus().expect("checked by the caller")[node as usize];
    tieralloc::numa::pin_current_thread_to_cpu(cpu).unwrap();
}

/// Whether the child can move threads between the two nodes; says why not if it cannot.
fn can_move() -> bool {
    let ok = node_cpus().is_some();
    if !ok {
        println!("skipped: this process may not run on CPUs of both simulated nodes");
    }
    ok
}

/// Pins the calling thread to node `node` and makes its heap notice: at least 16 slow paths
/// (a large block allocated and freed is two), so the heap's periodic home-node check runs.
fn settle_on(node: u32) {
    pin_node(node);
    let big = Layout::from_size_align(200_000, 16).unwrap();
    for _ in 0..20 {
        // SAFETY: a non-zero size; the block is freed at once.
        unsafe {
            // black_box: an allocation nobody looks at may be optimised away.
            let p = std::hint::black_box(alloc(big));
            assert!(!p.is_null());
            dealloc(p, big);
        }
    }
    assert_eq!(
        probe::heap_node(),
        node,
        "the heap did not follow the thread"
    );
}

const SIZE: usize = 256;
const PAGE: usize = 64 << 10;

fn small() -> Layout {
    Layout::from_size_align(SIZE, 16).unwrap()
}

fn alloc_small() -> usize {
    // SAFETY: a non-zero size.
    let p = unsafe { alloc(small()) };
    assert!(!p.is_null());
    p as usize
}

fn free_small(p: usize) {
    // SAFETY: p came from alloc_small and is freed once.
    unsafe { dealloc(p as *mut u8, small()) }
}

/// `n` blocks, each filled with `id`.
fn fill(n: usize, id: u8) -> Vec<usize> {
    (0..n)
        .map(|_| {
            let p = alloc_small();
            // SAFETY: p holds SIZE bytes.
            unsafe { std::ptr::write_bytes(p as *mut u8, id, SIZE) };
            p
        })
        .collect()
}

/// How many of `blocks` no longer hold `id` in every byte.
fn overwritten(blocks: &[usize], id: u8) -> usize {
    blocks
        .iter()
        // SAFETY: every block is live and holds SIZE bytes.
        .filter(|&&p| {
            unsafe { std::slice::from_raw_parts(p as *const u8, SIZE) }
                .iter()
                .any(|&b| b != id)
        })
        .count()
}

/// One round of the drain-then-move scenario; returns what went wrong, if anything.
fn drain_then_move_round() -> Result<(), String> {
    // Thread A fills 48 pages of 256-byte blocks on node 0; each page goes full when the
    // next one starts, so the first remote free into it goes to A's delayed stack.
    let (to_c, from_a) = mpsc::channel::<usize>();
    let barrier = &Barrier::new(2);
    std::thread::scope(|s| {
        let c = s.spawn(move || {
            settle_on(0);
            // The block A hands over lies in a segment A has given up (it moved): freeing it
            // adopts that segment (claim on free), as a thread of A's old node does.
            let adopt = from_a.recv().unwrap();
            free_small(adopt);
            barrier.wait();
            let mine = fill(6144, 0xC0);
            barrier.wait();
            let bad = overwritten(&mine, 0xC0);
            // SAFETY: our own live blocks.
            let foreign = mine
                .iter()
                .filter(|&&p| !unsafe { probe::owned_by_caller(p as *const u8) })
                .count();
            (mine, bad, foreign)
        });
        let a = s.spawn(move || {
            settle_on(0);
            let blocks = fill(48 * (PAGE / SIZE), 0xA0);
            let mut pages: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for &p in &blocks {
                pages.entry(p & !(PAGE - 1)).or_default().push(p);
            }
            // The page of the last block is the current one, not full.
            pages.remove(&(blocks[blocks.len() - 1] & !(PAGE - 1)));
            assert!(pages.len() >= 40, "{} pages", pages.len());
            // Half of each full page is freed by another thread of node 0: one delayed free
            // per page (at least 40 on A's stack), the rest remote frees onto the pages.
            let (mut given, mut kept) = (vec![], vec![]);
            for v in pages.values() {
                for (i, &p) in v.iter().enumerate() {
                    if i % 2 == 0 {
                        given.push(p);
                    } else {
                        kept.push(p);
                    }
                }
            }
            std::thread::scope(|s2| {
                s2.spawn(|| {
                    settle_on(0);
                    for &p in &given {
                        free_small(p);
                    }
                });
            });
            // A moves to node 1, then drains: each delayed block lands in a full page, so
            // each is a slow path, and every 16th of those is the heap's home-node check.
            pin_node(1);
            tieralloc::collect();
            settle_on(1);
            // Hand a block of A's old segments to C, which adopts them.
            to_c.send(kept.swap_remove(kept.len() / 2)).unwrap();
            barrier.wait();
            let mine = fill(6144, 0xA1);
            barrier.wait();
            let bad = overwritten(&mine, 0xA1);
            // SAFETY: our own live blocks.
            let foreign = mine
                .iter()
                .filter(|&&p| !unsafe { probe::owned_by_caller(p as *const u8) })
                .count();
            let kept_bad = overwritten(&kept, 0xA0);
            (mine, bad, foreign, kept, kept_bad)
        });
        let (a_new, a_bad, a_foreign, kept, kept_bad) = a.join().unwrap();
        let (c_new, c_bad, c_foreign) = c.join().unwrap();
        let mut all: Vec<usize> = a_new.iter().chain(&c_new).copied().collect();
        all.sort_unstable();
        let twice = all.windows(2).filter(|w| w[0] == w[1]).count();
        let result = if twice + a_bad + c_bad + kept_bad + a_foreign + c_foreign == 0 {
            Ok(())
        } else {
            Err(format!(
                "{twice} blocks handed to both threads; overwritten: {a_bad} of A's, {c_bad} \
                 of C's, {kept_bad} of A's older ones; blocks not of the allocating heap's own \
                 segments: {a_foreign} of A's, {c_foreign} of C's"
            ))
        };
        for p in a_new.into_iter().chain(c_new).chain(kept) {
            free_small(p);
        }
        result
    })
}

#[test]
fn child_drain_then_move() {
    if !in_child() {
        return;
    }
    if !can_move() {
        println!("{DONE}");
        return;
    }
    assert_eq!(
        tieralloc::topology().source,
        tieralloc::topology::TopologySource::Simulated
    );
    // One round shows the defect in most runs; four in every run seen.
    for round in 0..4 {
        if let Err(e) = drain_then_move_round() {
            panic!("round {round}: {e}");
        }
    }
    println!("{DONE}");
}

/// Issue 14, defect 1. A thread whose home node changed used to notice it in the middle of
/// draining its delayed frees (a free of the drain is a slow path, and every 16th slow path
/// checks the home node), and hand every segment away (`rehome`) while the rest of the
/// drained list still pointed into them; the walk went on freeing into pages it no longer
/// owned and put them back in its queues, and a thread of the old node that freed into
/// such a segment adopted it: both then allocated from the same pages.
#[test]
fn a_drain_cut_short_by_a_node_move_hands_no_block_twice() {
    if in_child() {
        return;
    }
    run_child("child_drain_then_move");
}

const MIB: usize = 1 << 20;

/// Resident bytes of `[p, p+len)` (page-rounded).
fn resident(p: usize, len: usize) -> usize {
    let page = 4096;
    let start = p & !(page - 1);
    let pages = (p + len - start).div_ceil(page);
    let mut v = vec![0u8; pages];
    // SAFETY: mincore reads the page tables of a range we own and writes one byte per page
    // into v, which holds that many.
    let r = unsafe { libc::mincore(start as *mut libc::c_void, pages * page, v.as_mut_ptr()) };
    assert_eq!(r, 0);
    v.iter().filter(|&&b| b & 1 != 0).count() * page
}

#[test]
fn child_huge_after_move() {
    if !in_child() {
        return;
    }
    if !can_move() {
        println!("{DONE}");
        return;
    }
    std::thread::spawn(|| {
        // Small enough for the cache (at most 8 MiB of mappings, headers included).
        let big = Layout::from_size_align(6 * MIB, 16).unwrap();
        for i in 0..4u32 {
            let (from, to) = (i % 2, 1 - i % 2);
            settle_on(from);
            // SAFETY: a non-zero size; each block is freed once, and read only while live.
            unsafe {
                let p = alloc(big);
                assert!(!p.is_null() && probe::is_huge(p));
                assert_eq!(probe::block_node(p), from);
                std::ptr::write_bytes(p, 0x5A, big.size());
                // Keep the writes (memory freed right after is fair game for the optimiser).
                dealloc(std::hint::black_box(p), big);
                // Moved, but no slow path since: the heap has not looked at its node yet.
                pin_node(to);
                let q = alloc(big);
                assert!(!q.is_null());
                let node = probe::block_node(q);
                // The cached mapping was filled, so every page of it is resident; a fresh
                // one has only its header's pages (2 MiB at most with transparent huge
                // pages) until written.
                let reused = resident(q as usize + 3 * MIB, 3 * MIB);
                dealloc(q, big);
                assert_eq!(
                    node, to,
                    "round {i}: a huge block of node {from} for a thread on node {to}"
                );
                assert_eq!(
                    reused, 0,
                    "round {i}: the mapping cached on node {from} was reused"
                );
            }
        }
    })
    .join()
    .unwrap();
    println!("{DONE}");
}

/// Issue 14, defect 3. A thread's cache of freed huge mappings holds mappings of its heap's
/// node; a thread that moved to another node went on being served from it (and mapping
/// fresh huge blocks on its old node) until its heap noticed the move, up to 16 slow paths
/// later. A huge allocation now checks the node first.
#[test]
fn a_moved_thread_gets_huge_blocks_of_its_new_node() {
    if in_child() {
        return;
    }
    run_child("child_huge_after_move");
}

#[test]
fn child_collect_after_move() {
    if !in_child() {
        return;
    }
    if !can_move() {
        println!("{DONE}");
        return;
    }
    // A large block (a page of its own) left live in a segment of node 1 by a thread that
    // exited: the segment is abandoned on node 1.
    let big = Layout::from_size_align(MIB, 16).unwrap();
    let live_at_start = tieralloc::stats().large_bytes_live;
    let left = std::thread::spawn(move || {
        settle_on(1);
        // SAFETY: a non-zero size; freed once, by the thread below.
        let p = unsafe { alloc(big) };
        assert!(!p.is_null());
        // SAFETY: p is live.
        assert_eq!(unsafe { probe::block_node(p) }, 1);
        p as usize
    })
    .join()
    .unwrap();
    std::thread::spawn(move || {
        settle_on(0);
        // Moved, but no slow path since: the heap has not looked at its node yet. The free
        // is a cross-node free into an abandoned segment: it goes on the page's remote list,
        // for a heap of node 1 to collect when it tends the segment.
        pin_node(1);
        // SAFETY: allocated above with this layout, freed once.
        unsafe { dealloc(left as *mut u8, big) };
        tieralloc::collect();
        assert_eq!(
            probe::heap_node(),
            1,
            "collect() ran for the node the thread left"
        );
        // Each collection tends one segment of each abandoned list of its node (round
        // robin); the child holds only a few.
        let mut live = 0;
        for _ in 0..32 {
            live = tieralloc::stats().large_bytes_live;
            if live == live_at_start {
                break;
            }
            tieralloc::collect();
        }
        assert_eq!(
            live, live_at_start,
            "the large block freed into node 1's abandoned segment stays counted live"
        );
    })
    .join()
    .unwrap();
    println!("{DONE}");
}

/// `tieralloc::collect()` on a thread that moved to another node (and has not taken the 16
/// slow paths after which its heap notices) collected for the node it left: it tended that
/// node's abandoned segments, never those of the node it runs on. Tests that free what
/// exited threads left and then collect on a thread of each node (churn.rs) left frees
/// uncollected in the other node's abandoned segments (large bytes counted live, segments
/// stranded). A collection now moves the heap first.
#[test]
fn collect_on_a_moved_thread_tends_its_new_node() {
    if in_child() {
        return;
    }
    run_child("child_collect_after_move");
}
