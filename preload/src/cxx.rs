//! C++'s replaceable `operator new` and `operator delete` (Itanium C++ ABI names, x86-64 and
//! other LP64 targets), so that a C++ program's `new`/`delete` reach tieralloc directly
//! instead of through libstdc++'s wrappers around `malloc` and `free` (one call and a
//! new-handler check fewer per allocation; mimalloc's library does the same).
//!
//! Owns: the 8 `new` and 12 `delete` entry points. May touch: this crate's C entry points.
//!
//! Semantics, as the C++ standard asks of a replacement:
//! - `new` of 0 bytes returns a unique pointer; every block is aligned to 16 bytes, or to the
//!   `std::align_val_t` argument of the aligned forms.
//! - When memory runs out (or an alignment is not a power of two or is above 2 MiB), the
//!   request goes to the next definition of the same operator in the process, libstdc++'s:
//!   it calls the installed `std::new_handler` in a loop around `malloc` (ours) and throws
//!   `std::bad_alloc` when there is none; the `nothrow` forms catch that and return null.
//!   The exception unwinds through our frame, which is why these functions use the
//!   `"C-unwind"` ABI. Without a next definition (a program that never linked libstdc++ but
//!   calls these names) a throwing form aborts and a `nothrow` form returns null.
//!   An alignment above 2 MiB never succeeds here (glibc's malloc serves it), so with a
//!   `new_handler` installed that neither frees nor throws, an over-aligned `new` loops in
//!   libstdc++ for good (review rev13: 1001 calls of the handler before the probe stopped
//!   itself); without one it throws `std::bad_alloc` at once.
//! - Every `delete` is `free`: NULL and pointers tieralloc did not hand out are ignored, and
//!   the size and alignment arguments are not needed.
#![allow(non_snake_case)]

use crate::{alloc_pow2, free_block, GLOBAL, MALLOC_ALIGN};
use core::ffi::{c_void, CStr};
use libc::size_t;

/// `operator new(size)` and friends, as the next definition in the process exports them.
type New = unsafe extern "C-unwind" fn(size_t) -> *mut c_void;
/// `operator new(size, nothrow)`.
type NewNothrow = unsafe extern "C-unwind" fn(size_t, *const c_void) -> *mut c_void;
/// `operator new(size, align)`.
type NewAligned = unsafe extern "C-unwind" fn(size_t, size_t) -> *mut c_void;
/// `operator new(size, align, nothrow)`.
type NewAlignedNothrow = unsafe extern "C-unwind" fn(size_t, size_t, *const c_void) -> *mut c_void;

/// The next definition of `name` after this library, or None.
fn next(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name has no other precondition; it
    // may allocate (through us), which is fine outside the allocator's own paths.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    (!f.is_null()).then_some(f)
}

/// A throwing `new` that found no next definition to hand its failure to.
#[cold]
fn no_next() -> ! {
    // SAFETY: abort has no precondition.
    unsafe { libc::abort() }
}

/// Our aligned allocation, or null (out of memory, or an alignment we do not serve).
#[inline(always)]
fn try_aligned(size: size_t, align: size_t) -> *mut c_void {
    if align <= MALLOC_ALIGN {
        // SAFETY: C malloc has no precondition.
        unsafe { GLOBAL.c_malloc(size).cast() }
    } else if align.is_power_of_two() {
        // SAFETY: align is a power of two.
        unsafe { alloc_pow2(size, align) }
    } else {
        core::ptr::null_mut()
    }
}

/// Defines a throwing and a `nothrow` `operator new` of one shape.
macro_rules! new_pair {
    ($(#[$m:meta])* $throwing:ident / $nothrow:ident, $tname:literal / $nname:literal) => {
        $(#[$m])*
        ///
        /// # Safety
        /// None beyond C++'s: the block is released once, with a matching `delete`.
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $throwing(size: size_t) -> *mut c_void {
            // The fast path is a pop with no frame; everything else is one tail call.
            // SAFETY: C malloc has no precondition.
            let p: *mut c_void = unsafe { GLOBAL.c_malloc_fast(size).cast() };
            if !p.is_null() {
                return p;
            }
            #[cold]
            #[inline(never)]
            unsafe extern "C-unwind" fn slow(size: size_t) -> *mut c_void {
                // SAFETY: C malloc has no precondition.
                let p: *mut c_void = unsafe { GLOBAL.c_malloc(size).cast() };
                if !p.is_null() {
                    return p;
                }
                match next($tname) {
                    // SAFETY: the next definition of this very symbol has this signature;
                    // it retries through the new-handler or throws.
                    Some(f) => unsafe { core::mem::transmute::<*mut c_void, New>(f)(size) },
                    None => no_next(),
                }
            }
            // SAFETY: no precondition.
            unsafe { slow(size) }
        }

        $(#[$m])*
        /// The `nothrow` form: null instead of `std::bad_alloc`.
        ///
        /// # Safety
        /// As the throwing form; `tag` is `std::nothrow`.
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $nothrow(size: size_t, tag: *const c_void) -> *mut c_void {
            // SAFETY: C malloc has no precondition.
            let p: *mut c_void = unsafe { GLOBAL.c_malloc_fast(size).cast() };
            if !p.is_null() {
                return p;
            }
            #[cold]
            #[inline(never)]
            unsafe extern "C-unwind" fn slow(size: size_t, tag: *const c_void) -> *mut c_void {
                // SAFETY: C malloc has no precondition.
                let p: *mut c_void = unsafe { GLOBAL.c_malloc(size).cast() };
                if !p.is_null() {
                    return p;
                }
                match next($nname) {
                    // SAFETY: as in the throwing form; this one catches and returns null.
                    Some(f) => unsafe {
                        core::mem::transmute::<*mut c_void, NewNothrow>(f)(size, tag)
                    },
                    None => core::ptr::null_mut(),
                }
            }
            // SAFETY: no precondition.
            unsafe { slow(size, tag) }
        }
    };
}

/// Defines a throwing and a `nothrow` aligned `operator new` of one shape.
macro_rules! new_aligned_pair {
    ($(#[$m:meta])* $throwing:ident / $nothrow:ident, $tname:literal / $nname:literal) => {
        $(#[$m])*
        ///
        /// # Safety
        /// None beyond C++'s: `align` is a power of two; the block is released once, with a
        /// matching `delete`.
        #[no_mangle]
        pub unsafe extern "C-unwind" fn $throwing(size: size_t, align: size_t) -> *mut c_void {
            let p = try_aligned(size, align);
            if !p.is_null() {
                return p;
            }
            match next($tname) {
                // SAFETY: the next definition of this very symbol has this signature.
                Some(f) => unsafe {
                    core::mem::transmute::<*mut c_void, NewAligned>(f)(size, align)
                },
                None => no_next(),
            }
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
        ) -> *mut c_void {
            let p = try_aligned(size, align);
            if !p.is_null() {
                return p;
            }
            match next($nname) {
                // SAFETY: as in the throwing form.
                Some(f) => unsafe {
                    core::mem::transmute::<*mut c_void, NewAlignedNothrow>(f)(size, align, tag)
                },
                None => core::ptr::null_mut(),
            }
        }
    };
}

new_pair!(
    /// `operator new(std::size_t)`.
    _Znwm / _ZnwmRKSt9nothrow_t,
    c"_Znwm" / c"_ZnwmRKSt9nothrow_t"
);
new_pair!(
    /// `operator new[](std::size_t)`.
    _Znam / _ZnamRKSt9nothrow_t,
    c"_Znam" / c"_ZnamRKSt9nothrow_t"
);
new_aligned_pair!(
    /// `operator new(std::size_t, std::align_val_t)`.
    _ZnwmSt11align_val_t / _ZnwmSt11align_val_tRKSt9nothrow_t,
    c"_ZnwmSt11align_val_t" / c"_ZnwmSt11align_val_tRKSt9nothrow_t"
);
new_aligned_pair!(
    /// `operator new[](std::size_t, std::align_val_t)`.
    _ZnamSt11align_val_t / _ZnamSt11align_val_tRKSt9nothrow_t,
    c"_ZnamSt11align_val_t" / c"_ZnamSt11align_val_tRKSt9nothrow_t"
);

/// Defines `operator delete` forms: all of them are `free`, whatever else they are given.
macro_rules! deletes {
    ($($(#[$m:meta])* $name:ident($($arg:ident: $t:ty),*);)*) => {$(
        $(#[$m])*
        ///
        /// # Safety
        /// `p` is NULL or a block from `new` not yet deleted (a pointer tieralloc did not hand
        /// out is ignored).
        #[no_mangle]
        pub unsafe extern "C" fn $name(p: *mut c_void, $(_: $t),*) {
            // SAFETY: forwarded.
            unsafe { free_block(p) }
        }
    )*};
}

deletes! {
    /// `operator delete(void*)`.
    _ZdlPv();
    /// `operator delete[](void*)`.
    _ZdaPv();
    /// `operator delete(void*, std::size_t)`.
    _ZdlPvm(size: size_t);
    /// `operator delete[](void*, std::size_t)`.
    _ZdaPvm(size: size_t);
    /// `operator delete(void*, std::align_val_t)`.
    _ZdlPvSt11align_val_t(align: size_t);
    /// `operator delete[](void*, std::align_val_t)`.
    _ZdaPvSt11align_val_t(align: size_t);
    /// `operator delete(void*, std::size_t, std::align_val_t)`.
    _ZdlPvmSt11align_val_t(size: size_t, align: size_t);
    /// `operator delete[](void*, std::size_t, std::align_val_t)`.
    _ZdaPvmSt11align_val_t(size: size_t, align: size_t);
    /// `operator delete(void*, const std::nothrow_t&)`.
    _ZdlPvRKSt9nothrow_t(tag: *const c_void);
    /// `operator delete[](void*, const std::nothrow_t&)`.
    _ZdaPvRKSt9nothrow_t(tag: *const c_void);
    /// `operator delete(void*, std::align_val_t, const std::nothrow_t&)`.
    _ZdlPvSt11align_val_tRKSt9nothrow_t(align: size_t, tag: *const c_void);
    /// `operator delete[](void*, std::align_val_t, const std::nothrow_t&)`.
    _ZdaPvSt11align_val_tRKSt9nothrow_t(align: size_t, tag: *const c_void);
}
