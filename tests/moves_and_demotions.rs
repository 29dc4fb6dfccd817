//! Threads that move between nodes, and tier placement, under simulated nodes
//! (`TIERALLOC_SIMULATE_NODES`: CPU c is on node c % N, so pinning a thread to CPU 1 moves it
//! to node 1). Each scenario runs in a child process of its own (the variable is read once per
//! process); the parent checks that the child's one test passed.
//!
//! - A `Placed::local()` scope places "on the thread's home node, decided at each allocation"
//!   (`Placed::local`, `Scope::Local`). A thread that moved to another node and then allocates
//!   only inside such a scope (labelled, or with a tier policy set, so that the scope
//!   diverts) must get memory of the node it runs on, not of the node its heap was on when its
//!   own heap last took a slow path (the scope's allocations never reach that heap's ticks).
//! - A huge block demoted to the far node and then freed: the per-node live bytes of
//!   `stats()` go back to where they were on every node (they must not stay up on the node the
//!   block was allocated on and below zero on the far node).

use std::alloc::{alloc, dealloc, Layout};
use std::time::Duration;
use tieralloc::{place_labeled, Placed};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;
#[path = "common/live.rs"]
mod live;

/// Runs the test `name` of this binary in a child on simulated nodes `nodes`.
fn run_child(name: &str, nodes: &str) {
    let mut cmd = child::on_simulated_nodes(name, nodes);
    child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
}

/// The node the allocator books the live block `p` on.
fn node_of(p: *const u8) -> u32 {
    // SAFETY: callers pass live blocks of the global allocator that no other thread frees.
    unsafe { tieralloc::probe::block_node(p) }
}

/// On a fresh thread: settle its heap on node 0, move the thread to node 1 (pinning only: no
/// allocator call outside the scope after the move), then allocate 200 small blocks inside a
/// local scope (`labelled` or not). Returns the nodes the blocks are booked on.
fn local_scope_after_a_move(labelled: bool) -> Option<Vec<u32>> {
    let (c0, c1) = (
        child::cpu_of_simulated_node(0)?,
        child::cpu_of_simulated_node(1)?,
    );
    let nodes = std::thread::spawn(move || {
        tieralloc::numa::pin_current_thread_to_cpu(c0).unwrap();
        let warm = vec![1u8; 100];
        tieralloc::collect();
        assert_eq!(
            tieralloc::probe::heap_node(),
            0,
            "the heap starts on node 0"
        );
        let local = Placed::local().expect("local placement");
        tieralloc::numa::pin_current_thread_to_cpu(c1).unwrap();
        let here = tieralloc::numa::current_cpu_and_node().map(|(_, n)| n);
        assert_eq!(here, Some(1), "the thread runs on node 1 now");
        let blocks: Vec<Box<[u8; 100]>> = if labelled {
            let _g = place_labeled(local, "rev19-local");
            (0..200).map(|_| Box::new([5u8; 100])).collect()
        } else {
            let _g = tieralloc::place(local);
            (0..200).map(|_| Box::new([5u8; 100])).collect()
        };
        let nodes: Vec<u32> = blocks.iter().map(|b| node_of(b.as_ptr())).collect();
        drop((blocks, warm));
        nodes
    })
    .join()
    .unwrap();
    Some(nodes)
}

fn check_all_on_node_1(nodes: Option<Vec<u32>>) {
    let Some(nodes) = nodes else {
        println!("skipped: this process may not run on CPUs of both simulated nodes");
        return;
    };
    let off = nodes.iter().filter(|&&n| n != 1).count();
    assert_eq!(
        off,
        0,
        "{off} of {} blocks of a local scope on node 1 are booked elsewhere: {:?}",
        nodes.len(),
        &nodes[..nodes.len().min(8)]
    );
}

#[test]
fn a_labelled_local_scope_follows_a_moved_thread() {
    if !child::is_child() {
        return run_child("a_labelled_local_scope_follows_a_moved_thread", "2");
    }
    check_all_on_node_1(local_scope_after_a_move(true));
}

#[test]
fn a_local_scope_under_a_tier_policy_follows_a_moved_thread() {
    if !child::is_child() {
        return run_child(
            "a_local_scope_under_a_tier_policy_follows_a_moved_thread",
            "2,far=1",
        );
    }
    // A policy that is on (so that a local scope diverts) and routes nothing here: only
    // requests of 1 GiB or more go far.
    tieralloc::tiers::set_policy(&tieralloc::tiers::Policy {
        far_threshold: Some(1 << 30),
        ..Default::default()
    })
    .unwrap();
    check_all_on_node_1(local_scope_after_a_move(false));
}

#[test]
fn a_demoted_huge_block_leaves_no_live_bytes_behind_once_freed() {
    if !child::is_child() {
        return run_child(
            "a_demoted_huge_block_leaves_no_live_bytes_behind_once_freed",
            "2,far=1",
        );
    }
    let Some(c0) = child::cpu_of_simulated_node(0) else {
        println!("skipped: no CPU of node 0");
        return;
    };
    std::thread::spawn(move || {
        tieralloc::numa::pin_current_thread_to_cpu(c0).unwrap();
        // Warm up: the thread's heap and whatever the statistics allocate.
        let _ = (vec![1u8; 100], tieralloc::stats());
        let layout = Layout::from_size_align(8 << 20, 16).unwrap();
        let before: Vec<i64> = (0..3).map(live::node_live).collect();
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(node_of(p), 0);
        // SAFETY: our own huge block, written, then moved whole (nobody frees it meanwhile).
        let r = unsafe {
            p.write_bytes(3, layout.size());
            tieralloc::tiers::demote(p, layout.size())
        }
        .expect("demotion");
        assert_eq!((r.node, r.failed), (2, 0));
        assert_eq!(node_of(p), 2, "the block is booked on the far node");
        let during: Vec<i64> = (0..3).map(live::node_live).collect();
        // SAFETY: the block is ours, freed once with its layout.
        unsafe { dealloc(p, layout) };
        let after: Vec<i64> = (0..3).map(live::node_live).collect();
        let diff: Vec<i64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        println!("live per node: before {before:?}, while demoted {during:?}, after {after:?}");
        // Each node's live bytes back to where they were (1 KiB of slack for the statistics'
        // own small blocks), none left on node 0 and none below zero on node 2.
        for (n, d) in diff.iter().enumerate() {
            assert!(
                d.abs() <= 1024,
                "node {n}: live bytes moved by {d} after the demoted block was freed \
                 (before {before:?}, after {after:?})"
            );
        }
        // While it lived on node 2, node 2 carried it.
        assert!(
            during[2] - before[2] >= layout.size() as i64,
            "node 2 did not count the demoted block: {before:?} -> {during:?}"
        );
    })
    .join()
    .unwrap();
}

/// `stats()`'s committed bytes per node (0, 1, 2).
/// In the parent: runs test `name` in a child on two simulated CPU nodes and a far one, and
/// returns None. In the child: the CPUs of nodes 0 and 1, with the calling thread on node 1,
/// its first allocations and statistics made and collected (so that what the test measures
/// from here on is its own); None if the machine has no CPU for one of the nodes.
fn child_on_node_1(name: &str) -> Option<(u32, u32)> {
    if !child::is_child() {
        run_child(name, "2,far=1");
        return None;
    }
    let (c0, c1) = (
        child::cpu_of_simulated_node(0)?,
        child::cpu_of_simulated_node(1)?,
    );
    tieralloc::numa::pin_current_thread_to_cpu(c1).unwrap();
    let _ = (vec![1u8; 100], tieralloc::stats(), committed());
    tieralloc::collect();
    Some((c0, c1))
}

/// For each CPU of `cpus` in turn, a thread pinned there collects `rounds` times (tending its
/// node's abandoned segments) and exits.
fn tend_from(cpus: &[u32], rounds: usize) {
    for &c in cpus {
        std::thread::spawn(move || {
            tieralloc::numa::pin_current_thread_to_cpu(c).unwrap();
            for _ in 0..rounds {
                tieralloc::collect();
            }
        })
        .join()
        .unwrap();
    }
}

fn committed() -> Vec<u64> {
    let s = tieralloc::stats();
    (0..3)
        .map(|n| {
            s.nodes
                .iter()
                .find(|x| x.node == n)
                .map_or(0, |x| x.bytes_committed)
        })
        .collect()
}

/// Large blocks (1 MiB) demoted to the far node, one freed by its thread, the rest after the
/// thread exited (into its abandoned segments, from another node): the far node's committed
/// bytes carry the demoted blocks while they live and are back to where they were once the
/// exited thread's node is tended.
#[test]
fn demoted_large_blocks_leave_no_committed_bytes_behind() {
    let Some((c0, _)) = child_on_node_1("demoted_large_blocks_leave_no_committed_bytes_behind")
    else {
        return;
    };
    let before = committed();
    let far_before = before[2];
    let blocks = std::thread::spawn(move || {
        tieralloc::numa::pin_current_thread_to_cpu(c0).unwrap();
        tieralloc::collect();
        let mut v: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8; 1 << 20]).collect();
        for b in v.iter_mut().take(4) {
            // SAFETY: our own large block, not freed or resized while it moves.
            let r = unsafe { tieralloc::tiers::demote(b.as_mut_ptr(), b.len()) }.unwrap();
            assert_eq!(r.failed, 0);
        }
        let demoted = committed();
        assert!(
            demoted[2] >= far_before + (4 << 20),
            "the far node does not carry the demoted blocks: {far_before} -> {demoted:?}"
        );
        // One demoted and one not freed here.
        v.remove(0);
        v.remove(4);
        v
    })
    .join()
    .unwrap();
    drop(blocks);
    // The exited thread's segments are abandoned on node 0: a thread of node 0 tends them
    // (the pages freed into them go back to their segments then).
    tend_from(&[c0], 8);
    tieralloc::collect();
    let after = committed();
    assert_eq!(after[2], before[2], "node 2");
    assert!(
        after[0] <= before[0] + (256 << 10),
        "node 0 {before:?} {after:?}"
    );
}

/// Three threads at a time keep moving between the two nodes (a random node each round)
/// while they allocate small, medium, large and huge blocks, free some of their own, hand
/// some to the next thread and free what they are handed; each generation leaves blocks that
/// outlive it for the next one to free (frees into exited threads' segments). Every block is
/// handed out once (no overlap with a live block), from a segment its heap owns, with its
/// contents intact at its free; at the end the per-bin, large and huge counts are back, and
/// the per-node live bytes add up to the total. With `demote`, under a far node, half the
/// large and huge blocks are demoted at once and the automatic demoter runs too: once every
/// node is tended, the far node holds nothing (no committed bytes, no live bytes).
fn moving_threads(demote: bool) {
    let rounds = 120;
    let gens = 4;
    use std::collections::BTreeMap;
    use std::sync::{mpsc, Arc, Mutex};
    let (Some(c0), Some(c1)) = (
        child::cpu_of_simulated_node(0),
        child::cpu_of_simulated_node(1),
    ) else {
        return;
    };
    let live: Arc<Mutex<BTreeMap<usize, (usize, u8)>>> = Arc::default();
    // Blocks up to this size come from the thread's own heap (larger ones are huge).
    let own_max = 2 << 20;
    let auto = demote.then(|| {
        tieralloc::tiers::start_auto_demotion(Duration::from_millis(1), Duration::from_millis(1))
            .unwrap()
    });
    let before = tieralloc::stats();
    let carry: Arc<Mutex<Vec<(usize, usize, u8)>>> = Arc::default();
    for _gen in 0..gens {
        let mut hs = vec![];
        let mut txs = vec![];
        let mut rxs = vec![];
        for _ in 0..3 {
            let (tx, rx) = mpsc::channel::<Vec<(usize, usize, u8)>>();
            txs.push(tx);
            rxs.push(rx);
        }
        for (t, rx) in rxs.into_iter().enumerate() {
            let live = live.clone();
            let to = txs[(t + 1) % 3].clone();
            let carry = carry.clone();
            hs.push(std::thread::spawn(move || {
                let mut seed = 0x9e3779b97f4a7c15u64 ^ (t as u64 * 7919);
                let mut rnd = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let mut mine: Vec<(usize, usize, u8)> = vec![];
                let old: Vec<_> = {
                    let mut c = carry.lock().unwrap();
                    let k = c.len() / 3 + 1;
                    let at = c.len().saturating_sub(k);
                    c.split_off(at)
                };
                let free = |(p, size, tag): (usize, usize, u8),
                            live: &Mutex<BTreeMap<usize, (usize, u8)>>| {
                    // SAFETY: a live block of `size` bytes written with `tag`.
                    let s = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
                    assert!(
                        s.iter().all(|&b| b == tag),
                        "block {p:#x} of {size} overwritten"
                    );
                    assert!(live.lock().unwrap().remove(&p).is_some());
                    // SAFETY: allocated with this layout, freed once.
                    unsafe { dealloc(p as *mut u8, Layout::from_size_align(size, 16).unwrap()) };
                };
                let mut old = Some(old);
                for r in 0..rounds {
                    let cpu = if (rnd() % 2) == 0 { c0 } else { c1 };
                    tieralloc::numa::pin_current_thread_to_cpu(cpu).unwrap();
                    if rnd() % 4 == 0 {
                        tieralloc::collect();
                    }
                    if let Some(o) = old.take() {
                        for b in o {
                            free(b, &live);
                        }
                    }
                    let n = (rnd() % 200) as usize;
                    for _ in 0..n {
                        let size = match rnd() % 200 {
                            0 => 2_200_000 + (rnd() % 3_000_000) as usize,
                            1..=10 => 70_000 + (rnd() % 200_000) as usize,
                            11..=40 => 1024 + (rnd() % 8000) as usize,
                            _ => 8 + (rnd() % 300) as usize,
                        };
                        let tag = (rnd() % 255 + 1) as u8;
                        let layout = Layout::from_size_align(size, 16).unwrap();
                        // SAFETY: a non-zero size.
                        let p = unsafe { alloc(layout) };
                        assert!(!p.is_null());
                        // SAFETY: just allocated, live.
                        assert!(
                            size > own_max || unsafe { tieralloc::probe::owned_by_caller(p) },
                            "round {r}"
                        );
                        {
                            let mut l = live.lock().unwrap();
                            if let Some((&q, &(qs, _))) = l.range(..p as usize + size).next_back() {
                                assert!(q + qs <= p as usize, "{p:?}+{size} overlaps {q:#x}+{qs}");
                            }
                            l.insert(p as usize, (size, tag));
                        }
                        // SAFETY: our block of `size` bytes.
                        unsafe { p.write_bytes(tag, size) };
                        if demote && size > 64 << 10 && rnd() % 2 == 0 {
                            // SAFETY: our own block, not freed or resized while it moves.
                            let r = unsafe { tieralloc::tiers::demote(p, size) }.unwrap();
                            assert_eq!(r.failed, 0);
                        }
                        mine.push((p as usize, size, tag));
                    }
                    // Free some of ours, send some to the next thread, free what we got.
                    let k = mine.len() / 2;
                    let mut give = vec![];
                    for b in mine.drain(..k) {
                        if rnd() % 2 == 0 {
                            free(b, &live);
                        } else {
                            give.push(b);
                        }
                    }
                    let _ = to.send(give);
                    while let Ok(v) = rx.try_recv() {
                        for b in v {
                            free(b, &live);
                        }
                    }
                }
                // Blocks that outlive their thread: the next generation frees them.
                carry.lock().unwrap().extend(mine);
                drop(to);
                rx
            }));
        }
        drop(txs);
        let rxs: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        for rx in rxs {
            while let Ok(v) = rx.try_recv() {
                for (p, size, tag) in v {
                    // SAFETY: as in `free`.
                    let s = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
                    assert!(s.iter().all(|&b| b == tag));
                    live.lock().unwrap().remove(&p);
                    // SAFETY: allocated with this layout, freed once.
                    unsafe { dealloc(p as *mut u8, Layout::from_size_align(size, 16).unwrap()) };
                }
            }
        }
    }
    for (p, size, tag) in std::mem::take(&mut *carry.lock().unwrap()) {
        // SAFETY: as in `free`.
        let s = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
        assert!(s.iter().all(|&b| b == tag));
        live.lock().unwrap().remove(&p);
        // SAFETY: allocated with this layout, freed once.
        unsafe { dealloc(p as *mut u8, Layout::from_size_align(size, 16).unwrap()) };
    }
    assert!(live.lock().unwrap().is_empty());
    drop(live);
    drop(auto);
    // Every node tended through by a thread of its own.
    tend_from(&[c0, c1, c0, c1], 40);
    tieralloc::collect();
    let after = tieralloc::stats();
    if demote {
        let n2 = after.nodes.iter().find(|n| n.node == 2).unwrap();
        assert_eq!(
            (n2.bytes_committed, n2.bytes_live),
            (0, 0),
            "node 2: {after}"
        );
    }
    println!("before {before}\nafter {after}");
    let small = |s: &tieralloc::Stats| -> u64 {
        s.classes.iter().map(|c| c.live * c.block_size as u64).sum()
    };
    let (b, a) = (small(&before), small(&after));
    assert!(a <= b + (64 << 10), "small live bytes {b} -> {a}");
    assert_eq!(
        after.large_allocs - after.large_frees,
        before.large_allocs - before.large_frees,
        "large blocks live"
    );
    assert_eq!(
        after.huge_bytes_live, before.huge_bytes_live,
        "huge bytes live"
    );
    let nodes = |s: &tieralloc::Stats| -> Vec<(u32, i64)> {
        s.nodes.iter().map(|n| (n.node, n.bytes_live)).collect()
    };
    let sum: i64 = after.nodes.iter().map(|n| n.bytes_live).sum();
    assert_eq!(
        sum,
        after.bytes_live as i64,
        "nodes {:?} -> {:?}",
        nodes(&before),
        nodes(&after)
    );
}

#[test]
fn moving_threads_hand_out_every_block_once() {
    if !child::is_child() {
        return run_child("moving_threads_hand_out_every_block_once", "2");
    }
    moving_threads(false);
}

#[test]
fn moving_threads_with_demotions_leave_nothing_on_the_far_node() {
    if !child::is_child() {
        return run_child(
            "moving_threads_with_demotions_leave_nothing_on_the_far_node",
            "2,far=1",
        );
    }
    moving_threads(true);
}

/// A labelled scope's huge block demoted to the far node: the label's live bytes per node
/// follow it (the label's total is unchanged), and are gone from every node once it is freed.
#[test]
fn a_demoted_labelled_huge_block_counts_on_its_new_node() {
    if !child::is_child() {
        return run_child(
            "a_demoted_labelled_huge_block_counts_on_its_new_node",
            "2,far=1",
        );
    }
    let label_nodes = || -> Vec<(u32, i64)> {
        let s = tieralloc::stats();
        let mut v: Vec<(u32, i64)> = s
            .labels
            .iter()
            .filter(|l| l.label == "rev19-huge")
            .flat_map(|l| l.nodes.iter().map(|n| (n.node, n.bytes_live)))
            .filter(|&(_, b)| b != 0)
            .collect();
        v.sort();
        v
    };
    let mut v = {
        let _g = place_labeled(Placed::node(0).unwrap(), "rev19-huge");
        vec![9u8; 8 << 20]
    };
    // SAFETY: a live block of ours.
    let size = unsafe { tieralloc::usable_size(v.as_ptr()) };
    assert_eq!(node_of(v.as_ptr()), 0);
    assert_eq!(label_nodes(), [(0, size as i64)]);
    // SAFETY: our own huge block, not freed or resized while it moves.
    let r = unsafe { tieralloc::tiers::demote(v.as_mut_ptr(), v.len()) }.unwrap();
    assert_eq!((r.node, r.failed), (2, 0));
    assert_eq!(node_of(v.as_ptr()), 2);
    assert_eq!(
        label_nodes(),
        [(2, size as i64)],
        "the label's bytes did not follow the demoted block"
    );
    drop(v);
    assert_eq!(label_nodes(), [], "the label's bytes outlived the block");
}

/// A near budget spent by a thread on node 0 (small, large and huge blocks spill to the far
/// node), which then moves to node 1, frees half there, moves back and exits; the rest is
/// freed by another thread: once every node is tended, every node's committed and live bytes
/// are back (no booking left behind by the spill, the moves, the exit or the frees).
#[test]
fn a_spilled_threads_memory_all_comes_back_after_moves_and_exit() {
    let Some((c0, c1)) =
        child_on_node_1("a_spilled_threads_memory_all_comes_back_after_moves_and_exit")
    else {
        return;
    };
    let before = committed();
    tieralloc::tiers::set_policy(&tieralloc::tiers::Policy {
        near_budget: Some(before[0] + before[1] + (24 << 20)),
        ..Default::default()
    })
    .unwrap();
    let kept = std::thread::spawn(move || {
        tieralloc::numa::pin_current_thread_to_cpu(c0).unwrap();
        tieralloc::collect();
        let mut v: Vec<Vec<u8>> = (0..1500).map(|i| vec![i as u8; 32 << 10]).collect();
        v.extend((0..20).map(|i| vec![i as u8; 1 << 20]));
        v.extend((0..3).map(|i| vec![i as u8; 5 << 20]));
        let mid = committed();
        assert!(
            tieralloc::tiers::stats()[0].spills > 0 && mid[2] > 16 << 20,
            "nothing spilled: {mid:?}"
        );
        tieralloc::numa::pin_current_thread_to_cpu(c1).unwrap();
        tieralloc::collect();
        let kept: Vec<Vec<u8>> = v.drain(..).step_by(2).collect();
        drop(v);
        tieralloc::numa::pin_current_thread_to_cpu(c0).unwrap();
        tieralloc::collect();
        kept
    })
    .join()
    .unwrap();
    drop(kept);
    tend_from(&[c0, c1, c0, c1], 20);
    tieralloc::collect();
    let after = committed();
    for n in 0..3 {
        assert!(
            after[n] <= before[n] + (512 << 10),
            "node {n}: {before:?} -> {after:?}"
        );
    }
    let live: Vec<i64> = (0..3).map(live::node_live).collect();
    assert!(live.iter().all(|&l| l.abs() < 64 << 10), "{live:?}");
}
