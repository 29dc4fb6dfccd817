//! Segments: 4 MiB, 4 MiB-aligned pieces of address space, and the pages carved from them.
//!
//! Owns: the segment header (which lives in the segment's first bytes), the page descriptors
//! inside it, the slice bitmaps (a large page growing or shrinking in place included), the
//! per-node pools of empty segments and the lists of abandoned segments; the segment map
//! (address to owner tag) is its child `map`, the page descriptor's layout its child `desc`,
//! the uncarved memory a new medium page keeps resident for a delay its child `tail`, the
//! purge schedule of free slices (delay steps, retries of refused purges) its child `purge`.
//! May touch: `sys::{os, numa}` (map, purge, bind), `heap::list`, `heap::remote`,
//! `heap::size_class`, `topology::raw` (`MAX_NODES`).
//!
//! Invariants:
//! - Every pointer tieralloc hands out lies in the first 4 MiB of the mapping it came from,
//!   so `ptr & !SEGMENT_MASK` is its segment header: O(1), no lock, no search.
//! - A normal segment is 64 slices of 64 KiB. A page is a run of slices; the descriptor of its
//!   first slice is the page, and every other slice's descriptor holds `back`, the distance
//!   to it. Slice 0 begins with the header, so its page starts at `BLOCKS_START`
//!   (`HEADER_SIZE`, plus the guard page of the `secure` build).
//! - The `secure` build: every segment has a `PROT_NONE` guard page (`GUARD_SIZE`) between
//!   its header and slice 0's page, and every normal segment's last slice is a guard too
//!   (never free, never in a page: `ALL_SLICES_FREE`), so an underflow from the first blocks
//!   or an overflow from the previous segment's last ones faults before it reaches a header.
//!   No purge, trim or re-commit touches a guard (they work on page areas only); a pooled
//!   segment keeps its guards (it stays mapped); a fork child inherits them.
//! - A normal segment has exactly one owner heap (`owner`, the heap's address) or none (0:
//!   pooled or abandoned). Only the owner changes its pages' lists and the slice bitmaps;
//!   without an owner, only the holder of the pool or abandoned lock does.
//! - A fork child's quarantined segment (owner [`QUARANTINED`], map entry [`MAP_UNOWNED`]) is
//!   on no list and nobody changes it again: its state may be torn (`heap::thread::fork`).
//! - A huge segment holds one object and has no owner: any thread may free it.
//! - The segment map's entry of a segment is its owner's tag (see [`set_owner`]) or
//!   [`MAP_UNOWNED`]; an entry equal to a heap's tag means that heap owns the segment. Only a
//!   thread taking or letting go of a segment writes its entry, and a heap's tag is given to
//!   another heap only after every entry holding it has been rewritten.

pub use super::list::{list_push_front, list_unlink};
use super::list::{Links, ListNode, LockedList};
use crate::sync::{AtomicI64, AtomicU8, AtomicUsize, Ordering};
use crate::sys::os;
use core::ptr;

/// log2 of the segment size.
pub const SEGMENT_SHIFT: usize = 22;
/// Segment size and alignment: 4 MiB.
pub const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
/// Mask of the offset inside a segment.
pub const SEGMENT_MASK: usize = SEGMENT_SIZE - 1;
/// log2 of the slice size.
pub const SLICE_SHIFT: usize = 16;
/// Slice size: 64 KiB.
pub const SLICE_SIZE: usize = 1 << SLICE_SHIFT;
/// Slices per segment.
pub const SLICES: usize = SEGMENT_SIZE / SLICE_SIZE;
/// Bytes at the start of a segment taken by its header.
pub const HEADER_SIZE: usize =
    (core::mem::size_of::<Segment>() + os::OS_PAGE - 1) & !(os::OS_PAGE - 1);
/// Bytes of the guard page between a segment's header and its first block: one OS page in
/// the `secure` build (`PROT_NONE`), none otherwise.
pub const GUARD_SIZE: usize = if cfg!(feature = "secure") {
    os::OS_PAGE
} else {
    0
};
/// Offset from a segment's start of the first byte any block can occupy: past the header and
/// its guard page.
pub const BLOCKS_START: usize = HEADER_SIZE + GUARD_SIZE;
/// `free_slices` of a segment with no page in use: every slice, but in the `secure` build the
/// last one, which is the segment's end guard (`PROT_NONE`, never handed out).
pub const ALL_SLICES_FREE: u64 = if cfg!(feature = "secure") {
    u64::MAX >> 1
} else {
    u64::MAX
};
/// Slices from the first that can be in a page (a walk over a segment's pages stops here):
/// all but the `secure` build's end guard.
pub const PAGE_SLICES: usize = ALL_SLICES_FREE.count_ones() as usize;
/// Offset from a normal segment's start of the end of the bytes any block can occupy: the
/// `secure` build's end guard (its last slice) starts here.
#[cfg(feature = "secure")]
pub const BLOCKS_END: usize = PAGE_SLICES * SLICE_SIZE;
/// The largest object that gets a page of its own inside a segment; anything bigger (or more
/// aligned than a slice) gets a huge segment.
pub const LARGE_MAX: usize = SEGMENT_SIZE / 2;
/// The largest alignment tieralloc serves (a huge object sits at this offset of its segment).
pub const MAX_ALIGN: usize = SEGMENT_SIZE / 2;

const _: () = assert!(BLOCKS_START <= SLICE_SIZE / 4);

/// What a segment holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum SegmentKind {
    /// 64 slices carved into pages.
    Normal = 0,
    /// One object bigger than `LARGE_MAX` (or aligned more than a slice).
    Huge = 1,
}

/// A segment header.
#[repr(C)]
pub struct Segment {
    /// Address of the owning heap, or 0 (pooled, abandoned, or huge).
    pub owner: AtomicUsize,
    /// A `SegmentKind`.
    pub kind: SegmentKind,
    /// The tag of the abandoned list the segment is on ([`ROOM`] or [`FULL`]), 0 if none.
    /// Written under that list's lock; a claimer reads it under its own, so it is atomic.
    pub abandoned: AtomicU8,
    /// The NUMA node the segment's memory is bound to.
    pub node: u16,
    /// The memory tier of that node (0 = fastest).
    pub tier: u8,
    /// Bytes mapped from the segment's start.
    pub map_size: usize,
    /// Huge segments: offset of the object, and its usable size.
    pub huge_offset: usize,
    /// Huge segments: usable bytes from `huge_offset`.
    pub huge_size: usize,
    /// Huge segments: when the object was allocated (ms), for age-based demotion.
    pub huge_born_ms: u64,
    /// Huge segments: its slot in the huge registry (`huge::NO_SLOT` if none).
    pub huge_slot: u32,
    /// Huge segments: the label id of the label heap that made the object (0: none), and
    /// that heap's node (see `heap::thread::labels`): its free books it off that label.
    pub huge_label: u8,
    /// Huge segments: the node of the label heap that made the object.
    pub huge_label_node: u8,
    /// Huge segments, `secure` build: the offset of the object's front guard page (the
    /// `PROT_NONE` page right before where the object starts, or started last), 0 if none.
    #[cfg(feature = "secure")]
    pub huge_guard: u32,
    /// Ends the cache line of fields that every free reads (`owner`, `kind`, `node`) and
    /// that rarely change: the owner writes the fields below whenever it takes or gives back
    /// a page, and on the same line they would make other threads' frees miss.
    pub _hot_line_end: LineBreak,
    /// Bit i set: slice i is in no page (owner only).
    pub free_slices: u64,
    /// Bit i set: slice i's page area may be resident (written since mapped or purged). The
    /// header (and its guard), in front of slice 0's page area, is not tracked: never purged.
    pub dirty: u64,
    /// Bit i set: the bin page at slice i keeps its uncarved memory resident for a purge delay
    /// or two (see [`Segment::tend_tails`]); cleared when the slices are taken or freed (owner
    /// only).
    pub tails: u64,
    /// The bits of `tails` set while a tail step was already set (maybe sooner than a purge
    /// delay away): they wait for the step after it, so each waits at least a delay.
    pub tails_new: u64,
    /// When the next tail step is due (ms, 0 = no tail waits).
    pub tails_at: u64,
    /// When the next purge step is due (ms, 0 = nothing pending).
    pub purge_at: u64,
    /// Slices freed since the last purge step. The step after next purges them if they are
    /// still free, so a slice stays resident at least one purge delay after it was freed.
    pub purge_recent: u64,
    /// Slices that were already free at the last purge step: the next step purges them.
    pub purge_pending: u64,
    /// When a slice was last added to `purge_recent` (ms): once a full delay has passed since,
    /// every slice of `purge_recent` has waited the delay out, and a step purges it with the
    /// pending ones (steps may be far apart when the heap is seldom on a slow path).
    pub purge_recent_ms: u64,
    /// Free slices whose purge the kernel refused (locked memory: `mlock`, `mlockall`): left
    /// off the delay's schedule above, they are tried again at `purge_retry_at`, each refusal
    /// doubling the wait (`purge_backoff`), so that memory unlocked later still goes back
    /// while memory that stays locked costs a system call ever more seldom.
    pub purge_refused: u64,
    /// When the refused slices are next tried (ms; meaningful while `purge_refused` is not 0).
    pub purge_retry_at: u64,
    /// The wait before that try (ms): `purge::PURGE_RETRY_MIN_MS` or the delay after a first
    /// refusal, doubled after each up to `PURGE_RETRY_MAX_MS`; 0 once a try succeeds.
    pub purge_backoff: u64,
    /// Pages in use.
    pub used_pages: u32,
    /// While abandoned: the blocks its last owner left out, less the frees since (a hint; the
    /// free that takes it to 0 claims the segment and checks: `thread::slices::reclaim_emptied`).
    pub live_hint: AtomicUsize,
    /// List links: the owner heap's segments, a pool, or the abandoned list.
    pub next: *mut Segment,
    /// List links.
    pub prev: *mut Segment,
    /// Slice descriptors.
    pub pages: [Page; SLICES],
}

// What a free reads of the header (owner, kind, node) shares its line with no field that
// changes while the segment is in use.
const _: () = assert!(core::mem::offset_of!(Segment, free_slices) == 64);

/// The segment holding `p`.
#[inline(always)]
pub fn segment_of(p: *const u8) -> *mut Segment {
    (p as usize & !SEGMENT_MASK) as *mut Segment
}

/// The page holding `p`, which must lie in a page in use of a normal segment.
///
/// # Safety
/// `p` must point into a live block of a normal segment.
#[inline(always)]
pub unsafe fn page_of(seg: *mut Segment, p: *const u8) -> *mut Page {
    // SAFETY: forwarded contract; the slice's descriptor was written when the block's page
    // was made, which happened before the block was handed out.
    unsafe {
        let d = slice_desc(seg, p);
        d.sub((*d).back as usize)
    }
}

/// The descriptor of the slice holding `p`.
///
/// # Safety
/// `p` lies in `seg`'s first 4 MiB.
#[inline(always)]
unsafe fn slice_desc(seg: *mut Segment, p: *const u8) -> *mut Page {
    let idx = (p as usize - seg as usize) >> SLICE_SHIFT;
    // SAFETY: idx < SLICES because p is inside the segment.
    unsafe { (*seg).pages.as_mut_ptr().add(idx) }
}

/// [`page_of`] for a thread that does not own the segment: it reads the remote line of the
/// slice's descriptor (`remote_back`), not the owner's, so that a remote free does not pull
/// the line the owner is writing.
///
/// # Safety
/// As [`page_of`].
#[inline(always)]
pub unsafe fn page_of_remote(seg: *mut Segment, p: *const u8) -> *mut Page {
    // SAFETY: as in page_of; remote_back is written together with back.
    unsafe {
        let d = slice_desc(seg, p);
        d.sub((*d).remote_back as usize)
    }
}

/// All ones for `n` slices from bit 0.
#[inline]
pub fn run_mask(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// The first index of a run of `n` set bits in `bits`, searching from `from`.
pub fn find_run(bits: u64, n: usize, from: usize) -> Option<usize> {
    if n == 0 || n > 64 {
        return None;
    }
    let mut m = bits & !run_mask(from);
    for i in 1..n {
        m &= bits >> i;
    }
    if m == 0 {
        None
    } else {
        Some(m.trailing_zeros() as usize)
    }
}

impl Segment {
    /// Maps and initialises a normal segment for `owner` on `node`. Null if the kernel refuses.
    pub fn map_normal(node: u32, bind: bool) -> *mut Segment {
        let p = os::map_aligned(
            SEGMENT_SIZE,
            SEGMENT_SIZE,
            if bind { Some(node) } else { None },
        );
        if p.is_null() {
            return ptr::null_mut();
        }
        if bind {
            // Under the far policy `preferred`: faulted in on the far node now, then left to
            // the kernel's tiering (see `numa::let_kernel_promote`).
            crate::sys::numa::let_kernel_promote(p, SEGMENT_SIZE, node);
        }
        let seg = p as *mut Segment;
        // SAFETY: p is a fresh, zeroed, SEGMENT_SIZE mapping of ours; the header fits in its
        // first HEADER_SIZE bytes. Zero is a valid Page::EMPTY except for `kind` (Free = 0)
        // and the null pointers (all-zero), so only the non-zero fields are written.
        unsafe {
            (*seg).kind = SegmentKind::Normal;
            (*seg).node = node as u16;
            (*seg).map_size = SEGMENT_SIZE;
            (*seg).free_slices = ALL_SLICES_FREE;
            // A free into a slice no page was ever made of (a stray pointer) takes the
            // owner's slow path, which reports it.
            for d in (*seg).pages.iter_mut() {
                d.flags = PAGE_CHECK_FREE;
            }
        }
        #[cfg(feature = "secure")]
        // Refused (too many mappings, vm.max_map_count): the segment is only unguarded.
        // SAFETY: both ranges are ours and never hold a block: slice 0's page starts past
        // the guard (BLOCKS_START) and the last slice is never free (ALL_SLICES_FREE).
        unsafe {
            os::protect_none(p.add(HEADER_SIZE), GUARD_SIZE);
            os::protect_none(p.add(SEGMENT_SIZE - SLICE_SIZE), SLICE_SIZE);
        }
        map_insert(seg);
        SEGMENTS.fetch_add(1, Ordering::Relaxed);
        seg
    }

    /// Start of slice `i`'s memory usable by a page.
    #[inline]
    pub fn slice_start(seg: *mut Segment, i: usize) -> *mut u8 {
        let off = if i == 0 {
            BLOCKS_START
        } else {
            i << SLICE_SHIFT
        };
        (seg as usize + off) as *mut u8
    }

    /// Bytes a page of `n` slices from slice `i` can hold.
    #[inline]
    pub fn run_bytes(i: usize, n: usize) -> usize {
        (n << SLICE_SHIFT) - if i == 0 { BLOCKS_START } else { 0 }
    }

    /// Takes `n` free slices (owner only) and returns the first one's descriptor, set up as
    /// an empty page of those slices. Large runs never start at slice 0.
    ///
    /// # Safety
    /// The caller owns `seg`.
    pub unsafe fn take_slices(seg: *mut Segment, n: usize, allow_slice0: bool) -> *mut Page {
        // SAFETY: forwarded contract.
        unsafe { Segment::take_slices_from(seg, n, allow_slice0, false) }
    }

    /// [`Segment::take_slices`], limited to resident (dirty) slices when `dirty_only`: a
    /// heap looks for those in all its segments before it touches new memory.
    ///
    /// # Safety
    /// The caller owns `seg`.
    pub unsafe fn take_slices_from(
        seg: *mut Segment,
        n: usize,
        allow_slice0: bool,
        dirty_only: bool,
    ) -> *mut Page {
        // SAFETY: the caller owns the segment, so its bitmaps and descriptors are ours.
        unsafe {
            let s = &mut *seg;
            let from = if allow_slice0 { 0 } else { 1 };
            // Resident free slices first: a run that is still dirty costs no page faults.
            let dirty_run = find_run(s.free_slices & s.dirty, n, from);
            let Some(i) = (if dirty_only {
                dirty_run
            } else {
                dirty_run.or_else(|| find_run(s.free_slices, n, from))
            }) else {
                return ptr::null_mut();
            };
            let mask = run_mask(n) << i;
            let fresh = s.dirty & mask == 0;
            s.free_slices &= !mask;
            s.dirty |= mask;
            s.purge_recent &= !mask;
            s.purge_pending &= !mask;
            Segment::forget_refused(s, mask);
            Segment::drop_tail(s, i);
            s.used_pages += 1;
            let pages = s.pages.as_mut_ptr();
            for j in 1..n {
                let d = &mut *pages.add(i + j);
                d.set_back(j as u8);
                d.kind = PageKind::Free as u8;
            }
            let page = &mut *pages.add(i);
            page.set_back(0);
            page.slice_count = n as u8;
            page.fresh = fresh;
            page.free = ptr::null_mut();
            page.local_free = ptr::null_mut();
            page.used = 0;
            page.capacity = 0;
            page.flags = 0;
            page.next = ptr::null_mut();
            page.prev = ptr::null_mut();
            page.moved = 0;
            // A trim's marks of the page these slices last held (`heap::trim`).
            page.parked = 0;
            page.trim_mark = 0;
            page.thread_free.force_state(super::remote::NORMAL);
            commit_add(s.node, Segment::run_bytes(i, n));
            page
        }
    }

    /// Gives a page's slices back to its segment (owner only). Returns true if the segment now
    /// has no page in use.
    ///
    /// # Safety
    /// The caller owns the page's segment and the page holds no live block.
    pub unsafe fn free_page(page: *mut Page, now: u64, delay: u64) -> bool {
        // SAFETY: the caller owns the segment; the page is unused, so no other thread reads
        // these descriptors any more.
        unsafe {
            let seg = (*page).segment();
            let s = &mut *seg;
            let i = (*page).slice_index();
            let n = (*page).slice_count as usize;
            debug_assert!(s.free_slices & (run_mask(n) << i) == 0, "page freed twice");
            if (*page).moved != 0 {
                // Its memory is on another node: drop it now and bind the range back to the
                // segment's node, so the next page made here is placed like the rest.
                let bytes = Segment::run_bytes(i, n);
                let start = Segment::slice_start(seg, i);
                let dropped = os::decommit(start, bytes);
                crate::sys::numa::bind(start, bytes, s.node as u32);
                if dropped {
                    s.dirty &= !(run_mask(n) << i);
                }
                commit_sub((*page).moved as u16 - 1, bytes);
                commit_add(s.node, bytes);
                // Its live bytes back on the segment's node, which its free booked them off.
                move_live(
                    (*page).moved as u16 - 1,
                    s.node,
                    (*page).block_size as usize,
                );
                (*page).moved = 0;
            }
            debug_assert!(s.owner.load(Ordering::Relaxed) != 0 || s.kind == SegmentKind::Normal);
            (*page).kind = PageKind::Free as u8;
            (*page).free = ptr::null_mut();
            (*page).local_free = ptr::null_mut();
            // The tail bit first: a bit over a free slice would name whatever page takes it.
            Segment::drop_tail(s, i);
            s.free_slices |= run_mask(n) << i;
            s.used_pages -= 1;
            Segment::schedule_purge(seg, run_mask(n) << i, now, delay);
            commit_sub(s.node, Segment::run_bytes(i, n));
            s.used_pages == 0
        }
    }

    /// Shrinks the large page `page` of `seg` to its first `want` slices: the others go back
    /// to the segment as free slices, due for purging no sooner than `delay` ms from `now`.
    /// Returns the bytes given back.
    ///
    /// # Safety
    /// The caller owns `seg`; `page` is a large page of it in use, of more than `want` slices,
    /// with its memory on the segment's node (`moved` is 0).
    pub unsafe fn shrink_large(
        seg: *mut Segment,
        page: *mut Page,
        want: usize,
        now: u64,
        delay: u64,
    ) -> usize {
        // SAFETY: the caller owns seg and page (contract); the descriptors of its slices are
        // in the segment's header.
        unsafe {
            let i = (*page).slice_index();
            let n = (*page).slice_count as usize;
            let tail = run_mask(n - want) << (i + want);
            (*seg).free_slices |= tail;
            for j in want..n {
                let d = (*seg).pages.as_mut_ptr().add(i + j);
                (*d).set_back(0);
            }
            (*page).slice_count = want as u8;
            let shrink = (n - want) * SLICE_SIZE;
            (*page).block_size -= shrink as u32;
            commit_sub((*seg).node, shrink);
            Segment::schedule_purge(seg, tail, now, delay);
            shrink
        }
    }

    /// Grows the large page `page` of `seg` to `want` slices over the free slices that follow
    /// it, if they all are free (and inside the segment). Returns the bytes added, or 0 if it
    /// could not grow (nothing changed).
    ///
    /// # Safety
    /// The caller owns `seg`; `page` is a large page of it in use, of fewer than `want`
    /// slices, with its memory on the segment's node (`moved` is 0).
    pub unsafe fn grow_large(seg: *mut Segment, page: *mut Page, want: usize) -> usize {
        // SAFETY: as in shrink_large.
        unsafe {
            let i = (*page).slice_index();
            let n = (*page).slice_count as usize;
            if i + want > SLICES {
                return 0;
            }
            let extra = run_mask(want - n) << (i + n);
            if (*seg).free_slices & extra != extra {
                return 0;
            }
            (*seg).free_slices &= !extra;
            (*seg).dirty |= extra;
            (*seg).purge_recent &= !extra;
            (*seg).purge_pending &= !extra;
            Segment::forget_refused(seg, extra);
            for j in n..want {
                let d = (*seg).pages.as_mut_ptr().add(i + j);
                (*d).set_back(j as u8);
                (*d).kind = PageKind::Free as u8;
            }
            (*page).slice_count = want as u8;
            let grow = (want - n) * SLICE_SIZE;
            (*page).block_size += grow as u32;
            commit_add((*seg).node, grow);
            grow
        }
    }
}

mod desc;
mod map;
mod purge;
mod tail;
pub use desc::{LineBreak, Page, PageKind, PAGE_CHECK_FREE, PAGE_IN_FULL};
#[cfg(test)]
pub use map::MAP_UNOWNED;
pub use map::{
    contains, for_each_segment, map_insert, map_remove, map_tag, set_owner, FIRST_TAG, NO_TAG,
    QUARANTINED,
};

/// Normal segments mapped right now.
pub static SEGMENTS: AtomicUsize = AtomicUsize::new(0);
/// Pages abandoned by exiting threads, and adopted again.
pub static PAGES_ABANDONED: AtomicUsize = AtomicUsize::new(0);
/// Pages adopted after being abandoned.
pub static PAGES_ADOPTED: AtomicUsize = AtomicUsize::new(0);
/// Segments a fork child quarantined (owner [`QUARANTINED`]: found in the hands of a thread
/// the fork stopped inside a slow path), and the bytes they keep mapped: never reused, never
/// unmapped (`heap::thread::fork`).
pub static SEGMENTS_QUARANTINED: AtomicUsize = AtomicUsize::new(0);
/// See [`SEGMENTS_QUARANTINED`].
pub static BYTES_QUARANTINED: AtomicUsize = AtomicUsize::new(0);
/// Frees into quarantined segments: dropped, their blocks never handed out again.
pub static FREES_QUARANTINED: AtomicUsize = AtomicUsize::new(0);

/// Tag of the abandoned lists whose segments have room to allocate from.
pub const ROOM: u8 = 1;
/// Tag of the abandoned lists whose segments were given up (nearly) full by a live heap
/// (see `heap::thread::abandon_full`): taken over by a thread that frees into them.
pub const FULL: u8 = 2;

/// A locked list of segments with no owner: a pool, or an abandoned list (see `heap::list`).
pub type SegmentList = LockedList<Segment>;

impl Links for Segment {
    /// # Safety
    /// As [`Links::next`].
    #[inline]
    unsafe fn next(n: *mut Self) -> *mut Self {
        // SAFETY: n is valid and its list is the caller's (trait contract).
        unsafe { (*n).next }
    }
    /// # Safety
    /// As [`Links::set_next`].
    #[inline]
    unsafe fn set_next(n: *mut Self, next: *mut Self) {
        // SAFETY: as above.
        unsafe { (*n).next = next }
    }
    /// # Safety
    /// As [`Links::prev`].
    #[inline]
    unsafe fn prev(n: *mut Self) -> *mut Self {
        // SAFETY: as above.
        unsafe { (*n).prev }
    }
    /// # Safety
    /// As [`Links::set_prev`].
    #[inline]
    unsafe fn set_prev(n: *mut Self, prev: *mut Self) {
        // SAFETY: as above.
        unsafe { (*n).prev = prev }
    }
}

impl ListNode for Segment {
    /// # Safety
    /// As [`ListNode::list_tag`].
    #[inline]
    unsafe fn list_tag(n: *mut Self) -> u8 {
        // SAFETY: n is a valid segment header (trait contract).
        unsafe { (*n).abandoned.load(Ordering::Relaxed) }
    }
    /// # Safety
    /// As [`ListNode::set_list_tag`].
    #[inline]
    unsafe fn set_list_tag(n: *mut Self, tag: u8) {
        // SAFETY: as above.
        unsafe { (*n).abandoned.store(tag, Ordering::Relaxed) }
    }
    /// # Safety
    /// As [`ListNode::owner`].
    #[inline]
    unsafe fn owner(n: *mut Self) -> usize {
        // SAFETY: as above.
        unsafe { (*n).owner.load(Ordering::Relaxed) }
    }
    /// # Safety
    /// As [`ListNode::set_owner`].
    #[inline]
    unsafe fn set_owner(n: *mut Self, owner: usize, tag: u16) {
        // SAFETY: a normal segment being taken off or put on a list (trait contract).
        unsafe { set_owner(n, owner, if owner == 0 { NO_TAG } else { tag }) }
    }
}

impl LockedList<Segment> {
    /// Unmaps every segment whose purge time has passed (pool only). Returns how many.
    pub fn unmap_expired(&self, now: u64) -> usize {
        self.remove_if(
            // SAFETY: pooled segments are valid headers with no owner and no live block.
            |seg| unsafe { (*seg).purge_at <= now },
            |seg| {
                SEGMENTS.fetch_sub(1, Ordering::Relaxed);
                map_remove(seg);
                // SAFETY: the segment is off the pool, unowned and holds no live block, so
                // nobody uses its memory any more.
                unsafe { os::unmap(seg as *mut u8, SEGMENT_SIZE) };
            },
        )
    }
}

/// The most NUMA nodes the allocator keeps separate pools for.
pub(crate) use crate::topology::raw::MAX_NODES;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_LIST: SegmentList = SegmentList::new();
#[allow(clippy::declare_interior_mutable_const)]
const ROOM_LIST: SegmentList = SegmentList::tagged(ROOM);
#[allow(clippy::declare_interior_mutable_const)]
const FULL_LIST: SegmentList = SegmentList::tagged(FULL);
/// Per-node pools of empty segments.
pub static POOLS: [SegmentList; MAX_NODES] = [EMPTY_LIST; MAX_NODES];
/// Per node, segments whose owner thread exited (or moved to another node) while they held
/// live blocks. Only heaps of the same node adopt them, so adoption never misplaces memory.
pub static ABANDONED: [SegmentList; MAX_NODES] = [ROOM_LIST; MAX_NODES];

/// Per node: segments given up (nearly) full by a live heap, until a thread frees into one.
pub static ABANDONED_FULL: [SegmentList; MAX_NODES] = [FULL_LIST; MAX_NODES];

#[allow(clippy::declare_interior_mutable_const)]
const ZERO_USIZE: AtomicUsize = AtomicUsize::new(0);
/// Committed bytes per node (the per-node share of `os::COMMITTED`).
pub static COMMITTED_BY_NODE: [AtomicUsize; MAX_NODES] = [ZERO_USIZE; MAX_NODES];

/// Counts `bytes` more committed on `node`.
#[inline]
pub fn commit_add(node: u16, bytes: usize) {
    os::COMMITTED.fetch_add(bytes, Ordering::Relaxed);
    COMMITTED_BY_NODE[(node as usize).min(MAX_NODES - 1)].fetch_add(bytes, Ordering::Relaxed);
}

/// Counts `bytes` less committed on `node`.
#[inline]
pub fn commit_sub(node: u16, bytes: usize) {
    os::COMMITTED.fetch_sub(bytes, Ordering::Relaxed);
    COMMITTED_BY_NODE[(node as usize).min(MAX_NODES - 1)].fetch_sub(bytes, Ordering::Relaxed);
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO_I64: AtomicI64 = AtomicI64::new(0);
/// Per node: live bytes of blocks that a tier move (`tier::migrate`) put on another node than
/// the one their allocation (and, for a large block, their free) books them on, added there
/// and taken off that node; `stats()` adds them to each node's live bytes. A huge block's
/// move stays booked (its free counts off the node its header names then); a large block's
/// (`Page::moved`: its segment stays where it was) is booked back when the page is given back
/// (`free_page`) (review rev19 for huge blocks, rev24 for large ones: a demoted large block
/// counted on its segment's node, not on the far node that held it and its committed bytes).
pub static MOVED_LIVE_BY_NODE: [AtomicI64; MAX_NODES] = [ZERO_I64; MAX_NODES];

/// Books `bytes` of a live block off node `from` and on node `to` (see
/// [`MOVED_LIVE_BY_NODE`]). Allocation-free.
pub fn move_live(from: u16, to: u16, bytes: usize) {
    if from == to {
        return;
    }
    let (f, t) = (
        (from as usize).min(MAX_NODES - 1),
        (to as usize).min(MAX_NODES - 1),
    );
    MOVED_LIVE_BY_NODE[f].fetch_sub(bytes as i64, Ordering::Relaxed);
    MOVED_LIVE_BY_NODE[t].fetch_add(bytes as i64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fits_and_slices_are_64k() {
        assert!(HEADER_SIZE >= core::mem::size_of::<Segment>());
        assert_eq!(HEADER_SIZE % os::OS_PAGE, 0);
        assert_eq!(SLICES, 64);
    }

    #[test]
    fn find_run_finds_the_first_fitting_run() {
        assert_eq!(find_run(u64::MAX, 1, 0), Some(0));
        assert_eq!(find_run(u64::MAX, 3, 1), Some(1));
        assert_eq!(find_run(0b1110_0110, 3, 0), Some(5));
        assert_eq!(find_run(0b1110_0110, 2, 0), Some(1));
        assert_eq!(find_run(0b1110_0110, 4, 0), None);
        assert_eq!(find_run(u64::MAX, 64, 0), Some(0));
        assert_eq!(find_run(u64::MAX << 1, 64, 0), None);
        assert_eq!(find_run(1 << 63, 1, 0), Some(63));
    }

    #[test]
    fn purge_waits_a_full_delay_and_spares_reused_slices() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone.
        unsafe {
            let a = Segment::take_slices(seg, 2, false); // slices 1-2
            let b = Segment::take_slices(seg, 2, false); // slices 3-4
            assert_eq!(((*a).slice_index(), (*b).slice_index()), (1, 3));
            let a_mask = run_mask(2) << 1;
            let b_mask = run_mask(2) << 3;
            // a is freed at t=1000 with a 100 ms delay: the first step is due at 1100.
            Segment::free_page(a, 1000, 100);
            assert_eq!((*seg).purge_at, 1100);
            // b is freed just before that step.
            Segment::free_page(b, 1099, 100);
            Segment::purge_step(seg, 1100, 100);
            // Nothing was free at a previous step, so nothing is purged yet: a has waited only
            // 100 ms and b 1 ms.
            assert_eq!((*seg).dirty & (a_mask | b_mask), a_mask | b_mask);
            assert_eq!((*seg).purge_at, 1200);
            // Two slices are taken again before the next step: the take prefers a dirty run
            // (the lowest, a's) over never-touched slices, and what it took must stay resident.
            let b2 = Segment::take_slices(seg, 2, false);
            assert_eq!(
                (*b2).slice_index(),
                1,
                "the lowest dirty run is reused first"
            );
            assert!(!(*b2).fresh);
            Segment::purge_step(seg, 1200, 100);
            // Slices 1-2 are in use again; 3-4 were free at both steps: purged.
            assert_eq!((*seg).dirty & a_mask, a_mask);
            assert_eq!((*seg).dirty & b_mask, 0);
            assert_eq!((*seg).purge_at, 0, "nothing left to purge");
            Segment::free_page(b2, 1300, 100);
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn slices_are_taken_and_given_back() {
        let seg = Segment::map_normal(0, false);
        assert!(!seg.is_null());
        // SAFETY: the segment is fresh and ours alone.
        unsafe {
            let p = Segment::take_slices(seg, 8, false);
            assert_eq!((*p).slice_index(), 1);
            assert_eq!((*p).start() as usize, seg as usize + SLICE_SIZE);
            assert!((*p).fresh);
            for j in 1..8 {
                // A pointer anywhere in the run finds the first descriptor.
                let q = page_of(seg, (*p).start().add(j * SLICE_SIZE + 17));
                assert_eq!(q, p);
            }
            let p0 = Segment::take_slices(seg, 1, true);
            assert_eq!((*p0).slice_index(), 0);
            assert_eq!((*p0).start() as usize, seg as usize + BLOCKS_START);
            assert_eq!((*seg).used_pages, 2);
            assert!(!Segment::free_page(p, 0, 0));
            assert!(Segment::free_page(p0, 0, 0));
            assert_eq!((*seg).free_slices, ALL_SLICES_FREE);
            Segment::purge_free(seg);
            assert_eq!((*seg).dirty, 0);
            let again = Segment::take_slices(seg, 8, false);
            assert!((*again).fresh, "purged slices count as fresh again");
            crate::heap::segment::map_remove(seg);
            os::unmap(seg as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
