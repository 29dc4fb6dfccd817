//! `TierAlloc`: the `GlobalAlloc` entry points.
//!
//! Owns: the mapping from `Layout` requests to heap calls, and [`owns`]. May touch:
//! `heap::thread` (the paths; `alloc_small` applies the inline size gate, which a tier
//! policy lowers and a placement scope closes), `heap::{size_class, segment}`, `heap::route`
//! (the sizes the C inline paths serve under a tier policy), `heap::error` (the secure
//! drop-in's report of a foreign pointer it proved wrong) and `sys::os` (errno). The C
//! entry points (the drop-in's `malloc`) do not follow placement scopes. Keeps GlobalAlloc's
//! contract exactly: null on failure (never a panic or abort), any alignment a `Layout` can
//! express either served or refused with null. In the `secure` build the bin paths are
//! `heap::thread`'s sized ones, which ask for room for a canary past the request and write
//! it (`heap::secure::canary`), and `realloc` checks the canary first; the default build's
//! paths are compiled exactly as without the feature.

use crate::heap::route;
#[cfg(feature = "secure")]
use crate::heap::secure::canary::TRAILER;
use crate::heap::size_class::bin_of;
use crate::heap::thread;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

/// The tieralloc global allocator.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
/// # fn main() { let v = vec![1u8; 100]; assert_eq!(v.len(), 100); }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TierAlloc {
    _private: (),
}

impl TierAlloc {
    /// The allocator; it holds no state of its own, so every `TierAlloc` is the same one.
    pub const fn new() -> Self {
        TierAlloc { _private: () }
    }

    /// The largest request a C entry point passes on: rounded up to any alignment tieralloc
    /// serves (at most 2 MiB), it still fits in an `isize`.
    #[doc(hidden)]
    pub const C_MAX_SIZE: usize = isize::MAX as usize - crate::heap::segment::MAX_ALIGN;

    /// C `free` for the drop-in library: frees `p` if tieralloc handed it out; null and
    /// pointers into memory that is not tieralloc's are ignored. Its fast path (a block of a
    /// segment the calling thread owns) has no stack frame.
    ///
    /// # Safety
    /// `p` is null, outside every tieralloc segment, or a live block of this allocator that
    /// is freed once.
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn c_free(&self, p: *mut u8) {
        // SAFETY: forwarded contract.
        unsafe { thread::free_c(p) }
    }

    /// [`TierAlloc::c_free`], but a non-null `p` outside every tieralloc segment goes to
    /// `foreign` instead of being ignored (the secure drop-in checks it there). The paths of
    /// our own blocks are `c_free`'s, with no instruction more.
    ///
    /// # Safety
    /// As [`TierAlloc::c_free`].
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn c_free_or(&self, p: *mut u8, foreign: impl FnOnce(*mut u8)) {
        // SAFETY: forwarded contract.
        unsafe { thread::free_c_or(p, foreign) }
    }

    /// [`TierAlloc::c_malloc`]'s fast path alone: a block for `size` bytes if the thread's
    /// current page for it has one ready, else null (and nothing else was tried: call
    /// `c_malloc`). Lets a caller with its own failure handling (C++'s `new`) keep its fast
    /// path free of a stack frame.
    ///
    /// # Safety
    /// As [`TierAlloc::c_malloc`].
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn c_malloc_fast(&self, size: usize) -> *mut u8 {
        #[cfg(feature = "secure")]
        return if size <= route::direct_max().saturating_sub(TRAILER) {
            // SAFETY: size + TRAILER <= direct_max() <= DIRECT_MAX: w is a direct slot whose
            // blocks hold the request and its trailer.
            unsafe { thread::alloc_direct_pop_sized((size + TRAILER + 15) >> 4, size) }
        } else {
            ptr::null_mut()
        };
        #[cfg(not(feature = "secure"))]
        if size <= route::direct_max() {
            // SAFETY: size <= direct_max() <= DIRECT_MAX.
            unsafe { thread::alloc_direct_pop((size + 15) >> 4) }
        } else {
            ptr::null_mut()
        }
    }

    /// C `malloc` for the drop-in library: `size` bytes (any size; 0 gives a minimal block)
    /// aligned to 16, or null with `errno` set to `ENOMEM`. Its fast path is a bin pop with
    /// no stack frame; everything else is one tail call.
    ///
    /// # Safety
    /// None beyond `GlobalAlloc::alloc`'s: the block is freed at most once.
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn c_malloc(&self, size: usize) -> *mut u8 {
        // The secure build: the same paths for size + TRAILER (the block holds the request
        // and its canary's trailer; c_malloc_big's path writes the canary in alloc_generic).
        #[cfg(feature = "secure")]
        return if size <= route::direct_max().saturating_sub(TRAILER) {
            // SAFETY: size + TRAILER <= direct_max() <= DIRECT_MAX.
            unsafe { thread::alloc_direct_sized((size + TRAILER + 15) >> 4, size) }
        } else if size <= route::fast_max().saturating_sub(TRAILER) {
            // SAFETY: (size + TRAILER).max(16) <= fast_max() <= MEDIUM_MAX, so the bin is <
            // NBINS, 16-byte aligned, and holds the request and its trailer.
            unsafe { thread::alloc_bin_sized(bin_of((size + TRAILER).max(16)), size) }
        } else {
            // SAFETY: 16 is a power of two.
            unsafe { c_malloc_big(size) }
        };
        #[cfg(not(feature = "secure"))]
        if size <= route::direct_max() {
            // SAFETY: size <= direct_max() <= DIRECT_MAX.
            unsafe { thread::alloc_direct((size + 15) >> 4) }
        } else if size <= route::fast_max() {
            // SAFETY: size.max(16) <= fast_max() <= MEDIUM_MAX, so bin_of gives a bin < NBINS;
            // every bin from 16 bytes on is 16-byte aligned.
            unsafe { thread::alloc_bin(bin_of(size.max(16))) }
        } else {
            // SAFETY: 16 is a power of two.
            unsafe { c_malloc_big(size) }
        }
    }
}

/// [`TierAlloc::c_malloc`] above the bins: refuses sizes that could overflow once aligned.
///
/// # Safety
/// None.
#[cold]
#[inline(never)]
unsafe extern "C" fn c_malloc_big(size: usize) -> *mut u8 {
    if size > TierAlloc::C_MAX_SIZE {
        crate::sys::os::set_enomem();
        return ptr::null_mut();
    }
    // SAFETY: 16 is a power of two; the size is far enough below isize::MAX.
    unsafe { thread::alloc_generic(size, 16, false) }
}

// SAFETY: every method follows GlobalAlloc's contract: memory returned is valid for the layout,
// unique until freed, and freeing accepts exactly what was returned (the heap finds the block's
// owner from its address, so any thread may free).
unsafe impl GlobalAlloc for TierAlloc {
    /// # Safety
    /// [`GlobalAlloc::alloc`]\'s contract.
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        let align = layout.align();
        if align <= 16 {
            // SAFETY: align is a power of two (Layout guarantees it) and at most 16; a
            // Layout's size is at most isize::MAX.
            #[cfg(feature = "secure")]
            return unsafe { thread::alloc_small_sized(size, align) };
            // SAFETY: align is a power of two (Layout guarantees it) and at most 16.
            #[cfg(not(feature = "secure"))]
            unsafe {
                thread::alloc_small(size, align)
            }
        } else {
            // SAFETY: align is a power of two (Layout guarantees it).
            unsafe { thread::alloc_generic(size, align, false) }
        }
    }

    /// # Safety
    /// [`GlobalAlloc::dealloc`]\'s contract.
    #[inline(always)]
    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        // SAFETY: p came from this allocator and is freed once (caller's contract).
        unsafe { thread::free(p) }
    }

    /// # Safety
    /// [`GlobalAlloc::alloc_zeroed`]\'s contract.
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        let align = layout.align();
        if align <= 16 {
            // SAFETY: as in alloc.
            #[cfg(feature = "secure")]
            return unsafe { thread::alloc_small_zeroed_sized(size, align) };
            // SAFETY: as in alloc.
            #[cfg(not(feature = "secure"))]
            unsafe {
                thread::alloc_small_zeroed(size, align)
            }
        } else {
            // SAFETY: as in alloc.
            unsafe { thread::alloc_generic(size, align, true) }
        }
    }

    /// # Safety
    /// [`GlobalAlloc::realloc`]\'s contract.
    #[inline]
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: p is a live block of ours with `layout` (caller's contract).
        unsafe {
            // The secure build: the block is checked first (a freed one, or a large or huge
            // one not in use, is reported and null returned: review rev32), and a bin
            // block's canary, written again for the new size if the block stays; one found
            // overwritten is left alone (leaked) once reported, if the report returns.
            // A block grown from under the far threshold to it or past it is placed as the
            // same request to `alloc` would be (the far node), not kept where it is (review
            // rev24: a 512 KiB block grown in place to 1.5 MiB stayed near under a 1 MiB
            // threshold). In the secure build its free below checks its canary.
            let stay = !route::crosses_threshold(layout.size(), new_size);
            #[cfg(feature = "secure")]
            // Checked whether it stays or not: a freed block must not reach the move, whose
            // new block could be that very block (review rev32).
            let keep_old = match thread::resize_checked(p, new_size, stay) {
                thread::Resize::InPlace => return p,
                thread::Resize::Move => false,
                thread::Resize::Leak => true,
                // Not a block in use (reported): nothing to move or keep.
                thread::Resize::Invalid => return ptr::null_mut(),
            };
            #[cfg(not(feature = "secure"))]
            let keep_old = false;
            #[cfg(not(feature = "secure"))]
            if stay && thread::resize_in_place(p, new_size) {
                return p;
            }
            // A huge object grows by moving its pages, not its bytes.
            let q = if stay {
                thread::grow_huge(p, new_size)
            } else {
                ptr::null_mut()
            };
            if !q.is_null() {
                return q;
            }
            let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                return ptr::null_mut();
            };
            let q = self.alloc(new_layout);
            if !q.is_null() {
                ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                if !keep_old {
                    thread::free(p);
                }
            }
            q
        }
    }
}

/// What the secure drop-in proved a pointer given to C's `free` or `realloc`, outside every
/// tieralloc segment, to be (preload/src/foreign.rs).
#[cfg(feature = "secure")]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignFree {
    /// An address on the calling thread's stack (or the main thread's).
    Stack,
    /// An address inside a loaded object's image other than the dynamic loader's.
    Static,
}

/// Reports a free of `p` proven wrong by the secure drop-in, as every heap error is reported
/// (`TIERALLOC_ON_ERROR`: abort by default). When it returns (`warn`, `ignore`), the caller
/// leaves `p` alone, as it does every pointer outside our segments.
#[cfg(feature = "secure")]
#[doc(hidden)]
#[cold]
pub fn report_foreign_free(kind: ForeignFree, p: *const u8) {
    use crate::heap::error::{report, HeapError};
    report(
        match kind {
            ForeignFree::Stack => HeapError::FreeOfStack,
            ForeignFree::Static => HeapError::FreeOfStatic,
        },
        p,
    );
}

/// Whether `p` is a pointer tieralloc handed out (a block start, or any address in the first
/// 4 MiB of one of its segments). Never touches `p`; O(1). For code that must accept pointers
/// from other allocators too, such as a `malloc` drop-in.
#[inline]
pub fn owns(p: *const u8) -> bool {
    crate::heap::segment::contains(p)
}
