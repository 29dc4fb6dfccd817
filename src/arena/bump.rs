//! Request-scoped bump arenas on bumpalo: a per-worker cache of `bumpalo::Bump`s.
//!
//! Owns: the cached `Bump`s and their counters.
//! May touch: the global allocator only (bumpalo takes its chunks from it, so on a tieralloc
//! process from the worker thread's own node), and `pool::slots` (the per-thread lists, found
//! by the thread's id; none once the id was released at thread exit). Nothing in the
//! allocator core.
//!
//! # Design
//!
//! A handler calls [`BumpCache::checkout`] and gets a [`BumpGuard`] that derefs to
//! `&bumpalo::Bump`. It builds whatever it needs in it, bumpalo's own collections
//! (`bumpalo::collections::Vec`, `String`) or allocator-api2 ones
//! (`allocator_api2::vec::Vec::new_in(&*bump)`, since `&Bump` implements allocator-api2 0.2's
//! `Allocator`), and drops the guard at the end of the request. The guard then resets the bump
//! (bumpalo keeps its largest chunk) and puts it back in the cache of the thread it is dropped
//! on, so the next request on that worker bumps through warm memory and makes no allocator call
//! in the steady state. Each worker thread has its own list (`pool::slots`, fork-safe: review rev34), so a
//! checkout takes no lock and a bump's chunk stays on the worker's node; the list is bounded
//! (`max_idle_per_thread`) and a bump that grew past `max_retained_bytes` on an unusually big
//! request is dropped instead of being kept, so a cache cannot hoard memory.
//!
//! **bumpalo runs no `Drop`.** Values placed with `Bump::alloc` are never dropped: a
//! `String` or `Vec` allocated *in* the bump is fine (its memory is the bump's), but a value
//! that owns memory elsewhere (a `std::string::String`, a `Box`, an `Arc`, a file) leaks what it
//! owns when the bump is reset. bumpalo's collections (`bumpalo::collections::Vec`) and
//! allocator-api2 collections over `&Bump` do drop their elements when *they* are dropped,
//! before the reset. When you need values that own resources to be dropped, or you want to
//! iterate over everything allocated, use [`crate::Arena<T>`] instead (one type, Drop run for
//! each value on reset, same reuse of chunks). Use the bump for mixed-type scratch data of
//! plain types: parse buffers, temporary vectors, strings, small structs of `Copy` fields.
//!
//! `Bump` is `Send` but not `Sync`, so the guard is `Send` and may be held across `.await`, but
//! references into the bump (and collections built in it) are not `Send`: build, use and drop
//! them between two awaits, as a handler normally does for its CPU-bound part.

use core::fmt;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::cell::RefCell;

use bumpalo::Bump;

use crate::pool::slots::PerThread;

/// Statistics of a [`BumpCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BumpCacheStats {
    /// Checkouts served.
    pub checkouts: u64,
    /// Of those, served from a cached bump.
    pub hits: u64,
    /// Of those, served by a new bump.
    pub misses: u64,
    /// Bumps dropped on return (cache full, or bump too large).
    pub dropped: u64,
    /// Bumps idle in all per-thread caches now.
    pub idle: u64,
    /// Chunk bytes held by idle bumps now.
    pub idle_bytes: u64,
}

/// A per-worker cache of `bumpalo::Bump`s for request-scoped allocation. See the module docs.
///
/// ```
/// use tieralloc::BumpCache;
/// let cache = BumpCache::new();
/// {
///     let bump = cache.checkout();
///     let mut v = allocator_api2::vec::Vec::new_in(&*bump);
///     v.extend([1u32, 2, 3]);
///     let s = bumpalo::collections::String::from_str_in("hi", &bump);
///     assert_eq!((v.len(), s.as_str()), (3, "hi"));
/// } // reset and returned here
/// assert_eq!(cache.stats().idle, 1);
/// ```
pub struct BumpCache {
    idle: PerThread<RefCell<Vec<Bump>>>,
    max_idle_per_thread: usize,
    max_retained_bytes: usize,
    initial_capacity: usize,
    checkouts: AtomicU64,
    hits: AtomicU64,
    dropped: AtomicU64,
    /// Idle bumps and their bytes, kept as counters: another thread's list is never read.
    idle_count: AtomicU64,
    idle_bytes: AtomicU64,
}

impl Default for BumpCache {
    fn default() -> Self {
        Self::new()
    }
}

impl BumpCache {
    /// A cache keeping up to 4 bumps per thread, each up to 4 MiB, new bumps starting at 16 KiB.
    pub fn new() -> Self {
        Self::with_limits(4, 4 << 20, 16 << 10)
    }

    /// A cache keeping at most `max_idle_per_thread` bumps per thread, dropping a returned
    /// bump whose chunks exceed `max_retained_bytes`, and starting new bumps with
    /// `initial_capacity` bytes.
    pub fn with_limits(
        max_idle_per_thread: usize,
        max_retained_bytes: usize,
        initial_capacity: usize,
    ) -> Self {
        BumpCache {
            idle: PerThread::new(),
            max_idle_per_thread,
            max_retained_bytes,
            initial_capacity,
            checkouts: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            idle_count: AtomicU64::new(0),
            idle_bytes: AtomicU64::new(0),
        }
    }

    /// Borrows a reset bump: one from this thread's cache, or a new one.
    ///
    /// # Panics
    /// If a new bump's first chunk (`initial_capacity` bytes) cannot be allocated (bumpalo's
    /// "out of memory"); such a checkout is not counted in [`stats`](BumpCache::stats).
    pub fn checkout(&self) -> BumpGuard<'_> {
        // At thread exit (a guard taken in a thread-local destructor) no list: a new bump.
        let cached = self
            .idle
            .get_or(RefCell::default)
            .and_then(|list| list.borrow_mut().pop());
        let bump = match cached {
            Some(b) => {
                self.checkouts.fetch_add(1, Relaxed);
                self.hits.fetch_add(1, Relaxed);
                self.idle_count.fetch_sub(1, Relaxed);
                self.idle_bytes
                    .fetch_sub(b.allocated_bytes() as u64, Relaxed);
                b
            }
            None => {
                // Counted once the bump is had: bumpalo panics ("out of memory") when the
                // first chunk cannot be allocated, and that checkout served nothing (review
                // rev39: it was counted, a checkout and a miss).
                let b = Bump::with_capacity(self.initial_capacity);
                self.checkouts.fetch_add(1, Relaxed);
                b
            }
        };
        BumpGuard {
            cache: self,
            bump: Some(bump),
        }
    }

    fn give_back(&self, mut bump: Bump) {
        if bump.allocated_bytes() > self.max_retained_bytes {
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        bump.reset();
        // Back to the state of a new bump: an allocation limit its user set (through `&Bump`)
        // is that request's, not the next one's.
        bump.set_allocation_limit(None);
        // At thread exit (a guard dropped by a thread-local destructor) no list: dropped.
        let Some(cell) = self.idle.get_or(RefCell::default) else {
            self.dropped.fetch_add(1, Relaxed);
            return;
        };
        let mut list = cell.borrow_mut();
        if list.len() < self.max_idle_per_thread {
            self.idle_count.fetch_add(1, Relaxed);
            self.idle_bytes
                .fetch_add(bump.allocated_bytes() as u64, Relaxed);
            list.push(bump);
        } else {
            drop(list);
            self.dropped.fetch_add(1, Relaxed);
            drop(bump);
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BumpCacheStats {
        let checkouts = self.checkouts.load(Relaxed);
        let hits = self.hits.load(Relaxed);
        BumpCacheStats {
            checkouts,
            hits,
            misses: checkouts.saturating_sub(hits),
            dropped: self.dropped.load(Relaxed),
            idle: self.idle_count.load(Relaxed),
            idle_bytes: self.idle_bytes.load(Relaxed),
        }
    }
}

impl fmt::Debug for BumpCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BumpCache")
            .field("max_idle_per_thread", &self.max_idle_per_thread)
            .field("max_retained_bytes", &self.max_retained_bytes)
            .finish_non_exhaustive()
    }
}

/// A bump borrowed from a [`BumpCache`]; derefs to `bumpalo::Bump`. Dropping it resets the bump
/// (running no destructors of values in it), clears any allocation limit set on it, and returns
/// it to the cache.
///
/// `Send` (it may be held across `.await` and dropped on another thread, whose cache takes
/// the bump) but not `Sync`, and what is built in the bump stays on the guard's thread
/// (`bumpalo::Bump` is not `Sync`):
///
/// ```compile_fail
/// let cache = tieralloc::BumpCache::new();
/// let bump = cache.checkout();
/// let v = bumpalo::collections::Vec::<u8>::new_in(&bump);
/// std::thread::scope(|s| {
///     s.spawn(|| v.len()); // a reference to the bump in another thread
/// });
/// ```
///
/// ```
/// let cache = tieralloc::BumpCache::new();
/// let bump = cache.checkout();
/// std::thread::scope(|s| {
///     s.spawn(move || bump.alloc(1u8).to_owned());
/// });
/// ```
pub struct BumpGuard<'a> {
    cache: &'a BumpCache,
    bump: Option<Bump>,
}

impl BumpGuard<'_> {
    /// Keeps the bump out of the cache for good.
    pub fn into_inner(mut self) -> Bump {
        self.bump.take().expect("bump present until drop")
    }
}

impl Deref for BumpGuard<'_> {
    type Target = Bump;
    #[inline]
    fn deref(&self) -> &Bump {
        self.bump.as_ref().expect("bump present until drop")
    }
}

impl DerefMut for BumpGuard<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Bump {
        self.bump.as_mut().expect("bump present until drop")
    }
}

impl Drop for BumpGuard<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.bump.take() {
            self.cache.give_back(b);
        }
    }
}

impl fmt::Debug for BumpGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BumpGuard")
            .field("allocated_bytes", &self.allocated_bytes())
            .finish()
    }
}
