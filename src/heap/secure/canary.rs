//! The `secure` build's canary at the end of every small and medium block, checked when the
//! block is freed (or resized in place): a write past the size asked for is reported
//! (docs/security.md).
//!
//! Owns: the layout of a live bin block's tail ([`TRAILER`], [`PATTERN`]), its writing
//! ([`arm_any`] for every block handed out by the plain pop; [`arm_popped`] for one the
//! keyed pop hands out; [`fit_popped`], [`fit_slow`], [`fit`] and [`arm_found`] for the size
//! the request asked for), its check ([`intact`]), the size asked for read back from it
//! ([`requested`]) and the report of a block found overwritten ([`report_bad`]). May touch:
//! the page descriptor (its `keys`, `kind`; `heap::segment`), `heap::remote::link_key` (the
//! block's key), `heap::page::check_block`, `heap::trim` (whether a block is parked) and
//! `heap::error` (the report). Large and huge blocks have no canary.
//!
//! A live block of `size` bytes holding a request of `n` bytes (every path asks its bin for
//! `n + TRAILER` bytes) is laid out as
//!
//! ```text
//! [0, n)             the program's bytes
//! [n, size - 8)      slack: its first byte holds PATTERN (when there is slack)
//! [size - 8, size)   the trailer: base(key) ^ (slack << 40), with base(key)'s low byte PATTERN
//! ```
//!
//! where `slack = size - 8 - n` and `key` is the block's key (`link_key::key_with`: its
//! address mixed with the secret). A free reads the trailer, takes out the slack (bits 40 to
//! 63; bits 0 to 39 must be those of `base(key)`, the low byte PATTERN), then checks the
//! byte at `n`, the first byte past the request: PATTERN, whether it is the slack's first
//! byte or (no slack) the trailer's first. So a write of one byte or more past `n` changes
//! that byte (unless it writes PATTERN there) or the trailer's checked bits; a write that
//! reaches the next block has gone through the trailer, whose 32 key bits a program that
//! does not know the secret matches once in 2^32. Bytes past the slack's first are not
//! checked: a write there that stops short of the trailer stays inside the block.
//!
//! A free block's second word is its freed marker (`heap::secure`), written over the
//! trailer in a 16-byte block (whose trailer is its second word) and cleared by the pop that
//! hands the block out, before its trailer is written again. A live block's trailer is
//! `base(key)`, the key shifted up a byte, the marker the key XOR a constant: equal for one
//! key in 2^64, and then only a hint (a free that finds the marker walks the page's lists
//! before it reports a double free).

use crate::heap::error::{report, HeapError};
use crate::heap::page::check_block;
use crate::heap::remote::{link_key, Block};
use crate::heap::segment::{
    page_of, segment_of, Page, PageKind, SegmentKind, BLOCKS_END, BLOCKS_START, SEGMENT_MASK,
};
use core::ptr;

/// The bytes a bin block keeps past the request for its trailer: every path that knows the
/// request's size asks its bin for this much more.
pub const TRAILER: usize = 8;

/// The byte at the request's end (the slack's first byte, and the trailer's lowest). Not 0,
/// nor an ASCII character, so that an off-by-one string terminator or text changes it.
pub const PATTERN: u8 = 0xa5;

/// Where the slack sits in the trailer: bits 40 to 63 (a bin block is at most 64 KiB).
const SLACK_SHIFT: u32 = 40;

/// The trailer of block `key`'s with no slack: the key shifted up a byte, PATTERN below.
#[inline(always)]
fn base(key: usize) -> usize {
    (key << 8) | PATTERN as usize
}

/// The trailer of a block with key `key` and `slack` bytes of slack.
#[inline(always)]
fn trailer(key: usize, slack: usize) -> usize {
    base(key) ^ (slack << SLACK_SHIFT)
}

/// The slack read back from trailer `t` of the block with key `key`: below 2^24 when bits 0
/// to 39 are intact, at least 2^24 when any of them changed (they are rotated up to bits
/// 24 to 63).
#[inline(always)]
fn slack_of(t: usize, key: usize) -> usize {
    (t ^ base(key)).rotate_left(64 - SLACK_SHIFT)
}

/// The key of `p` on `page` (the links' key, `link_key::key_with`).
///
/// # Safety
/// `page` is readable.
#[inline(always)]
unsafe fn key_of(page: *const Page, p: *const u8) -> usize {
    // SAFETY: per the contract.
    link_key::key_with(p as *const Block, unsafe { (*page).keys.secret() })
}

/// Writes the canary of block `p` of bin page `page` for the largest request the block
/// serves (`size - TRAILER` bytes, no slack): what every block handed out gets first
/// (`heap::secure::handed_out`), so that a block from a path that does not know the
/// request's size still frees cleanly.
///
/// # Safety
/// `p` is a block of bin page `page` the caller is handing out, `key` its key.
#[inline(always)]
pub unsafe fn arm_any(page: *const Page, p: *mut u8, key: usize) {
    // SAFETY: the block is the caller's and `size` bytes long (contract), at least 16.
    unsafe {
        let size = (*page).keys.size();
        *(p.add(size - TRAILER) as *mut usize) = base(key);
    }
}

/// [`fit`] for a block [`arm_any`] has just armed (the fast paths, right after the pop):
/// the trailer holds `base(key)`, so the slack is XORed in without the key.
///
/// # Safety
/// `p` is a block of bin page `page` just handed out by the pop (its trailer as
/// [`arm_any`] wrote it), and `n + TRAILER <= size`.
#[inline(always)]
pub unsafe fn fit_popped(page: *const Page, p: *mut u8, n: usize) {
    // SAFETY: the block is the caller's and holds n + TRAILER bytes (contract).
    unsafe {
        let size = (*page).keys.size();
        debug_assert!(n + TRAILER <= size);
        *(p.add(size - TRAILER) as *mut usize) ^= (size - TRAILER - n) << SLACK_SHIFT;
        *p.add(n) = PATTERN;
    }
}

/// Writes the canary of block `p` of bin page `page`, whose key is `key`, for a request of
/// `n` bytes: the trailer with the slack, and PATTERN at `n`. For a block just popped by
/// `thread::alloc::pop_block_keyed` (whose trailer nothing has written yet): two stores.
///
/// # Safety
/// `p` is a block of bin page `page` the caller is handing out, `key` its key, and
/// `n + TRAILER <= size`.
#[inline(always)]
pub unsafe fn arm_popped(page: *const Page, p: *mut u8, key: usize, n: usize) {
    // SAFETY: the block is the caller's and holds n + TRAILER bytes (contract).
    unsafe {
        let size = (*page).keys.size();
        debug_assert!(n + TRAILER <= size);
        *(p.add(size - TRAILER) as *mut usize) = trailer(key, size - TRAILER - n);
        *p.add(n) = PATTERN;
    }
}

/// Rewrites the canary of block `p` of bin page `page`, armed by [`arm_any`] (or for
/// another size), for a request of `n` bytes: the slack goes into the trailer and PATTERN
/// at `n`.
///
/// # Safety
/// `p` is a live block of bin page `page` that the caller owns, with a trailer written for
/// the block (by [`arm_any`] or this), and `n + TRAILER <= size`.
#[inline(always)]
pub unsafe fn fit(page: *const Page, p: *mut u8, n: usize) {
    // SAFETY: the block is the caller's and holds n + TRAILER bytes (contract).
    unsafe {
        let size = (*page).keys.size();
        debug_assert!(n + TRAILER <= size);
        let t = p.add(size - TRAILER) as *mut usize;
        // The trailer as written for no slack, or for another slack: set to this one.
        let key = key_of(page, p);
        *t = trailer(key, size - TRAILER - n);
        *p.add(n) = PATTERN;
    }
}

/// [`fit`] for block `p` (or null) that a slow path handed out, `page` the page the caller
/// expects it from (its bin's current page after the slow path: where the common refill,
/// and a new page, hand blocks out from): if `p` lies in that page's carved blocks, the
/// pop armed it ([`fit_popped`]); else [`arm_found`] looks its page up. Returns `p`.
///
/// # Safety
/// As [`arm_found`]'s; `page` is a readable descriptor (or the empty page), of the caller's
/// heap.
#[inline(always)]
pub unsafe fn fit_slow(page: *const Page, p: *mut u8, n: usize) -> *mut u8 {
    // SAFETY: the descriptor is readable (contract).
    unsafe {
        if (*page).keys.holds(p) {
            fit_popped(page, p, n);
            return p;
        }
        arm_found(p, n)
    }
}

/// [`fit`] for a block found from its address (a slow path's, which does not say which
/// page it came from): does nothing for null, nor for a block that is not a bin page's (a
/// large or huge block, which has no canary). Returns `p`.
///
/// # Safety
/// `p` is null or a live block of ours just allocated for a request of `n` bytes, with room
/// for `n + TRAILER` if it is a bin block.
#[inline(never)]
pub unsafe fn arm_found(p: *mut u8, n: usize) -> *mut u8 {
    if p.is_null() {
        return p;
    }
    let seg = segment_of(p);
    // SAFETY: p is a live block of ours (contract): its segment header and, in a normal
    // segment, its page descriptor are valid.
    unsafe {
        if (*seg).kind != SegmentKind::Normal {
            return p;
        }
        let page = page_of(seg, p);
        if (*page).kind == PageKind::Bin as u8 {
            fit(page, p, n);
        }
    }
    p
}

/// Whether the canary of `p`, freed (or resized) as a block of bin page `page` with key
/// `key`, is intact: the trailer's checked bits and the byte at the request's end as
/// written. False too when `p` is not a block start whose trailer lies inside its segment
/// (a wrong free: [`report_bad`] tells which). Reads only the page's keys (the descriptor's
/// remote line) and the block.
///
/// # Safety
/// `p` points into a normal segment of ours (all of whose 4 MiB are mapped, its guard pages
/// `PROT_NONE`) and `page` is its page's descriptor, of a bin page (its keys set).
#[inline(always)]
pub unsafe fn intact(page: *const Page, p: *const u8, key: usize) -> bool {
    // SAFETY: the descriptor is readable (contract).
    let size = unsafe { (*page).keys.size() };
    // The block from p to its trailer's end lies where blocks do, between the segment's
    // guard pages (a wrong free's pointer may lie anywhere in the segment, in a guard page
    // too, whose read would fault). A descriptor that never held blocks (size 0, which the
    // remote free's fast path may read for a wrong pointer) has no canary.
    let off = p as usize & SEGMENT_MASK;
    let at = off.wrapping_add(size).wrapping_sub(TRAILER);
    if off < BLOCKS_START || at > BLOCKS_END - TRAILER || size < 2 * TRAILER {
        return false;
    }
    let last = size - TRAILER;
    // SAFETY: between the guards (above), so readable; unaligned for a wrong pointer.
    let t = unsafe { ptr::read_unaligned(p.add(last) as *const usize) };
    // The request's size as the trailer says; above `last` (wrapped) if it is not intact.
    let n = last.wrapping_sub(slack_of(t, key));
    // SAFETY: n <= last: the byte lies between p and the trailer, between the guards.
    n <= last && unsafe { *p.add(n) } == PATTERN
}

/// The size asked for by the request block `p` of bin page `page` serves (as its canary
/// says), or None if the canary is not intact.
///
/// # Safety
/// `p` is a live block of bin page `page`.
pub unsafe fn requested(page: *const Page, p: *const u8) -> Option<usize> {
    // SAFETY: per the contract.
    unsafe {
        let key = key_of(page, p);
        if !intact(page, p, key) {
            return None;
        }
        let size = (*page).keys.size();
        let t = *(p.add(size - TRAILER) as *const usize);
        Some(size - TRAILER - slack_of(t, key))
    }
}

/// Reports a free (or resize) of `p`, on `page`, whose canary is not [`intact`]: a pointer
/// that is not the start of a block of the page (`check_block`'s error), or else a block
/// written past the size asked for. If the report returns, the caller leaves the block
/// alone (it leaks).
///
/// # Safety
/// As [`intact`]'s.
#[cold]
#[inline(never)]
pub unsafe fn report_bad(page: *const Page, p: *const u8) {
    // SAFETY: per the contract (check_block reads what any thread may read).
    let e = match unsafe { check_block(page, p) } {
        Err(e) => e,
        // A block of an OS page a trim gave back reads zero: it is free, so this is its
        // second free, not a write past its end.
        // SAFETY: check_block found p a block start of the page (contract: a live segment).
        Ok(()) if unsafe { Page::holds_parked_racy(page, p) } => HeapError::DoubleFree,
        Ok(()) => HeapError::Overflow,
    };
    report(e, p);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slack a bin block can have reads back as written, and a trailer with any of its
    /// lowest five bytes changed reads back as no slack a block can have.
    #[test]
    fn the_trailer_keeps_the_slack_and_any_change_to_its_low_bytes_shows() {
        for key in [
            1usize,
            0x9e37_79b9_7f4a_7c15,
            usize::MAX,
            0x1234_5678_9abc_def1,
        ] {
            for slack in (0..(64 << 10)).step_by(7).chain([65535]) {
                let t = trailer(key, slack);
                assert_eq!(slack_of(t, key), slack);
                assert_eq!(t as u8, PATTERN);
                for byte in 0..5 {
                    for v in [0u8, 1, 0x41, 0xff, PATTERN ^ 0x80] {
                        let shift = 8 * byte;
                        let changed = (t & !(0xff << shift)) | ((v as usize) << shift);
                        if changed != t {
                            assert!(slack_of(changed, key) >= 1 << 24, "byte {byte} = {v:#x}");
                        }
                    }
                }
                // Another block's trailer (another key) is not this block's.
                assert!(slack_of(t, key ^ 0x100) >= 1 << 24);
            }
        }
    }
}
