//! Whether the calling thread may still ask a `thread_local::ThreadLocal` for its entry: the
//! pool's thread caches and the bump cache's per-thread lists are found that way.
//!
//! Owns: one thread-local state byte and a watch whose destructor marks the thread exiting.
//! May touch: nothing else (std's thread-locals only).
//!
//! The `thread_local` crate gives each thread an id, released by a thread-local destructor of
//! its own at thread exit; a lookup after that allocates a new id and then touches that
//! destructor's thread-local again, which panics, and a panic in a thread-local destructor
//! aborts the process. A guard kept in a thread-local whose destructor was registered before
//! the thread's first lookup (`thread_local! { static CONN: RefCell<Option<OwnedPoolGuard<..>>> }`
//! set on first use) is dropped after that, as is any pool used from such a destructor.
//!
//! So the first lookup on a thread registers a watch right after it: thread-local destructors
//! run in the reverse order of their registration, so the watch's runs before the id's guard
//! and marks the thread exiting while its id is still valid; from then on
//! [`with_thread`] declines, and the caller goes without the thread's cache (the shared stores,
//! a new object or bump, or a drop). What is left: a thread whose first lookup comes after
//! the id was released (a thread that used only other crates' `ThreadLocal`s before its
//! destructors ran): that lookup's panic is caught (the panic hook prints it) and the thread
//! declines from then on.

use core::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

/// No lookup on this thread yet.
const UNSEEN: u8 = 0;
/// Looked up, and the watch is registered after the id's guard.
const WATCHED: u8 = 1;
/// The watch has run (or a lookup failed): the thread's id may be gone.
const EXITING: u8 = 2;

thread_local! {
    // No destructor, so readable at every point of the thread's exit.
    static STATE: Cell<u8> = const { Cell::new(UNSEEN) };
    static WATCH: Watch = const { Watch };
}

struct Watch;

impl Drop for Watch {
    fn drop(&mut self) {
        STATE.with(|s| s.set(EXITING));
    }
}

/// Runs `lookup` (a `ThreadLocal` lookup for the calling thread) unless the thread's
/// `thread_local` id may be gone (see the module docs); `None` then.
#[inline(always)]
pub(crate) fn with_thread<R>(lookup: impl FnOnce() -> R) -> Option<R> {
    match STATE.with(Cell::get) {
        WATCHED => Some(lookup()),
        EXITING => None,
        _ => first(lookup),
    }
}

#[cold]
#[inline(never)]
fn first<R>(lookup: impl FnOnce() -> R) -> Option<R> {
    match panic::catch_unwind(AssertUnwindSafe(lookup)) {
        Ok(r) => {
            // After the lookup, which registered the id's guard if this is the thread's first.
            let state = if WATCH.try_with(|_| ()).is_ok() {
                WATCHED
            } else {
                EXITING
            };
            STATE.with(|s| s.set(state));
            Some(r)
        }
        Err(_) => {
            STATE.with(|s| s.set(EXITING));
            None
        }
    }
}
