//! Review rev39: a pool used by another `pthread_atfork` handler. The pools' prepare handlers
//! take every shared store's lock and the id registry's lock, and their parent and child
//! handlers release them; handlers registered before the pools' (at start-up, before the
//! first pool was built) run in between: their prepare after the pools' (POSIX runs prepare
//! handlers in reverse order of registration), their parent and child handlers before. Such a
//! handler that used a pool past its thread cache (a shared store) or from a thread without
//! an id yet took a lock its own thread held: the fork never returned. Each case runs in a
//! process of its own, whose handler is registered before its first pool is built.
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::Duration;

use tieralloc::Pool;

#[path = "common/child.rs"]
mod child;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// Runs the test `name` in a child and requires that it passed (the parent's side).
fn in_child(name: &str) -> bool {
    child::in_child(name, Duration::from_secs(30))
}

/// A pool with no thread cache: every get and return goes through a shared store.
fn pool() -> &'static Pool<Vec<u8>> {
    static P: OnceLock<Pool<Vec<u8>>> = OnceLock::new();
    P.get_or_init(|| {
        Pool::builder(|| vec![1u8; 64])
            .max_idle(4)
            .thread_cache(0)
            .build()
    })
}

/// Handler runs (prepare, parent, child: each process counts its own).
static USES: AtomicUsize = AtomicUsize::new(0);

/// A fork handler that takes an object from the pool and gives it back.
extern "C" fn use_the_pool() {
    drop(pool().get());
    USES.fetch_add(1, SeqCst);
}

/// Registers [`use_the_pool`] for all three phases; before any pool is built.
fn register_handlers() {
    // SAFETY: the handlers are plain functions that live as long as the process.
    let r =
        unsafe { libc::pthread_atfork(Some(use_the_pool), Some(use_the_pool), Some(use_the_pool)) };
    assert_eq!(r, 0);
}

/// Forks; the child uses the pool and checks its handler ran (prepare, then child).
fn fork_and_use_the_pool() {
    let child = child::fork_and_wait(Duration::from_secs(20), || {
        let g: Vec<_> = (0..3).map(|_| pool().get()).collect();
        drop(g);
        i32::from(USES.load(SeqCst) != 2)
    });
    assert_eq!(child, Ok(0), "the fork child");
}

/// The forking thread has an id and the stores hold objects: the handler's get pops one.
#[test]
fn a_fork_handler_registered_before_the_pools_uses_a_shared_store() {
    if !in_child("a_fork_handler_registered_before_the_pools_uses_a_shared_store") {
        return;
    }
    register_handlers();
    let g: Vec<_> = (0..2).map(|_| pool().get()).collect();
    drop(g);
    fork_and_use_the_pool();
    assert_eq!(USES.load(SeqCst), 2, "prepare and parent ran");
    let st = pool().stats();
    assert_eq!((st.idle, st.out), (2, 0), "{st:?}");
}

/// The forking thread has never used a pool: the handler's get is its first lookup of an id.
#[test]
fn a_fork_handler_registered_before_the_pools_makes_a_threads_first_lookup() {
    if !in_child("a_fork_handler_registered_before_the_pools_makes_a_threads_first_lookup") {
        return;
    }
    register_handlers();
    drop(pool().get());
    std::thread::spawn(fork_and_use_the_pool).join().unwrap();
    assert_eq!(USES.load(SeqCst), 2, "prepare and parent ran");
}
