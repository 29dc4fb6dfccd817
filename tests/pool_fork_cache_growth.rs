//! Pool and fork: a thread growing its own thread cache at the fork. Review rev34: the pool's
//! drop walks every thread's cache, and in a fork child that includes the caches of the
//! parent's other threads, which are not in the child; one that a thread was growing (`Vec`'s
//! `realloc` returned, the new pointer not yet stored) still names the old block, which the
//! `realloc` freed, and the child's drop of the pool freed it again.
//!
//! The window is inside `Vec`, so the test holds a thread in it: its global allocator wraps
//! tieralloc's, and on the thread that armed it, parks the next `realloc` after tieralloc's
//! has returned (the old block freed, the new pointer not yet handed to `Vec`), noting the old
//! block. The main thread forks then; the child drops the pool and counts frees of that block.

use core::cell::Cell;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tieralloc::{Pool, TierAlloc};

#[path = "common/child.rs"]
mod child;

static INNER: TierAlloc = TierAlloc::new();

/// The old block of the parked `realloc` (0: none yet).
static STALE: AtomicUsize = AtomicUsize::new(0);
static PARKED: AtomicBool = AtomicBool::new(false);
static GO: AtomicBool = AtomicBool::new(false);
/// Set in the child: frees of `STALE` counted from then on.
static IN_CHILD: AtomicBool = AtomicBool::new(false);
static STALE_FREES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // No destructor: readable inside the allocator at any time.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

struct Hook;

// SAFETY: every call goes to tieralloc's allocator with the caller's arguments unchanged; the
// hook only reads and writes atomics and a thread-local without a destructor, and waits.
unsafe impl GlobalAlloc for Hook {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { INNER.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if IN_CHILD.load(Ordering::Relaxed) && p as usize == STALE.load(Ordering::Relaxed) {
            STALE_FREES.fetch_add(1, Ordering::Relaxed);
            // Not passed on: tieralloc's default build does not check a double free.
            return;
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { INNER.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let q = unsafe { INNER.realloc(p, l, new) };
        if ARMED.with(|a| a.replace(false)) {
            if q != p {
                STALE.store(p as usize, Ordering::Relaxed);
            }
            PARKED.store(true, Ordering::Release);
            while !GO.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Hook = Hook;

#[test]
fn a_fork_while_a_thread_grows_its_cache_leaves_the_child_no_stale_block_to_free() {
    // A thread cache of 16 places, whatever the CPU count: the fifth object must stay in it.
    let pool: &'static Pool<u64> =
        Box::leak(Box::new(Pool::builder(|| 7u64).thread_cache(16).build()));
    let grower = std::thread::spawn(move || {
        // Four objects fill the cache's first block (4 places); the fifth grows it.
        let held: Vec<_> = (0..5).map(|_| pool.get()).collect();
        let mut held = held.into_iter();
        for g in held.by_ref().take(4) {
            drop(g);
        }
        ARMED.with(|a| a.set(true));
        drop(held.next());
    });
    assert!(child::wait_for(Duration::from_secs(20), || PARKED
        .load(Ordering::Acquire)
        .then_some(()))
    .is_some());
    let stale = STALE.load(Ordering::Relaxed);
    assert_ne!(
        stale, 0,
        "tieralloc grew the cache in place: nothing to show"
    );
    // SAFETY: fork has no preconditions; the child drops the pool and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        IN_CHILD.store(true, Ordering::Relaxed);
        // SAFETY: the pool was leaked above; in the child nothing else uses it.
        drop(unsafe { Box::from_raw(pool as *const Pool<u64> as *mut Pool<u64>) });
        let n = STALE_FREES.load(Ordering::Relaxed);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(n.min(100) as i32) };
    }
    let mut st = 0;
    // SAFETY: pid is our child; st is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    GO.store(true, Ordering::Release);
    grower.join().unwrap();
    assert!(libc::WIFEXITED(st), "the child died: status {st:#x}");
    assert_eq!(
        libc::WEXITSTATUS(st),
        0,
        "the child's drop of the pool freed the block the parked realloc had freed ({stale:#x}) again"
    );
}
