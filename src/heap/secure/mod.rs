//! The `secure` build's checks on small blocks (docs/security.md; compiled only with the
//! `secure` feature).
//!
//! Owns: [`PageKeys`] (what a page keeps for the checks: its start, the span of its carved
//! blocks, its block size, a divisibility multiplier, copies of the links' secret and of
//! `TIERALLOC_FILL_FREED`; set when the page is set up and when blocks are carved), the
//! check of a decoded free-list link (`Page::link_ok`) and its report, the freed marker of a
//! free block (its second word: [`mark_freed`], [`clear_freed`], [`is_marked_freed`], and
//! the confirmation walk [`on_free_lists`]), what a block handed out gets ([`handed_out`]:
//! its marker cleared, its canary written) and `TIERALLOC_FILL_FREED` ([`fill_freed`]);
//! the canary at the end of each block is [`canary`]'s. The encoding of the links is
//! `heap::remote::link_key`. May touch: the page descriptor (from `heap::segment`),
//! `heap::page` (`check_block`; the walk's caller collects the page first), `heap::remote`,
//! `heap::size_class` and `heap::error` (the report). Only the page's owner calls what
//! changes a page's lists or keys; the marker, the canary and the fill are written by any
//! thread that frees (or resizes) a block it owns.
pub mod canary;

use super::error::{report, HeapError};
use super::remote::Block;
use super::segment::Page;
use super::size_class::{bin_size, NBINS};
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

/// What the owner's check of a decoded link reads, kept in the page descriptor so that the
/// check costs a subtraction, a multiplication and two compares: no division, no look-up of
/// the page's start from its segment.
#[derive(Clone, Copy, Debug)]
pub struct PageKeys {
    /// The address of the page's first block.
    lo: usize,
    /// The bytes of the blocks carved so far (`capacity * block_size`; a page spans at most
    /// 512 KiB).
    span: u32,
    /// The page's block size (`Page::block_size`, copied here for other threads' frees,
    /// which read only the descriptor's remote line: the canary, [`canary`]).
    size: u32,
    /// `u64::MAX / block_size + 1`: an offset `o < 2^32` is a multiple of the block size
    /// exactly when `o * div` (wrapping) is below `div` (Lemire, Kaser and Kurz's
    /// divisibility test).
    div: u64,
    /// The links' secret (`remote::link_key`), copied: read with the fields above.
    secret: usize,
    /// `TIERALLOC_FILL_FREED`, copied when the page was set up.
    fill: bool,
}

impl PageKeys {
    /// A page that holds no block: no link passes but null.
    pub const EMPTY: PageKeys = PageKeys {
        lo: 0,
        span: 0,
        size: 0,
        div: 0,
        secret: 0,
        fill: false,
    };

    /// The links' secret (`remote::link_key::get`).
    #[inline(always)]
    pub fn secret(&self) -> usize {
        self.secret
    }

    /// Whether `p` lies in the page's carved blocks (never for null, nor on a page that
    /// holds no block).
    #[inline(always)]
    pub fn holds(&self, p: *const u8) -> bool {
        (p as usize).wrapping_sub(self.lo) < self.span as usize
    }

    /// The page's block size (0 on a page that never held blocks).
    #[inline(always)]
    pub fn size(&self) -> usize {
        self.size as usize
    }
}

/// Sets up a bin page's keys (from `Page::init_bin`): no block carved yet.
#[inline]
pub fn init_page(page: &mut Page) {
    super::remote::link_key::ensure();
    let size = (page.block_size as u64).max(1);
    page.keys = PageKeys {
        lo: page.start() as usize,
        span: 0,
        size: page.block_size,
        div: (u64::MAX / size).wrapping_add(1),
        secret: super::remote::link_key::get(),
        fill: FILL_FREED.load(Ordering::Relaxed),
    };
}

/// Blocks were carved (from `Page::extend`, which has just linked them onto `free`, which
/// was empty, in address order): the span of the blocks a link may point at grows to the
/// page's new capacity, and the new blocks are linked again in a random order
/// ([`shuffle_carved`]).
#[inline]
pub fn carved(page: &mut Page) {
    let size = page.block_size as usize;
    let old = page.keys.span as usize / size.max(1);
    page.keys.span = (page.capacity as usize * size) as u32;
    shuffle_carved(page, old, page.capacity as usize - old);
}

/// Links blocks `[first, first + n)` of `page` (just carved, all on `free` and nowhere else)
/// onto `free` in a random order: a walk with a random start and a random step coprime to
/// `n` (neither 1 nor, where another exists, `n - 1`: never the address order), both
/// drawn from a hash of the secret, the page and its capacity. Where the next block handed
/// out lies is then not the address after the last one: an overflow from one block reaches
/// a neighbour that is not the next allocation, and heap layouts are harder to groom.
#[cold]
fn shuffle_carved(page: &mut Page, first: usize, n: usize) {
    if n < 3 {
        return;
    }
    let size = page.block_size as usize;
    let base = page.keys.lo + first * size;
    let h = (base ^ page.keys.secret ^ (page.capacity as usize).rotate_left(40))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let h = h ^ (h >> 29);
    let start = h % n;
    // A step coprime to n, not 1 nor (if another exists) n - 1: found within n tries.
    let mut step = n - 1;
    for k in 0..n {
        let s = ((h >> 32) + k) % n;
        if s >= 2 && s != n - 1 && gcd(s, n) == 1 {
            step = s;
            break;
        }
    }
    let block = |i: usize| (base + ((start + i * step) % n) * size) as *mut Block;
    for i in 0..n - 1 {
        // SAFETY: both are blocks just carved from this page (inside its span), on no list
        // but `free`, which is rebuilt here: ours to write.
        unsafe { Block::set_next(block(i), block(i + 1)) };
    }
    // SAFETY: as above.
    unsafe { Block::set_next(block(n - 1), ptr::null_mut()) };
    page.free = block(0);
}

/// The greatest common divisor.
fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Page {
    /// Whether `next`, a link just decoded from a free block of this page, may be followed:
    /// null (the end of the list), or the start of a block carved from this page. A link
    /// overwritten after the free decodes to an address that is neither (but for a chance of
    /// one in many millions, the key being unknown to whoever wrote it).
    #[inline(always)]
    pub fn link_ok(&self, next: *mut Block) -> bool {
        let k = &self.keys;
        let off = (next as usize).wrapping_sub(k.lo);
        // A page spans at most 512 KiB, so an offset below the span is below 2^32, as the
        // divisibility test needs.
        next.is_null() | ((off < k.span as usize) & ((off as u64).wrapping_mul(k.div) < k.div))
    }
}

/// A free block of a page whose link does not pass `Page::link_ok`: reports it. If the
/// report returns, the caller cuts its list at `b` (the blocks after it leak; `b` itself is
/// free and may be handed out).
#[cold]
#[inline(never)]
pub fn link_error(b: *mut Block) {
    report(HeapError::CorruptLink, b as *const u8);
}

/// The owner's pop (`thread::alloc::pop_block`) of `block`, whose link fails
/// `Page::link_ok`: reports it; if that returns, hands `block` out (it is free) and cuts the
/// list after it (the blocks after it leak).
///
/// # Safety
/// As `pop_block`'s: `page` is the calling thread's, `block` the first block of its free list.
#[cold]
#[inline(never)]
pub unsafe fn pop_bad_link(
    page: *mut Page,
    block: *mut Block,
    counter: &crate::sync::AtomicU64,
) -> *mut Block {
    link_error(block);
    // SAFETY: the page is ours (contract).
    unsafe {
        (*page).free = ptr::null_mut();
        (*page).used += 1;
        handed_out(page, block, (*page).keys.secret);
    }
    // Only the owner writes its counters (as `thread::counters::bump`).
    let n = counter.load(crate::sync::Ordering::Relaxed);
    counter.store(n.wrapping_add(1), crate::sync::Ordering::Relaxed);
    block
}

/// `TIERALLOC_FILL_FREED=1` (set by `init`): freed small blocks are filled with
/// [`FREED_PATTERN`] past their link word and freed marker.
pub static FILL_FREED: AtomicBool = AtomicBool::new(false);

/// What `TIERALLOC_FILL_FREED=1` writes over a freed block (past its first 16 bytes).
pub const FREED_PATTERN: u8 = 0xdf;

/// Fills block `p` of bin `bin` of `page` (a large page's block, `bin == NBINS`, is left
/// alone) with [`FREED_PATTERN`] past its link word and freed marker, if `TIERALLOC_FILL_FREED` was on when
/// the page was set up.
///
/// # Safety
/// `p` is the start of a block of `bin`'s size that the caller is freeing (checked, or on a
/// path that writes its link anyway); `page` is its page (only its remote line is read).
#[inline(always)]
pub unsafe fn fill_freed(page: *const Page, p: *mut u8, bin: usize) {
    // SAFETY: the page of a block being freed is readable (contract); `keys` does not change
    // while a block of the page is live.
    if unsafe { (*page).keys.fill } && bin < NBINS {
        // SAFETY: forwarded contract.
        unsafe { fill_freed_slow(p, bin) };
    }
}

/// [`fill_freed`]'s write, out of the free paths.
///
/// # Safety
/// As [`fill_freed`].
#[cold]
#[inline(never)]
unsafe fn fill_freed_slow(p: *mut u8, bin: usize) {
    let size = bin_size(bin);
    // Past the link and the freed marker (a secure build's block is at least 16 bytes).
    // SAFETY: the block is `size` bytes long and the caller's to write (fill_freed's
    // contract).
    unsafe { ptr::write_bytes(p.add(16), FREED_PATTERN, size - 16) };
}

/// XORed into a block's key to make its freed marker, so that the marker never equals the
/// block's encoded link.
const FREED_SALT: usize = 0x9e37_79b9_7f4a_7c15;

/// The freed marker of block `p`: what its second word holds while it is free. Made from the
/// secret and the block's address, so a program that never read freed memory cannot write
/// it by chance (one in 2^64), and a marker copied elsewhere does not match there.
#[inline(always)]
fn freed_marker(p: *const u8, secret: usize) -> usize {
    super::remote::link_key::key_with(p as *const Block, secret) ^ FREED_SALT
}

/// The key of block `p` of `page` (`remote::link_key::key_with`, with the page's copy of
/// the secret): computed once by the owner's free for both the marker and the link.
///
/// # Safety
/// `page` is readable.
#[inline(always)]
pub unsafe fn block_key(page: *const Page, p: *mut u8) -> usize {
    // SAFETY: per the contract.
    super::remote::link_key::key_with(p as *const Block, unsafe { (*page).keys.secret })
}

/// [`is_marked_freed`] with the block's key at hand ([`block_key`]). An unaligned read: a
/// wrong free may pass any pointer (read only if its first two words lie where blocks do).
///
/// # Safety
/// `p` points into a normal segment of ours (whose 4 MiB are all mapped, its guard pages
/// `PROT_NONE`).
#[inline(always)]
pub unsafe fn has_marker(p: *mut u8, key: usize) -> bool {
    // A wrong free's pointer into the header, its guard page, or the end guard: no block
    // starts there (the checks of the free report it), and a read of a guard would fault.
    if !second_word_inside(p) {
        return false;
    }
    // SAFETY: per the contract; the word lies in the blocks' area (checked above).
    unsafe { ptr::read_unaligned((p as *const usize).add(1)) == key ^ FREED_SALT }
}

/// [`has_marker`] without its bounds test, for a block whose canary was just found intact
/// (`canary::intact` has checked that the block's trailer, at or past its second word,
/// lies inside the segment): the owner's free, one compare and branch fewer.
///
/// # Safety
/// `p` points into a normal segment of ours, and its second word lies inside it.
#[inline(always)]
pub unsafe fn has_marker_inside(p: *mut u8, key: usize) -> bool {
    // SAFETY: per the contract.
    unsafe { ptr::read_unaligned((p as *const usize).add(1)) == key ^ FREED_SALT }
}

/// Whether `p`'s first 16 bytes lie in the part of its normal segment that blocks occupy
/// (`BLOCKS_START` to the end guard, `segment::BLOCKS_END`): a wrong free may name any
/// pointer of the segment, in its guard pages too, which no read may touch.
#[inline(always)]
fn second_word_inside(p: *mut u8) -> bool {
    use super::segment::{BLOCKS_END, BLOCKS_START, SEGMENT_MASK};
    (p as usize & SEGMENT_MASK).wrapping_sub(BLOCKS_START) <= BLOCKS_END - BLOCKS_START - 16
}

/// [`mark_freed`] with the block's key at hand.
///
/// # Safety
/// As [`mark_freed`].
#[inline(always)]
pub unsafe fn set_marker(p: *mut u8, key: usize) {
    // SAFETY: the block is at least 16 bytes and the caller's (contract).
    unsafe { *(p as *mut usize).add(1) = key ^ FREED_SALT };
}

/// Whether `p`'s second word holds its freed marker: `p` was freed and not handed out
/// since (every block handed out goes through the owner's pop, which clears the word), or
/// the program wrote that exact value there.
///
/// # Safety
/// `p` is an 8-aligned pointer into a normal segment of ours, `page` its page (a bin page's
/// block start, or any pointer into a segment's mapped pages); `page` is readable.
#[inline(always)]
pub unsafe fn is_marked_freed(page: *const Page, p: *mut u8) -> bool {
    if !second_word_inside(p) {
        return false;
    }
    // SAFETY: per the contract; the word lies inside the segment (checked above).
    unsafe { *(p as *const usize).add(1) == freed_marker(p, (*page).keys.secret) }
}

/// Writes `p`'s freed marker (a free of a small block that passed its checks).
///
/// # Safety
/// `p` is a block of bin page `page` that the caller is freeing.
#[inline(always)]
pub unsafe fn mark_freed(page: *const Page, p: *mut u8) {
    // SAFETY: the block is at least 16 bytes and the caller's (contract).
    unsafe { *(p as *mut usize).add(1) = freed_marker(p, (*page).keys.secret) };
}

/// `block`, a block of bin page `page` whose secret is `secret`, is handed out (the owner's
/// pop): its freed marker is cleared and its canary written for the largest request it
/// serves (`canary::arm_any`; the paths that know the request's size set it for that size,
/// `canary::fit_popped`). Every block handed out goes through here, so every live block has
/// its canary.
///
/// # Safety
/// `block` is a block of `page` the caller is handing out.
#[inline(always)]
pub unsafe fn handed_out(page: *const Page, block: *mut Block, secret: usize) {
    // SAFETY: per the contract (a block is at least 16 bytes in the secure build).
    unsafe {
        clear_freed(block);
        let key = super::remote::link_key::key_with(block, secret);
        canary::arm_any(page, block as *mut u8, key);
    }
}

/// Clears the freed marker of `block`, just handed out (the owner's pop).
///
/// # Safety
/// `block` is a block of at least 16 bytes the caller is handing out.
#[inline(always)]
pub unsafe fn clear_freed(block: *mut Block) {
    // SAFETY: per the contract.
    unsafe { *(block as *mut usize).add(1) = 0 };
}

/// Whether `b` is a free block of bin page `page`: parked (`heap::trim`) or on its lists
/// `free` and `local_free`. The caller collects the page's remote list onto those first (and
/// books what it took back, as every collection does). The confirmation of a freed marker
/// before a double free is reported, so that a program's data never causes a report. Walks at
/// most the page's capacity of links, each checked (`Page::link_ok`).
///
/// # Safety
/// The caller owns `page` (a bin page of its heap).
#[cold]
pub unsafe fn on_free_lists(page: *mut Page, b: *mut Block) -> bool {
    // SAFETY: the page is ours (contract): its lists are ours to read.
    unsafe {
        // Parked (its OS page given back by a trim, `heap::trim`): free, on no list.
        if (*page).holds_parked(b as *const u8) {
            return true;
        }
        let mut left = (*page).capacity as usize;
        for head in [(*page).free, (*page).local_free] {
            let mut x = head;
            while !x.is_null() && left > 0 {
                if x == b {
                    return true;
                }
                let next = Block::next(x);
                if !(*page).link_ok(next) {
                    break;
                }
                x = next;
                left -= 1;
            }
        }
        false
    }
}
