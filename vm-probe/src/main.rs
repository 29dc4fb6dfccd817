//! Runs inside the project's NUMA VM (scripts/numa-vm.sh; tests/numa_vm.rs drives it) and
//! checks, with move_pages(2), that tieralloc places memory where it says. Prints one line per
//! check ("ok   name: detail" or "FAIL name: detail") and exits non-zero if any failed.
//!
//! The VM: node 0 (CPU 0, 1 GiB), node 1 (CPU 1, 1 GiB), node 2 (no CPU, 1 GiB, far),
//! distances 0-1 21 and 0/1-2 30, HMAT local 80 ns / 20 GB/s, remote 140 ns / 10 GB/s,
//! node 2 300 ns / 5 GB/s.
//!
//! Build: RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p tieralloc-vm-probe
//!        --target x86_64-unknown-linux-gnu
//! Outside the VM, `numa_probe --topology` prints the topology as JSON and exits.
//!
//! The tier checks (issue 4) are in tier_checks/mod.rs; policies run in children of the probe
//! (`numa_probe --tier-child NAME`, started with the policy's environment variables).

use allocator_api2::boxed::Box as PBox;
use allocator_api2::vec::Vec as PVec;
use std::collections::BTreeMap;
use std::sync::mpsc;
use tieralloc::numa::{pages_on_nodes, pin_current_thread_to_cpu};
use tieralloc::topology::TierSource;
use tieralloc::{topology, Placed};

mod tier_checks;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const PAGE: usize = 4096;

struct Checks {
    failed: usize,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        if ok {
            println!("ok   {name}: {detail}");
        } else {
            println!("FAIL {name}: {detail}");
            self.failed += 1;
        }
    }
}

/// How many pages of each range are on each node (negative keys: errno of untouched pages).
fn census(ranges: &[(*const u8, usize)]) -> BTreeMap<i32, usize> {
    let mut m = BTreeMap::new();
    for &(p, len) in ranges {
        match pages_on_nodes(p, len) {
            Ok(v) => {
                for n in v {
                    *m.entry(n).or_insert(0) += 1;
                }
            }
            Err(e) => {
                *m.entry(-10_000 - e.raw_os_error().unwrap_or(0))
                    .or_insert(0) += 1;
            }
        }
    }
    m
}

/// Each tier's nodes, sorted, fastest tier first.
fn tier_nodes(t: &tieralloc::Topology) -> Vec<Vec<u32>> {
    t.tiers
        .iter()
        .map(|t| {
            let mut n = t.nodes.clone();
            n.sort();
            n
        })
        .collect()
}

fn all_on(m: &BTreeMap<i32, usize>, node: i32) -> bool {
    !m.is_empty() && m.keys().all(|k| *k == node)
}

fn touch(p: *mut u8, len: usize) {
    let mut off = 0;
    while off < len {
        // SAFETY: callers pass live blocks of at least `len` bytes.
        unsafe { p.add(off).write_volatile(0xA5) };
        off += PAGE;
    }
    if len > 0 {
        // SAFETY: as above; the last byte of the block.
        unsafe { p.add(len - 1).write_volatile(0x5A) };
    }
}

fn placed_node(c: &mut Checks, node: u32) {
    let a = match Placed::node(node) {
        Ok(a) => a,
        Err(e) => return c.check(&format!("placed-node-{node}"), false, e),
    };
    let mut ranges: Vec<(*const u8, usize)> = Vec::new();
    // Small blocks, a medium vector, a large one, and a huge one (8 MiB).
    let mut smalls: PVec<PBox<[u8; 200], Placed>, Placed> = PVec::new_in(a);
    for i in 0..2000 {
        smalls.push(PBox::new_in([i as u8; 200], a));
    }
    for b in smalls.iter() {
        ranges.push((b.as_ptr(), 200));
    }
    let mut sizes = Vec::new();
    let mut vecs: Vec<PVec<u8, Placed>> = Vec::new();
    for size in [100 << 10, 1 << 20, 3 << 20, 8 << 20] {
        let mut v: PVec<u8, Placed> = PVec::with_capacity_in(size, a);
        v.resize(size, 1);
        touch(v.as_mut_ptr(), size);
        ranges.push((v.as_ptr(), size));
        sizes.push(size);
        vecs.push(v);
    }
    ranges.push((smalls.as_ptr() as *const u8, smalls.len() * 8));
    let m = census(&ranges);
    let pages: usize = m.values().sum();
    c.check(
        &format!("placed-node-{node}"),
        all_on(&m, node as i32),
        format!("{pages} pages of 2000 boxes and vectors of {sizes:?} bytes: {m:?}"),
    );
}

/// A thread pinned to `cpu` allocates through the global allocator; all of it must be on
/// `node`.
fn pinned_thread(c: &mut Checks, cpu: u32, node: i32) {
    let (m, detail) = std::thread::spawn(move || {
        if let Err(e) = pin_current_thread_to_cpu(cpu) {
            return (BTreeMap::new(), format!("pinning to CPU {cpu}: {e}"));
        }
        // Warm-up: the heap follows its thread's node within a bounded number of slow-path
        // allocations.
        for _ in 0..64 {
            drop(vec![0u8; 100 << 10]);
        }
        let mut ranges = Vec::new();
        let boxes: Vec<Box<[u8; 64]>> = (0..20_000).map(|i| Box::new([i as u8; 64])).collect();
        for b in &boxes {
            ranges.push((b.as_ptr(), 64));
        }
        let mut vecs = Vec::new();
        for size in [4000, 50_000, 300_000, 2 << 20, 8 << 20] {
            let mut v = vec![0u8; size];
            touch(v.as_mut_ptr(), size);
            ranges.push((v.as_ptr(), size));
            vecs.push(v);
        }
        let where_ = tieralloc::numa::current_cpu_and_node();
        let m = census(&ranges);
        let d = format!(
            "running on (cpu, node) {where_:?}, {} pages: {m:?}",
            m.values().sum::<usize>()
        );
        (m, d)
    })
    .join()
    .unwrap();
    c.check(
        &format!("global-cpu{cpu}-on-node{node}"),
        all_on(&m, node),
        detail,
    );
}

/// Blocks allocated on node 0's thread and freed by node 1's thread go back to node 0's
/// pages: over several rounds node 0's thread keeps reusing its memory (node 0's committed
/// bytes stay within a quarter round of the first round's, instead of growing a round's worth
/// a round), all on node 0, and node 1's thread, allocating the same sizes right after its
/// frees, never gets one of them (they never enter node 1's free lists).
fn cross_node_free(c: &mut Checks) {
    const SIZES: [usize; 4] = [48, 1024, 20_000, 200_000];
    const PER: usize = 500;
    const ROUNDS: usize = 4;
    fn alloc_all() -> Vec<usize> {
        let mut out = Vec::with_capacity(SIZES.len() * PER);
        for &s in &SIZES {
            for _ in 0..PER {
                let v = vec![7u8; s].into_boxed_slice();
                out.push(Box::into_raw(v) as *mut u8 as usize);
            }
        }
        out
    }
    fn ranges(ptrs: &[usize]) -> Vec<(*const u8, usize)> {
        let mut r = Vec::new();
        for (k, &s) in SIZES.iter().enumerate() {
            for &p in &ptrs[k * PER..(k + 1) * PER] {
                r.push((p as *const u8, s));
            }
        }
        r
    }
    let (a_tx, a_rx) = mpsc::channel::<()>();
    let (from_a_tx, from_a) = mpsc::channel::<Vec<usize>>();
    let (b_tx, b_rx) = mpsc::channel::<Vec<usize>>();
    let (from_b_tx, from_b) = mpsc::channel::<Vec<usize>>();
    let a = std::thread::spawn(move || {
        pin_current_thread_to_cpu(0).expect("pin to CPU 0");
        for _ in 0..64 {
            drop(vec![0u8; 100 << 10]);
        }
        for _ in 0..ROUNDS {
            from_a_tx.send(alloc_all()).unwrap();
            a_rx.recv().unwrap();
            // No `tieralloc::collect()` here: the blocks must come back by themselves, when
            // the next round's allocations find the pages empty. (A collection would also
            // purge and unmap the segments they empty at once, and the kernel then picks new
            // addresses for the next round's segments: a count of distinct addresses would
            // measure the kernel's choice, which varied by a third between runs.)
        }
    });
    let b = std::thread::spawn(move || {
        pin_current_thread_to_cpu(1).expect("pin to CPU 1");
        while let Ok(ptrs) = b_rx.recv() {
            for (k, &s) in SIZES.iter().enumerate() {
                for &p in &ptrs[k * PER..(k + 1) * PER] {
                    let p = std::ptr::slice_from_raw_parts_mut(p as *mut u8, s);
                    // SAFETY: a live boxed slice of `s` bytes made by thread A.
                    drop(unsafe { Box::from_raw(p) });
                }
            }
            // Kept alive (leaked) so their addresses stay B's.
            from_b_tx.send(alloc_all()).unwrap();
        }
    });
    let mut a_all = Vec::new();
    let mut b_all = Vec::new();
    let mut ma = BTreeMap::new();
    // Node 0's committed bytes as each round's blocks arrive (node 0's thread allocates there,
    // node 1's thread never does).
    let committed0 = || {
        tieralloc::stats()
            .nodes
            .iter()
            .find(|n| n.node == 0)
            .map_or(0, |n| n.bytes_committed)
    };
    let mut committed = Vec::new();
    for round in 0..ROUNDS {
        let ptrs = from_a.recv().unwrap();
        committed.push(committed0() >> 10);
        if round == ROUNDS - 1 {
            ma = census(&ranges(&ptrs));
        }
        a_all.extend_from_slice(&ptrs);
        b_tx.send(ptrs).unwrap();
        b_all.extend(from_b.recv().unwrap());
        a_tx.send(()).unwrap();
    }
    drop(b_tx);
    a.join().unwrap();
    b.join().unwrap();
    let per_round = SIZES.len() * PER;
    let distinct: std::collections::HashSet<usize> = a_all.iter().copied().collect();
    // Per size: how many distinct addresses node 0's thread got over the rounds.
    let by_size: Vec<usize> = (0..SIZES.len())
        .map(|k| {
            a_all
                .chunks(per_round)
                .flat_map(|r| r[k * PER..(k + 1) * PER].iter().copied())
                .collect::<std::collections::HashSet<usize>>()
                .len()
        })
        .collect();
    let stolen = b_all.iter().filter(|p| distinct.contains(p)).count();
    let mb = census(&ranges(&b_all[b_all.len() - per_round..]));
    // An address node 1's thread got that node 0's thread had used is fine only if it is node
    // 1's memory now: thread A unmaps segments it emptied once the purge delay has passed,
    // and the kernel may give the same addresses to B's next (node 1) mapping. What must not
    // happen is B being handed node 0's memory.
    let reused: Vec<(*const u8, usize)> = b_all
        .chunks(per_round)
        .flat_map(ranges)
        .filter(|(p, _)| distinct.contains(&(*p as usize)))
        .collect();
    let mr = census(&reused);
    // Node 0's thread reuses its memory: its node's committed bytes do not grow by a round's
    // worth (110 MB: no reuse at all adds that much a round). Not its addresses: while it
    // waits for node 1's thread, passes give the pages emptied by the remote frees back to
    // its segments (a quiet owner's full pages: `heap::thread::quiet`), and its next round
    // carves pages from those slices at other places (4425 distinct addresses in the VM,
    // where 2 × 2000 was the bound while its pages waited for it; committed flat, 139432 →
    // 139444 KiB).
    let round_bytes: usize = SIZES.iter().map(|s| s * PER).sum();
    let grew = committed.iter().max().unwrap() - committed[0];
    c.check(
        "remote-free-returns-to-origin-node",
        grew as usize <= (round_bytes >> 10) / 4
            && (stolen == 0 || all_on(&mr, 1))
            && all_on(&ma, 0)
            && all_on(&mb, 1),
        format!(
            "{ROUNDS} rounds of {per_round} blocks ({SIZES:?} bytes) made on node 0, freed on \
             node 1: {} distinct addresses on node 0's thread (no reuse would be {}; by size \
             {by_size:?}), {stolen} \
             addresses reused by node 1's thread (their pages now: {mr:?}); node 0's pages \
             {ma:?}, node 1's {mb:?}; node 0 committed KiB by round {committed:?}; full pages \
             taken in for quiet threads {}",
            distinct.len(),
            ROUNDS * per_round,
            tieralloc::stats().full_pages_taken_in,
        ),
    );
}

fn interleave(c: &mut Checks, nodes: &[u32]) {
    let name = format!("interleave-{nodes:?}");
    let a = match Placed::interleave(nodes) {
        Ok(a) => a,
        Err(e) => return c.check(&name, false, e),
    };
    let pages = 300 * nodes.len() + 1;
    let mut v: PVec<u8, Placed> = PVec::with_capacity_in(pages * PAGE, a);
    v.resize(pages * PAGE, 3);
    touch(v.as_mut_ptr(), pages * PAGE);
    let m = census(&[(v.as_ptr(), pages * PAGE)]);
    let counts: Vec<usize> = nodes
        .iter()
        .map(|n| *m.get(&(*n as i32)).unwrap_or(&0))
        .collect();
    let even = counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1;
    let only = m.keys().all(|k| nodes.contains(&(*k as u32)));
    c.check(&name, even && only, format!("{pages} pages: {m:?}"));
}

fn far(c: &mut Checks) {
    let a = match Placed::far() {
        Ok(a) => a,
        Err(e) => return c.check("placed-far-on-node-2", false, e),
    };
    let mut v: PVec<u8, Placed> = PVec::with_capacity_in(6 << 20, a);
    v.resize(6 << 20, 9);
    let mut b: PVec<u32, Placed> = PVec::new_in(a);
    b.extend(0..10_000);
    let m = census(&[(v.as_ptr(), 6 << 20), (b.as_ptr() as *const u8, 40_000)]);
    c.check(
        "placed-far-on-node-2",
        a.node_id() == Some(2) && all_on(&m, 2),
        format!("node {:?}: {m:?}", a.node_id()),
    );
}

fn topology_checks(c: &mut Checks) {
    let t = topology();
    let ids: Vec<u32> = t.nodes.iter().map(|n| n.id).collect();
    c.check(
        "topology-nodes",
        ids == [0, 1, 2],
        format!("{ids:?} from {:?}", t.source),
    );
    let cpus: Vec<Vec<u32>> = t.nodes.iter().map(|n| n.cpus.clone()).collect();
    c.check(
        "topology-cpus",
        cpus == [vec![0], vec![1], vec![]],
        format!("{cpus:?}"),
    );
    let mem: Vec<u64> = t.nodes.iter().map(|n| n.memory_bytes >> 20).collect();
    let gib_ok = mem.iter().all(|m| (700..=1024).contains(m));
    c.check("topology-memory", gib_ok, format!("MiB per node {mem:?}"));
    let want = vec![vec![10, 21, 30], vec![21, 10, 30], vec![30, 30, 10]];
    c.check(
        "topology-distances",
        t.distances == want,
        format!("{:?}", t.distances),
    );
    c.check(
        "topology-memory-only",
        t.memory_only == [2],
        format!("{:?}", t.memory_only),
    );
    let acc = |n: u32| {
        t.node(n)
            .map(|n| n.access.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                (
                    a.initiator,
                    a.read_latency_ns,
                    a.write_latency_ns,
                    a.read_bandwidth_mibps,
                    a.write_bandwidth_mibps,
                )
            })
            .collect::<Vec<_>>()
    };
    let lat = |n: u32| {
        t.node(n)
            .and_then(|n| n.access.first())
            .and_then(|a| a.read_latency_ns)
    };
    let bw = |n: u32| {
        t.node(n)
            .and_then(|n| n.access.first())
            .and_then(|a| a.read_bandwidth_mibps)
    };
    let near = |b: Option<u32>, gb: u32| b.is_some_and(|b| b >= gb * 950 && b <= gb * 1100);
    let hmat_ok = lat(0) == Some(80)
        && lat(1) == Some(80)
        && lat(2) == Some(300)
        && near(bw(0), 20)
        && near(bw(1), 20)
        && near(bw(2), 5)
        && t.node(2)
            .is_some_and(|n| n.access.iter().any(|a| a.initiator == 0));
    c.check(
        "topology-hmat",
        hmat_ok,
        format!(
            "(initiator, rd lat, wr lat, rd MiB/s, wr MiB/s): node0 {:?} node1 {:?} node2 {:?}",
            acc(0),
            acc(1),
            acc(2)
        ),
    );
    let kt: Vec<(u32, Vec<u32>)> = t
        .kernel_tiers
        .iter()
        .map(|k| (k.id, k.nodes.clone()))
        .collect();
    let kt_ok = kt.len() == 2 && kt[0].1 == [0, 1] && kt[1].1 == [2];
    c.check("topology-kernel-memory-tiers", kt_ok, format!("{kt:?}"));
    let tiers = tier_nodes(&t);
    let tiers_ok = t.tier_source == TierSource::Hmat && tiers == [vec![0, 1], vec![2]];
    let figures: Vec<(Option<u32>, Option<u32>, u64)> = t
        .tiers
        .iter()
        .map(|t| (t.latency_ns, t.bandwidth_mibps, t.capacity_bytes >> 20))
        .collect();
    c.check(
        "tiers-node2-far-from-hmat",
        tiers_ok,
        format!(
            "{tiers:?} from {:?} seen from node {:?}; (latency ns, MiB/s, MiB): {figures:?}",
            t.tier_source, t.tiers_seen_from
        ),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--topology") {
        println!("{}", serde_json::to_string_pretty(&topology()).unwrap());
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--tier-child") {
        tier_checks::child(args.get(i + 1).map_or("", |s| s.as_str()));
    }
    let mut c = Checks { failed: 0 };
    topology_checks(&mut c);
    for n in 0..3 {
        placed_node(&mut c, n);
    }
    pinned_thread(&mut c, 1, 1);
    pinned_thread(&mut c, 0, 0);
    cross_node_free(&mut c);
    interleave(&mut c, &[0, 1]);
    interleave(&mut c, &[0, 1, 2]);
    far(&mut c);
    let err = Placed::node(7).map(|_| ()).unwrap_err().to_string();
    c.check("placed-node-7-refused", err.contains("node 7"), err);
    tier_checks::run(&mut c);
    if c.failed > 0 {
        println!("numa_probe: {} checks failed", c.failed);
        std::process::exit(1);
    }
    println!("numa_probe: all checks passed");
}
