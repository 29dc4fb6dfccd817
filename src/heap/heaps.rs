//! The list of live heaps behind the heap registry (`heap::thread::registry`), kept apart
//! from the thread heap so that loom can check it with the real code (tests/loom/).
//!
//! Owns: [`HeapList`], the head of a doubly linked list of heaps, linked through
//! `heap::list`'s [`Links`] and list functions (the segment lists' own). May touch: `sync`,
//! `heap::list` (the link trait and the list primitives). The lock that guards the list is
//! the registry's (the caller's): every method but `new` and `for_each_pinned` (which takes
//! and releases it) is for a thread that holds it, or for the fork child's single thread.
//! Invariants: a heap is on the list at most once, `prev` and `next` agree, the list has no
//! cycle; after [`HeapList::split_after_fork`] the list holds exactly the heaps its `keep`
//! said yes to, so a dead heap's address, which glibc gives a new thread of the child, is
//! linked again only after it was taken off.

use super::list::{list_for_each, list_push_front, list_unlink, Links};
use crate::sync::{SpinLock, UnsafeCell};
use core::ptr;

/// The head of the list of live heaps.
pub struct HeapList<N> {
    head: UnsafeCell<*mut N>,
}

// SAFETY: the head and the listed heaps' links are only touched with the registry lock held
// (every method's contract); the heaps are reached through raw pointers only.
unsafe impl<N> Sync for HeapList<N> {}
// SAFETY: as above; the list holds nothing tied to a thread.
unsafe impl<N> Send for HeapList<N> {}

impl<N: Links> HeapList<N> {
    /// An empty list.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        HeapList {
            head: UnsafeCell::new(ptr::null_mut()),
        }
    }
    /// An empty list.
    #[cfg(loom)]
    pub fn new() -> Self {
        HeapList {
            head: UnsafeCell::new(ptr::null_mut()),
        }
    }

    /// The first heap (null if none).
    ///
    /// # Safety
    /// The caller holds the registry lock.
    #[inline]
    pub unsafe fn first(&self) -> *mut N {
        // SAFETY: the registry lock guards the head (contract).
        self.head.with(|h| unsafe { *h })
    }

    /// Links `n` at the front.
    ///
    /// # Safety
    /// The caller holds the registry lock and `n` is on no list (linking a listed heap again
    /// would make a cycle).
    #[inline]
    pub unsafe fn link(&self, n: *mut N) {
        // SAFETY: the lock guards the head and every listed heap's links (contract).
        self.head.with_mut(|h| unsafe { list_push_front(h, n) });
    }

    /// Takes `n` off the list and clears its links.
    ///
    /// # Safety
    /// The caller holds the registry lock and `n` is on this list.
    #[inline]
    pub unsafe fn unlink(&self, n: *mut N) {
        // SAFETY: the lock guards the head and the links; n and its neighbours are listed.
        self.head.with_mut(|h| unsafe { list_unlink(h, n) });
    }

    /// Calls `f` on every heap, front to back (`f` must not change the list).
    ///
    /// # Safety
    /// The caller holds the registry lock.
    #[inline]
    pub unsafe fn for_each(&self, f: impl FnMut(*mut N)) {
        // SAFETY: the lock keeps the listed heaps alive and their links stable (contract).
        unsafe { list_for_each(self.first(), f) }
    }

    /// Visits, front to back, each heap that `pin` pins, with `lock` (this list's) released
    /// during the visit: `pin(h)` runs with the lock held and says whether it pinned `h`;
    /// `visit(h)` runs without the lock; `unpin(h)` runs with the lock held again, once the
    /// heap after `h` has been read. A heap put on the list meanwhile may be missed (it goes
    /// in at the front); one taken off is not visited.
    ///
    /// # Safety
    /// `lock` guards this list and the caller does not hold it. A pinned heap stays on the
    /// list (so valid, and its links are this list's) until it is unpinned: whoever takes it
    /// off waits for the pin first. And nobody waits for a pin while holding `lock` (the
    /// walk takes the lock again while it holds one).
    pub unsafe fn for_each_pinned(
        &self,
        lock: &SpinLock,
        mut pin: impl FnMut(*mut N) -> bool,
        mut visit: impl FnMut(*mut N),
        mut unpin: impl FnMut(*mut N),
    ) {
        let mut g = lock.lock();
        // SAFETY: with the lock held the listed heaps are valid and their links stable; a
        // pinned heap stays listed while the lock is released (contract), so its `next`,
        // read with the lock held again, is a listed heap or null.
        unsafe {
            let mut h = self.first();
            while !h.is_null() {
                if !pin(h) {
                    h = N::next(h);
                    continue;
                }
                drop(g);
                visit(h);
                g = lock.lock();
                let next = N::next(h);
                unpin(h);
                h = next;
            }
        }
        drop(g);
    }

    /// In a fork child: keeps on the list only the heaps `keep` says yes to (each asked once,
    /// front to back) and returns the others, linked through the same links into a list of
    /// their own (null if none). Both lists come out whole, in reverse order.
    ///
    /// # Safety
    /// The caller holds the registry lock and is the process's only thread; `keep` does not
    /// touch the links.
    pub unsafe fn split_after_fork(&self, mut keep: impl FnMut(*mut N) -> bool) -> *mut N {
        let mut live: *mut N = ptr::null_mut();
        let mut dead: *mut N = ptr::null_mut();
        // SAFETY: single-threaded with the lock held (contract): the links are ours.
        unsafe {
            let mut h = self.first();
            while !h.is_null() {
                let next = N::next(h);
                let list = if keep(h) { &mut live } else { &mut dead };
                list_push_front(list, h);
                h = next;
            }
            self.head.with_mut(|h| *h = live);
        }
        dead
    }
}

impl<N: Links> Default for HeapList<N> {
    fn default() -> Self {
        Self::new()
    }
}
