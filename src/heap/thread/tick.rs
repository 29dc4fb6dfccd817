//! TODO tick

use super::free::{drain_delayed, retire_page};
use super::node::collect_node_heaps;
use super::registry::rehome_when_safe;
use super::slices::{
    for_each_used_page, release_empty_page, release_segment, segment_nearly_full, unlink_segment,
};
use super::tls::heap;
use super::{empty_page, Heap, ACTIVE};
use crate::config;
use crate::heap::huge;
use crate::heap::huge::EMPTY_ENTRY;
use crate::heap::segment::{commit_sub, Segment, ABANDONED, ABANDONED_FULL, MAX_NODES, POOLS};
use crate::heap::size_class::NBINS;
use crate::sync::Ordering;
use crate::sys::{numa, os};

// ---------------------------------------------------------------------------------------------
// Purging: memory goes back to the OS after the delay, driven from slow paths.

#[inline]
pub(super) unsafe fn heap_tick(h: *mut Heap) {
    // SAFETY: h is ours.
    unsafe {
        (*h).tick = (*h).tick.wrapping_add(1);
        if (*h).tick & 15 != 0 || (*h).state != ACTIVE {
            return;
        }
        // Where the thread runs, every 16 slow paths: a moved thread stops drawing from its
        // old node within 16 slow paths (so within 16 pages' worth of allocations). Cheap:
        // no call at all on one node, else sched_getcpu (rseq/vDSO) and a table lookup.
        if !(*h).shared {
            let node = (numa::home_node() as usize).min(MAX_NODES - 1) as u32;
            if node != (*h).node {
                rehome_when_safe(h, node);
                return;
            }
        }
        let now = os::now_ms();
        if now < (*h).next_purge_ms {
            return;
        }
        let delay = config::PURGE_DELAY_MS.load(Ordering::Relaxed);
        (*h).next_purge_ms = now + (delay / 4).max(1);
        heap_collect(h, now, delay);
    }
}

/// Collects remote frees, retires empty pages, purges what has waited long enough, adopts
/// stranded segments. Cost: one pass over our pages; runs at most every delay/4 ms.
#[cold]
pub(super) unsafe fn heap_collect(h: *mut Heap, now: u64, delay: u64) {
    // SAFETY: h is ours; all pages and segments touched are ours.
    unsafe {
        drain_delayed(h);
        let counts = (*h).stats.alloc_counts();
        for (bin, &allocs) in counts.iter().enumerate().take(NBINS) {
            let active = allocs != (*h).allocs_at_collect[bin];
            (*h).allocs_at_collect[bin] = allocs;
            let mut page = (*h).pages[bin];
            while !page.is_null() && page != empty_page() {
                let next = (*page).next;
                if (*page).thread_free.has_blocks() {
                    let back = (*page).collect();
                    (*h).returned = (*h).returned.saturating_add(back);
                }
                // Empty pages go back to their segment; the current one too if its class has
                // not allocated since the last collection (it no longer pins its page's
                // memory). A class that is in use keeps it: giving it back would cost a new page
                // on its next allocation, placed wherever a resident run fits, while the old
                // page's slice waits out the purge delay, resident and idle; done every
                // collection to every sparsely used class, that churn is what RSS grows by.
                if (*page).used == 0 && (page != (*h).pages[bin] || !active || delay == 0) {
                    (*h).queue_remove(bin, page);
                    retire_page(page);
                }
                page = next;
            }
        }
        let mut seg = (*h).segments;
        while !seg.is_null() {
            let next = (*seg).next;
            if (*seg).purge_at != 0 && now >= (*seg).purge_at {
                // An empty segment goes to the pool once none of its slices was freed
                // recently (a forced collection, delay 0, does not wait).
                if (*seg).used_pages == 0 && (delay == 0 || !Segment::has_recent_free(seg)) {
                    unlink_segment(h, seg);
                    release_segment(seg, now);
                } else if delay == 0 {
                    Segment::purge_free(seg);
                } else {
                    Segment::purge_step(seg, now, delay);
                }
            }
            seg = next;
        }
        for e in (*h).huge_cache.iter_mut() {
            if !e.seg.is_null() && e.freed_at + delay <= now {
                commit_sub((*e.seg).node, (*e.seg).map_size);
                huge::unmap(e.seg);
                *e = EMPTY_ENTRY;
            }
        }
        POOLS[(*h).node as usize].unmap_expired(now);
        if !(*h).shared {
            collect_node_heaps(now, delay);
        }
        // Segments stranded by exited threads, or given up full: tend one of each kind per
        // pass (see tend_abandoned).
        let node = (*h).node as usize;
        for list in [&ABANDONED[node], &ABANDONED_FULL[node]] {
            if list.count.load(Ordering::Relaxed) > 0 {
                let seg = list.pop(h as usize, (*h).tag);
                if !seg.is_null() {
                    tend_abandoned(h, seg, now);
                }
            }
        }
    }
}

/// Tends an abandoned segment on its absent owner's behalf: collects the frees other threads
/// made into its pages, gives back the pages that emptied, and purges its free slices. It
/// then goes to the pool if nothing in it is live, else back to the abandoned list (at the
/// back, so the next visit tends another). The visitor does not keep it: a thread that only
/// collects now and then would sit on memory it never reuses (a thread that needs space
/// adopts abandoned segments in `take_slices`).
///
/// # Safety
/// `h` is this thread's heap and `seg` was just popped from the abandoned list for it.
pub(super) unsafe fn tend_abandoned(h: *mut Heap, seg: *mut Segment, now: u64) {
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
        let node = ((*seg).node as usize).min(MAX_NODES - 1);
        if (*seg).used_pages == 0 {
            release_segment(seg, now);
        } else if segment_nearly_full(seg) {
            ABANDONED_FULL[node].push_abandoned_back(seg);
        } else {
            Segment::purge_free(seg);
            ABANDONED[node].push_abandoned_back(seg);
        }
    }
}

/// Forces a collection and purge of the calling thread's heap now, whatever the delay.
///
/// A heap that has not yet noticed its thread's move to another node (ticks look only every
/// 16 slow paths) moves first: the collection then tends the abandoned segments, pool and
/// node heaps of the node the thread runs on, not of the one it left. (A user's call holds
/// no page and walks no list: a safe point for `rehome`.)
pub fn collect_now() {
    let h = heap();
    // SAFETY: h is ours.
    unsafe {
        if (*h).state != ACTIVE {
            return;
        }
        if !(*h).shared {
            let node = (numa::home_node() as usize).min(MAX_NODES - 1) as u32;
            if node != (*h).node {
                rehome_when_safe(h, node);
            }
        }
        let now = os::now_ms();
        let delay = config::PURGE_DELAY_MS.load(Ordering::Relaxed);
        heap_collect(h, now.saturating_add(delay).saturating_add(1), 0);
    }
}
