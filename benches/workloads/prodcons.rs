//! The `prodcons` workload: one thread allocates, another frees what it is sent.
//!
//! Owns: its two threads and their channel. May touch: the global allocator, the measurement
//! helpers.

use crate::measure::{common, process_cpu_ns, Lat};
use crate::objects::{env_usize, free_obj, mixed_small_size, new_obj};
use crate::rng::Rng;
use crate::worker::Params;
use crate::ENV_ITERS;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Two threads: one allocates and sends batches of 64 pointers (each object carries its size
/// in its first word), the other frees them. Live bytes = allocated minus freed, published by
/// each side once per batch.
pub fn run(p: &Params) -> Value {
    let n_batches =
        env_usize(ENV_ITERS).unwrap_or(if p.quick { 4_000_000 } else { 20_000_000 }) / 64;
    let (tx, rx) = crossbeam_channel::bounded::<[usize; 64]>(256);
    let freed_bytes = Arc::new(AtomicU64::new(0));
    let mut plat = Lat::new(16);
    let clat = Lat::new(16);
    let c = process_cpu_ns();
    let t = Instant::now();
    let fb = freed_bytes.clone();
    let consumer = std::thread::spawn(move || {
        let mut lat = clat;
        let mut freed = 0u64;
        let mut bytes = 0u64;
        for batch in rx {
            for q in batch {
                let q = q as *mut u8;
                // SAFETY: the producer wrote the object's size into its first word.
                let sz = unsafe { (q as *const usize).read() };
                lat.op(|| free_obj(q, sz));
                bytes += sz as u64;
                freed += 1;
            }
            fb.store(bytes, Ordering::Relaxed);
        }
        (freed, lat)
    });
    let mut r = Rng::new(7);
    let mut produced = 0u64;
    let mut peak_live = 0u64;
    for _ in 0..n_batches {
        let mut batch = [0usize; 64];
        for slot in batch.iter_mut() {
            let sz = mixed_small_size(&mut r);
            let q = plat.op(|| new_obj(sz));
            // SAFETY: every size is at least 8 and blocks are 8-aligned.
            unsafe { (q as *mut usize).write(sz) };
            *slot = q as usize;
            produced += sz as u64;
        }
        tx.send(batch).expect("consumer alive");
        peak_live = peak_live.max(produced.saturating_sub(freed_bytes.load(Ordering::Relaxed)));
    }
    drop(tx);
    let (freed, clat) = consumer.join().expect("consumer thread");
    let ns = t.elapsed().as_nanos() as f64;
    let cpu = process_cpu_ns() - c;
    plat.merge(&clat);
    let mut m = json!({
        "ns_per_obj": ns / freed.max(1) as f64,
        "cpu_ns_per_obj": cpu / freed.max(1) as f64,
        "objects": freed,
    });
    common(
        &mut m,
        freed as f64,
        ns / 1e9,
        &plat,
        peak_live as usize + 256 * 64 * 8,
        "one alloc (producer) or one free (consumer)",
    );
    m
}
