//! Locked, doubly linked lists of nodes nobody owns: the per-node segment pools and abandoned
//! lists (`heap::segment`), kept apart from the segments themselves so that loom can check
//! them on their own (tests/loom/), with test nodes whose links it tracks.
//!
//! Owns: [`LockedList`] (a [`SpinLock`], the head and a count) and the intrusive list
//! primitives [`list_push_front`], [`list_unlink`] and [`list_for_each`], which a heap also
//! uses for its own segment list and the registry for its list of heaps (`heap::heaps`). A
//! node says how to reach its links through [`Links`], and its list tag and owner through
//! [`ListNode`].
//!
//! Protocol: a node on a list has no owner (owner 0). Putting it on (`push_abandoned`) stores
//! the list's tag in the node and lets go of it (the owner store is a release, after every
//! write its last owner made); taking it off (`pop`, `claim`) clears the tag and gives it to
//! the taker. Both happen under the list's lock, whose acquire/release orders them, so the
//! taker sees everything the last owner wrote. `claim` takes a node only if it is still on
//! this very list, so two threads that race to claim the same node never both get it.
//!
//! A visit ([`LockedList::try_visit`], the background purger's `madvise` of abandoned
//! segments) works on one listed node at a time with the lock released: the node is marked
//! `busy` (under the lock), so it stays on the list and nobody takes it meanwhile (`claim`
//! waits for that node alone, `pop` and `remove_if` pass it over), and its fields are the
//! visitor's until it takes the lock again and clears the mark; the rest of the list is used
//! as usual (review rev36: the visitor held the lock across every due node's purge).

use crate::sync::{backoff, AtomicPtr, AtomicUsize, Ordering, SpinLock, UnsafeCell};
use core::ptr;

/// A node of an intrusive doubly linked list: how to reach its two links. The accessors are
/// only called by the holder of the list (its lock, or the owner of an unlocked list such as
/// a heap's own segments). Segments ([`ListNode`]) and the registry's heaps
/// (`heap::heaps::HeapList`) are both linked through it, with the same functions
/// ([`list_push_front`], [`list_unlink`], [`list_for_each`]).
pub trait Links: Sized {
    /// The node after `n`.
    ///
    /// # Safety
    /// `n` is a valid node and the caller has exclusive use of the list it is on.
    unsafe fn next(n: *mut Self) -> *mut Self;
    /// Sets the node after `n`.
    ///
    /// # Safety
    /// As [`Links::next`].
    unsafe fn set_next(n: *mut Self, next: *mut Self);
    /// The node before `n`.
    ///
    /// # Safety
    /// As [`Links::next`].
    unsafe fn prev(n: *mut Self) -> *mut Self;
    /// Sets the node before `n`.
    ///
    /// # Safety
    /// As [`Links::next`].
    unsafe fn set_prev(n: *mut Self, prev: *mut Self);
}

/// A node of a [`LockedList`]: its links, and its list tag and owner.
pub trait ListNode: Links {
    /// The tag of the list `n` is on (0: none). Read and written under that list's lock, but
    /// read by a claimer holding another list's lock, so it is atomic in the node.
    ///
    /// # Safety
    /// `n` is a valid node.
    unsafe fn list_tag(n: *mut Self) -> u8;
    /// Sets `n`'s list tag.
    ///
    /// # Safety
    /// `n` is a valid node and the caller holds the lock of the list it goes on or comes off.
    unsafe fn set_list_tag(n: *mut Self, tag: u8);
    /// `n`'s owner (0: none).
    ///
    /// # Safety
    /// `n` is a valid node.
    unsafe fn owner(n: *mut Self) -> usize;
    /// Gives `n` to `owner` (whose tag is `tag`), or lets go of it (`owner` 0): a release
    /// store, after which the new owner (or the next taker) sees the old one's writes.
    ///
    /// # Safety
    /// The caller is taking `n` off a list under its lock, or letting go of it as its owner.
    unsafe fn set_owner(n: *mut Self, owner: usize, tag: u16);
}

/// Pushes `n` at the front of the doubly linked list whose head is `*head`.
///
/// # Safety
/// The caller has exclusive use of the list (its lock, or it owns it) and `n` is on no list.
#[inline]
pub unsafe fn list_push_front<N: Links>(head: *mut *mut N, n: *mut N) {
    // SAFETY: exclusive use of the list and of n's links (contract).
    unsafe {
        let first = *head;
        N::set_prev(n, ptr::null_mut());
        N::set_next(n, first);
        if !first.is_null() {
            N::set_prev(first, n);
        }
        *head = n;
    }
}

/// Takes `n` out of the doubly linked list whose head is `*head`.
///
/// # Safety
/// The caller has exclusive use of the list and `n` is on it.
#[inline]
pub unsafe fn list_unlink<N: Links>(head: *mut *mut N, n: *mut N) {
    // SAFETY: exclusive use of the list (contract); n and its neighbours are on it.
    unsafe {
        let (p, nx) = (N::prev(n), N::next(n));
        if p.is_null() {
            *head = nx;
        } else {
            N::set_next(p, nx);
        }
        if !nx.is_null() {
            N::set_prev(nx, p);
        }
        N::set_next(n, ptr::null_mut());
        N::set_prev(n, ptr::null_mut());
    }
}

/// Calls `f` on every node of the list that starts at `first`, front to back (`f` must not
/// change the list).
///
/// # Safety
/// The caller has exclusive use of the list (its lock, or it owns it).
#[inline]
pub unsafe fn list_for_each<N: Links>(first: *mut N, mut f: impl FnMut(*mut N)) {
    let mut n = first;
    while !n.is_null() {
        f(n);
        // SAFETY: exclusive use of the list (contract): its links are stable.
        n = unsafe { N::next(n) };
    }
}

/// A locked list of nodes with no owner (a pool, or an abandoned list).
pub struct LockedList<N> {
    lock: SpinLock,
    head: UnsafeCell<*mut N>,
    /// Nodes on the list (readable without the lock, as a hint).
    pub count: AtomicUsize,
    /// What [`ListNode::list_tag`] says of a node on this list (0 for pools).
    tag: u8,
    /// The node a visit ([`try_visit`](Self::try_visit)) works on with the lock released
    /// (null: none). Written only under the lock; read under it, or outside it by a claimer
    /// waiting for that node (a hint: it looks again under the lock).
    busy: AtomicPtr<N>,
}

// SAFETY: `head` and the links of listed nodes are only touched with `lock` held; the nodes
// are only reached through raw pointers, handed between threads by the lock.
unsafe impl<N> Sync for LockedList<N> {}
// SAFETY: as above; the list holds nothing tied to a thread.
unsafe impl<N> Send for LockedList<N> {}

impl<N: ListNode> LockedList<N> {
    /// An empty list.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self::tagged(0)
    }
    /// An empty list.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self::tagged(0)
    }

    /// An empty abandoned list whose nodes carry `tag` (not 0).
    #[cfg(not(loom))]
    pub const fn tagged(tag: u8) -> Self {
        LockedList {
            lock: SpinLock::new(),
            head: UnsafeCell::new(ptr::null_mut()),
            count: AtomicUsize::new(0),
            tag,
            busy: AtomicPtr::new(ptr::null_mut()),
        }
    }
    /// An empty abandoned list whose nodes carry `tag` (not 0).
    #[cfg(loom)]
    pub fn tagged(tag: u8) -> Self {
        LockedList {
            lock: SpinLock::new(),
            head: UnsafeCell::new(ptr::null_mut()),
            count: AtomicUsize::new(0),
            tag,
            busy: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Pushes `n` (which nobody owns) at the front.
    ///
    /// # Safety
    /// `n` is a node with owner 0 that is on no list.
    pub unsafe fn push(&self, n: *mut N) {
        let _g = self.lock.lock();
        // SAFETY: we hold the lock; n is unlisted and unowned.
        unsafe { self.push_locked(n) }
    }

    /// [`push`](Self::push) with the lock already held.
    ///
    /// # Safety
    /// The caller holds `lock`; `n` is a node with owner 0 that is on no list.
    unsafe fn push_locked(&self, n: *mut N) {
        // SAFETY: the caller holds the lock, which guards the head and the links; see `push`.
        self.head.with_mut(|h| unsafe { list_push_front(h, n) });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes `n` off this list, with the lock already held.
    ///
    /// # Safety
    /// The caller holds `lock` and `n` is on this list.
    unsafe fn unlink_locked(&self, n: *mut N) {
        // SAFETY: the caller holds the lock and n is on this list.
        self.head.with_mut(|h| unsafe { list_unlink(h, n) });
        self.count.fetch_sub(1, Ordering::Relaxed);
    }

    /// The node a visit works on, if any (see [`busy`](Self::busy)).
    ///
    /// # Safety
    /// The caller holds `lock`.
    #[inline]
    unsafe fn busy_locked(&self) -> *mut N {
        self.busy.load(Ordering::Relaxed)
    }

    /// Pops the front node, giving it to `owner`, whose tag is `tag`. A node a visit works on
    /// is passed over (the next one is taken; null if it is the only one).
    pub fn pop(&self, owner: usize, tag: u16) -> *mut N {
        if self.count.load(Ordering::Relaxed) == 0 {
            return ptr::null_mut();
        }
        let _g = self.lock.lock();
        // SAFETY: we hold the lock, so the head and the listed nodes are ours to change.
        unsafe {
            let mut n = self.head.with(|h| *h);
            if !n.is_null() && n == self.busy_locked() {
                n = N::next(n);
            }
            if !n.is_null() {
                self.unlink_locked(n);
                N::set_list_tag(n, 0);
                N::set_owner(n, owner, tag);
            }
            n
        }
    }

    /// Takes `n` off the list for `owner` (tag `tag`) if it is still on it. If a visit works
    /// on `n` right now ([`try_visit`](Self::try_visit)), waits (without the lock) until it
    /// is done with `n`, then looks again: it waits for that node's visit only, never for a
    /// visit of another node, and never gives up on a listed node.
    ///
    /// # Safety
    /// `n` must be a node that cannot go away while we look at it (for a segment: the caller
    /// holds a live block in it).
    pub unsafe fn claim(&self, n: *mut N, owner: usize, tag: u16) -> bool {
        let mut spins = 0u32;
        loop {
            {
                let _g = self.lock.lock();
                // SAFETY: we hold the lock, which guards the tags of this list's nodes, the
                // links and `busy`.
                unsafe {
                    if n != self.busy_locked() {
                        if N::list_tag(n) != self.tag || N::owner(n) != 0 {
                            return false;
                        }
                        self.unlink_locked(n);
                        N::set_list_tag(n, 0);
                        N::set_owner(n, owner, tag);
                        return true;
                    }
                }
            }
            // Visited: the visitor takes the lock again to clear the mark, so we wait with
            // it released (the read is a hint; the decision is made under the lock above).
            while self.busy.load(Ordering::Relaxed) == n {
                backoff(&mut spins);
            }
        }
    }

    /// Lets go of `n` (its owner's last step) and pushes it, marked as on this list.
    ///
    /// # Safety
    /// The caller owns `n`, which is on no list.
    pub unsafe fn push_abandoned(&self, n: *mut N) {
        let _g = self.lock.lock();
        // SAFETY: we hold the lock; n is unlisted and its owner (us) lets go of it here.
        unsafe {
            N::set_list_tag(n, self.tag);
            N::set_owner(n, 0, 0);
            self.push_locked(n);
        }
    }

    /// [`push_abandoned`](Self::push_abandoned), at the back: after a visit, so that the next
    /// visitor tends another node first.
    ///
    /// # Safety
    /// As for `push_abandoned`.
    pub unsafe fn push_abandoned_back(&self, n: *mut N) {
        let _g = self.lock.lock();
        // SAFETY: we hold the lock, which guards the head and the links; n is unlisted.
        unsafe {
            N::set_list_tag(n, self.tag);
            N::set_owner(n, 0, 0);
            let last = self.head.with(|h| *h);
            if last.is_null() {
                self.head.with_mut(|h| list_push_front(h, n));
            } else {
                let mut last = last;
                while !N::next(last).is_null() {
                    last = N::next(last);
                }
                N::set_next(last, n);
                N::set_prev(n, last);
                N::set_next(n, ptr::null_mut());
            }
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// If the lock is free right now, unlinks every node `expired` says yes to and hands it
    /// to `gone` (after it is off the list); a node a visit works on is passed over. Returns
    /// how many went, 0 if the lock was busy.
    pub fn remove_if(
        &self,
        mut expired: impl FnMut(*mut N) -> bool,
        mut gone: impl FnMut(*mut N),
    ) -> usize {
        if self.count.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let Some(_g) = self.lock.try_lock() else {
            return 0;
        };
        let mut k = 0;
        // SAFETY: we hold the lock, so the listed nodes and their links are ours to change.
        unsafe {
            let busy = self.busy_locked();
            let mut n = self.head.with(|h| *h);
            while !n.is_null() {
                let next = N::next(n);
                if n != busy && expired(n) {
                    self.unlink_locked(n);
                    gone(n);
                    k += 1;
                }
                n = next;
            }
        }
        k
    }

    /// If the lock is free right now, calls `f` on every node, front to back, with the lock
    /// held (`f` must not touch this list, nor take another list's lock); a node a visit
    /// works on is passed over (its fields are the visitor's). Returns false, having called
    /// nothing, if the lock was busy.
    pub fn try_for_each(&self, mut f: impl FnMut(*mut N)) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let Some(_g) = self.lock.try_lock() else {
            return false;
        };
        // SAFETY: we hold the lock, so the listed nodes, their links and `busy` are stable.
        unsafe {
            let busy = self.busy_locked();
            list_for_each(self.head.with(|h| *h), |n| {
                if n != busy {
                    f(n)
                }
            })
        };
        true
    }

    /// A visit: if the lock is free right now and no other visit is under way, walks the
    /// list front to back and, for every node `due` says yes to (asked with the lock held),
    /// calls `work` on it with the lock released. Meanwhile the node is marked busy: it stays
    /// on the list, nobody takes it ([`claim`](Self::claim) waits for it, [`pop`](Self::pop)
    /// and [`remove_if`](Self::remove_if) pass it over, [`try_for_each`](Self::try_for_each)
    /// does not show it), so `work` has it as the lock's holder would, while the other
    /// nodes are pushed, popped and claimed as usual. The walk goes on from that node's
    /// successor once the lock is taken again (the node is still listed, so its link is
    /// valid). Returns false, having called nothing, if the lock was busy or a visit is
    /// under way. `due` must not touch this list; `work` must not take this list's lock
    /// (nor wait for anyone who may: it holds up the claims of its node).
    pub fn try_visit(
        &self,
        mut due: impl FnMut(*mut N) -> bool,
        mut work: impl FnMut(*mut N),
    ) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let Some(mut g) = self.lock.try_lock() else {
            return false;
        };
        // SAFETY: we hold the lock.
        if !unsafe { self.busy_locked() }.is_null() {
            return false;
        }
        // SAFETY: we hold the lock, which guards the head.
        let mut n = unsafe { self.head.with(|h| *h) };
        while !n.is_null() {
            if due(n) {
                self.busy.store(n, Ordering::Relaxed);
                drop(g);
                work(n);
                g = self.lock.lock();
                self.busy.store(ptr::null_mut(), Ordering::Relaxed);
            }
            // SAFETY: we hold the lock; n is still on this list (nobody takes a busy node),
            // so its link is this list's.
            n = unsafe { N::next(n) };
        }
        drop(g);
        true
    }

    /// Calls `f` on every node, front to back, with the lock held (`f` must not touch this
    /// list). For the models' checks.
    #[cfg(any(loom, test))]
    pub fn for_each(&self, f: impl FnMut(*mut N)) {
        let _g = self.lock.lock();
        // SAFETY: we hold the lock.
        unsafe { self.for_each_held(f) }
    }

    /// [`for_each`](Self::for_each) by a thread that already holds the lock (taken with
    /// [`lock_for_fork`](Self::lock_for_fork)).
    ///
    /// # Safety
    /// The caller holds the lock.
    #[cfg(any(loom, test))]
    pub unsafe fn for_each_held(&self, f: impl FnMut(*mut N)) {
        // SAFETY: the caller holds the lock, so the links are stable.
        unsafe { list_for_each(self.head.with(|h| *h), f) }
    }

    /// Holds the lock across `fork` (see `heap::thread::fork`).
    pub fn lock_for_fork(&self) {
        self.lock.lock_raw();
    }
    /// Releases it after `fork`, in parent or child.
    pub fn unlock_after_fork(&self) {
        self.lock.unlock_raw();
    }

    /// In a fork child, with the lock held (from [`lock_for_fork`](Self::lock_for_fork)):
    /// forgets a visit under way in the parent (its visitor does not exist here, and a claim
    /// of its node would wait forever). The purger's own fork handler waits out its passes,
    /// so none should be.
    pub fn forget_visit_in_child(&self) {
        self.busy.store(ptr::null_mut(), Ordering::Relaxed);
    }
}

impl<N: ListNode> Default for LockedList<N> {
    fn default() -> Self {
        Self::new()
    }
}
