//! The pools' per-node shared stores: a stack of idle objects behind a lock that a fork
//! handler holds across every `fork`.
//!
//! Owns: the stores' locks (a fixed table of [`STRIPES`] spin locks shared by every store of
//! every pool) and their `pthread_atfork` handlers.
//! May touch: the global allocator (a push that grows a stack, a pop that shrinks one, both
//! under the lock: the pool is outside the allocator's path, so nothing the allocator does
//! waits for a store's lock).
//!
//! Why a lock (review rev33): the stores were `crossbeam_queue::SegQueue`s, lock-free but not
//! fork-safe. A push claims its slot and writes it later; a fork between the two gives the
//! child a slot no thread will write, and its pop spins on the slot forever (a push that
//! claimed a block's last slot leaves later pushes waiting for the next block as well). Here
//! every change to a store is made under its lock, the prepare handler takes every lock (so
//! no thread of the parent is inside a store at the fork) and the parent and child handlers
//! release them: the child gets every store as it was between two operations.
//!
//! Why a table of locks rather than one per store: the handlers must reach every lock, and
//! pools come and go; a fixed table needs no registry of live pools (nor a lock for it). Each
//! new store takes the next lock of the table, round-robin, so the stores of one pool (one per
//! node) and of the first [`STRIPES`] stores made never share one. The handlers take the
//! locks in table order; nothing takes two.
//!
//! Other fork handlers: those registered before ours (before the first pool was built) run
//! on the forking thread while it holds every lock (their prepare after ours, their parent and
//! child handlers before ours); a pool used there goes through the stores without the lock,
//! which no other thread can take then (review rev39: it waited for a lock its own thread
//! held, and the fork never returned).
//!
//! Handler order: the handlers are registered at the first pool's build, after the global
//! allocator's own (its first call registers them, and building a pool allocates), so their
//! prepare runs first: a thread that holds a store's lock while it grows the stack (an
//! allocator call) finishes before the allocator's prepare takes the allocator's locks.

use core::cell::{Cell, UnsafeCell};

use crossbeam_utils::CachePadded;

use crate::sync::{
    register_once, AtomicU8, AtomicUsize, ForkOnceCell, Ordering, SpinGuard, SpinLock,
    NOT_REGISTERED, REGISTERED,
};

/// Number of locks shared by the stores.
pub(crate) const STRIPES: usize = 64;

static LOCKS: [CachePadded<SpinLock>; STRIPES] =
    [const { CachePadded::new(SpinLock::new()) }; STRIPES];

/// The next store's lock (an index into [`LOCKS`], modulo [`STRIPES`]).
static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // No destructor: readable in a fork handler and at every point of the thread's exit.
    static FORKING: Cell<bool> = const { Cell::new(false) };
}

extern "C" fn prepare() {
    // Registered, as this runs (see `sync::register_once`).
    HANDLERS.store(REGISTERED, Ordering::Relaxed);
    for l in LOCKS.iter() {
        l.lock_raw();
    }
    FORKING.with(|f| f.set(true));
}

extern "C" fn release() {
    FORKING.with(|f| f.set(false));
    for l in LOCKS.iter() {
        l.unlock_raw();
    }
}

/// `lock`'s lock, or `None` on the forking thread while it holds every lock for the fork.
///
/// Between the prepare handler and the parent's or child's, the fork handlers registered
/// before ours run on the forking thread (POSIX: prepare handlers in reverse order of
/// registration, the others in order), and one that uses a pool past its thread cache comes
/// here (review rev39: it took a lock its own thread held, and the fork never returned). No
/// other thread can hold or take a lock then, so that thread uses the stores without one. A
/// free lock is taken as before; only a taken one costs a thread-local read, once, before
/// the wait.
#[inline]
fn lock(lock: &'static SpinLock) -> Option<SpinGuard<'static>> {
    lock.lock_unless_held_here(|| FORKING.with(Cell::get))
}

/// Whether the handlers are registered ([`register_once`]).
static HANDLERS: AtomicU8 = AtomicU8::new(NOT_REGISTERED);

/// Registers the fork handlers, once per process (also in a fork child whose parent's thread
/// was registering them: not std's `Once`, see review rev29).
fn register() {
    static ONCE: ForkOnceCell<()> = ForkOnceCell::new();
    ONCE.get_or_init(|| register_once(&HANDLERS, prepare, release, release));
}

/// One node's shared store of a pool: a stack (last returned, first reused: its memory is the
/// most likely to be in a cache).
pub(crate) struct Store<T> {
    lock: &'static SpinLock,
    items: UnsafeCell<Vec<T>>,
    /// Mirror of `items.len()`, written under the lock: `len` and an empty store's `pop`
    /// read it without taking the lock.
    len: AtomicUsize,
}

// SAFETY: `items` is touched only under `lock` (push, pop; or by the forking thread while it
// holds every lock, `lock`) or through `&mut self` (drop), so one thread at a time; with `T: Send` the objects may move between threads.
unsafe impl<T: Send> Sync for Store<T> {}

impl<T> Store<T> {
    /// An empty store (allocates nothing); registers the fork handlers on first use.
    pub(crate) fn new() -> Self {
        register();
        let i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        Store {
            lock: &LOCKS[i],
            items: UnsafeCell::new(Vec::new()),
            len: AtomicUsize::new(0),
        }
    }

    /// Adds `v` (the caller holds an idle place for it: the pool's budget bounds the store).
    pub(crate) fn push(&self, v: T) {
        let _g = lock(self.lock);
        // SAFETY: under the lock, or on the forking thread holding every lock (see the Sync
        // impl and `lock`); no user code runs during the borrow (a
        // push that grows the stack calls only the global allocator).
        let items = unsafe { &mut *self.items.get() };
        items.push(v);
        self.len.store(items.len(), Ordering::Relaxed);
    }

    /// The object returned last, if any. An empty store is seen without the lock (like the
    /// queue's before it: a push that another thread is making may be missed).
    pub(crate) fn pop(&self) -> Option<T> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let _g = lock(self.lock);
        // SAFETY: under the lock, or on the forking thread holding every lock (see the Sync
        // impl and `lock`); nothing but the global allocator runs
        // during the borrow.
        let items = unsafe { &mut *self.items.get() };
        let v = items.pop();
        // Memory follows what the store holds (as the queue's blocks did): halve a stack
        // three-quarters empty.
        if items.capacity() > 16 && items.len() <= items.capacity() / 4 {
            items.shrink_to(items.capacity() / 2);
        }
        self.len.store(items.len(), Ordering::Relaxed);
        v
    }

    /// Objects in the store (a snapshot).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::Store;

    #[test]
    fn a_store_is_a_stack_whose_memory_follows_what_it_holds() {
        let s = Store::new();
        for i in 0..1000 {
            s.push(i);
        }
        assert_eq!(s.len(), 1000);
        for i in (0..1000).rev() {
            assert_eq!(s.pop(), Some(i));
        }
        assert_eq!((s.pop(), s.len()), (None, 0));
        assert!(s.items.into_inner().capacity() <= 16);
    }
}
