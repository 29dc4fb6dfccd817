//! Page descriptors: the 128-byte record of one page (its free lists, counts, bin, queue
//! links, and on its own cache line the list other threads free into), one per slice in the
//! segment header.
//!
//! Owns: the layout of `Page` and its plain accessors. May touch: `heap::remote` (the block
//! and remote-free types), the segment header's address arithmetic (`super`).

use super::{Segment, SEGMENT_MASK};
use crate::heap::remote::{Block, RemoteFree};
use core::ptr;

/// What a page holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum PageKind {
    /// Not in use (its slices are free), or a continuation slice of a multi-slice page.
    Free = 0,
    /// Blocks of one bin.
    Bin = 1,
    /// One large object.
    Large = 2,
}

/// Page flags.
pub const PAGE_IN_FULL: u8 = 1;

/// A bit of `Page::flags` beside `PAGE_IN_FULL` (heap::segment): the page had no live block
/// at its last free, or is free; its next local free takes the slow path, which checks that
/// it is not a double free (docs/security.md). Set when a free or a collection leaves the
/// page empty and it stays, on every page given back and on every descriptor of a new
/// segment; cleared by a checked free and when
/// the slices are taken for a new page.
pub const PAGE_CHECK_FREE: u8 = 2;

/// A page descriptor. Fields other than `thread_free` belong to the owner heap. One cache
/// line each (64 bytes, aligned), so finding a block's descriptor is a shift and a free
/// touches one line of the header. (`thread_free` stays on this line: a remote free reads
/// the line anyway, and moving the word to a separate array measured slower.)
#[repr(C, align(64))]
pub struct Page {
    /// Blocks ready to hand out (the fast path pops here).
    pub free: *mut Block,
    /// Blocks freed by the owner, moved to `free` when it runs dry.
    pub local_free: *mut Block,
    /// Blocks handed out and not yet freed back to `free`/`local_free` (remote frees still on
    /// `thread_free` count as used until collected).
    pub used: u32,
    /// Blocks carved from the page's memory so far.
    pub capacity: u32,
    /// Blocks that fit in the page.
    pub reserved: u32,
    /// Size of each block (for a large page: the whole usable page).
    pub block_size: u32,
    /// The bin (for bin pages).
    pub bin: u8,
    /// `PAGE_IN_FULL`: the page is in no queue (full bin page, or any large page).
    pub flags: u8,
    /// A `PageKind`.
    pub kind: u8,
    /// Number of slices (first descriptor only).
    pub slice_count: u8,
    /// For continuation slices: distance back to the first slice. 0 on the first.
    pub back: u8,
    /// The not-yet-carved part of the page, and the blocks on `free`, are zero but for their
    /// links.
    pub free_is_zero: bool,
    /// The memory past `capacity` has never been written since it was mapped or purged.
    pub fresh: bool,
    /// A large page whose pages were moved to another node (by `tiers::demote` & co.): that
    /// node + 1; 0 when it is on its segment's node. Written by the block's owner while it is
    /// live, read when the page is given back.
    pub moved: u8,
    /// The page's last refill came from other threads' frees (collected remote frees), not
    /// from its owner's: when it runs out, more are likely on their way, so a queue walk
    /// leaves it in the queue for a while instead of parking it as full (see
    /// `FULL_PAGE_RETAIN` in `heap::thread`).
    pub remote_fed: bool,
    /// `used` + 1 when the page was last looked at for trimming (and whether it was trimmed
    /// then), 0 if never (see `heap::trim`; owner only; fills the line's padding).
    pub trim_mark: u32,
    /// Queue links (owner only).
    pub next: *mut Page,
    /// Queue links (owner only).
    pub prev: *mut Page,
    /// Ends the owner's line: everything above is what the owner's `malloc` and `free` read
    /// and write; everything below is what another thread's `free` reads and writes. On one
    /// line, a producer/consumer hand-off moved the line between the two cores twice per block.
    pub _remote_line: LineBreak,
    /// Blocks freed by other threads, and the delayed-free state (the only field other
    /// threads write).
    pub thread_free: RemoteFree,
    /// `back`, for other threads' frees (written with it, by [`Page::set_back`]).
    pub remote_back: u8,
    /// `bin`, for other threads' frees (written with it, by [`Page::set_bin`]).
    pub remote_bin: u8,
    /// The OS pages of a bin page given back to the OS while the page is in use, one bit per
    /// OS page counted from the OS page holding the page's start (see `heap::trim`). Owner
    /// only, and read on slow paths only: it sits on the remote line, where there is room.
    pub parked: u64,
    /// The `secure` build: what the owner's check of a decoded free-list link reads
    /// (`heap::secure`). On the remote line, which has room: the owner's line is full.
    #[cfg(feature = "secure")]
    pub keys: crate::heap::secure::PageKeys,
}

const _: () = assert!(core::mem::size_of::<Page>() == 128);
const _: () = assert!(core::mem::offset_of!(Page, thread_free) == 64);
const _: () = assert!(core::mem::offset_of!(Page, trim_mark) < 48);

impl Page {
    /// An unused descriptor.
    #[allow(clippy::declare_interior_mutable_const)]
    pub const EMPTY: Page = Page {
        free: ptr::null_mut(),
        local_free: ptr::null_mut(),
        used: 0,
        capacity: 0,
        reserved: 0,
        block_size: 0,
        bin: 0,
        flags: 0,
        kind: PageKind::Free as u8,
        slice_count: 0,
        back: 0,
        free_is_zero: false,
        fresh: false,
        moved: 0,
        remote_fed: false,
        trim_mark: 0,
        next: ptr::null_mut(),
        prev: ptr::null_mut(),
        _remote_line: LineBreak,
        thread_free: RemoteFree::new(),
        remote_back: 0,
        remote_bin: 0,
        parked: 0,
        #[cfg(feature = "secure")]
        keys: crate::heap::secure::PageKeys::EMPTY,
    };

    /// Sets `back` and its copy for other threads.
    #[inline]
    pub fn set_back(&mut self, back: u8) {
        self.back = back;
        self.remote_back = back;
    }

    /// Sets `bin` and its copy for other threads.
    #[inline]
    pub fn set_bin(&mut self, bin: u8) {
        self.bin = bin;
        self.remote_bin = bin;
    }

    /// The segment this descriptor lives in.
    #[inline]
    pub fn segment(&self) -> *mut Segment {
        (self as *const Page as usize & !SEGMENT_MASK) as *mut Segment
    }

    /// First byte of the page's blocks (after the header for a page at slice 0).
    #[inline]
    pub fn start(&self) -> *mut u8 {
        Segment::slice_start(self.segment(), self.slice_index())
    }

    /// Index of this descriptor's slice.
    #[inline]
    pub fn slice_index(&self) -> usize {
        let seg = self.segment() as usize;
        (self as *const Page as usize - seg - core::mem::offset_of!(Segment, pages))
            / core::mem::size_of::<Page>()
    }
}

/// A zero-sized field that starts the next field on a new cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct LineBreak;
