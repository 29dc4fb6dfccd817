//! Ticks and collections: the heartbeat of the slow paths that gives memory back.
//!
//! Owns: `heap_tick` (every slow path; every 16th, or every one while memory waits to be
//! purged, looks where the thread runs and whether a collection is due), the `waiting`
//! estimate (`note_idle`, `WAIT_BYTES`), `heap_collect` (remote frees, empty pages, purging,
//! the huge cache's expiry, every node's pool, the node and label heaps, tending abandoned
//! segments), and `collect_now`. May touch: the `Heap` fields (`super`), `free` (the drain,
//! page retirement), `node`, `labels` (collecting the label heaps), `registry` (following the
//! thread's home node), `slices`, `tls`, `purger` (starting it, its gate, its pass over
//! other threads' quiet heaps after a collection: `purger::help`), `counters` (settling the
//! far pages' booking), `heap::{segment, size_class, huge}` (the huge cache through
//! `HugeCache`), `sys::os`, `init` (the purge delay).

use super::counters::{collect_remote, settle_far};
use super::free::{drain_delayed, retire_page};
use super::labels::collect_label_heaps;
use super::node::collect_node_heaps;
use super::purger;
use super::refilled;
use super::registry::follow_home;
use super::slices::{
    earlier, for_each_used_page, purge_segments, release_empty_page, release_segment,
    release_segment_dirty, segment_nearly_full, set_live_hint, Left,
};
use super::tls::own;
use super::{empty_page, HeapRef, ACTIVE};
use crate::heap::huge::HugeCache;
use crate::heap::segment::{Segment, ABANDONED, ABANDONED_FULL, MAX_NODES, POOLS, SEGMENT_SIZE};
use crate::heap::size_class::NBINS;
use crate::init;
use crate::sync::{AtomicBool, AtomicU64, Ordering};
use crate::sys::os;

/// Resident bytes waiting to be purged past which a heap is `waiting`: its slow paths then
/// read the clock every time, and its refills are bounded, so that light traffic of any
/// kind still reaches a collection within a few hundred allocations. Below it, ticks read
/// the clock every 16th slow path as usual: what is left then is within the idle slack
/// (README: live set + 10 % + 8 MiB).
pub(super) const WAIT_BYTES: usize = 4 << 20;

/// Stores a heap's `holding` flag, written only when it changes (no store on the heap's
/// line for every page given back); returns whether the heap turned holding, which the
/// caller tells a sleeping purger (`purger::notify_by`), since it looks at `holding` too
/// (review rev10: with it on, a quiet heap that was only holding was visited by nobody).
/// For the owner and for a pass holding its gate.
#[inline]
pub(super) fn set_holding(flag: &AtomicBool, holding: bool) -> bool {
    if flag.load(Ordering::Relaxed) == holding {
        return false;
    }
    let was = flag.swap(holding, Ordering::Relaxed);
    holding && !was
}

/// Stores a heap's `due_ms`, written only when it changes (see [`set_holding`]); returns
/// whether it changed.
#[inline]
pub(super) fn set_due(due_ms: &AtomicU64, due: u64) -> bool {
    let changed = due_ms.load(Ordering::Relaxed) != due;
    if changed {
        due_ms.store(due, Ordering::Relaxed);
    }
    changed
}

/// Books what a collection or a pass found left to purge in a heap's segments (`left`) and
/// its huge cache (`cache`): the heap is `holding` while anything waits, due or not, and
/// `due_ms` says when the first of it is due. Returns the resident bytes waiting (for
/// `idle_bytes` and `waiting`). For the owner and for a pass holding its gate; `quiet_at` is
/// when the heap's owner will have been quiet for a delay (its last collection + the delay),
/// before which no pass visits a heap that is only holding (`purger::notify_by`).
pub(super) fn book_left(
    holding: &AtomicBool,
    due_ms: &AtomicU64,
    left: Left,
    cache: &HugeCache,
    delay: u64,
    quiet_at: u64,
) -> usize {
    let held = cache.held();
    let _ = set_due(due_ms, earlier(left.due, cache.next_expiry(delay)));
    if set_holding(holding, left.any() || held > 0) {
        purger::notify_by(quiet_at);
    }
    left.bytes + held
}

/// Books `bytes` given back (resident) to our segments, the pool or the huge cache: past
/// [`WAIT_BYTES`] since the last collection, the heap is `waiting` until a collection finds
/// less than that left to purge.
#[inline]
pub(super) fn note_idle(mut h: HeapRef, bytes: usize) {
    h.idle_bytes = h.idle_bytes.saturating_add(bytes);
    if bytes > 0 {
        // Due at once, as far as passes know, until the next collection or pass counts it.
        // A purger asleep past the time a pass could visit the heap (a refused purge's retry,
        // up to a minute away: `purger::anything_waits`) must hear of it, as of a heap
        // turning holding; one that wakes by then looks at it anyway.
        if set_due(&h.due_ms, 0) | set_holding(&h.holding, true) {
            let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
            // SAFETY: the heap we hold.
            purger::notify_by(unsafe { purger::quiet_at(h.as_ptr(), delay) });
        }
    }
    if h.idle_bytes > WAIT_BYTES {
        h.waiting.store(true, Ordering::Relaxed);
        // The next refill goes the long way (see `heap_tick`).
        h.tick |= 15;
        purger::notify();
    }
}

/// One slow path's tick: every 16th follows the thread's home node; every 16th, or every
/// one while memory waits to be purged (`waiting`), reads the clock and collects when due.
///
/// # Safety
/// The caller uses no page, block or segment of `h` it looked up before the tick after it
/// returns: the tick may move the heap to another node (giving every segment away) or retire
/// and purge empty pages.
#[inline]
pub(super) unsafe fn heap_tick(mut h: HeapRef) {
    h.tick = h.tick.wrapping_add(1);
    if h.tick & 15 != 0 || h.state != ACTIVE {
        return;
    }
    if h.waiting.load(Ordering::Relaxed) {
        // Keeps the tick at 15 mod 16 while memory waits: the next tick passes the check
        // above, and the next refill goes the long way (see `refill_from_local`), reads the
        // clock and bounds what it hands out.
        h.tick |= 15;
    }
    // Anything to purge, even under `WAIT_BYTES`, starts the purger when it is wanted: while
    // it is, the helping pass is off (`purger::help`), so without the thread nobody would
    // visit quiet heaps that hold less (review rev11: five quiet threads of 3.5 MiB each kept
    // 21.3 MiB against an 11.5 MiB bound).
    if (h.waiting.load(Ordering::Relaxed) || h.holding.load(Ordering::Relaxed))
        && purger::wanted()
        && !h.walking
        && !h.shared
    {
        // SAFETY: an active heap's slow path, outside any walk over its blocks (the thread's
        // creation may allocate); the caller re-reads everything after the tick.
        unsafe { purger::maybe_start() };
    }
    // Where the thread runs, every 16 slow paths (every one while waiting): a moved thread
    // stops drawing from its old node within 16 slow paths (so within 16 pages' worth of
    // allocations). Cheap: no call at all on one node, else sched_getcpu (rseq/vDSO) and a
    // table lookup.
    // SAFETY: h is ACTIVE (checked above); the caller uses no page of h after the tick
    // (contract).
    if unsafe { follow_home(h) } {
        return;
    }
    let now = os::now_ms();
    if now < h.next_purge_ms {
        return;
    }
    let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
    h.next_purge_ms = now + (delay / 4).max(1);
    // SAFETY: forwarded contract.
    unsafe { heap_collect(h, now, delay) };
    if !h.walking && !h.shared {
        // SAFETY: a thread heap's slow path, which holds its gate (every caller of the tick
        // is inside `purger::enter`) and no lock, outside a walk over its blocks.
        unsafe { purger::help(now, delay) };
    }
}

/// Collects remote frees, retires empty pages, purges what has waited long enough, adopts
/// stranded segments. Cost: one pass over our pages; runs at most every delay/4 ms.
///
/// # Safety
/// As for [`heap_tick`]: the caller uses no page, block or segment of `h` it looked up before
/// the collection after it returns (empty pages are retired and purged, segments released).
#[cold]
pub(super) unsafe fn heap_collect(mut h: HeapRef, now: u64, delay: u64) {
    // Not quiet: other threads' passes leave this heap to us for a delay (`purger::help`).
    // The clock's time, not `now` when that is ahead of it (`collect_now` collects a delay
    // ahead): other threads read it while we collect, as when we will have been quiet for a
    // delay (`purger::anything_waits` sleeps until then; review rev17: read 101 ms ahead).
    let collected = now.min(os::now_ms());
    h.collected_ms.store(collected, Ordering::Relaxed);
    // SAFETY: forwarded contract.
    unsafe { drain_delayed(h) };
    // SAFETY: the pages in h's queues and the segments on its list are h's, so ours.
    unsafe {
        let counts = h.stats.alloc_counts();
        for (bin, &allocs) in counts.iter().enumerate().take(NBINS) {
            let active = allocs != h.allocs_at_collect[bin];
            h.allocs_at_collect[bin] = allocs;
            let mut page = h.pages[bin];
            while !page.is_null() && page != empty_page() {
                let next = (*page).next;
                if (*page).thread_free.has_blocks() {
                    collect_remote(h, page);
                }
                // Empty pages go back to their segment; the current one too if its class has
                // not allocated since the last collection (it no longer pins its page's
                // memory). A class that is in use keeps it: giving it back would cost a new page
                // on its next allocation, placed wherever a resident run fits, while the old
                // page's slice waits out the purge delay, resident and idle; done every
                // collection to every sparsely used class, that churn is what RSS grows by.
                if (*page).used == 0 && (page != h.pages[bin] || !active || delay == 0) {
                    h.queue_remove(bin, page);
                    retire_page(h, page);
                }
                page = next;
            }
        }
        // Full pages other threads' frees gave room: the ones emptied go back.
        refilled::collect(h);
        // The far pages' blocks, booked on their nodes as they are now.
        settle_far(h);
        // What is left to purge after this pass (resident free slices of our segments, the
        // pool, the huge cache) decides whether the heap goes on `waiting`.
        // Empty segments go to the pool (counted below), the others' due slices are purged.
        let segs = purge_segments(core::ptr::addr_of_mut!(h.segments), now, delay);
        h.huge_cache.expire(now, delay);
        // Every node's pool, not only ours: a node whose threads are gone or seldom collect
        // does not keep its pooled segments mapped past their time. Only unmapping: nothing
        // is taken from another node. (A look at the count, and a try-lock, per node with
        // segments pooled.)
        for pool in POOLS.iter() {
            pool.unmap_expired(now);
        }
        let mut left = book_left(
            &h.holding,
            &h.due_ms,
            segs,
            &h.huge_cache,
            delay,
            collected.saturating_add(init::PURGE_DELAY_MS.load(Ordering::Relaxed)),
        );
        left += POOLS[h.node as usize].count.load(Ordering::Relaxed) * SEGMENT_SIZE;
        h.idle_bytes = left;
        h.waiting.store(left > WAIT_BYTES, Ordering::Relaxed);
        if left > WAIT_BYTES {
            // The next refill goes the long way, as after `note_idle`.
            h.tick |= 15;
        }
        if !h.shared {
            collect_node_heaps(now, delay);
            collect_label_heaps(now, delay);
        }
        // Segments stranded by exited threads, or given up full: tend one of each kind per
        // pass (see tend_abandoned).
        let node = h.node as usize;
        for list in [&ABANDONED[node], &ABANDONED_FULL[node]] {
            if list.count.load(Ordering::Relaxed) > 0 {
                let seg = list.pop(h.addr(), h.tag);
                if !seg.is_null() {
                    tend_abandoned(h, seg, now, true);
                }
            }
        }
    }
}

/// Tends an abandoned segment on its absent owner's behalf: collects the frees other threads
/// made into its pages, gives back the pages that emptied, and (`purge`) purges its free
/// slices. It then goes to the pool if nothing in it is live (purged first if `purge`, else
/// as it is), else back to the abandoned list (at the back, so the next visit tends another),
/// its live hint recounted. The visitor does not keep it: a thread that only collects now and
/// then would sit on memory it never reuses (a thread that needs space adopts abandoned
/// segments in `take_slices`).
///
/// # Safety
/// `seg` was just taken off an abandoned list for `h` (popped or claimed), and `h` is an
/// active heap the caller may use (this thread's, or a node heap under its lock): its
/// counters take the large bytes of emptied pages.
pub(super) unsafe fn tend_abandoned(h: HeapRef, seg: *mut Segment, now: u64, purge: bool) {
    // SAFETY: we own seg until we hand it back. Its pages are NEVER_DELAYED (set when it was
    // abandoned), so frees by other threads meanwhile go to the pages' own lists, which
    // `collect` takes atomically.
    unsafe {
        for_each_used_page(seg, |p| {
            (*p).collect();
            if (*p).used == 0 {
                release_empty_page(h, p, now, 0);
            }
        });
        // Its pages' uncarved memory whose time has come (`new_bin_page`): nobody carves it
        // while it is abandoned, and its adopter's collections take the rest.
        if (*seg).tails != 0 {
            Segment::tend_tails(
                seg,
                now,
                init::PURGE_DELAY_MS.load(Ordering::Relaxed),
                false,
            );
        }
        let node = ((*seg).node as usize).min(MAX_NODES - 1);
        if (*seg).used_pages == 0 {
            if purge {
                release_segment(seg, now);
            } else {
                release_segment_dirty(seg, now);
            }
            return;
        }
        set_live_hint(seg);
        if segment_nearly_full(seg) {
            ABANDONED_FULL[node].push_abandoned_back(seg);
        } else {
            if purge {
                Segment::purge_free(seg);
            }
            ABANDONED[node].push_abandoned_back(seg);
        }
    }
}

/// Forces a collection and purge of the calling thread's heap now, whatever the delay, and
/// tends every segment abandoned on its node (their pages' remote frees taken in, emptied
/// pages given back).
///
/// A heap that has not yet noticed its thread's move to another node (ticks look only every
/// 16 slow paths) moves first: the collection then tends the abandoned segments, pool and
/// node heaps of the node the thread runs on, not of the one it left. (A user's call holds
/// no page and walks no list: a safe point for `rehome`.)
pub fn collect_now() {
    let h = own();
    let _gate = purger::enter(h.as_ptr());
    if h.state != ACTIVE {
        return;
    }
    // SAFETY: h is ACTIVE (checked above) and a user's call holds no page of it.
    unsafe {
        follow_home(h);
        let now = os::now_ms();
        let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
        // A time a delay ahead, so that everything counts as due (pools, huge cache); the
        // collection books the clock's time as its own (review rev15: stored a delay ahead,
        // the heap looked busy to other threads' passes for two delays after).
        let now = now.saturating_add(delay).saturating_add(1);
        heap_collect(h, now, 0);
        // Then every other segment on the node's abandoned lists, not one per list as a
        // tick's collection does (review rev42): a large block freed by another thread into
        // an abandoned segment is booked off `large_bytes_live` only when a heap takes its
        // emptied page back, so with several such segments a `collect()` left all but one
        // of them counted live. Each list's count bounds the visits (a tended segment goes
        // back at the list's end, or to the pool); one the purger is purging right now is
        // skipped by `pop` and waits for the next collection. Not a fast path: a user's call.
        // SAFETY (tend_abandoned): each segment was just popped for h, an active heap (checked
        // above) that is this thread's own.
        let node = h.node as usize;
        for list in [&ABANDONED[node], &ABANDONED_FULL[node]] {
            for _ in 0..list.count.load(Ordering::Relaxed) {
                let seg = list.pop(h.addr(), h.tag);
                if seg.is_null() {
                    break;
                }
                tend_abandoned(h, seg, now, true);
            }
        }
    }
}
