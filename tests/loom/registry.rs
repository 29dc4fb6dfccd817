//! The registry of live heaps (`heap::heaps`, under the registry's `SpinLock`): threads
//! starting (`register` links the heap) and exiting (`heap_done` unlinks it) against a
//! statistics walk (`for_each_stats`). The fork models (`fork.rs`) use the same heaps.

use super::*;
use tieralloc::heaps::HeapList;
use tieralloc::sync::SpinLock;

/// A heap as the registry sees it: an id, whether it is a node heap, and its links.
pub(super) struct H {
    pub(super) id: usize,
    pub(super) shared: bool,
    link: Link<H>,
}

// SAFETY: the links are only touched under the registry lock (Links' contract).
unsafe impl Send for H {}
// SAFETY: as above.
unsafe impl Sync for H {}

impl H {
    pub(super) fn new(id: usize, shared: bool) -> H {
        H {
            id,
            shared,
            link: Link::new(),
        }
    }
    pub(super) fn ptr(&self) -> *mut H {
        self as *const H as *mut H
    }
}

links_through_field!(H);

/// The registry: its lock and its list.
pub(super) struct Registry {
    pub(super) lock: SpinLock,
    pub(super) heaps: HeapList<H>,
}

/// The ids of the heaps on the list starting at `first`, checking it is whole: each heap's
/// `prev` is the one before it, and no heap comes twice.
///
/// # Safety
/// The caller holds the list's lock (or is the child's only thread).
pub(super) unsafe fn whole(first: *mut H) -> Vec<usize> {
    let mut ids: Vec<usize> = Vec::new();
    let mut prev = std::ptr::null_mut();
    let mut h = first;
    while !h.is_null() {
        // SAFETY: a listed heap, its links guarded by the caller's lock.
        unsafe {
            assert_eq!(H::prev(h), prev, "a heap's prev is not the heap before it");
            assert!(!ids.contains(&(*h).id), "the registry is a cycle: {ids:?}");
            ids.push((*h).id);
            prev = h;
            h = H::next(h);
        }
    }
    ids
}

impl Registry {
    fn new() -> Registry {
        Registry {
            lock: SpinLock::new(),
            heaps: HeapList::new(),
        }
    }
    /// `register`'s step under the lock.
    fn register(&self, h: &H) {
        let _g = self.lock.lock();
        // SAFETY: we hold the lock; h is on no list (a heap registers once).
        unsafe { self.heaps.link(h.ptr()) };
    }
    /// `heap_done`'s step under the lock.
    fn unregister(&self, h: &H) {
        let _g = self.lock.lock();
        // SAFETY: we hold the lock; h is listed.
        unsafe { self.heaps.unlink(h.ptr()) };
    }
    /// `for_each_stats`: the ids of the listed heaps, the list checked whole.
    fn walk(&self) -> Vec<usize> {
        let _g = self.lock.lock();
        let mut ids = Vec::new();
        // SAFETY: we hold the lock.
        unsafe { self.heaps.for_each(|h| ids.push((*h).id)) };
        // SAFETY: as above.
        assert_eq!(ids, unsafe { whole(self.heaps.first()) });
        ids
    }
}

/// Two threads start and exit while one of them walks the registry as `for_each_stats` does:
/// heap 0 is listed throughout (a thread that lives on); heap 1's thread registers, walks and
/// exits; heap 2's registers and exits. The walk finds a whole list holding heaps 0 and 1 and
/// perhaps 2, never a heap twice; links written by one thread are read by the other only
/// after its lock released them (loom checks); at the end only heap 0 is listed and the
/// others' links are clear (they may be linked again: a new thread at the same address).
#[test]
fn registry_start_exit_and_stats_walk() {
    check(3, |yield_first| {
        let reg = Arc::new(Registry::new());
        let heaps = Arc::new([H::new(0, false), H::new(1, false), H::new(2, false)]);
        reg.register(&heaps[0]);
        let other = {
            let (reg, heaps) = (reg.clone(), heaps.clone());
            thread::spawn(move || {
                reg.register(&heaps[2]);
                reg.unregister(&heaps[2]);
            })
        };
        if yield_first {
            thread::yield_now();
        }
        reg.register(&heaps[1]);
        let mut seen = reg.walk();
        seen.sort();
        assert!(
            seen == [0, 1] || seen == [0, 1, 2],
            "the walk found {seen:?}"
        );
        reg.unregister(&heaps[1]);
        other.join().unwrap();
        assert_eq!(reg.walk(), [0]);
        for h in &heaps[1..] {
            // SAFETY: both threads are joined.
            unsafe {
                assert!(H::next(h.ptr()).is_null() && H::prev(h.ptr()).is_null());
            }
        }
        // A new thread whose heap lands at heap 2's address.
        reg.register(&heaps[2]);
        assert_eq!(reg.walk(), [2, 0]);
    });
}
