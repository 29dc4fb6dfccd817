//! The objects the workloads allocate: the mixed small-size distribution, allocation and free through
//! the global allocator with a fixed alignment, a pointer and its size packed in one word, and
//! the page touching that makes memory resident.
//!
//! Owns: nothing with state. May touch: the global allocator (std::alloc) and the objects'
//! bytes; the environment (read only) for the workloads' size overrides.

use crate::rng::Rng;
use std::alloc::{alloc, dealloc, Layout};

/// The mixed small-size distribution of `pairs` and `prodcons`: 8 B – 4 KiB, 80 % ≤ 512 B
/// (50 % in 8–64 B, 30 % in 65–512 B, 20 % in 513 B – 4 KiB).
pub fn mixed_small_size(r: &mut Rng) -> usize {
    match r.next() % 10 {
        0..=4 => r.range(8, 64),
        5..=7 => r.range(65, 512),
        _ => r.range(513, 4096),
    }
}

const ALIGN: usize = 8;

#[inline(always)]
fn layout(size: usize) -> Layout {
    // SAFETY: ALIGN is a power of two and the sizes used here are far below isize::MAX.
    unsafe { Layout::from_size_align_unchecked(size, ALIGN) }
}

#[inline(always)]
pub fn new_obj(size: usize) -> *mut u8 {
    let l = layout(size);
    // SAFETY: size > 0.
    let p = unsafe { alloc(l) };
    if p.is_null() {
        std::alloc::handle_alloc_error(l);
    }
    p
}

#[inline(always)]
pub fn free_obj(p: *mut u8, size: usize) {
    // SAFETY: p came from new_obj(size) and is freed once (callers' bookkeeping).
    unsafe { dealloc(p, layout(size)) }
}

pub fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A pointer and its requested size packed into one word (48-bit address, 16-bit size), so
/// the workloads' own bookkeeping stays small next to the memory they measure.
#[inline(always)]
pub fn pack(p: *mut u8, size: usize) -> u64 {
    debug_assert!(size < 1 << 16 && (p as u64) < 1 << 48);
    ((p as u64) << 16) | size as u64
}

#[inline(always)]
pub fn unpack(w: u64) -> (*mut u8, usize) {
    ((w >> 16) as usize as *mut u8, (w & 0xffff) as usize)
}

/// Writes one byte in every 4 KiB page of an object and its last byte, as a program that uses
/// its memory would (an allocator that keeps its metadata outside the blocks would otherwise
/// show untouched memory as not resident).
#[inline(always)]
pub fn touch(q: *mut u8, sz: usize) {
    let mut off = 0;
    while off < sz {
        // SAFETY: off < sz.
        unsafe { q.add(off).write(1) };
        off += 4096;
    }
    // SAFETY: sz > 0.
    unsafe { q.add(sz - 1).write(1) };
}
