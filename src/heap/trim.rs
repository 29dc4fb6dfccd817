//! Trimming sparse pages: the OS pages inside a bin page in use whose every block is free go
//! back to the OS, and their blocks ("parked": free, on no list, not counted in `used`) come
//! back when the page has nothing else to hand out.
//!
//! Owns: the page descriptor's `parked` (the OS pages given back) and `trim_mark` (when the
//! page was last looked at), the trim of one page ([`Page::trim`]), the return of parked
//! blocks ([`Page::unpark`]) and the trim counters. May touch: the page descriptor and its
//! owner-only free lists (`free`, `local_free`; never `thread_free`, which other threads push
//! to), `heap::remote::Block` (links, only through `Block::next/set_next`), `heap::error`
//! (the report of a write into a parked block) and `sys::os` (`decommit`). Only the page's
//! owner calls these, on slow paths, but `Page::holds_parked_racy` (the `secure` build's
//! report of a wrong free from another thread).
//!
//! Units: OS pages counted from the one holding the page's first block; only pages of up to
//! 64 of them are trimmed (one bit each in `parked`), and only units that lie wholly inside
//! the carved blocks (so never the segment header's OS page at slice 0). A block is parked
//! while any unit it overlaps is parked; `unpark` clears one unit at a time and re-adds each
//! block overlapping it whose other units are not parked, so every block comes back once.

use super::error::{report, HeapError};
use super::page::PAGE_PARKED;
use super::remote::Block;
use super::segment::{Page, PageKind};
use crate::sync::{AtomicU64, Ordering};
use crate::sys::os::{self, OS_PAGE};
use core::ptr;

/// The most blocks a trimmed page may hold (the walk's bitmap is this many bits, on the stack).
pub const TRIM_MAX_BLOCKS: usize = 4096;
/// In `trim_mark`: the page was trimmed at the count the rest of the mark holds.
const TRIMMED: u32 = 1 << 31;
/// Bytes given back by trims (also counted in `os::PURGED_BYTES`).
pub static TRIMMED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Pages trimmed (at least one OS page given back).
pub static TRIMS: AtomicU64 = AtomicU64::new(0);

impl Page {
    /// Forgets any trim: for a page being set up (`init_bin`), whose memory holds no block.
    #[inline]
    pub fn clear_trim(&mut self) {
        self.parked = 0;
        self.trim_mark = 0;
        self.flags &= !PAGE_PARKED;
    }

    /// Whether block `p` (a block start of this page, inside its carved blocks) overlaps a
    /// parked OS page: it is free and on no list, so a free of it is a double free.
    #[inline]
    pub fn holds_parked(&self, p: *const u8) -> bool {
        self.parked != 0
            && self.kind == PageKind::Bin as u8
            && self.units_of(self.index_of(p as *mut Block)) & self.parked != 0
    }

    /// [`Page::holds_parked`] asked by a thread that does not own the page (the `secure`
    /// build's report of another thread's free whose canary reads wrong): each field read
    /// once, volatile, racing with the owner's trims and unparks (and with a retirement and a
    /// new page on the same slices, whose shape need not match the `parked` read), so the
    /// answer only decides which error is reported; whatever the reads, it never divides by
    /// zero or shifts by 64 or more (a block past the 64 units a trim can park is not parked).
    ///
    /// # Safety
    /// `page` is a descriptor of a live normal segment and `p` a block start of its page.
    #[cfg(feature = "secure")]
    pub unsafe fn holds_parked_racy(page: *const Page, p: *const u8) -> bool {
        // SAFETY: a live segment's descriptor is readable (contract); `start` is the
        // descriptor's slice, fixed by its address.
        let (parked, kind, size, start) = unsafe {
            (
                ptr::read_volatile(&raw const (*page).parked),
                ptr::read_volatile(&raw const (*page).kind),
                ptr::read_volatile(&raw const (*page).block_size) as usize,
                (*page).start() as usize,
            )
        };
        let p = p as usize;
        if parked == 0 || kind != PageKind::Bin as u8 || size == 0 || p < start {
            return false;
        }
        // As `units_of(index_of(p))`, from the values read once.
        let off = (start & (OS_PAGE - 1)) + (p - start) / size * size;
        let (a, b) = (off / OS_PAGE, (off + size - 1) / OS_PAGE);
        b < 64 && ((u64::MAX >> (63 - (b - a))) << a) & parked != 0
    }

    /// Whether the page is worth a trim now, noting what it saw in `trim_mark`: a bin page
    /// of at most [`TRIM_MAX_BLOCKS`] blocks, at most a quarter of its carved blocks live and
    /// few enough live blocks per OS page (two on average) that some OS pages are likely all
    /// free, whose count has not risen since the previous look (a page being allocated from
    /// would fault its memory back in at once: the first look only notes the count) and has
    /// changed since its last trim.
    #[inline]
    pub fn worth_trimming(&mut self) -> bool {
        let cap = self.capacity as usize;
        let used = self.used as usize;
        if self.kind != PageKind::Bin as u8 || !(2..=TRIM_MAX_BLOCKS).contains(&cap) {
            return false;
        }
        let per_os_page = (OS_PAGE / self.block_size as usize).max(1);
        let now = self.used + 1;
        let (last, trimmed) = (self.trim_mark & !TRIMMED, self.trim_mark & TRIMMED != 0);
        if used * 4 > cap || used * per_os_page > cap * 2 || last == 0 || now > last {
            self.trim_mark = now;
            return false;
        }
        !(trimmed && now == last)
    }

    /// The page's first unit's address (its start rounded down to an OS page).
    #[inline]
    fn unit_base(&self) -> usize {
        self.start() as usize & !(OS_PAGE - 1)
    }

    /// The units block `i` overlaps, as a mask.
    #[inline]
    fn units_of(&self, i: usize) -> u64 {
        let size = self.block_size as usize;
        let off = self.start() as usize - self.unit_base() + i * size;
        let (a, b) = (off / OS_PAGE, (off + size - 1) / OS_PAGE);
        (u64::MAX >> (63 - (b - a))) << a
    }

    /// Index of block `b` of this page.
    #[inline]
    fn index_of(&self, b: *mut Block) -> usize {
        (b as usize).wrapping_sub(self.start() as usize) / self.block_size as usize
    }

    /// Gives back the OS pages every overlapping block of which is free, taking their blocks
    /// off the free lists (they are parked). Returns the bytes given back (0 when the page is
    /// not eligible, nothing is all free, or a list is found broken: a loop, a bad link in the
    /// `secure` build, left for the pop that reaches it to report; or a block of a parked OS
    /// page on a list, a free of a parked block, reported here).
    ///
    /// # Safety
    /// The caller is the page's owner, on a slow path (no block of the page is being popped).
    pub unsafe fn trim(&mut self) -> usize {
        let cap = self.capacity as usize;
        let size = self.block_size as usize;
        self.trim_mark = self.used.saturating_add(1) | TRIMMED;
        if self.kind != PageKind::Bin as u8 || cap == 0 || cap > TRIM_MAX_BLOCKS {
            return 0;
        }
        let base = self.unit_base();
        let lo = self.start() as usize;
        let end = lo + self.reserved as usize * size;
        if (end - base).div_ceil(OS_PAGE) > 64 {
            return 0;
        }
        // Units wholly inside the carved blocks.
        let first = (lo - base).div_ceil(OS_PAGE);
        let last = (lo + cap * size - base) / OS_PAGE;
        if last <= first {
            return 0;
        }
        let carved = (u64::MAX >> (64 - (last - first))) << first;
        let mut free = [0u64; TRIM_MAX_BLOCKS / 64];
        for head in [self.free, self.local_free] {
            let mut x = head;
            while !x.is_null() {
                let i = self.index_of(x);
                if i >= cap {
                    // Not a block of ours: left for the pop that reaches it.
                    return 0;
                }
                if free[i / 64] & (1 << (i % 64)) != 0 {
                    // On a list twice: a loop, which a pop reports.
                    return 0;
                }
                if self.units_of(i) & self.parked != 0 {
                    report(HeapError::DoubleFree, x as *const u8);
                    return 0;
                }
                free[i / 64] |= 1 << (i % 64);
                // SAFETY: x is on one of the page's free lists, which the owner may read.
                let next = unsafe { Block::next(x) };
                #[cfg(feature = "secure")]
                if !self.link_ok(next) {
                    return 0;
                }
                x = next;
            }
        }
        let mut live = 0u64;
        for i in 0..cap {
            if free[i / 64] & (1 << (i % 64)) == 0 {
                let u = self.units_of(i);
                if u & self.parked == 0 {
                    live |= u;
                }
            }
        }
        let take = carved & !live & !self.parked;
        if take == 0 {
            return 0;
        }
        // Off the lists first: the links of the blocks kept are written, those of the blocks
        // parked never again (their memory goes).
        // SAFETY: the owner's lists; every block on them was just walked.
        unsafe {
            self.free = self.filter(self.free, take);
            self.local_free = self.filter(self.local_free, take);
        }
        let mut todo = take;
        while todo != 0 {
            let u = todo.trailing_zeros() as usize;
            let run = (!(todo >> u)).trailing_zeros() as usize;
            // SAFETY: units of `take` lie inside the page's carved blocks, and every block
            // overlapping them is free and now on no list: nothing live is in the range.
            unsafe { os::decommit((base + u * OS_PAGE) as *mut u8, run * OS_PAGE) };
            todo &= !((u64::MAX >> (64 - run)) << u);
        }
        self.parked |= take;
        // The owner's frees into the page now take the slow path (a free of a parked block).
        self.flags |= PAGE_PARKED;
        let bytes = take.count_ones() as usize * OS_PAGE;
        TRIMS.fetch_add(1, Ordering::Relaxed);
        TRIMMED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
        bytes
    }

    /// `list` without the blocks overlapping units of `drop`, in the same order.
    ///
    /// # Safety
    /// `list` is one of the owner's free lists of this page, walked whole just before.
    unsafe fn filter(&self, list: *mut Block, drop: u64) -> *mut Block {
        let mut head = ptr::null_mut();
        let mut tail: *mut Block = ptr::null_mut();
        let mut x = list;
        // SAFETY: the blocks are free blocks of the list (contract): their links are ours.
        unsafe {
            while !x.is_null() {
                let next = Block::next(x);
                if self.units_of(self.index_of(x)) & drop == 0 {
                    if tail.is_null() {
                        head = x;
                    } else {
                        Block::set_next(tail, x);
                    }
                    tail = x;
                } else {
                    // Parked: its first word zero even if the OS keeps the page (madvise
                    // refused, e.g. under mlockall), so `unpark` can tell a later write.
                    ptr::write(x as *mut usize, 0);
                }
                x = next;
            }
            if !tail.is_null() {
                Block::set_next(tail, ptr::null_mut());
            }
        }
        head
    }

    /// Brings parked blocks back onto `free` (which is empty), one unit at a time (its memory
    /// faults in, zero, as the blocks are written). Returns whether `free` has a block. A
    /// block whose first word is not zero (in whichever unit it lies: the trim zeroed it)
    /// was written after it was parked (freed again, or used after its free): reported; if
    /// the report returns, the block is left out (it may be live elsewhere).
    #[cold]
    #[inline(never)]
    pub fn unpark(&mut self) -> bool {
        let size = self.block_size as usize;
        let lo = self.start() as usize;
        let base = self.unit_base();
        let cap = self.capacity as usize;
        while self.parked != 0 {
            let u = self.parked.trailing_zeros() as usize;
            self.parked &= !(1 << u);
            if self.parked == 0 {
                self.flags &= !PAGE_PARKED;
            }
            let (ustart, uend) = (base + u * OS_PAGE, base + (u + 1) * OS_PAGE);
            let first = ustart.saturating_sub(lo) / size;
            let last = ((uend - lo).div_ceil(size)).min(cap);
            for i in (first..last).rev() {
                if self.units_of(i) & self.parked != 0 {
                    continue;
                }
                let b = (lo + i * size) as *mut Block;
                // Wherever its first word lies (this unit, one that came back before, or one
                // never given back): the trim zeroed it, and nothing of ours writes it since.
                // SAFETY: the block is in the page and free (parked); reading its first word
                // faults in at most the zero page.
                if unsafe { ptr::read(b as *const usize) } != 0 {
                    report(HeapError::DoubleFree, b as *const u8);
                    continue;
                }
                // SAFETY: a parked block is free and on no list: its link is ours to write.
                unsafe { Block::set_next(b, self.free) };
                // The secure build: free again, so marked so (its marker went with the memory).
                // SAFETY: b is a free block of this bin page, at least 16 bytes.
                #[cfg(feature = "secure")]
                unsafe {
                    super::secure::mark_freed(self, b as *mut u8)
                };
                self.free = b;
            }
            if !self.free.is_null() {
                self.free_is_zero = false;
                return true;
            }
        }
        false
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::heap::segment::{Segment, SEGMENTS, SEGMENT_SIZE};
    use crate::heap::size_class::{bin_of, bin_size};
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// A page of `bin` in a fresh segment of its own (not at slice 0 when `slice0` is false).
    pub(super) fn page_of(bin: usize, slice0: bool) -> (*mut Segment, &'static mut Page) {
        let seg = Segment::map_normal(0, false);
        // SAFETY: the segment is fresh and ours alone.
        let page = unsafe { &mut *Segment::take_slices(seg, 1, slice0) };
        let i = page.slice_index();
        page.init_bin(bin, Segment::run_bytes(i, 1));
        (seg, page)
    }

    /// A page of `size`-byte blocks in a fresh segment, every block carved and handed out,
    /// then all but the first freed (as the owner frees them); the blocks in the order they
    /// were handed out.
    fn all_freed_but_the_first(size: usize) -> (*mut Segment, &'static mut Page, Vec<*mut Block>) {
        let (seg, page) = page_of(bin_of(size), false);
        let mut blocks = vec![];
        while let Some(b) = pop(page) {
            blocks.push(b);
        }
        for &b in &blocks[1..] {
            push(page, b);
        }
        (seg, page, blocks)
    }

    pub(super) fn drop_segment(seg: *mut Segment) {
        // Out of the map first, as every unmap of the allocator does: a fork child reads
        // the header of every segment the map names (`heap::thread::fork`).
        crate::heap::segment::map_remove(seg);
        // SAFETY: the test's own segment, no block of it used after this.
        unsafe { crate::sys::os::unmap(seg as *mut u8, SEGMENT_SIZE) };
        SEGMENTS.fetch_sub(1, crate::sync::Ordering::Relaxed);
    }

    /// A block as the heap hands it out: `free`, else `local_free`, else carve or unpark.
    pub(super) fn pop(page: &mut Page) -> Option<*mut Block> {
        if page.free.is_null() && !page.local_free.is_null() {
            assert!(page.local_to_free());
        }
        if page.free.is_null() && !page.extend() {
            return None;
        }
        let b = page.free;
        // SAFETY: b heads the page's free list.
        page.free = unsafe { Block::next(b) };
        page.used += 1;
        Some(b)
    }

    /// The owner's free of `b`, as `free_owned` pushes it.
    pub(super) fn push(page: &mut Page, b: *mut Block) {
        // SAFETY: b is a live block of the page, freed now.
        unsafe { Block::set_next(b, page.local_free) };
        page.local_free = b;
        page.used -= 1;
    }

    pub(super) fn fill(b: *mut Block, size: usize, tag: u8) {
        // SAFETY: a live block of `size` bytes, ours to write.
        unsafe { ptr::write_bytes(b as *mut u8, tag, size) };
    }

    pub(super) fn check(b: *mut Block, size: usize, tag: u8) {
        // SAFETY: a live block of `size` bytes, ours to read.
        let s = unsafe { core::slice::from_raw_parts(b as *const u8, size) };
        assert!(s.iter().all(|&x| x == tag), "block {b:p} lost its contents");
    }

    /// Which OS pages of `[p, p + len)` are resident.
    fn resident(p: usize, len: usize) -> Vec<bool> {
        let mut v = vec![0u8; len / OS_PAGE];
        // SAFETY: a mapped, page-aligned range and a vector of one byte per OS page.
        let r = unsafe { libc::mincore(p as *mut libc::c_void, len, v.as_mut_ptr()) };
        assert_eq!(r, 0);
        v.iter().map(|&x| x & 1 != 0).collect()
    }

    /// Fills a page, frees all but about 1 in 10 blocks (some onto `free`, the rest onto
    /// `local_free`), trims it: exactly the OS pages with no live block go back (not
    /// resident afterwards), the live blocks keep their contents, and allocating until the
    /// page is full again hands out every free block exactly once.
    #[test]
    fn trim_gives_back_the_all_free_os_pages_and_every_block_comes_back_once() {
        for (bin, slice0) in [
            (bin_of(512), false),
            (bin_of(384), false),
            (bin_of(512), true),
        ] {
            let size = bin_size(bin);
            let (seg, page) = page_of(bin, slice0);
            let mut blocks = vec![];
            while let Some(b) = pop(page) {
                fill(b, size, 0xa5);
                blocks.push(b);
            }
            assert_eq!(blocks.len(), page.reserved as usize);
            // Which blocks stay live is chosen in address order: the secure build hands a
            // page's blocks out in a random order, and a choice in that order left fewer
            // than two all-free OS pages for about 1 secret in 100.
            blocks.sort_unstable();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut live = vec![];
            let mut freed = vec![];
            for &b in &blocks {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % 10 == 0 {
                    live.push(b)
                } else {
                    freed.push(b)
                }
            }
            for (k, &b) in freed.iter().enumerate() {
                push(page, b);
                if k == freed.len() / 2 {
                    assert!(page.local_to_free());
                }
            }
            // The OS pages wholly inside the page's blocks with no live block.
            let base = page.start() as usize & !(OS_PAGE - 1);
            let lo = page.start() as usize;
            let hi = lo + blocks.len() * size;
            let mut want = 0u64;
            for u in 0..64 {
                let (a, e) = (base + u * OS_PAGE, base + (u + 1) * OS_PAGE);
                if a >= lo
                    && e <= hi
                    && live
                        .iter()
                        .all(|&b| b as usize + size <= a || b as usize >= e)
                {
                    want |= 1 << u;
                }
            }
            assert!(
                want.count_ones() >= 2,
                "bin {bin}: few all-free OS pages: {want:x}"
            );
            // SAFETY: the page's owner, no pop in progress.
            let bytes = unsafe { page.trim() };
            assert_eq!(bytes, want.count_ones() as usize * OS_PAGE);
            assert_eq!(page.parked, want);
            let units = (hi - base) / OS_PAGE;
            let res = resident(base, units * OS_PAGE);
            for (u, &r) in res.iter().enumerate() {
                assert_eq!(r, want & (1 << u) == 0, "OS page {u} of bin {bin}");
            }
            // SAFETY: as above; nothing changed, so a second trim gives back nothing.
            assert_eq!(unsafe { page.trim() }, 0);
            for &b in &live {
                check(b, size, 0xa5);
            }
            let mut seen: HashSet<usize> = live.iter().map(|&b| b as usize).collect();
            let mut again = 0;
            while let Some(b) = pop(page) {
                assert!(seen.insert(b as usize), "block {b:p} handed out twice");
                assert_eq!((b as usize - lo) % size, 0);
                fill(b, size, 0x3c);
                again += 1;
            }
            assert_eq!(again, freed.len(), "every free block once, parked or not");
            assert_eq!(page.used, page.reserved);
            assert_eq!(page.parked, 0);
            for &b in &live {
                check(b, size, 0xa5);
            }
            for &b in &freed {
                check(b, size, 0x3c);
            }
            drop_segment(seg);
        }
    }

    /// A block of a parked OS page written after the trim (freed a second time, or used after
    /// its free) is found, reported and not handed out: by the next trim if it went onto a
    /// list, by the unpark otherwise. Under `ignore` (an abort would end the test process).
    #[test]
    fn a_write_into_a_parked_block_is_reported_and_the_block_kept_out() {
        // Only the first block stays live: every OS page but the first is all free.
        let (seg, page, blocks) = all_freed_but_the_first(512);
        // SAFETY: the page's owner.
        assert_eq!(unsafe { page.trim() }, 15 * OS_PAGE);
        let ignoring = crate::heap::error::ignore_errors_for_test();
        // A second free of a parked block: found by the next trim.
        let twice = blocks[20];
        let list = page.local_free;
        page.used += 1;
        push(page, twice);
        // SAFETY: the page's owner.
        let back = unsafe { page.trim() };
        assert_eq!(back, 0, "a list with a parked block is not trimmed");
        // What a `warn` run leaves (the report returned): the list without the block, whose
        // link, written by the second free, the unpark finds too.
        page.local_free = list;
        // A use after free of another parked block: found when its OS page comes back.
        let stale = blocks[40];
        fill(stale, 16, 0x77);
        let mut seen = HashSet::new();
        seen.insert(blocks[0] as usize);
        let mut n = 0;
        while let Some(b) = pop(page) {
            assert!(seen.insert(b as usize));
            n += 1;
        }
        drop(ignoring);
        assert!(
            !seen.contains(&(stale as usize)),
            "the written block was handed out"
        );
        assert!(
            !seen.contains(&(twice as usize)),
            "the block freed twice was handed out"
        );
        // All but the live block and the two written ones.
        assert_eq!(n, blocks.len() - 3);
        drop_segment(seg);
    }

    /// Review rev46: a parked block over two OS pages (or more) whose first word lies in
    /// one that came back first (or never went) was added by the unpark of its last one
    /// unchecked: a write after its free (a use after free, another thread's second free)
    /// went unseen and the block was handed out (twice, if it was live elsewhere).
    #[test]
    fn review_a_write_into_a_parked_block_over_two_os_pages_is_reported() {
        for size in [1280, 3072, 5120, 8192] {
            let (seg, page, blocks) = all_freed_but_the_first(size);
            let live = blocks[0];
            // SAFETY: the page's owner.
            assert!(unsafe { page.trim() } > 0);
            let lo = page.start() as usize;
            let stale: Vec<usize> = (0..blocks.len())
                .map(|i| lo + i * size)
                .filter(|&b| b != live as usize)
                .filter(|&b| b / OS_PAGE != (b + size - 1) / OS_PAGE)
                .filter(|&b| page.holds_parked(b as *const u8))
                .collect();
            assert!(!stale.is_empty(), "size {size}: none parked over two pages");
            for &b in &stale {
                fill(b as *mut Block, 8, 0x77);
            }
            let ignoring = crate::heap::error::ignore_errors_for_test();
            let handed: Vec<usize> = std::iter::from_fn(|| pop(page))
                .map(|b| b as usize)
                .collect();
            drop(ignoring);
            let bad: Vec<&usize> = handed.iter().filter(|b| stale.contains(b)).collect();
            assert!(
                bad.is_empty(),
                "size {size}: written ones handed out: {bad:x?}"
            );
            assert_eq!(handed.len(), blocks.len() - 1 - stale.len(), "size {size}");
            drop_segment(seg);
        }
    }

    /// Review (rev1): a trim whose `MADV_DONTNEED` the kernel refuses (the range is locked:
    /// `mlock`/`mlockall`, which real-time programs use) leaves the parked blocks' memory as
    /// it was, stale links in their first words; the unpark must not take those for writes
    /// after the free. Under `ignore`, a report leaves the block out: every freed block must
    /// still come back.
    #[test]
    fn review_a_refused_decommit_does_not_make_parked_blocks_look_written() {
        let (seg, page, blocks) = all_freed_but_the_first(512);
        let base = page.start() as usize;
        let len = page.reserved as usize * page.block_size as usize;
        // SAFETY: a mapped range of the test's own segment.
        assert_eq!(unsafe { libc::mlock(base as *const libc::c_void, len) }, 0);
        // SAFETY: the page's owner.
        let bytes = unsafe { page.trim() };
        // SAFETY: as above.
        unsafe { libc::munlock(base as *const libc::c_void, len) };
        assert!(bytes > 0);
        let ignoring = crate::heap::error::ignore_errors_for_test();
        let mut n = 0;
        while pop(page).is_some() {
            n += 1;
        }
        drop(ignoring);
        assert_eq!(n, blocks.len() - 1, "freed blocks lost to false reports");
        drop_segment(seg);
    }

    /// Review (rev1), the same root cause outside the trim (older than it): a purge whose
    /// `MADV_DONTNEED` the kernel refuses (locked memory) still clears the slices' `dirty`
    /// bits, so the next page there is `fresh` and says its blocks are zero (`free_is_zero`:
    /// a `calloc` would skip zeroing) while they hold what was written before.
    #[test]
    fn review_a_refused_purge_does_not_make_written_slices_fresh() {
        let seg = Segment::map_normal(0, false);
        // SAFETY: the segment is fresh and ours alone; the ranges are inside it.
        unsafe {
            let p = Segment::take_slices(seg, 1, false);
            let start = (*p).start();
            ptr::write_bytes(start, 0xab, OS_PAGE);
            let _ = Segment::free_page(p, 0, 0);
            let len = crate::heap::segment::SLICE_SIZE;
            assert_eq!(libc::mlock(start as *const libc::c_void, len), 0);
            Segment::purge_free(seg);
            libc::munlock(start as *const libc::c_void, len);
            let again = Segment::take_slices(seg, 1, false);
            assert_eq!((*again).start(), start);
            let zero = *start == 0;
            assert!(!(*again).fresh || zero, "fresh slices holding old data");
        }
        drop_segment(seg);
    }

    /// Review (rev1), the `secure` build: a block freed (its freed marker written), parked
    /// and brought back by `unpark` is free again, on `free`, so a second free of it must
    /// find its marker (invariant 22: the marker is there exactly while the block is free;
    /// the owner's free takes the double-free check only when it sees it). The decommit
    /// zeroed the marker and `unpark` does not write it back: the second free would push the
    /// block onto `local_free` while it is on `free`, and it would be handed out twice.
    #[cfg(feature = "secure")]
    #[test]
    fn review_an_unparked_block_keeps_its_freed_marker() {
        use crate::heap::secure::{is_marked_freed, mark_freed};
        let bin = bin_of(512);
        let (seg, page) = page_of(bin, false);
        let mut blocks = vec![];
        while let Some(b) = pop(page) {
            blocks.push(b);
        }
        for &b in &blocks[1..] {
            // SAFETY: a block of the page being freed, as free_owned marks it.
            unsafe { mark_freed(page, b as *mut u8) };
            push(page, b);
        }
        // SAFETY: the page's owner.
        assert!(unsafe { page.trim() } > 0);
        page.free = ptr::null_mut();
        page.local_free = ptr::null_mut();
        assert!(page.extend(), "unparked blocks on free");
        let b = page.free;
        assert!(
            // SAFETY: b is a block of the page, free.
            unsafe { is_marked_freed(page, b as *mut u8) },
            "an unparked free block without its freed marker"
        );
        drop_segment(seg);
    }

    /// Review (rev1): random allocations, frees and trims on pages of small blocks (the
    /// strided carve, partial carves, blocks straddling OS pages) and at slice 0: no block
    /// handed out while live, contents kept, the page fills to exactly its block count.
    #[test]
    fn review_trims_of_small_and_straddling_blocks_keep_every_block_once() {
        for (k, &sz) in [16usize, 24, 48, 56, 80, 112, 1280, 3072, 5120, 8192]
            .iter()
            .enumerate()
        {
            for seed in 0..6u64 {
                let bin = bin_of(sz);
                let size = bin_size(bin);
                let (seg, page) = page_of(bin, (seed + k as u64) % 2 == 0);
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (seed * 7919 + k as u64);
                let mut rnd = || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let mut live: Vec<(*mut Block, u8)> = vec![];
                let mut tag = 0u8;
                let mut given = 0;
                for _ in 0..6000 {
                    let r = rnd() % 100;
                    if r < 45 {
                        if let Some(b) = pop(page) {
                            assert!(live.iter().all(|&(l, _)| l != b), "handed out twice");
                            tag = tag.wrapping_add(1);
                            fill(b, size, tag);
                            live.push((b, tag));
                        }
                    } else if r < 97 {
                        if !live.is_empty() {
                            let i = rnd() as usize % live.len();
                            let (b, t) = live.swap_remove(i);
                            check(b, size, t);
                            push(page, b);
                        }
                    } else {
                        // SAFETY: the page's owner, between pops.
                        given += unsafe { page.trim() };
                    }
                }
                assert!(
                    given > 0 || size < 24,
                    "size {size} seed {seed}: never trimmed"
                );
                for &(b, t) in &live {
                    check(b, size, t);
                }
                let mut n = live.len();
                while let Some(b) = pop(page) {
                    assert!(
                        live.iter().all(|&(l, _)| l != b),
                        "handed out twice at the end"
                    );
                    live.push((b, 0));
                    n += 1;
                }
                assert_eq!(n, page.reserved as usize, "size {size} seed {seed}");
                drop_segment(seg);
            }
        }
    }

    /// Review (rev1), the `secure` build: a parked block whose first bytes lie in an OS page
    /// that stayed (a block straddling into a given-back one) keeps its freed marker there;
    /// a second free of it sees the marker and asks `on_free_lists`, which says no (it is on
    /// no list: parked), so the free is accepted: the block goes onto `local_free`, is
    /// handed out from there, and again when its OS page comes back (its first word, in the
    /// page that stayed, is not checked). A double free the secure build claims to catch.
    #[cfg(feature = "secure")]
    #[test]
    fn review_a_second_free_of_a_parked_straddling_block_is_reported() {
        use crate::heap::secure::{is_marked_freed, mark_freed, on_free_lists};
        let bin = bin_of(1280);
        let size = bin_size(bin);
        let (seg, page) = page_of(bin, false);
        let mut blocks = vec![];
        while let Some(b) = pop(page) {
            blocks.push(b);
        }
        // In address order (the secure carve hands them out shuffled).
        blocks.sort();
        // Blocks 0 and 7 live (OS pages 0 and 2 stay; 1 holds blocks 3 to 6), the rest freed.
        for (i, &b) in blocks.iter().enumerate() {
            if i != 0 && i != 7 {
                // SAFETY: a block of the page being freed, as free_owned marks it.
                unsafe { mark_freed(page, b as *mut u8) };
                push(page, b);
            }
        }
        // SAFETY: the page's owner.
        assert!(unsafe { page.trim() } > 0);
        // Block 3 starts at 3840 (OS page 0, kept) and ends in OS page 1 (given back).
        let b = blocks[3];
        assert_eq!(
            page.parked & 0b11,
            0b10,
            "size {size}, parked {:b}",
            page.parked
        );
        assert!(page.units_of(3) & page.parked != 0, "block 3 is parked");
        // SAFETY: b is a block of the page; its first 16 bytes are in the kept OS page.
        assert!(unsafe { is_marked_freed(page, b as *mut u8) });
        // What free_marked asks before it reports.
        // SAFETY: the page's owner.
        let seen = unsafe { on_free_lists(page, b) };
        assert!(
            seen,
            "a second free of a parked block (size {size}) would be accepted"
        );
        drop_segment(seg);
    }

    /// Review rev7: `holds_parked_racy` (another thread's report, racing with the owner) may
    /// read `parked` of a trimmed page and the shape of the page made on its slices since (a
    /// page of 8 slices here): a block past the 64 units a trim can park shifted the unit
    /// mask by 64 or more (a panic with overflow checks on, a wrong answer without), and a
    /// block size read as 0 divided by zero. Neither is parked.
    #[cfg(feature = "secure")]
    #[test]
    fn review_a_racy_parked_read_of_a_page_made_again_is_bounded() {
        let seg = Segment::map_normal(0, false);
        // SAFETY: the segment is fresh and ours alone.
        let page = unsafe { &mut *Segment::take_slices(seg, 8, false) };
        let i = page.slice_index();
        let bin = bin_of(20_000);
        page.init_bin(bin, Segment::run_bytes(i, 8));
        // The stale bits of the page that was trimmed there before.
        page.parked = u64::MAX;
        let far = page.start().wrapping_add(20 * bin_size(bin));
        let near = page.start();
        // SAFETY: a descriptor of a live segment; both are block starts of its page.
        unsafe {
            assert!(Page::holds_parked_racy(page, near));
            assert!(
                !Page::holds_parked_racy(page, far),
                "a block past the 64 units is never parked"
            );
            page.block_size = 0;
            assert!(!Page::holds_parked_racy(page, near));
        }
        drop_segment(seg);
    }

    /// A trimmed page given back, and its slices taken for a large page: the large page
    /// carries no parked OS page, and a free of its block is no free of a parked block (a
    /// stale `parked` made every free of such a large block a reported double free: found by
    /// tests/stress.rs in CI).
    #[test]
    fn slices_of_a_trimmed_page_taken_again_carry_no_parked_marks() {
        let (seg, page, blocks) = all_freed_but_the_first(512);
        let i = page.slice_index();
        // SAFETY: the page's owner.
        assert!(unsafe { page.trim() } > 0);
        assert!(page.parked != 0);
        push(page, blocks[0]);
        // SAFETY: the test owns the segment; the page holds no live block.
        unsafe { Segment::free_page(page, 0, 0) };
        // SAFETY: as above.
        let large = unsafe { &mut *Segment::take_slices(seg, 1, false) };
        assert_eq!(large.slice_index(), i, "the same slice is taken again");
        large.kind = PageKind::Large as u8;
        large.block_size = Segment::run_bytes(i, 1) as u32;
        assert_eq!(large.parked, 0);
        assert!(!large.holds_parked(large.start()));
        drop_segment(seg);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc,
        Free(usize),
        Trim,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Alloc),
            4 => any::<usize>().prop_map(Op::Free),
            1 => Just(Op::Trim),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Random allocations, frees and trims of one page against a shadow set of the live
        /// blocks: no block is handed out while live, live blocks keep their contents, and
        /// at the end the page fills up to exactly its block count.
        #[test]
        fn trims_never_hand_out_a_block_twice(
            which in 0usize..4,
            ops in proptest::collection::vec(op(), 1..600),
        ) {
            let bin = bin_of([128, 256, 448, 1024][which]);
            let size = bin_size(bin);
            let (seg, page) = page_of(bin, which == 1);
            let mut live: Vec<(*mut Block, u8)> = vec![];
            let mut tag = 0u8;
            for op in ops {
                match op {
                    Op::Alloc => {
                        if let Some(b) = pop(page) {
                            prop_assert!(live.iter().all(|&(l, _)| l != b));
                            tag = tag.wrapping_add(1);
                            fill(b, size, tag);
                            live.push((b, tag));
                        }
                    }
                    Op::Free(k) if !live.is_empty() => {
                        let (b, t) = live.swap_remove(k % live.len());
                        check(b, size, t);
                        push(page, b);
                    }
                    Op::Free(_) => {}
                    // SAFETY: the page's owner, between pops.
                    Op::Trim => { unsafe { page.trim() }; }
                }
            }
            for &(b, t) in &live {
                check(b, size, t);
            }
            let mut n = live.len();
            while let Some(b) = pop(page) {
                prop_assert!(live.iter().all(|&(l, _)| l != b));
                fill(b, size, 0);
                live.push((b, 0));
                n += 1;
            }
            prop_assert_eq!(n, page.reserved as usize);
            drop_segment(seg);
        }
    }
}

#[cfg(all(test, not(loom)))]
#[path = "trim_events_tests.rs"]
mod events_tests;
