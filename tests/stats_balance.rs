//! The allocator's numbers balance (review rev35): a seeded random driver runs traffic over
//! every path that books live bytes (small, medium, large and huge blocks; `realloc` in place,
//! moving, across `TIERALLOC_FAR_THRESHOLD`, huge shrunk into classes; frees by other threads
//! and after the owner exited; threads moved between nodes; `tiers::demote`/`promote` and the
//! automatic demoter; far, node and labelled scopes; `Placed` handles; pools and arenas),
//! then frees everything, lets the purge delay pass and collects on threads of every node.
//! Every live-byte number (`stats()` per node, per class, large and huge, `tiers::stats()`
//! per tier, every label per node) must be back at its baseline, and a reader thread checks
//! during the traffic that no far-node, tier or label number goes below zero.
//!
//! Runs in a child under `TIERALLOC_SIMULATE_NODES=2,far=1` (node 2 is the far tier),
//! `TIERALLOC_FAR_THRESHOLD=1M`, `TIERALLOC_PURGE_DELAY_MS=1`.

use allocator_api2::alloc::Allocator;
use std::alloc::{alloc, dealloc, realloc, Layout};
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tieralloc::{place, place_labeled, Placed};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;
#[path = "common/rng.rs"]
mod rng;

use rng::Rng;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const LABELS: [&str; 3] = ["rev35-a", "rev35-b", "rev35-c"];

/// A live block: where, its layout, the handle that made it (`None`: the global allocator),
/// and the byte it is filled with.
struct Blk {
    p: usize,
    size: usize,
    align: usize,
    handle: Option<Placed>,
    byte: u8,
}

impl Blk {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).unwrap()
    }
    fn check(&self) {
        // SAFETY: a live block of `size` bytes, written whole at its allocation.
        let s = unsafe { std::slice::from_raw_parts(self.p as *const u8, self.size) };
        assert!(
            s[0] == self.byte && s[self.size - 1] == self.byte && s[self.size / 2] == self.byte,
            "block {:#x} ({} B) changed",
            self.p,
            self.size
        );
    }
    fn free(self) {
        self.check();
        match self.handle {
            // SAFETY: a live block of the global allocator with this layout, freed once.
            None => unsafe { dealloc(self.p as *mut u8, self.layout()) },
            // SAFETY: a live block of a `Placed` handle with this layout, freed once (any
            // handle frees any `Placed` block).
            Some(h) => unsafe {
                h.deallocate(NonNull::new(self.p as *mut u8).unwrap(), self.layout())
            },
        }
    }
}

fn size_of_kind(r: &mut Rng) -> usize {
    match r.below(10) {
        0..=3 => 1 + r.below(8 * KIB as u64) as usize,
        4..=5 => 8 * KIB + 1 + r.below(56 * KIB as u64) as usize,
        6..=8 => 64 * KIB + 1 + r.below((2 * MIB - 64 * KIB) as u64) as usize,
        _ => 2 * MIB + 1 + r.below(5 * MIB as u64) as usize,
    }
}

fn fill(p: *mut u8, size: usize, byte: u8) {
    // SAFETY: a fresh block of at least `size` bytes.
    unsafe { std::ptr::write_bytes(p, byte, size) };
}

/// Allocates one block by a random route.
fn make(r: &mut Rng) -> Blk {
    let size = size_of_kind(r);
    let align = [8, 16, 64, 4096][r.below(4) as usize];
    let layout = Layout::from_size_align(size, align).unwrap();
    let byte = (r.below(250) + 1) as u8;
    let label = LABELS[r.below(3) as usize];
    let route = r.below(11);
    let mut handle = None;
    // The scope the block is allocated in (routes 0-9), or a `Placed` handle (the rest).
    let scope = match route {
        0..=2 => None,
        3 => Some(place(Placed::far().unwrap())),
        4 => Some(place(Placed::node(r.below(3) as u32).unwrap())),
        5 => Some(place_labeled(Placed::local().unwrap(), label)),
        6 => Some(place_labeled(Placed::far().unwrap(), label)),
        7 => Some(place_labeled(
            Placed::node(r.below(2) as u32).unwrap(),
            label,
        )),
        8 => Some(if r.below(2) == 0 {
            place_labeled(Placed::interleave(&[0, 1, 2]).unwrap(), label)
        } else {
            place(Placed::interleave(&[0, 1, 2]).unwrap())
        }),
        9 => Some(place(Placed::tier(1).unwrap())),
        _ => {
            handle = Some(match r.below(3) {
                0 => Placed::far().unwrap(),
                1 => Placed::node(r.below(2) as u32).unwrap(),
                _ => Placed::local().unwrap(),
            });
            None
        }
    };
    let p = match handle {
        Some(h) => h.allocate(layout).unwrap().as_ptr() as *mut u8,
        // SAFETY: a non-zero size.
        None => unsafe { alloc(layout) },
    };
    drop(scope);
    assert!(!p.is_null());
    fill(p, size, byte);
    Blk {
        p: p as usize,
        size,
        align,
        handle,
        byte,
    }
}

/// Resizes a global block by `realloc` (sometimes inside a scope) to a size of any kind.
fn resize(r: &mut Rng, b: &mut Blk) {
    b.check();
    if let Some(h) = b.handle {
        let new = size_of_kind(r);
        let old = b.layout();
        let to = Layout::from_size_align(new, b.align).unwrap();
        let p = NonNull::new(b.p as *mut u8).unwrap();
        // SAFETY: a live block of a `Placed` handle with layout `old`; `to` is larger or
        // smaller as the call asks.
        let q = unsafe {
            if new >= b.size {
                h.grow(p, old, to)
            } else {
                h.shrink(p, old, to)
            }
        }
        .unwrap();
        b.p = q.as_ptr() as *mut u8 as usize;
        b.size = new;
        fill(b.p as *mut u8, new, b.byte);
        return;
    }
    let new = if r.below(3) == 0 {
        // Near the old size: in place where it can be.
        (b.size as i64 + r.below(8192) as i64 - 4096).max(1) as usize
    } else {
        size_of_kind(r)
    };
    let label = LABELS[r.below(3) as usize];
    let scope = match r.below(4) {
        0 => Some(place_labeled(Placed::far().unwrap(), label)),
        1 => Some(place(Placed::node(r.below(2) as u32).unwrap())),
        _ => None,
    };
    // SAFETY: a live global block with this layout; a non-zero new size.
    let p = unsafe { realloc(b.p as *mut u8, b.layout(), new) };
    drop(scope);
    assert!(!p.is_null());
    let keep = new.min(b.size);
    // SAFETY: the new block holds `new` bytes, the first `keep` kept from the old one.
    let s = unsafe { std::slice::from_raw_parts(p, keep) };
    assert!(
        s[0] == b.byte && s[keep - 1] == b.byte,
        "realloc lost the contents"
    );
    b.p = p as usize;
    b.size = new;
    fill(p, new, b.byte);
}

/// Every number this test balances.
#[derive(Clone, Debug, PartialEq)]
struct Nums {
    nodes: [i64; 3],
    tiers: [i64; 2],
    classes: BTreeMap<usize, u64>,
    large: u64,
    huge: u64,
    total: u64,
    labels: BTreeMap<(String, u32), i64>,
    committed: [u64; 3],
}

fn nums() -> Nums {
    let s = tieralloc::stats();
    let node = |n: u32| {
        s.nodes
            .iter()
            .find(|x| x.node == n)
            .map_or(0, |x| x.bytes_live)
    };
    let comm = |n: u32| {
        s.nodes
            .iter()
            .find(|x| x.node == n)
            .map_or(0, |x| x.bytes_committed)
    };
    let t = tieralloc::tiers::stats();
    let mut labels = BTreeMap::new();
    for l in &s.labels {
        labels.insert((l.label.clone(), u32::MAX), l.bytes_live);
        for n in &l.nodes {
            labels.insert((l.label.clone(), n.node), n.bytes_live);
        }
    }
    Nums {
        nodes: [node(0), node(1), node(2)],
        tiers: [t[0].live_bytes, t[1].live_bytes],
        classes: s.classes.iter().map(|c| (c.block_size, c.live)).collect(),
        large: s.large_bytes_live,
        huge: s.huge_bytes_live,
        total: s.bytes_live,
        labels,
        committed: [comm(0), comm(1), comm(2)],
    }
}

/// One worker: `ops` random operations, sometimes moving to the other CPU node; leaves part
/// of its blocks to the others in `pool` when it exits.
fn worker(seed: u64, ops: usize, shared: Arc<Mutex<Vec<Blk>>>, cpus: [u32; 2]) {
    let mut r = Rng(seed);
    let mut node = (seed % 2) as usize;
    tieralloc::numa::pin_current_thread_to_cpu(cpus[node]).unwrap();
    let mut mine: Vec<Blk> = Vec::new();
    let objs: tieralloc::Pool<Vec<u8>> = tieralloc::Pool::new(|| vec![0u8; 3000]);
    let arena: tieralloc::Arena<[u64; 32], Placed> =
        tieralloc::Arena::new_in(Placed::far().unwrap());
    for _ in 0..ops {
        match r.below(20) {
            0..=6 => mine.push(make(&mut r)),
            7..=8 if !mine.is_empty() => {
                let i = r.below(mine.len() as u64) as usize;
                resize(&mut r, &mut mine[i]);
            }
            9..=10 if !mine.is_empty() => {
                let i = r.below(mine.len() as u64) as usize;
                mine.swap_remove(i).free();
            }
            11 if !mine.is_empty() => {
                let i = r.below(mine.len() as u64) as usize;
                shared.lock().unwrap().push(mine.swap_remove(i));
            }
            12 => {
                let b = {
                    let mut s = shared.lock().unwrap();
                    let n = s.len();
                    (n > 0).then(|| s.swap_remove(r.below(n as u64) as usize))
                };
                if let Some(b) = b {
                    b.free();
                }
            }
            13 if !mine.is_empty() => {
                let i = r.below(mine.len() as u64) as usize;
                let b = &mine[i];
                if b.size > 64 * KIB {
                    // SAFETY: our own live block, not freed or resized while it moves.
                    let _ = unsafe {
                        if r.below(2) == 0 {
                            tieralloc::tiers::demote(b.p as *mut u8, b.size)
                        } else {
                            tieralloc::tiers::promote(b.p as *mut u8, b.size)
                        }
                    };
                }
            }
            14 => {
                node ^= 1;
                tieralloc::numa::pin_current_thread_to_cpu(cpus[node]).unwrap();
            }
            15 => {
                let mut gs: Vec<_> = (0..r.below(4) + 1).map(|_| objs.get()).collect();
                for g in &mut gs {
                    g[0] = 1;
                }
            }
            16 => {
                for i in 0..r.below(200) {
                    arena.alloc([i; 32]);
                }
            }
            17 => tieralloc::collect(),
            _ => {}
        }
    }
    // Leave about half to the others; keep the rest live as the thread exits (freed by the
    // driver later).
    let mut s = shared.lock().unwrap();
    for b in mine {
        s.push(b);
    }
    drop(s);
    let a = arena.stats();
    assert_eq!(a.bytes_used, arena.len() * 256, "arena: {a:?}");
    let st = objs.stats();
    assert_eq!(st.out, 0, "pool: {st:?}");
}

/// Operations per worker (`STATS_BALANCE_OPS` for longer runs by hand).
fn ops() -> usize {
    std::env::var("STATS_BALANCE_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

static MIN_CPU: AtomicI64 = AtomicI64::new(0);
static MIN_FAR: AtomicI64 = AtomicI64::new(0);
static MIN_TIER1: AtomicI64 = AtomicI64::new(0);
static MIN_LABEL: AtomicI64 = AtomicI64::new(0);

fn drive(seed: u64) {
    let (Some(c0), Some(c1)) = (
        child::cpu_of_simulated_node(0),
        child::cpu_of_simulated_node(1),
    ) else {
        println!("skipped: no CPU of both simulated nodes");
        return;
    };
    let cpus = [c0, c1];
    // Warm up what the thread machinery and the statistics allocate once.
    for c in cpus {
        std::thread::spawn(move || {
            tieralloc::numa::pin_current_thread_to_cpu(c).unwrap();
            let _ = nums();
            tieralloc::collect();
        })
        .join()
        .unwrap();
    }
    let _ = nums();
    let settle = || {
        std::thread::sleep(Duration::from_millis(20));
        for c in cpus {
            std::thread::spawn(move || {
                tieralloc::numa::pin_current_thread_to_cpu(c).unwrap();
                tieralloc::collect();
            })
            .join()
            .unwrap();
        }
        tieralloc::collect();
    };
    settle();
    let before = nums();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = nums();
                MIN_FAR.fetch_min(n.nodes[2], Ordering::Relaxed);
                MIN_CPU.fetch_min(n.nodes[0].min(n.nodes[1]), Ordering::Relaxed);
                MIN_TIER1.fetch_min(n.tiers[1], Ordering::Relaxed);
                for v in n.labels.values() {
                    MIN_LABEL.fetch_min(*v, Ordering::Relaxed);
                }
                reads += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            reads
        })
    };
    let demoter =
        tieralloc::tiers::start_auto_demotion(Duration::from_millis(2), Duration::from_millis(3))
            .ok();
    let shared = Arc::new(Mutex::new(Vec::new()));
    let mut r = Rng(seed);
    for _round in 0..3 {
        let ws: Vec<_> = (0..3)
            .map(|_| {
                let (s, sh) = (r.next() | 1, shared.clone());
                std::thread::spawn(move || worker(s, ops(), sh, cpus))
            })
            .collect();
        for w in ws {
            w.join().unwrap();
        }
    }
    // Free what the exited workers left, from threads of both nodes.
    let left: Vec<Blk> = std::mem::take(&mut *shared.lock().unwrap());
    let mut halves = [Vec::new(), Vec::new()];
    for (i, b) in left.into_iter().enumerate() {
        halves[i % 2].push(b);
    }
    let [h0, h1] = halves;
    for (c, h) in [(c0, h0), (c1, h1)] {
        std::thread::spawn(move || {
            tieralloc::numa::pin_current_thread_to_cpu(c).unwrap();
            for b in h {
                b.free();
            }
        })
        .join()
        .unwrap();
    }
    let rep = demoter.map(|d| d.stop());
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    settle();
    settle();
    let after = nums();
    println!("demoter: {rep:?}, reads during traffic: {reads}");
    println!("before: {before:?}\nafter:  {after:?}");
    let mins = (
        MIN_FAR.load(Ordering::Relaxed),
        MIN_TIER1.load(Ordering::Relaxed),
        MIN_LABEL.load(Ordering::Relaxed),
    );
    println!(
        "lowest far node, tier 1, label seen: {mins:?}; CPU nodes {}",
        MIN_CPU.load(Ordering::Relaxed)
    );
    println!("committed {:?} -> {:?}", before.committed, after.committed);
    let mut bad = Vec::new();
    let d = |a: i64, b: i64| a - b;
    // The CPU nodes within 2 KiB (the thread machinery's own small blocks), everything on the
    // far node and tier, large, huge and every label exactly.
    for n in 0..2 {
        if d(after.nodes[n], before.nodes[n]).abs() > 2048 {
            bad.push(format!(
                "node {n}: {:+}",
                d(after.nodes[n], before.nodes[n])
            ));
        }
    }
    if after.nodes[2] != before.nodes[2] {
        bad.push(format!("node 2: {:+}", d(after.nodes[2], before.nodes[2])));
    }
    if after.tiers[1] != before.tiers[1] {
        bad.push(format!("tier 1: {:+}", d(after.tiers[1], before.tiers[1])));
    }
    if after.large != before.large || after.huge != before.huge {
        bad.push(format!(
            "large {} -> {}, huge {} -> {}",
            before.large, after.large, before.huge, after.huge
        ));
    }
    if (after.total as i64 - before.total as i64).abs() > 2048 {
        bad.push(format!("total: {} -> {}", before.total, after.total));
    }
    for (k, v) in &after.labels {
        let b = before.labels.get(k).copied().unwrap_or(0);
        if *v != b {
            bad.push(format!("label {k:?}: {b} -> {v}"));
        }
    }
    for (k, v) in &after.classes {
        let b = before.classes.get(k).copied().unwrap_or(0);
        if *v > b + 4 || *v < b {
            bad.push(format!("class {k}: {b} -> {v}"));
        }
    }
    // Sums that must agree at rest: nodes against the total, tiers against the nodes.
    let node_sum: i64 = after.nodes.iter().sum();
    if (node_sum - after.total as i64).abs() > 0 {
        bad.push(format!("nodes sum {node_sum} != total {}", after.total));
    }
    // (`tiers::stats()` takes a snapshot of its own, after `nums()`'s, which allocated.)
    if (after.tiers[0] - after.nodes[0] - after.nodes[1]).abs() > 4096
        || after.tiers[1] != after.nodes[2]
    {
        bad.push(format!(
            "tiers {:?} vs nodes {:?}",
            after.tiers, after.nodes
        ));
    }
    // Committed bytes: the far node's back exactly (nothing else lives there), the CPU
    // nodes' within two segments (pages kept for reuse).
    if after.committed[2] != before.committed[2]
        || after.committed[0] + after.committed[1]
            > before.committed[0] + before.committed[1] + 8 * MIB as u64
    {
        bad.push(format!(
            "committed {:?} -> {:?}",
            before.committed, after.committed
        ));
    }
    if mins.0 < 0 || mins.1 < 0 || mins.2 < 0 {
        bad.push(format!("below zero during traffic: {mins:?}"));
    }
    assert!(bad.is_empty(), "seed {seed}: {bad:#?}");
}

fn run(name: &str, seed: u64) {
    if !child::is_child() {
        let mut cmd = child::on_simulated_nodes(name, "2,far=1");
        cmd.env("TIERALLOC_FAR_THRESHOLD", "1M")
            .env("TIERALLOC_PURGE_DELAY_MS", "1");
        return child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
    }
    let seed = std::env::var("STATS_BALANCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    drive(seed);
}

#[test]
fn every_number_comes_back_after_random_traffic_seed_1() {
    run(
        "every_number_comes_back_after_random_traffic_seed_1",
        0x9e37_79b9_7f4a_7c15,
    );
}
