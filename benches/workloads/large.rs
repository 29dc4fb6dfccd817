//! The `large` workload: a few slots of 64 KiB – 8 MiB blocks replaced at random.
//!
//! Owns: its slots. May touch: the global allocator, the measurement helpers.

use crate::measure::{common, peak_rss, Lat};
use crate::objects::{env_usize, free_obj, new_obj, touch};
use crate::rng::Rng;
use crate::worker::Params;
use crate::{ENV_ITERS, MIB};
use serde_json::{json, Value};
use std::time::Instant;

/// Large allocations: 8 slots; each step frees a random slot and allocates a log-uniform
/// 64 KiB – 8 MiB block into it, then writes one byte per 4 KiB page. Every alloc and free is
/// timed (page touching is not, but it is in the throughput).
pub fn run(p: &Params) -> Value {
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
