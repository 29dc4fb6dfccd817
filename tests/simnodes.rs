//! Simulated nodes (`TIERALLOC_SIMULATE_NODES`): the allocator's multi-node logic on a
//! one-node machine. Each check runs in a child process (this test binary again, with the
//! variable set and a filter selecting one `inner_*` test), because the variable is read once,
//! when the allocator starts.
//!
//! The checks: the topology shows N CPU nodes (+M far nodes in a slower tier); a thread pinned
//! to CPU c allocates on node c % N; a block allocated on node 1 and freed by a node-0 thread
//! is a cross-node free of node 1 and its bytes leave node 1; `Placed::node`, `Placed::far`,
//! interleaving, the far threshold and budgets, and demotion land on the right node as
//! `stats()` counts them; malformed values warn once and leave the machine real.

use std::sync::mpsc;
use std::time::Duration;
use tieralloc::topology::TopologySource;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

const VAR: &str = "TIERALLOC_SIMULATE_NODES";

/// Runs `inner` in a child with `TIERALLOC_SIMULATE_NODES=value` (and none of the variables
/// that would change the topology it makes); returns its stderr.
fn run_child(inner: &str, value: &str) -> String {
    let mut cmd = child::on_simulated_nodes(inner, value);
    let out = child::run(&mut cmd, Duration::from_secs(300));
    out.expect_test_passed();
    out.stderr
}

/// The CPUs this process may run on (from sched_getaffinity).
fn allowed_cpus() -> Vec<u32> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel writes at most its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, core::mem::size_of_val(&set), &mut set),
            0
        );
        set
    };
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .map(|i| i as u32)
        .collect()
}

fn node_stats(node: u32) -> tieralloc::NodeStats {
    tieralloc::stats()
        .nodes
        .into_iter()
        .find(|n| n.node == node)
        .unwrap_or_else(|| panic!("stats() shows no node {node}"))
}

/// Pins the calling thread to `cpu`, then allocates and frees enough for its heap to notice
/// the node it now runs on (the heap checks every 16 slow paths).
fn pin_and_settle(cpu: u32) {
    tieralloc::numa::pin_current_thread_to_cpu(cpu).expect("pin to the CPU");
    for _ in 0..4 {
        let v: Vec<Box<[u8; 1024]>> = (0..2000).map(|_| Box::new([1u8; 1024])).collect();
        drop(v);
    }
}

// ---------------------------------------------------------------------------------------------
// Topology and stats.

#[test]
fn inner_topology_two_nodes() {
    if !child::is_child() {
        return;
    }
    let t = tieralloc::topology();
    assert_eq!(t.source, TopologySource::Simulated);
    let ids: Vec<u32> = t.nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids, [0, 1]);
    assert!(t.memory_only.is_empty());
    assert_eq!(t.allowed_nodes, [0, 1]);
    assert_eq!(t.tiers.len(), 1, "{:?}", t.tiers);
    assert_eq!(t.distances, [[10, 20], [20, 10]]);
    for cpu in allowed_cpus() {
        let n = t.node(cpu % 2).unwrap();
        assert!(n.cpus.contains(&cpu), "CPU {cpu} not on node {}", cpu % 2);
    }
    let nodes: Vec<u32> = tieralloc::stats().nodes.iter().map(|n| n.node).collect();
    assert_eq!(&nodes[..2], [0, 1], "stats() shows both nodes: {nodes:?}");
}

#[test]
fn inner_topology_far_tier() {
    if !child::is_child() {
        return;
    }
    let t = tieralloc::topology();
    assert_eq!(t.source, TopologySource::Simulated);
    let ids: Vec<u32> = t.nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids, [0, 1, 2]);
    assert_eq!(t.memory_only, [2]);
    assert!(t.node(2).unwrap().cpus.is_empty());
    assert_eq!(t.tiers.len(), 2, "{:?}", t.tiers);
    let mut near = t.tiers[0].nodes.clone();
    near.sort();
    assert_eq!(near, [0, 1]);
    assert_eq!(t.tiers[1].nodes, [2]);
    assert!(t.distance(0, 2).unwrap() > t.distance(0, 1).unwrap());
    let nodes: Vec<u32> = tieralloc::stats().nodes.iter().map(|n| n.node).collect();
    assert_eq!(
        &nodes[..3],
        [0, 1, 2],
        "stats() shows the far node: {nodes:?}"
    );
    let tiers = tieralloc::tiers::stats();
    assert_eq!(tiers.len(), 2);
    assert_eq!(tiers[1].nodes, [2]);
    // The object pool keeps a store per simulated node.
    let pool = tieralloc::Pool::builder(|| 0u64).build();
    assert_eq!(pool.stats().nodes, 3);
}

#[test]
fn topology_shows_the_simulated_nodes() {
    if child::is_child() {
        return;
    }
    run_child("inner_topology_two_nodes", "2");
    run_child("inner_topology_far_tier", "2,far=1");
}

// ---------------------------------------------------------------------------------------------
// Home node = CPU % N.

/// In a thread pinned to `cpu`: the node that 2 MiB of fresh 1 KiB blocks are counted on.
fn allocate_pinned(cpu: u32, nodes: u32) {
    std::thread::spawn(move || {
        pin_and_settle(cpu);
        let want = cpu % nodes;
        let before: Vec<i64> = (0..nodes).map(|n| node_stats(n).bytes_live).collect();
        let v: Vec<Box<[u8; 1024]>> = (0..2048).map(|_| Box::new([2u8; 1024])).collect();
        let after: Vec<i64> = (0..nodes).map(|n| node_stats(n).bytes_live).collect();
        for n in 0..nodes as usize {
            let d = after[n] - before[n];
            if n as u32 == want {
                assert!(d >= 2 << 20, "CPU {cpu}: node {n} gained only {d} bytes");
            } else {
                assert!(
                    d.abs() < 256 << 10,
                    "CPU {cpu}: node {n} changed by {d} bytes"
                );
            }
        }
        assert!(v.iter().all(|b| b[1023] == 2));
    })
    .join()
    .unwrap();
}

#[test]
fn inner_home_is_cpu_modulo_n() {
    if !child::is_child() {
        return;
    }
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        eprintln!("skipped: one CPU allowed ({cpus:?})");
        return;
    }
    // Both parities, so both nodes (N=2: CPU0 → node 0, CPU1 → node 1).
    let even = *cpus.iter().find(|c| *c % 2 == 0).unwrap();
    let odd = *cpus.iter().find(|c| *c % 2 == 1).unwrap();
    allocate_pinned(odd, 2);
    allocate_pinned(even, 2);
    // The same thread moved between CPUs changes node.
    std::thread::spawn(move || {
        for cpu in [odd, even, odd] {
            pin_and_settle(cpu);
            assert_eq!(
                tieralloc::numa::current_cpu_and_node().map(|(_, n)| n),
                Some(cpu % 2)
            );
            let before = node_stats(cpu % 2).bytes_live;
            let v: Vec<Box<[u8; 1024]>> = (0..1024).map(|_| Box::new([3u8; 1024])).collect();
            let d = node_stats(cpu % 2).bytes_live - before;
            assert!(d >= 1 << 20, "moved to CPU {cpu}: node gained only {d}");
            drop(v);
        }
    })
    .join()
    .unwrap();
}

#[test]
fn a_thread_pinned_to_a_cpu_allocates_on_its_node() {
    if child::is_child() {
        return;
    }
    run_child("inner_home_is_cpu_modulo_n", "2");
}

// ---------------------------------------------------------------------------------------------
// Cross-node frees.

#[test]
fn inner_cross_node_free() {
    if !child::is_child() {
        return;
    }
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        eprintln!("skipped: one CPU allowed ({cpus:?})");
        return;
    }
    let even = *cpus.iter().find(|c| *c % 2 == 0).unwrap();
    let odd = *cpus.iter().find(|c| *c % 2 == 1).unwrap();
    const K: usize = 1000;
    let (to_b, from_a) = mpsc::channel::<Vec<Box<[u8; 256]>>>();
    let (done_b, wait_b) = mpsc::channel::<()>();
    let (ready_b, wait_ready) = mpsc::channel::<()>();
    // B: a thread of node 0 that frees what A (node 1) allocated.
    let b = std::thread::spawn(move || {
        pin_and_settle(even);
        ready_b.send(()).unwrap();
        let v = from_a.recv().unwrap();
        assert!(v.iter().all(|x| x[0] == 9 && x[255] == 9));
        drop(v);
        done_b.send(()).unwrap();
    });
    let a = std::thread::spawn(move || {
        pin_and_settle(odd);
        wait_ready.recv().unwrap();
        let v: Vec<Box<[u8; 256]>> = (0..K).map(|_| Box::new([9u8; 256])).collect();
        let (n1, n0) = (node_stats(1), node_stats(0));
        to_b.send(v).unwrap();
        wait_b.recv().unwrap();
        let (m1, m0) = (node_stats(1), node_stats(0));
        // The blocks, the Vec holding them, and a few blocks of the channel's own.
        let cross = m1.cross_node_frees - n1.cross_node_frees;
        assert!(
            (K as u64 + 1..K as u64 + 8).contains(&cross),
            "{cross} frees of node-1 blocks by a node-0 thread counted, {K} made"
        );
        assert_eq!(m0.cross_node_frees, n0.cross_node_frees);
        let freed = n1.bytes_live - m1.bytes_live;
        // Live bytes count whole blocks: 256 B, or in the secure build (8 bytes more for the
        // canary's trailer) the 320 B class.
        let block = if cfg!(feature = "secure") { 320 } else { 256 };
        assert!(
            freed >= (K * block) as i64 && freed < (K * block + (64 << 10)) as i64,
            "node 1 lost {freed} live bytes"
        );
        let d0 = m0.bytes_live - n0.bytes_live;
        assert!(d0.abs() < 64 << 10, "node 0 changed by {d0}");
        // The blocks went back to node 1's pages: A reuses them.
        tieralloc::collect();
        let w: Vec<Box<[u8; 256]>> = (0..K).map(|_| Box::new([5u8; 256])).collect();
        let m = node_stats(1);
        assert!(m.bytes_live - m1.bytes_live >= (K * 256) as i64);
        drop(w);
    });
    a.join().unwrap();
    b.join().unwrap();
}

/// Large blocks (over 64 KiB, a page of their own) freed across nodes: the bytes leave the
/// block's node once, and the freeing thread's node is not credited with them.
#[test]
fn inner_cross_node_free_large() {
    if !child::is_child() {
        return;
    }
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        eprintln!("skipped: one CPU allowed ({cpus:?})");
        return;
    }
    let even = *cpus.iter().find(|c| *c % 2 == 0).unwrap();
    let odd = *cpus.iter().find(|c| *c % 2 == 1).unwrap();
    const K: usize = 8;
    const SIZE: usize = 256 << 10;
    let (to_b, from_a) = mpsc::channel::<Vec<Vec<u8>>>();
    let (done_b, wait_b) = mpsc::channel::<()>();
    let (ready_b, wait_ready) = mpsc::channel::<()>();
    let b = std::thread::spawn(move || {
        pin_and_settle(even);
        ready_b.send(()).unwrap();
        let v = from_a.recv().unwrap();
        assert!(v.iter().all(|x| x[0] == 4 && x[SIZE - 1] == 4));
        drop(v);
        done_b.send(()).unwrap();
    });
    let a = std::thread::spawn(move || {
        pin_and_settle(odd);
        wait_ready.recv().unwrap();
        let (n1, n0) = (node_stats(1), node_stats(0));
        let v: Vec<Vec<u8>> = (0..K).map(|_| vec![4u8; SIZE]).collect();
        let m1 = node_stats(1);
        assert!(m1.bytes_live - n1.bytes_live >= (K * SIZE) as i64);
        to_b.send(v).unwrap();
        wait_b.recv().unwrap();
        // The owner takes the emptied pages back (and books their bytes) when it collects.
        tieralloc::collect();
        let (e1, e0) = (node_stats(1), node_stats(0));
        assert!(e1.cross_node_frees - n1.cross_node_frees >= K as u64);
        let d1 = e1.bytes_live - n1.bytes_live;
        let d0 = e0.bytes_live - n0.bytes_live;
        assert!(
            d1.abs() < 64 << 10 && d0.abs() < 64 << 10,
            "after node 0 freed node 1's {K} large blocks: node 1 changed by {d1}, node 0 by {d0}"
        );
    });
    a.join().unwrap();
    b.join().unwrap();
}

#[test]
fn a_block_freed_by_another_node_is_a_cross_node_free() {
    if child::is_child() {
        return;
    }
    run_child("inner_cross_node_free", "2");
    run_child("inner_cross_node_free_large", "2");
}

// ---------------------------------------------------------------------------------------------
// Placement and tiers (2 CPU nodes and far node 2).

fn committed_live(node: u32) -> (u64, i64) {
    let s = node_stats(node);
    (s.bytes_committed, s.bytes_live)
}

#[test]
fn inner_placement_and_tiers() {
    if !child::is_child() {
        return;
    }
    use allocator_api2::alloc::Allocator;
    use allocator_api2::vec::Vec as PVec;
    use tieralloc::tiers::{self, Policy};
    use tieralloc::Placed;

    // Placed::node(1): 1 MiB counted on node 1.
    let (c1, l1) = committed_live(1);
    let mut v: PVec<u8, _> = PVec::with_capacity_in(1 << 20, Placed::node(1).unwrap());
    v.resize(1 << 20, 1);
    let (c1b, l1b) = committed_live(1);
    assert!(c1b - c1 >= 1 << 20, "node 1 committed +{}", c1b - c1);
    assert!(l1b - l1 >= 1 << 20, "node 1 live +{}", l1b - l1);
    drop(v);

    // Placed::far(): node 2.
    let far = Placed::far().unwrap();
    assert_eq!(far.node_id(), Some(2));
    let (c2, l2) = committed_live(2);
    let mut v: PVec<u8, _> = PVec::with_capacity_in(3 << 20, far);
    v.resize(3 << 20, 2);
    let (c2b, l2b) = committed_live(2);
    assert!(c2b - c2 >= 3 << 20 && l2b - l2 >= 3 << 20);
    drop(v);

    // Interleaving and weighted interleaving (whole mappings, binding skipped).
    let mut v: PVec<u8, _> =
        PVec::with_capacity_in(1 << 20, Placed::interleave(&[0, 1, 2]).unwrap());
    v.resize(1 << 20, 3);
    drop(v);
    let mut v: PVec<u8, _> =
        PVec::with_capacity_in(1 << 20, Placed::interleave_tiers(&[1, 4]).unwrap());
    v.resize(1 << 20, 4);
    assert!(v.iter().all(|b| *b == 4));
    drop(v);

    // Far threshold: a 4 MiB Vec of the global allocator goes to node 2.
    tiers::set_policy(&Policy {
        far_threshold: Some(1 << 20),
        ..Policy::default()
    })
    .unwrap();
    let (_, l2) = committed_live(2);
    let routed = tiers::stats()[1].routed_bytes;
    // black_box (here and below): a Vec nobody reads may be optimised away with its allocator
    // calls (seen in the `secure` build: no allocation, "far node live +0").
    let big = std::hint::black_box(vec![5u8; 4 << 20]);
    let (_, l2b) = committed_live(2);
    assert!(l2b - l2 >= 4 << 20, "far node live +{}", l2b - l2);
    assert!(tiers::stats()[1].routed_bytes - routed >= 4 << 20);
    drop(big);

    // Far budget: an explicit far request beyond it is refused.
    let far_now = tiers::stats()[1].committed_bytes;
    tiers::set_policy(&Policy {
        far_budget: Some(far_now + (1 << 20)),
        ..Policy::default()
    })
    .unwrap();
    let refused = tiers::stats()[1].refused;
    let r = Placed::far()
        .unwrap()
        .allocate(std::alloc::Layout::from_size_align(8 << 20, 8).unwrap());
    assert!(r.is_err(), "8 MiB past a far budget of 1 MiB more");
    assert_eq!(tiers::stats()[1].refused, refused + 1);

    // Near budget spent: the global allocator spills to the far tier.
    let near_now = tiers::stats()[0].committed_bytes;
    tiers::set_policy(&Policy {
        near_budget: Some(near_now),
        ..Policy::default()
    })
    .unwrap();
    let spills = tiers::stats()[0].spills;
    let (_, l2) = committed_live(2);
    let big = std::hint::black_box(vec![6u8; 16 << 20]);
    let (_, l2b) = committed_live(2);
    assert!(
        tiers::stats()[0].spills > spills,
        "no spill past the near budget"
    );
    assert!(l2b - l2 >= 16 << 20, "far node live +{}", l2b - l2);
    drop(big);
    tiers::set_policy(&Policy::default()).unwrap();

    // Demotion and promotion of a huge block: the bookkeeping follows.
    let mut v = vec![7u8; 8 << 20];
    let (c2, _) = committed_live(2);
    let demoted = tiers::stats()[1].demoted_bytes;
    // SAFETY: our own block, not freed or resized while it moves.
    let r = unsafe { tiers::demote(v.as_mut_ptr(), v.len()) }.unwrap();
    assert_eq!((r.node, r.failed), (2, 0), "{r:?}");
    assert!(r.moved * 4096 >= 8 << 20, "{r:?}");
    let (c2b, _) = committed_live(2);
    assert!(c2b - c2 >= 8 << 20, "far node committed +{}", c2b - c2);
    assert!(tiers::stats()[1].demoted_bytes - demoted >= 8 << 20);
    // SAFETY: as above.
    let r = unsafe { tiers::promote(v.as_mut_ptr(), v.len()) }.unwrap();
    assert_eq!(r.failed, 0, "{r:?}");
    assert!(r.node < 2, "{r:?}");
    assert!(committed_live(2).0 <= c2b - (8 << 20));
    assert!(v.iter().all(|b| *b == 7));
    // pages_on_nodes reports where the kernel put the pages: the real node.
    let real = tieralloc::numa::pages_on_nodes(v.as_ptr(), 4096).unwrap();
    assert!(real[0] >= 0, "{real:?}");
}

#[test]
fn placement_and_tier_policies_land_on_the_simulated_nodes() {
    if child::is_child() {
        return;
    }
    run_child("inner_placement_and_tiers", "2,far=1");
}

// ---------------------------------------------------------------------------------------------
// Malformed values.

#[test]
fn inner_not_simulated() {
    if !child::is_child() {
        return;
    }
    assert_ne!(tieralloc::topology().source, TopologySource::Simulated);
    let v: Vec<Box<[u8]>> = (0..100).map(|i| vec![1u8; 1 + i * 13].into()).collect();
    assert_eq!(v.len(), 100);
}

#[test]
fn malformed_values_warn_once_and_leave_the_machine_real() {
    if child::is_child() {
        return;
    }
    // The last: a far count whose sum with N wrapped (review rev25).
    for bad in [
        "1",
        "9",
        "2,far=x",
        "abc",
        "2,far=0",
        "8,far=57",
        "",
        "2,far=18446744073709551614",
    ] {
        let stderr = run_child("inner_not_simulated", bad);
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(VAR)).collect();
        assert_eq!(lines.len(), 1, "{VAR}={bad:?}: stderr:\n{stderr}");
        assert!(lines[0].contains("warning"), "{}", lines[0]);
    }
}
