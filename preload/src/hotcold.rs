//! Hot/cold hints: tcmalloc's C++ interface (`operator new(size, __hot_cold_t)` in its plain,
//! `nothrow`, aligned and array forms, and `__size_returning_new_hot_cold` and its aligned
//! form) and the C entry point `tieralloc_malloc_hinted`, declared in
//! `preload/include/tieralloc.h`.
//!
//! Owns: those 12 entry points and what a hint means. May touch: `tieralloc::Placed` (through
//! its allocator-api2 `Allocator`), this crate's `malloc` paths and the plain `operator new`
//! forms of `cxx`, which serve a hint that names no particular node and every failure.
//!
//! A hint is a byte: below 128 is cold, 128 and above is hot (tcmalloc's scale: 0 the
//! coldest, 255 the hottest; clang's `-optimize-hot-cold-new` passes 0 for cold and 255 for
//! hot). A cold block goes where `tieralloc::Placed::cold()` puts memory: the slowest tier's
//! node nearest to the calling thread when the machine has more than one tier. A hot block goes
//! where `Placed::hot()` does: the fastest tier's nearest node when the thread runs on a node of
//! a slower tier. Otherwise (a one-tier machine, a cold hint where the far node cannot be
//! used, a hot hint on a thread of the fastest tier) the block is an ordinary one, served by
//! the same path as `malloc` or plain `new`, which puts it on the thread's node (and which a
//! tier policy such as `TIERALLOC_FAR_THRESHOLD` may still send elsewhere, as for `malloc`).
//!
//! A hint never makes an allocation fail: when the named node cannot take the block (its tier
//! budget spent, out of memory), the ordinary path serves it, and only its failure is a failure
//! (NULL with `ENOMEM`, `std::bad_alloc`, or null from a `nothrow` form, exactly as the form
//! without a hint). Every block is freed by plain `free`, `delete` or `realloc`: a hinted
//! block is an ordinary tieralloc block that lives on a per-node heap. Hinted blocks on a node
//! come from that node's shared heap, one lock per allocation: hints are for data whose
//! placement matters, not for the tightest loops.
#![allow(non_snake_case)]

use crate::cxx::{
    _Znam, _ZnamRKSt9nothrow_t, _ZnamSt11align_val_t, _ZnamSt11align_val_tRKSt9nothrow_t, _Znwm,
    _ZnwmRKSt9nothrow_t, _ZnwmSt11align_val_t, _ZnwmSt11align_val_tRKSt9nothrow_t,
};
use crate::{malloc, set_errno, MALLOC_ALIGN, MAX_ALIGN, MAX_SIZE};
use allocator_api2::alloc::Allocator;
use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr;
use libc::size_t;
use tieralloc::Placed;

/// The first hint value that means hot.
pub const HOT_FROM: u8 = 128;

/// A block of `size` bytes aligned to `align` on the node `hint` names, or null when the hint
/// names no particular node (the ordinary path then serves the request) or that node cannot
/// take the block. Never fails otherwise and never sets `errno`.
#[inline(never)]
fn placed(size: usize, align: usize, hint: u8) -> *mut c_void {
    if size > MAX_SIZE || align > MAX_ALIGN || !align.is_power_of_two() {
        return ptr::null_mut();
    }
    let to = if hint >= HOT_FROM {
        Placed::hot()
    } else {
        Placed::cold()
    };
    if to.node_id().is_none() {
        // The thread's own node: exactly what the ordinary path does.
        return ptr::null_mut();
    }
    // A zero-sized request gets a real block, as malloc(0) does (a zero-sized Layout would
    // give a dangling pointer).
    let Ok(layout) = Layout::from_size_align(size.max(1), align.max(MALLOC_ALIGN)) else {
        return ptr::null_mut();
    };
    let saved = crate::errno();
    let p = to
        .allocate(layout)
        .map_or(ptr::null_mut(), |b| b.as_ptr().cast::<c_void>());
    set_errno(saved);
    p
}

/// `malloc(size)` placed by `hint` (below 128: cold, on the far tier when there is one; 128
/// and above: hot, on the nearest node of the fastest tier); NULL with `ENOMEM` on failure.
/// The block is freed by `free`.
///
/// # Safety
/// None beyond C's: the block is freed at most once.
#[no_mangle]
pub unsafe extern "C" fn tieralloc_malloc_hinted(size: size_t, hint: u8) -> *mut c_void {
    let p = placed(size, MALLOC_ALIGN, hint);
    if !p.is_null() {
        return p;
    }
    // SAFETY: forwarded; it sets ENOMEM itself when it fails.
    unsafe { malloc(size) }
}

/// Defines a throwing and a `nothrow` hinted `operator new` of one shape, each falling back to
/// the form without a hint.
macro_rules! hinted_new {
    ($(#[$m:meta])* $throwing:ident => $plain:ident, $nothrow:ident => $plain_nothrow:ident) => {
        $(#[$m])*
        ///
        /// # Safety
        /// None beyond C++'s: the block is released once, with `delete` (or `free`).
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $throwing(size: size_t, hint: u8) -> *mut c_void {
            let p = placed(size, MALLOC_ALIGN, hint);
            if !p.is_null() {
                return p;
            }
            // SAFETY: forwarded (it throws std::bad_alloc when memory runs out).
            unsafe { $plain(size) }
        }

        $(#[$m])*
        /// The `nothrow` form: null instead of `std::bad_alloc`.
        ///
        /// # Safety
        /// As the throwing form; `tag` is `std::nothrow`.
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $nothrow(
            size: size_t,
            tag: *const c_void,
            hint: u8,
        ) -> *mut c_void {
            let p = placed(size, MALLOC_ALIGN, hint);
            if !p.is_null() {
                return p;
            }
            // SAFETY: forwarded.
            unsafe { $plain_nothrow(size, tag) }
        }
    };
}

/// Defines a throwing and a `nothrow` hinted aligned `operator new` of one shape.
macro_rules! hinted_new_aligned {
    ($(#[$m:meta])* $throwing:ident => $plain:ident, $nothrow:ident => $plain_nothrow:ident) => {
        $(#[$m])*
        ///
        /// # Safety
        /// None beyond C++'s: `align` is a power of two; the block is released once, with
        /// `delete` (or `free`).
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $throwing(
            size: size_t,
            align: size_t,
            hint: u8,
        ) -> *mut c_void {
            let p = placed(size, align, hint);
            if !p.is_null() {
                return p;
            }
            // SAFETY: forwarded.
            unsafe { $plain(size, align) }
        }

        $(#[$m])*
        /// The `nothrow` form: null instead of `std::bad_alloc`.
        ///
        /// # Safety
        /// As the throwing form; `tag` is `std::nothrow`.
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $nothrow(
            size: size_t,
            align: size_t,
            tag: *const c_void,
            hint: u8,
        ) -> *mut c_void {
            let p = placed(size, align, hint);
            if !p.is_null() {
                return p;
            }
            // SAFETY: forwarded.
            unsafe { $plain_nothrow(size, align, tag) }
        }
    };
}

hinted_new!(
    /// `operator new(std::size_t, __hot_cold_t)`.
    _Znwm12__hot_cold_t => _Znwm,
    _ZnwmRKSt9nothrow_t12__hot_cold_t => _ZnwmRKSt9nothrow_t
);
hinted_new!(
    /// `operator new[](std::size_t, __hot_cold_t)`.
    _Znam12__hot_cold_t => _Znam,
    _ZnamRKSt9nothrow_t12__hot_cold_t => _ZnamRKSt9nothrow_t
);
hinted_new_aligned!(
    /// `operator new(std::size_t, std::align_val_t, __hot_cold_t)`.
    _ZnwmSt11align_val_t12__hot_cold_t => _ZnwmSt11align_val_t,
    _ZnwmSt11align_val_tRKSt9nothrow_t12__hot_cold_t => _ZnwmSt11align_val_tRKSt9nothrow_t
);
hinted_new_aligned!(
    /// `operator new[](std::size_t, std::align_val_t, __hot_cold_t)`.
    _ZnamSt11align_val_t12__hot_cold_t => _ZnamSt11align_val_t,
    _ZnamSt11align_val_tRKSt9nothrow_t12__hot_cold_t => _ZnamSt11align_val_tRKSt9nothrow_t
);

/// tcmalloc's `__sized_ptr_t`: a block and its usable size (two registers on x86-64).
#[repr(C)]
pub struct SizedPtr {
    /// The block.
    pub p: *mut c_void,
    /// Its usable size, at least what was asked for.
    pub n: size_t,
}

/// `__size_returning_new_hot_cold(size, hint)`: `operator new(size, hint)` that also returns
/// the block's usable size (P0901). Throws `std::bad_alloc` as `new` does.
///
/// # Safety
/// As `operator new`.
#[no_mangle]
pub unsafe extern "C-unwind" fn __size_returning_new_hot_cold(size: size_t, hint: u8) -> SizedPtr {
    // SAFETY: forwarded.
    let p = unsafe { _Znwm12__hot_cold_t(size, hint) };
    sized(p)
}

/// `__size_returning_new_aligned_hot_cold(size, align, hint)`: the aligned form.
///
/// # Safety
/// As `operator new(size, std::align_val_t)`: `align` is a power of two.
#[no_mangle]
pub unsafe extern "C-unwind" fn __size_returning_new_aligned_hot_cold(
    size: size_t,
    align: size_t,
    hint: u8,
) -> SizedPtr {
    // SAFETY: forwarded.
    let p = unsafe { _ZnwmSt11align_val_t12__hot_cold_t(size, align, hint) };
    sized(p)
}

/// `p` (a live block of ours, which `new` returned) with its usable size.
fn sized(p: *mut c_void) -> SizedPtr {
    // SAFETY: `new` returned p, so it is a live tieralloc block (a throwing `new` never
    // returns null; the next definition it may have called allocates with our malloc).
    let n = unsafe { tieralloc::usable_size(p as *const u8) };
    SizedPtr { p, n }
}
