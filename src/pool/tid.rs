//! Per-thread ids for the pools' thread caches and the bump caches' lists ([`super::slots`]):
//! a registry of our own, fork-safe, and the thread-exit rules of a lookup.
//!
//! Owns: the id registry (a free list of released ids and a state word per id, behind one
//! spin lock), its `pthread_atfork` handlers, and two thread-locals per thread (its id, and a
//! guard whose destructor releases it).
//! May touch: the global allocator (a new block of state words, under the lock: see "Fork").
//!
//! Why our own (review rev34): the ids came from the `thread_local` crate, whose registry is a
//! private std `Mutex` taken at a thread's first lookup and at its exit; a fork while another
//! thread held it left a child whose threads waited forever at their first lookup (and no
//! handler of ours could reach that lock).
//!
//! Ids. A thread's first lookup takes the id released last (a stack), or a new one; its guard, registered right after, gives it back when the
//! thread's thread-local destructors run. The id's state word says `HELD`, or free (with the
//! next free id: the free list runs through the words), or `LOST` (below). Words live in
//! blocks of doubling size that never move, as the slots do.
//!
//! Fork: the prepare handler takes the registry's lock, so no thread is inside it at the
//! fork; the parent's handler releases it; the child's marks every id held by a thread other
//! than the forking one `LOST` and then releases it. Those threads are not in the child, and
//! any of them may have been inside its own cache at the fork (a `Vec` growing, between its
//! `realloc` and the store of the new pointer): a lost id is never handed out again, so no
//! thread of the child finds that cache, and [`is_lost`] tells a slot table's drop to leave
//! its entry alone (its memory and objects are leaked in the child, never freed twice).
//! Released ids (exited threads: their caches are between two operations) stay free. The
//! handlers are registered at the first slot table's creation, after the global allocator's
//! (it has been called by then), so their prepare runs first: a thread that grows the words
//! under the lock finishes before the allocator's prepare takes the allocator's locks.
//!
//! Other fork handlers, registered before ours, run on the forking thread while it holds the
//! lock (their prepare after ours, their parent and child handlers before ours): a first
//! lookup there takes and releases ids without the lock, which no other thread can take then
//! (review rev39: it waited for the lock its own thread held, and the fork never returned).
//!
//! Thread exit. A guard kept in a thread-local whose destructor was registered before the
//! thread's first lookup (`thread_local! { static CONN: RefCell<Option<OwnedPoolGuard<..>>> }`
//! set on first use) is dropped after the id's guard, as is any pool used from such a
//! destructor. The id's guard marks the thread's id `GONE` before it releases it, so such a
//! lookup finds no id and [`current`] returns `None`: the caller goes without the thread's
//! cache (a shared store, a new object or bump, or a drop), never with another thread's.
//! A thread whose first lookup comes during its thread-local destructors gets an id and a
//! guard registered then (std runs destructors registered while others run); if the guard
//! cannot be registered any more, the id goes back at once and the lookup returns `None`.

use core::cell::Cell;
use core::ptr;

use crate::sync::{
    register_once, AtomicPtr, AtomicU8, AtomicUsize, ForkOnceCell, Ordering, SpinGuard, SpinLock,
    NOT_REGISTERED, REGISTERED,
};

/// Blocks of ids: block `b` holds ids `2^b - 1 .. 2^(b+1) - 1`.
pub(crate) const BLOCKS: usize = (usize::BITS - 1) as usize;
/// Ids are below this (every block's ids).
const ID_LIMIT: usize = (1 << BLOCKS) - 1;

/// The thread-local id of a thread that has none yet.
const NONE: usize = usize::MAX;
/// The thread-local id of a thread whose id was released (its exit).
const GONE: usize = usize::MAX - 1;

/// An id's state word: held by a live thread.
const HELD: usize = usize::MAX;
/// Held by a thread of the parent at a fork: never handed out again in this process.
const LOST: usize = usize::MAX - 1;
/// The end of the free list (a free id's word holds the next free id, or this).
const NIL: usize = usize::MAX - 2;

/// The block of `id` and its index in it.
#[inline(always)]
pub(crate) fn locate(id: usize) -> (usize, usize) {
    let block = (usize::BITS - 1 - (id + 1).leading_zeros()) as usize;
    (block, id + 1 - (1 << block))
}

static LOCK: SpinLock = SpinLock::new();
/// The first free id ([`NIL`]: none), under [`LOCK`].
static HEAD: AtomicUsize = AtomicUsize::new(NIL);
/// Ids handed out so far (the next new id), under [`LOCK`].
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// The state words, block `b` of `2^b` (made under [`LOCK`], never freed).
static WORDS: [AtomicPtr<AtomicUsize>; BLOCKS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; BLOCKS];

thread_local! {
    // No destructor, so readable at every point of the thread's exit and in a fork handler.
    static ID: Cell<usize> = const { Cell::new(NONE) };
    static GUARD: Guard = const { Guard };
    // Set on the forking thread while it holds [`LOCK`] for a fork (no destructor either).
    static FORKING: Cell<bool> = const { Cell::new(false) };
}

/// [`LOCK`], or `None` on the forking thread while it holds it for the fork: the fork handlers
/// registered before ours run on that thread between our prepare and our parent's or child's
/// handler, and one whose pool use is its thread's first lookup comes here (review rev39: it
/// waited for the lock its own thread held, and the fork never returned); no other thread
/// can take the lock then. A free lock is taken as before; only a taken one costs a
/// thread-local read, once, before the wait.
fn lock() -> Option<SpinGuard<'static>> {
    LOCK.lock_unless_held_here(|| FORKING.with(Cell::get))
}

/// Releases the thread's id when the thread's thread-locals are destroyed.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        let id = ID.with(|c| c.replace(GONE));
        if id < ID_LIMIT {
            release(id);
        }
    }
}

/// The state word of `id`, if its block exists (every id handed out has one).
fn word(id: usize) -> Option<&'static AtomicUsize> {
    let (block, index) = locate(id);
    let p = WORDS[block].load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: a block's pointer is published (release) once its `2^block` words are
    // initialised, and blocks are never freed; `index < 2^block` (`locate`).
    Some(unsafe { &*p.add(index) })
}

/// The calling thread's id; `None` once its id was released (its exit: see the module docs).
#[inline(always)]
pub(crate) fn current() -> Option<usize> {
    let id = ID.with(Cell::get);
    if id < ID_LIMIT {
        return Some(id);
    }
    first(id)
}

#[cold]
#[inline(never)]
fn first(id: usize) -> Option<usize> {
    if id == GONE {
        return None;
    }
    let id = acquire()?;
    ID.with(|c| c.set(id));
    // After the id is set: registers the guard's destructor, which runs before those of
    // thread-locals registered earlier.
    if GUARD.try_with(|_| ()).is_err() {
        ID.with(|c| c.set(GONE));
        release(id);
        return None;
    }
    Some(id)
}

/// A free id (the one released last) or a new one, now held.
fn acquire() -> Option<usize> {
    register();
    let _g = lock();
    let head = HEAD.load(Ordering::Relaxed);
    let id = if head != NIL {
        let w = word(head)?;
        HEAD.store(w.load(Ordering::Relaxed), Ordering::Relaxed);
        head
    } else {
        let id = NEXT.load(Ordering::Relaxed);
        if id >= ID_LIMIT {
            return None;
        }
        let (block, _) = locate(id);
        if WORDS[block].load(Ordering::Relaxed).is_null() {
            // A new block (the global allocator, under the lock: see the module docs).
            let words: Box<[AtomicUsize]> = (0..1usize << block)
                .map(|_| AtomicUsize::new(HELD))
                .collect();
            WORDS[block].store(Box::into_raw(words).cast(), Ordering::Release);
        }
        NEXT.store(id + 1, Ordering::Relaxed);
        id
    };
    word(id)?.store(HELD, Ordering::Relaxed);
    Some(id)
}

/// Gives `id` back (its thread's exit): the next thread to ask may take it, and with it the
/// id's slot in every table (the caches an exited thread left).
fn release(id: usize) {
    let _g = lock();
    if let Some(w) = word(id) {
        w.store(HEAD.load(Ordering::Relaxed), Ordering::Relaxed);
        HEAD.store(id, Ordering::Relaxed);
    }
}

/// Whether `id` was held by a thread of the parent at a fork that made this process (its
/// slots may have been in the middle of a change: left alone).
pub(crate) fn is_lost(id: usize) -> bool {
    word(id).is_some_and(|w| w.load(Ordering::Relaxed) == LOST)
}

extern "C" fn prepare() {
    // Registered, as this runs (see `sync::register_once`).
    HANDLERS.store(REGISTERED, Ordering::Relaxed);
    LOCK.lock_raw();
    FORKING.with(|f| f.set(true));
}

extern "C" fn parent() {
    FORKING.with(|f| f.set(false));
    LOCK.unlock_raw();
}

extern "C" fn child() {
    FORKING.with(|f| f.set(false));
    // The forking thread is this process's only thread; every other held id is lost (one it
    // took in another handler since our prepare is its own: `me`).
    let me = ID.try_with(Cell::get).unwrap_or(NONE);
    for id in 0..NEXT.load(Ordering::Relaxed) {
        if id == me {
            continue;
        }
        if let Some(w) = word(id) {
            if w.load(Ordering::Relaxed) == HELD {
                w.store(LOST, Ordering::Relaxed);
            }
        }
    }
    LOCK.unlock_raw();
}

/// Whether the handlers are registered ([`register_once`]).
static HANDLERS: AtomicU8 = AtomicU8::new(NOT_REGISTERED);

/// Registers the fork handlers, once per process (a fork child whose parent's thread was
/// registering them registers them: `register_once`).
pub(crate) fn register() {
    static ONCE: ForkOnceCell<()> = ForkOnceCell::new();
    ONCE.get_or_init(|| register_once(&HANDLERS, prepare, parent, child));
}

// The tests' child processes (also included by the heap's exit model tests: a test-only
// copy of a module of test helpers, not of the crate's code).
#[cfg(test)]
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/common/child.rs"]
mod child;

#[cfg(test)]
mod tests {
    use super::child;
    use super::{current, is_lost, locate};
    use std::time::Duration;

    #[test]
    fn ids_fill_blocks_of_doubling_size() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(1), (1, 0));
        assert_eq!(locate(2), (1, 1));
        assert_eq!(locate(3), (2, 0));
        assert_eq!(locate(19), (4, 4));
    }

    #[test]
    fn an_exited_threads_id_goes_to_the_next_thread() {
        // In a process of its own: other tests' threads took the id in between (it failed
        // once in 100 looks on a loaded machine, "id 2 not reused").
        let name = "pool::tid::tests::an_exited_threads_id_goes_to_the_next_thread";
        if !child::in_child(name, Duration::from_secs(60)) {
            return;
        }
        let here = current().unwrap();
        let a = std::thread::spawn(|| current().unwrap()).join().unwrap();
        assert!(!is_lost(a));
        assert_ne!(here, a);
        // The exited thread's id is the one released last: the next thread's.
        for _ in 0..3 {
            assert_eq!(std::thread::spawn(current).join().unwrap(), Some(a));
        }
    }
}
