//! fork: the `pthread_atfork` handlers that keep the allocator whole in a child process.
//!
//! Owns: the handlers and the child's reset. May touch everything of `heap::thread` (it is a
//! child module, for the registry and the heaps' fields), `heap::segment` (the map, the lists),
//! `heap::huge` (the registry's claims), `heap::route` (the tier budgets' reservations) and `heap::atfork` (the handlers' lock order and the
//! resets of a page's delayed-free word and of a dead heap's delayed stack, kept there for the
//! loom models).
//!
//! In the child only the thread that forked exists. Every other thread's heap is dead, but it
//! is still listed in the registry, its segments still name it as their owner (the header's
//! `owner` is the heap's address, the segment map's entry its tag), and other dead threads may
//! have been halfway through a delayed free (a page left in `DELAYED_FREEING`) or through a
//! visit of a huge object (its registry slot left claimed). glibc gives the dead threads'
//! stacks, and the TLS blocks on them where the heaps live, to the threads the child creates:
//! a new thread's heap lands at a dead heap's address, so a stale registry link makes the
//! list a cycle, and a stale owner makes its frees take blocks of pages that are not on its
//! queues for its own. The child handler therefore, before `fork` returns:
//! - keeps in the registry only the forking thread's heap and the node heaps;
//! - finds every segment whose header names a dead heap, through the segment map (which
//!   catches a segment in transit between a list and the heap's own, and one whose map entry
//!   its taker had not written yet; at this point no thread but ours exists, so a dead
//!   heap's address names it alone);
//! - QUARANTINES those of a dead heap the fork caught inside a gated slow path (its copied
//!   gate reads `OWNER`, see `gate`): that thread may have left them half changed (slices off
//!   `free_slices` not yet in `used_pages`, a page's descriptors half written), so they are
//!   never adopted, listed, pooled, purged or unmapped; their owner is `QUARANTINED` (no
//!   heap's address, so a new heap that lands where the caught one was owns none of them),
//!   their map entry `MAP_UNOWNED`, and every free into them is dropped
//!   (`free::free_other_slow`); they are counted in `stats()` (`segments_quarantined`);
//! - abandons those of every other dead heap, so that the threads of the child adopt them
//!   when they free into them; the blocks on such a heap's delayed stack go to their pages'
//!   own lists; every dead heap's counters go to the retired totals and its tag is free again;
//! - puts every page of a live heap left in `DELAYED_FREEING` back to the state the dead
//!   freer found it in, and drops every claim on a huge object.
//!
//! What a dead thread was holding in its hands is lost (memory, never correctness): a block it
//! was freeing, a segment it was handing to a pool, the huge mappings it had cached, and the
//! whole of every segment its heap held if it was inside a slow path (review rev51: 4 MiB a
//! segment, mapped for the child's life).
//!
//! Lock order, everywhere in the allocator: the label names' `NAMES_LOCK` (held alone, by
//! `label_id`), the label heaps' `CREATE` lock (held only to make
//! one, with no other lock), a node or label heap's lock, then the registry's, then the
//! segment lists' (`node_alloc` and `label_alloc` register their heap under its lock).
//! `fork_prepare` takes them in that order, after glibc's stdio list lock
//! (`os::stdio_list_lock`, which glibc's `fork` would take after the handlers, while a
//! thread holding it may wait for a stream whose holder allocates: review rev52), so no
//! thread holds one of them across the fork, and waits for nothing else: no other thread is
//! held up, before or after (review rev51: the
//! gate pins of ded2978 did, and hung a program whose thread waited at its pinned gate
//! holding a lock that a prepare handler registered before ours, or glibc's `fork` after the
//! handlers, takes: tests/fork_atfork_lock.rs). A dead heap the fork caught between two calls
//! left its segments consistent but for what its ungated steps leave: a block popped but
//! not yet counted, a free list half linked (a block lost, never a page or segment
//! inconsistent), and a refill cut halfway, `free` and `local_free` starting at the same
//! block, which `abandon_dead` undoes (`Page::forget_cut_refill`).
//!
//! Assumed of the kernel: the child's copy of each other thread's memory holds that thread's
//! stores up to a point of its program order (a thread that stores to a page already copied
//! waits in the fault until the copy is done), so a copy that holds a change a slow path made
//! holds that path's `OWNER` in the gate too.

use super::counters::note_far_abandoned;
use super::free::free_delayed;
use super::labels::{label_heaps, CREATE, NAMES_LOCK};
use super::node::NODE_HEAPS;
use super::registry::{give_tag, retire_counters, REGISTRY};
use super::slices::{for_each_used_page, for_each_used_page_on, let_go};
use super::tls::heap;
use super::{Heap, HeapRef, DEAD};
use crate::heap::huge;
use crate::heap::segment::{
    self, page_of, segment_of, Segment, SegmentKind, SegmentList, ABANDONED, ABANDONED_FULL,
    BYTES_QUARANTINED, NO_TAG, PAGE_IN_FULL, POOLS, QUARANTINED, SEGMENTS_QUARANTINED,
};
use crate::heap::{atfork, gate};
use crate::sync::{register_once, AtomicU8, Ordering, SpinLock, NOT_REGISTERED, REGISTERED};
use crate::sys::os;
use core::ptr;

/// Every segment list, in the order `fork_prepare` locks them.
fn lists() -> impl Iterator<Item = &'static SegmentList> {
    POOLS
        .iter()
        .chain(ABANDONED.iter())
        .chain(ABANDONED_FULL.iter())
}

/// The node heaps' locks, then the label heaps' (those made so far: a fixed set while the
/// label heaps' `CREATE` lock is held, which the handlers take before and drop after).
fn node_heap_locks() -> impl Iterator<Item = &'static SpinLock> {
    NODE_HEAPS
        .iter()
        .map(|nh| &nh.lock)
        .chain(label_heaps().map(|lh| &lh.lock))
}

extern "C" fn fork_prepare() {
    // Registered, as this runs (see `register_once`).
    HANDLERS.store(REGISTERED, Ordering::Relaxed);
    // First, before any lock of ours: glibc's `fork` takes it after this handler, and a
    // thread holding it (`fflush(NULL)`) may wait for a stream whose holder is allocating and
    // needs one of our locks (review rev52: a `getline`'s free adopting an abandoned segment
    // under the list's lock; see `os`).
    os::stdio_list_lock();
    // The allocator's locks only: no thread is held up, so this waits for no thread but
    // one holding one of them (for a moment, inside the allocator). A thread inside a gated
    // slow path is not waited for: the child quarantines its segments (`reset_after_fork`).
    lock_all();
}

extern "C" fn fork_parent() {
    unlock_all();
    os::stdio_list_unlock();
}

/// Takes every lock of the allocator, in the order of the module's comment.
fn lock_all() {
    // The label names' lock (`label_id`, which holds no other lock and takes none under it):
    // a thread filling a name slot across the fork would leave it held in the child.
    NAMES_LOCK.lock_raw();
    // First: no label heap is made (and locked by its maker) once the set is read below.
    CREATE.lock_raw();
    atfork::prepare(node_heap_locks(), &REGISTRY.lock, lists());
}

/// Lets go of what [`lock_all`] took.
fn unlock_all() {
    atfork::parent(node_heap_locks(), &REGISTRY.lock, lists());
    CREATE.unlock_raw();
    NAMES_LOCK.unlock_raw();
}

extern "C" fn fork_child() {
    // The child has one thread: the locks only keep it from itself now. The lists' and the
    // node heaps' go first (the reset pushes segments); the registry's stays held, since the
    // reset rewrites the registry.
    atfork::child(node_heap_locks(), lists());
    // SAFETY: we are the child's only thread and hold the registry lock; every lock a dead
    // thread could have held was taken by fork_prepare before the fork.
    unsafe { reset_after_fork() };
    // The tier budgets' room held by threads the child does not have.
    crate::heap::route::forget_reservations_after_fork();
    REGISTRY.lock.unlock_raw();
    CREATE.unlock_raw();
    NAMES_LOCK.unlock_raw();
    os::stdio_list_reset();
}

/// Whether the heap's fork handlers are registered ([`register_once`]).
static HANDLERS: AtomicU8 = AtomicU8::new(NOT_REGISTERED);
/// Registers the fork handlers (once, from process initialisation, which a fork child whose
/// parent was in the middle of it runs again: `init::init_once`).
pub(crate) fn register_fork_handlers() {
    register_once(&HANDLERS, fork_prepare, fork_parent, fork_child);
}

/// The child's reset (see the module's comment).
///
/// # Safety
/// Called only from `fork_child`: the calling thread is the process's only one, and it holds
/// the registry lock.
unsafe fn reset_after_fork() {
    huge::clear_claims_after_fork();
    let me = heap();
    // SAFETY: single-threaded (contract): every heap in the registry stays where it is, and
    // the dead ones' fields are ours to rewrite; the registry lock is held.
    unsafe {
        // 1. Split the registry: the live heaps stay, the dead ones go on a list of their own
        //    (through the same links).
        let dead = REGISTRY.heaps.split_after_fork(|h| h == me || (*h).shared);
        // 2. Live heaps: no remote free is in flight any more.
        REGISTRY.heaps.for_each(|h| unstick_delayed_frees(h));
        if dead.is_null() {
            return;
        }
        // 3. Every segment whose header names a dead heap, found through the map (which
        //    catches a segment in transit between a list and the heap's own, and one whose
        //    map entry its taker had not written yet): quarantined if the fork caught that
        //    heap inside a slow path (its copied gate reads OWNER), else abandoned. No thread
        //    but ours exists yet, so a dead heap's address names it alone.
        let now = os::now_ms();
        segment::for_each_segment(|seg, _| {
            if (*seg).kind != SegmentKind::Normal {
                return;
            }
            let owner = (*seg).owner.load(Ordering::Relaxed);
            if owner == 0 || owner == QUARANTINED {
                return;
            }
            match dead_heap(dead, owner) {
                Some(d) if caught(d) => quarantine(seg),
                Some(_) => abandon_dead(seg, now),
                // A live heap's (ours, a node or label heap): left as it is.
                None => {}
            }
        });
        // 4. Their delayed blocks, counters and tags; then they are dead for good.
        let mut d = dead;
        while !d.is_null() {
            let next = (*d).reg_next;
            if !caught(d) {
                return_delayed(d);
            }
            // A caught heap's stack is left as it is: its blocks are in quarantined segments
            // (a drain it was in the middle of took them into its hands: lost either way).
            settle_dead(d);
            retire_counters(&mut *d);
            give_tag((*d).tag);
            let hp = &mut *d;
            hp.tag = NO_TAG;
            hp.segments = ptr::null_mut();
            hp.reg_next = ptr::null_mut();
            hp.reg_prev = ptr::null_mut();
            hp.state = DEAD;
            // Free, as a heap nobody holds (a caught one's read OWNER).
            hp.gate.store(gate::FREE, Ordering::Relaxed);
            d = next;
        }
    }
}

/// Whether the fork caught dead heap `d` inside a gated slow path: its gate, copied at the
/// fork, reads `OWNER` (no pass holds a gate across a fork: the purger's prepare handler, which
/// runs first, waits for the pass to end; see `gate`).
///
/// # Safety
/// Single-threaded child; `d` is a dead heap, before `reset_after_fork` frees its gate.
unsafe fn caught(d: *mut Heap) -> bool {
    // SAFETY: per the contract d is a valid heap nobody else touches.
    unsafe { (*d).gate.load(Ordering::Relaxed) == gate::OWNER }
}

/// The dead heap at `addr`, if one of the list from `dead` is.
///
/// # Safety
/// Single-threaded child; `dead` starts the list `split_after_fork` made.
unsafe fn dead_heap(dead: *mut Heap, addr: usize) -> Option<*mut Heap> {
    let mut d = dead;
    while !d.is_null() {
        if d as usize == addr {
            return Some(d);
        }
        // SAFETY: per the contract the dead list is ours and intact.
        d = unsafe { (*d).reg_next };
    }
    None
}

/// Quarantines `seg`, found in the hands of a heap the fork caught inside a slow path, whose
/// pages' and slices' state may be torn: owner [`QUARANTINED`], map entry `MAP_UNOWNED`, on no
/// list. Nothing of it is read again but its header's `owner`, `kind` and `map_size`: no
/// heap takes it, no purge or unmap, every free into it is dropped (`free_other_slow`). Its
/// far bin blocks stay booked on their node for good, as an exit's abandonment books them.
///
/// # Safety
/// Single-threaded child; `seg` is a normal segment whose header names a dead heap.
unsafe fn quarantine(seg: *mut Segment) {
    // SAFETY: per the contract nobody else uses seg; its owner is a dead heap, a valid one.
    unsafe {
        let owner = (*seg).owner.load(Ordering::Relaxed) as *mut Heap;
        note_far_abandoned(HeapRef::new(owner), seg);
        segment::set_owner(seg, QUARANTINED, NO_TAG);
        SEGMENTS_QUARANTINED.fetch_add(1, Ordering::Relaxed);
        BYTES_QUARANTINED.fetch_add((*seg).map_size, Ordering::Relaxed);
    }
}

/// Puts every page of live heap `h` that a dead thread left in `DELAYED_FREEING` back in the
/// state that thread found it in: `USE_DELAYED` if the page is still full, else `NORMAL` (where
/// the delayed free would have ended). The block that thread was freeing stays counted as
/// used (lost, as a block freed by nobody).
///
/// # Safety
/// Single-threaded child; `h` is a live heap (ours or a node heap).
unsafe fn unstick_delayed_frees(h: *mut Heap) {
    // SAFETY: per the contract, h's segments and pages are ours to rewrite.
    unsafe {
        for_each_used_page_on((*h).segments, |p| {
            atfork::unstick(&(*p).thread_free, (*p).flags & PAGE_IN_FULL != 0)
        });
    }
}

/// Abandons `seg`, found owned by a heap that died with the fork, as its exit would have: its
/// pages take remote frees on their own lists (`NEVER_DELAYED`), and it goes to its node's
/// abandoned list (or to the pool if it holds nothing), owner 0 and map entry `MAP_UNOWNED`.
/// The queue links of its pages are the dead heap's; adoption resets them.
///
/// # Safety
/// Single-threaded child; `seg` is a normal segment whose map entry is a dead heap's tag.
unsafe fn abandon_dead(seg: *mut Segment, now: u64) {
    // SAFETY: per the contract nobody else uses seg; the owner was a dead heap (an owner
    // writes the entry with its tag only after naming itself in the header, and lets go of the
    // entry first, so an entry holding a dead heap's tag means the header names that heap).
    unsafe {
        if (*seg).kind != SegmentKind::Normal || (*seg).owner.load(Ordering::Relaxed) == 0 {
            return;
        }
        for_each_used_page(seg, |p| {
            atfork::abandon(&(*p).thread_free);
            // The dead thread may have been inside an ungated refill (`Page::forget_cut_refill`).
            (*p).forget_cut_refill();
        });
        // A far segment's live bin blocks stay in the dead heap's per-bin counts for good:
        // booked on their node through its `far_fixed`, as its exit would (review rev48: its
        // `far_net` was as of its last settle, and the blocks it had popped since stayed on
        // its own node after the child freed them off the far node).
        let owner = (*seg).owner.load(Ordering::Relaxed) as *mut Heap;
        note_far_abandoned(HeapRef::new(owner), seg);
        let_go(seg, now);
    }
}

/// A dead heap's `far_net` once all its segments are let go ([`abandon_dead`]): its
/// `far_fixed`, as [`super::counters::settle_far`] makes it for a heap that holds no page.
///
/// # Safety
/// Single-threaded child; `d` is a dead heap whose segments were all let go.
unsafe fn settle_dead(d: *mut Heap) {
    // SAFETY: per the contract, nobody else reads or writes d's counters now.
    let stats = unsafe { &(*d).stats };
    for (net, fixed) in stats.far_net.iter().zip(&stats.far_fixed) {
        net.store(fixed.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Hands the blocks on dead heap `d`'s delayed stack to their pages' own lists (their pages
/// are `NEVER_DELAYED` now), where whoever adopts or tends the segment collects them.
///
/// # Safety
/// Single-threaded child, after `abandon_dead` ran on `d`'s segments.
unsafe fn return_delayed(d: *mut Heap) {
    // SAFETY: every block on a heap's delayed stack is a block of a page of a segment that
    // heap owned, still counted as used there, so its segment is mapped.
    unsafe {
        atfork::return_delayed(
            &(*d).delayed.0,
            |b| {
                let seg = segment_of(b as *const u8);
                let page = page_of(seg, b as *const u8);
                ((seg, page), &(*page).thread_free)
            },
            // Only if the page were a live heap's, full: the way any remote free ends.
            |b, (seg, page)| free_delayed(seg, page, b as *mut u8),
        )
    }
}

#[cfg(test)]
#[path = "fork_tests.rs"]
mod tests;
