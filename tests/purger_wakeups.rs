//! How often the background purger wakes for a busy program. A busy owner purges what its
//! heap holds by its own collections, and the purger's pass visits a heap that is only
//! `holding` (not `waiting`) once its owner has been quiet for a delay: so while every heap
//! is busy, the purger has nothing to do, and must not run a pass every quarter delay for a
//! heap it would pass over (left open by reviews rev9/rev10, seen again by review rev16:
//! ~60 wake-ups a second with a busy producer and consumer). Counted from the purger
//! thread's voluntary context switches (one per sleep it wakes from), in a child process.

#[path = "common/child.rs"]
mod child;
#[path = "common/rss.rs"]
mod rss;

use rss::{drop_block, is_scenario, new_block, purger_status, run_scenario, sleep_raw, switches};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// Starts the purger (a spike of 64 large blocks and its give-back), lets it settle, and
/// returns its status file's path and its voluntary switches so far.
fn start_the_purger() -> (std::ffi::CString, u64) {
    let v: Vec<usize> = (0..64).map(|_| new_block(256 << 10, 0x21)).collect();
    for p in v {
        drop_block(p, 256 << 10, 0x21);
    }
    sleep_raw(300);
    let status = purger_status();
    let before = switches(&status);
    (status, before)
}

/// One thread, busy for 2 s: every millisecond it allocates and frees a 256 KiB block (a large
/// page, given back to its segment at each free: the heap `holding`, under `WAIT_BYTES`) and
/// a few small blocks (slow paths, so it collects every quarter delay: never quiet). With a
/// 100 ms delay, a purger that looks at it only when it would have been quiet for a delay
/// runs about one cycle a delay, two voluntary switches each (its quarter-delay nap before a
/// pass, and its sleep): 36 in 2 s measured, asserted at most 48 (one cycle a delay, and a
/// fifth more for scheduling). Before, a purger woken every quarter delay for it switched
/// 81 times, and with `anything_waits` fixed but every page given back waking it, 137.
#[test]
fn child_busy_holding() {
    if !is_scenario("busy-holding") {
        return;
    }
    let (status, before) = start_the_purger();
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        rounds += 1;
        let big = new_block(256 << 10, 0x22);
        let small: Vec<usize> = (0..32).map(|_| new_block(512, 0x23)).collect();
        drop_block(big, 256 << 10, 0x22);
        for p in small {
            drop_block(p, 512, 0x23);
        }
        sleep_raw(1);
    }
    let woke = switches(&status) - before;
    eprintln!("purger woke {woke} times in 2 s of a busy holding heap ({rounds} rounds)");
    assert!(
        woke <= 48,
        "the purger woke {woke} times in 2 s for a busy heap it does not visit"
    );
}

#[test]
fn the_purger_sleeps_while_the_only_holding_heap_is_busy() {
    run_scenario(
        "child_busy_holding",
        "busy-holding",
        &[("TIERALLOC_BACKGROUND_PURGE", "1")],
    );
}

/// A program that starts and ends threads all the time (threadlife-style): with the purger
/// on and the main thread running, a thread's end wakes the purger once (its heap's segments
/// go to a pool, which the purger unmaps once they expire), and nothing more is owed to it:
/// the purger's look for the program's last thread (review rev40) can come true only once the
/// main thread is ending or a zombie. 5 threads, each allocating and ending, 500 ms apart,
/// then 1 s quiet; the purger's voluntary switches counted over the whole: 25 measured after,
/// asserted at most 60; before (review rev43), each end set 100 looks 10 ms apart, after its
/// quarter-delay nap each (2 switches a 35 ms), for good while threads end: 190 measured.
#[test]
fn child_thread_churn() {
    if !is_scenario("thread-churn") {
        return;
    }
    let (status, before) = start_the_purger();
    for _ in 0..5 {
        std::thread::spawn(|| {
            let v: Vec<usize> = (0..32).map(|_| new_block(512, 0x24)).collect();
            for p in v {
                drop_block(p, 512, 0x24);
            }
        })
        .join()
        .unwrap();
        sleep_raw(500);
    }
    sleep_raw(1000);
    let woke = switches(&status) - before;
    eprintln!("purger woke {woke} times for 5 thread ends 500 ms apart and 1 s after");
    assert!(woke <= 60, "the purger woke {woke} times for 5 thread ends");
}

#[test]
fn the_purger_is_not_kept_awake_by_threads_that_end() {
    run_scenario(
        "child_thread_churn",
        "thread-churn",
        &[("TIERALLOC_BACKGROUND_PURGE", "1")],
    );
}
