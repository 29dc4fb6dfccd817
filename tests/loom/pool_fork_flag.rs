//! The pools' fork flag (`pool::store`, `pool::tid`: review rev39) with the real
//! `SpinLock::lock_unless_held_here`: the forking thread takes the lock (the prepare handler's
//! `lock_raw`), sets its thread-local flag, and a fork handler registered before the pools'
//! (run between our prepare and our parent handler, on the forking thread) uses the store
//! without the lock; then the parent handler clears the flag and lets the lock go, and that
//! thread's next use takes the lock again. Another thread using the store meanwhile waits for
//! the lock the whole time: it never gets `None` (its flag is clear), never sees the two words
//! the forking thread changes one after the other apart (loom's cells check that no access
//! overlaps the forking thread's), and every change is kept.

use super::*;
use std::cell::Cell;
use tieralloc::sync::SpinLock;

loom::thread_local! {
    /// `pool::store`'s and `pool::tid`'s `FORKING`: set by the prepare handler on the forking
    /// thread once it holds the lock, cleared by the parent (or child) handler before it
    /// lets go.
    static FORKING: Cell<bool> = Cell::new(false);
}

/// A store: its lock and two words every use changes together.
struct Store {
    lock: SpinLock,
    words: UnsafeCell<(u32, u32)>,
}

// SAFETY: `words` is touched only under `lock`, or by the forking thread while it holds it.
unsafe impl Sync for Store {}

/// One use of the store (`Store::push`): the lock unless this thread holds it for a fork.
fn use_store(s: &Store) -> bool {
    let g = s.lock.lock_unless_held_here(|| FORKING.with(Cell::get));
    let locked = g.is_some();
    s.words.with_mut(|w| {
        // SAFETY: under the lock, or on the forking thread holding it (loom checks it).
        let w = unsafe { &mut *w };
        assert_eq!(w.0, w.1, "seen half-changed");
        w.0 += 1;
        thread::yield_now();
        w.1 += 1;
    });
    drop(g);
    locked
}

#[test]
fn a_fork_handlers_pool_use_on_the_forking_thread_is_never_seen_half_done() {
    loom::model(|| {
        let s = Arc::new(Store {
            lock: SpinLock::new(),
            words: UnsafeCell::new((0, 0)),
        });
        let other = {
            let s = s.clone();
            thread::spawn(move || use_store(&s))
        };
        // The forking thread: prepare (every lock, then the flag), a handler registered
        // before ours, parent (the flag, then the locks), and an ordinary use after.
        s.lock.lock_raw();
        FORKING.with(|f| f.set(true));
        assert!(!use_store(&s), "the forking thread waited for its own lock");
        FORKING.with(|f| f.set(false));
        s.lock.unlock_raw();
        assert!(use_store(&s), "after the fork: the lock again");
        assert!(
            other.join().unwrap(),
            "another thread went on without the lock"
        );
        s.words.with(|w| {
            // SAFETY: every other thread is joined.
            assert_eq!(unsafe { *w }, (3, 3));
        });
    });
}
