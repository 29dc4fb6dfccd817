//! `Pool<T>` against object-pool and opool: get + return of a 4 KiB buffer (cleared on
//! return, keeping its capacity), on one thread and on 2 and 4 threads at once.
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};

mod verdict;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const CAP: usize = 4096;

struct BufAlloc;
impl opool::PoolAllocator<Vec<u8>> for BufAlloc {
    #[inline]
    fn allocate(&self) -> Vec<u8> {
        Vec::with_capacity(CAP)
    }
    #[inline]
    fn reset(&self, v: &mut Vec<u8>) {
        v.clear();
    }
}

/// One round trip on each of the three pools; `use_buf` touches the object.
#[inline(always)]
fn use_buf(v: &mut Vec<u8>) {
    v.push(1);
    black_box(&*v);
}

trait Contender: Send + Sync + 'static {
    fn round_trip(&self);
}

struct Ours(tieralloc::Pool<Vec<u8>>);
impl Contender for Ours {
    #[inline(always)]
    fn round_trip(&self) {
        let mut g = self.0.get();
        use_buf(&mut g);
    }
}

struct ObjectPool(object_pool::Pool<Vec<u8>>);
impl Contender for ObjectPool {
    #[inline(always)]
    fn round_trip(&self) {
        let mut g = self.0.pull(|| Vec::with_capacity(CAP));
        use_buf(&mut g);
        g.clear(); // object-pool has no reset hook
    }
}

struct OPool(opool::Pool<BufAlloc, Vec<u8>>);
impl Contender for OPool {
    #[inline(always)]
    fn round_trip(&self) {
        let mut g = self.0.get();
        use_buf(&mut g);
    }
}

fn contenders() -> Vec<(&'static str, Arc<dyn Contender>)> {
    vec![
        (
            "tieralloc::Pool",
            Arc::new(Ours(
                tieralloc::Pool::builder(|| Vec::with_capacity(CAP))
                    .reset(|v| v.clear())
                    .max_idle(256)
                    .build(),
            )),
        ),
        (
            "object_pool",
            Arc::new(ObjectPool(object_pool::Pool::new(256, || {
                Vec::with_capacity(CAP)
            }))),
        ),
        ("opool", Arc::new(OPool(opool::Pool::new(256, BufAlloc)))),
    ]
}

fn single(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/get_return_1t");
    for (name, p) in contenders() {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| p.round_trip())
        });
    }
    g.finish();
}

/// Wall time for `iters` round trips on each of `threads` threads at once (started together
/// by a barrier).
fn round_trips_on_threads(p: &Arc<dyn Contender>, threads: usize, iters: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (p, barrier) = (p.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    p.round_trip();
                }
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    for h in hs {
        h.join().unwrap();
    }
    t.elapsed()
}

fn contended(c: &mut Criterion) {
    for threads in [2usize, 4] {
        let mut g = c.benchmark_group(format!("pool/get_return_{threads}t"));
        g.measurement_time(Duration::from_secs(3));
        for (name, p) in contenders() {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| round_trips_on_threads(&p, threads, iters))
            });
        }
        g.finish();
    }
}

/// The shared-store path alone: `tieralloc::Pool` with no thread cache, so every get pops a
/// node's shared store and every return pushes one (review rev33: the stores' fork-safe lock).
fn shared_store(c: &mut Criterion) {
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("pool/shared_store_{threads}t"));
        g.measurement_time(Duration::from_secs(3));
        let p: Arc<dyn Contender> = Arc::new(Ours(
            tieralloc::Pool::builder(|| Vec::with_capacity(CAP))
                .reset(|v| v.clear())
                .max_idle(256)
                .thread_cache(0)
                .build(),
        ));
        g.bench_function(BenchmarkId::from_parameter("tieralloc::Pool"), |b| {
            b.iter_custom(|iters| round_trips_on_threads(&p, threads, iters))
        });
        g.finish();
    }
}

/// Runs the cases, then prints the verdict table of docs/benchmarks.md from the medians
/// measured now (target: `Pool` faster than both object-pool and opool).
fn main() {
    let dir = verdict::output_dir();
    let results = verdict::Results::new(&dir);
    let mut c = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    single(&mut c);
    contended(&mut c);
    shared_store(&mut c);
    c.final_summary();

    let mut out = String::from(
        "\n| case | tieralloc::Pool | object-pool | opool | vs object-pool | vs opool \
         | target (faster than both) |\n|---|---:|---:|---:|---:|---:|---|\n",
    );
    let mut any = false;
    for (case, threads) in [
        ("1 thread", 1),
        ("2 threads", 2),
        ("4 threads (on 2 cores)", 4),
    ] {
        let g = format!("pool/get_return_{threads}t");
        let (Some(t), Some(op), Some(o)) = (
            results.median_ns(&g, "tieralloc::Pool"),
            results.median_ns(&g, "object_pool"),
            results.median_ns(&g, "opool"),
        ) else {
            continue;
        };
        any = true;
        let pass = t < op && t < o;
        out.push_str(&format!(
            "| {case} | {} | {} | {} | {:.2} | {:.2} | {} |\n",
            verdict::fmt_ns(t),
            verdict::fmt_ns(op),
            verdict::fmt_ns(o),
            t / op,
            t / o,
            if pass { "PASS" } else { "FAIL" }
        ));
    }
    if any {
        println!("{out}");
    }
}
