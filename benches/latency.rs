//! Per-operation latency: tieralloc vs mimalloc vs jemalloc (`tikv-jemallocator`) vs numalloc
//! vs the system allocator, each called through the `GlobalAlloc` trait directly (the process's
//! own global allocator is the default one and is not involved). Each group holds the five
//! allocators side by side.
//!
//! Groups:
//! - `alloc_free/<size>`: one alloc immediately followed by its free, 16 B … 1 MiB.
//! - `realloc_growth`: a buffer grown by doubling from 8 B to 1 MiB with `realloc`
//!   (one write per step), then freed: 18 reallocs per iteration.
//! - `cross_thread_free`: objects (64 B) allocated on this thread and freed on another one;
//!   time = allocation time here + free time there, per object, batches of 1024 (the
//!   hand-over between the threads is not timed).
//!
//! `cargo bench --features bench-peers --bench latency [-- <filter>]` (without the feature only
//! tieralloc and the system allocator are measured: the peers' C sources are not built).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tieralloc::TierAlloc;

static TIER: TierAlloc = TierAlloc::new();
#[cfg(feature = "bench-peers")]
static MI: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "bench-peers")]
static JE: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(feature = "bench-peers")]
static NUMA: numalloc::NumaAlloc = numalloc::NumaAlloc::new();
static SYS: System = System;

/// The allocators each group compares: the peers only in a build with `bench-peers`.
fn allocators() -> Vec<(&'static str, &'static (dyn GlobalAlloc + Sync))> {
    let mut all: Vec<(&'static str, &'static (dyn GlobalAlloc + Sync))> =
        vec![("tieralloc", &TIER)];
    #[cfg(feature = "bench-peers")]
    all.extend([
        ("mimalloc", &MI as &'static (dyn GlobalAlloc + Sync)),
        ("jemalloc", &JE),
        ("numalloc", &NUMA),
    ]);
    all.push(("system", &SYS));
    all
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

fn alloc_free(c: &mut Criterion) {
    for size in [16usize, 64, 256, 1 << 10, 4 << 10, 64 << 10, 1 << 20] {
        let mut g = c.benchmark_group(format!("alloc_free/{size}"));
        let layout = Layout::from_size_align(size, 8).expect("layout");
        for (name, a) in allocators() {
            g.bench_with_input(BenchmarkId::from_parameter(name), &layout, |b, &l| {
                b.iter(|| {
                    // SAFETY: l has a non-zero size; p is freed once, by the allocator that
                    // returned it, with the same layout.
                    unsafe {
                        let p = a.alloc(l);
                        assert!(!p.is_null());
                        black_box(p);
                        a.dealloc(p, l);
                    }
                })
            });
        }
        g.finish();
    }
}

fn realloc_growth(c: &mut Criterion) {
    let mut g = c.benchmark_group("realloc_growth");
    for (name, a) in allocators() {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                // SAFETY: each realloc gets the current layout of the live buffer, and the
                // final buffer is freed with its layout.
                unsafe {
                    let mut size = 8usize;
                    let mut p = a.alloc(Layout::from_size_align_unchecked(size, 8));
                    assert!(!p.is_null());
                    p.write(1);
                    while size < 1 << 20 {
                        let new = size * 2;
                        p = a.realloc(p, Layout::from_size_align_unchecked(size, 8), new);
                        assert!(!p.is_null());
                        p.add(new - 1).write(1);
                        size = new;
                    }
                    black_box(p);
                    a.dealloc(p, Layout::from_size_align_unchecked(size, 8));
                }
            })
        });
    }
    g.finish();
}

const BATCH: usize = 1024;

fn cross_thread_free(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_thread_free");
    let layout = Layout::from_size_align(64, 8).expect("layout");
    for (idx, (name, _)) in allocators().into_iter().enumerate() {
        // A freeing thread per allocator: it receives batches, frees them, reports its time.
        let (to_freer, batches) = mpsc::sync_channel::<Vec<usize>>(1);
        let (done, times) = mpsc::sync_channel::<(Duration, Vec<usize>)>(1);
        let freer = std::thread::spawn(move || {
            let a = allocators()[idx].1;
            for mut batch in batches {
                let t = Instant::now();
                for &p in &batch {
                    // SAFETY: p was allocated with `layout` by the same allocator.
                    unsafe { a.dealloc(p as *mut u8, layout) };
                }
                let el = t.elapsed();
                batch.clear();
                done.send((el, batch)).expect("driver alive");
            }
        });
        let a = allocators()[idx].1;
        let mut buf: Vec<usize> = Vec::with_capacity(BATCH);
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(BATCH);
                    left -= n;
                    let mut v = std::mem::take(&mut buf);
                    let t = Instant::now();
                    for _ in 0..n {
                        // SAFETY: non-zero size; freed once by the freeing thread.
                        let p = unsafe { a.alloc(layout) };
                        assert!(!p.is_null());
                        v.push(p as usize);
                    }
                    total += t.elapsed();
                    to_freer.send(v).expect("freer alive");
                    let (el, back) = times.recv().expect("freer alive");
                    total += el;
                    buf = back;
                }
                total
            })
        });
        drop(to_freer);
        freer.join().expect("freer thread");
    }
    g.finish();
}

criterion_group! {
    name = latency;
    config = config();
    targets = alloc_free, realloc_growth, cross_thread_free
}
criterion_main!(latency);
