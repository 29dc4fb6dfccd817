//! What a worker measures besides time: resident set (VmHWM, statm), thread and process CPU
//! time, sampled per-operation latency (HdrHistogram), the metrics every workload reports, and
//! the light traffic a worker idles with before its last RSS reading.
//!
//! Owns: the latency sampler [`Lat`]. May touch: /proc/self (read only), the clocks, and
//! objects of its own through crate::objects.

use crate::objects::{free_obj, new_obj, pack, unpack};
use crate::rng::Rng;
use crate::MIB;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::io::Read;
use std::time::{Duration, Instant};

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
pub fn peak_rss() -> u64 {
    status_field("VmHWM")
}

/// Current resident set from /proc/self/statm, in bytes.
pub fn current_rss() -> u64 {
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

pub fn thread_cpu_ns() -> f64 {
    cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

pub fn process_cpu_ns() -> f64 {
    cpu_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

// ---------------------------------------------------------------------------------------------
// Latency sampling and memory accounting shared by the workloads.

/// Times every `every`-th operation with `Instant` (vDSO `clock_gettime(CLOCK_MONOTONIC)`)
/// and records it in an HdrHistogram (2 significant digits, 1 ns – 60 s). The histogram is
/// created before the timed phase, so recording never allocates; the cost (two clock reads per
/// sampled operation plus a counter) is the same for every allocator.
pub struct Lat {
    n: u32,
    every: u32,
    h: Histogram<u64>,
}

impl Lat {
    pub fn new(every: u32) -> Self {
        Lat {
            n: 0,
            every: every.max(1),
            h: Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("histogram bounds"),
        }
    }

    #[inline(always)]
    pub fn op<R>(&mut self, f: impl FnOnce() -> R) -> R {
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

    pub fn merge(&mut self, other: &Lat) {
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
pub fn common(m: &mut Value, ops: f64, secs: f64, lat: &Lat, peak_live: usize, op: &str) {
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
pub fn light_idle(ms: u64) {
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
