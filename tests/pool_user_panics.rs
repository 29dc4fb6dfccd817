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
