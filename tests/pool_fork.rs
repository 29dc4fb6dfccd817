//! Pool and fork: a fork while other threads push to and pop from a pool's shared stores
//! leaves the child a pool it can use. Review rev33: the stores were `crossbeam_queue::SegQueue`s,
//! whose push claims its slot and writes it later; a fork between the two left the child a
//! slot that its pop waited on forever (and a push that claimed a block's last slot left later
//! pushes waiting for the next block).
//!
//! The window is a few instructions plus the object's copy into the slot, so the objects are
//! 16 KiB arrays (the copy is the longest step) and the test forks many times while two
//! threads pass objects through the stores (no thread cache: every get pops a store, every
//! return pushes one). Each child takes every idle object (so it pops every slot), gives them
//! back and exits; a child that does not finish within 20 s is killed and the test fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tieralloc::Pool;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

const OBJECT: usize = 16 * 1024;
const FORKS: usize = 400;

/// Forks; the child runs `body` (see `child::fork_and_wait`); a child that hangs is killed
/// after 20 s.
fn in_child(body: impl FnOnce() -> i32) -> Result<i32, String> {
    child::fork_and_wait(Duration::from_secs(20), body)
}

#[test]
fn a_fork_during_shared_store_pushes_and_pops_leaves_the_child_a_usable_pool() {
    let pool = Arc::new(
        Pool::builder(|| [0u8; OBJECT])
            .max_idle(64)
            .thread_cache(0)
            .build(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (pool, stop) = (pool.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let a = pool.get();
                    let b = pool.get();
                    drop(a);
                    drop(b);
                }
            })
        })
        .collect();
    let mut failed = None;
    for i in 0..FORKS {
        let r = in_child(|| {
            let idle = pool.stats().idle as usize;
            // Every idle object, and one more (a new one): every slot of every store popped.
            let held: Vec<_> = (0..=idle).map(|_| pool.get()).collect();
            drop(held);
            let s = pool.stats();
            i32::from(s.idle as usize > pool.max_idle())
        });
        if r != Ok(0) {
            failed = Some((i, r));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    if let Some((i, r)) = failed {
        panic!("fork {} of {FORKS}: {r:?}", i + 1);
    }
}
