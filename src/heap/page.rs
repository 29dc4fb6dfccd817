//! Pages: carving blocks, and gathering the blocks freed into a page back into its free list.
//!
//! Owns: the carving of a page's fresh blocks (strided for blocks under a 64-byte line, so
//! consecutive ones do not share a line), the free lists inside a page (`free`, `local_free`)
//! and the collection of its
//! `thread_free` list, with the checks that cost nothing there (a block freed twice, found
//! when the lists are collected: see docs/security.md), and what a block start of a page is
//! ([`check_block`]); the `secure` build's additions are in `heap::secure`, which these
//! call. May touch: the page descriptor (from `heap::segment`), `heap::remote`,
//! `heap::size_class`, `heap::error` (the report) and `heap::secure`. Only the page's owner
//! heap calls these, but [`check_block`], which another thread's free may call.

use super::error::{report, HeapError};
use super::remote::Block;
pub use super::segment::PAGE_CHECK_FREE;
use super::segment::{Page, PageKind, PAGE_IN_FULL};
use super::size_class::bin_size;
use core::ptr;

/// How many bytes of a fresh page one extension carves at most (keeps RSS to what is used).
const EXTEND_BYTES: usize = 8 << 10;

impl Page {
    /// Sets up a page just taken from its segment to hold blocks of `bin`.
    pub fn init_bin(&mut self, bin: usize, bytes: usize) {
        let size = bin_size(bin);
        self.kind = PageKind::Bin as u8;
        self.set_bin(bin as u8);
        self.block_size = size as u32;
        self.reserved = (bytes / size) as u32;
        self.capacity = 0;
        self.used = 0;
        self.free = ptr::null_mut();
        self.local_free = ptr::null_mut();
        self.remote_fed = false;
        self.free_is_zero = self.fresh;
        self.clear_trim();
        #[cfg(feature = "secure")]
        super::secure::init_page(self);
    }

    /// Carves more blocks from the untouched part of the page onto `free` (which is empty);
    /// with nothing left to carve, brings back parked blocks (`heap::trim`). Returns false if
    /// the page has no room left.
    ///
    /// Blocks under a cache line are linked out of address order (see [`carve_stride`]):
    /// consecutive allocations from a fresh extension land in distinct 64-byte lines, so an
    /// object handed to another thread and its owner's next objects do not share a line that
    /// both cores then write (`falseshare`). The extension still covers blocks
    /// `[capacity, capacity + n)` whole, so `capacity` keeps its meaning.
    ///
    /// The check for a page with nothing left to carve is inlined into the caller: a queue
    /// walk over pages of a few large blocks asks this of every full page it passes (`linear`
    /// in preload/bench: 300 thousand calls, 25 instructions each out of line); the carve
    /// itself is not.
    #[inline(always)]
    pub fn extend(&mut self) -> bool {
        debug_assert!(self.free.is_null());
        if self.capacity == self.reserved {
            return self.parked != 0 && self.unpark();
        }
        self.carve()
    }

    /// [`Page::extend`] once it has found room.
    #[inline(never)]
    fn carve(&mut self) -> bool {
        let left = (self.reserved - self.capacity) as usize;
        let size = self.block_size as usize;
        let mut n = left.min((EXTEND_BYTES / size).max(1));
        // The last few blocks go with this extension rather than make one of their own: a
        // page whose last extension held at most 1/128 of its blocks (3 of 819 80-byte ones)
        // would be nearly full (`thread::alloc::is_scant`) with free blocks, and the queue
        // walks pass such pages over, kept in the queue, for a new page: a FIFO ring
        // that spans a few of them took a new page each time its current one ran out.
        if left - n <= (self.reserved >> 7) as usize {
            n = left;
        }
        let first = self.start() as usize + self.capacity as usize * size;
        let stride = carve_stride(size);
        // SAFETY: blocks [capacity, capacity+n) lie inside the page (n <= reserved-capacity)
        // and were never handed out, so we may write their links.
        unsafe {
            if stride == 1 || n < 2 * stride {
                for i in 0..n - 1 {
                    let b = (first + i * size) as *mut Block;
                    Block::set_next(b, (first + (i + 1) * size) as *mut Block);
                }
                Block::set_next((first + (n - 1) * size) as *mut Block, ptr::null_mut());
                self.free = first as *mut Block;
            } else {
                self.free = carve_strided(first, size, n, stride);
            }
        }
        self.capacity += n as u32;
        self.free_is_zero = self.fresh;
        #[cfg(feature = "secure")]
        super::secure::carved(self);
        true
    }

    /// Moves remote frees and local frees onto `free` if `free` is empty. Returns the number
    /// of remote frees collected.
    ///
    /// The remote list comes with its length, and goes on whichever of `free` and
    /// `local_free` is empty as it is: its blocks are not touched here (they were just written
    /// by the threads that freed them, so each would be a cache miss), only when handed out.
    /// Only when both lists hold blocks is it walked, to link its tail to `local_free`.
    ///
    /// Checks, at no cost beyond a compare: more remote frees than live blocks (a block freed
    /// twice by other threads), and a list about to become `free` whose first block links to
    /// itself (a block freed twice in a row). Either is reported (`heap::error`); if the report
    /// returns, that list is leaked (left off every list, its blocks still counted as used).
    ///
    /// Always inlined: the queue walks call it once per page they look at, and the `secure`
    /// build's larger body, left out of line once a second walk called it, cost 0.6
    /// instructions per pair on `pairs` with mixed sizes.
    #[inline(always)]
    pub fn collect(&mut self) -> u32 {
        let mut remote = 0;
        if self.thread_free.has_blocks() {
            let (list, n) = self.thread_free.take_counted();
            // SAFETY: the list just taken is ours; `take_counted`'s acquire made its links
            // visible.
            if n > self.used || (self.free.is_null() && unsafe { links_to_itself(list) }) {
                remote_list_error(list, n > self.used);
            } else if !list.is_null() {
                remote = n;
                self.used -= n;
                if self.used == 0 {
                    // No live block: the next local free is checked (see PAGE_CHECK_FREE).
                    self.flags |= PAGE_CHECK_FREE;
                }
                if self.free.is_null() {
                    self.free = list;
                    self.free_is_zero = false;
                } else if self.local_free.is_null() {
                    self.local_free = list;
                } else {
                    let mut tail = list;
                    // SAFETY: the list was built by `RemoteFree::push` from blocks of this
                    // page; the acquire in `take_counted` makes their links visible.
                    unsafe {
                        while !Block::next(tail).is_null() {
                            #[cfg(feature = "secure")]
                            if !self.link_ok(Block::next(tail)) {
                                // Reported; if that returns, the rest is cut off (leaked).
                                super::secure::link_error(tail);
                                Block::set_next(tail, ptr::null_mut());
                                break;
                            }
                            tail = Block::next(tail);
                        }
                        Block::set_next(tail, self.local_free);
                    }
                    self.local_free = list;
                }
            }
        }
        if self.free.is_null() && !self.local_free.is_null() && !self.local_to_free() {
            return remote;
        }
        if remote > 0 {
            self.remote_fed = true;
        }
        remote
    }

    /// Makes `local_free` (not empty) the free list (which is empty). Returns false, having
    /// dropped the list, if its first block links to itself (a block freed twice in a row,
    /// reported: see [`links_to_itself`]).
    #[inline(always)]
    pub fn local_to_free(&mut self) -> bool {
        // SAFETY: `local_free` is the owner's list (only the owner calls this).
        if unsafe { links_to_itself(self.local_free) } {
            self.local_list_error();
            return false;
        }
        self.move_local_to_free();
        true
    }

    /// Makes `local_free` the free list, as it is (no check of its links: the callers that
    /// skip [`Page::local_to_free`]'s check say why), and the page's last refill its owner's.
    /// `free` is empty.
    #[inline(always)]
    pub fn move_local_to_free(&mut self) {
        self.free = self.local_free;
        self.local_free = ptr::null_mut();
        self.free_is_zero = false;
        self.remote_fed = false;
    }

    /// In a fork child, on a page of a thread that died with the fork: undoes what a refill
    /// ([`Page::move_local_to_free`], on the owner's ungated fast paths) cut after its first
    /// store leaves (review rev50). `free` then starts at the block `local_free` still starts
    /// at (never so otherwise, the lists holding different blocks, but both empty), and the
    /// list is `free`'s; `free_is_zero` may still be a fresh page's, and is cleared (a zeroed
    /// allocation then clears its block itself).
    pub fn forget_cut_refill(&mut self) {
        if self.free == self.local_free {
            self.local_free = ptr::null_mut();
        }
        self.free_is_zero = false;
    }

    /// Takes back a block of the page that another thread freed and its owner (or a pass
    /// holding the owner's gate) now frees locally: onto `local_free`, its count lowered.
    /// Returns false, having changed nothing, if the page has no live block (a block freed
    /// twice: reported, and left alone if the report returns).
    ///
    /// # Safety
    /// `b` is a block of this page, on no list; the caller may write the page's lists.
    #[inline]
    pub unsafe fn push_local_free(&mut self, b: *mut Block) -> bool {
        if self.used == 0 {
            report(HeapError::DoubleFree, b as *const u8);
            return false;
        }
        // SAFETY: b is a block of ours on no list (contract), so its link is ours to write.
        unsafe { Block::set_next(b, self.local_free) };
        self.local_free = b;
        self.used -= 1;
        true
    }

    /// Whether the page has a block to hand out without carving.
    #[inline]
    pub fn has_free(&self) -> bool {
        !self.free.is_null()
    }

    /// Whether the page can still hand out a block (now, or by carving).
    #[inline]
    pub fn has_room(&self) -> bool {
        !self.free.is_null()
            || !self.local_free.is_null()
            || self.capacity < self.reserved
            || self.parked != 0
    }
}

/// Lines a carve group spans: the strided order of [`carve_strided`] runs inside groups of
/// this many 64-byte lines (4 KiB: one OS page when the block size divides 64), so the blocks
/// handed out one after another stay within one page of memory.
const CARVE_GROUP_LINES: usize = 64;

/// How many blocks apart two consecutive blocks of a fresh extension are: enough that they
/// never share a 64-byte line (`ceil(64 / size)`; 1 for blocks of a line or more).
#[inline(always)]
fn carve_stride(size: usize) -> usize {
    if size >= 64 {
        1
    } else {
        64usize.div_ceil(size)
    }
}

/// Links blocks `0..n` of `size` bytes from `first` into a list whose consecutive blocks are
/// `stride` blocks apart: within each group of `stride * CARVE_GROUP_LINES` blocks, the
/// blocks at offset 0, stride, 2*stride, ..., then 1, 1+stride, ..., and so on; groups in
/// address order. Every block is on the list once. Built backwards, so the last link written
/// is the head, which is returned.
///
/// # Safety
/// The `n` blocks are the caller's to write (never handed out, inside the page).
#[inline]
unsafe fn carve_strided(first: usize, size: usize, n: usize, stride: usize) -> *mut Block {
    let group = stride * CARVE_GROUP_LINES;
    let mut head: *mut Block = ptr::null_mut();
    let mut g = (n - 1) / group * group;
    loop {
        let len = (n - g).min(group);
        for r in (0..stride.min(len)).rev() {
            // The last index of the group that is r modulo stride, down to r.
            let mut i = g + r + (len - 1 - r) / stride * stride;
            loop {
                let b = (first + i * size) as *mut Block;
                // SAFETY: block i < n is the caller's to write (contract).
                unsafe { Block::set_next(b, head) };
                head = b;
                if i < g + stride {
                    break;
                }
                i -= stride;
            }
        }
        if g == 0 {
            return head;
        }
        g -= group;
    }
}

/// Whether the first block of `list` links to itself: a block pushed twice in a row onto a
/// free list (freed twice with no other free of its page in between). The block is the next
/// one handed out, so its line is read here a moment early, not in addition.
///
/// # Safety
/// `list` is null or the first block of a free list the caller owns (its link is the
/// caller's to read).
#[inline(always)]
pub(super) unsafe fn links_to_itself(list: *mut Block) -> bool {
    // SAFETY: per the contract; a null list is not read.
    !list.is_null() && unsafe { Block::next(list) } == list
}

/// A remote list found corrupt by [`Page::collect`]: reports it; if the report returns, the
/// list is dropped (its blocks leak).
#[cold]
#[inline(never)]
fn remote_list_error(list: *mut Block, too_many: bool) {
    let e = if too_many {
        HeapError::RemoteDoubleFree
    } else {
        HeapError::FreeListLoop
    };
    report(e, list as *const u8);
}

/// Added to `used` of a page whose count a wrong free has made wrong, when the report
/// returns (`TIERALLOC_ON_ERROR=warn|ignore`): the page never looks empty again, so it is
/// never given back while a block of it may still be live (it leaks instead). Far above any
/// page's block count, far below where the signed check of a free would see it.
pub const LEAKED: u32 = 1 << 30;

/// Marks `used` as wrong (adds [`LEAKED`]) once: a second mark would take the count past
/// where a free's signed check reads it as negative, and a fourth back to small values,
/// where the page could look empty with blocks live.
#[inline]
pub fn mark_leaked(used: &mut u32) {
    if *used < LEAKED {
        *used = used.wrapping_add(LEAKED);
    }
}

const _: () = assert!(PAGE_CHECK_FREE & PAGE_IN_FULL == 0);

/// Page flag: some of the page's OS pages are given back (`parked`, see `heap::trim`); its
/// owner's frees take the slow path, which reports a free of a parked block (a block freed
/// twice, the second time after the trim). Set by a trim, cleared when the last parked unit
/// comes back or the page is set up again.
pub const PAGE_PARKED: u8 = 4;
const _: () = assert!(PAGE_PARKED & (PAGE_CHECK_FREE | PAGE_IN_FULL) == 0);

/// How many free blocks a free that empties a page looks through for the block it frees.
pub const WALK_MAX: usize = 32;

impl Page {
    /// Whether the owner's free of `b` (whose block start `check_block` has checked, and for
    /// which `used` was just lowered) is a double free, as far as it costs nothing on the
    /// fast path to tell: the error, the pointer to report, and whether the page's count is
    /// wrong (not only this free). Only called on a free's slow path:
    /// - a page left with no live block (it says it is all free) must have `b` on none of its
    ///   lists, and no block of them linked to itself: the first [`WALK_MAX`] blocks of
    ///   `local_free` and `free` are looked through; and its remote list must be empty (a
    ///   block there is still counted live);
    /// - a count gone below zero is more frees than blocks handed out: this block, if found
    ///   on a list, else one freed twice before it (the count cannot tell which);
    /// - otherwise (a full or large page) `b` must not head `local_free` (freed twice in a row).
    pub fn find_double_free(&self, b: *mut Block) -> Option<(HeapError, *const u8, bool)> {
        let at = b as *const u8;
        if (self.used as i32) > 0 {
            return (self.local_free == b).then_some((HeapError::DoubleFree, at, false));
        }
        let mut left = WALK_MAX;
        for head in [self.local_free, self.free] {
            let mut x = head;
            while !x.is_null() && left > 0 {
                if x == b {
                    return Some((HeapError::DoubleFree, at, false));
                }
                // SAFETY: x is on one of the page's free lists, which the owner (the caller)
                // may read; a list made circular by a double free ends at the bound.
                let next = unsafe { Block::next(x) };
                #[cfg(feature = "secure")]
                if !self.link_ok(next) {
                    // Not followed; the pop that reaches it reports it.
                    break;
                }
                if next == x {
                    // Freed twice in a row on the fast path, another block live then: the
                    // count was one too low since, which is why the page looks empty now.
                    return Some((HeapError::FreeListLoop, x as *const u8, true));
                }
                x = next;
                left -= 1;
            }
        }
        if self.used != 0 {
            Some((HeapError::NoLiveBlock, at, true))
        } else if self.thread_free.has_blocks() {
            Some((HeapError::DoubleFree, at, true))
        } else {
            None
        }
    }

    /// `local_free` links its first block to itself: that block was pushed twice, the second
    /// time on the fast path, which counted it twice and lost what followed its first push.
    /// Reports it; if the report returns, the list is dropped and the page leaks (`LEAKED`).
    #[cold]
    #[inline(never)]
    fn local_list_error(&mut self) {
        report(HeapError::FreeListLoop, self.local_free as *const u8);
        self.local_free = ptr::null_mut();
        mark_leaked(&mut self.used);
    }
}

/// Whether `p` is the start of a block in use that `page` holds: for a bin page, a multiple
/// of the block size from the page's start, among the blocks carved so far; for a large page,
/// its start; a free descriptor holds none. What a free checks on its slow paths.
///
/// # Safety
/// `page` is a descriptor of a live normal segment of ours (any thread may call this: the
/// fields read do not change while a block of the page is live, but for `capacity`, which
/// only grows then).
pub unsafe fn check_block(page: *const Page, p: *const u8) -> Result<(), HeapError> {
    // SAFETY: a descriptor of a live segment is readable (contract); racing reads of a page
    // that holds no live block (a stray pointer) only decide which error is reported.
    unsafe {
        let kind = ptr::read_volatile(&raw const (*page).kind);
        let start = (*page).start() as usize;
        let p = p as usize;
        if kind == PageKind::Bin as u8 {
            let size = ptr::read_volatile(&raw const (*page).block_size) as usize;
            let cap = ptr::read_volatile(&raw const (*page).capacity) as usize;
            if size == 0 {
                return Err(HeapError::NotInUse);
            }
            if p < start || (p - start) % size != 0 || (p - start) / size >= cap {
                return Err(HeapError::NotABlock);
            }
            Ok(())
        } else if kind == PageKind::Large as u8 {
            if p != start {
                return Err(HeapError::NotABlock);
            }
            Ok(())
        } else {
            Err(HeapError::NotInUse)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::segment::{Segment, SEGMENTS, SEGMENT_SIZE};
    use super::super::size_class::bin_of;
    use super::*;

    #[test]
    fn a_count_is_marked_leaked_once_whatever_the_errors() {
        let mut used = 5u32;
        for _ in 0..4 {
            mark_leaked(&mut used);
        }
        // Four marks of a page hit by four wrong frees: still far above any block count,
        // and still below where a free's signed check reads it as negative.
        assert_eq!(used, 5 + LEAKED);
        assert!((used as i32) > 0);
    }
    use crate::sync::Ordering;

    #[test]
    fn carving_hands_out_distinct_blocks_and_collect_recycles_them() {
        let seg = Segment::map_normal(0, false);
        // SAFETY: the segment is fresh and ours alone.
        unsafe {
            let page = &mut *Segment::take_slices(seg, 1, false);
            let bin = bin_of(100);
            page.init_bin(bin, Segment::run_bytes(1, 1));
            assert_eq!(page.reserved as usize, (64 << 10) / bin_size(bin));
            let mut seen = std::collections::HashSet::new();
            let mut blocks = vec![];
            loop {
                if page.free.is_null() && !page.extend() {
                    break;
                }
                let b = page.free;
                page.free = Block::next(b);
                page.used += 1;
                assert!(seen.insert(b as usize));
                assert_eq!((b as usize - page.start() as usize) % bin_size(bin), 0);
                blocks.push(b);
            }
            assert_eq!(blocks.len(), page.reserved as usize);
            // Half freed locally, half "remotely".
            for (i, &b) in blocks.iter().enumerate() {
                if i % 2 == 0 {
                    Block::set_next(b, page.local_free);
                    page.local_free = b;
                    page.used -= 1;
                } else {
                    page.thread_free.push(b);
                }
            }
            let local_head = page.local_free;
            let remote = page.collect();
            assert_eq!(remote as usize, blocks.len() / 2);
            assert_eq!(page.used, 0);
            // `free` was empty: the remote list became it as it was (head: the last block
            // pushed), and the local list stayed where it was.
            let last_odd = if blocks.len() % 2 == 0 {
                blocks.len() - 1
            } else {
                blocks.len() - 2
            };
            assert_eq!(page.free, blocks[last_odd]);
            assert_eq!(page.local_free, local_head);
            let mut back = std::collections::HashSet::new();
            for head in [page.free, page.local_free] {
                let mut b = head;
                while !b.is_null() {
                    assert!(back.insert(b as usize), "a block on two lists");
                    b = Block::next(b);
                }
            }
            assert_eq!(back, seen);
            crate::heap::segment::map_remove(seg);
            crate::sys::os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// No extension leaves a page nearly full (`thread::alloc::is_scant`: room for at most
    /// 1/128 of its blocks) with nothing left to carve: the last few blocks go with the
    /// extension before them. An 80-byte page of 64 KiB (819 blocks, extensions of 102)
    /// made a last extension of 3 blocks, and the queue walks passed such pages over for
    /// new ones (`a_fifo_ring_that_does_not_fill_its_pages_reuses_them` in thread::alloc).
    #[test]
    fn no_extension_leaves_a_page_nearly_full() {
        for bin in (0..).take_while(|&b| bin_size(b) <= 1024) {
            let seg = Segment::map_normal(0, false);
            // SAFETY: the segment is fresh and ours alone.
            unsafe {
                let page = &mut *Segment::take_slices(seg, 1, false);
                page.init_bin(bin, Segment::run_bytes(1, 1));
                while page.extend() {
                    let left = page.reserved - page.capacity;
                    assert!(
                        left == 0 || left > page.reserved >> 7,
                        "{}: {left} of {} blocks left to carve",
                        bin_size(bin),
                        page.reserved
                    );
                    page.free = ptr::null_mut();
                }
                assert_eq!(page.capacity, page.reserved);
                crate::heap::segment::map_remove(seg);
                crate::sys::os::unmap(seg as *mut u8, SEGMENT_SIZE);
                SEGMENTS.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The strided carve: for every small size, blocks popped one after another from a fresh
    /// page lie in distinct 64-byte lines (but where a group of lines ends), stay within a
    /// group of about 4 KiB, and every block of the page is handed out exactly once. (The
    /// `secure` build shuffles a fresh extension instead: `heap::secure`'s own test.)
    #[cfg(not(feature = "secure"))]
    #[test]
    fn consecutive_small_blocks_of_a_fresh_page_are_in_distinct_lines() {
        for bin in (0..).take_while(|&b| bin_size(b) <= 128) {
            let size = bin_size(bin);
            let seg = Segment::map_normal(0, false);
            // SAFETY: the segment is fresh and ours alone.
            unsafe {
                let page = &mut *Segment::take_slices(seg, 1, false);
                page.init_bin(bin, Segment::run_bytes(1, 1));
                let start = page.start() as usize;
                let mut seen = std::collections::HashSet::new();
                let (mut same_line, mut prev) = (0, None);
                while page.has_free() || page.extend() {
                    let b = page.free as usize;
                    page.free = Block::next(page.free);
                    assert!(seen.insert(b), "block {b:#x} handed out twice");
                    assert_eq!((b - start) % size, 0);
                    assert!((b - start) / size < page.capacity as usize);
                    if let Some(p) = prev {
                        if b / 64 == p / 64 {
                            same_line += 1;
                        }
                        assert!(b.abs_diff(p) < 8 << 10, "{size}: {p:#x} then {b:#x}");
                    }
                    prev = Some(b);
                }
                assert_eq!(seen.len(), page.reserved as usize);
                // A line is shared by consecutive blocks at most where a carve group of
                // CARVE_GROUP_LINES lines ends (then the next group starts beside it).
                let groups = page.reserved as usize * size / (CARVE_GROUP_LINES * 64) + 1;
                assert!(
                    same_line <= groups,
                    "{size}: {same_line} consecutive pairs share a line"
                );
                crate::heap::segment::map_remove(seg);
                crate::sys::os::unmap(seg as *mut u8, SEGMENT_SIZE);
                SEGMENTS.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Review (rev1): `carve_strided` links every block of `0..n` exactly once, for every
    /// size under 64 (multiples of 8) and every n up to a few groups.
    #[test]
    fn review_strided_carve_is_a_permutation_for_every_size_and_length() {
        for size in (8..64).step_by(8) {
            let stride = carve_stride(size);
            for n in 2 * stride..(3 * stride * CARVE_GROUP_LINES + 7) {
                let mut mem = vec![0u64; n * size / 8 + 1];
                let first = mem.as_mut_ptr() as usize;
                // SAFETY: the n blocks lie inside `mem`.
                let mut x = unsafe { carve_strided(first, size, n, stride) };
                let mut seen = vec![false; n];
                let mut k = 0;
                while !x.is_null() {
                    let i = (x as usize - first) / size;
                    assert_eq!((x as usize - first) % size, 0);
                    assert!(
                        i < n && !seen[i],
                        "size {size} n {n}: block {i} twice or out"
                    );
                    seen[i] = true;
                    k += 1;
                    // SAFETY: x is a block of `mem` on the list.
                    x = unsafe { Block::next(x) };
                }
                assert_eq!(k, n, "size {size} n {n}");
            }
        }
    }

    /// The collection's checks: a block pushed twice in a row onto `local_free` while other
    /// blocks stay live (both frees on the fast path, so nothing else sees it), and more
    /// remote frees than live blocks. Under `ignore` (the abort of the default would end the
    /// test process) the list is dropped and the page can no longer look empty.
    #[test]
    fn collect_drops_a_list_a_double_free_broke() {
        let seg = Segment::map_normal(0, false);
        let ignoring = crate::heap::error::ignore_errors_for_test();
        // SAFETY: the segment is fresh and ours alone.
        unsafe {
            let page = &mut *Segment::take_slices(seg, 1, false);
            page.init_bin(bin_of(1000), Segment::run_bytes(1, 1));
            assert!(page.extend());
            let mut pop = || {
                let b = page.free;
                page.free = Block::next(b);
                page.used += 1;
                b
            };
            let blocks: Vec<*mut Block> = (0..3).map(|_| pop()).collect();
            page.free = ptr::null_mut();
            // blocks[2] freed twice in a row by the owner (as free_owned pushes).
            for _ in 0..2 {
                Block::set_next(blocks[2], page.local_free);
                page.local_free = blocks[2];
                page.used -= 1;
            }
            assert_eq!(page.collect(), 0);
            assert!(page.free.is_null() && page.local_free.is_null());
            assert!(page.used >= LEAKED, "the page must never look empty again");
            // A fresh count: blocks[0] freed twice by other threads, blocks[1] once.
            page.used = 2;
            for b in [blocks[0], blocks[1], blocks[0]] {
                page.thread_free.push(b);
            }
            assert_eq!(page.collect(), 0);
            assert!(page.free.is_null() && !page.thread_free.has_blocks());
            assert_eq!(page.used, 2, "the dropped blocks stay counted as live");
            crate::heap::segment::map_remove(seg);
            crate::sys::os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
        drop(ignoring);
    }
}
