//! The background purger's sleep and wake-up (`heap::wake`, `Sleep`): a sleeper that looks
//! for work after saying it is asleep, and wakers that publish work and then wake it. No
//! wake-up is lost: a lost one leaves the sleeper waiting for ever (loom's futex is a yield
//! loop), which loom reports as a model that does not end.

use super::*;
use loom::sync::atomic::AtomicU32;
use tieralloc::wake::{Idle, Sleep};

const RUNNING: u8 = 2;
const ASLEEP: u8 = 4;

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
    let work = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..wakers)
        .map(|_| {
            let (state, word, work) = (state.clone(), word.clone(), work.clone());
            thread::spawn(move || {
                work.fetch_add(1, Ordering::Relaxed);
                Sleep {
                    state: &state,
                    word: &word,
                    asleep: ASLEEP,
                    running: RUNNING,
                }
                .wake();
            })
        })
        .collect();
    if yield_first {
        thread::yield_now();
    }
    let sleep = Sleep {
        state: &state,
        word: &word,
        asleep: ASLEEP,
        running: RUNNING,
    };
    let mut seen = 0;
    while seen < wakers {
        if timed {
            sleep.sleep_unless_for(|| {
                if work.load(Ordering::Relaxed) > seen {
                    Idle::Work
                } else {
                    Idle::For(5)
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
