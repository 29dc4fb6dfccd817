//! Huge objects: one object per segment-aligned mapping, for requests over `LARGE_MAX` or
//! aligned beyond a slice.
//!
//! Owns: the huge segment header fields, the registry of live huge objects, moving a huge
//! mapping's pages into a bigger mapping (`enlarge`, `grow`), and, in its child `cache`, the
//! per-thread cache of freed huge mappings ([`HugeCache`]: what it keeps, which mappings serve
//! a request, when one goes back to the OS), and the `secure` build's guard pages of a huge
//! mapping. May touch: `sys::os`, `heap::segment`, `heap::claim`.
//!
//! The `secure` build: the last OS page of every huge mapping (live or cached) is a
//! `PROT_NONE` guard (`TAIL_GUARD`, inside `map_size`, counted like the rest of it), and an
//! object has another right before its start (`Segment::huge_guard`), between it and the
//! header: a write one byte past the object's usable end, or just before its start, faults.
//! Whatever changes a mapping's size or moves its pages moves the guards with it (`map`,
//! `init`, `enlarge`, and the cache's grow, split and assemble); `mremap` moves one mapping
//! (VMA) only, so the guards are made read-write before a move and placed again after.

mod cache;

use super::claim::ClaimSlot;
use super::segment::{Segment, SegmentKind, BLOCKS_START, GUARD_SIZE, MAX_ALIGN, SEGMENT_SIZE};
use crate::sync::{AtomicUsize, Ordering};
use crate::sys::os;
pub use cache::HugeCache;
#[cfg(test)]
pub use cache::{CACHE_MAX_BYTES, SPLIT_MIN};
use core::ptr;

/// Bytes at the end of every huge mapping that are its guard page (`secure` build: one OS
/// page, `PROT_NONE`; none otherwise). Part of `map_size`, never of the object.
pub const TAIL_GUARD: usize = GUARD_SIZE;

/// Where the object goes in its segment, and how many bytes to map, for `size` at `align`.
/// None if it cannot be served (alignment over `MAX_ALIGN`, or sizes near the address space).
pub fn layout_for(size: usize, align: usize) -> Option<(usize, usize)> {
    if align > MAX_ALIGN {
        return None;
    }
    // The header (and its guard page) rounded up to the alignment (a power of two).
    let offset = (BLOCKS_START + align - 1) & !(align - 1);
    let end = offset.checked_add(size)?.checked_add(os::OS_PAGE - 1)? & !(os::OS_PAGE - 1);
    let end = end.checked_add(TAIL_GUARD)?;
    if end > isize::MAX as usize / 2 {
        return None;
    }
    Some((offset, end))
}

/// The usable bytes of an object at `offset` of a huge mapping of `map_size` bytes: up to the
/// mapping's end, less its tail guard.
#[inline]
pub fn usable(map_size: usize, offset: usize) -> usize {
    map_size - offset - TAIL_GUARD
}

/// `secure` build: makes the last OS page of the huge mapping at `base`, of `map_size` bytes,
/// its tail guard. Nothing otherwise.
///
/// # Safety
/// The mapping is ours and that page holds no live object.
#[inline]
pub(super) unsafe fn set_tail_guard(base: *mut u8, map_size: usize) {
    #[cfg(feature = "secure")]
    // SAFETY: the last page of the mapping is ours and unused (contract). Refused (too many
    // mappings): the object is only unguarded.
    unsafe {
        os::protect_none(base.add(map_size - TAIL_GUARD), TAIL_GUARD);
    }
    let _ = (base, map_size);
}

/// `secure` build: makes the tail guard of the huge mapping at `base`, of `map_size` bytes,
/// read-write again (it is about to lie inside an object, or the mapping to move). Returns
/// false if the kernel refused: the page is then still inaccessible, and the caller must not
/// put an object over it or move the mapping (review rev38). Nothing otherwise (true).
///
/// # Safety
/// The mapping is ours.
#[inline]
#[must_use]
pub(super) unsafe fn drop_tail_guard(base: *mut u8, map_size: usize) -> bool {
    #[cfg(feature = "secure")]
    // SAFETY: the last page of a mapping of ours (contract); giving access changes nothing.
    unsafe {
        os::protect_rw(base.add(map_size - TAIL_GUARD), TAIL_GUARD)
    }
    #[cfg(not(feature = "secure"))]
    {
        let _ = (base, map_size);
        true
    }
}

/// `secure` build: places the front guard of an object at `offset` of `seg` (the page right
/// before it), making the last object's front guard read-write if it was elsewhere; with
/// `offset` 0, only drops the old one (before a move). Returns false, and places nothing, if
/// the kernel refused to make the old guard read-write: the header then still names it
/// (`huge_guard`), since the page is still inaccessible, and the caller must not put an
/// object over it or move the mapping (review rev38: the header forgot it, and the next
/// object there died of SIGSEGV at its first write to it). Nothing otherwise (true).
///
/// # Safety
/// `seg` is a huge mapping of ours that no other thread uses, holding no live object (or
/// the caller's, at `offset`); `offset` is 0 or at least `BLOCKS_START`.
#[inline]
#[must_use]
pub(super) unsafe fn place_front_guard(seg: *mut Segment, offset: usize) -> bool {
    #[cfg(feature = "secure")]
    // SAFETY: the header is ours (contract); the old guard page lies in the mapping, and the
    // new one (after the header: offset >= BLOCKS_START) holds no object.
    unsafe {
        let base = seg as *mut u8;
        let old = (*seg).huge_guard as usize;
        let new = offset.saturating_sub(GUARD_SIZE);
        if old == new {
            return true;
        }
        if old != 0 && !os::protect_rw(base.add(old), GUARD_SIZE) {
            return false;
        }
        (*seg).huge_guard = 0;
        if new != 0 && os::protect_none(base.add(new), GUARD_SIZE) {
            (*seg).huge_guard = new as u32;
        }
        true
    }
    #[cfg(not(feature = "secure"))]
    {
        let _ = (seg, offset);
        true
    }
}

/// The address range a huge mapping of `map_size` bytes holds: the mapping rounded up to a
/// whole number of 4 MiB segments (at least one). The map says "ours" for every address of
/// the 4 MiB of a mapping's first segment-map entry; if a mapping smaller than 4 MiB (an
/// object of 2-4 MiB, or a small one aligned beyond 64 KiB) left the rest of it to the
/// kernel, another mapping (a thread stack, a C library's buffer) could land there and
/// `owns`, `free` and `malloc_usable_size` would take its addresses for ours. Past 4 MiB the
/// rounding lets the huge cache split a mapping at any 4 MiB boundary of it without a system
/// call (the tail's reservation is then exactly the rest of the range), and grow a cached
/// mapping inside its range. The bytes past `map_size` are reserved, never touched (zero, not
/// resident): address space, not memory.
#[inline]
pub fn reservation(map_size: usize) -> usize {
    map_size.max(1).div_ceil(SEGMENT_SIZE) * SEGMENT_SIZE
}

/// Maps a new huge segment holding an object of `size` at `offset`. Null when the kernel
/// refuses.
pub fn map(map_size: usize, offset: usize, size: usize, node: u32, bind: bool) -> *mut Segment {
    let p = os::map_aligned(
        reservation(map_size),
        SEGMENT_SIZE,
        if bind { Some(node) } else { None },
    );
    if p.is_null() {
        return ptr::null_mut();
    }
    if bind {
        // Under the far policy `preferred`: the object's pages faulted in on the far node now,
        // then left to the kernel's tiering (see `numa::let_kernel_promote`); the reservation
        // past `map_size` keeps MPOL_PREFERRED (faults there land far, not promotable).
        crate::sys::numa::let_kernel_promote(p, map_size, node);
    }
    let seg = p as *mut Segment;
    // SAFETY: a fresh, zeroed mapping of ours, at least BLOCKS_START long; its last page
    // holds no object.
    unsafe {
        // A fresh mapping has no old guard to drop: this cannot fail.
        let _ = init(seg, map_size, offset, size, node);
        set_tail_guard(p, map_size);
    }
    super::segment::map_insert(seg);
    seg
}

/// (Re)writes a huge segment's header for an object at `offset`, and (`secure` build) puts
/// the object's front guard right before it. Returns false if the last object's front guard
/// could not be made read-write again ([`place_front_guard`]): the mapping must then not
/// serve the object (a fresh one always can: it has no old guard).
///
/// # Safety
/// `seg` is a huge mapping of `map_size` bytes that no other thread uses, holding no object;
/// `offset` is at least `BLOCKS_START`.
#[must_use]
pub unsafe fn init(
    seg: *mut Segment,
    map_size: usize,
    offset: usize,
    size: usize,
    node: u32,
) -> bool {
    // SAFETY: exclusive use per the contract.
    unsafe {
        (*seg).owner.store(0, Ordering::Relaxed);
        (*seg).kind = SegmentKind::Huge;
        (*seg).node = node as u16;
        (*seg).map_size = map_size;
        (*seg).huge_offset = offset;
        (*seg).huge_size = usable(map_size, offset);
        (*seg).huge_label = 0;
        let _ = size;
        place_front_guard(seg, offset)
    }
}

/// The object inside a huge segment.
#[inline]
pub fn object(seg: *mut Segment) -> *mut u8 {
    // SAFETY: huge_offset was written when the segment was made, before the object was handed
    // out.
    unsafe { (seg as *mut u8).add((*seg).huge_offset) }
}

// ---------------------------------------------------------------------------------------------
// The registry of live huge objects, for a thread that does not own them (the automatic
// demoter) to visit them safely. A slot holds a segment's address, with the low bit set while
// the visitor has it claimed; the object's free takes it out of its slot with a CAS and waits
// out a claim, so a claimed header is never read after it is freed or unmapped. Fixed size, no
// allocation: an object that finds no free slot is simply not visited.

/// Slots in the huge registry.
pub const REG_SLOTS: usize = 1024;
/// `Segment::huge_slot` of an object that is in no slot.
pub const NO_SLOT: u32 = u32::MAX;
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: ClaimSlot = ClaimSlot::new();
static REGISTRY: [ClaimSlot; REG_SLOTS] = [EMPTY_SLOT; REG_SLOTS];
static REG_HINT: AtomicUsize = AtomicUsize::new(0);

/// Records a huge object that was just handed out (fresh or from a cache) at `now`.
///
/// # Safety
/// The caller owns `seg`, a huge segment in no slot.
pub unsafe fn register(seg: *mut Segment, now: u64) {
    // SAFETY: owner-only header fields (per the contract).
    unsafe {
        (*seg).huge_born_ms = now;
        (*seg).huge_slot = NO_SLOT;
        let start = REG_HINT.fetch_add(1, Ordering::Relaxed);
        for i in 0..REG_SLOTS {
            let k = (start + i) % REG_SLOTS;
            if REGISTRY[k].try_fill(seg as usize) {
                (*seg).huge_slot = k as u32;
                // From here on a visitor (the automatic demoter) may claim and move it.
                #[cfg(test)]
                AFTER_REGISTER.with(|f| {
                    if let Some(f) = f.get() {
                        f(seg)
                    }
                });
                return;
            }
        }
    }
}

#[cfg(test)]
std::thread_local! {
    /// Runs inside [`register`] right after the object went into its slot: what a visitor
    /// that claims it at once (the automatic demoter, `after` 0) may do at that moment.
    pub(crate) static AFTER_REGISTER: core::cell::Cell<Option<fn(*mut Segment)>> =
        const { core::cell::Cell::new(None) };
}

/// Takes a huge object out of the registry before it is freed, waiting while a visitor has it
/// claimed.
///
/// # Safety
/// The caller owns `seg` (it is freeing its object).
pub unsafe fn unregister(seg: *mut Segment) {
    // SAFETY: owner-only header field.
    let k = unsafe { (*seg).huge_slot };
    if k == NO_SLOT {
        return;
    }
    REGISTRY[(k as usize).min(REG_SLOTS - 1)].take(seg as usize, || {
        #[cfg(test)]
        tests::WHILE_CLAIMED.with(|f| {
            if let Some(f) = f.get() {
                f()
            }
        });
    });
    // SAFETY: as above.
    unsafe { (*seg).huge_slot = NO_SLOT };
}

/// Runs `f` with `seg`'s registry slot claimed, first waiting out a visitor that has it: no
/// visitor works on the object while `f` runs (the owner's explicit move and the automatic
/// demoter never move the same block at once). An object in no slot runs `f` at once.
///
/// # Safety
/// The caller owns `seg`'s object (so the header is valid and the object is not freed while
/// this runs).
pub unsafe fn with_claim<R>(seg: *mut Segment, f: impl FnOnce() -> R) -> R {
    // SAFETY: owner-only header field (per the contract).
    let k = unsafe { (*seg).huge_slot };
    if k == NO_SLOT {
        return f();
    }
    let slot = &REGISTRY[(k as usize).min(REG_SLOTS - 1)];
    // Not in its slot: only its owner (us) takes it out, so this does not happen.
    if !slot.claim_own(seg as usize) {
        return f();
    }
    let r = f();
    slot.release(seg as usize);
    r
}

/// Calls `f` with every registered huge object, each claimed for the duration of its call:
/// its header stays valid and its object is not freed meanwhile (a free waits). `f` must not
/// free the object it is given.
pub fn for_each_claimed(mut f: impl FnMut(*mut Segment)) {
    for slot in REGISTRY.iter() {
        if let Some(v) = slot.try_claim() {
            f(v as *mut Segment);
            slot.release(v);
        }
    }
}

/// In a fork child: drops every claim. The child's one thread is the one that forked, which
/// holds none (fork is not called from inside a visit or a move), so each claim belongs to a
/// visitor that does not exist there (the demoter), and the object's free would wait for it
/// forever.
pub fn clear_claims_after_fork() {
    for slot in REGISTRY.iter() {
        slot.clear_claim_after_fork();
    }
}

/// Unmaps a huge segment.
///
/// # Safety
/// Nobody uses `seg` or its object any more.
pub unsafe fn unmap(seg: *mut Segment) {
    super::segment::map_remove(seg);
    // SAFETY: per the contract; the reservation of map_size is the whole mapping.
    unsafe { os::unmap(seg as *mut u8, reservation((*seg).map_size)) }
}

/// Grows the huge object of `seg` to `new_size` bytes by moving its pages into a bigger
/// segment-aligned mapping (no copy), if the object is on `node`. Returns the new segment,
/// or null (nothing changed) if the object is on another node, the size cannot be served or
/// the kernel refuses. The registry slot, the segment map and the committed bytes are
/// updated; the caller books the object's bytes (on `node`) in `book`, which runs on the grown
/// segment before it is registered again: from then on the automatic demoter may move it
/// (its old birth time makes it due), and a move books its whole size off the node the
/// caller's booking must already have reached (review rev21).
///
/// The node is read once the object is out of the registry: until then the automatic
/// demoter may move the object and rewrite it (under its claim, which `unregister` waits
/// out), and a caller that checked it earlier could book the growth on the wrong node.
///
/// # Safety
/// The caller owns the object of huge segment `seg` (it is reallocating it).
pub unsafe fn grow(
    seg: *mut Segment,
    new_size: usize,
    node: u16,
    book: impl FnOnce(*mut Segment),
) -> *mut Segment {
    // SAFETY: the object and its header are the caller's (contract); the header moves with
    // the pages, so it is read before the move and written through the new address after.
    unsafe {
        let offset = (*seg).huge_offset;
        let old_map = (*seg).map_size;
        let Some(end) = offset
            .checked_add(new_size)
            .and_then(|e| e.checked_add(os::OS_PAGE - 1))
        else {
            return ptr::null_mut();
        };
        let Some(new_map) = (end & !(os::OS_PAGE - 1)).checked_add(TAIL_GUARD) else {
            return ptr::null_mut();
        };
        if new_map <= old_map || new_map > isize::MAX as usize / 2 {
            return ptr::null_mut();
        }
        let born = (*seg).huge_born_ms;
        unregister(seg);
        // No visitor has it now: its node is settled.
        if (*seg).node != node {
            register(seg, born);
            return ptr::null_mut();
        }
        let new = enlarge(seg, new_map);
        if new.is_null() {
            register(seg, born);
            return ptr::null_mut();
        }
        (*new).huge_size = usable(new_map, offset);
        let node = (*new).node;
        super::segment::commit_sub(node, old_map);
        super::segment::commit_add(node, new_map);
        book(new);
        register(new, born);
        new
    }
}

/// Moves the huge mapping `seg` into a new segment-aligned mapping of `new_map` bytes without
/// copying: its pages (resident ones stay resident, with their contents and node policy) come
/// first, the rest is fresh. For a cached mapping, so that the next object touches fewer
/// fresh pages, and for [`grow`]. Returns the new segment, or null (and `seg` is unchanged)
/// if the kernel refuses. The segment map and `map_size` are updated; the registry and the
/// committed bytes are the caller's.
///
/// # Safety
/// `seg` is an unregistered huge mapping of ours that nobody else uses meanwhile, smaller
/// than `new_map`, which is a multiple of the OS page.
pub unsafe fn enlarge(seg: *mut Segment, new_map: usize) -> *mut Segment {
    // SAFETY: seg is ours and unused (contract); its header moves with its pages, so it is
    // read before the move and written through the new address after.
    unsafe {
        let old_map = (*seg).map_size;
        // A segment-aligned place for it, bound to the mapping's node: the moved pages keep
        // their own policy (the remap replaces that part of the placeholder, binding and
        // all), and the reservation past `new_map`, which the huge cache may later grow the
        // mapping into, faults in on the same node.
        let dst = os::map_aligned(reservation(new_map), SEGMENT_SIZE, Some((*seg).node as u32));
        if dst.is_null() {
            return ptr::null_mut();
        }
        // Out of the segment map while the old range is still ours: once the kernel has
        // moved it, any thread's next mmap may get that address and insert its own entry,
        // which a removal after the move would erase. Nobody looks the entry up meanwhile:
        // the mapping holds no object, or only the caller's (it is reallocating it).
        super::segment::map_remove(seg);
        // The `secure` build's guards split the mapping, and `mremap` moves one piece only:
        // read-write for the move (the tail guard for good: it ends up inside the mapping).
        // A guard the kernel would not give back stays (and the move is not tried: `mremap`
        // would refuse the split mapping anyway).
        #[cfg(feature = "secure")]
        let front = (*seg).huge_guard as usize;
        if !place_front_guard(seg, 0)
            || !drop_tail_guard(seg as *mut u8, old_map)
            || !os::remap(seg as *mut u8, old_map, dst, new_map)
        {
            set_tail_guard(seg as *mut u8, old_map);
            // (Back where it was, or still there: nothing to drop then.)
            #[cfg(feature = "secure")]
            let _ = place_front_guard(seg, front + GUARD_SIZE);
            super::segment::map_insert(seg);
            os::unmap(dst, reservation(new_map));
            return ptr::null_mut();
        }
        // The remap moved the first old_map bytes; the rest of the old reservation is still
        // mapped (and its map entry already gone).
        let old_res = reservation(old_map);
        if old_res > old_map {
            os::unmap((seg as *mut u8).add(old_map), old_res - old_map);
        }
        #[cfg(test)]
        tests::AFTER_REMAP.with(|f| {
            if let Some(f) = f.get() {
                f(seg as *mut u8)
            }
        });
        let new = dst as *mut Segment;
        (*new).map_size = new_map;
        set_tail_guard(dst, new_map);
        #[cfg(feature = "secure")]
        {
            if front != 0 {
                // The moved header names no guard (dropped above): nothing to refuse.
                let _ = place_front_guard(new, front + GUARD_SIZE);
            }
        }
        super::segment::map_insert(new);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::super::thread;
    use super::*;
    use crate::sync::{spin_hint, AtomicBool};
    use core::cell::Cell;

    thread_local! {
        /// Runs inside [`enlarge`] right after the kernel has released the old range (with
        /// its address): what another thread may do at that moment.
        pub(super) static AFTER_REMAP: Cell<Option<fn(*mut u8)>> = const { Cell::new(None) };
        /// Runs inside [`unregister`] while it waits for a visitor that has the object
        /// claimed (each time it looks).
        pub(super) static WHILE_CLAIMED: Cell<Option<fn()>> = const { Cell::new(None) };
    }

    /// Issue 14, item 4: `enlarge` moved the mapping away (the old range is free for any
    /// thread's next mmap) and only then removed the old address from the segment map; a
    /// segment another thread mapped there in between lost its entry (its blocks would no
    /// longer be known as tieralloc's: leaked frees, a usable size of 0 in the drop-in).
    #[test]
    fn a_segment_mapped_where_a_moved_mapping_was_keeps_its_map_entry() {
        static SQUATTED: AtomicBool = AtomicBool::new(false);
        fn squat(old: *mut u8) {
            // One page is enough to stand for another thread's segment there (the map is
            // keyed by the segment's start; a whole segment could run into a neighbour).
            // SAFETY: an anonymous mapping at an address nobody maps (the move has just
            // released it); MAP_FIXED_NOREPLACE fails rather than replace anything.
            let p = unsafe {
                libc::mmap(
                    old as *mut libc::c_void,
                    os::OS_PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            // Another test's thread may have got there first (just what this is about): the
            // caller tries again.
            let ok = p as *mut u8 == old;
            if ok {
                super::super::segment::map_insert(old as *mut Segment);
            } else if p != libc::MAP_FAILED {
                // SAFETY: a mapping we just made elsewhere (an old kernel ignoring the flag).
                unsafe { libc::munmap(p, os::OS_PAGE) };
            }
            SQUATTED.store(ok, Ordering::Relaxed);
        }
        for _ in 0..20 {
            let (offset, map_size) = layout_for(3 << 20, 16).unwrap();
            let seg = map(map_size, offset, 3 << 20, 0, false);
            assert!(!seg.is_null());
            let old = seg as *mut u8;
            AFTER_REMAP.with(|f| f.set(Some(squat)));
            // SAFETY: a huge mapping of ours, unregistered and used by nobody else.
            let new = unsafe { enlarge(seg, 2 * SEGMENT_SIZE) };
            AFTER_REMAP.with(|f| f.set(None));
            assert!(!new.is_null());
            let squatted = SQUATTED.load(Ordering::Relaxed);
            let kept = super::super::segment::contains(old);
            let moved = super::super::segment::contains(new as *const u8);
            // SAFETY: the squatter's mapping (if made) and the moved one are ours and hold
            // nothing.
            unsafe {
                if squatted {
                    super::super::segment::map_remove(old as *mut Segment);
                    libc::munmap(old as *mut libc::c_void, os::OS_PAGE);
                }
                unmap(new);
            }
            if !squatted {
                continue;
            }
            assert!(moved, "the moved mapping is not in the segment map");
            assert!(
                kept,
                "the segment mapped at the old address lost its map entry"
            );
            return;
        }
        panic!("other threads took the released address every time");
    }

    /// Issue 14, item 4: the automatic demoter rewrites a huge block's `node` while it holds
    /// the block's registry claim; `grow_huge` read it before taking the block out of the
    /// registry (no claim), so it could check the old node, then grow a block that had just
    /// moved to another node and book the growth on a heap of the old one. Here a stand-in
    /// demoter claims the block, waits until the owner's realloc is waiting for the claim,
    /// moves it (as `migrate` books a move) and lets go: the owner must not grow it.
    #[test]
    fn a_huge_block_moved_during_its_realloc_is_not_grown_on_the_old_node() {
        static CLAIMED: AtomicBool = AtomicBool::new(false);
        static OWNER_WAITS: AtomicBool = AtomicBool::new(false);
        std::thread::spawn(|| {
            // SAFETY: a huge block of this thread's heap, freed once; the stand-in demoter
            // touches its header only while it holds the claim, as the real one does.
            unsafe {
                let p = thread::alloc_generic(3 << 20, 16, false);
                assert!(!p.is_null());
                let seg = super::super::segment::segment_of(p);
                assert_eq!((*seg).kind, SegmentKind::Huge);
                let home = thread::heap_node();
                assert_eq!((*seg).node as u32, home);
                let far = (home as u16 + 1) % super::super::segment::MAX_NODES as u16;
                let addr = seg as usize;
                let demoter = std::thread::spawn(move || {
                    let mut done = false;
                    while !done {
                        for_each_claimed(|s| {
                            if s as usize != addr {
                                return;
                            }
                            CLAIMED.store(true, Ordering::Release);
                            while !OWNER_WAITS.load(Ordering::Acquire) {
                                crate::sync::spin_hint();
                            }
                            // We hold the claim (see the outer SAFETY): the header is
                            // ours to rewrite, as migrate books a move.
                            super::super::segment::commit_sub((*s).node, (*s).map_size);
                            super::super::segment::commit_add(far, (*s).map_size);
                            (*s).node = far;
                            done = true;
                        });
                    }
                });
                while !CLAIMED.load(Ordering::Acquire) {
                    crate::sync::spin_hint();
                }
                WHILE_CLAIMED.with(|f| f.set(Some(|| OWNER_WAITS.store(true, Ordering::Release))));
                let q = thread::grow_huge(p, 5 << 20);
                WHILE_CLAIMED.with(|f| f.set(None));
                demoter.join().unwrap();
                let grown_on = if q.is_null() {
                    None
                } else {
                    Some((*super::super::segment::segment_of(q)).node)
                };
                thread::free(if q.is_null() { p } else { q });
                assert_eq!(
                    grown_on, None,
                    "a block moved to node {far} was grown and booked on node {home}"
                );
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_owner_and_a_visitor_never_hold_an_object_at_once() {
        // A fake header is enough: the registry only stores its address, and the fields
        // read here are written first.
        let seg = map(SEGMENT_SIZE * 2, MAX_ALIGN, 4096, 0, false);
        assert!(!seg.is_null());
        // SAFETY: a fresh huge segment of ours.
        unsafe { register(seg, 0) };
        // SAFETY: as above.
        assert_ne!(unsafe { (*seg).huge_slot }, NO_SLOT);
        static INSIDE: AtomicBool = AtomicBool::new(false);
        static STOP: AtomicBool = AtomicBool::new(false);
        static VISITS: AtomicUsize = AtomicUsize::new(0);
        let addr = seg as usize;
        let visitor = std::thread::spawn(move || {
            while !STOP.load(Ordering::Relaxed) {
                for_each_claimed(|s| {
                    if s as usize == addr {
                        assert!(!INSIDE.swap(true, Ordering::AcqRel), "owner inside");
                        VISITS.fetch_add(1, Ordering::Relaxed);
                        spin_hint();
                        INSIDE.store(false, Ordering::Release);
                    }
                });
            }
        });
        // Hold and release the claim until the visitor has had the object many times too.
        let mut held = 0u64;
        while (held < 20_000 || VISITS.load(Ordering::Relaxed) < 1_000) && held < 100_000_000 {
            // SAFETY: we own the (fake) object.
            unsafe {
                with_claim(seg, || {
                    assert!(!INSIDE.swap(true, Ordering::AcqRel), "visitor inside");
                    held += 1;
                    INSIDE.store(false, Ordering::Release);
                })
            };
        }
        STOP.store(true, Ordering::Relaxed);
        visitor.join().unwrap();
        assert!(
            VISITS.load(Ordering::Relaxed) >= 1_000,
            "the visitor got the object {} times",
            VISITS.load(Ordering::Relaxed)
        );
        // SAFETY: ours, no visitor any more.
        unsafe {
            unregister(seg);
            unmap(seg);
        }
    }
}
