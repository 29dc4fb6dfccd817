//! A thread's collection that purges other threads' heaps (`purger::help`, the default
//! configuration) against a signal handler that stops that thread until another one has made
//! progress (a stop-the-world handler: POSIX code that waits in an async-signal-safe way). The
//! handler stops the helping thread wherever the signal finds it; if that is inside the pass,
//! holding another heap's gate, that heap's owner can make no slow-path call until the
//! handler returns, which waits for that very owner: a deadlock, which the child's watchdog
//! turns into exit 3. In a child process: the purge delay is read once at start-up.
//!
//! Broken copy: with the pass run under the caller's signal mask, the child deadlocked in 8
//! runs of 8, in its first or second round (gdb: the helper in the handler, called from
//! `purge_heap`'s `madvise` of the main thread's heap; the main thread in `take_for_owner`).

#[path = "common/child.rs"]
mod child;
#[path = "common/rss.rs"]
mod rss;

use rss::{drop_block, new_block, sleep_raw, MIB};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// Signals the helper's handler has taken (it waits, in it, for `RELEASED` to reach its
/// number).
static ENTERED: AtomicUsize = AtomicUsize::new(0);
/// Stops the handler has been released from.
static RELEASED: AtomicUsize = AtomicUsize::new(0);
/// The main thread's rounds, for the watchdog.
static PROGRESS: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

/// The stop-the-world handler: waits, without any call that is not async-signal-safe, until
/// the main thread releases it.
extern "C" fn stop_here(_: libc::c_int) {
    let me = ENTERED.fetch_add(1, Ordering::SeqCst) + 1;
    while RELEASED.load(Ordering::SeqCst) < me {
        // SAFETY: sched_yield is async-signal-safe and has no preconditions.
        unsafe { libc::sched_yield() };
    }
}

const ROUNDS: usize = 30;

#[test]
fn child_stopped_helper() {
    if !child::is_child() {
        return;
    }
    // SAFETY: a handler that only touches atomics and calls sched_yield.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = stop_here as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    // The watchdog: no round for 3 s is the deadlock.
    std::thread::spawn(|| {
        let mut last = usize::MAX;
        loop {
            sleep_raw(3000);
            let now = PROGRESS.load(Ordering::SeqCst);
            if now == last {
                eprintln!(
                    "deadlock in round {now}: the main thread waits for a heap gate the \
                     stopped helper holds"
                );
                // SAFETY: ends the process at once (the main thread is stuck).
                unsafe { libc::_exit(3) };
            }
            last = now;
        }
    });
    // The helper: light traffic, so its collections run the pass over the main thread's heap.
    let (tx, rx) = std::sync::mpsc::channel();
    let helper = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() }).unwrap();
        let mut blocks: Vec<usize> = Vec::with_capacity(256);
        while !STOP.load(Ordering::Relaxed) {
            for _ in 0..256 {
                blocks.push(new_block(4096, 0x5A));
            }
            for p in blocks.drain(..) {
                drop_block(p, 4096, 0x5A);
            }
        }
    });
    let tid = rx.recv().unwrap();
    let helped = tieralloc::stats().purges_for_others;
    for round in 0..ROUNDS {
        // 64 MiB freed: the main thread's heap waits, and goes quiet (no allocator call) while
        // its slices come due, so that the helper's passes purge them.
        let blocks: Vec<usize> = (0..64).map(|_| new_block(MIB, 0x3C)).collect();
        for p in blocks {
            drop_block(p, MIB, 0x3C);
        }
        sleep_raw(20 + (round % 24) as u64);
        // Stop the helper where it is, and wait until its handler runs.
        // SAFETY: a signal to a thread of this process that is still running.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
        while ENTERED.load(Ordering::SeqCst) <= round {
            std::hint::spin_loop();
        }
        // A slow path of the main thread's heap (a huge block: always the generic path, which
        // takes the heap's gate), then the helper goes on.
        let p = new_block(3 * MIB, 0x77);
        drop_block(p, 3 * MIB, 0x77);
        RELEASED.store(round + 1, Ordering::SeqCst);
        PROGRESS.store(round + 1, Ordering::SeqCst);
    }
    STOP.store(true, Ordering::Relaxed);
    helper.join().unwrap();
    let s = tieralloc::stats();
    println!("{} purges for others", s.purges_for_others - helped);
    // The helper did purge the main thread's heap (a run in which it never did proves
    // nothing).
    assert!(
        s.purges_for_others > helped,
        "no pass purged for another heap"
    );
}

#[test]
fn a_helper_stopped_by_a_signal_holds_no_other_heap() {
    if child::is_child() {
        return;
    }
    let mut cmd = child::this_test("child_stopped_helper");
    cmd.env_remove("TIERALLOC_BACKGROUND_PURGE")
        .env("TIERALLOC_PURGE_DELAY_MS", "20");
    child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
}
