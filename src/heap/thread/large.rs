//! Large and huge objects on a thread's heap, and resizing a block in place.
//!
//! Owns: large allocation (a page of whole slices from one of our segments), the heap's side
//! of huge allocation and free (which heap books the bytes, when the heap follows its thread
//! to another node first), growing a huge object in place, and the usable size and in-place
//! resize of any block, and giving the huge cache back when a new mapping is refused
//! (`map_making_room`) or an explicit request does not fit its tier's budget
//! (`admit_making_room`). What the huge cache keeps is `heap::huge`'s (`HugeCache`); the slice
//! bitmaps a large page grows or shrinks over are `heap::segment`'s. May touch: the `Heap`
//! fields (`super`), `counters`, `free` (the drain, node bookkeeping), `labels` (a labelled
//! huge object's bytes), `node` (dead heaps), `scoped` (`Scope`: a scope that would place a
//! grown huge object elsewhere),
//! `registry` (init, rehome), `slices`, `tick`, `tls`, `heap::{huge, segment, remote,
//! size_class}`,
//! `sys::os`, `init` (the purge delay).

use super::counters::{add, bump, counters, note_far_large, LARGE_BIN};
use super::free::{count_node_free, drain_delayed};
use super::labels::book_huge;
use super::node::{dead_alloc, reclaim_node_heaps};
use super::registry::{current_home, heap_init, rehome};
use super::slices::take_slices;
use super::tick::{heap_tick, note_idle};
use super::tls::own;
use super::{HeapRef, Scope, ACTIVE};
use crate::heap::huge;
use crate::heap::remote::USE_DELAYED;
use crate::heap::route;
use crate::heap::segment::{
    commit_add, commit_sub, page_of, segment_of, PageKind, Segment, SegmentKind, LARGE_MAX,
    PAGE_IN_FULL, SLICE_SIZE,
};
use crate::heap::size_class::MEDIUM_MAX;
use crate::init;
use crate::sync::Ordering;
use crate::sys::os;
use core::ptr;

/// A large block of `size` bytes: a page of whole slices.
///
/// # Safety
/// `size <= LARGE_MAX`.
pub(super) unsafe fn alloc_large(h: HeapRef, size: usize, zero: bool) -> *mut u8 {
    if h.state != ACTIVE && !heap_init(h) {
        // SAFETY: SLICE_SIZE is a power of two.
        return unsafe { dead_alloc(h, size, SLICE_SIZE, zero) };
    }
    // SAFETY: an allocation's slow path, before it looks up any page.
    unsafe {
        heap_tick(h);
        drain_delayed(h);
    }
    let n = size.div_ceil(SLICE_SIZE).max(1);
    // SAFETY: an allocation's slow path: no walk over our blocks is in progress (a drain only
    // frees), and we hold no page of ours.
    let page = unsafe { take_slices(h, n, false) };
    if page.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: the page take_slices hands out is a free run of n slices of one of our
    // segments, at least size bytes (size <= LARGE_MAX, contract).
    unsafe {
        let p = &mut *page;
        p.kind = PageKind::Large as u8;
        p.set_bin(LARGE_BIN as u8);
        p.block_size = (n * SLICE_SIZE) as u32;
        p.reserved = 1;
        p.capacity = 1;
        p.used = 1;
        p.flags = PAGE_IN_FULL;
        p.thread_free.force_state(USE_DELAYED);
        bump(&h.stats.allocs[LARGE_BIN], 1);
        bump(&h.stats.large_alloc_bytes, p.block_size as u64);
        // On a far segment (a tier policy's): live on the segment's node.
        note_far_large(h, p.segment(), p.block_size as i64);
        if zero && !p.fresh {
            ptr::write_bytes(p.start(), 0, size);
        }
        p.fresh = false;
        p.start()
    }
}

/// A huge object: a mapping of its own, from the heap's cache of freed ones or the OS.
///
/// # Safety
/// `align` is a power of two.
pub(super) unsafe fn alloc_huge(mut h: HeapRef, size: usize, align: usize, zero: bool) -> *mut u8 {
    let Some((offset, map_size)) = huge::layout_for(size, align) else {
        return ptr::null_mut();
    };
    if h.state != ACTIVE && !heap_init(h) {
        // SAFETY: forwarded contract.
        return unsafe { dead_alloc(h, size, align, zero) };
    }
    // SAFETY: an allocation's slow path, before it looks up any page or segment.
    unsafe { heap_tick(h) };
    // The node the thread runs on now: a huge block is served from the cache (which
    // holds mappings of the heap's node) or mapped on the heap's node, so a move must be
    // noticed here rather than within 16 slow paths, or the block lands on the old node.
    // Cheap next to a huge allocation (no system call on one node, else a CPU lookup).
    if !h.shared && !h.walking {
        let home = current_home();
        if home != h.node {
            // SAFETY: h is active and no walk is in progress (both just checked); we hold no
            // page of it.
            unsafe { rehome(h, home) };
        }
    }
    let node = h.node;
    // A cached mapping of our node (all are: a move empties the cache, and free_huge keeps
    // only mappings of our node), or a fresh one.
    let mut seg = h.huge_cache.take(node, map_size);
    let mut reused = !seg.is_null();
    // SAFETY: seg is a huge mapping of ours that holds no object yet (from the cache, which
    // gave it up, or fresh), at least map_size bytes, laid out for size at align.
    unsafe {
        // `secure` build: a cached mapping whose last front guard the kernel will not make
        // read-write again goes back to the OS (review rev38: the guard would lie inside the
        // object); a fresh one serves instead.
        if reused && !huge::init(seg, (*seg).map_size, offset, size, node) {
            commit_sub((*seg).node, (*seg).map_size);
            huge::unmap(seg);
            reused = false;
        }
        if !reused {
            // The cache's mappings (the assembly above may have found them too small, or had
            // no room to move them) make way if the mapping is refused.
            seg = map_making_room(h, || huge::map(map_size, offset, size, node, true));
            if seg.is_null() {
                return ptr::null_mut();
            }
            commit_add(node as u16, map_size);
        }
        let obj = huge::object(seg);
        // The label before `register`: from there on the automatic demoter may claim the
        // object and move it, label bytes and all (`book_huge_moved`), and the header is
        // its to read and write (review rev21: a move in between found no label, and the
        // label's bytes stayed on the old node while the block lived on the new one).
        if h.label != 0 {
            (*seg).huge_label = h.label;
            (*seg).huge_label_node = node as u8;
            book_huge(h.label, node as u16, (*seg).huge_size as i64);
        }
        huge::register(seg, os::now_ms());
        bump(&h.stats.huge_allocs, 1);
        bump(&h.stats.huge_alloc_bytes, (*seg).huge_size as u64);
        if zero && reused {
            ptr::write_bytes(obj, 0, size);
        }
        obj
    }
}

/// Gives every mapping of `h`'s huge cache back to the OS, for a caller whose new mapping
/// the kernel just refused (out of address space under `RLIMIT_AS`, or out of memory), so
/// that it can try once more: the cache keeps up to `huge::CACHE_MAX_BYTES` of freed
/// mappings (and their reservations' address space), which must never turn a request that
/// fits without them into a null. Returns whether it held any (only then is a retry worth
/// it). Only `h`'s own cache: another thread's is its owner's alone.
fn give_back_huge_cache(mut h: HeapRef) -> bool {
    let held = h.huge_cache.held();
    if held == 0 {
        return false;
    }
    h.huge_cache.clear();
    // No longer waiting to be purged (the next collection counts afresh).
    h.idle_bytes = h.idle_bytes.saturating_sub(held);
    true
}

/// `map()`, and if the kernel refuses it (null: out of address space under `RLIMIT_AS`, or
/// out of memory) while `h`'s huge cache holds mappings, `map()` once more after giving them
/// back ([`give_back_huge_cache`]): the cache must never turn a mapping that fits without it
/// into a null (a new segment's, a huge block's).
pub(super) fn map_making_room<T>(h: HeapRef, mut map: impl FnMut() -> *mut T) -> *mut T {
    let p = map();
    if p.is_null() && give_back_huge_cache(h) {
        return map();
    }
    p
}

/// `map()` (or an allocation from a heap that is not the calling thread's: a node heap, a
/// label heap, an explicit placement's own mapping), and if it comes back null while the
/// calling thread's huge cache holds mappings, once more after giving them back (under the
/// thread's gate): the allocating heap's own cache, which [`map_making_room`] gives back,
/// is not the one that holds the thread's freed mappings there (a node heap's is always
/// empty), and they must not turn a request that fits without them into a failure (review
/// rev21: `Placed::local()` refused 39 of 48 1 MiB blocks, and a 48 MiB one, under
/// `RLIMIT_AS` while the thread's cache held 120 MiB). The caller holds no lock a pass
/// holding the thread's gate could wait for (passes never wait).
pub(crate) fn retry_making_room<T>(mut map: impl FnMut() -> *mut T) -> *mut T {
    let p = map();
    if !p.is_null() {
        return p;
    }
    let h = super::tls::heap_or_unset();
    if super::tls::is_unset(h) {
        return p;
    }
    // SAFETY: the calling thread's own heap, not the unset one (just checked).
    let h = unsafe { HeapRef::new(h) };
    if h.state != ACTIVE {
        return p;
    }
    let held = {
        let _gate = super::purger::enter(h.as_ptr());
        give_back_huge_cache(h)
    };
    if held {
        map()
    } else {
        p
    }
}

/// [`route::admit`](crate::heap::route::admit) for an explicit request of the calling
/// thread (a `Placed` handle, a placement scope): when the request does not fit its tier's
/// budget, what the budget counts there though nobody holds it is given back first (the
/// thread's huge cache, whose freed mappings count as committed on their node until the purge
/// delay, and the tier's node heaps' freed blocks: [`make_budget_room`]), then the budget is
/// asked. Counts a refusal if it still does not fit. The caller holds the
/// reservation until its block is allocated.
pub(crate) fn admit_making_room(node: u32, size: usize) -> Option<route::Reservation> {
    if let Some(r) = route::try_admit(node, size) {
        return Some(r);
    }
    let h = own();
    let _gate = super::purger::enter(h.as_ptr());
    // SAFETY: a user's request for a placed block: we hold no node heap's lock or page.
    unsafe { make_budget_room(h, route::tier_nodes_of(node)) };
    route::admit(node, size)
}

/// Before a tier budget refuses a request on the tier of nodes `nodes`: gives back what the
/// budget counts as committed there though nobody holds it, so that the caller can ask once
/// more. That is `h`'s huge cache (its freed mappings wait out the purge delay) and the
/// tier's node heaps, where every block a thread frees of a threshold request or a `Placed`
/// handle waits until that heap's next collection, its memory committed (review rev40: a far
/// budget of 3 MiB refused a 2 MiB block when the one freed before it was still counted).
/// Returns whether there was anything to give back.
///
/// # Safety
/// `h` is the calling thread's heap, whose gate the caller holds; it holds no node heap's
/// lock and uses no page of a node heap.
pub(super) unsafe fn make_budget_room(h: HeapRef, nodes: u64) -> bool {
    let cache = give_back_huge_cache(h);
    // SAFETY: forwarded contract.
    let heaps = unsafe { reclaim_node_heaps(nodes) };
    cache || heaps
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
        let h = own();
        if h.state != ACTIVE {
            return ptr::null_mut();
        }
        // Growth moves the object (a new address) but keeps its node and label, and a
        // reallocation that moves its block inside a diverting scope places the new block by
        // the scope (docs/tiers.md): only where the scope would put a new block may it grow so
        // (review rev27: a 4 MiB block grown to 20 MiB in a far scope stayed near).
        let label = (*seg).huge_label;
        let as_scoped = match h.scope {
            Scope::None => true,
            Scope::Local => h.scope_label == 0 || h.scope_label == label,
            Scope::Node(n) => n == h.node && h.scope_label == label,
            Scope::Even { .. } | Scope::Weighted(_) => false,
        };
        if !as_scoped {
            return ptr::null_mut();
        }
        let old_size = (*seg).huge_size;
        // Growth commits new bytes on the object's node (which `grow` requires to be the
        // heap's): past the node's tier budget the caller moves the block instead, and the
        // new one is placed (spilled) by the policies like any allocation (review rev24: a
        // 3 MiB block grown to 64 MiB in place took the near tier 53 MiB past its budget).
        if !route::fits(h.node, new_size - old_size) {
            return ptr::null_mut();
        }
        // The bytes are booked on this heap's counters, which must own the object's node:
        // `grow` checks it once the demoter can no longer change it (not here, unclaimed).
        // Booked before the grown object is registered again: a move by the demoter from
        // then on takes its whole size off its node (review rev21).
        // The grown object's header is ours alone in the closure (out of the registry).
        let new = huge::grow(seg, new_size, h.node as u16, |new| {
            let (size, label, label_node) =
                ((*new).huge_size, (*new).huge_label, (*new).huge_label_node);
            bump(&h.stats.huge_alloc_bytes, (size - old_size) as u64);
            if label != 0 {
                book_huge(label, label_node as u16, (size - old_size) as i64);
            }
        });
        if new.is_null() {
            return ptr::null_mut();
        }
        huge::object(new)
    }
}

/// A tier move (`tier::migrate`) of the live huge object of `seg` from the node its header
/// names to node `to`: its bytes go with it, off that node and on `to`, in the committed
/// bytes of its mapping, the per-node live bytes and, for a labelled object, its label's
/// per-node bytes (review rev19: the live and label bytes stayed on the old node while it
/// lived, and the per-node ones went below zero on `to` once it was freed, which books them
/// off `to`); the header names `to` from then on. Nothing if it is on `to` already.
/// Allocation-free.
///
/// # Safety
/// `seg` is a live huge object that nobody frees or resizes meanwhile (the mover holds its
/// registry claim, which the free and the resize wait for).
pub(crate) unsafe fn book_huge_moved(seg: *mut Segment, to: u16) {
    // SAFETY: the object is live and held still (contract).
    unsafe {
        let from = (*seg).node;
        if from == to {
            return;
        }
        let (size, map_size) = ((*seg).huge_size, (*seg).map_size);
        crate::heap::segment::commit_sub(from, map_size);
        crate::heap::segment::commit_add(to, map_size);
        // Its allocation counted on its heap's node and its free counts off whatever node
        // its header names then (`count_node_free`): without this the per-node live bytes
        // would stay up on the old node and go below zero on the new one for good once it is
        // freed (review rev19).
        crate::heap::segment::move_live(from, to, size);
        if (*seg).huge_label != 0 && (*seg).huge_label_node as u16 != to {
            book_huge(
                (*seg).huge_label,
                (*seg).huge_label_node as u16,
                -(size as i64),
            );
            book_huge((*seg).huge_label, to, size as i64);
            (*seg).huge_label_node = to as u8;
        }
        (*seg).node = to;
    }
}

/// Frees the huge object of `seg`: into our cache if the heap is active and the mapping is
/// of its node and fits, else back to the OS.
///
/// # Safety
/// `seg` is a huge segment whose object the caller is freeing (its last use).
pub(super) unsafe fn free_huge(mut h: HeapRef, seg: *mut Segment) {
    // SAFETY: seg is a huge segment whose object is being freed by us; once it is out of the
    // registry (which waits for a demoter that has it claimed), nobody else uses it.
    unsafe {
        huge::unregister(seg);
        let (c, shared) = counters(h);
        // It holds no object any more: offset 0 (no object starts in the header) until
        // `huge::init` gives it one again, which is what a second free of it finds
        // (`free_other_slow`). Nothing reads the offset of a mapping that holds no object.
        (*seg).huge_offset = 0;
        if (*seg).huge_label != 0 {
            let bytes = -((*seg).huge_size as i64);
            book_huge((*seg).huge_label, (*seg).huge_label_node as u16, bytes);
            (*seg).huge_label = 0;
        }
        add(&c.huge_frees, 1, shared);
        add(&c.huge_free_bytes, (*seg).huge_size as u64, shared);
        let same_node = (*seg).node as u32 == h.node;
        count_node_free(h, (*seg).node, (*seg).huge_size as u64);
        // Only a span of our own node goes in our cache: reusing it elsewhere would misplace it.
        if h.state == ACTIVE && same_node && h.huge_cache.put(seg) {
            heap_tick(h);
            return;
        }
        commit_sub((*seg).node, (*seg).map_size);
        huge::unmap(seg);
    }
}

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
        let h = own();
        let owner = (*seg).owner.load(Ordering::Relaxed) == h.addr();
        if new_size <= MEDIUM_MAX {
            return new_size <= cap && new_size * 2 >= cap;
        }
        let n = (*page).slice_count as usize;
        let want = new_size.div_ceil(SLICE_SIZE);
        if want <= n {
            if want < n && owner {
                // Give the tail slices back to the segment.
                let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
                let shrink = Segment::shrink_large(seg, page, want, os::now_ms(), delay);
                // Resident free slices now, to be purged (review rev10: a quiet thread kept
                // them when nothing else had marked its heap as holding).
                note_idle(h, shrink);
                bump(&h.stats.large_free_bytes, shrink as u64);
                note_far_large(h, seg, -(shrink as i64));
            }
            return true;
        }
        if new_size > LARGE_MAX || !owner {
            return false;
        }
        // The slices it would take commit bytes on the segment's node: past the node's tier
        // budget the block moves instead (as `grow_huge`; review rev24).
        if !route::fits((*seg).node as u32, (want - n) * SLICE_SIZE) {
            return false;
        }
        let grow = Segment::grow_large(seg, page, want);
        if grow == 0 {
            return false;
        }
        bump(&h.stats.large_alloc_bytes, grow as u64);
        note_far_large(h, seg, grow as i64);
        true
    }
}
