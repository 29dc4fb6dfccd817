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
//! - abandons every segment a dead heap owned (found through the segment map by the dead
//!   heaps' tags, which catches a segment in transit between the heap's list and another list
//!   too), so that the threads of the child adopt it when they free into it; the blocks on a
//!   dead heap's delayed stack go to their pages' own lists; its counters go to the retired
//!   totals and its tag is free again;
//! - puts every page of a live heap left in `DELAYED_FREEING` back to the state the dead
//!   freer found it in, and drops every claim on a huge object.
//!
//! What a dead thread was holding in its hands is lost (memory, never correctness): a block it
//! was freeing, a segment it was handing to a pool, the huge mappings it had cached.
//!
//! Lock order, everywhere in the allocator: the label names' `NAMES_LOCK` (held alone, by
//! `label_id`), the label heaps' `CREATE` lock (held only to make
//! one, with no other lock), a node or label heap's lock, then the registry's, then the
//! segment lists' (`node_alloc` and `label_alloc` register their heap under its lock).
//! `fork_prepare` takes them in that order, after glibc's stdio list lock (`os::stdio_list_lock`,
//! which glibc's `fork` would take later), so no thread holds one of them across the fork,
//! and with all of them held pins every other thread heap's gate (`pin_gates`), so no thread
//! is halfway through a slow path either: what the child inherits is what a thread left
//! between two calls, or in a fast path (a block popped but not yet counted, a free list
//! half linked: a block lost, never a page or segment inconsistent; but for a refill cut
//! halfway, `free` and `local_free` starting at the same block, which `abandon_dead` undoes).

use super::counters::note_far_abandoned;
use super::free::free_delayed;
use super::labels::{label_heaps, CREATE, NAMES_LOCK};
use super::node::NODE_HEAPS;
use super::registry::{give_tag, retire_counters, REGISTRY};
use super::slices::{for_each_used_page, for_each_used_page_on, let_go};
use super::tls::{heap, heap_or_unset};
use super::{Heap, HeapRef, DEAD};
use crate::heap::huge;
use crate::heap::segment::{
    self, page_of, segment_of, Segment, SegmentKind, SegmentList, ABANDONED, ABANDONED_FULL,
    NO_TAG, PAGE_IN_FULL, POOLS,
};
use crate::heap::{atfork, gate};
use crate::sync::{register_once, AtomicU8, Ordering, SpinLock, NOT_REGISTERED, REGISTERED};
use crate::sys::os;
use core::ptr::{self, addr_of};

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
    // First, and kept across the tries: glibc's `fork` takes it after this handler, and a
    // thread holding it may wait for one a pinned owner holds (review rev50: fflush(NULL)
    // waited for a getline's stream, whose realloc waited for its gate; see `os`).
    os::stdio_list_lock();
    let mut spins = 0u32;
    loop {
        // The gates first, with the registry lock held only for each look: an owner inside
        // its slow path may need any other lock to finish it. The gates pinned stay pinned:
        // their owners wait at their next slow path, holding no lock (see `pin_gates`).
        while !{
            let _g = REGISTRY.lock.lock();
            pin_gates()
        } {
            crate::sync::backoff(&mut spins);
        }
        lock_all();
        // Every lock is held: no heap is listed or unlisted meanwhile. One listed since the
        // look above is pinned now, unless its owner is inside a slow path: then that owner
        // may be waiting for one of the locks, so they are let go until it has finished.
        if pin_gates() {
            return;
        }
        unlock_all();
        crate::sync::backoff(&mut spins);
    }
}

extern "C" fn fork_parent() {
    // SAFETY: the registry lock is held (fork_prepare): the listed heaps are valid.
    unsafe {
        REGISTRY.heaps.for_each(|h| {
            gate::unpin_after_fork(&*addr_of!((*h).gate));
        });
    }
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

/// With the registry lock held: pins the gate of every listed thread heap but the forking
/// thread's own (`gate::FORK`), or finds it pinned. Returns whether all are pinned; a gate
/// held by its owner (inside a slow path) is not, and the caller tries again once it has let
/// the owner go on.
///
/// Why: the slow paths change a heap's segments and pages (slice maps, page counts, queue
/// links) in steps no lock covers, only the gate. Without this a thread stopped by the
/// fork halfway through one (a segment's slices taken but not yet counted in its
/// `used_pages`, a page's descriptors half written) left that segment inconsistent in the
/// child, which abandoned it and handed it to the child's threads: a segment counted empty
/// while a large block in it was live went to the pool, and the child crashed freeing that
/// block (fork_loop.c, 3 children in about 20 000 forks on a loaded machine).
///
/// Not the forking thread's heap: it is in no slow path (unless `fork` was called from a
/// signal handler that interrupted one, which then resumes in both processes), and the
/// program's prepare handlers that run after this one may allocate through it. Not the node
/// and label heaps (shared): their locks cover them. No pass holds a gate: the purger's
/// prepare handler, which runs first, holds `PASS`.
///
/// Deadlock-free: an owner waits for its gate only when it enters a slow path, holding no
/// lock of the allocator; so a pinned owner waits for nothing this thread holds, while an
/// owner inside a slow path may need any lock, which this thread holds only for a look (the
/// registry's) or lets go of before it tries again (all of them). A pinned owner may hold a
/// lock of the program's or of libc's (a stream's, in `getline`): the forking thread must not
/// wait for one until the parent handler, hence glibc's stdio list lock first (review rev50;
/// glibc's other such lock, NSS's, is not reachable from here).
fn pin_gates() -> bool {
    let me = heap_or_unset();
    let mut all = true;
    // SAFETY: the registry lock is held (contract): the listed heaps are valid; `shared` is
    // set before a heap is listed and never changes; the gate is atomic.
    unsafe {
        REGISTRY.heaps.for_each(|h| {
            if h != me && !(*h).shared && !gate::pin_for_fork(&*addr_of!((*h).gate)) {
                all = false;
            }
        });
    }
    all
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

/// Tags of the heaps that died with the fork (a bit per tag; only the child touches it).
struct DeadTags(core::cell::UnsafeCell<[u64; (NO_TAG as usize + 1) / 64]>);
// SAFETY: only the child's single thread, inside fork_child, touches it.
unsafe impl Sync for DeadTags {}
static DEAD_TAGS: DeadTags = DeadTags(core::cell::UnsafeCell::new([0; (NO_TAG as usize + 1) / 64]));

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
        let dead_tags = &mut *DEAD_TAGS.0.get();
        // 1. Split the registry: the live heaps stay, the dead ones go on a list of their own
        //    (through the same links).
        let dead = REGISTRY.heaps.split_after_fork(|h| {
            if h == me || (*h).shared {
                return true;
            }
            if (*h).tag != NO_TAG {
                dead_tags[(*h).tag as usize / 64] |= 1 << ((*h).tag % 64);
            }
            false
        });
        // 2. Live heaps: no remote free is in flight any more.
        REGISTRY.heaps.for_each(|h| unstick_delayed_frees(h));
        if dead.is_null() {
            return;
        }
        // 3. Dead heaps' segments: through the map by tag; those of a heap without a tag
        //    (only when every tag is taken) through its own list, as far as it is intact.
        let now = os::now_ms();
        segment::for_each_tagged(
            |tag| dead_tags[tag as usize / 64] & (1 << (tag % 64)) != 0,
            |seg, _| abandon_dead(seg, now),
        );
        let mut d = dead;
        while !d.is_null() {
            if (*d).tag == NO_TAG {
                let mut seg = (*d).segments;
                let mut n = segment::SEGMENTS.load(Ordering::Relaxed);
                while !seg.is_null() && n > 0 {
                    let next = (*seg).next;
                    if (*seg).owner.load(Ordering::Relaxed) == d as usize {
                        abandon_dead(seg, now);
                    }
                    seg = next;
                    n -= 1;
                }
            }
            d = (*d).reg_next;
        }
        // 4. Their delayed blocks, counters and tags; then they are dead for good.
        let mut d = dead;
        while !d.is_null() {
            let next = (*d).reg_next;
            return_delayed(d);
            settle_dead(d);
            retire_counters(&mut *d);
            if (*d).tag != NO_TAG {
                dead_tags[(*d).tag as usize / 64] &= !(1 << ((*d).tag % 64));
            }
            give_tag((*d).tag);
            let hp = &mut *d;
            hp.tag = NO_TAG;
            hp.segments = ptr::null_mut();
            hp.reg_next = ptr::null_mut();
            hp.reg_prev = ptr::null_mut();
            hp.state = DEAD;
            // Pinned for the fork (`pin_gates`): free, as a heap nobody holds.
            hp.gate.store(gate::FREE, Ordering::Relaxed);
            d = next;
        }
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
