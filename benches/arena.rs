//! `Arena<T>` against typed-arena and bumpalo; `SlotArena` against slotmap.
//!
//! Cases: allocate N values into a fresh arena (creation and drop included), and
//! allocate-then-reset cycles on one arena (typed-arena cannot reset, so it builds a new arena
//! each cycle, which is what its users do). Values are a 24-byte plain struct, so bumpalo's
//! missing Drop does not matter; a second pair of cases uses `String` values, where Drop must
//! run (bumpalo is left out there: it would leak them).
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};

mod verdict;

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

/// Runs the cases, then prints the verdict table of docs/benchmarks.md from the medians
/// measured now (targets: `Arena` within 1.10 × bumpalo and faster than typed-arena).
fn main() {
    let dir = verdict::output_dir();
    let results = verdict::Results::new(&dir);
    let mut c = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    alloc_fresh(&mut c);
    alloc_reset(&mut c);
    alloc_reset_drop(&mut c);
    slots(&mut c);
    c.final_summary();

    let mut out = String::from(
        "\n| case | tieralloc::Arena | typed-arena | bumpalo | vs bumpalo (target ≤ 1.10) \
         | vs typed-arena (target < 1) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut any = false;
    for (case, group, bump) in [
        (
            "allocate 10k into a fresh arena",
            "arena/alloc_fresh_10k",
            true,
        ),
        (
            "allocate 10k then reset (typed-arena: new arena)",
            "arena/alloc_reset_10k",
            true,
        ),
        (
            "1k strings then reset (Drop runs)",
            "arena/alloc_reset_strings_1k",
            false,
        ),
    ] {
        let (Some(t), Some(ta)) = (
            results.median_ns(group, "tieralloc::Arena"),
            results.median_ns(group, "typed_arena"),
        ) else {
            continue;
        };
        any = true;
        let b = bump.then(|| results.median_ns(group, "bumpalo")).flatten();
        out.push_str(&format!(
            "| {case} | {} | {} | {} | {} | {} |\n",
            verdict::fmt_ns(t),
            verdict::fmt_ns(ta),
            b.map_or("—".into(), verdict::fmt_ns),
            b.map_or("—".into(), |b| verdict::verdict(t, b, |r| r <= 1.10)),
            verdict::verdict(t, ta, |r| r < 1.0),
        ));
    }
    let g = "slots/insert_get_remove_10k";
    if let (Some(t), Some(s)) = (
        results.median_ns(g, "tieralloc::SlotArena"),
        results.median_ns(g, "slotmap::SlotMap"),
    ) {
        any = true;
        out.push_str(&format!(
            "\n| case | tieralloc::SlotArena | slotmap::SlotMap | ratio (no target) |\n\
             |---|---:|---:|---:|\n| insert 10k, get all, remove all | {} | {} | {:.2} |\n",
            verdict::fmt_ns(t),
            verdict::fmt_ns(s),
            t / s
        ));
    }
    if any {
        println!("{out}");
    }
}
