//! The background purger's sleep and wake-up (`heap::wake`, `Sleep`): a sleeper that looks
//! for work after saying it is asleep, and wakers that publish work and then wake it. No
//! wake-up is lost: a lost one leaves the sleeper waiting for ever (loom's futex is a yield
//! loop), which loom reports as a model that does not end.

use super::*;
use loom::sync::atomic::{AtomicU32, AtomicU64};
use tieralloc::wake::{Idle, Sleep};

const RUNNING: u8 = 2;
const ASLEEP: u8 = 4;

/// The purger's `Sleep` over these words.
fn sleep_on<'a>(state: &'a AtomicU8, word: &'a AtomicU32, until: &'a AtomicU64) -> Sleep<'a> {
    Sleep {
        state,
        word,
        asleep: ASLEEP,
        running: RUNNING,
        until,
    }
}

/// The purger's loop against `wakers` threads that each publish one unit of work (a heap
/// turning `holding`, a segment pooled) and wake it: the sleeper sleeps until it has seen
/// every unit, each pass taking what it finds.
fn sleeper_sees_every_unit(wakers: usize, yield_first: bool) {
    sleeper_sees_every_unit_with(wakers, yield_first, false)
}

/// As [`sleeper_sees_every_unit`]; with `timed`, the sleeper sleeps with a timeout (the
/// purger's sleep until a holding heap's next due step, `Sleep::sleep_unless_for`), which
/// loom's futex always lets run out: the sleeper then ends its sleep itself, racing the
/// wakers' compare-exchange.
fn sleeper_sees_every_unit_with(wakers: usize, yield_first: bool, timed: bool) {
    let state = Arc::new(AtomicU8::new(RUNNING));
    let word = Arc::new(AtomicU32::new(0));
    let until = Arc::new(AtomicU64::new(0));
    let work = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..wakers)
        .map(|_| {
            let (state, word, until, work) =
                (state.clone(), word.clone(), until.clone(), work.clone());
            thread::spawn(move || {
                work.fetch_add(1, Ordering::Relaxed);
                sleep_on(&state, &word, &until).wake();
            })
        })
        .collect();
    if yield_first {
        thread::yield_now();
    }
    let sleep = sleep_on(&state, &word, &until);
    let mut seen = 0;
    while seen < wakers {
        if timed {
            sleep.sleep_unless_for(|| {
                if work.load(Ordering::Relaxed) > seen {
                    Idle::Work
                } else {
                    Idle::For { at: 5 }
                }
            });
        } else {
            sleep.sleep_unless(|| work.load(Ordering::Relaxed) > seen);
        }
        assert_eq!(state.load(Ordering::Relaxed), RUNNING, "woke still asleep");
        // The pass: whatever has been published by now.
        seen = work.load(Ordering::Relaxed);
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_wake_after_published_work_is_never_lost() {
    check(3, |yield_first| sleeper_sees_every_unit(1, yield_first));
}

/// The timed sleep (review rev12): a sleep that runs out ends with the state `running`
/// whether or not a waker switched it meanwhile, and a waker's work is still seen.
#[test]
fn a_timed_sleep_ends_running_and_sees_the_work() {
    check(3, |yield_first| {
        sleeper_sees_every_unit_with(1, yield_first, true)
    });
}

/// A waker whose work is due no sooner than `t` leaves the sleeper asleep only if its sleep
/// ends by itself by then (`Sleep::wake_unless_due_by`, the purger's `notify_by`: a busy
/// owner's page given back does not wake a purger that looks at its heap before a pass could
/// visit it anyway). The sleeper's published end (`until`) starts at 1, as a sleep of an
/// earlier cycle that ended early would have left it: its reset to 0 ahead of the fence is
/// what keeps a waker from reading that stale end and skipping the wake-up while the look it
/// raced misses the work (loom finds that interleaving with the reset taken out).
fn a_skipped_wake_is_due_by_the_work(t: u64, yield_first: bool) {
    const AT: u64 = 10;
    let state = Arc::new(AtomicU8::new(RUNNING));
    let word = Arc::new(AtomicU32::new(0));
    let until = Arc::new(AtomicU64::new(1));
    let work = Arc::new(AtomicUsize::new(0));
    let waker = {
        let (state, word, until, work) = (state.clone(), word.clone(), until.clone(), work.clone());
        thread::spawn(move || {
            work.store(1, Ordering::Relaxed);
            sleep_on(&state, &word, &until).wake_unless_due_by(t)
        })
    };
    if yield_first {
        thread::yield_now();
    }
    let sleep = sleep_on(&state, &word, &until);
    let mut saw = false;
    sleep.sleep_unless_for(|| {
        saw = work.load(Ordering::Relaxed) > 0;
        if saw {
            Idle::Work
        } else {
            Idle::For { at: AT }
        }
    });
    let skipped = waker.join().unwrap();
    // A sleep that ends by itself (loom's timed wait always runs out) before a waker that
    // went on looks at the state is the plain handshake's case: the next look sees the work.
    // A waker that left the sleeper alone must have done so only for a sleep that ends by
    // its work's time, or after a look that saw it.
    assert!(
        !skipped || saw || AT <= t,
        "the look missed the work and the waker left a sleep past its time alone"
    );
}

#[test]
fn a_wake_left_out_only_when_the_sleep_ends_by_the_work() {
    check(3, |yield_first| {
        a_skipped_wake_is_due_by_the_work(5, yield_first)
    });
    check(3, |yield_first| {
        a_skipped_wake_is_due_by_the_work(20, yield_first)
    });
}
