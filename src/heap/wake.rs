//! A sleeper that looks for work and a waker that has just published some: the background
//! purger's sleep and wake-up, a Dekker handshake over a state byte, with a futex on a word
//! for the wait itself.
//!
//! Owns: [`Sleep`] (the protocol; the purger owns the state byte and the word it runs on).
//! May touch: `sync` (atomics, fence, loom's yield under `--cfg loom`), and the futex system
//! call (not under loom, where the wait is a yield and the wake-up nothing). Built under
//! `--cfg loom` for tests/loom/wake.rs, which checks that no wake-up is lost.
//!
//! The sleeper stores `asleep`, fences, then looks for work; a waker stores its work, fences,
//! then loads the state. Of two stores each followed by a sequentially consistent fence, at
//! least one is seen by the other side's load: the sleeper sees the work, or the waker sees
//! `asleep`, switches it to `running` and wakes it. The wait is a futex on the word, read
//! before the state is looked at again: a waker that switched the state after that look has
//! bumped the word before its `FUTEX_WAKE`, so the wait either returns at once (the word
//! changed) or is woken.

use crate::sync::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// The handshake over a state byte (`asleep` while the sleeper waits, `running` once a waker
/// or the sleeper itself ends the wait) and a futex word.
pub struct Sleep<'a> {
    /// The sleeper's state.
    pub state: &'a AtomicU8,
    /// The futex word the sleeper waits on.
    pub word: &'a AtomicU32,
    /// The state while the sleeper waits.
    pub asleep: u8,
    /// The state once the wait is over.
    pub running: u8,
    /// When (ms, the caller's clock) the sleeper's current sleep ends by itself: `u64::MAX`
    /// for an untimed one, 0 while it looks for work (stored before its fence), so that a
    /// waker whose work is not due before then may leave it asleep
    /// ([`wake_unless_due_by`](Sleep::wake_unless_due_by)).
    pub until: &'a AtomicU64,
}

/// What the sleeper's look for work found ([`Sleep::sleep_unless_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// Work now: no sleep.
    Work,
    /// No work now, but some will be due at `at` (ms, the caller's clock, `os::now_ms`'s
    /// coarse monotonic one): a sleep that a waker ends sooner, or that ends by itself then.
    For {
        /// When it ends by itself (published in [`Sleep::until`]): an absolute deadline, so
        /// that a wait that returns early (a wake-up meant for an earlier sleep) waits only
        /// for what is left (review rev17: it waited its whole timeout again).
        at: u64,
    },
    /// No work until a waker says so.
    Forever,
}

impl Sleep<'_> {
    /// The sleeper: waits until a waker says there is work, unless `work()` (called once,
    /// after the sleeper has said it is asleep) finds some now. Returns with the state
    /// `running`. (The untimed sleep that tests/loom/wake.rs models; the purger uses
    /// [`sleep_unless_for`](Sleep::sleep_unless_for), whose untimed path is this.)
    #[cfg_attr(not(loom), allow(dead_code))]
    pub fn sleep_unless(&self, work: impl FnOnce() -> bool) {
        self.sleep_unless_for(|| if work() { Idle::Work } else { Idle::Forever })
    }

    /// As [`sleep_unless`](Sleep::sleep_unless), for a sleeper whose work may come due by
    /// itself: when `work()` says [`Idle::For`], the sleep also ends at that time (the
    /// sleeper then switches the state to `running` itself, as a waker would). Returns with
    /// the state `running`.
    ///
    /// The end of a sleep is published in `until` after the look (0 before it, ahead of the
    /// fence): a waker that reads a time at or before its own work's is sure that the look
    /// it raced saw its work, or that the sleep ends by then and the next look (whose 0 it
    /// did not read, so whose fence came after its own) sees it.
    pub fn sleep_unless_for(&self, work: impl FnOnce() -> Idle) {
        self.until.store(0, Ordering::Relaxed);
        self.state.store(self.asleep, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let deadline = match work() {
            Idle::Work => {
                // A waker may have set `running` already; either way the sleeper runs.
                self.state.store(self.running, Ordering::Relaxed);
                return;
            }
            Idle::For { at } => {
                self.until.store(at, Ordering::Relaxed);
                Some(at)
            }
            Idle::Forever => {
                self.until.store(u64::MAX, Ordering::Relaxed);
                None
            }
        };
        loop {
            let seq = self.word.load(Ordering::Acquire);
            if self.state.load(Ordering::Acquire) != self.asleep {
                return;
            }
            if futex_wait(self.word, seq, deadline) {
                // Timed out: the sleeper ends its own sleep, unless a waker just did.
                let _ = self.state.compare_exchange(
                    self.asleep,
                    self.running,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                return;
            }
        }
    }

    /// The waker, after it has stored work that is not due before `t` (the caller's clock):
    /// wakes the sleeper unless its sleep ends by itself by then (`until`, 0 while it looks:
    /// then as [`wake`](Sleep::wake)). A fence and a load more than `wake` when it wakes.
    /// Returns whether it left the sleeper alone.
    pub fn wake_unless_due_by(&self, t: u64) -> bool {
        fence(Ordering::SeqCst);
        let until = self.until.load(Ordering::Relaxed);
        if until != 0 && until <= t {
            return true;
        }
        self.wake();
        false
    }

    /// The waker, after it has stored its work: wakes the sleeper if it sleeps. A fence and a
    /// load; when the sleeper sleeps, a compare-exchange, an add and `FUTEX_WAKE`. No
    /// allocation, no lock.
    pub fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.state.load(Ordering::Relaxed) == self.asleep
            && self
                .state
                .compare_exchange(
                    self.asleep,
                    self.running,
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.word.fetch_add(1, Ordering::Release);
            futex_wake(self.word);
        }
    }
}

/// Waits while `word` holds `seq` (or until a signal, or spuriously), at most until
/// `deadline` (ms on `os::now_ms`'s clock, `CLOCK_MONOTONIC_COARSE`) if given. Returns whether
/// the wait timed out.
///
/// The deadline is absolute (`FUTEX_WAIT_BITSET` on `CLOCK_MONOTONIC`), so a caller that
/// waits again after an early return waits only for what is left. The coarse clock lags the
/// precise one by up to its resolution, so the wait ends that much after `deadline` on the
/// precise clock: by then the caller's clock reads at least `deadline`, and it does not wake
/// a few times early to find its work not yet due.
#[cfg(not(loom))]
fn futex_wait(word: &AtomicU32, seq: u32, deadline: Option<u64>) -> bool {
    let ts = deadline.map(|at| {
        let mut res = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `res` is a valid, writable timespec on our stack.
        if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
            res.tv_nsec = 10_000_000;
        }
        let ns = (at % 1000) * 1_000_000 + res.tv_nsec as u64;
        libc::timespec {
            tv_sec: (at / 1000 + res.tv_sec as u64 + ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        }
    });
    let tsp = ts
        .as_ref()
        .map_or(core::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: a futex wait on a word of ours, private to the process, with an absolute
    // `CLOCK_MONOTONIC` deadline (a valid timespec) or none, matching any wake-up's bits; it
    // returns at once if the word is no longer `seq`, and on a signal.
    let r = if crate::sys::fault::fails(crate::sys::fault::Kind::Futex) {
        // An injected early return (tests only), as on a signal: errno EINTR.
        -1
    } else {
        // SAFETY: as above.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG,
                seq,
                tsp,
                core::ptr::null::<u32>(),
                libc::FUTEX_BITSET_MATCH_ANY,
            )
        }
    };
    // SAFETY: the calling thread's errno location, always valid.
    r != 0 && deadline.is_some() && unsafe { *libc::__errno_location() } == libc::ETIMEDOUT
}

/// Under loom: a timed wait times out (after a yield, if the word still holds `seq`); an
/// untimed one waits, yielding, until the word no longer holds `seq`, as `FUTEX_WAIT` does
/// (loom's scheduler lets the others run). It never returns spuriously: a yield that returned
/// at once, the caller's loop then looking at the state again, would hide a wait entered on
/// a stale state (review rev31: `word`'s acquire in `sleep_unless_for`, or the waker's
/// release of it, weakened to relaxed, was caught by no model). A lost wake-up leaves the
/// sleeper waiting for ever, which loom reports as a model that does not end. The load is
/// relaxed: the kernel's compare orders nothing for the caller.
#[cfg(loom)]
fn futex_wait(word: &AtomicU32, seq: u32, deadline: Option<u64>) -> bool {
    if deadline.is_some() {
        if word.load(Ordering::Relaxed) == seq {
            loom::thread::yield_now();
        }
        return true;
    }
    while word.load(Ordering::Relaxed) == seq {
        loom::thread::yield_now();
    }
    false
}

/// Wakes one waiter on `word`.
#[cfg(not(loom))]
fn futex_wake(word: &AtomicU32) {
    // SAFETY: a futex wake of a word of ours; wakes at most one waiter.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        )
    };
}

/// Under loom: nothing (the waiter's yield loop looks at the word).
#[cfg(loom)]
fn futex_wake(_: &AtomicU32) {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    /// Review rev17's risk: a waker that switched the state for one sleep and stalled before
    /// its `FUTEX_WAKE` wakes the next sleep early, with the state still `asleep`. That sleep
    /// must still end when it said (`until`), not a whole timeout after each stray wake-up.
    #[test]
    fn stray_wake_ups_do_not_put_off_the_end_of_a_timed_sleep() {
        let state = AtomicU8::new(0);
        let word = AtomicU32::new(0);
        let until = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        let sleep = Sleep {
            state: &state,
            word: &word,
            asleep: 1,
            running: 2,
            until: &until,
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                sleep.sleep_unless_for(|| Idle::For {
                    at: crate::sys::os::now_ms() + 300,
                });
                done.store(true, Ordering::SeqCst);
            });
            while until.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Stray wake-ups every 50 ms for 3 s (ten times the sleep): the state stays
            // `asleep`, so each sends the sleeper back to its wait.
            let end = Instant::now() + Duration::from_millis(3000);
            let mut strays = 0;
            while Instant::now() < end && !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                word.fetch_add(1, Ordering::Release);
                futex_wake(&word);
                strays += 1;
            }
            assert!(
                done.load(Ordering::SeqCst),
                "a 300 ms sleep still waited after {strays} stray wake-ups over 3 s"
            );
            assert_eq!(state.load(Ordering::SeqCst), 2, "the sleep ended itself");
        });
    }
}
