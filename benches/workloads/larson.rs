//! The `larson` workload: server-style churn where each round's threads take over another
//! (dead) thread's objects.
//!
//! Owns: its threads and slot arrays. May touch: the global allocator, the measurement helpers.

use crate::measure::{common, peak_rss, process_cpu_ns, Lat};
use crate::objects::{env_usize, free_obj, new_obj, pack, unpack};
use crate::rng::Rng;
use crate::worker::Params;
use crate::{ENV_ITERS, MIB};
use serde_json::{json, Value};
use std::time::Instant;

/// Larson-style server churn: `threads` threads each work on a slot array, freeing a random
/// slot and allocating a random-size object (16–1024 B) into it. After each round every thread
/// exits and a new thread takes over a *different* thread's array, so objects allocated by one
/// (now dead) thread are freed by another.
pub fn run(p: &Params) -> Value {
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
