//! `Pool<T>`: an object pool with per-thread caches in front of per-node shared stores.
//!
//! Owns: the idle objects of each pool, its counters, the CPU-to-node table (`node`), the
//! shared stores and their fork handlers (`store`), the per-thread ids and their fork
//! handlers (`tid`) and the per-thread tables the thread caches live in (`slots`).
//! May touch: the global allocator (objects, caches), its own data and, through `node`, the
//! topology's model of the machine. Nothing in the allocator core: the pool is an ordinary
//! client of whatever global allocator the process has.
//!
//! # Design
//!
//! A pool exists to make "get an expensive object, use it, give it back" cost almost nothing,
//! so the common case must touch no shared cache line. Each thread that uses the pool has a
//! small cache of idle objects (a `Vec`, found by the thread's id in a table of the pool's,
//! `slots`, whose entries never move). `get` pops
//! from it and `PoolGuard`'s drop runs the reset hook and pushes back onto it: no atomic
//! read-modify-write, no lock. Only when the thread's cache is empty (or full) does the pool go
//! to the shared store of the thread's NUMA node (`store`), a stack behind a spin lock that
//! grows and shrinks with what it holds (the budget below bounds it; nothing is reserved up
//! front, so `max_idle` may be as large as a user likes); objects made on a node thus tend to
//! be reused on that node.
//! A thread whose node's store is empty takes from other nodes' stores before making a new
//! object: bounded memory matters more than locality for an idle object.
//!
//! Fork: a `pthread_atfork` handler takes every store's lock before a fork and releases them
//! in the parent and the child, so a fork by any thread leaves the child every store as it
//! was between two operations (review rev33: the stores were `crossbeam_queue::SegQueue`s,
//! lock-free, and a fork between a push's claim of its slot and its write left a child whose
//! pop waited on that slot forever). The thread ids (`tid`) come from a registry of our own
//! whose lock a fork handler holds across the fork too (review rev34: they came from the
//! `thread_local` crate, whose private std `Mutex`, held by another thread at the fork, left
//! the child's threads waiting forever at their first lookup). The child's thread is the
//! forking thread, whose cache was between two operations; the other threads' ids are marked
//! lost in the child: never handed out again, and their caches, which may have been in the
//! middle of a change (a `Vec` growing: review rev34, its old block freed twice by the child's
//! drop of the pool), are left alone by the drop (leaked in the child). They stay counted as
//! idle there, and their places stay taken from `max_idle`, as an exited thread's do.
//! Fork handlers registered before the pools' (before the first pool was built) run on the
//! forking thread while it holds those locks; a pool used there takes none of them (review
//! rev39: it waited for its own thread, and the fork never returned).
//!
//! Compared with the crates users would otherwise pick: object-pool keeps one `Mutex<Vec<T>>`
//! (every get and return locks, and threads fight over the lock; ours locks only past the
//! thread cache, one lock per node's store), opool keeps one `ArrayQueue`
//! (two atomic read-modify-writes per round trip on a shared cache line, which under contention
//! bounces between cores). Neither has per-node stores, a bound on objects out at once, or
//! statistics.
//!
//! Bounds. `max_idle` bounds idle objects *in total*, exactly: the pool keeps a budget of idle
//! places; a thread's cache reserves its places from the budget once, when the thread first
//! uses the pool (places only: the cache's memory grows with what it holds), and a push to a
//! shared store takes one place (given back by the pop). A returned object with no place is
//! dropped (counted in `dropped`). `max_live` (optional) bounds objects out at once with one
//! atomic counter, paid only by pools that set it; past it [`Pool::try_get`] fails with
//! [`PoolError::Exhausted`] and [`Pool::get`] waits (spinning, then yielding) until a guard is
//! dropped.
//!
//! Guards. [`PoolGuard`] borrows the pool and is `Send` when `T` is, so it can be held across
//! `.await` in a multi-threaded runtime and dropped on another thread (the object then joins
//! that thread's cache). [`OwnedPoolGuard`] holds an `Arc<Pool<T>>` for `'static` uses such as
//! `tokio::spawn`.
//!
//! Thread exit: a guard dropped by a thread-local destructor (a guard kept in a thread-local),
//! or a pool used from one, goes without the thread's cache once the thread's id was released
//! (`tid`): its object goes to a shared store or is dropped.
//!
//! Caveat: objects in the cache of a thread that has exited stay there until a new thread
//! reuses that thread's slot (the id registry reuses ids) or the pool is dropped. They
//! count against `max_idle`, so the memory stays bounded.

mod node;
pub(crate) mod slots;
mod store;
mod tid;

use core::cell::UnsafeCell;
use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crossbeam_utils::{Backoff, CachePadded};
use slots::PerThread;
use store::Store;

type MakeFn<T> = Box<dyn Fn() -> T + Send + Sync>;
type ResetFn<T> = Box<dyn Fn(&mut T) + Send + Sync>;

/// Why [`Pool::try_get`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// `max_live` objects are out already.
    Exhausted {
        /// The bound set with [`PoolBuilder::max_live`].
        max_live: usize,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PoolError::Exhausted { max_live } => write!(
                f,
                "pool exhausted: {max_live} objects are out already (max_live = {max_live})"
            ),
        }
    }
}

impl std::error::Error for PoolError {}

/// Counters of a [`Pool`], from [`Pool::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Gets served by an idle object (from the thread's cache or a shared store).
    pub hits: u64,
    /// Gets that had to make a new object.
    pub misses: u64,
    /// Objects made.
    pub created: u64,
    /// Returned objects dropped because the idle bound was reached (or taken out with
    /// [`PoolGuard::into_inner`], or destroyed by a reset hook that panicked).
    pub dropped: u64,
    /// Idle objects now (thread caches and shared stores).
    pub idle: u64,
    /// Objects out now (`created - dropped - idle`, up to races between counters).
    pub out: u64,
    /// Number of per-node shared stores.
    pub nodes: u64,
}

/// One thread's cache. Its `items` are touched only by the thread that owns the entry.
struct Local<T> {
    items: UnsafeCell<Vec<T>>,
    /// Places reserved from the idle budget: `items` never holds more (its memory grows
    /// with what it holds, nothing is reserved up front).
    cap: usize,
    /// Mirrors of `items.len()` and the hit count for `stats`, written only by the owner (plain
    /// load + store, no read-modify-write).
    len: AtomicUsize,
    hits: AtomicU64,
}

// SAFETY: `items` is only accessed by the thread that `PerThread::get_or` returned this entry
// to (the owner); entries are handed to a new thread only after the old owner exited (the id
// registry's lock orders the id's reuse, `tid`). Other threads only read the atomics, through
// `PerThread::iter` in `stats`. With `T: Send`, moving the objects between owners is fine.
unsafe impl<T: Send> Sync for Local<T> {}

/// A bounded pool of reusable `T`s. See the module docs for the design.
///
/// ```
/// use tieralloc::Pool;
/// let pool = Pool::builder(|| Vec::<u8>::with_capacity(4096))
///     .reset(|v| v.clear())
///     .max_idle(64)
///     .build();
/// {
///     let mut buf = pool.get();
///     buf.extend_from_slice(b"hello");
/// } // cleared and returned here, capacity kept
/// let buf = pool.get();
/// assert!(buf.is_empty() && buf.capacity() >= 4096);
/// assert_eq!(pool.stats().hits, 1);
/// ```
///
/// `T` must be `Send` (an object passes between threads' caches: a guard dropped on another
/// thread puts it in that thread's); the pool is then `Send` and `Sync` whether `T` is `Sync`
/// or not, since only its counters are read across threads:
///
/// ```compile_fail
/// let pool = tieralloc::Pool::new(|| std::rc::Rc::new(0u8)); // `Rc` is not `Send`
/// ```
///
/// ```
/// fn shared<P: Send + Sync>(_: &P) {}
/// shared(&tieralloc::Pool::new(|| std::cell::Cell::new(0u8)));
/// ```
pub struct Pool<T: Send> {
    locals: PerThread<Local<T>>,
    shards: Box<[CachePadded<Store<T>>]>,
    make: MakeFn<T>,
    reset: Option<ResetFn<T>>,
    max_idle: usize,
    max_live: Option<usize>,
    thread_cache: usize,
    /// Objects out now; maintained only when `max_live` is set.
    live: CachePadded<AtomicUsize>,
    /// Idle places not reserved by a thread cache nor taken by a shared store.
    budget: CachePadded<AtomicUsize>,
    created: AtomicU64,
    dropped: AtomicU64,
    shared_hits: AtomicU64,
}

/// Builder of a [`Pool`], from [`Pool::builder`].
pub struct PoolBuilder<T: Send> {
    make: MakeFn<T>,
    reset: Option<ResetFn<T>>,
    max_idle: usize,
    max_live: Option<usize>,
    thread_cache: Option<usize>,
}

impl<T: Send> PoolBuilder<T> {
    /// The hook run on every object when it comes back, before it is cached (for example
    /// `|v: &mut Vec<u8>| v.clear()`, which keeps the capacity).
    pub fn reset(mut self, f: impl Fn(&mut T) + Send + Sync + 'static) -> Self {
        self.reset = Some(Box::new(f));
        self
    }

    /// At most `n` idle objects in total (default 1024); the excess is dropped on return.
    pub fn max_idle(mut self, n: usize) -> Self {
        self.max_idle = n;
        self
    }

    /// At most `n` objects out at once (default: unbounded). Past it `try_get` fails and `get`
    /// waits.
    pub fn max_live(mut self, n: usize) -> Self {
        self.max_live = Some(n);
        self
    }

    /// Idle objects each thread may keep in its own cache (default: `max_idle` divided among
    /// twice the number of CPUs, at most 64). Reserved from `max_idle`.
    pub fn thread_cache(mut self, n: usize) -> Self {
        self.thread_cache = Some(n);
        self
    }

    /// Builds the pool. Makes no object yet.
    pub fn build(self) -> Pool<T> {
        let nodes = node::node_count();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let thread_cache = self
            .thread_cache
            .unwrap_or_else(|| (self.max_idle / (2 * cpus)).min(64))
            .min(self.max_idle);
        Pool {
            locals: PerThread::new(),
            shards: (0..nodes).map(|_| CachePadded::new(Store::new())).collect(),
            make: self.make,
            reset: self.reset,
            max_idle: self.max_idle,
            max_live: self.max_live,
            thread_cache,
            live: CachePadded::new(AtomicUsize::new(0)),
            budget: CachePadded::new(AtomicUsize::new(self.max_idle)),
            created: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            shared_hits: AtomicU64::new(0),
        }
    }
}

/// Releases one `max_live` place when dropped (also when a reset hook or `make` panics).
struct Release<'a>(Option<&'a AtomicUsize>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.0 {
            l.fetch_sub(1, Relaxed);
        }
    }
}

/// Counts one object dropped when dropped: forgotten unless a reset hook unwinds.
struct CountDropped<'a>(&'a AtomicU64);

impl Drop for CountDropped<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Relaxed);
    }
}

#[inline(always)]
fn bump_owned(c: &AtomicU64) {
    // Only the owning thread writes this counter: load + store is enough and avoids a locked
    // read-modify-write on the hot path.
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

/// Takes one place from `budget` if there is one.
fn take_place(budget: &AtomicUsize, want: usize) -> usize {
    let mut cur = budget.load(Relaxed);
    loop {
        let n = cur.min(want);
        if n == 0 {
            return 0;
        }
        match budget.compare_exchange_weak(cur, cur - n, Relaxed, Relaxed) {
            Ok(_) => return n,
            Err(c) => cur = c,
        }
    }
}

impl<T: Send> Pool<T> {
    /// A builder; `make` creates a new object when no idle one is at hand.
    pub fn builder(make: impl Fn() -> T + Send + Sync + 'static) -> PoolBuilder<T> {
        PoolBuilder {
            make: Box::new(make),
            reset: None,
            max_idle: 1024,
            max_live: None,
            thread_cache: None,
        }
    }

    /// A pool with default bounds and no reset hook.
    pub fn new(make: impl Fn() -> T + Send + Sync + 'static) -> Self {
        Self::builder(make).build()
    }

    /// The idle bound.
    pub fn max_idle(&self) -> usize {
        self.max_idle
    }

    /// The bound on objects out at once, if any.
    pub fn max_live(&self) -> Option<usize> {
        self.max_live
    }

    /// This thread's cache; `None` once the thread is exiting and its cache cannot be found
    /// any more (`tid`: a guard dropped by a thread-local destructor).
    #[inline(always)]
    fn local(&self) -> Option<&Local<T>> {
        self.locals.get_or(|| {
            let cap = take_place(&self.budget, self.thread_cache);
            Local {
                // Empty: it grows with what it holds, up to `cap` (review rev26: reserved
                // whole here, `T` inline, 64 MiB for a cache of 1024 64 KiB buffers before one
                // was idle, and a `cap` past what a `Vec` holds panicked in this lookup).
                items: UnsafeCell::new(Vec::new()),
                cap,
                len: AtomicUsize::new(0),
                hits: AtomicU64::new(0),
            }
        })
    }

    /// An object: an idle one if there is one, else a new one. Waits while `max_live` objects
    /// are out (don't call it from async code on a pool with `max_live`: use
    /// [`try_get`](Pool::try_get)).
    #[inline]
    pub fn get(&self) -> PoolGuard<'_, T> {
        if let Some(max) = self.max_live {
            self.wait_live(max);
        }
        PoolGuard {
            pool: self,
            value: ManuallyDrop::new(self.take_counted()),
        }
    }

    /// Like [`get`](Pool::get), but fails with [`PoolError::Exhausted`] instead of waiting when
    /// `max_live` objects are out.
    #[inline]
    pub fn try_get(&self) -> Result<PoolGuard<'_, T>, PoolError> {
        if let Some(max) = self.max_live {
            self.try_live(max)?;
        }
        Ok(PoolGuard {
            pool: self,
            value: ManuallyDrop::new(self.take_counted()),
        })
    }

    /// Like [`get`](Pool::get), with a guard that owns an `Arc` of the pool (for `'static`
    /// uses: `tokio::spawn`, threads).
    pub fn get_owned(self: &Arc<Self>) -> OwnedPoolGuard<T> {
        if let Some(max) = self.max_live {
            self.wait_live(max);
        }
        OwnedPoolGuard {
            value: ManuallyDrop::new(self.take_counted()),
            pool: Arc::clone(self),
        }
    }

    /// Like [`try_get`](Pool::try_get), with an owning guard.
    pub fn try_get_owned(self: &Arc<Self>) -> Result<OwnedPoolGuard<T>, PoolError> {
        if let Some(max) = self.max_live {
            self.try_live(max)?;
        }
        Ok(OwnedPoolGuard {
            value: ManuallyDrop::new(self.take_counted()),
            pool: Arc::clone(self),
        })
    }

    fn try_live(&self, max: usize) -> Result<(), PoolError> {
        let mut cur = self.live.load(Relaxed);
        loop {
            if cur >= max {
                return Err(PoolError::Exhausted { max_live: max });
            }
            match self
                .live
                .compare_exchange_weak(cur, cur + 1, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(c) => cur = c,
            }
        }
    }

    fn wait_live(&self, max: usize) {
        let backoff = Backoff::new();
        while self.try_live(max).is_err() {
            if backoff.is_completed() {
                std::thread::yield_now();
            } else {
                backoff.snooze();
            }
        }
    }

    /// `take` for a caller that holds a `max_live` place: gives the place back if `make`
    /// panics.
    #[inline(always)]
    fn take_counted(&self) -> T {
        if self.max_live.is_none() {
            return self.take();
        }
        let undo = Release(Some(&*self.live));
        let v = self.take();
        core::mem::forget(undo);
        v
    }

    /// An idle object from this thread's cache, or the slow path.
    #[inline(always)]
    fn take(&self) -> T {
        let Some(local) = self.local() else {
            return self.take_slow();
        };
        // SAFETY: `local` is this thread's entry, so only this thread touches `items` (see the
        // Sync impl of `Local`); the borrow ends before any user code (make, reset, Drop) runs,
        // so it cannot be re-entered.
        let items = unsafe { &mut *local.items.get() };
        if let Some(v) = items.pop() {
            local.len.store(items.len(), Relaxed);
            bump_owned(&local.hits);
            return v;
        }
        self.take_slow()
    }

    #[cold]
    #[inline(never)]
    fn take_slow(&self) -> T {
        let home = node::current_node() % self.shards.len();
        let n = self.shards.len();
        for i in 0..n {
            if let Some(v) = self.shards[(home + i) % n].pop() {
                self.budget.fetch_add(1, Relaxed);
                self.shared_hits.fetch_add(1, Relaxed);
                return v;
            }
        }
        let v = (self.make)();
        self.created.fetch_add(1, Relaxed);
        v
    }

    /// Takes an object back: reset hook, then this thread's cache, the node's store, or drop.
    #[inline(always)]
    fn give_back(&self, mut v: T) {
        let _release = Release(self.max_live.map(|_| &*self.live));
        if let Some(r) = &self.reset {
            // A hook that panics destroys the object (the unwind drops `v`): count it dropped,
            // or `stats().out` would count it out for good.
            let undo = CountDropped(&self.dropped);
            r(&mut v);
            core::mem::forget(undo);
        }
        let Some(local) = self.local() else {
            return self.give_back_slow(v);
        };
        // SAFETY: as in `take`: this thread's entry, no user code runs during the borrow (a
        // push that grows `items` calls only the global allocator).
        let items = unsafe { &mut *local.items.get() };
        if items.len() < local.cap {
            items.push(v);
            local.len.store(items.len(), Relaxed);
        } else {
            self.give_back_slow(v);
        }
    }

    #[cold]
    #[inline(never)]
    fn give_back_slow(&self, v: T) {
        if take_place(&self.budget, 1) == 1 {
            // The node's own store: the place taken is what bounds it (review rev14: fixed
            // stores of `max_idle / nodes` slots each were allocated, and written, by `build`,
            // 67 MB for 64 KiB objects before any was made, and `max_idle(usize::MAX)`
            // panicked there).
            let n = self.shards.len();
            self.shards[node::current_node() % n].push(v);
            return;
        }
        self.dropped.fetch_add(1, Relaxed);
        drop(v);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PoolStats {
        let mut hits = self.shared_hits.load(Relaxed);
        let mut idle = 0u64;
        for l in self.locals.iter() {
            hits += l.hits.load(Relaxed);
            idle += l.len.load(Relaxed) as u64;
        }
        idle += self.shards.iter().map(|s| s.len() as u64).sum::<u64>();
        let created = self.created.load(Relaxed);
        let dropped = self.dropped.load(Relaxed);
        PoolStats {
            hits,
            misses: created,
            created,
            dropped,
            idle,
            out: created.saturating_sub(dropped).saturating_sub(idle),
            nodes: self.shards.len() as u64,
        }
    }
}

impl<T: Send> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("max_idle", &self.max_idle)
            .field("max_live", &self.max_live)
            .field("thread_cache", &self.thread_cache)
            .field("stats", &self.stats())
            .finish()
    }
}

/// An object borrowed from a [`Pool`]; derefs to `T` and goes back to the pool (through the
/// reset hook) when dropped. `Send` when `T` is, `Sync` only when `T` is too (it derefs to
/// `&T`):
///
/// ```compile_fail
/// fn shared<G: Sync>(_: &G) {}
/// let pool = tieralloc::Pool::new(|| std::cell::Cell::new(0u8));
/// let guard = pool.get();
/// shared(&guard); // `Cell` is not `Sync`
/// ```
///
/// ```
/// fn sent<G: Send>(_: G) {}
/// let pool = tieralloc::Pool::new(|| std::cell::Cell::new(0u8));
/// sent(pool.get());
/// ```
pub struct PoolGuard<'a, T: Send> {
    pool: &'a Pool<T>,
    value: ManuallyDrop<T>,
}

impl<T: Send> PoolGuard<'_, T> {
    /// Keeps the object: it leaves the pool for good (counted as dropped by the pool).
    pub fn into_inner(mut self) -> T {
        // SAFETY: `value` is initialised until drop; `self` is forgotten right after, so it is
        // neither returned to the pool nor dropped twice.
        let v = unsafe { ManuallyDrop::take(&mut self.value) };
        let pool = self.pool;
        core::mem::forget(self);
        detach(pool);
        v
    }
}

fn detach<T: Send>(pool: &Pool<T>) {
    if pool.max_live.is_some() {
        pool.live.fetch_sub(1, Relaxed);
    }
    pool.dropped.fetch_add(1, Relaxed);
}

impl<T: Send> Deref for PoolGuard<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Send> DerefMut for PoolGuard<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: Send> Drop for PoolGuard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: `value` is initialised until now and never used again.
        let v = unsafe { ManuallyDrop::take(&mut self.value) };
        self.pool.give_back(v);
    }
}

impl<T: Send + fmt::Debug> fmt::Debug for PoolGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// Like [`PoolGuard`], but owning an `Arc` of the pool, so it is `'static` (and `Send` when
/// `T` is; `Sync` only when `T` is too):
///
/// ```compile_fail
/// fn shared<G: Sync>(_: &G) {}
/// let pool = std::sync::Arc::new(tieralloc::Pool::new(|| std::cell::Cell::new(0u8)));
/// shared(&pool.get_owned()); // `Cell` is not `Sync`
/// ```
///
/// ```
/// let pool = std::sync::Arc::new(tieralloc::Pool::new(|| std::cell::Cell::new(0u8)));
/// let guard = pool.get_owned();
/// std::thread::spawn(move || guard.set(1)).join().unwrap();
/// ```
pub struct OwnedPoolGuard<T: Send> {
    pool: Arc<Pool<T>>,
    value: ManuallyDrop<T>,
}

impl<T: Send> OwnedPoolGuard<T> {
    /// Keeps the object: it leaves the pool for good.
    pub fn into_inner(mut self) -> T {
        // SAFETY: `value` is initialised until drop; the guard's drop is skipped below after
        // the Arc is moved out, so the value is neither returned nor dropped twice.
        let v = unsafe { ManuallyDrop::take(&mut self.value) };
        // SAFETY: `pool` is read out once and `self` forgotten, so the Arc is not dropped twice.
        let pool = unsafe { core::ptr::read(&self.pool) };
        core::mem::forget(self);
        detach(&pool);
        v
    }

    /// The pool this object goes back to.
    pub fn pool(&self) -> &Arc<Pool<T>> {
        &self.pool
    }
}

impl<T: Send> Deref for OwnedPoolGuard<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Send> DerefMut for OwnedPoolGuard<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: Send> Drop for OwnedPoolGuard<T> {
    fn drop(&mut self) {
        // SAFETY: `value` is initialised until now and never used again.
        let v = unsafe { ManuallyDrop::take(&mut self.value) };
        self.pool.give_back(v);
    }
}

impl<T: Send + fmt::Debug> fmt::Debug for OwnedPoolGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
