//! The registry of live heaps, heap tags, the pthread key whose destructor is the thread-exit
//! hook, and a heap's life: init, register, tear-down, moving to another node.
//!
//! Owns: `REGISTRY` (the list of live heaps and the tag bitmap, under its lock), the pthread
//! key, the heap states' transitions, and which node a heap draws from (`current_home`,
//! `follow_home`, `rehome`). May touch: the `Heap` fields (`super`), `counters` (retiring a
//! heap's), `slices` (letting go of segments), `free` (the last drain), `bins` (emptying the
//! queues), `tls`, the segment lists and tags of `heap::segment`, the huge cache,
//! `sys::os`, `topology::home` (the home node), `init` (start-up, the purge delay),
//! `heap::heaps` (the list's links and walk, kept there for the loom models), and `purger`
//! (its gate, held while a heap lets go).

use super::bins::DIRECT_SLOTS;
use super::counters::{settle_far, HeapStats, RETIRED, RETIRED_NET_BY_NODE};
use super::free::drain_delayed;
use super::slices::{for_each_used_page, for_each_used_page_on, let_go, release_own_page};
use super::tls::own;
use super::{empty_page, Heap, HeapRef, ACTIVE, DEAD, LEAVING};
use crate::heap::heaps::HeapList;
use crate::heap::list::Links;
use crate::heap::segment::{FIRST_TAG, MAX_NODES, NO_TAG};
use crate::heap::size_class::NBINS;
use crate::init;
use crate::sync::{once_begin, OnceStep, Ordering, SpinLock, ONCE_DONE, ONCE_UNINIT};
use crate::sys::os;
use crate::topology::home;
use core::cell::UnsafeCell;
use core::ptr;

// ---------------------------------------------------------------------------------------------
// Registry of live heaps (for statistics) and the thread-exit hook.

pub(super) struct Registry {
    pub(super) lock: SpinLock,
    /// The live heaps (`heap::heaps`: the list is loom-checked there).
    pub(super) heaps: HeapList<Heap>,
    /// Heap tags in use, one bit each; 0, `MAP_UNOWNED` and `NO_TAG` are never handed out.
    pub(super) tags: UnsafeCell<[u64; TAG_WORDS]>,
    /// The word of `tags` the next search starts at.
    pub(super) tag_cursor: UnsafeCell<usize>,
}
// SAFETY: `heaps`, the heaps' reg links and the tag bitmap are only touched with `lock` held.
unsafe impl Sync for Registry {}
pub(super) const TAG_WORDS: usize = (NO_TAG as usize + 1) / 64;
pub(super) static REGISTRY: Registry = Registry {
    lock: SpinLock::new(),
    heaps: HeapList::new(),
    tags: UnsafeCell::new({
        let mut t = [0u64; TAG_WORDS];
        t[0] = (1 << FIRST_TAG) - 1;
        t[TAG_WORDS - 1] = 1 << 63;
        t
    }),
    tag_cursor: UnsafeCell::new(0),
};

/// A tag no registered heap has, or [`NO_TAG`] if all are taken.
///
/// # Safety
/// The caller holds the registry lock.
pub(super) unsafe fn take_tag() -> u16 {
    // SAFETY: the registry lock guards the bitmap and the cursor (contract).
    unsafe {
        let tags = &mut *REGISTRY.tags.get();
        let cursor = &mut *REGISTRY.tag_cursor.get();
        for k in 0..TAG_WORDS {
            let w = (*cursor + k) % TAG_WORDS;
            if tags[w] != u64::MAX {
                let bit = (!tags[w]).trailing_zeros() as usize;
                tags[w] |= 1 << bit;
                *cursor = w;
                return (w * 64 + bit) as u16;
            }
        }
    }
    NO_TAG
}

/// Hands `tag` (from [`take_tag`]) back.
///
/// # Safety
/// The caller holds the registry lock, and no segment map entry holds `tag` any more.
pub(super) unsafe fn give_tag(tag: u16) {
    if tag == NO_TAG {
        return;
    }
    // SAFETY: the registry lock guards the bitmap (contract).
    unsafe { (*REGISTRY.tags.get())[tag as usize / 64] &= !(1 << (tag % 64)) };
}

impl Links for Heap {
    #[inline(always)]
    unsafe fn next(n: *mut Self) -> *mut Self {
        // SAFETY: n is a valid heap (contract).
        unsafe { (*n).reg_next }
    }
    #[inline(always)]
    unsafe fn set_next(n: *mut Self, next: *mut Self) {
        // SAFETY: as above.
        unsafe { (*n).reg_next = next }
    }
    #[inline(always)]
    unsafe fn prev(n: *mut Self) -> *mut Self {
        // SAFETY: as above.
        unsafe { (*n).reg_prev }
    }
    #[inline(always)]
    unsafe fn set_prev(n: *mut Self, prev: *mut Self) {
        // SAFETY: as above.
        unsafe { (*n).reg_prev = prev }
    }
}

/// Calls `f(counters, node)` for every live heap, then `f(RETIRED, None)` for exited threads.
pub fn for_each_stats(mut f: impl FnMut(&HeapStats, Option<u32>)) {
    let _g = REGISTRY.lock.lock();
    // SAFETY: we hold the registry lock, so listed heaps stay alive and linked; their counters
    // are atomics, so reading them while their owners bump them is no data race. `node` only
    // changes under this lock (see `retire_counters`).
    unsafe { REGISTRY.heaps.for_each(|h| f(&(*h).stats, Some((*h).node))) };
    f(&RETIRED, None);
}

/// Folds a heap's counters into the retired totals and zeroes them. The caller holds the
/// registry lock (readers of the totals and of `node` take it).
///
/// # Safety
/// The caller holds the registry lock, and `hp` is a heap no thread allocates with any more
/// (it is leaving, dead, or being moved with its thread stopped in `rehome`): its counters
/// are folded into the totals once.
pub(super) unsafe fn retire_counters(hp: &mut Heap) {
    let node = (hp.node as usize).min(MAX_NODES - 1);
    let (net, far) = hp.stats.net_and_far();
    RETIRED_NET_BY_NODE[node].fetch_add(net, Ordering::Relaxed);
    // Its far pages' blocks (as of its last settle_far) stay live on their nodes.
    for (r, f) in RETIRED_NET_BY_NODE.iter().zip(far) {
        if f != 0 {
            r.fetch_add(f, Ordering::Relaxed);
        }
    }
    hp.stats.merge_into(&RETIRED);
    hp.stats.reset();
}

/// `sync::once_begin`'s state word for the thread key (a fork child whose parent was making
/// it makes one again).
static KEY_STATE: crate::sync::AtomicUsize = crate::sync::AtomicUsize::new(ONCE_UNINIT);
/// Whether the key was made (read once `KEY_STATE` is done).
static KEY_MADE: crate::sync::AtomicBool = crate::sync::AtomicBool::new(false);
pub(super) static mut KEY: libc::pthread_key_t = 0;

pub(super) fn thread_key() -> Option<libc::pthread_key_t> {
    if KEY_STATE.load(Ordering::Acquire) != ONCE_DONE {
        // pthread_key_create allocates nothing of ours: never re-entered.
        if let OnceStep::Run { .. } = once_begin(&KEY_STATE, || false) {
            let mut k: libc::pthread_key_t = 0;
            // SAFETY: k is a valid out-pointer; the destructor is an extern "C" fn that lives
            // for the whole program.
            let r = unsafe { libc::pthread_key_create(&mut k, Some(thread_done)) };
            if r == 0 {
                // SAFETY: only the runner (once_begin) writes KEY, before publishing it.
                unsafe { KEY = k };
            }
            KEY_MADE.store(r == 0, Ordering::Relaxed);
            KEY_STATE.store(ONCE_DONE, Ordering::Release);
        }
    }
    if !KEY_MADE.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: KEY was written before KEY_STATE became done (release/acquire).
    Some(unsafe { KEY })
}

pub(super) extern "C" fn thread_done(arg: *mut libc::c_void) {
    let h = arg as *mut Heap;
    // SAFETY: the key's value is only ever set to the calling thread's own heap, and glibc runs
    // key destructors on that thread before its TLS is released.
    unsafe { heap_done(h) };
}

/// Makes `h` ready for use. Returns false if it cannot be (never, today; kept for OOM
/// handling of future per-heap metadata).
#[cold]
pub(super) fn heap_init(h: HeapRef) -> bool {
    if h.state == ACTIVE {
        return true;
    }
    if h.state == LEAVING || h.state == DEAD {
        return false;
    }
    // SAFETY: neither ACTIVE, LEAVING nor DEAD: the heap was never registered.
    unsafe { register(h, current_home()) };
    if let Some(k) = thread_key() {
        // SAFETY: k is a key we made; the value is the calling thread's own heap (heap_init
        // runs only on a thread's own heap: a node heap is registered by node_alloc).
        unsafe { libc::pthread_setspecific(k, h.as_ptr() as *const libc::c_void) };
    }
    true
}

/// The node the calling thread runs on now, as an index of the per-node arrays.
#[inline]
pub(super) fn current_home() -> u32 {
    (home::home_node() as usize).min(MAX_NODES - 1) as u32
}

/// Moves a thread's heap to the node the thread runs on now, if that changed (a node heap
/// never moves): through [`rehome_when_safe`], so not during a drain's walk. Returns whether
/// the home had changed.
///
/// # Safety
/// As for [`rehome_when_safe`]: `h` is active and the caller uses no page of `h` after this.
#[inline]
pub(super) unsafe fn follow_home(h: HeapRef) -> bool {
    if !h.shared {
        let node = current_home();
        if node != h.node {
            // SAFETY: forwarded contract.
            unsafe { rehome_when_safe(h, node) };
            return true;
        }
    }
    false
}

/// Marks `h` active on `node` and lists it in the registry.
///
/// # Safety
/// `h` is not linked in the registry, or is already ACTIVE (then this does nothing): a heap
/// that is listed but not ACTIVE (leaving, dead) would be linked twice and make a loop.
pub(super) unsafe fn register(mut h: HeapRef, node: u32) {
    init::init_once();
    if h.state == ACTIVE {
        // Registered already, by an allocation init_once made on this thread (in the
        // drop-in, glibc's pthread_atfork or atexit mallocs when its table grows):
        // linking it again would make the registry a loop.
        return;
    }
    // Mark active first: whatever the steps below allocate is served by this heap.
    h.state = ACTIVE;
    h.node = node;
    let now = os::now_ms();
    h.next_purge_ms = now + init::PURGE_DELAY_MS.load(Ordering::Relaxed);
    // A new heap is not quiet: other threads' passes leave it alone for a delay, as after a
    // collection (`purger::help`).
    h.collected_ms.store(now, Ordering::Relaxed);
    let _g = REGISTRY.lock.lock();
    if h.tag == NO_TAG {
        // SAFETY: we hold the registry lock.
        h.tag = unsafe { take_tag() };
    }
    // SAFETY: the registry lock guards the list head and every listed heap's links; h was
    // not ACTIVE, so it is on no list (this function's contract).
    unsafe { REGISTRY.heaps.link(h.as_ptr()) };
}

/// Hands everything of `h` back: called on thread exit (and by tests).
///
/// # Safety
/// `h` is the calling thread's heap, and nothing of it is in use by this thread's code.
pub unsafe fn heap_done(h: *mut Heap) {
    // SAFETY: h is ours (contract).
    let mut h = unsafe { HeapRef::new(h) };
    // The background purger stays out while the heap lets go (see `purger`).
    let _gate = super::purger::enter(h.as_ptr());
    if h.state != ACTIVE {
        return;
    }
    // SAFETY: nothing of h is in use (contract): its far pages' blocks as they are now.
    unsafe { settle_far(h) };
    h.state = LEAVING;
    // SAFETY: nothing of h is in use (contract), so no walk over its blocks is in progress.
    unsafe { release_all(h) };
    // Counters, registry, tag (release_all rewrote the map entries that held it).
    {
        let _g = REGISTRY.lock.lock();
        // SAFETY: we hold the registry lock; h is LEAVING, no longer allocated with.
        unsafe { retire_counters(&mut h) };
        // SAFETY: we hold the registry lock, and no map entry holds our tag any more.
        unsafe { give_tag(h.tag) };
        h.tag = NO_TAG;
        // SAFETY: the registry lock guards the list head and every listed heap's links; h
        // was ACTIVE, so it is listed.
        unsafe { REGISTRY.heaps.unlink(h.as_ptr()) };
    }
    h.state = DEAD;
    // Empty segments went to a pool: a sleeping purger unmaps them once they expire; and
    // this thread may be the program's last (the purger then ends the process).
    super::purger::note_thread_exit();
}

/// Lets go of every segment and cached span of `h`: empty ones to the pool, the rest to the
/// abandoned list of their node. Leaves `h` with no pages (its state is the caller's).
///
/// # Safety
/// `h` is in state LEAVING or ACTIVE, the caller uses no page or block of its queues after
/// this, and no walk over blocks of its pages is in progress (`walking` is false): every
/// page it had may belong to another thread when this returns.
pub(super) unsafe fn release_all(mut h: HeapRef) {
    // SAFETY: the segments on h's list are h's; the steps follow the module's exit invariant.
    unsafe {
        // 1. No more delayed frees onto us: wait out any in flight.
        for_each_used_page_on(h.segments, |p| (*p).thread_free.set_never_delayed());
        // 2. Take in what was delayed; it is all ours.
        drain_delayed(h);
        // 3. Collect remote frees and give back empty pages.
        let now = os::now_ms();
        let mut seg = h.segments;
        while !seg.is_null() {
            let next = (*seg).next;
            for_each_used_page(seg, |p| {
                (*p).collect();
                if (*p).used == 0 {
                    release_own_page(h, p, now, 0);
                }
            });
            // 4. Empty segments go to the pool; the rest are abandoned for others to adopt.
            // Nothing is purged here: a thread that exits should not pay for system calls
            // (each madvise of a multi-threaded process is a TLB shootdown on every CPU), and
            // a short-lived thread's memory is usually reused by the next one at once. The
            // pool unmaps what nobody took after the delay; an abandoned segment's free slices
            // are purged by the thread that adopts it or tends it (heap_collect).
            let_go(seg, now);
            seg = next;
        }
    }
    h.segments = ptr::null_mut();
    // 5. Huge spans we kept.
    h.huge_cache.clear();
    h.pages = [empty_page(); NBINS];
    h.direct = [empty_page(); DIRECT_SLOTS];
    h.tails = [ptr::null_mut(); NBINS];
    h.refilled = [ptr::null_mut(); NBINS];
    h.refilled_tail = [ptr::null_mut(); NBINS];
    h.refilled_silent.store(false, Ordering::Relaxed);
    h.refilled_trim_at = ptr::null_mut();
    h.trim_at = ptr::null_mut();
}

/// Moves the calling thread's heap to `node`: it lets go of its segments (they are adopted by
/// heaps of their own node, or by this one if it comes back) and draws from `node`'s pool from
/// the next allocation on.
///
/// # Safety
/// `h` is active, and as for [`release_all`]: the caller (a slow path) uses no page of it
/// after this, and no walk over blocks of its pages is in progress.
#[cold]
pub(super) unsafe fn rehome(mut h: HeapRef, node: u32) {
    // SAFETY: forwarded contract (no page of h in use): its far pages' blocks as they are.
    unsafe { settle_far(h) };
    h.state = LEAVING;
    // SAFETY: forwarded contract.
    unsafe { release_all(h) };
    let _g = REGISTRY.lock.lock();
    // SAFETY: we hold the registry lock; h is LEAVING until the move is done.
    unsafe { retire_counters(&mut h) };
    h.node = node;
    h.state = ACTIVE;
    drop(_g);
    super::purger::notify();
}

/// The node the calling thread's heap draws from (for `heap::probe`).
pub(crate) fn heap_node() -> u32 {
    // `node` is written only by this thread (and read under the registry lock by others).
    own().node
}

/// [`rehome`] from a tick, unless the tick is one of a drain's frees: moving then would
/// abandon the pages the rest of the drained list points into, and the walk would go on
/// freeing into pages another thread may adopt. The tick is then left one short, so the
/// next tick (after the walk) looks again. Ticks and collections run from slow paths that
/// use no page of the heap after them.
///
/// # Safety
/// `h` is active (ticks and collections look only at active heaps) and the caller uses no
/// page, block or segment of `h` it looked up before the call after it returns: the move gives
/// every segment away.
#[cold]
pub(super) unsafe fn rehome_when_safe(mut h: HeapRef, node: u32) {
    if h.walking {
        h.tick = h.tick.wrapping_sub(1);
        return;
    }
    // SAFETY: no walk is in progress (just checked); h is active and the caller uses no page
    // of h after this (this function's contract).
    unsafe { rehome(h, node) }
}
