//! The `falseshare` workload: threads hand small objects to each other and write them hard, so
//! an allocator that puts two threads' objects in one cache line shows it in wall time.
//!
//! Owns: its threads and their channels. May touch: the global allocator, the measurement
//! helpers.

use crate::measure::{common, Lat};
use crate::objects::{env_usize, free_obj, new_obj};
use crate::worker::Params;
use crate::ENV_ITERS;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// False sharing (cache-scratch style, with a hand-off): `threads` threads; each round every
/// thread allocates a small object and hands it to the next thread, which writes it `WRITES`
/// times and frees it (a remote free); then each thread allocates, writes `WRITES` times and
/// frees `LOCAL` small objects of its own. An allocator that puts two threads' hot objects in
/// one cache line (for example by reusing a block another thread freed) makes the writes bounce
/// the line between cores. Metric: wall time.
pub fn run(p: &Params) -> Value {
    const SIZE: usize = 8;
    const WRITES: u64 = 1000;
    const LOCAL: usize = 4;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2);
    let rounds = env_usize(ENV_ITERS).unwrap_or(if p.quick { 20_000 } else { 80_000 });
    let mut txs = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..threads {
        let (tx, rx) = crossbeam_channel::bounded::<usize>(1);
        txs.push(tx);
        rxs.push(Some(rx));
    }
    let barrier = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let tx = txs[(t + 1) % threads].clone();
            let rx = rxs[t].take().expect("rx");
            let barrier = barrier.clone();
            let mut lat = Lat::new(16);
            std::thread::spawn(move || {
                let write = |q: *mut u8| {
                    for i in 0..WRITES {
                        // SAFETY: q holds SIZE = 8 bytes, 8-aligned.
                        unsafe { std::ptr::write_volatile(q as *mut u64, i) };
                    }
                };
                barrier.wait();
                for _ in 0..rounds {
                    let mine = lat.op(|| new_obj(SIZE));
                    // SAFETY: as above.
                    unsafe { (mine as *mut u64).write(0) };
                    tx.send(mine as usize).expect("next thread alive");
                    let got = rx.recv().expect("previous thread alive") as *mut u8;
                    write(got);
                    lat.op(|| free_obj(got, SIZE));
                    for _ in 0..LOCAL {
                        let q = lat.op(|| new_obj(SIZE));
                        write(q);
                        lat.op(|| free_obj(q, SIZE));
                    }
                }
                lat
            })
        })
        .collect();
    drop(txs);
    barrier.wait();
    let t0 = Instant::now();
    let mut lat = Lat::new(16);
    for h in handles {
        lat.merge(&h.join().expect("falseshare thread"));
    }
    let ns = t0.elapsed().as_nanos() as f64;
    let objects = (rounds * threads * (1 + LOCAL)) as f64;
    let mut m = json!({
        "wall_ms": ns / 1e6,
        "ns_per_object": ns / objects,
        "threads": threads,
        "rounds": rounds,
        "writes_per_object": WRITES,
    });
    common(
        &mut m,
        objects,
        ns / 1e9,
        &lat,
        threads * 2 * SIZE,
        "one alloc or one free",
    );
    m
}
