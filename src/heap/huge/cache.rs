//! The per-thread cache of freed huge mappings: what it keeps (bounded by bytes), which
//! mappings serve a request (the best fit, split in place at the request's 4 MiB boundary
//! when the tail is worth keeping; else one grown inside its reservation; else several
//! smaller ones moved together into one), and when one goes back to the OS.
//!
//! Owns: [`HugeCache`], the in-place split (`split_in_place`: a header and a segment-map
//! entry at a 4 MiB boundary, no system call but the `secure` build's guard page) and the one
//! page-moving step (`assemble`). In the `secure` build every cached mapping keeps its tail
//! guard (`huge::TAIL_GUARD`) on its last page, wherever a split, grow or assembly put its end.
//! May touch: `sys::os` (map, remap, unmap, decommit), `heap::segment` (the segment map,
//! committed bytes, the header), and the parent `huge` (reservation, unmap).
//!
//! Why: a program that replaces buffers of several MiB would otherwise fault every buffer in
//! afresh (a page fault per 4 KiB, most of its time). The cache keeps the resident pages of
//! freed mappings and hands them to the next requests, whatever their sizes: split where
//! they stand, grown into their reserved range, or moved together with `mremap` (page
//! tables move, nothing is copied or faulted), for at most the purge delay.

use super::{drop_tail_guard, place_front_guard, reservation, set_tail_guard, unmap, NO_SLOT};
use crate::heap::segment::{self, Segment, SegmentKind, SEGMENT_SIZE};
use crate::sys::os;
use core::ptr;

/// Freed huge mappings a thread keeps for reuse (at most).
pub const CACHE_SLOTS: usize = 32;

/// The most bytes of freed huge mappings one thread keeps (they stay resident while cached,
/// so this bounds what the cache adds to RSS per thread, for at most the purge delay).
/// `bigbufs` in preload/bench (16 buffers of 1–32 MiB replaced at random) pushed 990 MiB out
/// of a 64 MiB cache in 400 replacements, each faulted in again: 128 MiB takes its page
/// faults from 205 to 105 thousand (tcmalloc 127) and its time under tcmalloc's, for 11 MB
/// more peak RSS (411 MB; tcmalloc 506, glibc 460). The cache's 32 slots hold 128 MiB of
/// the smallest (4 MiB) mappings.
pub const CACHE_MAX_BYTES: usize = 128 << 20;

/// The least tail worth splitting off a cached mapping that serves a smaller request (at a
/// 4 MiB boundary of the mapping, in place): it becomes a mapping of its own and stays
/// cached. A smaller tail stays with the object.
pub const SPLIT_MIN: usize = 1 << 20;

/// The least unused part of a served mapping worth giving back (one madvise): when it is at
/// least this and at least as big as the object (a small object, aligned beyond a slice, in
/// the 4 MiB every huge mapping holds), it goes back to the OS, so that RSS stays near what
/// the object needs.
pub const CACHE_TRIM_MIN: usize = 256 << 10;

/// One cached mapping.
#[derive(Clone, Copy)]
struct CacheEntry {
    /// The mapping (a huge segment header), or null.
    seg: *mut Segment,
    /// When it was freed (ms).
    freed_at: u64,
}

/// An empty cache entry.
const EMPTY_ENTRY: CacheEntry = CacheEntry {
    seg: ptr::null_mut(),
    freed_at: 0,
};

/// Writes a cached huge mapping's header afresh: zero, then kind, node and size (what a fresh,
/// zeroed mapping's header holds after `huge::map`, less the object's fields, which
/// `huge::init` writes when it is handed out).
///
/// # Safety
/// `seg` is the start of a huge mapping of `map_size` bytes that nobody else uses.
unsafe fn fresh_header(seg: *mut Segment, node: u16, map_size: usize) {
    // SAFETY: the header is in the mapping's first bytes, ours alone (contract).
    unsafe {
        ptr::write_bytes(seg as *mut u8, 0, core::mem::size_of::<Segment>());
        (*seg).kind = SegmentKind::Huge;
        (*seg).node = node;
        (*seg).map_size = map_size;
        (*seg).huge_slot = NO_SLOT;
    }
}

/// Splits `seg` at its 4 MiB boundary `keep` without a system call: the bytes from `keep` on
/// (resident pages and all, and the rest of `seg`'s reservation) become a huge mapping of
/// their own, of the same node, with its own header and segment-map entry; `seg` keeps its
/// first `keep` bytes. The tail's reservation is exactly the rest of `seg`'s (both are
/// rounded up to 4 MiB and `keep` is a multiple of it), so each unmaps only its own range.
/// Committed bytes do not change (the same pages, the same node).
///
/// # Safety
/// `seg` is an unregistered huge mapping of ours holding no object, that nobody else uses,
/// and `keep` is a non-zero multiple of `SEGMENT_SIZE` below its map size.
unsafe fn split_in_place(seg: *mut Segment, keep: usize) -> *mut Segment {
    // SAFETY: seg is ours and unused (contract); the tail starts at a segment boundary inside
    // it, where no segment-map entry is yet (only a mapping's first 4 MiB has one).
    unsafe {
        let ms = (*seg).map_size;
        (*seg).map_size = keep;
        // The head's new last page, which held no object: its tail guard. The tail keeps the
        // mapping's.
        set_tail_guard(seg as *mut u8, keep);
        let tail = (seg as *mut u8).add(keep) as *mut Segment;
        fresh_header(tail, (*seg).node, ms - keep);
        segment::map_insert(tail);
        #[cfg(test)]
        tests::SPLITS.with(|n| n.set(n.get() + 1));
        tail
    }
}

/// Whether the front guard of the last object of `seg` (`secure` build) lies before `at`, or
/// has been dropped (made read-write) so that nothing past `at` is inaccessible but the tail
/// guard; false if it lies at or past `at` and the kernel refused to drop it. True in the
/// default build.
///
/// # Safety
/// `seg` is a huge mapping of ours holding no object, that nobody else uses.
unsafe fn front_guard_before(seg: *mut Segment, at: usize) -> bool {
    #[cfg(feature = "secure")]
    // SAFETY: the header is ours (contract).
    unsafe {
        ((*seg).huge_guard as usize) < at || place_front_guard(seg, 0)
    }
    #[cfg(not(feature = "secure"))]
    {
        let _ = (seg, at);
        true
    }
}

/// A thread's cache of freed huge mappings (a field of its heap, touched by its owner only).
/// Every mapping in it is unregistered, holds no object, and is the cache's alone: [`put`]
/// takes it over, and it leaves only through [`take`] (to the caller) or an unmap. Its
/// mappings' map sizes add up to at most [`CACHE_MAX_BYTES`].
///
/// [`put`]: HugeCache::put
/// [`take`]: HugeCache::take
pub struct HugeCache {
    entries: [CacheEntry; CACHE_SLOTS],
}

impl HugeCache {
    /// No mapping cached.
    pub const fn new() -> HugeCache {
        HugeCache {
            entries: [EMPTY_ENTRY; CACHE_SLOTS],
        }
    }

    /// A mapping of `node` built from cached ones to serve an object that needs `map_size`
    /// bytes, taken out of the cache (null if none is cached), without a system call when one
    /// fits: the smallest cached mapping that is big enough; else the biggest whose
    /// reservation holds the need (it grows inside it: the bytes past its map size are
    /// mapped, never touched); else the biggest ones, moved together (`assemble`) until they
    /// hold the need, the rest fresh. Of a mapping bigger than needed, the part past the
    /// need's 4 MiB boundary, if at least [`SPLIT_MIN`], becomes a mapping of its own that
    /// stays cached (`split_in_place`); what is left under that boundary stays with the
    /// object, and goes back to the OS if it is at least as big as the object. The caller
    /// initialises the mapping (`init`) and registers it.
    pub fn take(&mut self, node: u32, map_size: usize) -> *mut Segment {
        // SAFETY: every non-null entry is a mapping of the cache's alone (type invariant).
        unsafe {
            let mut best: Option<usize> = None;
            let mut inside: Option<usize> = None;
            for (i, e) in self.entries.iter().enumerate() {
                if !e.seg.is_null() && (*e.seg).node as u32 == node {
                    let ms = (*e.seg).map_size;
                    if ms >= map_size {
                        if best.is_none_or(|b| ms < (*self.entries[b].seg).map_size) {
                            best = Some(i);
                        }
                    } else if reservation(ms) >= map_size
                        && inside.is_none_or(|b| ms > (*self.entries[b].seg).map_size)
                    {
                        inside = Some(i);
                    }
                }
            }
            let (seg, freed_at) = match best.or(inside) {
                Some(i) => {
                    let e = self.entries[i];
                    self.entries[i] = EMPTY_ENTRY;
                    (e.seg, e.freed_at)
                }
                None => self.assemble(node, map_size),
            };
            if seg.is_null() {
                return seg;
            }
            let ms = (*seg).map_size;
            if ms < map_size {
                // Grows inside its reservation: the new bytes are fresh (never touched). Its
                // tail guard moves to the new end. A tail guard the kernel will not give back
                // would lie inside the object: the mapping goes back to the OS instead, and
                // the caller maps a fresh one (review rev38).
                if !drop_tail_guard(seg as *mut u8, ms) {
                    segment::commit_sub((*seg).node, ms);
                    unmap(seg);
                    return ptr::null_mut();
                }
                set_tail_guard(seg as *mut u8, map_size);
                (*seg).map_size = map_size;
                segment::commit_add((*seg).node, map_size - ms);
                return seg;
            }
            let keep = reservation(map_size);
            // The last object's front guard, if past the split, would lie in the tail, whose
            // fresh header does not name it: dropped first, and no split if the kernel will not
            // (the header, which keeps naming it, has `init` drop it or give the mapping up).
            if ms > keep && ms - keep >= SPLIT_MIN && front_guard_before(seg, keep) {
                let tail = split_in_place(seg, keep);
                // A slot was freed above (the mapping taken, or the pieces assembled).
                self.insert(tail, freed_at);
            }
            let ms = (*seg).map_size;
            // What the new object does not need may be resident from the last one: when it is
            // at least as big as the object, it goes back to the OS.
            if ms - map_size >= CACHE_TRIM_MIN.max(map_size) {
                os::decommit((seg as *mut u8).add(map_size), ms - map_size);
            }
            seg
        }
    }

    /// Moves the biggest cached mappings of `node` one after another into one new
    /// segment-aligned mapping, until they hold `need` bytes (or none is left); past them the
    /// new mapping is fresh, bound to `node`. The pieces leave the cache. Returns the mapping
    /// (its header written afresh, in the segment map, its fresh bytes counted as committed)
    /// and the oldest piece's free time; null if no mapping of `node` is cached or the kernel
    /// refuses (then every piece not moved stays cached).
    ///
    /// # Safety
    /// As for every method: the entries are the cache's alone.
    unsafe fn assemble(&mut self, node: u32, need: usize) -> (*mut Segment, u64) {
        let mut picked = [false; CACHE_SLOTS];
        let mut sum = 0usize;
        // SAFETY: every non-null entry is a mapping of the cache's alone (type invariant);
        // a piece leaves the cache only once its pages are in the new mapping.
        unsafe {
            while sum < need {
                let Some(i) = (0..CACHE_SLOTS)
                    .filter(|&i| {
                        let s = self.entries[i].seg;
                        !picked[i] && !s.is_null() && (*s).node as u32 == node
                    })
                    .max_by_key(|&i| (*self.entries[i].seg).map_size)
                else {
                    break;
                };
                picked[i] = true;
                sum += (*self.entries[i].seg).map_size;
            }
            if sum == 0 {
                return (ptr::null_mut(), 0);
            }
            let total = sum.max(need);
            let dst = os::map_aligned(reservation(total), SEGMENT_SIZE, Some(node));
            if dst.is_null() {
                return (ptr::null_mut(), 0);
            }
            let (mut off, mut freed_at) = (0usize, u64::MAX);
            for (i, _) in picked.iter().enumerate().filter(|(_, &p)| p) {
                let piece = self.entries[i].seg;
                let ms = (*piece).map_size;
                // Out of the segment map while its range is still ours (as in `enlarge`).
                segment::map_remove(piece);
                // Guards read-write: `mremap` moves one mapping (VMA), and they end up inside.
                // A guard the kernel will not give back stays, named by the piece's header,
                // and the piece stays cached (review rev38).
                if !place_front_guard(piece, 0)
                    || !drop_tail_guard(piece as *mut u8, ms)
                    || !os::remap(piece as *mut u8, ms, dst.add(off), ms)
                {
                    set_tail_guard(piece as *mut u8, ms);
                    segment::map_insert(piece);
                    continue;
                }
                #[cfg(test)]
                tests::MOVES.with(|n| n.set(n.get() + 1));
                let res = reservation(ms);
                if res > ms {
                    os::unmap((piece as *mut u8).add(ms), res - ms);
                }
                freed_at = freed_at.min(self.entries[i].freed_at);
                self.entries[i] = EMPTY_ENTRY;
                off += ms;
            }
            if off == 0 {
                os::unmap(dst, reservation(total));
                return (ptr::null_mut(), 0);
            }
            let seg = dst as *mut Segment;
            fresh_header(seg, node as u16, total);
            set_tail_guard(dst, total);
            segment::map_insert(seg);
            segment::commit_add(node as u16, total - off);
            (seg, freed_at)
        }
    }

    /// Puts `seg` in a free slot with free time `freed_at`; unmaps it if there is none.
    ///
    /// # Safety
    /// As for [`HugeCache::put`] (the byte bound is the caller's).
    unsafe fn insert(&mut self, seg: *mut Segment, freed_at: u64) {
        // SAFETY: seg is ours to keep (contract).
        unsafe {
            if let Some(e) = self.entries.iter_mut().find(|e| e.seg.is_null()) {
                *e = CacheEntry { seg, freed_at };
            } else {
                segment::commit_sub((*seg).node, (*seg).map_size);
                unmap(seg);
            }
        }
    }

    /// Bytes held (the map sizes of the cached mappings).
    pub fn held(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| !e.seg.is_null())
            // SAFETY: the mapping is the cache's alone (type invariant).
            .map(|e| unsafe { (*e.seg).map_size })
            .sum()
    }

    /// Keeps the freed mapping `seg` for reuse, making room (in slots and bytes) by unmapping
    /// the mappings cached longest. False, and `seg` is left to the caller, if it is bigger
    /// than the cache may hold.
    ///
    /// # Safety
    /// `seg` is an unregistered huge mapping whose object is freed, which nobody else uses:
    /// the cache takes it over when it returns true.
    pub unsafe fn put(&mut self, seg: *mut Segment) -> bool {
        // SAFETY: seg is ours to keep (contract); the entries are the cache's alone.
        unsafe {
            let ms = (*seg).map_size;
            if ms > CACHE_MAX_BYTES {
                return false;
            }
            loop {
                let free_slot = self.entries.iter().position(|e| e.seg.is_null());
                if free_slot.is_some() && self.held() + ms <= CACHE_MAX_BYTES {
                    self.insert(seg, os::now_ms());
                    return true;
                }
                let Some(oldest) = (0..CACHE_SLOTS)
                    .filter(|&i| !self.entries[i].seg.is_null())
                    .min_by_key(|&i| self.entries[i].freed_at)
                else {
                    return false;
                };
                let old = self.entries[oldest].seg;
                self.entries[oldest] = EMPTY_ENTRY;
                segment::commit_sub((*old).node, (*old).map_size);
                unmap(old);
            }
        }
    }

    /// When the next cached mapping expires with a purge delay of `delay` ms (0: none cached).
    pub fn next_expiry(&self, delay: u64) -> u64 {
        self.entries
            .iter()
            .filter(|e| !e.seg.is_null())
            .map(|e| e.freed_at.saturating_add(delay).max(1))
            .min()
            .unwrap_or(0)
    }

    /// Unmaps the mappings cached for `delay` ms or longer by `now`.
    pub fn expire(&mut self, now: u64, delay: u64) {
        for e in self.entries.iter_mut() {
            if !e.seg.is_null() && e.freed_at.saturating_add(delay) <= now {
                // SAFETY: the mapping is the cache's alone (type invariant).
                unsafe {
                    segment::commit_sub((*e.seg).node, (*e.seg).map_size);
                    unmap(e.seg);
                }
                *e = EMPTY_ENTRY;
            }
        }
    }

    /// Unmaps every cached mapping (the heap is letting go of everything).
    pub fn clear(&mut self) {
        self.expire(u64::MAX, 0);
    }

    /// The size of the biggest cached mapping, if any (for tests).
    #[cfg(test)]
    pub fn largest(&self) -> Option<usize> {
        self.entries
            .iter()
            .filter(|e| !e.seg.is_null())
            // SAFETY: the mapping is the cache's alone (type invariant).
            .map(|e| unsafe { (*e.seg).map_size })
            .max()
    }

    /// Bytes held, and how many mappings (for tests).
    #[cfg(test)]
    pub fn held_count(&self) -> (usize, usize) {
        let n = self.entries.iter().filter(|e| !e.seg.is_null()).count();
        (self.held(), n)
    }
}

impl Default for HugeCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::super::map;
    use super::*;
    use crate::heap::huge::TAIL_GUARD;
    use crate::heap::segment::BLOCKS_START;
    use core::cell::Cell;

    thread_local! {
        /// In-place splits made by this thread.
        pub(super) static SPLITS: Cell<usize> = const { Cell::new(0) };
        /// Pieces `assemble` moved (one `mremap` each) on this thread.
        pub(super) static MOVES: Cell<usize> = const { Cell::new(0) };
    }

    const MIB: usize = 1 << 20;

    /// A freed huge mapping of `ms` bytes on node 0, counted as committed, as `free_huge`
    /// hands one to the cache.
    fn freed(ms: usize) -> *mut Segment {
        let seg = map(ms, BLOCKS_START, ms - BLOCKS_START - TAIL_GUARD, 0, false);
        assert!(!seg.is_null());
        segment::commit_add(0, ms);
        seg
    }

    #[test]
    fn the_reservation_is_the_map_size_rounded_up_to_whole_segments() {
        assert_eq!(reservation(1), SEGMENT_SIZE);
        assert_eq!(reservation(SEGMENT_SIZE), SEGMENT_SIZE);
        assert_eq!(reservation(SEGMENT_SIZE + 4096), 2 * SEGMENT_SIZE);
        assert_eq!(reservation(5 * MIB), 8 * MIB);
    }

    /// Issue 16: a too-big cached mapping was split by moving its tail into a new mapping
    /// (mmap + mremap, most of `large`'s system-call time). At a 4 MiB boundary the tail stays
    /// where it is: same address, same pages, cached as a mapping of its own; and the two
    /// reserve exactly the original range between them.
    #[test]
    fn a_cached_12_mib_mapping_serving_5_mib_splits_in_place() {
        let mut c = HugeCache::new();
        let ms = 12 * MIB + BLOCKS_START;
        let seg = freed(ms);
        let base = seg as *mut u8;
        // SAFETY: the mapping is ours, ms bytes long; 9 MiB is inside it.
        unsafe { *base.add(9 * MIB) = 0x5a };
        // SAFETY: a freed, unregistered mapping nobody else uses.
        assert!(unsafe { c.put(seg) });
        let (splits, moves) = (SPLITS.with(Cell::get), MOVES.with(Cell::get));
        let got = c.take(0, 5 * MIB);
        assert_eq!(got, seg, "not the cached mapping");
        // SAFETY: the mapping is ours again (taken); the tail is the cache's, read only.
        unsafe {
            assert_eq!((*got).map_size, 8 * MIB);
            let tail = base.add(8 * MIB) as *mut Segment;
            assert_eq!(c.held_count(), (ms - 8 * MIB, 1), "the tail is not cached");
            // In the segment map: a block served from the tail is ours to `free`, `owns`
            // and `malloc_usable_size`.
            assert!(
                segment::contains(tail as *const u8),
                "the tail has no map entry"
            );
            assert_eq!((*tail).map_size, ms - 8 * MIB);
            assert_eq!(*base.add(9 * MIB), 0x5a, "the tail's pages moved");
            assert_eq!(SPLITS.with(Cell::get), splits + 1);
            assert_eq!(MOVES.with(Cell::get), moves, "pages were moved");
            // The tail serves a 4 MiB request whole, at its own address.
            assert_eq!(c.take(0, 4 * MIB), tail);
            assert!(c.put(tail));
            assert!(c.put(got));
        }
        // Head and tail unmap exactly the original range between them.
        assert_eq!(
            reservation(8 * MIB) + reservation(ms - 8 * MIB),
            reservation(ms)
        );
        c.clear();
    }

    /// Issue 16: a request a little bigger than every cached mapping used to move cached
    /// pages into a new mapping; one whose reservation holds the request now grows inside it
    /// (the bytes past its map size were never touched), at its own address, counted.
    #[test]
    fn a_cached_mapping_grows_inside_its_reservation() {
        let mut c = HugeCache::new();
        let seg = freed(5 * MIB / 2);
        // SAFETY: a freed, unregistered mapping nobody else uses.
        assert!(unsafe { c.put(seg) });
        let moves = MOVES.with(Cell::get);
        let got = c.take(0, 7 * MIB / 2);
        assert_eq!(got, seg);
        // SAFETY: the mapping is ours again; 3.5 MiB is its map size now.
        unsafe {
            assert_eq!((*got).map_size, 7 * MIB / 2);
            *(got as *mut u8).add(7 * MIB / 2 - TAIL_GUARD - 1) = 1;
        }
        assert_eq!(MOVES.with(Cell::get), moves);
        assert_eq!(c.held_count(), (0, 0));
        // SAFETY: ours, holding no object.
        assert!(unsafe { c.put(got) });
        c.clear();
    }

    /// Issue 16: a tail that does not reach past the request's 4 MiB boundary stays with
    /// the object (splitting it would need a move); nothing is cached or moved.
    #[test]
    fn a_tail_under_the_requests_boundary_stays_with_the_object() {
        let mut c = HugeCache::new();
        let seg = freed(15 * MIB / 2);
        // SAFETY: a freed, unregistered mapping nobody else uses.
        assert!(unsafe { c.put(seg) });
        let (splits, moves) = (SPLITS.with(Cell::get), MOVES.with(Cell::get));
        let got = c.take(0, 9 * MIB / 2);
        assert_eq!(got, seg);
        // SAFETY: the mapping is ours again.
        assert_eq!(unsafe { (*got).map_size }, 15 * MIB / 2);
        assert_eq!(c.held_count(), (0, 0));
        assert_eq!(SPLITS.with(Cell::get), splits);
        assert_eq!(MOVES.with(Cell::get), moves);
        // SAFETY: ours, holding no object.
        assert!(unsafe { c.put(got) });
        c.clear();
    }
}
