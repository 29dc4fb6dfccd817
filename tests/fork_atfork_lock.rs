//! fork while a thread allocates holding a lock that a prepare handler registered before
//! tieralloc's takes (review rev51). Prepare handlers run in reverse registration order, so
//! this program's runs after tieralloc's: if tieralloc's held up the other threads' slow
//! paths until the parent handler (as its gate pins did), a thread waiting there while it
//! holds the lock would keep the program's prepare handler, and so the fork, waiting for
//! good. The handler is registered from an `.init_array` constructor, before Rust's `main`
//! and so before the first allocation (which registers tieralloc's: `init::init_once`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// tieralloc, counting the allocations, so that the constructor can tell it ran before the
/// first one.
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to tieralloc's, whose contract is GlobalAlloc's.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { TIERALLOC.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: forwarded contract.
        unsafe { TIERALLOC.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { TIERALLOC.realloc(p, l, n) }
    }
}

static TIERALLOC: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
#[global_allocator]
static GLOBAL: Counting = Counting;

#[path = "common/child.rs"]
mod child;

/// The program's lock: its prepare handler takes it, the worker allocates holding it.
struct Lock(std::cell::UnsafeCell<libc::pthread_mutex_t>);
// SAFETY: a pthread mutex is made to be shared between threads.
unsafe impl Sync for Lock {}
static L: Lock = Lock(std::cell::UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));

fn lock() {
    // SAFETY: L is a valid, initialised mutex for the life of the process.
    unsafe { libc::pthread_mutex_lock(L.0.get()) };
}
fn unlock() {
    // SAFETY: as in lock; called only by the thread holding it.
    unsafe { libc::pthread_mutex_unlock(L.0.get()) };
}

extern "C" fn prepare() {
    lock();
}
extern "C" fn parent() {
    unlock();
}
extern "C" fn in_child() {
    // The child's only thread is the one that took it in prepare.
    unlock();
}

/// Whether the constructor registered the handlers before any allocation.
static REGISTERED_FIRST: AtomicBool = AtomicBool::new(false);

extern "C" fn register() {
    let first = ALLOCS.load(Ordering::Relaxed) == 0;
    // SAFETY: the handlers are plain functions that live as long as the process.
    let r = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(in_child)) };
    REGISTERED_FIRST.store(first && r == 0, Ordering::Relaxed);
}

#[used]
#[link_section = ".init_array"]
static REGISTER: extern "C" fn() = register;

/// Forks completed by the main thread; the watchdog ends the process if it stops moving.
static FORKS: AtomicUsize = AtomicUsize::new(0);
/// The worker's rounds (it must have been running during the forks).
static ROUNDS: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
/// The watchdog's exit code: the forks made no progress for 20 s (a hang).
const HUNG: i32 = 75;

/// 400 forks from the main thread (children `_exit` at once) while a worker (pinned to its
/// CPU, its heap on that CPU's node from the start: no slow path of its rounds needs an
/// allocator lock) loops {lock L; allocate and free 64 to 256 KiB blocks, each through a
/// gated slow path; unlock L}. A watchdog thread, which does not allocate once started,
/// `_exit`s with [`HUNG`] when the count of forks has not moved for 20 s. At the gate pins (main before review rev51) the
/// first few forks hung: the worker waited at its pinned gate holding L, the program's
/// prepare handler for L.
#[test]
fn fork_does_not_wait_for_a_thread_that_holds_a_prepare_handlers_lock() {
    if !child::in_child(
        "fork_does_not_wait_for_a_thread_that_holds_a_prepare_handlers_lock",
        Duration::from_secs(90),
    ) {
        return;
    }
    assert!(
        REGISTERED_FIRST.load(Ordering::Relaxed),
        "the program's handlers were not registered before the first allocation, so not \
         before tieralloc's"
    );
    std::thread::spawn(|| {
        let (mut last, mut still) = (usize::MAX, 0);
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = FORKS.load(Ordering::Relaxed);
            still = if now == last { still + 1 } else { 0 };
            last = now;
            if still >= 20 {
                // SAFETY: ends the process at once (the hang this test looks for).
                unsafe { libc::_exit(HUNG) };
            }
        }
    });
    let worker = std::thread::spawn(|| {
        // Pinned to the CPU it starts on, and its heap moved to that CPU's node now: under
        // TIERALLOC_SIMULATE_NODES (CPU c is node c % n) a worker the scheduler moved would
        // move its heap inside a round (`registry::rehome`), which lets go of its segments
        // onto the node's abandoned list or pool, under that list's lock (review rev52: 5
        // runs of 5 hung there under TIERALLOC_SIMULATE_NODES=2, the worker in
        // `let_go` waiting for the lock tieralloc's prepare handler held, holding L).
        // SAFETY: a plain query of the calling thread's CPU.
        let cpu = unsafe { libc::sched_getcpu() };
        tieralloc::numa::pin_current_thread_to_cpu(cpu.max(0) as u32).expect("pin");
        tieralloc::collect();
        let node = tieralloc::probe::heap_node();
        // Kept live, so that the worker's segment never empties into a pool: its slow paths
        // then change its own segment only, under its gate, and need no allocator lock (one
        // that does is held by tieralloc's prepare handler until the parent's: that deadlock
        // is every allocator's that locks across fork, and is not what this tests; see
        // docs/correctness.md, review rev52).
        let _keep = std::hint::black_box(Box::new([1u8; 100]));
        let mut x = 12345usize;
        while !STOP.load(Ordering::Relaxed) {
            lock();
            for _ in 0..4 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let len = (64 << 10) + (x >> 33) % (192 << 10);
                let v = vec![x as u8; len];
                std::hint::black_box(&v);
            }
            unlock();
            ROUNDS.fetch_add(1, Ordering::Relaxed);
        }
        // What the rounds relied on: the heap never moved.
        node == tieralloc::probe::heap_node()
    });
    while ROUNDS.load(Ordering::Relaxed) == 0 {
        std::thread::yield_now();
    }
    let before = ROUNDS.load(Ordering::Relaxed);
    for _ in 0..400 {
        // SAFETY: the child runs nothing but _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        let mut st = 0;
        // SAFETY: pid is our child; st is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(
            r == pid && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child status {st:#x}"
        );
        FORKS.fetch_add(1, Ordering::Relaxed);
    }
    STOP.store(true, Ordering::Relaxed);
    assert!(
        worker.join().unwrap(),
        "the worker's heap moved to another node during the rounds"
    );
    assert!(
        ROUNDS.load(Ordering::Relaxed) > before,
        "the worker ran during the forks"
    );
}
