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
    child::in_child(name, Duration::from_secs(60))
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

/// Review rev39: threads exit while others start, so ids are released and taken again at once,
/// each exiting thread's cache holding objects and its thread-locals returning guards both
/// before its id goes (one registered after its first pool use) and after (one registered
/// before). Every object is accounted for afterwards (alive = idle, `out` 0), none dropped
/// twice, and the pool's drop (on the last thread to let go of it) drops every one.
#[test]
fn threads_exit_while_others_take_their_ids() {
    if !in_child("threads_exit_while_others_take_their_ids") {
        return;
    }
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    struct Obj(Arc<AtomicUsize>);
    impl Drop for Obj {
        fn drop(&mut self) {
            self.0.fetch_sub(1, SeqCst);
        }
    }
    thread_local! {
        static BEFORE: RefCell<Option<OwnedPoolGuard<Obj>>> = const { RefCell::new(None) };
        static AFTER: RefCell<Option<OwnedPoolGuard<Obj>>> = const { RefCell::new(None) };
    }
    let live = Arc::new(AtomicUsize::new(0));
    let pool = {
        let live = Arc::clone(&live);
        Arc::new(
            Pool::builder(move || {
                live.fetch_add(1, SeqCst);
                Obj(Arc::clone(&live))
            })
            .max_idle(64)
            .thread_cache(3)
            .build(),
        )
    };
    let spawners: Vec<_> = (0..4)
        .map(|_| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                let workers: Vec<_> = (0..50)
                    .map(|_| {
                        let pool = Arc::clone(&pool);
                        std::thread::spawn(move || {
                            // Registered before the id's guard: dropped after the id went.
                            BEFORE.with(|b| *b.borrow_mut() = Some(pool.get_owned()));
                            let held: Vec<_> = (0..4).map(|_| pool.get()).collect();
                            drop(held);
                            // Registered after it: dropped while the id is still held.
                            AFTER.with(|a| *a.borrow_mut() = Some(pool.get_owned()));
                        })
                    })
                    .collect();
                for w in workers {
                    w.join().unwrap();
                }
            })
        })
        .collect();
    for s in spawners {
        s.join().unwrap();
    }
    let st = pool.stats();
    assert_eq!(st.out, 0, "{st:?}");
    assert_eq!(st.created, st.idle + st.dropped, "{st:?}");
    assert_eq!(
        live.load(SeqCst) as u64,
        st.idle,
        "objects alive against idle: {st:?}"
    );
    drop(pool);
    assert_eq!(
        live.load(SeqCst),
        0,
        "every object dropped once by the pool's drop"
    );
}

/// Review rev39: a guard dropped by a thread-local destructor after the thread's id went must
/// not touch the cache it left, which the id's next holder may be using already. With the
/// thread's cache holding every idle place (`max_idle` = `thread_cache`), the object is
/// dropped (the shared stores have no place): in the cache it would count idle.
#[test]
fn a_guard_dropped_after_the_threads_id_went_leaves_its_cache_alone() {
    if !in_child("a_guard_dropped_after_the_threads_id_went_leaves_its_cache_alone") {
        return;
    }
    let pool = Arc::new(
        Pool::builder(|| vec![0u8; 100])
            .max_idle(3)
            .thread_cache(3)
            .build(),
    );
    let p = Arc::clone(&pool);
    // `CONN`'s destructor is registered before the thread's first pool use, so it runs after
    // the id's guard.
    std::thread::spawn(move || CONN.with(|c| *c.borrow_mut() = Some(p.get_owned())))
        .join()
        .unwrap();
    let st = pool.stats();
    assert_eq!(
        (st.created, st.idle, st.dropped),
        (1, 0, 1),
        "the object went to the exited thread's cache: {st:?}"
    );
}
