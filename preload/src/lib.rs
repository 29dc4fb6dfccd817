//! `libtieralloc_preload.so`: tieralloc as a drop-in `malloc` for C and C++ programs.
//!
//! ```text
//! cargo build -p tieralloc-preload --release
//! LD_PRELOAD=target/release/libtieralloc_preload.so some-program
//! ```
//!
//! Owns: the C allocation ABI of glibc, exported with C linkage so that a preloaded copy
//! interposes every caller in the process (the program, its libraries, glibc itself and
//! libstdc++'s `operator new`): `malloc`, `free`, `calloc`, `realloc`, `reallocarray`,
//! `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`,
//! `cfree`, C23's `free_sized` and `free_aligned_sized`, the `__libc_*` aliases glibc exports, and the introspection calls `malloc_trim`,
//! `mallopt`, `mallinfo`, `mallinfo2`, `malloc_stats` and `malloc_info`; and C++'s
//! replaceable `operator new` and `operator delete` (module `cxx`); and the hot/cold hints
//! (module `hotcold`: tcmalloc's `operator new(size, __hot_cold_t)` family and
//! `tieralloc_malloc_hinted`, declared for C and C++ in `preload/include/tieralloc.h`); and,
//! in the secure build, the check of freed pointers outside every segment (module `foreign`).
//! Everything else
//! (size classes, threads, fork, thread exit) belongs to the `tieralloc` crate; this crate
//! only maps C semantics onto it. It also makes tieralloc the Rust global allocator of the
//! library itself, so nothing here goes through another allocator.
//!
//! # C semantics
//! - Every block is aligned to 16 bytes (`max_align_t`), whatever its size, as glibc does.
//! - `malloc(0)` returns a unique pointer that must be freed (a 16-byte block); `free(NULL)`
//!   does nothing.
//! - `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees `p` and returns NULL (glibc's
//!   behaviour; C23 leaves it undefined). A failed `realloc` leaves `p` untouched.
//! - On failure the allocating calls return NULL with `errno = ENOMEM`; `calloc` and
//!   `reallocarray` do so when `n * size` overflows.
//! - `posix_memalign` returns `EINVAL` for an alignment that is not a power of two or not a
//!   multiple of `sizeof(void *)`, `ENOMEM` for alignments above 2 MiB (the most tieralloc
//!   serves) or when memory runs out, and leaves `errno` alone.
//! - `aligned_alloc` requires a power-of-two alignment (`EINVAL` otherwise, as glibc 2.38+
//!   does); `memalign` rounds an alignment that is not a power of two up to one (as glibc
//!   does); `valloc` aligns to the 4 KiB page, `pvalloc` also rounds the size up to pages.
//!   Alignments above 2 MiB fail with `ENOMEM`.
//! - `malloc_usable_size(NULL)` is 0.
//! - `free` leaves `errno` alone (as glibc's since 2.33; POSIX.1-2024), also when a purge it
//!   triggers is refused, and `errno` is still 0 when `main` starts (C11 7.5p3), although the
//!   library's constructor has initialised the core by then.
//!
//! # Pointers tieralloc did not hand out
//! Memory can reach `free` without coming from here: the dynamic loader serves its own early
//! allocations from a private bump allocator before the process's `malloc` is bound and may
//! free them later through `free`, and buggy programs pass pointers from `mmap`, the stack or
//! a static buffer. Every entry point that takes a pointer first asks `tieralloc::owns` (an
//! O(1) look-up in the segment map that never touches the pointer), and for a pointer outside
//! every tieralloc segment:
//! - `free` (and `cfree`) does nothing: that memory is never reused by tieralloc, so it
//!   leaks, and nothing is corrupted.
//! - `malloc_usable_size` returns 0.
//! - `realloc` cannot know the old size, so it allocates `n` bytes and copies as many of the
//!   `n` bytes at the old address as are readable, using `process_vm_readv` on its own
//!   process (which reports unreadable memory instead of faulting); the old block is left
//!   alone (it leaks). When nothing at the old address is readable it returns NULL with
//!   `errno = EINVAL`. The bytes beyond the old block's real end are whatever followed it, as
//!   they would be indeterminate anyway. If the kernel refuses `process_vm_readv` (a seccomp
//!   filter), only the bytes up to the end of the old block's 4 KiB page are copied.
//!
//! The secure build (`--features secure`, `libtieralloc_preload_secure.so`) reports instead
//! (`TIERALLOC_ON_ERROR`, abort by default) a `free`, `cfree`, `delete` or `realloc` of such a
//! pointer that provably lies on the calling thread's stack or the main thread's, or in a
//! loaded object's image other than the dynamic loader's (module `foreign`); everything else
//! outside our segments (the loader's blocks, `mmap`ed memory, other allocators' memory) is
//! left alone as above. `malloc_usable_size` is not checked: it frees nothing, and 0 is a safe
//! answer (glibc's has no check for it either).
//!
//! A pointer inside a live tieralloc segment that is not the start of a live block (an
//! interior pointer, a double free) is undefined behaviour; tieralloc reports and aborts on
//! the ones its free paths can prove at no cost (`TIERALLOC_ON_ERROR`, docs/security.md).
//!
//! # Where a preloaded malloc is called
//! The first call, wherever it comes from (the dynamic loader before `main`, a `dlopen`, the
//! set-up of a thread's TLS), initialises the core, which serves allocations made during its
//! own initialisation from the normal path. Fork handlers and the thread-exit hook (a pthread
//! key destructor) are the core's. The library's one constructor (`INIT_AT_LOAD`) makes that
//! first call when the library is loaded, so that the core's fork handlers are registered
//! before any of the program's: glibc runs prepare handlers last-registered first and parent
//! and child handlers first-registered first, so the core's prepare handler (which takes the
//! allocator's locks) runs after every handler of the program, and its parent and child
//! handlers (which let go of them) before, and the program's handlers may allocate, as they
//! may on glibc's malloc (tests/c/atfork_handlers.c).
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use core::ptr;
use libc::{c_int, size_t};
use tieralloc::TierAlloc;

mod cxx;
#[cfg(feature = "secure")]
mod foreign;
mod hotcold;

/// The Rust allocations of this library (statistics snapshots) come from tieralloc too.
#[global_allocator]
static GLOBAL: TierAlloc = TierAlloc::new();

/// Alignment of every block from `malloc`, `calloc` and `realloc` (`alignof(max_align_t)`).
const MALLOC_ALIGN: usize = 16;
/// The largest alignment tieralloc serves.
const MAX_ALIGN: usize = 2 << 20;
/// The page size `valloc` and `pvalloc` align to (tieralloc assumes 4 KiB pages).
const PAGE: usize = 4096;
/// The largest request: rounded up to any alignment we serve it still fits in an `isize`.
const MAX_SIZE: usize = TierAlloc::C_MAX_SIZE;

#[inline(always)]
fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = e }
}

#[inline(always)]
fn errno() -> c_int {
    // SAFETY: as in set_errno.
    unsafe { *libc::__errno_location() }
}

#[inline(always)]
fn owns(p: *const c_void) -> bool {
    // Null lies in no segment, so this is false for NULL too.
    tieralloc::owns(p as *const u8)
}

/// Allocates `size` bytes aligned to `align`, optionally zeroed; NULL with `ENOMEM` on failure.
///
/// # Safety
/// `align` is a power of two between `MALLOC_ALIGN` and `MAX_ALIGN`.
#[inline(always)]
unsafe fn alloc_aligned(size: usize, align: usize, zero: bool) -> *mut c_void {
    if size > MAX_SIZE {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    // A zero-sized Layout is not allowed in GlobalAlloc::alloc; malloc(0) gets a real block.
    let size = size.max(1);
    // SAFETY: align is a power of two (contract) and size rounded up to it stays below
    // isize::MAX (size <= MAX_SIZE and align <= MAX_ALIGN), so the layout is valid; its size
    // is non-zero as GlobalAlloc requires.
    let p = unsafe {
        let layout = Layout::from_size_align_unchecked(size, align);
        if zero {
            GLOBAL.alloc_zeroed(layout)
        } else {
            GLOBAL.alloc(layout)
        }
    };
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// `memalign` after the alignment has been checked: `align` is any power of two.
///
/// # Safety
/// `align` is a power of two.
unsafe fn alloc_pow2(size: usize, align: usize) -> *mut c_void {
    if align > MAX_ALIGN {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    // SAFETY: align is a power of two, raised to at least MALLOC_ALIGN and at most MAX_ALIGN.
    unsafe { alloc_aligned(size, align.max(MALLOC_ALIGN), false) }
}

/// Allocates `size` bytes, 16-byte aligned.
///
/// # Safety
/// None beyond C's: the result is freed at most once, with `free` or `realloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: size_t) -> *mut c_void {
    // SAFETY: no precondition beyond C's (the block is freed at most once). It sets ENOMEM
    // itself when it returns NULL, so nothing runs after it and the fast path needs no frame.
    unsafe { GLOBAL.c_malloc(size).cast() }
}

/// The library's constructor, run by the dynamic loader when it loads the library (before the
/// constructors of the program and of the libraries loaded after it, and before `main`).
#[used]
#[link_section = ".init_array"]
static INIT_AT_LOAD: extern "C" fn() = init_at_load;

/// Initialises the core (an allocation, freed at once), which registers its fork handlers
/// before any handler of the program is (see the crate docs, "Where a preloaded malloc is
/// called"). It leaves `errno` as it found it: C promises 0 at program start (C11 7.5p3),
/// and the core's first allocation can leave a failed probe's there (topology discovery
/// opens sysfs files a machine may lack: `ENOENT`, review rev18).
extern "C" fn init_at_load() {
    let saved = errno();
    // SAFETY: C malloc and free have no precondition; the block is freed once.
    unsafe { free_block(GLOBAL.c_malloc(1).cast()) }
    set_errno(saved);
}

/// Frees `p`; NULL and pointers tieralloc never handed out are ignored (see the crate docs).
///
/// # Safety
/// `p` is NULL, a live block from this allocator, or memory outside every tieralloc segment.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { free_block(p) }
}

/// `free`'s body, inlined into every entry point that frees (C++'s `delete` too), so that
/// none of them goes through the dynamic linker's table to reach `free`.
///
/// # Safety
/// As [`free`].
#[inline(always)]
unsafe fn free_block(p: *mut c_void) {
    // SAFETY: forwarded contract; c_free ignores NULL and pointers outside our segments.
    #[cfg(not(feature = "secure"))]
    unsafe {
        GLOBAL.c_free(p.cast())
    }
    // SAFETY: as above; a non-null pointer outside our segments goes to foreign::check,
    // which never touches the memory it points to.
    #[cfg(feature = "secure")]
    unsafe {
        GLOBAL.c_free_or(p.cast(), |q| foreign::check(q.cast()))
    }
}

/// `n * size` zeroed bytes; NULL with `ENOMEM` if the product overflows.
///
/// # Safety
/// As [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn calloc(n: size_t, size: size_t) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: MALLOC_ALIGN is a power of two within the served range.
    unsafe { alloc_aligned(total, MALLOC_ALIGN, true) }
}

/// Resizes `p` to `size` bytes, keeping its contents up to the smaller size.
/// `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees `p` and returns NULL.
///
/// # Safety
/// `p` is NULL or a live block from this allocator (a foreign pointer is handled as the crate
/// docs say).
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    if p.is_null() {
        // SAFETY: forwarded.
        return unsafe { malloc(size) };
    }
    if size == 0 {
        // SAFETY: forwarded.
        unsafe { free(p) };
        return ptr::null_mut();
    }
    if !owns(p) {
        // SAFETY: forwarded (p is not ours; that function never writes it).
        return unsafe { realloc_foreign(p, size) };
    }
    if size > MAX_SIZE {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    // SAFETY: p is a live block of ours (live segment + caller's contract); the layout (its
    // usable size, our malloc alignment) is valid, so realloc's copy stays inside the old
    // block; size is non-zero and below MAX_SIZE.
    let q = unsafe {
        let old = tieralloc::usable_size(p as *const u8);
        let layout = Layout::from_size_align_unchecked(old, MALLOC_ALIGN);
        GLOBAL.realloc(p.cast(), layout, size)
    };
    if q.is_null() {
        set_errno(libc::ENOMEM);
    }
    q.cast()
}

/// `realloc` of a pointer outside every tieralloc segment: a new block holding as many of the
/// `size` bytes at `p` as are readable; `p` itself is left alone.
///
/// # Safety
/// None: `p` is only read through `process_vm_readv`, which reports unreadable memory (or,
/// where that call is refused, within `p`'s own page, which the caller claims is readable).
#[cold]
unsafe fn realloc_foreign(p: *mut c_void, size: usize) -> *mut c_void {
    // The secure build reports a stack or static `p` (and, if the report returns, goes on).
    #[cfg(feature = "secure")]
    foreign::check(p);
    // SAFETY: forwarded.
    let q = unsafe { malloc(size) };
    if q.is_null() {
        return q;
    }
    let local = libc::iovec {
        iov_base: q,
        iov_len: size,
    };
    let remote = libc::iovec {
        iov_base: p,
        iov_len: size,
    };
    // SAFETY: both iovecs describe one range each; the local one is the fresh block of `size`
    // bytes; the kernel checks the remote one and stops at the first unreadable page.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    let copied = if n >= 0 {
        n as usize
    } else if errno() == libc::EFAULT {
        0
    } else {
        // The call is refused here: copy within the old block's page only.
        let len = size.min(PAGE - (p as usize & (PAGE - 1)));
        // SAFETY: the caller hands p as a live block, so its page is readable; q has `size`
        // bytes, len <= size; q is fresh, so the ranges do not overlap.
        unsafe { ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, len) };
        len
    };
    if copied == 0 {
        // SAFETY: q is the block we just allocated.
        unsafe { free(q) };
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    q
}

/// `realloc(p, n * size)`, with NULL and `ENOMEM` (and `p` untouched) if the product overflows.
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: size_t, size: size_t) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: forwarded.
    unsafe { realloc(p, total) }
}

/// Stores in `*out` a block of `size` bytes aligned to `align`. Returns 0, `EINVAL` (alignment
/// not a power of two or not a multiple of `sizeof(void *)`) or `ENOMEM`; `errno` is kept.
///
/// # Safety
/// `out` is valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
) -> c_int {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let saved = errno();
    // SAFETY: align is a power of two.
    let p = unsafe { alloc_pow2(size, align) };
    set_errno(saved);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: out is valid for a write (caller's contract).
    unsafe { *out = p };
    0
}

/// glibc's internal name of [`posix_memalign`], exported by some allocators; kept for
/// programs that call it.
///
/// # Safety
/// As [`posix_memalign`].
#[no_mangle]
pub unsafe extern "C" fn __posix_memalign(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { posix_memalign(out, align, size) }
}

/// C11 `aligned_alloc`: `align` must be a power of two (NULL with `EINVAL` otherwise).
///
/// # Safety
/// As [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: size_t, size: size_t) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: align is a power of two.
    unsafe { alloc_pow2(size, align) }
}

/// `size` bytes aligned to `align`, rounded up to a power of two if it is not one.
///
/// # Safety
/// As [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn memalign(align: size_t, size: size_t) -> *mut c_void {
    let Some(align) = align.checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    // SAFETY: align is a power of two (0 became 1).
    unsafe { alloc_pow2(size, align) }
}

/// `size` bytes aligned to the page.
///
/// # Safety
/// As [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn valloc(size: size_t) -> *mut c_void {
    // SAFETY: PAGE is a power of two.
    unsafe { alloc_pow2(size, PAGE) }
}

/// `size` rounded up to whole pages (at least one), aligned to the page.
///
/// # Safety
/// As [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: size_t) -> *mut c_void {
    let Some(rounded) = size.max(1).checked_add(PAGE - 1) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: PAGE is a power of two.
    unsafe { alloc_pow2(rounded & !(PAGE - 1), PAGE) }
}

/// The usable bytes of the block at `p` (at least what was asked for); 0 for NULL and for
/// pointers tieralloc did not hand out.
///
/// # Safety
/// `p` is NULL, a live block from this allocator, or memory outside every tieralloc segment.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> size_t {
    if !owns(p) {
        return 0;
    }
    // SAFETY: p is in a live segment, so (caller's contract) a live block of ours.
    unsafe { tieralloc::usable_size(p as *const u8) }
}

/// C23's `free_sized`: [`free`] (tieralloc finds a block's size from its address, so `size`
/// is not needed). Exported so that a program calling it on a newer glibc, which has it,
/// does not reach glibc's own `free` with a tieralloc block.
///
/// # Safety
/// As [`free`]; `size` is the size the block was requested with (not checked).
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, _size: usize) {
    // SAFETY: forwarded.
    unsafe { free(p) }
}

/// C23's `free_aligned_sized`: [`free`], as [`free_sized`].
///
/// # Safety
/// As [`free`]; `align` and `size` are those the block was requested with (not checked).
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: forwarded.
    unsafe { free(p) }
}

/// The old name of [`free`] (still exported by glibc for binary compatibility).
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { free(p) }
}

/// Collects remote frees and returns the calling thread's idle memory to the OS; returns 1.
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn malloc_trim(_pad: size_t) -> c_int {
    tieralloc::collect();
    1
}

/// Accepts and ignores every glibc tuning parameter (tieralloc reads `TIERALLOC_*` from the
/// environment instead); returns 1 (success).
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn mallopt(_param: c_int, _value: c_int) -> c_int {
    1
}

/// The figures `mallinfo2` reports, as byte counts.
fn info() -> [usize; 10] {
    let s = tieralloc::stats();
    let committed = s.bytes_committed as usize;
    let live = s.bytes_live as usize;
    [
        committed,                                           // arena: bytes obtained from the OS
        s.segments as usize,                                 // ordblks: segments in use
        0,                                                   // smblks
        s.huge_allocs.saturating_sub(s.huge_frees) as usize, // hblks: huge objects
        s.huge_bytes_live as usize,                          // hblkhd: their bytes
        0,                                                   // usmblks
        0,                                                   // fsmblks
        live,                                                // uordblks: bytes in live blocks
        committed.saturating_sub(live),                      // fordblks: committed but free
        0,                                                   // keepcost
    ]
}

/// glibc's statistics structure, filled from `tieralloc::stats()`: `arena` is the committed
/// bytes, `uordblks` the live bytes, `fordblks` their difference, `hblks`/`hblkhd` the huge
/// objects, `ordblks` the segments.
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn mallinfo2() -> libc::mallinfo2 {
    let i = info();
    libc::mallinfo2 {
        arena: i[0],
        ordblks: i[1],
        smblks: i[2],
        hblks: i[3],
        hblkhd: i[4],
        usmblks: i[5],
        fsmblks: i[6],
        uordblks: i[7],
        fordblks: i[8],
        keepcost: i[9],
    }
}

/// [`mallinfo2`] with `int` fields (values above `INT_MAX` are clamped).
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn mallinfo() -> libc::mallinfo {
    let i = info().map(|v| v.min(c_int::MAX as usize) as c_int);
    libc::mallinfo {
        arena: i[0],
        ordblks: i[1],
        smblks: i[2],
        hblks: i[3],
        hblkhd: i[4],
        usmblks: i[5],
        fsmblks: i[6],
        uordblks: i[7],
        fordblks: i[8],
        keepcost: i[9],
    }
}

/// Writes formatted text straight to a file descriptor, without buffering or allocating.
struct FdWriter(c_int);

impl core::fmt::Write for FdWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let mut b = s.as_bytes();
        while !b.is_empty() {
            // SAFETY: b is a valid byte slice for the duration of the call.
            let n = unsafe { libc::write(self.0, b.as_ptr().cast(), b.len()) };
            if n <= 0 {
                return Err(core::fmt::Error);
            }
            b = b.get(n as usize..).unwrap_or(&[]);
        }
        Ok(())
    }
}

/// Prints tieralloc's statistics table to stderr (as glibc's prints its own).
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn malloc_stats() {
    use core::fmt::Write;
    let _ = write!(FdWriter(2), "{}", tieralloc::stats());
}

/// A fixed buffer that formatted text is written into (truncated if it does not fit).
struct StackBuf {
    buf: [u8; 512],
    len: usize,
}

impl core::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len().saturating_sub(self.len);
        let n = s.len().min(room);
        if let (Some(dst), Some(src)) = (
            self.buf.get_mut(self.len..self.len + n),
            s.as_bytes().get(..n),
        ) {
            dst.copy_from_slice(src);
            self.len += n;
        }
        Ok(())
    }
}

/// Writes a one-element XML summary (`<malloc version="tieralloc">` with the figures of
/// [`mallinfo2`]) to `fp`. `options` must be 0 (`EINVAL` and -1 otherwise, as glibc).
///
/// # Safety
/// `fp` is a valid open `FILE *`.
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, fp: *mut libc::FILE) -> c_int {
    use core::fmt::Write;
    if options != 0 {
        set_errno(libc::EINVAL);
        return -1;
    }
    let i = info();
    let mut b = StackBuf {
        buf: [0; 512],
        len: 0,
    };
    let _ = write!(
        b,
        "<malloc version=\"tieralloc\">\n<total type=\"committed\" size=\"{}\"/>\n\
         <total type=\"live\" size=\"{}\"/>\n<total type=\"huge\" count=\"{}\" size=\"{}\"/>\n\
         </malloc>\n",
        i[0], i[7], i[3], i[4]
    );
    // SAFETY: the buffer holds b.len initialised bytes; fp is valid (caller's contract).
    let n = unsafe { libc::fwrite(b.buf.as_ptr().cast(), 1, b.len, fp) };
    if n == b.len {
        0
    } else {
        -1
    }
}

// glibc exports its allocator under these names too; a few programs and libraries call them
// directly, and they must reach the same allocator as the plain names.

/// [`malloc`] under glibc's internal name.
///
/// # Safety
/// As [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_malloc(size: size_t) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { malloc(size) }
}

/// [`free`] under glibc's internal name.
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { free(p) }
}

/// [`cfree`] under glibc's internal name.
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn __libc_cfree(p: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { free(p) }
}

/// [`calloc`] under glibc's internal name.
///
/// # Safety
/// As [`calloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_calloc(n: size_t, size: size_t) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { calloc(n, size) }
}

/// [`realloc`] under glibc's internal name.
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { realloc(p, size) }
}

/// [`reallocarray`] under glibc's internal name.
///
/// # Safety
/// As [`reallocarray`].
#[no_mangle]
pub unsafe extern "C" fn __libc_reallocarray(
    p: *mut c_void,
    n: size_t,
    size: size_t,
) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { reallocarray(p, n, size) }
}

/// [`memalign`] under glibc's internal name.
///
/// # Safety
/// As [`memalign`].
#[no_mangle]
pub unsafe extern "C" fn __libc_memalign(align: size_t, size: size_t) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { memalign(align, size) }
}

/// [`valloc`] under glibc's internal name.
///
/// # Safety
/// As [`valloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_valloc(size: size_t) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { valloc(size) }
}

/// [`pvalloc`] under glibc's internal name.
///
/// # Safety
/// As [`pvalloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_pvalloc(size: size_t) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { pvalloc(size) }
}

/// [`mallinfo`] under glibc's internal name.
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn __libc_mallinfo() -> libc::mallinfo {
    // SAFETY: forwarded.
    unsafe { mallinfo() }
}

/// [`mallopt`] under glibc's internal name.
///
/// # Safety
/// None.
#[no_mangle]
pub unsafe extern "C" fn __libc_mallopt(param: c_int, value: c_int) -> c_int {
    // SAFETY: forwarded.
    unsafe { mallopt(param, value) }
}
