//! Tests of a collection's booking of its time (`tick`): `Heap::collected_ms`, which other
//! threads' passes and the purger's sleep read as when the owner will have been quiet for a
//! delay. May touch everything of `heap::thread` (a child module).

use super::alloc::alloc_bin;
use super::free::free;
use super::tick::collect_now;
use super::tls::own;
use crate::heap::size_class::bin_of;
use crate::sync::Ordering;
use crate::sys::os;

/// `collect_now` books the collection at the time it ran, not at the time a delay ahead it
/// collects with (review rev15: the heap looked busy to passes for two delays after).
#[test]
fn collect_now_books_the_time_it_ran() {
    std::thread::spawn(|| {
        // An active heap (a first allocation), which the collection runs on.
        // SAFETY: a bin of a small size; the block is freed once.
        unsafe {
            let p = alloc_bin(bin_of(64));
            assert!(!p.is_null());
            free(p);
        }
        collect_now();
        let at = own().collected_ms.load(Ordering::Relaxed);
        assert_ne!(at, 0, "no collection ran");
        assert!(
            at <= os::now_ms(),
            "collected at {at}, now {}",
            os::now_ms()
        );
    })
    .join()
    .unwrap();
}

/// While `collect_now` runs, the heap's `collected_ms` is what other threads read to tell
/// when its owner will have been quiet for a delay (`purger::anything_waits`, whose sleep
/// until then no wake-up shortens, and `free::free_delayed`'s `notify_by`): it must never
/// name a time ahead of the clock. It named the time a delay ahead that `collect_now`
/// collects with until the collection was over (review rev17), so a purger that looked then
/// slept a whole delay past the owner's quiet time, and a delayed free then left it asleep.
#[test]
fn collect_now_never_shows_a_collection_time_ahead_of_the_clock() {
    use std::sync::atomic::{AtomicBool, AtomicU64 as StdU64};
    use std::sync::{Arc, Barrier};
    let done = Arc::new(AtomicBool::new(false));
    let lead = Arc::new(StdU64::new(0));
    let ready = Arc::new(Barrier::new(2));
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let owner = {
        let (done, ready) = (done.clone(), ready.clone());
        std::thread::spawn(move || {
            // An active heap with pages to walk.
            // SAFETY: a bin of a small size; every block is freed once, below.
            let blocks: Vec<usize> = (0..4096)
                .map(|_| unsafe { alloc_bin(bin_of(64)) } as usize)
                .collect();
            tx.send(&own().collected_ms as *const _ as usize).unwrap();
            ready.wait();
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(300) {
                collect_now();
            }
            done.store(true, Ordering::Relaxed);
            ready.wait();
            for p in blocks {
                // SAFETY: our block, freed once.
                unsafe { free(p as *mut u8) };
            }
        })
    };
    let at = rx.recv().unwrap() as *const crate::sync::AtomicU64;
    let sampler = {
        let (done, lead, ready) = (done.clone(), lead.clone(), ready.clone());
        let at = at as usize;
        std::thread::spawn(move || {
            let at = at as *const crate::sync::AtomicU64;
            ready.wait();
            while !done.load(Ordering::Relaxed) {
                // SAFETY: the owner's heap lives until both pass the second barrier.
                let c = unsafe { (*at).load(Ordering::Relaxed) };
                let now = os::now_ms();
                lead.fetch_max(c.saturating_sub(now), Ordering::Relaxed);
            }
            ready.wait();
        })
    };
    owner.join().unwrap();
    sampler.join().unwrap();
    let lead = lead.load(Ordering::Relaxed);
    assert!(
        lead <= 1,
        "collected_ms read {lead} ms ahead of the clock while collect_now ran"
    );
}
