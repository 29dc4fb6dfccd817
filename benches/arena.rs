//! `Arena<T>` against typed-arena and bumpalo; `SlotArena` against slotmap.
//!
//! Cases: allocate N values into a fresh arena (creation and drop included), and
//! allocate-then-reset cycles on one arena (typed-arena cannot reset, so it builds a new arena
//! each cycle, which is what its users do). Values are a 24-byte plain struct, so bumpalo's
//! missing Drop does not matter; a second pair of cases uses `String` values, where Drop must
//! run (bumpalo is left out there: it would leak them).
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[derive(Clone, Copy)]
#[allow(dead_code)] // written, never read: only the allocation matters
struct Val {
    a: u64,
    b: u64,
    c: u32,
}

fn val(i: u64) -> Val {
    Val {
        a: i,
        b: i ^ 0x5555,
        c: i as u32,
    }
}

const N: u64 = 10_000;

fn alloc_fresh(c: &mut Criterion) {
    let mut g = c.benchmark_group("arena/alloc_fresh_10k");
    g.throughput(Throughput::Elements(N));
    g.bench_function("tieralloc::Arena", |b| {
        b.iter(|| {
            let a = tieralloc::Arena::new();
            for i in 0..N {
                black_box(a.alloc(val(i)));
            }
            a
        })
    });
    g.bench_function("typed_arena", |b| {
        b.iter(|| {
            let a = typed_arena::Arena::new();
            for i in 0..N {
                black_box(a.alloc(val(i)));
            }
            a
        })
    });
    g.bench_function("bumpalo", |b| {
        b.iter(|| {
            let a = bumpalo::Bump::new();
            for i in 0..N {
                black_box(a.alloc(val(i)));
            }
            a
        })
    });
    g.finish();
}

fn alloc_reset(c: &mut Criterion) {
    let mut g = c.benchmark_group("arena/alloc_reset_10k");
    g.throughput(Throughput::Elements(N));
    g.bench_function("tieralloc::Arena", |b| {
        let mut a = tieralloc::Arena::new();
        b.iter(|| {
            for i in 0..N {
                black_box(a.alloc(val(i)));
            }
            a.reset();
        })
    });
    g.bench_function("typed_arena", |b| {
        b.iter(|| {
            let a = typed_arena::Arena::new();
            for i in 0..N {
                black_box(a.alloc(val(i)));
            }
            drop(a);
        })
    });
    g.bench_function("bumpalo", |b| {
        let mut a = bumpalo::Bump::new();
        b.iter(|| {
            for i in 0..N {
                black_box(a.alloc(val(i)));
            }
            a.reset();
        })
    });
    g.finish();
}

fn alloc_reset_drop(c: &mut Criterion) {
    const M: u64 = 1_000;
    let mut g = c.benchmark_group("arena/alloc_reset_strings_1k");
    g.throughput(Throughput::Elements(M));
    g.bench_function("tieralloc::Arena", |b| {
        let mut a = tieralloc::Arena::new();
        b.iter(|| {
            for i in 0..M {
                black_box(a.alloc(format!("s{i}")));
            }
            a.reset();
        })
    });
    g.bench_function("typed_arena", |b| {
        b.iter(|| {
            let a = typed_arena::Arena::new();
            for i in 0..M {
                black_box(a.alloc(format!("s{i}")));
            }
            drop(a);
        })
    });
    g.finish();
}

fn slots(c: &mut Criterion) {
    const K: usize = 10_000;
    let mut g = c.benchmark_group("slots/insert_get_remove_10k");
    g.throughput(Throughput::Elements(K as u64));
    g.bench_function(BenchmarkId::from_parameter("tieralloc::SlotArena"), |b| {
        let mut s = tieralloc::SlotArena::with_capacity(K);
        let mut keys = Vec::with_capacity(K);
        b.iter(|| {
            keys.extend((0..K as u64).map(|i| s.insert(i)));
            let mut sum = 0;
            for k in &keys {
                sum += *s.get(*k).unwrap();
            }
            for k in keys.drain(..) {
                black_box(s.remove(k));
            }
            sum
        })
    });
    g.bench_function(BenchmarkId::from_parameter("slotmap::SlotMap"), |b| {
        let mut s = slotmap::SlotMap::with_capacity(K);
        let mut keys = Vec::with_capacity(K);
        b.iter(|| {
            keys.extend((0..K as u64).map(|i| s.insert(i)));
            let mut sum = 0;
            for k in &keys {
                sum += *s.get(*k).unwrap();
            }
            for k in keys.drain(..) {
                black_box(s.remove(k));
            }
            sum
        })
    });
    g.finish();
}

criterion_group!(benches, alloc_fresh, alloc_reset, alloc_reset_drop, slots);
criterion_main!(benches);
