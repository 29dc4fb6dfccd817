//! TODO large

use super::counters::{add, bump, counters, LARGE_BIN};
use super::free::{count_node_free, drain_delayed};
use super::node::dead_alloc;
use super::registry::{heap_init, rehome};
use super::slices::take_slices;
use super::tick::heap_tick;
use super::tls::heap;
use super::{Heap, ACTIVE};
use crate::config;
use crate::heap::huge;
use crate::heap::huge::{CacheEntry, CACHE_SLOTS, EMPTY_ENTRY};
use crate::heap::remote::USE_DELAYED;
use crate::heap::segment::{
    commit_add, commit_sub, page_of, segment_of, PageKind, Segment, SegmentKind, LARGE_MAX,
    MAX_NODES, PAGE_IN_FULL, SLICES, SLICE_SIZE,
};
use crate::heap::size_class::MEDIUM_MAX;
use crate::sync::Ordering;
use crate::sys::{numa, os};
use core::ptr;

pub(super) unsafe fn alloc_large(h: *mut Heap, size: usize, zero: bool) -> *mut u8 {
    // SAFETY: h is ours; the page we get is ours.
    unsafe {
        if (*h).state != ACTIVE && !heap_init(h) {
            return dead_alloc(h, size, SLICE_SIZE, zero);
        }
        heap_tick(h);
        drain_delayed(h);
        let n = size.div_ceil(SLICE_SIZE).max(1);
        let page = take_slices(h, n, false);
        if page.is_null() {
            return ptr::null_mut();
        }
        let p = &mut *page;
        p.kind = PageKind::Large as u8;
        p.set_bin(LARGE_BIN as u8);
        p.block_size = (n * SLICE_SIZE) as u32;
        p.reserved = 1;
        p.capacity = 1;
        p.used = 1;
        p.flags = PAGE_IN_FULL;
        p.thread_free.force_state(USE_DELAYED);
        bump(&(*h).stats.allocs[LARGE_BIN], 1);
        bump(&(*h).stats.large_alloc_bytes, p.block_size as u64);
        if zero && !p.fresh {
            ptr::write_bytes(p.start(), 0, size);
        }
        p.fresh = false;
        p.start()
    }
}

pub(super) unsafe fn alloc_huge(h: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    let Some((offset, map_size)) = huge::layout_for(size, align) else {
        return ptr::null_mut();
    };
    // SAFETY: h is ours; cached segments are ours alone.
    unsafe {
        if (*h).state != ACTIVE && !heap_init(h) {
            return dead_alloc(h, size, align, zero);
        }
        heap_tick(h);
        // The node the thread runs on now: a huge block is served from the cache (which
        // holds mappings of the heap's node) or mapped on the heap's node, so a move must be
        // noticed here rather than within 16 slow paths, or the block lands on the old node.
        // Cheap next to a huge allocation (no system call on one node, else a CPU lookup).
        if !(*h).shared && !(*h).walking {
            let home = (numa::home_node() as usize).min(MAX_NODES - 1) as u32;
            if home != (*h).node {
                rehome(h, home);
            }
        }
        let node = (*h).node;
        // The smallest cached mapping of our node that is big enough and at most four times
        // the need (all are of our node: a move empties the cache, and free_huge keeps only
        // mappings of our node).
        let mut best: Option<usize> = None;
        for (i, e) in (*h).huge_cache.iter().enumerate() {
            if !e.seg.is_null() && (*e.seg).node as u32 == node {
                let ms = (*e.seg).map_size;
                if ms >= map_size
                    && ms >> huge::CACHE_FIT_SHIFT <= map_size
                    && best.is_none_or(|b| ms < (*(*h).huge_cache[b].seg).map_size)
                {
                    best = Some(i);
                }
            }
        }
        let mut seg = ptr::null_mut();
        if let Some(i) = best {
            seg = (*h).huge_cache[i].seg;
            (*h).huge_cache[i] = EMPTY_ENTRY;
        } else if let Some(i) = (0..CACHE_SLOTS)
            .filter(|&i| {
                let c = (*h).huge_cache[i].seg;
                // Only smaller ones: a mapping more than CACHE_FIT_SHIFT times too big was
                // passed over above and stays cached (enlarging it would shrink it).
                !c.is_null() && (*c).node as u32 == node && (*c).map_size < map_size
            })
            .max_by_key(|&i| (*(*h).huge_cache[i].seg).map_size)
        {
            // Nothing big enough: the biggest cached mapping is moved into a mapping of the
            // size needed, so that its resident pages serve the object instead of fresh ones
            // (each a page fault). The filter above makes it smaller than map_size.
            let old = (*h).huge_cache[i].seg;
            let old_map = (*old).map_size;
            let grown = huge::enlarge(old, map_size);
            if !grown.is_null() {
                (*h).huge_cache[i] = EMPTY_ENTRY;
                commit_add((*grown).node, map_size - old_map);
                seg = grown;
            }
        }
        let reused = !seg.is_null();
        if reused {
            let ms = (*seg).map_size;
            // The tail the new object does not need may be resident from the last one: when
            // it is at least as big as the object, it goes back to the OS.
            if ms - map_size >= huge::CACHE_TRIM_MIN.max(map_size) {
                os::decommit((seg as *mut u8).add(map_size), ms - map_size);
            }
            huge::init(seg, ms, offset, size, node);
        } else {
            seg = huge::map(map_size, offset, size, node, true);
            if seg.is_null() {
                return ptr::null_mut();
            }
            commit_add(node as u16, map_size);
        }
        let obj = huge::object(seg);
        huge::register(seg, os::now_ms());
        bump(&(*h).stats.huge_allocs, 1);
        bump(&(*h).stats.huge_alloc_bytes, (*seg).huge_size as u64);
        if zero && reused {
            ptr::write_bytes(obj, 0, size);
        }
        obj
    }
}

/// Grows a huge object to `new_size` bytes without copying it (its pages move to a bigger
/// mapping). Null if `p` is not a huge object, or it cannot be grown that way; then the
/// caller copies.
///
/// # Safety
/// `p` is a live block of ours that the caller may reallocate.
pub unsafe fn grow_huge(p: *mut u8, new_size: usize) -> *mut u8 {
    let seg = segment_of(p);
    // SAFETY: p is live, so its segment header is valid; a huge object is the caller's alone.
    unsafe {
        if (*seg).kind != SegmentKind::Huge || new_size <= (*seg).huge_size {
            return ptr::null_mut();
        }
        let h = heap();
        if (*h).state != ACTIVE {
            return ptr::null_mut();
        }
        let old_size = (*seg).huge_size;
        // The bytes are booked on this heap's counters, which must own the object's node:
        // `grow` checks it once the demoter can no longer change it (not here, unclaimed).
        let new = huge::grow(seg, new_size, (*h).node as u16);
        if new.is_null() {
            return ptr::null_mut();
        }
        bump(
            &(*h).stats.huge_alloc_bytes,
            ((*new).huge_size - old_size) as u64,
        );
        huge::object(new)
    }
}

pub(super) unsafe fn free_huge(h: *mut Heap, seg: *mut Segment) {
    // SAFETY: seg is a huge segment whose object is being freed by us; once it is out of the
    // registry (which waits for a demoter that has it claimed), nobody else uses it.
    unsafe {
        huge::unregister(seg);
        let (c, shared) = counters(h);
        add(&c.huge_frees, 1, shared);
        add(&c.huge_free_bytes, (*seg).huge_size as u64, shared);
        let same_node = (*seg).node as u32 == (*h).node;
        count_node_free(h, (*seg).node, (*seg).huge_size as u64);
        // Only a span of our own node goes in our cache: reusing it elsewhere would misplace it.
        let ms = (*seg).map_size;
        if (*h).state == ACTIVE && same_node && ms <= huge::CACHE_MAX_BYTES {
            // Make room (in slots and bytes) by unmapping the mappings cached longest.
            let cache = &mut (*h).huge_cache;
            loop {
                let held: usize = cache
                    .iter()
                    .filter(|e| !e.seg.is_null())
                    .map(|e| (*e.seg).map_size)
                    .sum();
                let free_slot = cache.iter().position(|e| e.seg.is_null());
                if let Some(i) = free_slot {
                    if held + ms <= huge::CACHE_MAX_BYTES {
                        cache[i] = CacheEntry {
                            seg,
                            freed_at: os::now_ms(),
                        };
                        heap_tick(h);
                        return;
                    }
                }
                let Some(oldest) = (0..CACHE_SLOTS)
                    .filter(|&i| !cache[i].seg.is_null())
                    .min_by_key(|&i| cache[i].freed_at)
                else {
                    break;
                };
                let old = cache[oldest].seg;
                cache[oldest] = EMPTY_ENTRY;
                commit_sub((*old).node, (*old).map_size);
                huge::unmap(old);
            }
        }
        commit_sub((*seg).node, (*seg).map_size);
        huge::unmap(seg);
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes and in-place reallocation.

/// The usable size of the block at `p`.
///
/// # Safety
/// `p` is a live block of ours.
pub unsafe fn usable_size(p: *const u8) -> usize {
    let seg = segment_of(p);
    // SAFETY: p is live, so its segment and page descriptors are valid.
    unsafe {
        if (*seg).kind == SegmentKind::Huge {
            return (*seg).huge_size - (p as usize - huge::object(seg) as usize);
        }
        let page = page_of(seg, p);
        let bs = (*page).block_size as usize;
        bs - ((p as usize - (*page).start() as usize) % bs)
    }
}

/// Tries to make the block at `p` hold `new_size` bytes without moving it. Returns true if it
/// now does.
///
/// # Safety
/// `p` is a live block of ours.
pub unsafe fn resize_in_place(p: *mut u8, new_size: usize) -> bool {
    let seg = segment_of(p);
    // SAFETY: p is live; we only change pages we own.
    unsafe {
        if (*seg).kind == SegmentKind::Huge {
            let cap = (*seg).huge_size;
            return new_size <= cap && new_size > LARGE_MAX && new_size >= cap / 2;
        }
        let page = page_of(seg, p);
        let cap = (*page).block_size as usize;
        if (*page).kind == PageKind::Bin as u8 {
            // Shrinking by more than half moves, so a small object does not pin a big block.
            return new_size <= cap && (new_size * 2 >= cap || cap <= 32);
        }
        // Large page.
        if (*page).moved != 0 {
            // Its memory is on another node: no slices change hands while it is.
            return new_size <= cap && new_size * 2 >= cap;
        }
        let h = heap();
        let owner = (*seg).owner.load(Ordering::Relaxed) == h as usize;
        if new_size <= MEDIUM_MAX {
            return new_size <= cap && new_size * 2 >= cap;
        }
        let i = (*page).slice_index();
        let n = (*page).slice_count as usize;
        let want = new_size.div_ceil(SLICE_SIZE);
        if want <= n {
            if want < n && owner {
                // Give the tail slices back to the segment.
                let tail = crate::heap::segment::run_mask(n - want) << (i + want);
                (*seg).free_slices |= tail;
                for j in want..n {
                    let d = (*seg).pages.as_mut_ptr().add(i + j);
                    (*d).set_back(0);
                }
                (*page).slice_count = want as u8;
                let shrink = (n - want) * SLICE_SIZE;
                (*page).block_size -= shrink as u32;
                commit_sub((*seg).node, shrink);
                bump(&(*h).stats.large_free_bytes, shrink as u64);
                let delay = config::PURGE_DELAY_MS.load(Ordering::Relaxed);
                Segment::schedule_purge(seg, tail, os::now_ms(), delay);
            }
            return true;
        }
        if new_size > LARGE_MAX || !owner || i + want > SLICES {
            return false;
        }
        let extra = crate::heap::segment::run_mask(want - n) << (i + n);
        if (*seg).free_slices & extra != extra {
            return false;
        }
        (*seg).free_slices &= !extra;
        (*seg).dirty |= extra;
        (*seg).purge_recent &= !extra;
        (*seg).purge_pending &= !extra;
        for j in n..want {
            let d = (*seg).pages.as_mut_ptr().add(i + j);
            (*d).set_back(j as u8);
            (*d).kind = PageKind::Free as u8;
        }
        (*page).slice_count = want as u8;
        let grow = ((want - n) * SLICE_SIZE) as u64;
        (*page).block_size += grow as u32;
        commit_add((*seg).node, grow as usize);
        bump(&(*h).stats.large_alloc_bytes, grow);
        true
    }
}
