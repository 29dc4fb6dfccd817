//! The tier checks of vm-probe/src/main.rs (`numa_probe`) (issue 4), run inside the project's NUMA VM where
//! node 2 is the far tier. Policies are read from the environment once per process, so each
//! policy runs in a child: the probe re-executes itself (`--tier-child NAME`) with the policy's
//! variables set, and the child prints its own ok/FAIL lines.

use super::{all_on, census, tier_nodes, touch, Checks, PAGE};
use allocator_api2::vec::Vec as PVec;
use std::collections::{BTreeMap, HashSet};
use tieralloc::numa::{pages_on_nodes, pin_current_thread_to_cpu};
use tieralloc::tiers::{self, TierError};
use tieralloc::topology::TierSource;
use tieralloc::{topology, Placed};

mod kernel;
mod scope;

/// Writes a pattern derived from `seed` into every 8th byte of `v`.
fn fill(v: &mut [u8], seed: u64) {
    for (i, b) in v.iter_mut().enumerate().step_by(8) {
        *b = (seed as usize).wrapping_add(i / 8) as u8;
    }
}

fn intact(v: &[u8], seed: u64) -> bool {
    v.iter()
        .enumerate()
        .step_by(8)
        .all(|(i, b)| *b == (seed as usize).wrapping_add(i / 8) as u8)
}

fn warm_up_on_cpu0() {
    pin_current_thread_to_cpu(0).expect("pin to CPU 0");
    for _ in 0..64 {
        drop(vec![0u8; 100 << 10]);
    }
}

const MPOL_BIND: i32 = 2;

/// The memory policy of the mapping at `addr` (get_mempolicy with MPOL_F_ADDR): its mode and
/// the first 64 bits of its node mask. Touches nothing.
fn policy_at(addr: usize) -> Option<(i32, u64)> {
    const MPOL_F_ADDR: libc::c_ulong = 2;
    let mut mode: libc::c_int = -1;
    let mut mask = [0u64; 16];
    // SAFETY: get_mempolicy writes one int and a node mask of 1024 bits (16 words) that we
    // own; MPOL_F_ADDR only looks the address up.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            mask.as_mut_ptr(),
            1024 as libc::c_ulong,
            addr as *mut libc::c_void,
            MPOL_F_ADDR,
        )
    };
    (r == 0).then_some((mode, mask[0]))
}

/// Pages per node of the distinct pages holding `ranges` (each page counted once).
fn page_census(ranges: &[(*const u8, usize)]) -> BTreeMap<i32, usize> {
    let mut pages: Vec<usize> = ranges
        .iter()
        .flat_map(|&(p, len)| {
            let s = p as usize / PAGE;
            let e = (p as usize + len.max(1) - 1) / PAGE;
            s..=e
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    pages.sort_unstable();
    let mut m = BTreeMap::new();
    let mut i = 0;
    while i < pages.len() {
        let mut j = i + 1;
        while j < pages.len() && pages[j] == pages[j - 1] + 1 {
            j += 1;
        }
        for n in pages_on_nodes((pages[i] * PAGE) as *const u8, (j - i) * PAGE).unwrap() {
            *m.entry(n).or_insert(0) += 1;
        }
        i = j;
    }
    m
}

/// A deterministic xorshift generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo)
    }
}

/// Checks in the probe's own process (no policy), then one child per policy.
pub fn run(c: &mut Checks) {
    // Before the demotion checks (see scope::residue).
    scope::scope_far(c);
    scope::tasks(c);
    scope::hints(c);
    scope::cxx_hints(c);
    demotion(c);
    auto_demotion(c);
    weighted(c);
    scope::residue(c);
    for (name, env) in [
        ("ignore-hmat", "TIERALLOC_IGNORE_HMAT=1"),
        ("threshold", "TIERALLOC_FAR_THRESHOLD=1048576"),
        ("ratio", "TIERALLOC_TIER_RATIO=1:4"),
        ("budget", "TIERALLOC_TIER_BUDGET=near:48M,far:80M"),
        ("far-bind", "TIERALLOC_FAR_POLICY=bind"),
        ("far-preferred", "TIERALLOC_FAR_POLICY=preferred"),
    ] {
        let (k, v) = env.split_once('=').unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--tier-child", name])
            .env(k, v)
            .status();
        c.check(
            &format!("tier-child-{name}"),
            status.as_ref().is_ok_and(|s| s.success()),
            format!("{env}: {status:?}"),
        );
    }
}

/// A child: runs the checks of one policy and exits non-zero if any failed.
pub fn child(name: &str) -> ! {
    let mut c = Checks { failed: 0 };
    match name {
        "ignore-hmat" => ignore_hmat(&mut c),
        "threshold" => threshold(&mut c),
        "ratio" => ratio(&mut c),
        "budget" => budget(&mut c),
        "far-bind" => kernel::far_policy(&mut c, "bind"),
        "far-preferred" => kernel::far_policy(&mut c, "preferred"),
        _ => c.check("tier-child", false, format!("unknown child {name}")),
    }
    std::process::exit(if c.failed == 0 { 0 } else { 1 });
}

fn ignore_hmat(c: &mut Checks) {
    let t = topology();
    let tiers = tier_nodes(&t);
    c.check(
        "tiers-node2-far-from-memory-tiering",
        t.tier_source == TierSource::MemoryTiering && tiers == [vec![0, 1], vec![2]],
        format!("with HMAT ignored: {tiers:?} from {:?}", t.tier_source),
    );
}

fn demotion(c: &mut Checks) {
    let r = std::thread::spawn(|| {
        warm_up_on_cpu0();
        let mut out = Vec::new();
        // A huge block of the global allocator: down to node 2 and back.
        let len = 16 << 20;
        let mut v = vec![0u8; len];
        fill(&mut v, 7);
        let before = census(&[(v.as_ptr(), len)]);
        // SAFETY: our own live block; nobody frees or resizes it meanwhile.
        let d = unsafe { tiers::demote(v.as_mut_ptr(), len) };
        let after = census(&[(v.as_ptr(), len)]);
        let ok = d.is_ok_and(|r| r.failed == 0 && r.moved > 0)
            && all_on(&before, 0)
            && all_on(&after, 2)
            && intact(&v, 7);
        out.push((
            "demote-huge-to-node-2",
            ok,
            format!("before {before:?}, after {after:?}, {d:?}, contents intact"),
        ));
        let st = tiers::stats();
        let demoted = st.get(1).map_or(0, |s| s.demoted_bytes);
        // SAFETY: as above.
        let p = unsafe { tiers::promote(v.as_mut_ptr(), len) };
        let back = census(&[(v.as_ptr(), len)]);
        let promoted = tiers::stats().first().map_or(0, |s| s.promoted_bytes);
        out.push((
            "promote-huge-to-node-0",
            p.is_ok_and(|r| r.failed == 0) && all_on(&back, 0) && intact(&v, 7),
            format!("after {back:?}, {p:?}"),
        ));
        out.push((
            "tier-stats-demoted-promoted",
            demoted >= len as u64 && promoted >= len as u64,
            format!("demoted into tier 1: {demoted} B, promoted into tier 0: {promoted} B"),
        ));
        // Demoted and freed: the heap books it on node 2, so it is not reused as node-0
        // memory.
        // SAFETY: as above.
        let d2 = unsafe { tiers::demote(v.as_mut_ptr(), len) };
        let down_again = census(&[(v.as_ptr(), len)]);
        let d2_ok = d2.is_ok_and(|r| r.failed == 0 && r.moved > 0)
            && all_on(&down_again, 2)
            && intact(&v, 7);
        drop(v);
        let mut w = vec![1u8; len];
        touch(w.as_mut_ptr(), len);
        let m = census(&[(w.as_ptr(), len)]);
        out.push((
            "demoted-block-freed-then-new-block-on-node-0",
            d2_ok && all_on(&m, 0),
            format!("demoted again: {d2:?}, pages {down_again:?}; freed, new block {m:?}"),
        ));
        // Memory that is not tieralloc's: a mapping of our own.
        let mlen = 4 << 20;
        // SAFETY: a fresh private anonymous mapping, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mlen,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as *mut u8;
        assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
        // SAFETY: our mapping of mlen bytes.
        let s = unsafe { std::slice::from_raw_parts_mut(p, mlen) };
        fill(s, 3);
        // SAFETY: our own mapping, whole pages.
        let d = unsafe { tiers::demote(p, mlen) };
        let m = census(&[(p, mlen)]);
        out.push((
            "demote-own-mapping-to-node-2",
            d.is_ok_and(|r| r.failed == 0) && all_on(&m, 2) && intact(s, 3),
            format!("{m:?}, {d:?}"),
        ));
        // SAFETY: our mapping, no longer used.
        unsafe { libc::munmap(p as *mut libc::c_void, mlen) };
        // A small block shares its pages with other blocks: refused, untouched.
        let mut small = vec![5u8; 3000];
        // SAFETY: our own live block.
        let e = unsafe { tiers::demote(small.as_mut_ptr(), small.len()) };
        let m = census(&[(small.as_ptr(), small.len())]);
        out.push((
            "demote-shared-segment-refused",
            e == Err(TierError::SharedSegment) && all_on(&m, 0),
            format!("3000-byte block: {e:?}, pages {m:?}"),
        ));
        // A large block (1 MiB: its own run of slices in a shared segment) moves, and once it
        // is freed its slices come back bound to node 0: the next block there is on node 0.
        let llen = 1 << 20;
        let mut large = vec![0u8; llen];
        fill(&mut large, 9);
        let at = large.as_ptr() as usize;
        // SAFETY: a live block of the global allocator.
        let place_before = unsafe { tieralloc::block_place(large.as_ptr()) };
        // SAFETY: our own live block.
        let d = unsafe { tiers::demote(large.as_mut_ptr(), llen) };
        let moved = census(&[(large.as_ptr(), llen)]);
        let ok_moved = d.is_ok_and(|r| r.failed == 0) && all_on(&moved, 2) && intact(&large, 9);
        drop(large);
        // Freed: its range is bound back to node 0 (its pages were dropped, so there is
        // nothing to count; the mapping's policy says where the next pages will come from).
        let rebound = policy_at(at);
        let mut again = vec![0u8; llen];
        fill(&mut again, 10);
        let reused = again.as_ptr() as usize == at;
        let back = census(&[(again.as_ptr(), llen)]);
        // SAFETY: a live block of the global allocator.
        let place_after = unsafe { tieralloc::block_place(again.as_ptr()) };
        // An arena's chunks: the big ones move, values stay put and intact.
        let mut arena: tieralloc::Arena<[u64; 64]> = tieralloc::Arena::new();
        let first = arena.alloc([1; 64]) as *const [u64; 64] as usize;
        // The first chunk is small: it stays. Values never move, whatever chunk moved.
        for i in 0..20_000u64 {
            arena.alloc([i; 64]);
        }
        let ar = arena.demote();
        let vals_ok = arena
            .iter_mut()
            .skip(1)
            .enumerate()
            .all(|(i, v)| v[63] == i as u64);
        let last = arena
            .iter_mut()
            .last()
            .map_or(0, |v| v as *const [u64; 64] as usize);
        let first_now = arena
            .iter_mut()
            .next()
            .map(|v| (v as *const [u64; 64] as usize, *v));
        let first_ok = first_now == Some((first, [1; 64]));
        let moved_ok = ar.is_ok_and(|r| r.chunks_moved >= 3 && r.pages_failed == 0);
        let tail = census(&[(last as *const u8, 512)]);
        out.push((
            "arena-demote-big-chunks-to-node-2",
            moved_ok && vals_ok && all_on(&tail, 2) && first_ok,
            format!(
                "20001 values of 512 B: {ar:?}; newest value's page {tail:?}; values intact: \
                 {vals_ok}; first value in place and intact: {first_ok}"
            ),
        ));
        // The freed slices are bound back to node 0 (MPOL_BIND to node 0 on their range), and
        // the next 1 MiB block, wherever it lands, is on node 0.
        out.push((
            "demote-large-block-and-free-rebinds",
            ok_moved
                && rebound == Some((MPOL_BIND, 1 << 0))
                && all_on(&back, 0)
                && intact(&again, 10),
            format!(
                "1 MiB block: {d:?}, pages {moved:?}, at {place_before:x?}; freed, its range's \
                 policy (mode, nodes) {rebound:?}; next 1 MiB block (same address: {reused}) \
                 {back:?}, at {place_after:x?}"
            ),
        ));
        out
    })
    .join()
    .unwrap();
    for (name, ok, detail) in r {
        c.check(name, ok, detail);
    }
}

/// The automatic demoter: an old huge block moves to node 2 with its contents; a young one
/// stays; huge blocks allocated and freed all the while (racing the demoter's claims) are fine.
fn auto_demotion(c: &mut Checks) {
    let r = std::thread::spawn(|| {
        warm_up_on_cpu0();
        let len = 8 << 20;
        let mut old = vec![0u8; len];
        fill(&mut old, 11);
        let demoter = tiers::start_auto_demotion(
            std::time::Duration::from_millis(300),
            std::time::Duration::from_millis(20),
        )
        .expect("three tiers here");
        let churn = std::thread::spawn(|| {
            pin_current_thread_to_cpu(0).expect("pin to CPU 0");
            let mut n = 0u64;
            let t0 = std::time::Instant::now();
            while t0.elapsed() < std::time::Duration::from_millis(900) {
                let mut v = vec![0u8; 3 << 20];
                fill(&mut v, n);
                assert!(intact(&v, n));
                n += 1;
            }
            n
        });
        std::thread::sleep(std::time::Duration::from_millis(700));
        let churned = churn.join().expect("churn thread");
        // Young: allocated 100 ms before the census, well under the 300 ms age.
        let mut young = vec![0u8; len];
        fill(&mut young, 12);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let old_nodes = census(&[(old.as_ptr(), len)]);
        let young_nodes = census(&[(young.as_ptr(), len)]);
        let report = demoter.stop();
        let ok = all_on(&old_nodes, 2)
            && intact(&old, 11)
            && all_on(&young_nodes, 0)
            && intact(&young, 12)
            && report.blocks >= 1;
        (
            ok,
            format!(
                "after 300 ms: old 8 MiB block {old_nodes:?} (contents intact: {}), young one \
                 {young_nodes:?}; {churned} huge blocks allocated and freed meanwhile; {report:?}",
                intact(&old, 11)
            ),
        )
    })
    .join()
    .expect("auto demotion thread");
    c.check("auto-demote-old-huge-to-node-2", r.0, r.1);
}

fn weighted(c: &mut Checks) {
    let r = std::thread::spawn(|| {
        warm_up_on_cpu0();
        let mut out = Vec::new();
        let kernel = tieralloc::numa::weighted_interleave_supported();
        // 1:4 is not the kernel's weights (all 1 by default): placed page by page.
        let pages = 2000;
        let a = Placed::interleave_weighted(&[(0, 1), (2, 4)]).unwrap();
        let mut v: PVec<u8, Placed> = PVec::with_capacity_in(pages * PAGE, a);
        v.resize(pages * PAGE, 4);
        let m = census(&[(v.as_ptr(), pages * PAGE)]);
        let (n0, n2) = (m.get(&0).copied(), m.get(&2).copied());
        out.push((
            "weighted-interleave-1-to-4",
            n0 == Some(400) && n2 == Some(1600) && m.len() == 2,
            format!("{pages} pages over nodes 0 and 2 at 1:4: {m:?}"),
        ));
        // 1:1 over tiers 0 and 1 matches the kernel's default weights: the kernel's
        // MPOL_WEIGHTED_INTERLEAVE places them as they are touched.
        let b = Placed::interleave_tiers(&[1, 1]).unwrap();
        let mut w: PVec<u8, Placed> = PVec::with_capacity_in(pages * PAGE, b);
        w.resize(pages * PAGE, 4);
        touch(w.as_mut_ptr(), pages * PAGE);
        let m = census(&[(w.as_ptr(), pages * PAGE)]);
        let (n0, n2) = (m.get(&0).copied(), m.get(&2).copied());
        out.push((
            "weighted-interleave-tiers-1-to-1",
            kernel
                && n0.zip(n2).is_some_and(|(a, b)| a.abs_diff(b) <= 1)
                && m.len() == 2
                && b.interleave_nodes() == [0, 2],
            format!(
                "kernel weighted interleave: {kernel}; nodes {:?}: {m:?}",
                b.interleave_nodes()
            ),
        ));
        out
    })
    .join()
    .unwrap();
    for (name, ok, detail) in r {
        c.check(name, ok, detail);
    }
}

fn threshold(c: &mut Checks) {
    warm_up_on_cpu0();
    let mut big = Vec::new();
    for i in 0..6u64 {
        let mut v = vec![0u8; 8 << 20];
        fill(&mut v, i);
        big.push(v);
    }
    let boxes: Vec<Box<[u8; 64]>> = (0..20_000).map(|i| Box::new([i as u8; 64])).collect();
    let mut mids = Vec::new();
    for i in 0..20u64 {
        let mut v = vec![0u8; if i % 2 == 0 { 100 << 10 } else { 512 << 10 }];
        fill(&mut v, i);
        mids.push(v);
    }
    let mb = census(
        &big.iter()
            .map(|v| (v.as_ptr(), v.len()))
            .collect::<Vec<_>>(),
    );
    let mut small: Vec<(*const u8, usize)> = boxes.iter().map(|b| (b.as_ptr(), 64)).collect();
    small.extend(mids.iter().map(|v| (v.as_ptr(), v.len())));
    let ms = census(&small);
    c.check(
        "threshold-8MiB-on-node-2",
        all_on(&mb, 2),
        format!("6 × 8 MiB with TIERALLOC_FAR_THRESHOLD=1048576: {mb:?}"),
    );
    let intact_all = big.iter().enumerate().all(|(i, v)| intact(v, i as u64))
        && mids.iter().enumerate().all(|(i, v)| intact(v, i as u64))
        && boxes.iter().enumerate().all(|(i, b)| b[63] == i as u8);
    c.check(
        "threshold-small-on-thread-node-0",
        all_on(&ms, 0) && intact_all,
        format!("20000 × 64 B, 100 KiB and 512 KiB vectors: {ms:?}; contents intact: {intact_all}"),
    );
}

fn ratio(c: &mut Checks) {
    warm_up_on_cpu0();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut objs: Vec<(Box<[u8]>, u64)> = Vec::new();
    let mut total = 0usize;
    let goal = 320 << 20;
    let mut seed = 0u64;
    while total < goal {
        // By count: mostly small blocks; by bytes: about a fifth small, the rest medium, large
        // and huge blocks.
        let size = match rng.range(0, 1000) {
            0..=984 => rng.range(16, 4096),
            985..=996 => rng.range(4096, 64 << 10),
            997..=998 => rng.range(64 << 10, 2 << 20),
            _ => rng.range(2 << 20, 8 << 20),
        };
        let mut b = vec![0u8; size].into_boxed_slice();
        touch(b.as_mut_ptr(), size);
        seed += 1;
        b[0] = seed as u8;
        total += size;
        objs.push((b, seed));
        // Some frees of large blocks along the way (huge ones would wait in the thread's
        // cache of huge mappings, which counts as committed).
        if (64 << 10..=2 << 20).contains(&size) && rng.range(0, 100) < 30 {
            let i = rng.range(0, objs.len());
            if (64 << 10..=2 << 20).contains(&objs[i].0.len()) {
                let (b, _) = objs.swap_remove(i);
                total -= b.len();
            }
        }
    }
    let ranges: Vec<(*const u8, usize)> = objs.iter().map(|(b, _)| (b.as_ptr(), b.len())).collect();
    let m = page_census(&ranges);
    let near = m.get(&0).copied().unwrap_or(0) + m.get(&1).copied().unwrap_or(0);
    let far = m.get(&2).copied().unwrap_or(0);
    let share = far as f64 / (near + far).max(1) as f64;
    let st = tiers::stats();
    let committed: Vec<u64> = st.iter().map(|s| s.committed_bytes >> 20).collect();
    let intact_all = objs.iter().all(|(b, s)| b[0] == *s as u8);
    c.check(
        "ratio-1-to-4-within-2-percent",
        (share - 0.8).abs() <= 0.02 && intact_all && m.keys().all(|k| (0..=2).contains(k)),
        format!(
            "{} live objects, {} MiB, 16 B to 8 MiB: pages {m:?}; far share {:.2} % (target \
             80 %); committed MiB per tier {committed:?}",
            objs.len(),
            total >> 20,
            share * 100.0
        ),
    );
}

fn budget(c: &mut Checks) {
    warm_up_on_cpu0();
    let mut objs: Vec<(Vec<u8>, u64)> = Vec::new();
    for i in 0..1000u64 {
        let mut v = vec![0u8; 32 << 10];
        fill(&mut v, i);
        objs.push((v, i));
        if i % 62 == 0 {
            let mut v = vec![0u8; 4 << 20];
            fill(&mut v, i + 5000);
            objs.push((v, i + 5000));
        }
    }
    let total: usize = objs.iter().map(|(v, _)| v.len()).sum();
    let m = page_census(
        &objs
            .iter()
            .map(|(v, _)| (v.as_ptr(), v.len()))
            .collect::<Vec<_>>(),
    );
    let st = tiers::stats();
    let near_mib = st[0].committed_bytes >> 20;
    let spills = st[0].spills;
    c.check(
        "budget-near-spent-spills-to-node-2",
        near_mib <= 48 + 4 && m.get(&2).copied().unwrap_or(0) * PAGE >= 32 << 20 && spills > 0,
        format!(
            "{} MiB allocated with near:48M: pages {m:?}; near committed {near_mib} MiB, {spills} \
             spills",
            total >> 20
        ),
    );
    let far = Placed::far().unwrap();
    let mut big: PVec<u8, Placed> = PVec::new_in(far);
    let refused = big.try_reserve_exact(40 << 20);
    let mut fits: PVec<u8, Placed> = PVec::new_in(far);
    let ok_small = fits.try_reserve_exact(8 << 20);
    let st = tiers::stats();
    c.check(
        "budget-far-request-beyond-refused",
        refused.is_err() && ok_small.is_ok() && st[1].refused > 0,
        format!(
            "far committed {} MiB of 80: 40 MiB Placed::far request {:?}, 8 MiB {:?}",
            st[1].committed_bytes >> 20,
            refused.map_err(|_| "refused"),
            ok_small.map_err(|_| "refused")
        ),
    );
    let intact_all = objs.iter().all(|(v, s)| intact(v, *s));
    c.check(
        "budget-live-objects-untouched",
        intact_all,
        format!("{} objects checked", objs.len()),
    );
}
