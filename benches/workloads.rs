//! Allocator comparison: tieralloc vs mimalloc vs jemalloc vs numalloc vs the system allocator,
//! one process per run.
//!
//! One binary is both the driver and the worker. The driver (what `cargo bench --bench
//! workloads` starts) re-executes its own binary (`std::env::current_exe()`) once per
//! (workload, allocator, run), with `TIERALLOC_BENCH_ALLOC` and `TIERALLOC_BENCH_WORKLOAD` set;
//! the worker runs one workload under the selected allocator and prints one JSON line on
//! stdout. Allocators are interleaved (A B C A B C ...) so that drifts of a noisy, shared
//! machine hit all of them alike, and the driver reports medians (and, for `pairs`, minima).
//!
//! The worker's `#[global_allocator]` is [`Dispatch`]: it reads the selection once, on its
//! first call, with `libc::getenv` (which does not allocate), caches it in an atomic, and then
//! forwards every call to `TierAlloc`, `mimalloc::MiMalloc`, `tikv_jemallocator::Jemalloc`,
//! `numalloc::NumaAlloc` or `std::alloc::System`. Every
//! call of every allocator therefore pays the same extra cost: one relaxed load and one
//! compare-and-branch whose outcome never changes within a process (perfectly predicted).
//!
//! Every workload reports throughput, per-operation latency percentiles (a sample of the
//! operations, every 16th or every one for the slow ones, timed with `Instant` = vDSO
//! `clock_gettime(CLOCK_MONOTONIC)` and recorded in an HdrHistogram created before the timed
//! phase), peak RSS (VmHWM), peak live bytes (requested sizes plus the workload's own arrays)
//! and their ratio, and the RSS after everything was freed and the process idled with light
//! traffic. The driver prints markdown tables (medians, ratios against mimalloc), writes JSON,
//! and with `--plots DIR` draws SVG charts.
//!
//! Usage: `cargo bench --bench workloads -- [--quick] [--runs N] [--only pairs,larson]
//! [--allocs tieralloc,mimalloc] [--json PATH] [--plots [DIR]] [--callgrind]`.

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::alloc::{alloc, dealloc, GlobalAlloc, Layout, System};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The dispatching global allocator.

const ENV_ALLOC: &str = "TIERALLOC_BENCH_ALLOC";
const ENV_WORKLOAD: &str = "TIERALLOC_BENCH_WORKLOAD";
const ENV_QUICK: &str = "TIERALLOC_BENCH_QUICK";
const ENV_ITERS: &str = "TIERALLOC_BENCH_ITERS";
const ENV_WARMUP: &str = "TIERALLOC_BENCH_WARMUP";
const ENV_FIXED: &str = "TIERALLOC_BENCH_FIXED_SIZE";

const SEL_UNSET: u8 = 0;
const SEL_TIER: u8 = 1;
const SEL_MI: u8 = 2;
const SEL_SYS: u8 = 3;
const SEL_JE: u8 = 4;
const SEL_NUMA: u8 = 5;

static SELECTED: AtomicU8 = AtomicU8::new(SEL_UNSET);
static TIER: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
static MI: mimalloc::MiMalloc = mimalloc::MiMalloc;
static JE: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static NUMA: numalloc::NumaAlloc = numalloc::NumaAlloc::new();

/// Forwards to the allocator named by `TIERALLOC_BENCH_ALLOC` (system when unset: the driver).
struct Dispatch;

#[inline(always)]
fn selected() -> u8 {
    let s = SELECTED.load(Ordering::Relaxed);
    if s != SEL_UNSET {
        s
    } else {
        select_slow()
    }
}

#[cold]
#[inline(never)]
fn select_slow() -> u8 {
    // SAFETY: the name is NUL-terminated; getenv does not allocate and returns either null or
    // a NUL-terminated string in the environment block, which nobody modifies in this program.
    let s = unsafe {
        let v = libc::getenv(c"TIERALLOC_BENCH_ALLOC".as_ptr());
        if v.is_null() {
            SEL_SYS
        } else {
            match std::ffi::CStr::from_ptr(v).to_bytes() {
                b"tieralloc" => SEL_TIER,
                b"mimalloc" => SEL_MI,
                b"jemalloc" => SEL_JE,
                b"numalloc" => SEL_NUMA,
                _ => SEL_SYS,
            }
        }
    };
    // Racing first calls all compute the same value, so a plain store is enough.
    SELECTED.store(s, Ordering::Relaxed);
    s
}

// SAFETY: every call goes to the same one of five GlobalAlloc implementations for the whole
// life of the process (the selection never changes once made), so pointers are always freed
// by the allocator that returned them, with each one's contract forwarded unchanged.
unsafe impl GlobalAlloc for Dispatch {
    #[inline(always)]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match selected() {
                SEL_TIER => TIER.alloc(l),
                SEL_MI => MI.alloc(l),
                SEL_JE => JE.alloc(l),
                SEL_NUMA => NUMA.alloc(l),
                _ => System.alloc(l),
            }
        }
    }
    #[inline(always)]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe {
            match selected() {
                SEL_TIER => TIER.dealloc(p, l),
                SEL_MI => MI.dealloc(p, l),
                SEL_JE => JE.dealloc(p, l),
                SEL_NUMA => NUMA.dealloc(p, l),
                _ => System.dealloc(p, l),
            }
        }
    }
    #[inline(always)]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match selected() {
                SEL_TIER => TIER.alloc_zeroed(l),
                SEL_MI => MI.alloc_zeroed(l),
                SEL_JE => JE.alloc_zeroed(l),
                SEL_NUMA => NUMA.alloc_zeroed(l),
                _ => System.alloc_zeroed(l),
            }
        }
    }
    #[inline(always)]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match selected() {
                SEL_TIER => TIER.realloc(p, l, n),
                SEL_MI => MI.realloc(p, l, n),
                SEL_JE => JE.realloc(p, l, n),
                SEL_NUMA => NUMA.realloc(p, l, n),
                _ => System.realloc(p, l, n),
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

const ALLOCS: [&str; 5] = ["tieralloc", "mimalloc", "jemalloc", "numalloc", "system"];
const WORKLOADS: [&str; 8] = [
    "pairs",
    "prodcons",
    "larson",
    "frag",
    "spike",
    "falseshare",
    "churn",
    "large",
];
const MIB: f64 = (1u64 << 20) as f64;

// ---------------------------------------------------------------------------------------------
// Small helpers shared by the workloads.

/// xorshift64*: fast, seeded, identical sequence for every allocator.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    #[inline(always)]
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in lo..=hi.
    #[inline(always)]
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// The mixed small-size distribution of `pairs` and `prodcons`: 8 B – 4 KiB, 80 % ≤ 512 B
/// (50 % in 8–64 B, 30 % in 65–512 B, 20 % in 513 B – 4 KiB).
fn mixed_small_size(r: &mut Rng) -> usize {
    match r.next() % 10 {
        0..=4 => r.range(8, 64),
        5..=7 => r.range(65, 512),
        _ => r.range(513, 4096),
    }
}

const ALIGN: usize = 8;

#[inline(always)]
fn layout(size: usize) -> Layout {
    // SAFETY: ALIGN is a power of two and the sizes used here are far below isize::MAX.
    unsafe { Layout::from_size_align_unchecked(size, ALIGN) }
}

#[inline(always)]
fn new_obj(size: usize) -> *mut u8 {
    let l = layout(size);
    // SAFETY: size > 0.
    let p = unsafe { alloc(l) };
    if p.is_null() {
        std::alloc::handle_alloc_error(l);
    }
    p
}

#[inline(always)]
fn free_obj(p: *mut u8, size: usize) {
    // SAFETY: p came from new_obj(size) and is freed once (callers' bookkeeping).
    unsafe { dealloc(p, layout(size)) }
}

/// Reads a small /proc file into a stack buffer (no allocation beyond what `File::open` does).
fn read_proc(path: &str, buf: &mut [u8]) -> usize {
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// A `VmXXX:` field of /proc/self/status, in bytes.
fn status_field(name: &str) -> u64 {
    let mut buf = [0u8; 8192];
    let n = read_proc("/proc/self/status", &mut buf);
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(name) {
            let kb: u64 = rest
                .trim_start_matches(':')
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return kb * 1024;
        }
    }
    0
}

/// Peak resident set (VmHWM) in bytes.
fn peak_rss() -> u64 {
    status_field("VmHWM")
}

/// Current resident set from /proc/self/statm, in bytes.
fn current_rss() -> u64 {
    let mut buf = [0u8; 256];
    let n = read_proc("/proc/self/statm", &mut buf);
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// CPU time in ns of the calling thread or of the whole process (immune to the time the
/// scheduler gives other processes on a shared machine).
fn cpu_ns(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

fn thread_cpu_ns() -> f64 {
    cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn process_cpu_ns() -> f64 {
    cpu_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A pointer and its requested size packed into one word (48-bit address, 16-bit size), so
/// the workloads' own bookkeeping stays small next to the memory they measure.
#[inline(always)]
fn pack(p: *mut u8, size: usize) -> u64 {
    debug_assert!(size < 1 << 16 && (p as u64) < 1 << 48);
    ((p as u64) << 16) | size as u64
}

#[inline(always)]
fn unpack(w: u64) -> (*mut u8, usize) {
    ((w >> 16) as usize as *mut u8, (w & 0xffff) as usize)
}

// ---------------------------------------------------------------------------------------------
// Latency sampling and memory accounting shared by the workloads.

/// Times every `every`-th operation with `Instant` (vDSO `clock_gettime(CLOCK_MONOTONIC)`)
/// and records it in an HdrHistogram (2 significant digits, 1 ns – 60 s). The histogram is
/// created before the timed phase, so recording never allocates; the cost (two clock reads per
/// sampled operation plus a counter) is the same for every allocator.
struct Lat {
    n: u32,
    every: u32,
    h: Histogram<u64>,
}

impl Lat {
    fn new(every: u32) -> Self {
        Lat {
            n: 0,
            every: every.max(1),
            h: Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("histogram bounds"),
        }
    }

    #[inline(always)]
    fn op<R>(&mut self, f: impl FnOnce() -> R) -> R {
        self.n += 1;
        if self.n >= self.every {
            self.n = 0;
            let t = Instant::now();
            let r = f();
            let ns = t.elapsed().as_nanos() as u64;
            self.h.saturating_record(ns.max(1));
            r
        } else {
            f()
        }
    }

    fn merge(&mut self, other: &Lat) {
        self.h.add(&other.h).expect("same histogram bounds");
    }
}

/// Median time recorded for an empty operation: what the clock reads add to every sample.
fn timer_overhead_ns() -> u64 {
    let mut l = Lat::new(1);
    for _ in 0..10_000 {
        l.op(|| std::hint::black_box(0));
    }
    l.h.value_at_quantile(0.5)
}

/// Adds the common metrics of a workload: throughput, latency percentiles, peak live bytes.
fn common(m: &mut Value, ops: f64, secs: f64, lat: &Lat, peak_live: usize, op: &str) {
    let h = &lat.h;
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    m["ops_per_s"] = json!(if secs > 0.0 { ops / secs } else { 0.0 });
    m["op"] = json!(op);
    m["lat_p50_ns"] = json!(q(0.5));
    m["lat_p99_ns"] = json!(q(0.99));
    m["lat_p999_ns"] = json!(q(0.999));
    m["lat_max_ns"] = json!(h.max());
    m["lat_samples"] = json!(h.len());
    m["lat_every"] = json!(lat.every);
    m["timer_overhead_ns"] = json!(timer_overhead_ns());
    m["peak_live_mib"] = json!(peak_live as f64 / MIB);
}

/// Light traffic: `n` replacements of 16 B – 1 KiB objects in a small pool, one batch per ms.
/// Allocators that return memory on a timer driven from allocation calls get their chance.
fn light_idle(ms: u64) {
    let mut r = Rng::new(11);
    let mut pool: [u64; 64] = [0; 64];
    for s in pool.iter_mut() {
        let sz = r.range(16, 1024);
        *s = pack(new_obj(sz), sz);
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(ms) {
        for _ in 0..4 {
            let i = (r.next() as usize) % pool.len();
            let (q, sz) = unpack(pool[i]);
            free_obj(q, sz);
            let nsz = r.range(16, 1024);
            pool[i] = pack(new_obj(nsz), nsz);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for w in pool {
        let (q, sz) = unpack(w);
        free_obj(q, sz);
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads (worker side). Each returns its metrics as a JSON object and frees everything it
// allocated before returning.

struct Params {
    quick: bool,
}

const PAIRS_RING: usize = 4096;
const PAIRS_SIZES: usize = 1 << 16;

/// Single thread: free slot i of a 4096-slot ring, allocate a new object into it. Throughput
/// comes from an untimed-per-operation loop (the issue-2 metric); latency from a further
/// `iters / 8` pairs with every 16th pair timed.
fn w_pairs(p: &Params) -> Value {
    let iters = env_usize(ENV_ITERS).unwrap_or(if p.quick { 10_000_000 } else { 50_000_000 });
    let warmup = env_usize(ENV_WARMUP).unwrap_or(1_000_000);
    let fixed = env_usize(ENV_FIXED).unwrap_or(0);
    let mut r = Rng::new(42);
    let sizes: Box<[u32; PAIRS_SIZES]> = {
        let mut v = Box::new([0u32; PAIRS_SIZES]);
        for s in v.iter_mut() {
            *s = if fixed > 0 {
                fixed as u32
            } else {
                mixed_small_size(&mut r) as u32
            };
        }
        v
    };
    let mut slots: Box<[u64; PAIRS_RING]> = Box::new([0; PAIRS_RING]);
    for (i, s) in slots.iter_mut().enumerate() {
        let sz = sizes[i] as usize;
        *s = pack(new_obj(sz), sz);
    }
    let mut i = PAIRS_RING;
    pairs_loop(&mut slots, &sizes, i, warmup);
    i += warmup;
    let c = thread_cpu_ns();
    let t = Instant::now();
    pairs_loop(&mut slots, &sizes, i, iters);
    let ns = t.elapsed().as_nanos() as f64;
    let cpu = thread_cpu_ns() - c;
    i += iters;
    // Latency phase.
    let mut lat = Lat::new(16);
    let book = PAIRS_SIZES * 4 + PAIRS_RING * 8;
    let mut live: usize = slots.iter().map(|&w| unpack(w).1).sum();
    let mut peak_live = live;
    for k in i..i + iters / 8 {
        let slot = &mut slots[k & (PAIRS_RING - 1)];
        let (q, old) = unpack(*slot);
        let sz = sizes[k & (PAIRS_SIZES - 1)] as usize;
        let q = lat.op(|| {
            free_obj(q, old);
            new_obj(sz)
        });
        // SAFETY: q holds at least one byte.
        unsafe { q.write(k as u8) };
        *slot = pack(q, sz);
        live = live + sz - old;
        peak_live = peak_live.max(live);
    }
    for &w in slots.iter() {
        let (q, sz) = unpack(w);
        free_obj(q, sz);
    }
    let mut m = json!({
        "ns_per_pair": if iters > 0 { ns / iters as f64 } else { 0.0 },
        "cpu_ns_per_pair": if iters > 0 { cpu / iters as f64 } else { 0.0 },
        "iters": iters,
        "warmup": warmup,
        "fixed_size": fixed,
    });
    common(
        &mut m,
        iters as f64,
        ns / 1e9,
        &lat,
        peak_live + book,
        "free + alloc pair",
    );
    m
}

#[inline(never)]
fn pairs_loop(slots: &mut [u64; PAIRS_RING], sizes: &[u32; PAIRS_SIZES], start: usize, n: usize) {
    for i in start..start + n {
        let slot = &mut slots[i & (PAIRS_RING - 1)];
        let (q, old) = unpack(*slot);
        free_obj(q, old);
        let sz = sizes[i & (PAIRS_SIZES - 1)] as usize;
        let q = new_obj(sz);
        // SAFETY: q holds at least one byte. Touching it keeps the work realistic.
        unsafe { q.write(i as u8) };
        *slot = pack(q, sz);
    }
}

/// Two threads: one allocates and sends batches of 64 pointers (each object carries its size
/// in its first word), the other frees them. Live bytes = allocated minus freed, published by
/// each side once per batch.
fn w_prodcons(p: &Params) -> Value {
    let n_batches =
        env_usize(ENV_ITERS).unwrap_or(if p.quick { 4_000_000 } else { 20_000_000 }) / 64;
    let (tx, rx) = crossbeam_channel::bounded::<[usize; 64]>(256);
    let freed_bytes = Arc::new(AtomicU64::new(0));
    let mut plat = Lat::new(16);
    let clat = Lat::new(16);
    let c = process_cpu_ns();
    let t = Instant::now();
    let fb = freed_bytes.clone();
    let consumer = std::thread::spawn(move || {
        let mut lat = clat;
        let mut freed = 0u64;
        let mut bytes = 0u64;
        for batch in rx {
            for q in batch {
                let q = q as *mut u8;
                // SAFETY: the producer wrote the object's size into its first word.
                let sz = unsafe { (q as *const usize).read() };
                lat.op(|| free_obj(q, sz));
                bytes += sz as u64;
                freed += 1;
            }
            fb.store(bytes, Ordering::Relaxed);
        }
        (freed, lat)
    });
    let mut r = Rng::new(7);
    let mut produced = 0u64;
    let mut peak_live = 0u64;
    for _ in 0..n_batches {
        let mut batch = [0usize; 64];
        for slot in batch.iter_mut() {
            let sz = mixed_small_size(&mut r);
            let q = plat.op(|| new_obj(sz));
            // SAFETY: every size is at least 8 and blocks are 8-aligned.
            unsafe { (q as *mut usize).write(sz) };
            *slot = q as usize;
            produced += sz as u64;
        }
        tx.send(batch).expect("consumer alive");
        peak_live = peak_live.max(produced.saturating_sub(freed_bytes.load(Ordering::Relaxed)));
    }
    drop(tx);
    let (freed, clat) = consumer.join().expect("consumer thread");
    let ns = t.elapsed().as_nanos() as f64;
    let cpu = process_cpu_ns() - c;
    plat.merge(&clat);
    let mut m = json!({
        "ns_per_obj": ns / freed.max(1) as f64,
        "cpu_ns_per_obj": cpu / freed.max(1) as f64,
        "objects": freed,
    });
    common(
        &mut m,
        freed as f64,
        ns / 1e9,
        &plat,
        peak_live as usize + 256 * 64 * 8,
        "one alloc (producer) or one free (consumer)",
    );
    m
}

/// Larson-style server churn: `threads` threads each work on a slot array, freeing a random
/// slot and allocating a random-size object (16–1024 B) into it. After each round every thread
/// exits and a new thread takes over a *different* thread's array, so objects allocated by one
/// (now dead) thread are freed by another.
fn w_larson(p: &Params) -> Value {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2);
    let (rounds, ops) = if p.quick {
        (20usize, 150_000usize)
    } else {
        (40, 600_000)
    };
    let ops = env_usize(ENV_ITERS).unwrap_or(ops);
    const SLOTS: usize = 8192;
    // Fill every array from the main thread (untimed).
    let mut arrays: Vec<Option<Vec<u64>>> = (0..threads)
        .map(|t| {
            let mut r = Rng::new(1000 + t as u64);
            Some(
                (0..SLOTS)
                    .map(|_| {
                        let sz = r.range(16, 1024);
                        pack(new_obj(sz), sz)
                    })
                    .collect(),
            )
        })
        .collect();
    let mut lats: Vec<Option<Lat>> = (0..threads).map(|_| Some(Lat::new(16))).collect();
    let live_of = |arrays: &[Option<Vec<u64>>]| -> usize {
        arrays
            .iter()
            .flatten()
            .map(|a| a.iter().map(|&w| unpack(w).1).sum::<usize>() + a.len() * 8)
            .sum()
    };
    let mut peak_live = live_of(&arrays);
    let c0 = process_cpu_ns();
    let t0 = Instant::now();
    for round in 0..rounds {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mut arr = arrays[(t + round + 1) % threads].take().expect("array");
                let mut lat = lats[t].take().expect("lat");
                std::thread::spawn(move || {
                    let mut r = Rng::new(((round as u64) << 32) ^ t as u64 ^ 0xABCD);
                    for _ in 0..ops {
                        let x = r.next();
                        let i = (x as usize) % SLOTS;
                        let (q, sz) = unpack(arr[i]);
                        let nsz = 16 + ((x >> 32) % 1009) as usize;
                        let q = lat.op(|| {
                            free_obj(q, sz);
                            new_obj(nsz)
                        });
                        // SAFETY: q holds nsz >= 16 bytes.
                        unsafe { q.write(nsz as u8) };
                        arr[i] = pack(q, nsz);
                    }
                    (t, arr, lat)
                })
            })
            .collect();
        for h in handles {
            let (t, arr, lat) = h.join().expect("larson thread");
            arrays[t] = Some(arr);
            lats[t] = Some(lat);
        }
        // Sampled at round boundaries (the live volume is stationary within a round).
        if round % 4 == 3 {
            peak_live = peak_live.max(live_of(&arrays));
        }
    }
    let ns = t0.elapsed().as_nanos() as f64;
    let cpu = process_cpu_ns() - c0;
    let total_ops = (rounds * ops * threads) as f64;
    let hwm = peak_rss();
    for arr in arrays.into_iter().flatten() {
        for w in arr {
            let (q, sz) = unpack(w);
            free_obj(q, sz);
        }
    }
    let mut lat = Lat::new(16);
    for l in lats.iter().flatten() {
        lat.merge(l);
    }
    let mut m = json!({
        // Per-thread time per operation: wall time × threads / total operations.
        "ns_per_op": ns * threads as f64 / total_ops,
        "cpu_ns_per_op": cpu / total_ops,
        "mops_per_s": total_ops / ns * 1e3,
        "peak_rss_mib": hwm as f64 / MIB,
        "threads": threads,
        "rounds": rounds,
        "ops_per_thread_round": ops,
    });
    common(
        &mut m,
        total_ops,
        ns / 1e9,
        &lat,
        peak_live,
        "free + alloc pair",
    );
    m
}

/// Writes one byte in every 4 KiB page of an object and its last byte, as a program that uses
/// its memory would (an allocator that keeps its metadata outside the blocks would otherwise
/// show untouched memory as not resident).
#[inline(always)]
fn touch(q: *mut u8, sz: usize) {
    let mut off = 0;
    while off < sz {
        // SAFETY: off < sz.
        unsafe { q.add(off).write(1) };
        off += 4096;
    }
    // SAFETY: sz > 0.
    unsafe { q.add(sz - 1).write(1) };
}

/// Fragmentation: fill with 16–512 B objects, free 90 % at random, refill the same volume
/// with 2–16 KiB objects (every object's pages written). Live bytes are requested sizes plus
/// the workload's own pointer array.
fn w_frag(p: &Params) -> Value {
    let target: usize = if p.quick { 64 << 20 } else { 200 << 20 };
    let mut r = Rng::new(99);
    let cap = target / 200; // expected count is target / 264; refill adds ~2 % more
    let mut objs: Vec<u64> = Vec::with_capacity(cap);
    let mut lat = Lat::new(16);
    let book = cap * 8;
    let mut live = book;
    let mut peak_live = live;
    let mut ops = 0u64;
    let t0 = Instant::now();
    while live < target + book {
        let sz = r.range(16, 512);
        let q = lat.op(|| new_obj(sz));
        touch(q, sz);
        objs.push(pack(q, sz));
        live += sz;
        ops += 1;
    }
    assert_eq!(objs.capacity(), cap, "bookkeeping array grew");
    peak_live = peak_live.max(live);
    let mut busy = t0.elapsed();
    let rss_filled = current_rss();
    let t1 = Instant::now();
    let mut freed = 0usize;
    objs.retain(|&w| {
        if r.next() % 10 != 0 {
            let (q, sz) = unpack(w);
            lat.op(|| free_obj(q, sz));
            freed += sz;
            ops += 1;
            false
        } else {
            true
        }
    });
    live -= freed;
    busy += t1.elapsed();
    let rss_freed = current_rss();
    let t2 = Instant::now();
    let mut refilled = 0usize;
    while refilled < freed {
        let sz = r.range(2048, 16384);
        let q = lat.op(|| new_obj(sz));
        touch(q, sz);
        objs.push(pack(q, sz));
        refilled += sz;
        live += sz;
        ops += 1;
        peak_live = peak_live.max(live);
    }
    busy += t2.elapsed();
    assert_eq!(objs.capacity(), cap, "bookkeeping array grew");
    let rss_refilled = current_rss();
    let hwm = peak_rss();
    for w in objs.drain(..) {
        let (q, sz) = unpack(w);
        free_obj(q, sz);
    }
    let mut m = json!({
        "rss_over_live": hwm as f64 / peak_live as f64,
        "peak_rss_mib": hwm as f64 / MIB,
        "rss_filled_mib": rss_filled as f64 / MIB,
        "rss_after_free_mib": rss_freed as f64 / MIB,
        "rss_refilled_mib": rss_refilled as f64 / MIB,
    });
    common(
        &mut m,
        ops as f64,
        busy.as_secs_f64(),
        &lat,
        peak_live,
        "one alloc or one free",
    );
    m
}

/// Spike: steady live set of 16 MiB, a 256 MiB spike of mixed sizes that is freed again, then
/// 3 s of light traffic (4 replacements per ms) while VmRSS is sampled every 50 ms. The RSS
/// time series (ms relative to the end of the free, negative before) also covers the spike.
fn w_spike(_p: &Params) -> Value {
    const STEADY: usize = 16 << 20;
    const SPIKE: usize = 256 << 20;
    const IDLE_MS: u64 = 3000;
    let mut r = Rng::new(5);
    let n_steady = STEADY / 520 + 1;
    let mut steady: Vec<u64> = Vec::with_capacity(n_steady);
    let mut steady_bytes = 0usize;
    while steady_bytes < STEADY {
        let sz = r.range(16, 1024);
        let q = new_obj(sz);
        touch(q, sz);
        steady.push(pack(q, sz));
        steady_bytes += sz;
    }
    let mut series: Vec<(f64, f64)> = Vec::with_capacity(512);
    let mut lat = Lat::new(1);
    let steady_book = steady.capacity() * 8 + series.capacity() * 16;
    // Light traffic: replace a few random steady objects (live volume stays about the same).
    let light = |steady: &mut Vec<u64>, steady_bytes: &mut usize, r: &mut Rng| {
        for _ in 0..4 {
            let i = (r.next() as usize) % steady.len();
            let (q, sz) = unpack(steady[i]);
            free_obj(q, sz);
            let nsz = r.range(16, 1024);
            let q = new_obj(nsz);
            touch(q, nsz);
            steady[i] = pack(q, nsz);
            *steady_bytes = *steady_bytes + nsz - sz;
        }
    };
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(200) {
        light(&mut steady, &mut steady_bytes, &mut r);
        std::thread::sleep(Duration::from_millis(1));
    }
    let rss_steady = current_rss();
    let steady_live = steady_bytes + steady_book;
    // The spike: log-uniform 64 B – 64 KiB, and every 64th object 1 MiB.
    // About 10 300 objects; the array is small next to the spike.
    let mut spike: Vec<(usize, usize)> = Vec::with_capacity(1 << 14);
    let spike_book = spike.capacity() * 16;
    let mut spike_bytes = 0usize;
    let mut k = 0usize;
    let ts = Instant::now();
    let mut raw: Vec<(f64, f64)> = Vec::with_capacity(256);
    raw.push((0.0, rss_steady as f64 / MIB));
    let mut next_sample = 50u64;
    while spike_bytes < SPIKE {
        let sz = if k % 64 == 63 {
            1 << 20
        } else {
            let e = r.range(6, 15);
            (1usize << e) + r.range(0, (1 << e) - 1)
        };
        k += 1;
        let q = lat.op(|| new_obj(sz));
        spike.push((q as usize, sz));
        spike_bytes += sz;
        // Touch every page as a real program would.
        touch(q, sz);
        let ms = ts.elapsed().as_millis() as u64;
        if ms >= next_sample && raw.len() < raw.capacity() {
            raw.push((ms as f64, current_rss() as f64 / MIB));
            next_sample += 50;
        }
    }
    let rss_spike = current_rss();
    raw.push((ts.elapsed().as_secs_f64() * 1e3, rss_spike as f64 / MIB));
    let build = ts.elapsed();
    let tf = Instant::now();
    for (q, sz) in spike.drain(..) {
        lat.op(|| free_obj(q as *mut u8, sz));
    }
    let free_time = tf.elapsed();
    drop(spike);
    let end_ms = ts.elapsed().as_secs_f64() * 1e3;
    for (t, v) in raw.drain(..) {
        series.push((t - end_ms, v));
    }
    let rss_after_free = current_rss();
    let t0 = Instant::now();
    let mut next_sample = 0u64;
    loop {
        let ms = t0.elapsed().as_millis() as u64;
        if ms >= next_sample {
            series.push((ms as f64, current_rss() as f64 / MIB));
            next_sample += 50;
        }
        if ms > IDLE_MS {
            break;
        }
        light(&mut steady, &mut steady_bytes, &mut r);
        std::thread::sleep(Duration::from_millis(1));
    }
    let at = |t: f64| -> f64 {
        series
            .iter()
            .find(|s| s.0 >= t)
            .or(series.last())
            .map(|s| s.1)
            .unwrap_or(0.0)
    };
    let target_mib = (1.1 * steady_live as f64) / MIB + 8.0;
    let mut out = json!({
        "rss_1s_mib": at(1000.0),
        "rss_2s_mib": at(2000.0),
        "rss_3s_mib": at(3000.0),
        "rss_idle_mib": at(3000.0),
        "target_mib": target_mib,
        "steady_live_mib": steady_live as f64 / MIB,
        "rss_steady_mib": rss_steady as f64 / MIB,
        "rss_spike_mib": rss_spike as f64 / MIB,
        "rss_after_free_mib": rss_after_free as f64 / MIB,
        "spike_objects": k,
        "spike_build_ms": build.as_secs_f64() * 1e3,
        "spike_free_ms": free_time.as_secs_f64() * 1e3,
        "series_ms_mib": series,
    });
    common(
        &mut out,
        2.0 * k as f64,
        (build + free_time).as_secs_f64(),
        &lat,
        steady_live + spike_bytes + spike_book,
        "one spike alloc or free (every one timed; page touching not included)",
    );
    for w in steady {
        let (q, sz) = unpack(w);
        free_obj(q, sz);
    }
    out
}

/// False sharing (cache-scratch style, with a hand-off): `threads` threads; each round every
/// thread allocates a small object and hands it to the next thread, which writes it `WRITES`
/// times and frees it (a remote free); then each thread allocates, writes `WRITES` times and
/// frees `LOCAL` small objects of its own. An allocator that puts two threads' hot objects in
/// one cache line (for example by reusing a block another thread freed) makes the writes bounce
/// the line between cores. Metric: wall time.
fn w_falseshare(p: &Params) -> Value {
    const SIZE: usize = 8;
    const WRITES: u64 = 1000;
    const LOCAL: usize = 4;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2);
    let rounds = env_usize(ENV_ITERS).unwrap_or(if p.quick { 20_000 } else { 80_000 });
    let mut txs = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..threads {
        let (tx, rx) = crossbeam_channel::bounded::<usize>(1);
        txs.push(tx);
        rxs.push(Some(rx));
    }
    let barrier = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let tx = txs[(t + 1) % threads].clone();
            let rx = rxs[t].take().expect("rx");
            let barrier = barrier.clone();
            let mut lat = Lat::new(16);
            std::thread::spawn(move || {
                let write = |q: *mut u8| {
                    for i in 0..WRITES {
                        // SAFETY: q holds SIZE = 8 bytes, 8-aligned.
                        unsafe { std::ptr::write_volatile(q as *mut u64, i) };
                    }
                };
                barrier.wait();
                for _ in 0..rounds {
                    let mine = lat.op(|| new_obj(SIZE));
                    // SAFETY: as above.
                    unsafe { (mine as *mut u64).write(0) };
                    tx.send(mine as usize).expect("next thread alive");
                    let got = rx.recv().expect("previous thread alive") as *mut u8;
                    write(got);
                    lat.op(|| free_obj(got, SIZE));
                    for _ in 0..LOCAL {
                        let q = lat.op(|| new_obj(SIZE));
                        write(q);
                        lat.op(|| free_obj(q, SIZE));
                    }
                }
                lat
            })
        })
        .collect();
    drop(txs);
    barrier.wait();
    let t0 = Instant::now();
    let mut lat = Lat::new(16);
    for h in handles {
        lat.merge(&h.join().expect("falseshare thread"));
    }
    let ns = t0.elapsed().as_nanos() as f64;
    let objects = (rounds * threads * (1 + LOCAL)) as f64;
    let mut m = json!({
        "wall_ms": ns / 1e6,
        "ns_per_object": ns / objects,
        "threads": threads,
        "rounds": rounds,
        "writes_per_object": WRITES,
    });
    common(
        &mut m,
        objects,
        ns / 1e9,
        &lat,
        threads * 2 * SIZE,
        "one alloc or one free",
    );
    m
}

/// Thread churn: `rounds` rounds of 4 short-lived threads. Each thread allocates 1000 objects
/// of 16 B – 1 KiB, frees three quarters of them and returns the rest; the main thread frees
/// those while the next round runs (frees of a dead thread's memory). Metrics: wall µs per
/// thread, RSS at the end (everything freed, threads gone).
fn w_churn(p: &Params) -> Value {
    const PER_ROUND: usize = 4;
    const OBJS: usize = 1000;
    let rounds = env_usize(ENV_ITERS).unwrap_or(if p.quick { 150 } else { 600 });
    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);
    let add_live = |n: usize| {
        let v = LIVE.fetch_add(n, Ordering::Relaxed) + n;
        PEAK.fetch_max(v, Ordering::Relaxed);
    };
    let mut lats: Vec<Option<Lat>> = (0..PER_ROUND).map(|_| Some(Lat::new(16))).collect();
    let mut main_lat = Lat::new(16);
    let mut held: Vec<Vec<u64>> = Vec::new();
    let t0 = Instant::now();
    for round in 0..rounds {
        let handles: Vec<_> = (0..PER_ROUND)
            .map(|t| {
                let mut lat = lats[t].take().expect("lat");
                std::thread::spawn(move || {
                    let mut r = Rng::new(((round as u64) << 8) ^ t as u64 ^ 0x5EED);
                    let mut objs: Vec<u64> = Vec::with_capacity(OBJS);
                    let mut bytes = OBJS * 8;
                    for _ in 0..OBJS {
                        let sz = r.range(16, 1024);
                        let q = lat.op(|| new_obj(sz));
                        // SAFETY: q holds sz >= 16 bytes.
                        unsafe { q.write(1) };
                        objs.push(pack(q, sz));
                        bytes += sz;
                    }
                    add_live(bytes);
                    let mut kept: Vec<u64> = Vec::with_capacity(OBJS / 4);
                    let mut freed = 0usize;
                    for (i, w) in objs.drain(..).enumerate() {
                        if i % 4 == 0 {
                            kept.push(w);
                        } else {
                            let (q, sz) = unpack(w);
                            lat.op(|| free_obj(q, sz));
                            freed += sz;
                        }
                    }
                    LIVE.fetch_sub(freed + OBJS * 8 - OBJS / 4 * 8, Ordering::Relaxed);
                    (t, kept, lat)
                })
            })
            .collect();
        // Free what the previous round's (now dead) threads returned.
        for kept in held.drain(..) {
            let mut n = kept.len() * 8;
            for w in kept {
                let (q, sz) = unpack(w);
                main_lat.op(|| free_obj(q, sz));
                n += sz;
            }
            LIVE.fetch_sub(n, Ordering::Relaxed);
        }
        for h in handles {
            let (t, kept, lat) = h.join().expect("churn thread");
            lats[t] = Some(lat);
            held.push(kept);
        }
    }
    for kept in held.drain(..) {
        for w in kept {
            let (q, sz) = unpack(w);
            main_lat.op(|| free_obj(q, sz));
        }
    }
    let ns = t0.elapsed().as_nanos() as f64;
    let rss_end = current_rss();
    for l in lats.iter().flatten() {
        main_lat.merge(l);
    }
    let threads = rounds * PER_ROUND;
    let mut m = json!({
        "us_per_thread": ns / 1e3 / threads as f64,
        "rss_end_mib": rss_end as f64 / MIB,
        "threads": threads,
    });
    common(
        &mut m,
        (threads * OBJS * 2) as f64,
        ns / 1e9,
        &main_lat,
        PEAK.load(Ordering::Relaxed),
        "one alloc or one free",
    );
    m
}

/// Large allocations: 8 slots; each step frees a random slot and allocates a log-uniform
/// 64 KiB – 8 MiB block into it, then writes one byte per 4 KiB page. Every alloc and free is
/// timed (page touching is not, but it is in the throughput).
fn w_large(p: &Params) -> Value {
    const SLOTS: usize = 8;
    let steps = env_usize(ENV_ITERS).unwrap_or(if p.quick { 1_500 } else { 5_000 });
    let mut r = Rng::new(64);
    let size = |r: &mut Rng| {
        let e = r.range(16, 22);
        (1usize << e) + r.range(0, (1 << e) - 1)
    };
    let mut lat = Lat::new(1);
    let mut slots = [(0usize, 0usize); SLOTS];
    let mut live = 0usize;
    for s in slots.iter_mut() {
        let sz = size(&mut r);
        let q = new_obj(sz);
        touch(q, sz);
        *s = (q as usize, sz);
        live += sz;
    }
    let mut peak_live = live;
    let t0 = Instant::now();
    for _ in 0..steps {
        let i = (r.next() as usize) % SLOTS;
        let (q, sz) = slots[i];
        lat.op(|| free_obj(q as *mut u8, sz));
        live -= sz;
        let nsz = size(&mut r);
        let q = lat.op(|| new_obj(nsz));
        touch(q, nsz);
        slots[i] = (q as usize, nsz);
        live += nsz;
        peak_live = peak_live.max(live);
    }
    let ns = t0.elapsed().as_nanos() as f64;
    let hwm = peak_rss();
    for (q, sz) in slots {
        free_obj(q as *mut u8, sz);
    }
    let mut m = json!({
        "us_per_step": ns / 1e3 / steps as f64,
        "peak_rss_mib": hwm as f64 / MIB,
        "steps": steps,
    });
    common(
        &mut m,
        steps as f64,
        ns / 1e9,
        &lat,
        peak_live,
        "one alloc or one free (64 KiB – 8 MiB; page touching not included)",
    );
    m
}

fn worker(workload: &str) -> ! {
    let p = Params {
        quick: std::env::var(ENV_QUICK).is_ok_and(|v| v == "1"),
    };
    let rss_start = current_rss();
    let mut metrics = match workload {
        "pairs" => w_pairs(&p),
        "prodcons" => w_prodcons(&p),
        "larson" => w_larson(&p),
        "frag" => w_frag(&p),
        "spike" => w_spike(&p),
        "falseshare" => w_falseshare(&p),
        "churn" => w_churn(&p),
        "large" => w_large(&p),
        other => {
            eprintln!("unknown workload {other}");
            std::process::exit(2);
        }
    };
    // Memory metrics common to all workloads.
    let hwm = peak_rss() as f64 / MIB;
    metrics["rss_start_mib"] = json!(rss_start as f64 / MIB);
    metrics["peak_rss_mib"] = json!(hwm);
    // Under 1 MiB of live data the ratio would only measure the process's own baseline.
    if let Some(live) = metrics["peak_live_mib"].as_f64() {
        if live >= 1.0 {
            metrics["rss_over_live"] = json!(hwm / live);
        }
    }
    if metrics.get("rss_idle_mib").is_none() {
        // Everything is freed; idle with light traffic, then read the RSS.
        let ms = if p.quick { 200 } else { 500 };
        metrics["rss_freed_mib"] = json!(current_rss() as f64 / MIB);
        light_idle(ms);
        metrics["rss_idle_mib"] = json!(current_rss() as f64 / MIB);
        metrics["idle_ms"] = json!(ms);
    }
    let alloc = match selected() {
        SEL_TIER => "tieralloc",
        SEL_MI => "mimalloc",
        SEL_JE => "jemalloc",
        SEL_NUMA => "numalloc",
        _ => "system",
    };
    let mut out = json!({ "workload": workload, "alloc": alloc, "metrics": metrics });
    if alloc == "tieralloc" {
        let s = tieralloc::stats();
        out["tieralloc_stats"] = json!({
            "bytes_committed": s.bytes_committed,
            "bytes_reserved": s.bytes_reserved,
            "segments": s.segments,
            "segments_pooled": s.segments_pooled,
            "segments_abandoned": s.segments_abandoned,
            "remote_frees": s.remote_frees,
            "pages_abandoned": s.pages_abandoned,
            "pages_adopted": s.pages_adopted,
            "purges": s.purges,
            "purged_bytes": s.purged_bytes,
        });
    }
    println!("{out}");
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// Driver.

/// tieralloc vs mimalloc vs jemalloc vs numalloc vs system, each allocator in its own process.
#[derive(Parser, Debug)]
#[command(name = "workloads", about)]
struct Cli {
    /// 3 runs and smaller sizes (about 3 minutes in all on 2 cores).
    #[arg(long)]
    quick: bool,
    /// Runs per allocator and workload (default: 3 with --quick, else 5).
    #[arg(long)]
    runs: Option<usize>,
    /// Workloads to run (comma-separated): pairs, prodcons, larson, frag, spike, falseshare,
    /// churn, large.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Allocators to compare (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tieralloc,mimalloc,jemalloc,numalloc,system"
    )]
    allocs: Vec<String>,
    /// Where to write the full results (default: <target dir>/bench-results/workloads.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw SVG charts into this directory (default docs/img when given without a value).
    #[arg(long, num_args = 0..=1, default_missing_value = "docs/img")]
    plots: Option<PathBuf>,
    /// Only draw the charts from an existing JSON results file (no runs).
    #[arg(long)]
    plots_from: Option<PathBuf>,
    /// A worker still running after this many seconds is killed and counted as failed.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Instead of timing: count instructions per alloc+free pair of `pairs` under valgrind's
    /// callgrind (N pairs minus a 0-pair baseline).
    #[arg(long)]
    callgrind: bool,
    /// Pairs counted in --callgrind mode.
    #[arg(long, default_value_t = 1_000_000)]
    callgrind_pairs: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Filters passed by `cargo bench`; ignored.
    #[arg(hide = true)]
    filter: Vec<String>,
}

/// How a metric is judged.
#[derive(Clone, Copy)]
enum Target {
    /// tieralloc's median ≤ factor × mimalloc's median.
    VsMimalloc(f64),
    /// tieralloc's median ≤ the median of this metric of tieralloc's own runs.
    Absolute(&'static str),
    /// Shown for information only.
    Info,
}

struct MetricSpec {
    workload: &'static str,
    key: &'static str,
    label: &'static str,
    target: Target,
    show_min: bool,
}

const fn spec(
    workload: &'static str,
    key: &'static str,
    label: &'static str,
    target: Target,
    show_min: bool,
) -> MetricSpec {
    MetricSpec {
        workload,
        key,
        label,
        target,
        show_min,
    }
}

/// The targets table: the issue-2 targets and each new workload's own metric.
const METRICS: &[MetricSpec] = &[
    spec(
        "pairs",
        "ns_per_pair",
        "wall ns per alloc+free pair",
        Target::VsMimalloc(0.9),
        true,
    ),
    spec(
        "pairs",
        "cpu_ns_per_pair",
        "thread-CPU ns per pair",
        Target::VsMimalloc(0.9),
        true,
    ),
    spec(
        "prodcons",
        "ns_per_obj",
        "wall ns per object (2 threads)",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec(
        "prodcons",
        "cpu_ns_per_obj",
        "process-CPU ns per object",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec(
        "larson",
        "ns_per_op",
        "wall ns per op per thread",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec(
        "larson",
        "cpu_ns_per_op",
        "process-CPU ns per op",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec(
        "larson",
        "peak_rss_mib",
        "peak RSS MiB",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec(
        "frag",
        "rss_over_live",
        "peak RSS / peak live",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec("frag", "peak_rss_mib", "peak RSS MiB", Target::Info, false),
    spec(
        "spike",
        "rss_1s_mib",
        "RSS MiB 1 s after spike",
        Target::Absolute("target_mib"),
        false,
    ),
    spec(
        "spike",
        "rss_2s_mib",
        "RSS MiB 2 s after spike",
        Target::Absolute("target_mib"),
        false,
    ),
    spec(
        "spike",
        "rss_3s_mib",
        "RSS MiB 3 s after spike",
        Target::Absolute("target_mib"),
        false,
    ),
    spec(
        "spike",
        "rss_spike_mib",
        "RSS MiB at spike peak",
        Target::Info,
        false,
    ),
    spec(
        "falseshare",
        "wall_ms",
        "wall ms (2 threads)",
        Target::Info,
        false,
    ),
    spec(
        "churn",
        "us_per_thread",
        "wall µs per short thread",
        Target::Info,
        false,
    ),
    spec(
        "churn",
        "rss_end_mib",
        "RSS MiB at the end",
        Target::Info,
        false,
    ),
    spec(
        "large",
        "us_per_step",
        "wall µs per step",
        Target::Info,
        false,
    ),
    spec("large", "peak_rss_mib", "peak RSS MiB", Target::Info, false),
];

/// The metrics every workload reports (second table, ratios against mimalloc).
const COMMON: &[(&str, &str, f64)] = &[
    ("ops_per_s", "throughput, M ops/s", 1e-6),
    ("lat_p50_ns", "latency p50, ns", 1.0),
    ("lat_p99_ns", "latency p99, ns", 1.0),
    ("lat_p999_ns", "latency p99.9, ns", 1.0),
    ("lat_max_ns", "latency max, µs", 1e-3),
    ("peak_rss_mib", "peak RSS, MiB", 1.0),
    ("peak_live_mib", "peak live, MiB", 1.0),
    ("rss_over_live", "peak RSS / peak live", 1.0),
    ("rss_idle_mib", "RSS after idle, MiB", 1.0),
];

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn minimum(v: &[f64]) -> Option<f64> {
    v.iter().copied().min_by(f64::total_cmp)
}

/// The cargo target directory this binary was built into (…/target/<profile>/deps/exe).
fn target_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(t) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            return t.to_path_buf();
        }
    }
    PathBuf::from("target")
}

fn run_worker(
    exe: &Path,
    workload: &str,
    alloc: &str,
    quick: bool,
    extra: &[(&str, String)],
    timeout: Duration,
) -> Result<Value, String> {
    let mut cmd = Command::new(exe);
    cmd.env(ENV_ALLOC, alloc)
        .env(ENV_WORKLOAD, workload)
        .env(ENV_QUICK, if quick { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out_t = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err_t = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s (killed)", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        return Err(format!("worker exited with {status}: {tail}"));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("worker printed no JSON")?;
    serde_json::from_str(line).map_err(|e| format!("bad JSON from worker: {e}"))
}

fn metric_of(run: &Value, key: &str) -> Option<f64> {
    run.get("metrics")?.get(key)?.as_f64()
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine_info() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_gib": mem_kb as f64 / (1024.0 * 1024.0),
        "kernel": sh("uname", &["-r"]),
        "rustc": sh("rustc", &["--version"]),
        "commit": std::env::var("TIERALLOC_BENCH_COMMIT")
            .unwrap_or_else(|_| sh("git", &["rev-parse", "--short", "HEAD"])),
    })
}

/// Three significant digits, plain notation.
fn fmt_val(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) if x.abs() >= 1.0 => format!("{x:.2}"),
        Some(0.0) => "0".into(),
        Some(x) => {
            let digits = (2 - x.abs().log10().floor() as i32).clamp(3, 9) as usize;
            format!("{x:.digits$}")
        }
    }
}

fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// results[workload][alloc] = list of worker outputs.
type Results = Map<String, Value>;

fn values(results: &Results, w: &str, a: &str, key: &str) -> Vec<f64> {
    results
        .get(w)
        .and_then(|x| x.get(a))
        .and_then(|x| x.as_array())
        .map(|runs| runs.iter().filter_map(|r| metric_of(r, key)).collect())
        .unwrap_or_default()
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The markdown tables and the JSON summary.
fn tables(
    results: &Results,
    workloads: &[&str],
    allocs: &[String],
    mode: &str,
    runs: usize,
) -> (String, Vec<Value>) {
    let others: Vec<&String> = allocs.iter().filter(|a| *a != "mimalloc").collect();
    let mut summary: Vec<Value> = Vec::new();
    let mut table = format!(
        "\n## Targets: {} ({mode} mode, {runs} runs each, medians)\n\n",
        allocs.join(" vs ")
    );
    let mut head = String::from("| workload | metric | target |");
    let mut rule = String::from("|---|---|---|");
    for a in allocs {
        head.push_str(&format!(" {a} |"));
        rule.push_str("---:|");
    }
    for a in &others {
        head.push_str(&format!(" {}/mi |", short(a)));
        rule.push_str("---:|");
    }
    head.push_str(" verdict |\n");
    rule.push_str("---|\n");
    table.push_str(&head);
    table.push_str(&rule);
    for m in METRICS.iter().filter(|m| workloads.contains(&m.workload)) {
        for minimum_row in [false, true] {
            if minimum_row && !m.show_min {
                continue;
            }
            let stat = |a: &str| {
                let v = values(results, m.workload, a, m.key);
                if minimum_row {
                    minimum(&v)
                } else {
                    median(&v)
                }
            };
            let t = stat("tieralloc");
            let mi = stat("mimalloc");
            let (target_text, verdict) = match m.target {
                Target::VsMimalloc(f) => {
                    let text = if f == 1.0 {
                        "≤ mimalloc".to_string()
                    } else {
                        format!("≤ {f} × mimalloc")
                    };
                    let v = match (t, mi) {
                        (Some(t), Some(mi)) => pass(t <= f * mi),
                        _ => "n/a",
                    };
                    (text, v)
                }
                Target::Absolute(key) => {
                    let goal = median(&values(results, m.workload, "tieralloc", key));
                    let v = match (t, goal) {
                        (Some(t), Some(g)) => pass(t <= g),
                        _ => "n/a",
                    };
                    (
                        format!("≤ 1.1 × steady live + 8 MiB = {}", fmt_val(goal)),
                        v,
                    )
                }
                Target::Info => ("(info)".to_string(), ""),
            };
            let label = if minimum_row {
                format!("{} (minimum)", m.label)
            } else {
                m.label.to_string()
            };
            let mut row = format!("| {} | {} | {} |", m.workload, label, target_text);
            for a in allocs {
                row.push_str(&format!(" {} |", fmt_val(stat(a))));
            }
            for a in &others {
                row.push_str(&format!(" {} |", fmt_ratio(stat(a), mi)));
            }
            row.push_str(&format!(" {verdict} |\n"));
            table.push_str(&row);
            if minimum_row {
                continue;
            }
            let mut per: Map<String, Value> = Map::new();
            for a in allocs {
                let vals = values(results, m.workload, a, m.key);
                per.insert(
                    a.clone(),
                    json!({
                        "median": median(&vals),
                        "min": minimum(&vals),
                        "over_mimalloc": match (median(&vals), mi) {
                            (Some(x), Some(b)) if b > 0.0 => Some(x / b),
                            _ => None,
                        },
                        "runs": vals,
                    }),
                );
            }
            summary.push(json!({
                "workload": m.workload,
                "metric": m.key,
                "label": m.label,
                "target": target_text,
                "verdict": verdict,
                "allocators": per,
            }));
        }
    }

    table.push_str(&format!(
        "\n## All workloads: medians, (ratio to mimalloc) ({mode} mode, {runs} runs)\n\n\
         Throughput: higher is better; latency and memory: lower is better. Latency: a sample \
         of the operations (see JSON `op`, `lat_every`); peak live: requested bytes plus the \
         workload's own arrays; RSS after idle: everything freed, then light traffic.\n\n"
    ));
    let mut head = String::from("| workload | metric |");
    let mut rule = String::from("|---|---|");
    for a in allocs {
        head.push_str(&format!(" {a} |"));
        rule.push_str("---:|");
    }
    table.push_str(&head);
    table.push('\n');
    table.push_str(&rule);
    table.push('\n');
    for &w in workloads {
        for &(key, label, scale) in COMMON {
            let med = |a: &str| median(&values(results, w, a, key)).map(|v| v * scale);
            let mi = med("mimalloc");
            let mut row = format!("| {w} | {label} |");
            for a in allocs {
                let v = med(a);
                if a == "mimalloc" || mi.is_none() {
                    row.push_str(&format!(" {} |", fmt_val(v)));
                } else {
                    row.push_str(&format!(" {} ({}) |", fmt_val(v), fmt_ratio(v, mi)));
                }
            }
            row.push('\n');
            table.push_str(&row);
            let mut per: Map<String, Value> = Map::new();
            for a in allocs {
                let vals = values(results, w, a, key);
                per.insert(
                    a.clone(),
                    json!({ "median": median(&vals), "min": minimum(&vals), "runs": vals }),
                );
            }
            summary.push(json!({
                "workload": w, "metric": key, "label": label, "target": "(info)",
                "verdict": "", "allocators": per,
            }));
        }
    }
    (table, summary)
}

fn short(a: &str) -> &str {
    match a {
        "tieralloc" => "tier",
        "jemalloc" => "je",
        "numalloc" => "numa",
        "system" => "sys",
        other => other,
    }
}

fn resolve_workloads(only: &[String]) -> Vec<&'static str> {
    if only.is_empty() {
        return WORKLOADS.to_vec();
    }
    for w in only {
        if !WORKLOADS.contains(&w.as_str()) {
            eprintln!("unknown workload {w}; choose from {WORKLOADS:?}");
            std::process::exit(2);
        }
    }
    WORKLOADS
        .iter()
        .copied()
        .filter(|w| only.iter().any(|o| o == w))
        .collect()
}

fn driver(cli: Cli) {
    let exe = std::env::current_exe().expect("current_exe");
    for a in &cli.allocs {
        if !ALLOCS.contains(&a.as_str()) {
            eprintln!("unknown allocator {a}; choose from {ALLOCS:?}");
            std::process::exit(2);
        }
    }
    if cli.callgrind {
        callgrind(&cli, &exe);
        return;
    }
    if let Some(src) = &cli.plots_from {
        let doc: Value = std::fs::read_to_string(src)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| {
                eprintln!("cannot read results from {}", src.display());
                std::process::exit(2);
            });
        let dir = cli
            .plots
            .clone()
            .unwrap_or_else(|| PathBuf::from("docs/img"));
        plots::draw_all(&doc, &dir);
        return;
    }
    let workloads = resolve_workloads(&cli.only);
    let runs = cli.runs.unwrap_or(if cli.quick { 3 } else { 5 }).max(1);
    let mode = if cli.quick { "quick" } else { "full" };
    let started = Instant::now();
    let load_before = load_average();
    eprintln!(
        "workloads {:?} × allocators {:?} × {runs} runs ({mode}); load average {load_before}",
        workloads, cli.allocs
    );
    let total = (workloads.len() * cli.allocs.len() * runs) as u64;
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:32}] {pos}/{len} runs, eta {eta}  {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let timeout = Duration::from_secs(cli.timeout);
    let mut results: Results = Map::new();
    let mut errors: Vec<String> = Vec::new();
    for &w in &workloads {
        let mut per_alloc: Map<String, Value> = Map::new();
        for a in &cli.allocs {
            per_alloc.insert(a.clone(), json!([]));
        }
        let key = METRICS
            .iter()
            .find(|m| m.workload == w)
            .map(|m| m.key)
            .unwrap_or("ops_per_s");
        for run in 0..runs {
            // The order rotates by one allocator per run, so that no allocator always runs
            // first (on a cold machine) or right after the same neighbour: over as many runs
            // as allocators, each runs once in every position.
            let n = cli.allocs.len();
            for a in (0..n).map(|k| &cli.allocs[(k + run) % n]) {
                pb.set_message(format!("{w} run {} {a}", run + 1));
                let t = Instant::now();
                match run_worker(&exe, w, a, cli.quick, &[], timeout) {
                    Ok(v) => {
                        let line = format!(
                            "  {w:10} run {} {a:10} {key} = {} ({:.1} s)",
                            run + 1,
                            fmt_val(metric_of(&v, key)),
                            t.elapsed().as_secs_f64()
                        );
                        pb.suspend(|| eprintln!("{line}"));
                        per_alloc[a].as_array_mut().expect("array").push(v);
                    }
                    Err(e) => {
                        pb.suspend(|| eprintln!("  {w:10} run {} {a:10} FAILED: {e}", run + 1));
                        errors.push(format!("{w}/{a} run {}: {e}", run + 1));
                    }
                }
                pb.inc(1);
            }
        }
        results.insert(w.to_string(), Value::Object(per_alloc));
    }
    pb.finish_and_clear();
    let load_after = load_average();

    let (mut table, summary) = tables(&results, &workloads, &cli.allocs, mode, runs);
    if !errors.is_empty() {
        table.push_str("\nFailed runs:\n");
        for e in &errors {
            table.push_str(&format!("- {e}\n"));
        }
    }
    table.push_str(&format!(
        "\n{:.0} s in all; load average before {load_before}, after {load_after}.\n",
        started.elapsed().as_secs_f64()
    ));
    println!("{table}");
    let path = cli
        .json
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-results").join("workloads.json"));
    let doc = json!({
        "machine": machine_info(),
        "mode": mode,
        "runs": runs,
        "allocators": cli.allocs,
        "workloads": workloads,
        "order": "interleaved per run: allocators in the order given, one process each",
        "elapsed_s": started.elapsed().as_secs_f64(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "summary": summary,
        "errors": errors,
        "raw": results,
    });
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).expect("serialise") + "\n",
    ) {
        Ok(()) => eprintln!(
            "wrote {} ({:.0} s in all)",
            path.display(),
            started.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    if let Some(dir) = &cli.plots {
        plots::draw_all(&doc, dir);
    }
    if !errors.is_empty() {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Charts (plotters, SVG backend: no font or system libraries needed).

mod plots {
    use super::{median, metric_of, values, Results};
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    use serde_json::Value;
    use std::path::Path;

    type Res = Result<(), Box<dyn std::error::Error>>;
    type Chart = fn(&Ctx, &Path) -> Res;

    const PCTS: [(&str, &str); 4] = [
        ("lat_p50_ns", "p50"),
        ("lat_p99_ns", "p99"),
        ("lat_p999_ns", "p99.9"),
        ("lat_max_ns", "max"),
    ];

    fn color(a: &str) -> RGBColor {
        match a {
            "tieralloc" => RGBColor(214, 39, 40),
            "mimalloc" => RGBColor(31, 119, 180),
            "jemalloc" => RGBColor(44, 160, 44),
            "numalloc" => RGBColor(255, 127, 14),
            _ => RGBColor(100, 100, 100),
        }
    }

    fn fmt_ns(v: f64) -> String {
        if v >= 1e9 {
            format!("{:.0} s", v / 1e9)
        } else if v >= 1e6 {
            format!("{:.0} ms", v / 1e6)
        } else if v >= 1e3 {
            format!("{:.0} µs", v / 1e3)
        } else {
            format!("{v:.0} ns")
        }
    }

    struct Ctx<'a> {
        results: &'a Results,
        allocs: Vec<String>,
        workloads: Vec<String>,
        caption: String,
    }

    pub fn draw_all(doc: &Value, dir: &Path) {
        let Some(results) = doc.get("raw").and_then(|r| r.as_object()) else {
            eprintln!("no raw results to plot");
            return;
        };
        let strs = |k: &str| -> Vec<String> {
            doc.get(k)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let m = &doc["machine"];
        let ctx = Ctx {
            results,
            allocs: strs("allocators"),
            workloads: strs("workloads"),
            caption: format!(
                "{} cores, {}, {} mode, {} runs, medians, commit {}",
                m["cores"],
                m["cpu"].as_str().unwrap_or(""),
                doc["mode"].as_str().unwrap_or(""),
                doc["runs"],
                m["commit"].as_str().unwrap_or("?"),
            ),
        };
        let _ = std::fs::create_dir_all(dir);
        let jobs: [(&str, Chart); 4] = [
            ("latency.svg", latency),
            ("spike-rss.svg", spike),
            ("throughput-ratio.svg", throughput),
            ("memory-ratio.svg", memory),
        ];
        for (name, f) in jobs {
            let path = dir.join(name);
            match f(&ctx, &path) {
                Ok(()) => eprintln!("wrote {}", path.display()),
                Err(e) => eprintln!("could not draw {}: {e}", path.display()),
            }
        }
    }

    fn med(ctx: &Ctx, w: &str, a: &str, key: &str) -> Option<f64> {
        median(&values(ctx.results, w, a, key))
    }

    /// Latency percentiles per allocator, one panel per workload (log scale).
    fn latency(ctx: &Ctx, path: &Path) -> Res {
        let n = ctx.workloads.len().max(1);
        let cols = 3.min(n);
        let rows = n.div_ceil(cols);
        let root = SVGBackend::new(path, (1500, 60 + 380 * rows as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!(
                "Per-operation latency (sampled), log scale. {}",
                ctx.caption
            ),
            ("sans-serif", 20),
        )?;
        let panels = root.split_evenly((rows, cols));
        for (w, panel) in ctx.workloads.iter().zip(panels.iter()) {
            let mut lo = f64::MAX;
            let mut hi = 1.0f64;
            for a in &ctx.allocs {
                for (k, _) in PCTS {
                    if let Some(v) = med(ctx, w, a, k) {
                        lo = lo.min(v.max(1.0));
                        hi = hi.max(v);
                    }
                }
            }
            if lo > hi {
                continue;
            }
            let mut chart = ChartBuilder::on(panel)
                .caption(w, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(28)
                .y_label_area_size(70)
                .build_cartesian_2d(-0.5f64..3.5f64, (lo / 2.0..hi * 2.0).log_scale())?;
            chart
                .configure_mesh()
                .x_labels(5)
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 0.01 && (0.0..4.0).contains(&i) {
                        PCTS[i as usize].1.to_string()
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|v| fmt_ns(*v))
                .draw()?;
            for (ai, a) in ctx.allocs.iter().enumerate() {
                let c = color(a);
                let off = (ai as f64 - (ctx.allocs.len() as f64 - 1.0) / 2.0) * 0.06;
                let pts: Vec<(f64, f64)> = PCTS
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (k, _))| med(ctx, w, a, k).map(|v| (i as f64 + off, v)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                    .label(a.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3))
                    });
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .draw()?;
        }
        root.present()?;
        Ok(())
    }

    /// RSS over time through the spike: for each allocator the run with the median RSS at 1 s.
    fn spike(ctx: &Ctx, path: &Path) -> Res {
        let Some(per) = ctx.results.get("spike") else {
            return Err("no spike results".into());
        };
        let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        let mut target = None;
        for a in &ctx.allocs {
            let Some(runs) = per.get(a).and_then(|v| v.as_array()) else {
                continue;
            };
            let mut by: Vec<(f64, &Value)> = runs
                .iter()
                .filter_map(|r| metric_of(r, "rss_1s_mib").map(|v| (v, r)))
                .collect();
            if by.is_empty() {
                continue;
            }
            by.sort_by(|x, y| x.0.total_cmp(&y.0));
            let run = by[by.len() / 2].1;
            target = target.or(metric_of(run, "target_mib"));
            let pts: Vec<(f64, f64)> = run["metrics"]["series_ms_mib"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|p| Some((p[0].as_f64()? / 1e3, p[1].as_f64()?)))
                        .collect()
                })
                .unwrap_or_default();
            lines.push((a.clone(), pts));
        }
        let xmin = lines
            .iter()
            .flat_map(|l| l.1.iter().map(|p| p.0))
            .fold(0.0f64, f64::min);
        let ymax = lines
            .iter()
            .flat_map(|l| l.1.iter().map(|p| p.1))
            .fold(10.0f64, f64::max);
        let ymin = lines
            .iter()
            .flat_map(|l| l.1.iter().map(|p| p.1))
            .fold(f64::MAX, f64::min)
            .min(target.unwrap_or(f64::MAX));
        let root = SVGBackend::new(path, (1200, 650)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "spike: RSS through a 256 MiB spike (freed at t = 0) over a 16 MiB steady set",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                xmin - 0.05..3.1f64,
                ((ymin * 0.8).min(10.0)..ymax * 4.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc(format!("seconds after the free   ({})", ctx.caption))
            .y_desc("RSS, MiB (log scale)")
            .y_labels(15)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        if let Some(t) = target {
            chart
                .draw_series(LineSeries::new(
                    vec![(xmin - 0.05, t), (3.1, t)],
                    BLACK.mix(0.6).stroke_width(1),
                ))?
                .label(format!("target {t:.1} MiB (1.1 × steady live + 8 MiB)"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6)));
        }
        for (a, pts) in &lines {
            let c = color(a);
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(a.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3))
                });
            // The RSS at the end, written at the line's end (the log axis has few labels).
            if let Some(&(x, y)) = pts.last() {
                let style = ("sans-serif", 12)
                    .into_font()
                    .color(&c)
                    .pos(Pos::new(HPos::Right, VPos::Bottom));
                chart.draw_series(std::iter::once(Text::new(
                    format!("{y:.1} MiB"),
                    (x, y),
                    style,
                )))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    }

    /// Grouped bars of value / mimalloc's value per workload, log scale around 1.
    fn ratio_bars(
        ctx: &Ctx,
        path: &Path,
        title: &str,
        series: &[(&str, &str)],
        ylabel: &str,
    ) -> Res {
        let allocs: Vec<&String> = ctx.allocs.iter().filter(|a| *a != "mimalloc").collect();
        let n = ctx.workloads.len();
        let root =
            SVGBackend::new(path, (1300, 360 * series.len() as u32 + 40)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(&format!("{title}. {}", ctx.caption), ("sans-serif", 18))?;
        let panels = root.split_evenly((series.len(), 1));
        for ((key, name), panel) in series.iter().zip(panels.iter()) {
            let mut bars: Vec<(usize, usize, f64)> = Vec::new();
            for (wi, w) in ctx.workloads.iter().enumerate() {
                let Some(mi) = med(ctx, w, "mimalloc", key) else {
                    continue;
                };
                for (ai, a) in allocs.iter().enumerate() {
                    if let Some(v) = med(ctx, w, a, key) {
                        if mi > 0.0 && v > 0.0 {
                            bars.push((wi, ai, v / mi));
                        }
                    }
                }
            }
            let lo = bars.iter().map(|b| b.2).fold(1.0f64, f64::min) / 1.6;
            let hi = bars.iter().map(|b| b.2).fold(1.0f64, f64::max) * 1.6;
            let wl = ctx.workloads.clone();
            let mut chart = ChartBuilder::on(panel)
                .caption(*name, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(-0.5f64..n as f64 - 0.5, (lo..hi).log_scale())?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n + 1)
                .x_label_formatter(&move |x| {
                    let i = x.round();
                    if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < wl.len() {
                        wl[i as usize].clone()
                    } else {
                        String::new()
                    }
                })
                .y_desc(ylabel)
                .y_labels(5)
                .y_label_formatter(&|v| format!("{v:.2}"))
                .draw()?;
            let k = allocs.len().max(1) as f64;
            let width = 0.8 / k;
            for (ai, a) in allocs.iter().enumerate() {
                let c = color(a);
                chart
                    .draw_series(bars.iter().filter(|b| b.1 == ai).map(|&(wi, _, r)| {
                        let x0 = wi as f64 - 0.4 + ai as f64 * width;
                        Rectangle::new([(x0, 1.0), (x0 + width * 0.9, r)], c.filled())
                    }))?
                    .label(a.as_str())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled())
                    });
                // The value at the end of each bar (the log axis has few labels).
                let font = ("sans-serif", 11).into_font();
                let above = TextStyle::from(font.clone()).pos(Pos::new(HPos::Left, VPos::Bottom));
                let below = TextStyle::from(font).pos(Pos::new(HPos::Left, VPos::Top));
                chart.draw_series(bars.iter().filter(|b| b.1 == ai).map(|&(wi, _, r)| {
                    let x0 = wi as f64 - 0.4 + ai as f64 * width;
                    let style = if r >= 1.0 {
                        above.clone()
                    } else {
                        below.clone()
                    };
                    Text::new(format!("{r:.2}"), (x0, r), style)
                }))?;
            }
            chart.draw_series(LineSeries::new(
                vec![(-0.5, 1.0), (n as f64 - 0.5, 1.0)],
                BLACK.stroke_width(1),
            ))?;
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .draw()?;
        }
        root.present()?;
        Ok(())
    }

    fn throughput(ctx: &Ctx, path: &Path) -> Res {
        ratio_bars(
            ctx,
            path,
            "Throughput relative to mimalloc (above 1 = faster than mimalloc)",
            &[("ops_per_s", "throughput / mimalloc's")],
            "ratio (log scale)",
        )
    }

    fn memory(ctx: &Ctx, path: &Path) -> Res {
        ratio_bars(
            ctx,
            path,
            "Memory relative to mimalloc (below 1 = less than mimalloc)",
            &[
                ("peak_rss_mib", "peak RSS / mimalloc's"),
                ("rss_idle_mib", "RSS after idle / mimalloc's"),
            ],
            "ratio (log scale)",
        )
    }
}

/// Total instructions (`Ir`) from a callgrind output file.
fn callgrind_total(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn callgrind(cli: &Cli, exe: &Path) {
    let dir = target_dir().join("bench-results").join("callgrind");
    let _ = std::fs::create_dir_all(&dir);
    let n = cli.callgrind_pairs;
    let warmup = 200_000usize;
    let mut rows = Vec::new();
    let mut table = String::from(
        "\n## Instructions per alloc+free pair (callgrind, `pairs` worker, N pairs minus 0 pairs)\n\n\
         | allocator | sizes | Ir (N pairs) | Ir (0 pairs) | N | instructions / pair |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    for (label, fixed) in [("mixed 8 B–4 KiB", 0usize), ("fixed 64 B", 64)] {
        for a in &cli.allocs {
            let mut totals = [0u64; 2];
            for (slot, iters) in [n, 0].into_iter().enumerate() {
                let out = dir.join(format!("{a}-{fixed}-{iters}.out"));
                let status = Command::new("valgrind")
                    .arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={}", out.display()))
                    .arg(exe)
                    .env(ENV_ALLOC, a)
                    .env(ENV_WORKLOAD, "pairs")
                    .env(ENV_ITERS, iters.to_string())
                    .env(ENV_WARMUP, warmup.to_string())
                    .env(ENV_FIXED, fixed.to_string())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                match status {
                    Ok(s) if s.success() => {}
                    other => {
                        eprintln!("valgrind failed for {a}: {other:?} (is valgrind installed?)");
                        std::process::exit(1);
                    }
                }
                totals[slot] = callgrind_total(&out).unwrap_or(0);
            }
            let per = (totals[0] as f64 - totals[1] as f64) / n as f64;
            eprintln!("  {a:10} {label}: {per:.1} instructions/pair");
            table.push_str(&format!(
                "| {a} | {label} | {} | {} | {n} | {per:.1} |\n",
                totals[0], totals[1]
            ));
            rows.push(json!({
                "allocator": a, "sizes": label, "ir_n": totals[0], "ir_0": totals[1],
                "pairs": n, "warmup": warmup, "instructions_per_pair": per,
            }));
        }
    }
    table.push_str(&format!(
        "\nThe per-pair count includes the benchmark loop's own work (ring index, size table \
         load, one byte written, the dispatch branch): the same for every allocator. \
         Profiles: {}\n",
        dir.display()
    ));
    println!("{table}");
    let path = cli
        .json
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-results").join("callgrind.json"));
    let _ = std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({ "callgrind": rows })).expect("serialise") + "\n",
    );
    eprintln!("wrote {}", path.display());
}

fn main() {
    if let Ok(w) = std::env::var(ENV_WORKLOAD) {
        worker(&w);
    }
    driver(Cli::parse());
}
