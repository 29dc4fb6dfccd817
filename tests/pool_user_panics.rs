//! Review rev39: the pools and bump caches against user code that panics (`make`, reset
//! hooks, `T::drop`) and allocations that fail, and what is left afterwards: the pool still
//! serves (in the same thread, another thread and a fork child: no store's or id registry's
//! lock left held), nothing is dropped twice, nothing is leaked, and the counts are right.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use tieralloc::Pool;

#[path = "common/child.rs"]
mod child;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// Objects alive, and whether the next drop panics: one of each per test.
#[derive(Default)]
struct Watch {
    live: AtomicUsize,
    drop_panics: AtomicBool,
}

/// A pooled object that counts itself and panics in `drop` when its watch says so (once).
struct Obj(Arc<Watch>);

impl Obj {
    fn new(w: &Arc<Watch>) -> Obj {
        w.live.fetch_add(1, SeqCst);
        Obj(Arc::clone(w))
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, SeqCst);
        if self.0.drop_panics.swap(false, SeqCst) {
            panic!("Obj::drop panics");
        }
    }
}

/// A pool dropped while its thread caches hold objects, the first of which panics in `drop`:
/// the panic reaches the pool's owner and every other object is dropped all the same, the
/// other threads' caches too (as a `Vec`'s or a `HashMap`'s other elements are).
#[test]
fn a_panicking_drop_at_the_pools_drop_leaks_no_other_object() {
    let w = Arc::new(Watch::default());
    let pool = {
        let w = Arc::clone(&w);
        Pool::builder(move || Obj::new(&w))
            .max_idle(64)
            .thread_cache(4)
            .build()
    };
    // Four thread caches of 4 objects each (this thread's and three exited threads', alive at
    // once so that each has an id, and a cache, of its own), and 4 more in the shared stores.
    // This thread's id first: one freed by the three threads would come with that cache.
    drop(pool.get());
    let all_out = std::sync::Barrier::new(3);
    let fill = |n: usize, together: Option<&std::sync::Barrier>| {
        let held: Vec<_> = (0..n).map(|_| pool.get()).collect();
        together.map(|b| b.wait());
        drop(held);
    };
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| fill(4, Some(&all_out)));
        }
    });
    fill(8, None);
    let st = pool.stats();
    assert_eq!((st.created, st.idle), (20, 20), "{st:?}");
    assert_eq!(w.live.load(SeqCst), 20);

    w.drop_panics.store(true, SeqCst);
    let r = catch_unwind(AssertUnwindSafe(|| drop(pool)));
    assert!(r.is_err(), "the drop's panic reaches the pool's owner");
    assert_eq!(
        w.live.load(SeqCst),
        0,
        "objects of the pool left undropped after one object's drop panicked"
    );
}

/// A checkout whose new bump cannot be allocated panics (bumpalo's "out of memory"): no bump
/// was served, so none is counted (`checkouts`: "checkouts served", `misses`: "served by a new
/// bump"), and the cache serves the next checkout as before.
#[test]
fn a_checkout_whose_bump_cannot_be_allocated_is_not_counted() {
    // A first bump of half the address space: no allocator has it.
    let cache = tieralloc::BumpCache::with_limits(4, 4 << 20, usize::MAX / 2);
    let r = catch_unwind(AssertUnwindSafe(|| drop(cache.checkout())));
    assert!(r.is_err(), "bumpalo panics when the first chunk fails");
    let st = cache.stats();
    assert_eq!(
        (st.checkouts, st.misses, st.hits),
        (0, 0, 0),
        "a checkout that served no bump was counted: {st:?}"
    );

    // A cache whose bumps can be had: a failed checkout in between changes nothing.
    let cache = tieralloc::BumpCache::new();
    drop(cache.checkout());
    let big = catch_unwind(AssertUnwindSafe(|| {
        let b = cache.checkout();
        b.alloc_slice_fill_copy(usize::MAX / 4, 0u8).len()
    }));
    assert!(big.is_err(), "a bump refuses what no allocator has");
    drop(cache.checkout());
    let st = cache.stats();
    assert_eq!(
        (st.checkouts, st.hits, st.misses, st.idle),
        (3, 2, 1, 1),
        "{st:?}"
    );
}

/// Every place the pool runs user code, made to panic in turn on a pool whose every get and
/// return goes through the shared stores (no thread cache) and the `max_live` count: `make`
/// (in this thread, and as a new thread's first use), the reset hook, and `T::drop` of an
/// object returned past the idle bound. Afterwards the pool serves in this thread, in another
/// thread and in a fork child (a store's or the id registry's lock left held would hang them),
/// every `max_live` place is back, no object is dropped twice (`live` would wrap) and the
/// counts add up.
#[test]
fn the_pool_serves_on_after_each_of_its_user_code_panics() {
    #[derive(Default)]
    struct Faults {
        make: AtomicBool,
        reset: AtomicBool,
    }
    let w = Arc::new(Watch::default());
    let f = Arc::new(Faults::default());
    let pool = {
        let (w, f) = (Arc::clone(&w), Arc::clone(&f));
        let f2 = Arc::clone(&f);
        Pool::builder(move || {
            assert!(!f.make.swap(false, SeqCst), "make panics");
            Obj::new(&w)
        })
        .reset(move |_| assert!(!f2.reset.swap(false, SeqCst), "reset panics"))
        .max_idle(2)
        .thread_cache(0)
        .max_live(3)
        .build()
    };
    // `try_get` throughout: a `max_live` place lost to a panic fails the test, where `get`
    // would wait for it for good.
    fn panics(what: impl FnOnce()) -> bool {
        catch_unwind(AssertUnwindSafe(what)).is_err()
    }

    // `make`, here and as another thread's first use of the pool.
    f.make.store(true, SeqCst);
    assert!(panics(|| drop(pool.try_get().expect("a max_live place"))));
    std::thread::scope(|s| {
        s.spawn(|| {
            f.make.store(true, SeqCst);
            assert!(panics(|| drop(pool.try_get().expect("a max_live place"))));
        });
    });
    // The reset hook: the object is destroyed, counted dropped.
    f.reset.store(true, SeqCst);
    assert!(panics(|| drop(pool.try_get().expect("a max_live place"))));
    // `T::drop` of an object past the idle bound (2 places, both taken by the stores).
    {
        let g: Vec<_> = (0..3)
            .map(|_| pool.try_get().expect("a max_live place"))
            .collect();
        w.drop_panics.store(true, SeqCst);
        assert!(panics(|| drop(g)));
    }
    let st = pool.stats();
    assert_eq!(
        (st.created, st.dropped, st.idle, st.out),
        (4, 2, 2, 0),
        "{st:?}"
    );
    assert_eq!(w.live.load(SeqCst), 2, "objects alive: the two idle ones");

    // Every `max_live` place is back.
    let g: Vec<_> = (0..3).map(|_| pool.try_get().unwrap()).collect();
    assert!(pool.try_get().is_err());
    drop(g);
    // Another thread, through the stores.
    std::thread::scope(|s| {
        s.spawn(|| {
            drop(
                (0..3)
                    .map(|_| pool.try_get().expect("a max_live place"))
                    .collect::<Vec<_>>(),
            )
        });
    });
    // A fork child: its gets and returns take the stores' locks and its thread's id.
    let child = child::fork_and_wait(std::time::Duration::from_secs(20), || {
        let g: Vec<_> = (0..3)
            .map(|_| pool.try_get().expect("a max_live place"))
            .collect();
        drop(g);
        let st = pool.stats();
        i32::from(!(st.idle == 2 && st.out == 0))
    });
    assert_eq!(child, Ok(0), "the fork child's pool");
    let st = pool.stats();
    assert_eq!(
        (st.created, st.dropped, st.idle, st.out),
        (6, 4, 2, 0),
        "{st:?}"
    );
    assert_eq!(w.live.load(SeqCst), 2);
    drop(pool);
    assert_eq!(w.live.load(SeqCst), 0, "every object dropped once");
}
