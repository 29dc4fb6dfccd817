//! The registry of live heaps (`heap::heaps`, under the registry's `SpinLock`): threads
//! starting (`register` links the heap) and exiting (`heap_done` unlinks it) against a
//! statistics walk (`for_each_stats`), and against the background purger's walk
//! (`purger::pass`, `HeapList::for_each_pinned`). The fork models (`fork.rs`) use the same
//! heaps.

use super::*;
use tieralloc::gate;
use tieralloc::heaps::HeapList;
use tieralloc::sync::SpinLock;

/// A heap as the registry sees it: an id, whether it is a node heap, and its links.
pub(super) struct H {
    pub(super) id: usize,
    pub(super) shared: bool,
    link: Link<H>,
    /// The purger's gate (`purger::enter`): free, the owner's or the purger's.
    gate: AtomicU8,
    /// What the purger and the owner write under the gate (the heap's segment state).
    data: UnsafeCell<u32>,
    /// The thread has exited and its heap's memory is gone.
    gone: loom::sync::atomic::AtomicBool,
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
            gate: AtomicU8::new(FREE),
            data: UnsafeCell::new(0),
            gone: loom::sync::atomic::AtomicBool::new(false),
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

/// The background purger's walk (`purger::pass` through `HeapList::for_each_pinned`): it
/// pins a heap by taking its gate with the registry lock held (`gate::try_pin`, the real
/// code since review rev31; the owner's side is `gate::owner_enter` and `gate::leave`), purges it (writes
/// its segment state, `data`) with the lock released, and reads the next heap with the lock
/// held again before letting go of the gate.
fn purge_walk(reg: &Registry, purged: &mut Vec<usize>, mut during: impl FnMut(usize)) {
    // SAFETY: the lock is this list's and not held here; a pinned heap's owner takes its gate
    // before unlinking it (`exit`), and nobody holding the lock waits for a gate.
    unsafe {
        reg.heaps.for_each_pinned(
            &reg.lock,
            |h| gate::try_pin(&(*h).gate),
            |h| {
                assert!(
                    !(*h).gone.load(Ordering::Relaxed),
                    "purged a heap that is gone"
                );
                (*h).data.with_mut(|d| *d += 1);
                purged.push((*h).id);
                during((*h).id);
            },
            |h| gate::leave(&(*h).gate),
        )
    };
}

pub(super) use tieralloc::gate::FREE;

/// A thread's exit as `heap_done` does it: take the heap's gate (waiting for the purger to
/// leave), let go of its memory (writes `data`), unlink it under the lock, and then its
/// memory goes (glibc frees the thread's TLS): `gone`, and its links and data rewritten.
fn exit(reg: &Registry, h: &H) {
    gate::owner_enter(&h.gate);
    // SAFETY: we hold the gate: the purger is not in this heap (loom checks it).
    h.data.with_mut(|d| unsafe { *d += 100 });
    reg.unregister(h);
    gate::leave(&h.gate);
    h.gone.store(true, Ordering::Relaxed);
    // SAFETY: off the list; the model's stand-in for the memory's next use.
    unsafe {
        H::set_next(h.ptr(), std::ptr::null_mut());
        H::set_prev(h.ptr(), std::ptr::null_mut());
    }
    // SAFETY: the heap is gone: nobody may touch it any more (loom checks the purger's last
    // access happened before this).
    h.data.with_mut(|d| unsafe { *d = 0xdead });
}

/// The purger walks while heap 1's thread exits (heap 0's lives on, listed after heap 1):
/// the purger never touches heap 1 after its exit let go of it (loom checks every access to
/// its links and data happens before the exit's rewrite, and `gone` is never seen while
/// pinned), it visits heap 0 whatever heap 1 does, and heap 1 at most once.
#[test]
fn purger_walk_against_a_thread_exit() {
    check(3, |yield_first| {
        let reg = Arc::new(Registry::new());
        let heaps = Arc::new([H::new(0, false), H::new(1, false)]);
        reg.register(&heaps[0]);
        reg.register(&heaps[1]);
        let purger = {
            let reg = reg.clone();
            thread::spawn(move || {
                let mut purged = Vec::new();
                purge_walk(&reg, &mut purged, |_| {});
                purged
            })
        };
        if yield_first {
            thread::yield_now();
        }
        exit(&reg, &heaps[1]);
        let purged = purger.join().unwrap();
        assert!(
            purged == [1, 0] || purged == [0],
            "the purger visited {purged:?}"
        );
        assert_eq!(reg.walk(), [0]);
        // SAFETY: both threads are joined.
        let d0 = heaps[0].data.with(|d| unsafe { *d });
        assert_eq!(d0, 1, "heap 0 purged once");
    });
}

/// A thread starts and exits while the purger is inside a heap's purge: the registry lock is
/// free then (the purge of heap 0 waits until the other thread has registered heap 2 and
/// exited; were the lock held across the purge, neither could go on: broken copy, the walk
/// holding the lock through `visit`, and loom finds the two threads spinning for ever).
/// The purger visits heap 2 only if it was listed first, and heap 0 once.
#[test]
fn thread_start_and_exit_during_a_purge() {
    check(3, |_| {
        let reg = Arc::new(Registry::new());
        let heaps = Arc::new([H::new(0, false), H::new(2, false)]);
        reg.register(&heaps[0]);
        let done = Arc::new(AtomicUsize::new(0));
        let other = {
            let (reg, heaps, done) = (reg.clone(), heaps.clone(), done.clone());
            thread::spawn(move || {
                reg.register(&heaps[1]);
                exit(&reg, &heaps[1]);
                done.store(1, Ordering::Release);
            })
        };
        let mut purged = Vec::new();
        purge_walk(&reg, &mut purged, |id| {
            while id == 0 && done.load(Ordering::Acquire) == 0 {
                thread::yield_now();
            }
        });
        other.join().unwrap();
        assert!(
            purged == [0] || purged == [2, 0],
            "the purger visited {purged:?}"
        );
        assert_eq!(reg.walk(), [0]);
    });
}

/// The owner works in a gated slow path (`purger::enter`: `gate::owner_enter`, writes its
/// segments' state, `gate::leave`) while a pass purges its heap, twice in a row, with no
/// exit: neither takes any lock the other holds but the gate (the pass's registry lock is
/// not the owner's), so the gate's acquire and release are the only edge between the
/// owner's writes and the pass's (loom checks every access to `data`). The exit model above
/// does not need them: the owner's unlink takes the registry lock the pin is taken under.
/// Each side's writes all land: 2 from the passes that pinned it, 100 from the owner.
#[test]
fn an_owner_and_a_pass_take_turns_at_the_gate() {
    check(3, |yield_first| {
        let reg = Arc::new(Registry::new());
        let heaps = Arc::new([H::new(0, false)]);
        reg.register(&heaps[0]);
        let owner = {
            let heaps = heaps.clone();
            thread::spawn(move || {
                let h = &heaps[0];
                gate::owner_enter(&h.gate);
                // SAFETY: we hold the gate: the pass is not in this heap (loom checks it).
                h.data.with_mut(|d| unsafe { *d += 100 });
                gate::leave(&h.gate);
            })
        };
        if yield_first {
            thread::yield_now();
        }
        let mut purged = Vec::new();
        for _ in 0..2 {
            purge_walk(&reg, &mut purged, |_| {});
        }
        owner.join().unwrap();
        // SAFETY: both threads are joined.
        let d = heaps[0].data.with(|d| unsafe { *d });
        assert_eq!(
            d,
            100 + purged.len() as u32,
            "a write under the gate was lost"
        );
    });
}
