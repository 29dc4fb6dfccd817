//! The placement checks of issue 17 in the VM (node 2 the far tier): a scope on `Placed::far()`
//! around a `HashMap<String, Vec<u8>>`, allocations after the scope, tokio tasks wrapped with
//! `.placed()` on node 2 and on node 0 sharing the runtime's worker threads, and the hot/cold
//! hints' placements (`Placed::cold()`, `Placed::hot()`: what the drop-in's hinted `new` and
//! `tieralloc_malloc_hinted` allocate through). Every check is a move_pages(2) census.

use super::{page_census, warm_up_on_cpu0};
use crate::{all_on, Checks};
use allocator_api2::vec::Vec as PVec;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use tieralloc::{Placed, PlacedFutureExt};

/// The sizes of the map's values: mostly small, a few large and one huge.
fn value_len(i: usize) -> usize {
    match i {
        0 => 3 << 20,
        _ if i % 500 == 0 => 300 << 10,
        _ => 100 + (i % 50) * 40,
    }
}

/// The pages of a map's keys, values and table (each entry's slot in the table).
fn map_ranges(map: &HashMap<String, Vec<u8>>) -> Vec<(*const u8, usize)> {
    let mut r = Vec::with_capacity(map.len() * 3);
    for (k, v) in map {
        r.push((k.as_ptr(), k.len()));
        r.push((v.as_ptr(), v.len()));
        r.push((
            k as *const String as *const u8,
            std::mem::size_of::<(String, Vec<u8>)>(),
        ));
    }
    r
}

/// Value `i`'s bytes (never 0: a zeroed huge block's pages would not be touched).
fn byte(i: usize) -> u8 {
    (i % 251) as u8 + 1
}

/// Blocks of `ranges` with a page off `node`: (address, length, pages' nodes, booked node).
fn strays(ranges: &[(*const u8, usize)], node: i32) -> Vec<String> {
    ranges
        .iter()
        .filter_map(|&(p, len)| {
            let on = tieralloc::numa::pages_on_nodes(p, len).ok()?;
            if on.iter().all(|&n| n == node) {
                return None;
            }
            // SAFETY: a live block of the global allocator or an interior slot of one (the
            // table's), whose segment header is mapped.
            let booked = unsafe { tieralloc::probe::block_node(p) };
            Some(format!("{p:?}+{len} pages {on:?} booked {booked}"))
        })
        .take(6)
        .collect()
}

fn build_map(n: usize) -> HashMap<String, Vec<u8>> {
    (0..n)
        .map(|i| (format!("key-{i:05}"), vec![byte(i); value_len(i)]))
        .collect()
}

fn map_intact(map: &HashMap<String, Vec<u8>>, n: usize) -> bool {
    map.len() == n
        && (0..n).all(|i| {
            map.get(&format!("key-{i:05}"))
                .is_some_and(|v| v.len() == value_len(i) && v.iter().all(|&b| b == byte(i)))
        })
}

/// A far scope around a map: all of it on node 2; after the scope, the same map and other
/// blocks on the thread's node 0.
pub fn scope_far(c: &mut Checks) {
    let r = std::thread::spawn(|| {
        warm_up_on_cpu0();
        const N: usize = 2000;
        let far = Placed::far().expect("a far tier");
        let base = build_map(N);
        let rb = map_ranges(&base);
        let mb = page_census(&rb);
        let base_ok = all_on(&mb, 0);
        drop(base);
        let map = {
            let _g = tieralloc::place(far);
            build_map(N)
        };
        let m = page_census(&map_ranges(&map));
        let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        let a = (
            base_ok && far.node_id() == Some(2) && all_on(&m, 2) && map_intact(&map, N),
            format!(
                "without a scope {mb:?}; {N} entries (keys, values of 100 B to 3 MiB, {bytes} B, and the table) built \
                 in a scope on Placed::far() (node {:?}): pages {m:?}; contents intact",
                far.node_id()
            ),
        );
        // The scope has ended: new allocations are the thread's (node 0).
        let after = build_map(N);
        let boxes: Vec<Box<[u8; 64]>> = (0..5000).map(|i| Box::new([i as u8; 64])).collect();
        let mut ranges = map_ranges(&after);
        ranges.extend(boxes.iter().map(|b| (b.as_ptr(), 64)));
        let m2 = page_census(&ranges);
        let b = (
            all_on(&m2, 0) && map_intact(&after, N) && all_on(&page_census(&map_ranges(&map)), 2),
            format!(
                "after the scope, the same map built again and 5000 boxes: pages {m2:?}; the \
                 scoped map still on node 2; off node 0: {:?}",
                strays(&ranges, 0)
            ),
        );
        (a, b)
    })
    .join()
    .expect("scope thread");
    c.check("scope-far-hashmap-100-percent-on-node-2", r.0 .0, r.0 .1);
    c.check("scope-ended-allocations-on-node-0", r.1 .0, r.1 .1);
}

/// After the demotion, automatic demotion and weighted interleave checks, the same map built
/// on a new thread of node 0: all of its pages on node 0. (Issue 16: moving a large block took
/// along the other memory of the 2 MiB huge page it shared, the kernel moving huge pages
/// whole; node-0 heaps then reused it, 28 to 250 pages of such a map on node 2, booked on 0.)
pub fn residue(c: &mut Checks) {
    let (m, s, ok) = std::thread::spawn(|| {
        warm_up_on_cpu0();
        let map = build_map(2000);
        let r = map_ranges(&map);
        (page_census(&r), strays(&r, 0), map_intact(&map, 2000))
    })
    .join()
    .expect("residue thread");
    c.check(
        "map-after-demotions-100-percent-on-node-0",
        all_on(&m, 0) && ok,
        format!(
            "after the demotion checks, 2000 entries built on a new thread of node 0: pages \
             {m:?}; off node 0: {s:?}"
        ),
    );
}

/// Small ids for threads (bit n of a task's mask: thread n polled it).
static NEXT_THREAD: AtomicU32 = AtomicU32::new(0);
thread_local! {
    static THREAD_BIT: u64 = 1 << (NEXT_THREAD.fetch_add(1, Ordering::Relaxed) % 64);
}

/// One task's work: at each wake-up, blocks of several sizes, kept; it goes on until at least
/// 30 rounds are done and some worker thread has polled both tasks (at most 400 rounds).
/// Returns the blocks and the number of rounds.
async fn task_work(me: &'static AtomicU64, other: &'static AtomicU64) -> (Vec<Vec<u8>>, usize) {
    let mut kept = Vec::new();
    let mut rounds = 0;
    while rounds < 400
        && (rounds < 30 || me.load(Ordering::SeqCst) & other.load(Ordering::SeqCst) == 0)
    {
        me.fetch_or(THREAD_BIT.with(|b| *b), Ordering::SeqCst);
        for size in [40, 700, 5000, 70_000] {
            // Never 0: a zeroed block's fresh pages would not be touched.
            kept.push(vec![(rounds % 250) as u8 + 1; size]);
        }
        rounds += 1;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    (kept, rounds)
}

/// Two tasks on a two-worker tokio runtime, one wrapped on node 2, one on node 0, polled by the
/// same worker threads: each one's blocks are all on its node.
pub fn tasks(c: &mut Checks) {
    static FAR_MASK: AtomicU64 = AtomicU64::new(0);
    static NEAR_MASK: AtomicU64 = AtomicU64::new(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let (n2, n0) = (Placed::node(2).unwrap(), Placed::node(0).unwrap());
    let (far, near) = rt.block_on(async {
        let a = tokio::spawn(task_work(&FAR_MASK, &NEAR_MASK).placed(n2));
        let b = tokio::spawn(task_work(&NEAR_MASK, &FAR_MASK).placed(n0));
        (a.await.expect("far task"), b.await.expect("near task"))
    });
    drop(rt);
    let census = |blocks: &Vec<Vec<u8>>| -> BTreeMap<i32, usize> {
        page_census(
            &blocks
                .iter()
                .map(|v| (v.as_ptr(), v.len()))
                .collect::<Vec<_>>(),
        )
    };
    let (mf, mn) = (census(&far.0), census(&near.0));
    let (fm, nm) = (
        FAR_MASK.load(Ordering::SeqCst),
        NEAR_MASK.load(Ordering::SeqCst),
    );
    let ok_contents = far.0.iter().chain(near.0.iter()).all(|v| {
        v.first()
            .is_some_and(|&r| r != 0 && v.iter().all(|&b| b == r))
    });
    c.check(
        "tokio-task-on-node-2-and-task-on-node-0-same-workers",
        all_on(&mf, 2) && all_on(&mn, 0) && fm & nm != 0 && ok_contents,
        format!(
            "task .placed(node 2): {} rounds on threads {fm:#b}, pages {mf:?}; task .placed(node \
             0): {} rounds on threads {nm:#b}, pages {mn:?}; contents intact: {ok_contents}",
            far.1, near.1
        ),
    );
}

/// The hints' placements: `Placed::cold()` (a hint below 128) puts blocks on node 2 and
/// `Placed::hot()` (128 and above) on the thread's node 0, as the drop-in's hinted entry points
/// do (preload/src/hotcold.rs allocates through these handles).
pub fn hints(c: &mut Checks) {
    let r = std::thread::spawn(|| {
        warm_up_on_cpu0();
        let (cold, hot) = (Placed::cold(), Placed::hot());
        let mut blocks: Vec<(PVec<u8, Placed>, PVec<u8, Placed>)> = Vec::new();
        for size in [16 << 10, 200, 100 << 10, 1 << 20] {
            for _ in 0..8 {
                let mut a: PVec<u8, Placed> = PVec::with_capacity_in(size, cold);
                a.resize(size, 0xC0);
                let mut b: PVec<u8, Placed> = PVec::with_capacity_in(size, hot);
                b.resize(size, 0x40);
                blocks.push((a, b));
            }
        }
        let mc = page_census(
            &blocks
                .iter()
                .map(|(a, _)| (a.as_ptr(), a.len()))
                .collect::<Vec<_>>(),
        );
        let mh = page_census(
            &blocks
                .iter()
                .map(|(_, b)| (b.as_ptr(), b.len()))
                .collect::<Vec<_>>(),
        );
        let ok = blocks
            .iter()
            .all(|(a, b)| a.iter().all(|&x| x == 0xC0) && b.iter().all(|&x| x == 0x40));
        (
            cold.node_id() == Some(2)
                && hot.node_id().is_none()
                && all_on(&mc, 2)
                && all_on(&mh, 0)
                && ok,
            format!(
                "32 blocks of 200 B to 1 MiB each: cold (node {:?}) pages {mc:?}, hot (node {:?}, \
                 the thread's) pages {mh:?}",
                cold.node_id(),
                hot.node_id()
            ),
        )
    })
    .join()
    .expect("hints thread");
    c.check("hint-cold-on-node-2-hot-on-node-0", r.0, r.1);
}

/// The drop-in's hinted C++ `new` and `tieralloc_malloc_hinted`, for real: the C++ program
/// tier_checks/hotcold_vm.cpp (put in the VM by tests/numa_vm.rs as /bin/hotcold_vm, with the
/// drop-in as /lib/tieralloc/libtieralloc_preload.so) run under LD_PRELOAD; it prints its own
/// `cxx-hint-*` lines.
pub fn cxx_hints(c: &mut Checks) {
    const PROG: &str = "/bin/hotcold_vm";
    const LIB: &str = "/lib/tieralloc/libtieralloc_preload.so";
    if !std::path::Path::new(PROG).exists() || !std::path::Path::new(LIB).exists() {
        return c.check(
            "cxx-hints-child",
            false,
            format!("{PROG} or {LIB} is missing (tests/numa_vm.rs puts them in the VM)"),
        );
    }
    let status = std::process::Command::new(PROG)
        .env("LD_PRELOAD", LIB)
        .status();
    c.check(
        "cxx-hints-child",
        status.as_ref().is_ok_and(|s| s.success()),
        format!("LD_PRELOAD={LIB} {PROG}: {status:?}"),
    );
}
