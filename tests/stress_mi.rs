//! A stress test in the style of mimalloc's test-stress, with tieralloc as this binary's global
//! allocator. Rounds of at least 32 threads (on however few cores) allocate, check, resize,
//! hand over and free blocks of every size (mostly small, some large and huge) at alignments
//! from 16 B to 8 MiB, some zeroed; they move themselves between CPUs (so between simulated
//! nodes under `TIERALLOC_SIMULATE_NODES`), call `tieralloc::collect()`, and exit at different
//! times, leaving blocks behind for the next round's threads.
//!
//! What it detects:
//! - A block handed out twice: every live block is in an index of address ranges (`Index`),
//!   entered right after the allocator returns it and removed right before it is freed, so
//!   two live blocks that overlap are caught at the second one's insertion, whichever threads
//!   hold them.
//! - A corrupted block, or one reused while live: each block carries a cookie derived from
//!   its address, size and serial number, written over the whole block (or, above 64 KiB, its
//!   first and last 4 KiB and one word in every 509) and checked when it is freed, resized,
//!   handed over, and at random times while it is live.
//! - realloc losing contents or alignment, alloc_zeroed returning non-zero bytes, an
//!   alignment ≤ 2 MiB refused or not honoured.
//! - Leaks: once every block is freed, live bytes are back to what they were before the run
//!   (to within the index's own nodes), large and huge live bytes exactly so, and segments in
//!   use, abandoned segments and committed bytes within tight bounds.
//!
//! Knobs (environment): `TIERALLOC_STRESS_SECS=N` repeats runs with new seeds for N seconds;
//! `TIERALLOC_STRESS_SEED=S` replays seed S; `TIERALLOC_STRESS_THREADS=T` (default 32);
//! `TIERALLOC_STRESS_ROUNDS=R` (default 4, or 10 with `TIERALLOC_STRESS_SECS`).
//! Without them the test is one short deterministic-seed run (a few seconds in release).

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

#[path = "stress_mi/support.rs"]
mod support;
use support::*;

#[global_allocator]
static A: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// The largest alignment tieralloc serves; above it a request may be refused (null).
const MAX_ALIGN: usize = 2 << 20;

static INDEX: Index = Index(Mutex::new(BTreeMap::new()));

/// The shared transfer array: addresses of live blocks, swapped in and out atomically.
const SLOTS: usize = 1024;
static TRANSFER: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

static SERIAL: AtomicU64 = AtomicU64::new(1);

// ---------------------------------------------------------------------------------------------
// Counters, to show (and assert) that the run did what it claims.

#[derive(Default)]
struct Counts {
    allocs: AtomicU64,
    zeroed: AtomicU64,
    aligned: AtomicU64,
    refused_align: AtomicU64,
    frees: AtomicU64,
    foreign_frees: AtomicU64,
    reallocs: AtomicU64,
    foreign_reallocs: AtomicU64,
    transfers: AtomicU64,
    checks: AtomicU64,
    moves: AtomicU64,
    collects: AtomicU64,
    bursts: AtomicU64,
    huge: AtomicU64,
}

static COUNTS: Counts = Counts {
    allocs: AtomicU64::new(0),
    zeroed: AtomicU64::new(0),
    aligned: AtomicU64::new(0),
    refused_align: AtomicU64::new(0),
    frees: AtomicU64::new(0),
    foreign_frees: AtomicU64::new(0),
    reallocs: AtomicU64::new(0),
    foreign_reallocs: AtomicU64::new(0),
    transfers: AtomicU64::new(0),
    checks: AtomicU64::new(0),
    moves: AtomicU64::new(0),
    collects: AtomicU64::new(0),
    bursts: AtomicU64::new(0),
    huge: AtomicU64::new(0),
};

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Sizes and alignments.

/// Mostly small; some medium, large (own span in a segment), huge (own mapping).
fn random_size(r: &mut Rng) -> usize {
    match r.below(1000) {
        0..=649 => r.range(1, 128),
        650..=849 => r.range(129, 1024),
        850..=939 => r.range(1025, 8 << 10),
        940..=979 => r.range((8 << 10) + 1, 64 << 10),
        980..=996 => r.range((64 << 10) + 1, 2 << 20),
        _ => r.range((2 << 20) + 1, 5 << 20),
    }
}

/// 16 B .. 8 MiB: mostly page-ish, now and then a segment's worth or more.
fn random_align(r: &mut Rng) -> usize {
    match r.below(100) {
        0..=59 => 1 << r.range(4, 7),    // 16..128
        60..=89 => 1 << r.range(8, 12),  // 256..4096
        90..=97 => 1 << r.range(13, 20), // 8 KiB .. 1 MiB
        _ => 1 << r.range(21, 23),       // 2, 4, 8 MiB (above 2 MiB may be refused)
    }
}

// ---------------------------------------------------------------------------------------------
// The workers.

struct Cfg {
    threads: usize,
    rounds: usize,
    /// Operations per worker, on average (each worker does 1/2 .. 3/2 of it).
    ops: usize,
    /// Blocks a worker keeps to itself, at most.
    keep: usize,
    cpus: Vec<usize>,
}

struct Worker<'a> {
    r: Rng,
    id: u32,
    mine: Vec<Blk>,
    cfg: &'a Cfg,
    seed: u64,
    round: usize,
}

impl Worker<'_> {
    fn fail(&self, f: Fault) -> ! {
        die(format_args!(
            "seed {:#x} round {} worker {}: {f}",
            self.seed, self.round, self.id
        ))
    }

    fn ok<T>(&self, r: Result<T, Fault>) -> T {
        match r {
            Ok(v) => v,
            Err(f) => self.fail(f),
        }
    }

    fn check(&self, b: &Blk, at: usize, limit: usize, when: &'static str) {
        if let Err(o) = check_at(b, at, limit) {
            self.fail(Fault::Cookie(*b, at, o, when));
        }
    }

    fn alloc(&mut self) -> Option<Blk> {
        let size = random_size(&mut self.r);
        let kind = self.r.below(100);
        let align = if kind < 15 {
            random_align(&mut self.r)
        } else {
            [1, 2, 8, 16][self.r.below(4) as usize]
        };
        self.alloc_with(size, align, (15..27).contains(&kind))
    }

    fn alloc_with(&mut self, size: usize, align: usize, zeroed: bool) -> Option<Blk> {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: size > 0.
        let p = unsafe {
            if zeroed {
                alloc_zeroed(layout)
            } else {
                alloc(layout)
            }
        };
        if p.is_null() {
            if align > MAX_ALIGN {
                bump(&COUNTS.refused_align);
                return None;
            }
            self.fail(Fault::Bad(size, align, 0, "alloc failed"));
        }
        if p as usize % align != 0 {
            self.fail(Fault::Bad(size, align, p as usize, "alloc misaligned"));
        }
        let b = Blk {
            addr: p as usize,
            size,
            align,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            owner: self.id,
        };
        self.ok(INDEX.insert(&b));
        if zeroed {
            if let Err(o) = check_zero(&b) {
                self.fail(Fault::NotZero(b, o));
            }
            bump(&COUNTS.zeroed);
        }
        fill(&b);
        bump(&COUNTS.allocs);
        if align > 16 {
            bump(&COUNTS.aligned);
        }
        if size > MAX_ALIGN {
            bump(&COUNTS.huge);
        }
        Some(b)
    }

    fn free(&self, b: Blk, when: &'static str) {
        self.check(&b, b.addr, b.size, when);
        self.ok(INDEX.remove(&b));
        // SAFETY: allocated with this layout; removed from the index, so freed once.
        unsafe { dealloc(b.addr as *mut u8, b.layout()) };
        bump(&COUNTS.frees);
        if b.owner != self.id {
            bump(&COUNTS.foreign_frees);
        }
    }

    /// Grows or shrinks a block; the bytes both sizes cover must survive.
    fn realloc(&mut self, b: Blk) -> Blk {
        let new_size = match self.r.below(5) {
            0 => (b.size / self.r.range(2, 8)).max(1),
            1 => b.size + self.r.range(1, 100),
            2 => b.size.saturating_mul(2).min(6 << 20),
            _ => random_size(&mut self.r),
        };
        self.check(&b, b.addr, b.size, "before realloc");
        self.ok(INDEX.remove(&b));
        // SAFETY: b is live with this layout; new_size > 0 and small.
        let q = unsafe { realloc(b.addr as *mut u8, b.layout(), new_size) };
        if q.is_null() {
            self.fail(Fault::Bad(new_size, b.align, 0, "realloc failed"));
        }
        if q as usize % b.align != 0 {
            self.fail(Fault::Bad(
                new_size,
                b.align,
                q as usize,
                "realloc lost alignment",
            ));
        }
        let nb = Blk {
            addr: q as usize,
            size: new_size,
            align: b.align,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            owner: self.id,
        };
        self.ok(INDEX.insert(&nb));
        self.check(&b, nb.addr, new_size, "contents after realloc");
        fill(&nb);
        bump(&COUNTS.reallocs);
        if b.owner != self.id {
            bump(&COUNTS.foreign_reallocs);
        }
        nb
    }

    /// Swaps a block into a random transfer slot; what comes out (if anything) is checked,
    /// then freed or kept.
    fn transfer(&mut self, b: Blk) {
        let slot = self.r.below(SLOTS as u64) as usize;
        let old = TRANSFER[slot].swap(b.addr, Ordering::AcqRel);
        bump(&COUNTS.transfers);
        if old == 0 {
            return;
        }
        let ob = self.ok(INDEX.get(old));
        self.check(&ob, ob.addr, ob.size, "taken from the transfer array");
        if self.r.chance(50) || self.mine.len() >= self.cfg.keep {
            self.free(ob, "free of a transferred block");
        } else {
            self.mine.push(ob);
        }
    }

    /// Many blocks of one small size, all handed over: fills whole pages, which go on the
    /// full list, so the other threads' frees into them take the delayed path (the owner
    /// drains them later, perhaps just after a move to another node).
    fn burst(&mut self) {
        let size = self.r.range(16, 2048);
        for _ in 0..self.r.range(32, 256) {
            if let Some(b) = self.alloc_with(size, 8, false) {
                self.transfer(b);
            }
        }
        bump(&COUNTS.bursts);
    }

    fn take_mine(&mut self) -> Option<Blk> {
        if self.mine.is_empty() {
            return None;
        }
        let i = self.r.below(self.mine.len() as u64) as usize;
        Some(self.mine.swap_remove(i))
    }

    fn move_cpu(&mut self) {
        let cpus = &self.cfg.cpus;
        if cpus.len() < 2 {
            return;
        }
        // Another CPU than the current one; now and then let the scheduler choose.
        let cur = current_cpu();
        let next = match cpus.iter().position(|&c| c as i32 == cur) {
            Some(i) => cpus[(i + 1 + self.r.below(cpus.len() as u64 - 1) as usize) % cpus.len()],
            None => cpus[self.r.below(cpus.len() as u64) as usize],
        };
        if pin(next) {
            bump(&COUNTS.moves);
        }
    }

    fn run(&mut self, ops: usize) {
        let move_every = self.r.range(40, 400);
        for op in 0..ops {
            if op % move_every == move_every - 1 {
                self.move_cpu();
            }
            match self.r.below(100) {
                0..=39 => {
                    if let Some(b) = self.alloc() {
                        self.mine.push(b);
                    }
                    if self.mine.len() > self.cfg.keep {
                        let b = self.take_mine().unwrap();
                        self.free(b, "free when over the keep limit");
                    }
                }
                40..=59 => {
                    if let Some(b) = self.take_mine() {
                        self.free(b, "free");
                    }
                }
                60..=69 => {
                    if let Some(b) = self.take_mine() {
                        let nb = self.realloc(b);
                        self.mine.push(nb);
                    }
                }
                70..=89 => {
                    let b = match self.take_mine() {
                        Some(b) if self.r.chance(70) => Some(b),
                        Some(b) => {
                            self.mine.push(b);
                            self.alloc()
                        }
                        None => self.alloc(),
                    };
                    if let Some(b) = b {
                        self.transfer(b);
                    }
                }
                90..=98 => {
                    if !self.mine.is_empty() {
                        let i = self.r.below(self.mine.len() as u64) as usize;
                        let b = self.mine[i];
                        self.check(&b, b.addr, b.size, "check while live");
                        bump(&COUNTS.checks);
                    }
                }
                _ => {
                    if self.r.chance(25) {
                        tieralloc::collect();
                        bump(&COUNTS.collects);
                    } else if self.r.chance(20) {
                        self.burst();
                    }
                }
            }
        }
        // Exit: free half of what we kept, leave the rest in the transfer array for others.
        while let Some(b) = self.take_mine() {
            if self.r.chance(50) {
                self.free(b, "free at thread exit");
            } else {
                self.transfer(b);
            }
        }
    }
}

/// The message of a worker's panic.
fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// One run: `cfg.rounds` rounds of `cfg.threads` workers; then everything is freed and the
/// allocator's counters are checked against the baseline taken before the run.
fn run(seed: u64, cfg: &Cfg) {
    let base = settle(&cfg.cpus);
    let cpus_now = allowed_cpus();
    let mut live_peak = 0;
    NOW_SEED.store(seed, Ordering::Relaxed);
    for round in 0..cfg.rounds {
        NOW_ROUND.store(round as u64, Ordering::Relaxed);
        let mut failure = None;
        thread::scope(|s| {
            let handles: Vec<_> = (0..cfg.threads)
                .map(|t| {
                    let id = (round * cfg.threads + t + 1) as u32;
                    let mut r = Rng::new(seed ^ mix(id as u64));
                    let ops = cfg.ops / 2 + r.below(cfg.ops as u64) as usize;
                    thread::Builder::new()
                        .stack_size(256 << 10)
                        .spawn_scoped(s, move || {
                            // Half the workers start pinned, so moves begin at once.
                            if t % 2 == 0 && cfg.cpus.len() > 1 {
                                pin(cfg.cpus[t / 2 % cfg.cpus.len()]);
                            }
                            let mut w = Worker {
                                r,
                                id,
                                mine: Vec::with_capacity(cfg.keep + 1),
                                cfg,
                                seed,
                                round,
                            };
                            w.run(ops);
                        })
                        .unwrap()
                })
                .collect();
            for h in handles {
                if let Err(e) = h.join() {
                    failure.get_or_insert_with(|| panic_text(&*e));
                }
            }
        });
        if let Some(f) = failure {
            panic!("{f}");
        }
        // Between rounds all workers have exited; what is live is in the transfer array.
        let in_slots = TRANSFER
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count();
        let live = INDEX.len();
        assert_eq!(
            live, in_slots,
            "seed {seed:#x} round {round}: {live} blocks live but {in_slots} in the transfer array"
        );
        live_peak = live_peak.max(live);
    }
    assert_eq!(
        allowed_cpus(),
        cpus_now,
        "the main thread's CPU set changed"
    );
    // The main thread frees what the last round left, each block checked.
    for s in TRANSFER.iter() {
        let a = s.swap(0, Ordering::AcqRel);
        if a != 0 {
            let b = INDEX.get(a).unwrap();
            if let Err(o) = check_at(&b, b.addr, b.size) {
                panic!("seed {seed:#x}: final free: cookie of {b:x?} broken at byte {o}");
            }
            INDEX.remove(&b).unwrap();
            // SAFETY: live with this layout, freed once.
            unsafe { dealloc(b.addr as *mut u8, b.layout()) };
        }
    }
    assert_eq!(INDEX.len(), 0, "seed {seed:#x}: blocks still live");
    // The empty map may still hold a root node a worker allocated: free it, so that nothing
    // of the test stays live in a segment an exited worker abandoned.
    drop(std::mem::take(&mut *INDEX.lock()));
    let end = settle(&cfg.cpus);
    check_leaks(seed, &base, &end);
    eprintln!(
        "seed {seed:#x}: ok; up to {live_peak} blocks live between rounds; live bytes {} -> {}, \
         segments in use {} -> {}, abandoned {} -> {}, committed {} -> {}",
        base.bytes_live,
        end.bytes_live,
        base.segments - base.segments_pooled,
        end.segments - end.segments_pooled,
        base.segments_abandoned,
        end.segments_abandoned,
        base.bytes_committed,
        end.bytes_committed
    );
}

/// Collects on this thread, lets a fresh thread on each CPU tend what exited threads left (it
/// adopts and gives back emptied abandoned segments of its node: under simulated nodes a
/// node's segments wait for a thread of that node), collects again, and takes a snapshot.
fn settle(cpus: &[usize]) -> tieralloc::Stats {
    for _ in 0..2 {
        tieralloc::collect();
    }
    for &cpu in cpus {
        thread::spawn(move || {
            pin(cpu);
            // The heap takes its node when the thread first allocates (maybe before the pin)
            // and follows the CPU every 16 slow paths, not in collect(): freeing a large
            // block is a slow path, so 64 of them bring it home.
            for _ in 0..64 {
                drop(std::hint::black_box(vec![1u8; 100 << 10]));
            }
            let v = std::hint::black_box(vec![1u8; 64]);
            // A collection tends one abandoned segment (of each kind) of its node: enough
            // passes to visit every one.
            for _ in 0..tieralloc::stats().segments_abandoned + 4 {
                tieralloc::collect();
            }
            drop(v);
        })
        .join()
        .unwrap();
    }
    for _ in 0..2 {
        tieralloc::collect();
    }
    tieralloc::stats()
}

/// With every block of the run freed, the allocator is back where it started.
fn check_leaks(seed: u64, base: &tieralloc::Stats, end: &tieralloc::Stats) {
    let ctx = || format!("seed {seed:#x}\nbefore:\n{base}\nafter:\n{end}");
    // Large and huge blocks are only ever the test's: exactly back.
    assert_eq!(end.huge_bytes_live, base.huge_bytes_live, "{}", ctx());
    assert_eq!(end.large_bytes_live, base.large_bytes_live, "{}", ctx());
    // Small blocks: what the harness and this thread hold, nothing of the run (the index is
    // dropped). Measured: +1.2 to +2.2 KiB. 4 KiB is one leaked 32-byte block
    // per worker of a single round.
    let diff = end.bytes_live.abs_diff(base.bytes_live);
    assert!(diff <= 4 << 10, "live bytes differ by {diff}: {}", ctx());
    // Segments in use (not pooled) and abandoned: the heaps of the threads still alive keep
    // the current page of each class they used, which may sit in segments adopted from
    // exited workers; and under simulated nodes this thread too changes node now and then,
    // leaving segments that hold its own live blocks abandoned. Measured: +0 or +1 of each
    // (long runs); one leaked segment per round would add 4 (10 in the long runs).
    let used = |s: &tieralloc::Stats| s.segments - s.segments_pooled;
    assert!(used(end) <= used(base) + 3, "segments leaked: {}", ctx());
    assert!(
        end.segments_abandoned <= base.segments_abandoned + 2,
        "abandoned segments left: {}",
        ctx()
    );
    // Committed bytes: collect() purged what was free, so what stays is those current pages
    // (64 KiB each for small classes). Measured: +0. 1 MiB is below one leaked huge block
    // (each run frees hundreds) and one leaked 64 KiB page per worker of a single round.
    assert!(
        end.bytes_committed <= base.bytes_committed + (1 << 20),
        "committed bytes grew: {}",
        ctx()
    );
    // Per node: each node's live bytes back where they were (a block freed by a thread of
    // another node, or into a segment its heap gave up on a move, booked off the right node).
    // Once off by default (a large block freed from another node was booked on the wrong
    // node; fixed by the heapfix/simnodes branches); TIERALLOC_STRESS_NODE_LIVE=0 turns it off.
    if std::env::var("TIERALLOC_STRESS_NODE_LIVE").as_deref() != Ok("0") {
        for n in &end.nodes {
            let was = base.nodes.iter().find(|b| b.node == n.node);
            let was = was.map_or(0, |b| b.bytes_live);
            assert!(
                n.bytes_live.abs_diff(was) <= 64 << 10,
                "node {}: live bytes {was} -> {}: {}",
                n.node,
                n.bytes_live,
                ctx()
            );
        }
    }
}

fn env_num(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn stress_threads_transfer_move_and_exit() {
    install_crash_report();
    let cpus = allowed_cpus();
    let threads = env_num("TIERALLOC_STRESS_THREADS").map_or(32, |t| t.max(2) as usize);
    let secs = env_num("TIERALLOC_STRESS_SECS");
    let cfg = Cfg {
        threads,
        rounds: env_num("TIERALLOC_STRESS_ROUNDS")
            .map_or(if secs.is_some() { 10 } else { 4 }, |r| r.max(1) as usize),
        ops: 4000,
        keep: 64,
        cpus,
    };
    let seed = env_num("TIERALLOC_STRESS_SEED").unwrap_or(0x5EED_0001);
    let before = tieralloc::stats();
    let start = std::time::Instant::now();
    let mut runs = 0u64;
    loop {
        run(seed.wrapping_add(runs), &cfg);
        runs += 1;
        match secs {
            Some(s) if start.elapsed().as_secs() < s => continue,
            _ => break,
        }
    }
    let after = tieralloc::stats();
    let c = &COUNTS;
    eprintln!(
        "{runs} runs, {} threads x {} rounds, cpus {:?}: allocs {} (zeroed {}, aligned {}, \
         huge {}, refused over-aligned {}), frees {} (by another thread {}), reallocs {} \
         (of another thread's block {}), transfers {}, checks {}, cpu moves {}, collects {}, bursts {}",
        cfg.threads,
        cfg.rounds,
        cfg.cpus,
        get(&c.allocs),
        get(&c.zeroed),
        get(&c.aligned),
        get(&c.huge),
        get(&c.refused_align),
        get(&c.frees),
        get(&c.foreign_frees),
        get(&c.reallocs),
        get(&c.foreign_reallocs),
        get(&c.transfers),
        get(&c.checks),
        get(&c.moves),
        get(&c.collects),
        get(&c.bursts),
    );
    let topo = tieralloc::topology();
    eprintln!(
        "topology {:?}, {} nodes\n{after}",
        topo.source,
        topo.nodes.len()
    );
    // The run did what it claims.
    let allocs = get(&c.allocs);
    assert!(allocs >= 100_000 * runs, "only {allocs} allocations");
    assert!(
        get(&c.foreign_frees) * 5 > get(&c.frees),
        "few cross-thread frees"
    );
    assert!(get(&c.foreign_reallocs) > 0 && get(&c.zeroed) > 0 && get(&c.huge) > 0);
    assert!(get(&c.aligned) > 0 && get(&c.collects) > 0 && get(&c.bursts) > 0);
    if cfg.cpus.len() > 1 {
        // Every worker does at least 2000 operations and moves at least every 400.
        let min = 4 * (cfg.threads * cfg.rounds) as u64 * runs;
        assert!(get(&c.moves) >= min, "only {} moves", get(&c.moves));
    }
    assert!(after.remote_frees > before.remote_frees, "{after}");
    assert!(after.pages_abandoned > before.pages_abandoned, "{after}");
}
