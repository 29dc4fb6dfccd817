//! Allocator comparison: tieralloc vs mimalloc vs the system allocator, one process per run.
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
//! forwards every call to `TierAlloc`, `mimalloc::MiMalloc` or `std::alloc::System`. Every
//! call of every allocator therefore pays the same extra cost: one relaxed load and one
//! compare-and-branch whose outcome never changes within a process (perfectly predicted).
//!
//! Usage: `cargo bench --bench workloads -- [--quick] [--runs N] [--only pairs,larson]
//! [--allocs tieralloc,mimalloc] [--json PATH] [--callgrind]`.

use clap::Parser;
use serde_json::{json, Map, Value};
use std::alloc::{alloc, dealloc, GlobalAlloc, Layout, System};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
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

static SELECTED: AtomicU8 = AtomicU8::new(SEL_UNSET);
static TIER: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
static MI: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
                _ => SEL_SYS,
            }
        }
    };
    // Racing first calls all compute the same value, so a plain store is enough.
    SELECTED.store(s, Ordering::Relaxed);
    s
}

// SAFETY: every call goes to the same one of three GlobalAlloc implementations for the whole
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
                _ => System.realloc(p, l, n),
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

const ALLOCS: [&str; 3] = ["tieralloc", "mimalloc", "system"];
const WORKLOADS: [&str; 5] = ["pairs", "prodcons", "larson", "frag", "spike"];
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
// Workloads (worker side). Each returns its metrics as a JSON object.

struct Params {
    quick: bool,
}

const PAIRS_RING: usize = 4096;
const PAIRS_SIZES: usize = 1 << 16;

/// Single thread: free slot i of a 4096-slot ring, allocate a new object into it.
fn w_pairs(p: &Params) -> Value {
    let iters = env_usize(ENV_ITERS).unwrap_or(if p.quick { 20_000_000 } else { 50_000_000 });
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
    for &w in slots.iter() {
        let (q, sz) = unpack(w);
        free_obj(q, sz);
    }
    json!({
        "ns_per_pair": if iters > 0 { ns / iters as f64 } else { 0.0 },
        "cpu_ns_per_pair": if iters > 0 { cpu / iters as f64 } else { 0.0 },
        "iters": iters,
        "warmup": warmup,
        "fixed_size": fixed,
    })
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
/// in its first word), the other frees them.
fn w_prodcons(p: &Params) -> Value {
    let n_batches =
        env_usize(ENV_ITERS).unwrap_or(if p.quick { 10_000_000 } else { 30_000_000 }) / 64;
    let (tx, rx) = crossbeam_channel::bounded::<[usize; 64]>(256);
    let c = process_cpu_ns();
    let t = Instant::now();
    let consumer = std::thread::spawn(move || {
        let mut freed = 0u64;
        for batch in rx {
            for q in batch {
                let q = q as *mut u8;
                // SAFETY: the producer wrote the object's size into its first word.
                let sz = unsafe { (q as *const usize).read() };
                free_obj(q, sz);
                freed += 1;
            }
        }
        freed
    });
    let mut r = Rng::new(7);
    for _ in 0..n_batches {
        let mut batch = [0usize; 64];
        for slot in batch.iter_mut() {
            let sz = mixed_small_size(&mut r);
            let q = new_obj(sz);
            // SAFETY: every size is at least 8 and blocks are 8-aligned.
            unsafe { (q as *mut usize).write(sz) };
            *slot = q as usize;
        }
        tx.send(batch).expect("consumer alive");
    }
    drop(tx);
    let freed = consumer.join().expect("consumer thread");
    let ns = t.elapsed().as_nanos() as f64;
    let cpu = process_cpu_ns() - c;
    json!({
        "ns_per_obj": ns / freed.max(1) as f64,
        "cpu_ns_per_obj": cpu / freed.max(1) as f64,
        "objects": freed,
        "peak_rss_mib": peak_rss() as f64 / MIB,
    })
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
        (20usize, 300_000usize)
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
    let c0 = process_cpu_ns();
    let t0 = Instant::now();
    for round in 0..rounds {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mut arr = arrays[(t + round + 1) % threads].take().expect("array");
                std::thread::spawn(move || {
                    let mut r = Rng::new(((round as u64) << 32) ^ t as u64 ^ 0xABCD);
                    for _ in 0..ops {
                        let x = r.next();
                        let i = (x as usize) % SLOTS;
                        let (q, sz) = unpack(arr[i]);
                        free_obj(q, sz);
                        let sz = 16 + ((x >> 32) % 1009) as usize;
                        let q = new_obj(sz);
                        // SAFETY: q holds sz >= 16 bytes.
                        unsafe { q.write(sz as u8) };
                        arr[i] = pack(q, sz);
                    }
                    (t, arr)
                })
            })
            .collect();
        for h in handles {
            let (t, arr) = h.join().expect("larson thread");
            arrays[t] = Some(arr);
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
    json!({
        // Per-thread time per operation: wall time × threads / total operations.
        "ns_per_op": ns * threads as f64 / total_ops,
        "cpu_ns_per_op": cpu / total_ops,
        "mops_per_s": total_ops / ns * 1e3,
        "peak_rss_mib": hwm as f64 / MIB,
        "threads": threads,
        "rounds": rounds,
        "ops_per_thread_round": ops,
    })
}

/// Fragmentation: fill with 16–512 B objects, free 90 % at random, refill the same volume
/// with 2–16 KiB objects. Live bytes are requested sizes plus the workload's own pointer array.
fn w_frag(p: &Params) -> Value {
    let target: usize = if p.quick { 64 << 20 } else { 200 << 20 };
    let mut r = Rng::new(99);
    let cap = target / 200; // expected count is target / 264; refill adds ~2 % more
    let mut objs: Vec<u64> = Vec::with_capacity(cap);
    let book = cap * 8;
    let mut live = book;
    let mut peak_live = live;
    while live < target + book {
        let sz = r.range(16, 512);
        objs.push(pack(new_obj(sz), sz));
        live += sz;
    }
    assert_eq!(objs.capacity(), cap, "bookkeeping array grew");
    peak_live = peak_live.max(live);
    let rss_filled = current_rss();
    let mut freed = 0usize;
    objs.retain(|&w| {
        if r.next() % 10 != 0 {
            let (q, sz) = unpack(w);
            free_obj(q, sz);
            freed += sz;
            false
        } else {
            true
        }
    });
    live -= freed;
    let rss_freed = current_rss();
    let mut refilled = 0usize;
    while refilled < freed {
        let sz = r.range(2048, 16384);
        objs.push(pack(new_obj(sz), sz));
        refilled += sz;
        live += sz;
        peak_live = peak_live.max(live);
    }
    assert_eq!(objs.capacity(), cap, "bookkeeping array grew");
    let rss_refilled = current_rss();
    let hwm = peak_rss();
    for w in objs.drain(..) {
        let (q, sz) = unpack(w);
        free_obj(q, sz);
    }
    json!({
        "rss_over_live": hwm as f64 / peak_live as f64,
        "peak_rss_mib": hwm as f64 / MIB,
        "peak_live_mib": peak_live as f64 / MIB,
        "rss_filled_mib": rss_filled as f64 / MIB,
        "rss_after_free_mib": rss_freed as f64 / MIB,
        "rss_refilled_mib": rss_refilled as f64 / MIB,
    })
}

/// Spike: steady live set of 16 MiB, a 256 MiB spike of mixed sizes that is freed again, then
/// 3 s of light traffic (4 replacements per ms) while VmRSS is sampled every 50 ms.
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
        steady.push(pack(new_obj(sz), sz));
        steady_bytes += sz;
    }
    let mut series: Vec<(f64, f64)> = Vec::with_capacity(256);
    let steady_book = steady.capacity() * 8 + series.capacity() * 16;
    // Light traffic: replace a few random steady objects (live volume stays about the same).
    let light = |steady: &mut Vec<u64>, steady_bytes: &mut usize, r: &mut Rng| {
        for _ in 0..4 {
            let i = (r.next() as usize) % steady.len();
            let (q, sz) = unpack(steady[i]);
            free_obj(q, sz);
            let nsz = r.range(16, 1024);
            steady[i] = pack(new_obj(nsz), nsz);
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
    let mut spike_bytes = 0usize;
    let mut k = 0usize;
    while spike_bytes < SPIKE {
        let sz = if k % 64 == 63 {
            1 << 20
        } else {
            let e = r.range(6, 15);
            (1usize << e) + r.range(0, (1 << e) - 1)
        };
        k += 1;
        spike.push((new_obj(sz) as usize, sz));
        spike_bytes += sz;
        // Touch every page as a real program would.
        let q = spike.last().expect("pushed").0 as *mut u8;
        let mut off = 0;
        while off < sz {
            // SAFETY: off < sz.
            unsafe { q.add(off).write(1) };
            off += 4096;
        }
    }
    let rss_spike = current_rss();
    for (q, sz) in spike.drain(..) {
        free_obj(q as *mut u8, sz);
    }
    drop(spike);
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
    let out = json!({
        "rss_1s_mib": at(1000.0),
        "rss_2s_mib": at(2000.0),
        "rss_3s_mib": at(3000.0),
        "target_mib": target_mib,
        "steady_live_mib": steady_live as f64 / MIB,
        "rss_steady_mib": rss_steady as f64 / MIB,
        "rss_spike_mib": rss_spike as f64 / MIB,
        "rss_after_free_mib": rss_after_free as f64 / MIB,
        "spike_objects": k,
        "series_ms_mib": series,
    });
    for w in steady {
        let (q, sz) = unpack(w);
        free_obj(q, sz);
    }
    out
}

fn worker(workload: &str) -> ! {
    let p = Params {
        quick: std::env::var(ENV_QUICK).is_ok_and(|v| v == "1"),
    };
    let metrics = match workload {
        "pairs" => w_pairs(&p),
        "prodcons" => w_prodcons(&p),
        "larson" => w_larson(&p),
        "frag" => w_frag(&p),
        "spike" => w_spike(&p),
        other => {
            eprintln!("unknown workload {other}");
            std::process::exit(2);
        }
    };
    let alloc = match selected() {
        SEL_TIER => "tieralloc",
        SEL_MI => "mimalloc",
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

/// tieralloc vs mimalloc vs system, each allocator in its own process.
#[derive(Parser, Debug)]
#[command(name = "workloads", about)]
struct Cli {
    /// 3 runs and smaller sizes (about 2 minutes in all).
    #[arg(long)]
    quick: bool,
    /// Runs per allocator and workload (default: 3 with --quick, else 5).
    #[arg(long)]
    runs: Option<usize>,
    /// Workloads to run (comma-separated): pairs, prodcons, larson, frag, spike.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Allocators to compare (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tieralloc,mimalloc,system"
    )]
    allocs: Vec<String>,
    /// Where to write the full results (default: <target dir>/bench-results/workloads.json).
    #[arg(long)]
    json: Option<PathBuf>,
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

const METRICS: &[MetricSpec] = &[
    MetricSpec {
        workload: "pairs",
        key: "ns_per_pair",
        label: "wall ns per alloc+free pair",
        target: Target::VsMimalloc(0.9),
        show_min: true,
    },
    MetricSpec {
        workload: "pairs",
        key: "cpu_ns_per_pair",
        label: "thread-CPU ns per pair",
        target: Target::VsMimalloc(0.9),
        show_min: true,
    },
    MetricSpec {
        workload: "prodcons",
        key: "ns_per_obj",
        label: "wall ns per object (2 threads)",
        target: Target::VsMimalloc(1.0),
        show_min: false,
    },
    MetricSpec {
        workload: "prodcons",
        key: "cpu_ns_per_obj",
        label: "process-CPU ns per object",
        target: Target::VsMimalloc(1.0),
        show_min: false,
    },
    MetricSpec {
        workload: "larson",
        key: "ns_per_op",
        label: "wall ns per op per thread",
        target: Target::VsMimalloc(1.0),
        show_min: false,
    },
    MetricSpec {
        workload: "larson",
        key: "cpu_ns_per_op",
        label: "process-CPU ns per op",
        target: Target::VsMimalloc(1.0),
        show_min: false,
    },
    MetricSpec {
        workload: "larson",
        key: "peak_rss_mib",
        label: "peak RSS MiB",
        target: Target::VsMimalloc(1.0),
        show_min: false,
    },
    MetricSpec {
        workload: "frag",
        key: "rss_over_live",
        label: "peak RSS / peak live",
        target: Target::VsMimalloc(1.0),
        show_min: false,
    },
    MetricSpec {
        workload: "frag",
        key: "peak_rss_mib",
        label: "peak RSS MiB",
        target: Target::Info,
        show_min: false,
    },
    MetricSpec {
        workload: "spike",
        key: "rss_1s_mib",
        label: "RSS MiB 1 s after spike",
        target: Target::Absolute("target_mib"),
        show_min: false,
    },
    MetricSpec {
        workload: "spike",
        key: "rss_2s_mib",
        label: "RSS MiB 2 s after spike",
        target: Target::Absolute("target_mib"),
        show_min: false,
    },
    MetricSpec {
        workload: "spike",
        key: "rss_3s_mib",
        label: "RSS MiB 3 s after spike",
        target: Target::Absolute("target_mib"),
        show_min: false,
    },
    MetricSpec {
        workload: "spike",
        key: "rss_spike_mib",
        label: "RSS MiB at spike peak",
        target: Target::Info,
        show_min: false,
    },
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
) -> Result<Value, String> {
    let mut cmd = Command::new(exe);
    cmd.env(ENV_ALLOC, alloc)
        .env(ENV_WORKLOAD, workload)
        .env(ENV_QUICK, if quick { "1" } else { "0" });
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| format!("spawn: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        return Err(format!("worker exited with {}: {tail}", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
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
    })
}

fn fmt_val(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.abs() >= 100.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
    }
}

fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
        _ => "–".into(),
    }
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
    let workloads: Vec<&str> = if cli.only.is_empty() {
        WORKLOADS.to_vec()
    } else {
        for w in &cli.only {
            if !WORKLOADS.contains(&w.as_str()) {
                eprintln!("unknown workload {w}; choose from {WORKLOADS:?}");
                std::process::exit(2);
            }
        }
        WORKLOADS
            .iter()
            .copied()
            .filter(|w| cli.only.iter().any(|o| o == w))
            .collect()
    };
    let runs = cli.runs.unwrap_or(if cli.quick { 3 } else { 5 }).max(1);
    let started = Instant::now();
    eprintln!(
        "workloads {:?} × allocators {:?} × {runs} runs ({})",
        workloads,
        cli.allocs,
        if cli.quick { "quick" } else { "full" }
    );
    // results[workload][alloc] = list of worker outputs.
    let mut results: Map<String, Value> = Map::new();
    let mut errors: Vec<String> = Vec::new();
    for &w in &workloads {
        let mut per_alloc: Map<String, Value> = Map::new();
        for a in &cli.allocs {
            per_alloc.insert(a.clone(), json!([]));
        }
        for run in 0..runs {
            for a in &cli.allocs {
                let t = Instant::now();
                match run_worker(&exe, w, a, cli.quick, &[]) {
                    Ok(v) => {
                        let key = METRICS
                            .iter()
                            .find(|m| m.workload == w)
                            .map(|m| m.key)
                            .unwrap_or("");
                        eprintln!(
                            "  {w:9} run {} {a:10} {key} = {} ({:.1} s)",
                            run + 1,
                            fmt_val(metric_of(&v, key)),
                            t.elapsed().as_secs_f64()
                        );
                        per_alloc[a].as_array_mut().expect("array").push(v);
                    }
                    Err(e) => {
                        eprintln!("  {w:9} run {} {a:10} FAILED: {e}", run + 1);
                        errors.push(format!("{w}/{a} run {}: {e}", run + 1));
                    }
                }
            }
        }
        results.insert(w.to_string(), Value::Object(per_alloc));
    }

    // Summaries and the table.
    let get = |w: &str, a: &str, key: &str| -> Vec<f64> {
        results
            .get(w)
            .and_then(|x| x.get(a))
            .and_then(|x| x.as_array())
            .map(|runs| runs.iter().filter_map(|r| metric_of(r, key)).collect())
            .unwrap_or_default()
    };
    let mut summary: Vec<Value> = Vec::new();
    let mut table = String::new();
    table.push_str(&format!(
        "\n## tieralloc vs mimalloc vs system ({} mode, {runs} runs each, medians)\n\n",
        if cli.quick { "quick" } else { "full" }
    ));
    table.push_str(
        "| workload | metric | target | tieralloc | mimalloc | system | tier/mi | sys/mi | verdict |\n",
    );
    table.push_str("|---|---|---|---:|---:|---:|---:|---:|---|\n");
    for m in METRICS.iter().filter(|m| workloads.contains(&m.workload)) {
        let med = |a: &str| median(&get(m.workload, a, m.key));
        let (t, mi, sy) = (med("tieralloc"), med("mimalloc"), med("system"));
        let (target_text, verdict) = match m.target {
            Target::VsMimalloc(f) => {
                let text = if f == 1.0 {
                    "≤ mimalloc".to_string()
                } else {
                    format!("≤ {f} × mimalloc")
                };
                let v = match (t, mi) {
                    (Some(t), Some(mi)) => {
                        if t <= f * mi {
                            "PASS"
                        } else {
                            "FAIL"
                        }
                    }
                    _ => "n/a",
                };
                (text, v)
            }
            Target::Absolute(key) => {
                let goal = median(&get(m.workload, "tieralloc", key));
                let v = match (t, goal) {
                    (Some(t), Some(g)) => {
                        if t <= g {
                            "PASS"
                        } else {
                            "FAIL"
                        }
                    }
                    _ => "n/a",
                };
                (
                    format!("≤ 1.1 × steady live + 8 MiB = {}", fmt_val(goal)),
                    v,
                )
            }
            Target::Info => ("(info)".to_string(), ""),
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            m.workload,
            m.label,
            target_text,
            fmt_val(t),
            fmt_val(mi),
            fmt_val(sy),
            fmt_ratio(t, mi),
            fmt_ratio(sy, mi),
            verdict
        ));
        if m.show_min {
            let mn = |a: &str| minimum(&get(m.workload, a, m.key));
            let (t2, mi2, sy2) = (mn("tieralloc"), mn("mimalloc"), mn("system"));
            let v2 = match m.target {
                Target::VsMimalloc(f) => match (t2, mi2) {
                    (Some(a), Some(b)) if a <= f * b => "PASS",
                    (Some(_), Some(_)) => "FAIL",
                    _ => "n/a",
                },
                _ => "",
            };
            table.push_str(&format!(
                "| {} | {} (minimum) | {} | {} | {} | {} | {} | {} | {} |\n",
                m.workload,
                m.label,
                target_text,
                fmt_val(t2),
                fmt_val(mi2),
                fmt_val(sy2),
                fmt_ratio(t2, mi2),
                fmt_ratio(sy2, mi2),
                v2
            ));
        }
        let mut per: Map<String, Value> = Map::new();
        for a in &cli.allocs {
            let vals = get(m.workload, a, m.key);
            per.insert(
                a.clone(),
                json!({ "median": median(&vals), "min": minimum(&vals), "runs": vals }),
            );
        }
        summary.push(json!({
            "workload": m.workload,
            "metric": m.key,
            "label": m.label,
            "target": target_text,
            "verdict": verdict,
            "tier_over_mi": match (t, mi) { (Some(a), Some(b)) if b > 0.0 => Some(a / b), _ => None },
            "sys_over_mi": match (sy, mi) { (Some(a), Some(b)) if b > 0.0 => Some(a / b), _ => None },
            "allocators": per,
        }));
    }
    if !errors.is_empty() {
        table.push_str("\nFailed runs:\n");
        for e in &errors {
            table.push_str(&format!("- {e}\n"));
        }
    }
    println!("{table}");
    let path = cli
        .json
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-results").join("workloads.json"));
    let doc = json!({
        "machine": machine_info(),
        "mode": if cli.quick { "quick" } else { "full" },
        "runs": runs,
        "allocators": cli.allocs,
        "order": "interleaved per run: allocators in the order given, one process each",
        "elapsed_s": started.elapsed().as_secs_f64(),
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
    if !errors.is_empty() {
        std::process::exit(1);
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
