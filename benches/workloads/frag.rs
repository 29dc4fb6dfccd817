//! The `frag` workload: fill with small objects, free most, refill with larger ones; measures
//! resident memory over live bytes.
//!
//! Owns: its object array. May touch: the global allocator, the measurement helpers.

use crate::measure::{common, current_rss, peak_rss, Lat};
use crate::objects::{free_obj, new_obj, pack, touch, unpack};
use crate::rng::Rng;
use crate::worker::Params;
use crate::MIB;
use serde_json::{json, Value};
use std::time::Instant;

/// Fragmentation: fill with 16–512 B objects, free 90 % at random, refill the same volume
/// with 2–16 KiB objects (every object's pages written). Live bytes are requested sizes plus
/// the workload's own pointer array.
pub fn run(p: &Params) -> Value {
    let target: usize = if p.quick { 64 << 20 } else { 200 << 20 };
    let mut r = Rng::new(99);
    let cap = target / 200; // expected count is target / 264; refill adds ~2 % more
    let mut objs: Vec<u64> = Vec::with_capacity(cap);
    let mut lat = Lat::new(16);
    let book = cap * 8;
    let mut live = book;
    let mut peak_live = live;
    let mut ops = 0u64;
    let t0 = Instant::now();
    while live < target + book {
        let sz = r.range(16, 512);
        let q = lat.op(|| new_obj(sz));
        touch(q, sz);
        objs.push(pack(q, sz));
        live += sz;
        ops += 1;
    }
    assert_eq!(objs.capacity(), cap, "bookkeeping array grew");
    peak_live = peak_live.max(live);
    let mut busy = t0.elapsed();
    let rss_filled = current_rss();
    let t1 = Instant::now();
    let mut freed = 0usize;
    objs.retain(|&w| {
        if r.next() % 10 != 0 {
            let (q, sz) = unpack(w);
            lat.op(|| free_obj(q, sz));
            freed += sz;
            ops += 1;
            false
        } else {
            true
        }
    });
    live -= freed;
    busy += t1.elapsed();
    let rss_freed = current_rss();
    let t2 = Instant::now();
    let mut refilled = 0usize;
    while refilled < freed {
        let sz = r.range(2048, 16384);
        let q = lat.op(|| new_obj(sz));
        touch(q, sz);
        objs.push(pack(q, sz));
        refilled += sz;
        live += sz;
        ops += 1;
        peak_live = peak_live.max(live);
    }
    busy += t2.elapsed();
    assert_eq!(objs.capacity(), cap, "bookkeeping array grew");
    let rss_refilled = current_rss();
    let hwm = peak_rss();
    for w in objs.drain(..) {
        let (q, sz) = unpack(w);
        free_obj(q, sz);
    }
    let mut m = json!({
        "rss_over_live": hwm as f64 / peak_live as f64,
        "peak_rss_mib": hwm as f64 / MIB,
        "rss_filled_mib": rss_filled as f64 / MIB,
        "rss_after_free_mib": rss_freed as f64 / MIB,
        "rss_refilled_mib": rss_refilled as f64 / MIB,
    });
    common(
        &mut m,
        ops as f64,
        busy.as_secs_f64(),
        &lat,
        peak_live,
        "one alloc or one free",
    );
    m
}
