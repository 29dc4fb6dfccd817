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

use crate::sync::{fence, AtomicU32, AtomicU8, Ordering};

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
}

impl Sleep<'_> {
    /// The sleeper: waits until a waker says there is work, unless `work()` (called once,
    /// after the sleeper has said it is asleep) finds some now. Returns with the state
    /// `running`.
    pub fn sleep_unless(&self, work: impl FnOnce() -> bool) {
        self.state.store(self.asleep, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if work() {
            // A waker may have set `running` already; either way the sleeper runs.
            self.state.store(self.running, Ordering::Relaxed);
            return;
        }
        loop {
            let seq = self.word.load(Ordering::Acquire);
            if self.state.load(Ordering::Acquire) != self.asleep {
                return;
            }
            futex_wait(self.word, seq);
        }
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

/// Waits while `word` holds `seq` (or until a signal, or spuriously).
#[cfg(not(loom))]
fn futex_wait(word: &AtomicU32, seq: u32) {
    // SAFETY: a futex wait on a word of ours, private to the process, with no timeout; it
    // returns at once if the word is no longer `seq`, and on a signal.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seq,
            core::ptr::null::<libc::timespec>(),
        )
    };
}

/// Under loom: a yield (a spurious wake-up, as the real wait may have), so that the caller's
/// loop looks again.
#[cfg(loom)]
fn futex_wait(word: &AtomicU32, seq: u32) {
    if word.load(Ordering::Acquire) == seq {
        loom::thread::yield_now();
    }
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
