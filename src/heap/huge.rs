//! Huge objects: one object per segment-aligned mapping, for requests over `LARGE_MAX` or
//! aligned beyond a slice.
//!
//! Owns: the huge segment header fields and the per-thread cache of freed huge mappings.
//! May touch: `sys::os`, `heap::segment`.

use super::segment::{Segment, SegmentKind, HEADER_SIZE, MAX_ALIGN, SEGMENT_SIZE};
use crate::sync::Ordering;
use crate::sys::os;
use core::ptr;

/// Freed huge mappings a thread keeps for reuse.
pub const CACHE_SLOTS: usize = 8;

/// One cached mapping.
#[derive(Clone, Copy)]
pub struct CacheEntry {
    /// The mapping (a huge segment header), or null.
    pub seg: *mut Segment,
    /// When it was freed (ms).
    pub freed_at: u64,
}

/// An empty cache entry.
pub const EMPTY_ENTRY: CacheEntry = CacheEntry {
    seg: ptr::null_mut(),
    freed_at: 0,
};

/// Where the object goes in its segment, and how many bytes to map, for `size` at `align`.
/// None if it cannot be served (alignment over `MAX_ALIGN`, or sizes near the address space).
pub fn layout_for(size: usize, align: usize) -> Option<(usize, usize)> {
    if align > MAX_ALIGN {
        return None;
    }
    let offset = HEADER_SIZE.max(align);
    let end = offset.checked_add(size)?.checked_add(os::OS_PAGE - 1)? & !(os::OS_PAGE - 1);
    if end > isize::MAX as usize / 2 {
        return None;
    }
    Some((offset, end))
}

/// Maps a new huge segment holding an object of `size` at `offset`. Null when the kernel
/// refuses.
pub fn map(map_size: usize, offset: usize, size: usize, node: u32, bind: bool) -> *mut Segment {
    let p = os::map_aligned(map_size, SEGMENT_SIZE, if bind { Some(node) } else { None });
    if p.is_null() {
        return ptr::null_mut();
    }
    let seg = p as *mut Segment;
    // SAFETY: a fresh, zeroed mapping of ours, at least HEADER_SIZE long.
    unsafe { init(seg, map_size, offset, size, node) };
    super::segment::map_insert(seg);
    seg
}

/// (Re)writes a huge segment's header.
///
/// # Safety
/// `seg` is a huge mapping of `map_size` bytes that no other thread uses.
pub unsafe fn init(seg: *mut Segment, map_size: usize, offset: usize, size: usize, node: u32) {
    // SAFETY: exclusive use per the contract.
    unsafe {
        (*seg).owner.store(0, Ordering::Relaxed);
        (*seg).kind = SegmentKind::Huge;
        (*seg).node = node as u16;
        (*seg).map_size = map_size;
        (*seg).huge_offset = offset;
        (*seg).huge_size = map_size - offset;
        let _ = size;
    }
}

/// The object inside a huge segment.
#[inline]
pub fn object(seg: *mut Segment) -> *mut u8 {
    // SAFETY: huge_offset was written when the segment was made, before the object was handed
    // out.
    unsafe { (seg as *mut u8).add((*seg).huge_offset) }
}

/// Unmaps a huge segment.
///
/// # Safety
/// Nobody uses `seg` or its object any more.
pub unsafe fn unmap(seg: *mut Segment) {
    super::segment::map_remove(seg);
    // SAFETY: per the contract; map_size is the whole mapping.
    unsafe { os::unmap(seg as *mut u8, (*seg).map_size) }
}
