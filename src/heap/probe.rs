//! Queries for tests (hidden from the docs): how the allocator books a block, and which node
//! the calling thread's heap draws from. They read bookkeeping only, so they also answer under
//! simulated nodes, where pages are not bound. Never called by the allocator itself.
//!
//! Owns: nothing. May touch: `heap::{thread, segment}` (read only).

use super::segment::{segment_of, SegmentKind};
use crate::sync::Ordering;

/// Whether the calling thread's heap owns the segment of `p`: true for every block the thread
/// just allocated through the global allocator (a heap hands out blocks of its own pages
/// only), except huge blocks (segments of their own, with no owner) and blocks served by a
/// node heap (`Placed`, or a thread that has exited).
///
/// # Safety
/// `p` is a live block of tieralloc's.
pub unsafe fn owned_by_caller(p: *const u8) -> bool {
    let seg = segment_of(p);
    // SAFETY: p is live (contract), so its segment header is mapped.
    unsafe { (*seg).owner.load(Ordering::Relaxed) == super::thread::heap() as usize }
}

/// The node the allocator books the live block `p` on: its segment's node.
///
/// # Safety
/// `p` is a live block of tieralloc's that no other thread frees or moves meanwhile.
pub unsafe fn block_node(p: *const u8) -> u32 {
    // SAFETY: p is live (contract), so its segment header is mapped and valid.
    unsafe { (*segment_of(p)).node as u32 }
}

/// Whether `p` is a huge block (a mapping of its own).
///
/// # Safety
/// As [`block_node`].
pub unsafe fn is_huge(p: *const u8) -> bool {
    // SAFETY: as in block_node.
    unsafe { (*segment_of(p)).kind == SegmentKind::Huge }
}

/// The node the calling thread's heap draws from (its home node as of its last check).
pub fn heap_node() -> u32 {
    super::thread::heap_node()
}
