//! Review rev14: pool guards and bump guards dropped, and pools used, by thread-local
//! destructors at thread exit (a per-thread cached object: a connection, a buffer). The
//! thread's id may be released by then (the `thread_local` crate's then, `pool/tid.rs`'s since
//! review rev34); asking the `thread_local` crate for the thread's cache then panicked inside a
//! TLS destructor, which aborts the process ("fatal runtime error: thread local panicked on
//! drop"). Each case runs in a child process of its own, so that an
//! abort fails that case only.
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tieralloc::{BumpCache, OwnedPoolGuard, Pool};

#[path = "common/child.rs"]
mod child;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// Runs the test `name` in a child and requires that it passed (the parent's side).
fn in_child(name: &str) -> bool {
    if child::is_child() {
        return true;
    }
    child::run(&mut child::this_test(name), Duration::from_secs(60)).expect_test_passed();
    false
}

thread_local! {
    // Touched before the thread first uses a pool: its destructor is registered first, so it
    // runs last, after the thread's id was released.
    static CONN: RefCell<Option<OwnedPoolGuard<Vec<u8>>>> = const { RefCell::new(None) };
    static SCRATCH: RefCell<Option<tieralloc::BumpGuard<'static>>> = const { RefCell::new(None) };
    static LATE: Late = const { Late };
}

fn pool() -> &'static Pool<Vec<u8>> {
    static P: OnceLock<Pool<Vec<u8>>> = OnceLock::new();
    P.get_or_init(|| Pool::new(|| vec![7u8; 100]))
}

/// At thread exit, takes an object from the pool and gives it back.
struct Late;
impl Drop for Late {
    fn drop(&mut self) {
        let g = pool().get();
        assert_eq!(g.len(), 100);
    }
}

#[test]
fn an_owned_pool_guard_kept_in_a_thread_local_goes_back_at_thread_exit() {
    if !in_child("an_owned_pool_guard_kept_in_a_thread_local_goes_back_at_thread_exit") {
        return;
    }
    let pool = Arc::new(Pool::new(|| vec![0u8; 100]));
    for _ in 0..4 {
        let pool = pool.clone();
        std::thread::spawn(move || CONN.with(|c| *c.borrow_mut() = Some(pool.get_owned())))
            .join()
            .unwrap();
    }
    let s = pool.stats();
    assert_eq!(s.created, s.idle + s.dropped, "every object back: {s:?}");
}

#[test]
fn a_pool_used_by_a_thread_local_destructor_at_thread_exit() {
    if !in_child("a_pool_used_by_a_thread_local_destructor_at_thread_exit") {
        return;
    }
    for _ in 0..4 {
        std::thread::spawn(|| {
            LATE.with(|_| ());
            drop(pool().get());
        })
        .join()
        .unwrap();
    }
    let s = pool().stats();
    assert_eq!(s.out, 0, "{s:?}");
}

#[test]
fn a_bump_guard_kept_in_a_thread_local_goes_back_at_thread_exit() {
    if !in_child("a_bump_guard_kept_in_a_thread_local_goes_back_at_thread_exit") {
        return;
    }
    static CACHE: OnceLock<BumpCache> = OnceLock::new();
    let cache = CACHE.get_or_init(BumpCache::new);
    for _ in 0..4 {
        std::thread::spawn(move || {
            SCRATCH.with(|s| {
                let g = cache.checkout();
                g.alloc(5u64);
                *s.borrow_mut() = Some(g);
            })
        })
        .join()
        .unwrap();
    }
    assert_eq!(cache.stats().checkouts, 4);
}
