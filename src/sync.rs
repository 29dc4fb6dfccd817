//! Atomics, `UnsafeCell` and the one spin lock, from `std` normally and from `loom` under
//! `--cfg loom`; and the fork-aware one-time steps built on them.
//!
//! Owns: re-exports, [`UnsafeCell`] and [`SpinLock`] (public for the loom models, which take the
//! fork handlers' locks; the module is private outside `--cfg loom`), and outside loom the
//! one-time steps a fork child can take over (`once_begin`, `ForkOnceCell`, review rev29) and
//! the registration of fork handlers once (`register_once`). May touch: nothing in the crate
//! (the bottom layer: `std`, `core`, `loom`, and `libc` for `getpid`, `pthread_atfork` and
//! `sched_yield`). Every lock-free structure in the
//! crate takes its atomics from here, and the plain memory those structures publish (the free-list
//! links, list heads guarded by a lock) sits in an [`UnsafeCell`] from here, so the loom model
//! checks in `tests/loom/` exercise the same code that runs in the allocator and see every access
//! to shared memory, not only the atomic ones.

// Under loom only the modelled cores are built, which need some of these.
#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
    Ordering,
};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
    Ordering,
};

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::fence;
#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::fence;

/// `core::cell::UnsafeCell` with loom's interface: the value is reached only inside
/// [`with`](UnsafeCell::with) (to read) and [`with_mut`](UnsafeCell::with_mut) (to write), so
/// under `--cfg loom`, where this is `loom::cell::UnsafeCell`, every access is checked against
/// the happens-before order the atomics set up. Here both are a plain `get()`: the same
/// layout (`repr(transparent)`) and the same machine code as the bare cell.
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// A cell holding `v`.
    #[inline(always)]
    pub(crate) const fn new(v: T) -> Self {
        UnsafeCell(core::cell::UnsafeCell::new(v))
    }

    /// Calls `f` with a pointer to read the value through.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a pointer to write the value through.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Spin-wait hint (a loom yield under the model checker, so spinning threads let others run).
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// Spins waited before [`backoff`] yields the CPU.
pub(crate) const SPINS_BEFORE_YIELD: u32 = 64;

/// One step of a wait for another thread (`spins` counts the steps, from 0): a spin-wait hint
/// for the first [`SPINS_BEFORE_YIELD`] steps, then `sched_yield` (a loom yield under the
/// model checker), so that a waiter does not keep the CPU from the thread it waits for.
/// Returns whether it yielded.
#[inline]
pub(crate) fn backoff(spins: &mut u32) -> bool {
    *spins = spins.saturating_add(1);
    if *spins > SPINS_BEFORE_YIELD {
        yield_now();
        true
    } else {
        spin_hint();
        false
    }
}

#[cfg(not(loom))]
/// A one-time initialisation's state word ([`once_begin`]): not started.
pub(crate) const ONCE_UNINIT: usize = 0;
#[cfg(not(loom))]
/// A one-time initialisation's state word: done (published with `Release` by its runner).
pub(crate) const ONCE_DONE: usize = 1;

#[cfg(not(loom))]
/// What [`once_begin`] tells its caller to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum OnceStep {
    /// It is done: use what it made.
    Done,
    /// Run it now, then store [`ONCE_DONE`] (`Release`). `again`: a thread of the parent
    /// process had begun it when this process was forked off, so what it made may be half
    /// written.
    Run { again: bool },
    /// It is running on this process's runner, and `reentered` said that is the caller.
    Reentered,
}

#[cfg(not(loom))]
/// The state word a runner in this process stores: its pid, and bit 1 (so neither
/// [`ONCE_UNINIT`] nor [`ONCE_DONE`]).
fn running_here() -> usize {
    // SAFETY: getpid has no preconditions.
    ((unsafe { libc::getpid() } as usize) << 2) | 2
}

#[cfg(not(loom))]
/// Begins or waits out the one-time initialisation whose state word is `state`: the first
/// caller becomes its runner ([`OnceStep::Run`]); the others wait until it is done (or return
/// [`OnceStep::Reentered`] if `reentered()` says the caller is the runner itself). The word
/// names the runner's process, so that a fork child whose parent was running it (the
/// runner's thread is not in the child, and would never finish) does not wait forever: its
/// first caller runs it again (review rev29: a fork during another thread's first allocator
/// call left the child spinning in `init_once`, in discovery or in making the thread key).
/// Only until the word is done: one system call (`getpid`) per call before that.
pub(crate) fn once_begin(state: &AtomicUsize, reentered: impl Fn() -> bool) -> OnceStep {
    let mut here = 0;
    loop {
        let s = state.load(Ordering::Acquire);
        if s == ONCE_DONE {
            return OnceStep::Done;
        }
        if here == 0 {
            here = running_here();
        }
        if s == here {
            if reentered() {
                return OnceStep::Reentered;
            }
            spin_hint();
            continue;
        }
        // Not begun, or begun by a thread of the process this one was forked from.
        if state
            .compare_exchange(s, here, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return OnceStep::Run {
                again: s != ONCE_UNINIT,
            };
        }
    }
}

/// A value made once, on first use, by [`once_begin`]'s rules (std's `OnceLock` would leave a
/// fork child waiting forever for a thread of its parent's that was making it): in a fork
/// child whose parent was making it, the first caller makes it again (the half-made one is
/// leaked). `make` must not panic (a panic would leave the waiters waiting).
#[cfg(not(loom))]
pub(crate) struct ForkOnceCell<T> {
    state: AtomicUsize,
    value: core::cell::UnsafeCell<core::mem::MaybeUninit<T>>,
}

// SAFETY: the value is written once, by the one runner, before `state` is published done
// (release), and only read after (acquire); `T: Send + Sync` as for std's `OnceLock`.
#[cfg(not(loom))]
unsafe impl<T: Send + Sync> Sync for ForkOnceCell<T> {}

#[cfg(not(loom))]
impl<T> ForkOnceCell<T> {
    /// An empty cell.
    pub(crate) const fn new() -> Self {
        ForkOnceCell {
            state: AtomicUsize::new(ONCE_UNINIT),
            value: core::cell::UnsafeCell::new(core::mem::MaybeUninit::uninit()),
        }
    }

    /// The value, made by `make` on first use.
    pub(crate) fn get_or_init(&self, make: impl FnOnce() -> T) -> &T {
        if self.state.load(Ordering::Acquire) != ONCE_DONE {
            if let OnceStep::Run { .. } = once_begin(&self.state, || false) {
                let v = make();
                // SAFETY: we are the runner (once_begin): nobody reads the value until we
                // publish done; a parent's half-made value is overwritten, not dropped.
                unsafe { (*self.value.get()).write(v) };
                self.state.store(ONCE_DONE, Ordering::Release);
            }
        }
        // SAFETY: done (the acquire load in once_begin or above): written and never again.
        unsafe { (*self.value.get()).assume_init_ref() }
    }
}

#[cfg(not(loom))]
pub(crate) const NOT_REGISTERED: u8 = 0;
#[cfg(not(loom))]
pub(crate) const REGISTERING: u8 = 1;
#[cfg(not(loom))]
pub(crate) const REGISTERED: u8 = 2;

#[cfg(not(loom))]
/// Registers `prepare`, `parent` and `child` with `pthread_atfork` unless `state` says they
/// are: a second registration would run them twice at every fork (a prepare handler taking
/// its locks twice would wait for itself). `prepare` must store [`REGISTERED`] in `state`:
/// `pthread_atfork` and `fork` exclude each other (glibc's `atfork_lock`), so a fork child
/// that finds the word still `REGISTERING` (its parent's thread was in here at the fork) knows
/// the registration came after the fork, and makes it.
pub(crate) fn register_once(
    state: &AtomicU8,
    prepare: extern "C" fn(),
    parent: extern "C" fn(),
    child: extern "C" fn(),
) {
    if state.load(Ordering::Relaxed) == REGISTERED {
        return;
    }
    state.store(REGISTERING, Ordering::Relaxed);
    // SAFETY: three extern "C" functions with no preconditions.
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
    }
    state.store(REGISTERED, Ordering::Relaxed);
}

/// A test-and-test-and-set lock for the allocator's cold paths (segment pools, the abandoned
/// list, the heap registry). It never allocates, which `std::sync::Mutex` does not promise on
/// every platform, and it is never taken on an allocation or free fast path.
pub struct SpinLock {
    locked: AtomicBool,
}

impl SpinLock {
    /// A free lock.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
        }
    }

    /// A free lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
        }
    }

    /// Takes the lock, spinning (and after a while yielding the CPU) until it is free.
    pub fn lock(&self) -> SpinGuard<'_> {
        let mut spins = 0u32;
        loop {
            if self.acquire() {
                return SpinGuard { lock: self };
            }
            backoff(&mut spins);
        }
    }

    /// One try at the lock: a relaxed read first, so that waiters spin on a shared line and
    /// only a free lock is asked for with a compare-exchange. Whether it was taken.
    #[inline]
    fn acquire(&self) -> bool {
        !self.locked.load(Ordering::Relaxed)
            && self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Takes the lock as [`lock`](SpinLock::lock) does, or returns `None` when it is taken and
    /// `held_here()`, asked once (at the first try that finds it taken), says the calling
    /// thread holds it already (the pools' locks, held by a forking thread across the other
    /// fork handlers). A free lock costs what `lock` costs.
    pub fn lock_unless_held_here(&self, held_here: impl FnOnce() -> bool) -> Option<SpinGuard<'_>> {
        let mut spins = 0u32;
        let mut ask = Some(held_here);
        loop {
            if self.acquire() {
                return Some(SpinGuard { lock: self });
            }
            if ask.take().is_some_and(|f| f()) {
                return None;
            }
            backoff(&mut spins);
        }
    }

    /// Takes the lock if it is free right now.
    pub fn try_lock(&self) -> Option<SpinGuard<'_>> {
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(SpinGuard { lock: self })
        } else {
            None
        }
    }
}

impl SpinLock {
    /// Takes the lock and keeps it (no guard): for `fork` preparation.
    pub fn lock_raw(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken with [`SpinLock::lock_raw`] (in the parent after `fork`, or in
    /// the child, where the lock may have been held by a thread that no longer exists).
    pub fn unlock_raw(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

/// Releases the [`SpinLock`] when dropped.
pub struct SpinGuard<'a> {
    lock: &'a SpinLock,
}

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[inline]
fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    // SAFETY: sched_yield has no preconditions and touches no memory of ours.
    unsafe {
        libc::sched_yield();
    }
}

/// For the crate's fork tests: forks; the child runs `body` and `_exit`s with what it returns
/// (101 if it panics), running nothing of the parent's (no atexit, no destructors). The
/// parent waits up to `limit` and returns the child's exit code, or `Err` saying it died of
/// a signal or hung (then it is killed: a hang is what these tests look for).
#[cfg(all(test, not(loom)))]
pub(crate) fn fork_and_wait(
    limit: std::time::Duration,
    body: impl FnOnce() -> i32,
) -> Result<i32, String> {
    // SAFETY: fork has no preconditions; the child only runs `body` and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        // SAFETY: _exit ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code.unwrap_or(101)) };
    }
    let start = std::time::Instant::now();
    loop {
        let mut st = 0;
        // SAFETY: pid is our child; st is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(st) {
                Ok(libc::WEXITSTATUS(st))
            } else {
                Err(format!("the child died of signal {}", libc::WTERMSIG(st)))
            };
        }
        assert_eq!(r, 0, "waitpid failed");
        if start.elapsed() > limit {
            // SAFETY: pid is our child, not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut st, 0);
            }
            return Err(format!(
                "the child hung (killed after {} s)",
                limit.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::sync::{
        backoff, fork_and_wait, once_begin, AtomicUsize, OnceStep, Ordering, ONCE_DONE,
        ONCE_UNINIT, SPINS_BEFORE_YIELD,
    };

    /// A one-time initialisation begun by another thread when this one forks (review rev29):
    /// in the child, whose runner is gone, the first caller runs it again (`again`), where it
    /// used to spin forever; in the parent, callers wait for the runner as before.
    #[test]
    fn a_fork_child_runs_again_what_its_parents_thread_had_begun() {
        static STATE: AtomicUsize = AtomicUsize::new(ONCE_UNINIT);
        static GO: AtomicUsize = AtomicUsize::new(0);
        let runner = std::thread::spawn(|| {
            assert_eq!(once_begin(&STATE, || false), OnceStep::Run { again: false });
            while GO.load(Ordering::Acquire) == 0 {
                std::thread::yield_now();
            }
            STATE.store(ONCE_DONE, Ordering::Release);
        });
        while STATE.load(Ordering::Acquire) == ONCE_UNINIT {
            std::thread::yield_now();
        }
        // The child only calls once_begin.
        let child = fork_and_wait(std::time::Duration::from_secs(20), || {
            if once_begin(&STATE, || false) == (OnceStep::Run { again: true }) {
                0
            } else {
                2
            }
        });
        GO.store(1, Ordering::Release);
        runner.join().unwrap();
        assert_eq!(once_begin(&STATE, || false), OnceStep::Done);
        assert_eq!(
            child,
            Ok(0),
            "the child did not take over the initialisation (hung: it spun)"
        );
    }

    /// A waiter spins a bounded number of times, then yields on every step (the spin lock's
    /// and the purger gate's waits).
    #[test]
    fn backoff_spins_then_yields() {
        let mut spins = 0;
        let yielded: Vec<bool> = (0..SPINS_BEFORE_YIELD + 3)
            .map(|_| backoff(&mut spins))
            .collect();
        let first = yielded.iter().position(|&y| y);
        assert_eq!(first, Some(SPINS_BEFORE_YIELD as usize));
        assert!(yielded[SPINS_BEFORE_YIELD as usize..].iter().all(|&y| y));
    }
}
