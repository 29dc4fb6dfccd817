//! The `churn` workload: rounds of short-lived threads whose leftovers the main thread frees
//! after they exit.
//!
//! Owns: its threads and their returned objects. May touch: the global allocator, the
//! measurement helpers.

use crate::measure::{common, current_rss, Lat};
use crate::objects::{env_usize, free_obj, new_obj, pack, unpack};
use crate::rng::Rng;
use crate::worker::Params;
use crate::{ENV_ITERS, MIB};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Thread churn: `rounds` rounds of 4 short-lived threads. Each thread allocates 1000 objects
/// of 16 B – 1 KiB, frees three quarters of them and returns the rest; the main thread frees
/// those while the next round runs (frees of a dead thread's memory). Metrics: wall µs per
/// thread, RSS at the end (everything freed, threads gone).
pub fn run(p: &Params) -> Value {
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
