//! The `pairs` workload: one thread frees and allocates into a ring of slots; also the loop
//! that `--callgrind` counts instructions of.
//!
//! Owns: its ring and size table. May touch: the global allocator, the measurement helpers.

use crate::measure::{common, thread_cpu_ns, Lat};
use crate::objects::{env_usize, free_obj, mixed_small_size, new_obj, pack, unpack};
use crate::rng::Rng;
use crate::worker::Params;
use crate::{ENV_FIXED, ENV_ITERS, ENV_WARMUP};
use serde_json::{json, Value};
use std::time::Instant;

const PAIRS_RING: usize = 4096;
const PAIRS_SIZES: usize = 1 << 16;

/// Single thread: free slot i of a 4096-slot ring, allocate a new object into it. Throughput
/// comes from an untimed-per-operation loop (the issue-2 metric); latency from a further
/// `iters / 8` pairs with every 16th pair timed.
pub fn run(p: &Params) -> Value {
    let iters = env_usize(ENV_ITERS).unwrap_or(if p.quick { 10_000_000 } else { 50_000_000 });
    let warmup = env_usize(ENV_WARMUP).unwrap_or(1_000_000);
    let fixed = env_usize(ENV_FIXED).unwrap_or(0);
    // TIERALLOC_BENCH_SCOPE=local|node0|label: the whole run inside a tieralloc placement
    // scope (the cost of the scoped path; tieralloc only); `label`: a local scope labelled
    // "bench" (served by its label's heap).
    let _scope = std::env::var("TIERALLOC_BENCH_SCOPE")
        .ok()
        .map(|v| match v.as_str() {
            "local" => tieralloc::place(tieralloc::Placed::local().expect("local placement")),
            "label" => tieralloc::place_labeled(
                tieralloc::Placed::local().expect("local placement"),
                "bench",
            ),
            _ => tieralloc::place(tieralloc::Placed::node(0).expect("node 0")),
        });
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
