//! Fuzz target `dropin`: the malloc drop-in's C entry points (`tieralloc_preload::*`, the
//! functions `libtieralloc_preload.so` exports, called from Rust) against a shadow model:
//! malloc, calloc (with overflowing products), realloc (to 0, from NULL, of a foreign
//! pointer), reallocarray (overflow leaves the block alone), posix_memalign / aligned_alloc /
//! memalign (alignments that are not powers of two, below `sizeof(void *)`, above 2 MiB),
//! valloc, pvalloc, free (of NULL and of foreign memory), malloc_usable_size, malloc_trim,
//! thread exit and CPU moves.
//!
//! Checked: results, `errno` and return codes as the crate docs of preload/src/lib.rs promise;
//! every block aligned (16 bytes, or the alignment asked), with a usable size that covers the
//! request, overlapping no live block, zeroed by calloc, keeping its contents through realloc
//! and until it is freed. Foreign memory (a read-only static buffer, a stack buffer, a fresh
//! mapping followed by an inaccessible page, an inaccessible page, and the very pages a freed
//! huge block occupied, mapped again by someone else) is never written or freed: `free`
//! ignores it, `malloc_usable_size` says 0, `realloc` copies exactly the readable bytes.
//!
//! Linking the preload crate makes its `malloc` the process's malloc (and tieralloc its Rust
//! allocator), as under LD_PRELOAD.

use crate::common::{
    check, check_zero, fill, in_thread, next_op, pat, size_of, thread_op, Affinity, Live,
    LiveBlocks,
};
use arbitrary::{Arbitrary, Unstructured};
use core::ffi::c_void;

/// The entry points, called through opaque function pointers: LLVM knows the names `malloc`,
/// `valloc`, ... and would otherwise elide a call whose result is only compared with NULL
/// (folding the comparison to "not NULL"), as it may in C.
mod c {
    use core::ffi::c_void;
    use libc::c_int;
    use std::hint::black_box;

    macro_rules! opaque {
        ($($name:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {$(
            /// The drop-in's function of the same name.
            ///
            /// # Safety
            /// As the C function's.
            pub unsafe fn $name($($a: $t),*) -> $r {
                let f: unsafe extern "C" fn($($t),*) -> $r = black_box(tieralloc_preload::$name);
                // SAFETY: forwarded contract.
                unsafe { f($($a),*) }
            }
        )*};
    }

    opaque! {
        malloc(n: usize) -> *mut c_void;
        calloc(n: usize, size: usize) -> *mut c_void;
        realloc(p: *mut c_void, n: usize) -> *mut c_void;
        reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void;
        posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int;
        aligned_alloc(align: usize, size: usize) -> *mut c_void;
        memalign(align: usize, size: usize) -> *mut c_void;
        valloc(size: usize) -> *mut c_void;
        pvalloc(size: usize) -> *mut c_void;
        free(p: *mut c_void) -> ();
        malloc_usable_size(p: *mut c_void) -> usize;
        malloc_trim(pad: usize) -> c_int;
    }
}

const MAX_LIVE_BYTES: usize = 48 << 20;
const PAGE: usize = 4096;

/// Foreign, read-only memory: a static buffer in the program's image.
static FOREIGN: [u8; 8192] = {
    let mut a = [0u8; 8192];
    let mut i = 0;
    while i < a.len() {
        a[i] = 0xa5 ^ (i % 251) as u8;
        i += 1;
    }
    a
};

#[derive(Arbitrary, Debug)]
enum Op {
    Malloc {
        kind: u8,
        raw: u32,
        seed: u8,
    },
    Calloc {
        n: u16,
        kind: u8,
        raw: u32,
        seed: u8,
    },
    CallocOverflow {
        size: u16,
        extra: u16,
    },
    Realloc {
        idx: u16,
        kind: u8,
        raw: u32,
        seed: u8,
    },
    ReallocZero(u16),
    ReallocNull {
        kind: u8,
        raw: u32,
        seed: u8,
    },
    ReallocArray {
        idx: u16,
        n: u16,
        size: u16,
        seed: u8,
    },
    ReallocArrayOverflow {
        idx: u16,
        size: u16,
    },
    PosixMemalign {
        align: u8,
        odd: u32,
        kind: u8,
        raw: u32,
        seed: u8,
    },
    AlignedAlloc {
        align: u8,
        odd: u32,
        kind: u8,
        raw: u32,
        seed: u8,
    },
    Memalign {
        align: u32,
        kind: u8,
        raw: u32,
        seed: u8,
    },
    Valloc {
        kind: u8,
        raw: u32,
        seed: u8,
    },
    Pvalloc {
        kind: u8,
        raw: u32,
        seed: u8,
    },
    TooBig(u16),
    Free(u16),
    FreeNull,
    Foreign {
        what: u8,
        off: u16,
        new: u16,
        seed: u8,
    },
    /// Frees a live block and, if its pages were unmapped, maps them again as foreign memory.
    ForeignAfterFree(u16),
    Trim,
    CheckAll,
    Thread(u8),
    MoveCpu(u8),
}

#[derive(Default)]
struct Model {
    live: LiveBlocks<()>,
    ops: usize,
}

fn errno() -> i32 {
    // SAFETY: the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(e: i32) {
    // SAFETY: the calling thread's errno slot.
    unsafe { *libc::__errno_location() = e }
}

/// An alignment for posix_memalign / aligned_alloc: mostly powers of two (1 B .. 4 MiB), else
/// an arbitrary value.
fn align_from(a: u8, odd: u32) -> usize {
    if a < 200 {
        1 << (a % 23)
    } else {
        odd as usize % (1 << 22)
    }
}

/// Whether `[p, p+len)` can be mapped at exactly that address now (nothing is there); if so
/// it is mapped (read-write) and true is returned.
fn map_at(p: usize, len: usize) -> bool {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; anonymous, private.
    let r = unsafe {
        libc::mmap(
            p as *mut c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if r == libc::MAP_FAILED {
        return false;
    }
    if r as usize != p {
        // Old kernels ignore the flag and place it elsewhere.
        // SAFETY: the mapping just made.
        unsafe { libc::munmap(r, len) };
        return false;
    }
    true
}

impl Model {
    /// Records a fresh block of `size` bytes that must be aligned to `align`.
    fn add(&mut self, p: *mut c_void, size: usize, align: usize, seed: u8, what: &str) {
        let p = p as *mut u8;
        assert!(
            !p.is_null(),
            "{what}: NULL for {size} bytes (errno {})",
            errno()
        );
        assert_eq!(
            p as usize % align,
            0,
            "{what}: {p:p} not aligned to {align}"
        );
        // SAFETY: a live block of ours.
        let usable = unsafe { c::malloc_usable_size(p.cast()) };
        assert!(usable >= size, "{what}: usable size {usable} < {size}");
        // SAFETY: the block has `size` bytes, ours alone until it is freed.
        unsafe { self.live.add(p, size, seed, (), what) };
    }

    fn take(&mut self, i: usize) -> Live<()> {
        self.live.take(i, "free")
    }

    fn room(&self, size: usize) -> bool {
        self.live.bytes() + size <= MAX_LIVE_BYTES && self.live.len() < 400
    }

    fn pick(&self, idx: u16) -> Option<usize> {
        self.live.pick(idx)
    }

    /// realloc of the foreign pointer `p`, of which exactly `readable` bytes can be read, to
    /// `new` bytes: NULL with EINVAL when nothing is readable, else a new block holding a copy
    /// of the first `min(new, readable)` bytes (recorded with the pattern of `seed`).
    ///
    /// # Safety
    /// `p` is foreign memory whose first `readable` bytes are readable.
    unsafe fn foreign_realloc(&mut self, p: *const u8, readable: usize, new: usize, seed: u8) {
        set_errno(0);
        // SAFETY: p is foreign memory; the drop-in promises to only read it.
        let q = unsafe { c::realloc(p as *mut c_void, new) };
        if readable == 0 {
            assert!(q.is_null(), "realloc of unreadable memory gave {q:p}");
            assert_eq!(errno(), libc::EINVAL, "realloc of unreadable memory: errno");
            return;
        }
        assert!(
            !q.is_null() && !std::ptr::eq(q as *const u8, p),
            "realloc of foreign {p:p} gave {q:p}"
        );
        let n = new.min(readable);
        // SAFETY: q has at least `new` >= n bytes; p has `readable` >= n readable bytes.
        let (got, want) = unsafe {
            (
                std::slice::from_raw_parts(q as *const u8, n),
                std::slice::from_raw_parts(p, n),
            )
        };
        assert!(
            got == want,
            "realloc of foreign {p:p}: the copy of {n} bytes differs"
        );
        self.add(q, new, 16, seed, "foreign realloc");
    }

    fn run(&mut self, ops: &[Op], aff: &Affinity, depth: u32) {
        let mut next = 0;
        while let Some(op) = next_op(ops, &mut next, &mut self.ops, 500) {
            self.step(op, ops, &mut next, aff, depth);
        }
    }

    fn step(&mut self, op: &Op, ops: &[Op], next: &mut usize, aff: &Affinity, depth: u32) {
        match *op {
            Op::Malloc { kind, raw, seed } => {
                let size = size_of(kind, raw, usize::MAX);
                if self.room(size) {
                    // SAFETY: plain malloc.
                    let p = unsafe { c::malloc(size) };
                    self.add(p, size, 16, seed, "malloc");
                }
            }
            Op::Calloc { n, kind, raw, seed } => {
                let n = n as usize % 64;
                let size = size_of(kind, raw, usize::MAX) / 32;
                if self.room(n * size) {
                    // SAFETY: plain calloc.
                    let p = unsafe { c::calloc(n, size) };
                    assert!(!p.is_null(), "calloc({n}, {size})");
                    // SAFETY: the block has n * size bytes.
                    unsafe { check_zero(p as *const u8, n * size, "calloc") };
                    self.add(p, n * size, 16, seed, "calloc");
                }
            }
            Op::CallocOverflow { size, extra } => {
                let size = size as usize % 4096 + 2;
                let n = usize::MAX / size + 1 + extra as usize;
                set_errno(0);
                // SAFETY: plain calloc; the product overflows.
                let p = unsafe { c::calloc(n, size) };
                assert!(p.is_null(), "calloc({n}, {size}) overflows but gave {p:p}");
                assert_eq!(errno(), libc::ENOMEM, "calloc overflow errno");
                // The other order, and a product that fits but is far too big.
                // SAFETY: as above.
                let p = unsafe { c::calloc(size, n) };
                assert!(p.is_null() && errno() == libc::ENOMEM);
                set_errno(0);
                // SAFETY: as above.
                let p = unsafe { c::calloc(usize::MAX / size, size) };
                assert!(
                    p.is_null() && errno() == libc::ENOMEM,
                    "calloc near usize::MAX"
                );
            }
            Op::Realloc {
                idx,
                kind,
                raw,
                seed,
            } => {
                let Some(i) = self.pick(idx) else { return };
                let new = size_of(kind, raw, usize::MAX).max(1);
                if !self.room(new) {
                    return;
                }
                let b = self.take(i);
                // SAFETY: a live block of ours; new > 0.
                let q = unsafe { c::realloc(b.addr as *mut c_void, new) };
                assert!(!q.is_null(), "realloc {} -> {new}", b.size);
                // SAFETY: q has at least `new` bytes.
                unsafe { check(q as *const u8, 0, b.size.min(new), b.seed, "realloc kept") };
                self.add(q, new, 16, seed, "realloc");
            }
            Op::ReallocZero(idx) => {
                let Some(i) = self.pick(idx) else { return };
                let b = self.take(i);
                // SAFETY: a live block of ours; realloc(p, 0) frees it.
                let q = unsafe { c::realloc(b.addr as *mut c_void, 0) };
                assert!(q.is_null(), "realloc(p, 0) returned {q:p}");
            }
            Op::ReallocNull { kind, raw, seed } => {
                let size = size_of(kind, raw, usize::MAX);
                if self.room(size) {
                    // SAFETY: realloc(NULL, n) is malloc(n).
                    let p = unsafe { c::realloc(std::ptr::null_mut(), size) };
                    self.add(p, size, 16, seed, "realloc(NULL)");
                }
            }
            Op::ReallocArray { idx, n, size, seed } => {
                let Some(i) = self.pick(idx) else { return };
                let (n, size) = (n as usize % 300 + 1, size as usize % 300 + 1);
                let b = self.take(i);
                // SAFETY: a live block of ours; the product is non-zero and small.
                let q = unsafe { c::reallocarray(b.addr as *mut c_void, n, size) };
                assert!(!q.is_null(), "reallocarray");
                // SAFETY: q has at least n * size bytes.
                unsafe {
                    check(
                        q as *const u8,
                        0,
                        b.size.min(n * size),
                        b.seed,
                        "reallocarray",
                    )
                };
                self.add(q, n * size, 16, seed, "reallocarray");
            }
            Op::ReallocArrayOverflow { idx, size } => {
                let Some(i) = self.pick(idx) else { return };
                let size = size as usize % 4096 + 2;
                let p = self.live[i].addr as *mut c_void;
                set_errno(0);
                // SAFETY: a live block of ours; the product overflows, so it stays untouched.
                let q = unsafe { c::reallocarray(p, usize::MAX / size + 1, size) };
                assert!(
                    q.is_null() && errno() == libc::ENOMEM,
                    "reallocarray overflow"
                );
                let b = &self.live[i];
                // SAFETY: still a live block of b.size bytes.
                unsafe {
                    check(
                        p as *const u8,
                        0,
                        b.size,
                        b.seed,
                        "reallocarray overflow kept",
                    )
                };
            }
            Op::PosixMemalign {
                align,
                odd,
                kind,
                raw,
                seed,
            } => {
                let align = align_from(align, odd);
                let size = size_of(kind, raw, 1 << 20);
                if !self.room(size) {
                    return;
                }
                set_errno(1234);
                let mut out: *mut c_void = std::ptr::null_mut();
                // SAFETY: out is a valid pointer slot.
                let r = unsafe { c::posix_memalign(&mut out, align, size) };
                assert_eq!(errno(), 1234, "posix_memalign changed errno");
                if !align.is_power_of_two() || align % 8 != 0 {
                    assert_eq!(r, libc::EINVAL, "posix_memalign({align})");
                } else if align > 2 << 20 {
                    assert_eq!(r, libc::ENOMEM, "posix_memalign({align})");
                } else {
                    assert_eq!(r, 0, "posix_memalign({align}, {size})");
                    self.add(out, size, align, seed, "posix_memalign");
                }
            }
            Op::AlignedAlloc {
                align,
                odd,
                kind,
                raw,
                seed,
            } => {
                let align = align_from(align, odd);
                let size = size_of(kind, raw, 1 << 20);
                if !self.room(size) {
                    return;
                }
                set_errno(0);
                // SAFETY: plain aligned_alloc.
                let p = unsafe { c::aligned_alloc(align, size) };
                if !align.is_power_of_two() {
                    assert!(
                        p.is_null() && errno() == libc::EINVAL,
                        "aligned_alloc({align})"
                    );
                } else if align > 2 << 20 {
                    assert!(
                        p.is_null() && errno() == libc::ENOMEM,
                        "aligned_alloc({align})"
                    );
                } else {
                    self.add(p, size, align.max(16), seed, "aligned_alloc");
                }
            }
            Op::Memalign {
                align,
                kind,
                raw,
                seed,
            } => {
                let align = align as usize % (5 << 20);
                let size = size_of(kind, raw, 1 << 20);
                if !self.room(size) {
                    return;
                }
                let want = align.next_power_of_two();
                set_errno(0);
                // SAFETY: plain memalign.
                let p = unsafe { c::memalign(align, size) };
                if want > 2 << 20 {
                    assert!(p.is_null() && errno() == libc::ENOMEM, "memalign({align})");
                } else {
                    self.add(p, size, want.max(16), seed, "memalign");
                }
            }
            Op::Valloc { kind, raw, seed } => {
                let size = size_of(kind, raw, 4 << 20);
                if self.room(size) {
                    // SAFETY: plain valloc.
                    let p = unsafe { c::valloc(size) };
                    self.add(p, size, PAGE, seed, "valloc");
                }
            }
            Op::Pvalloc { kind, raw, seed } => {
                let size = size_of(kind, raw, 4 << 20);
                let rounded = size.max(1).div_ceil(PAGE) * PAGE;
                if self.room(rounded) {
                    // SAFETY: plain pvalloc.
                    let p = unsafe { c::pvalloc(size) };
                    self.add(p, rounded, PAGE, seed, "pvalloc");
                }
            }
            Op::TooBig(k) => {
                let size = usize::MAX - (k as usize) * 4097;
                set_errno(0);
                // SAFETY: plain calls; every one must fail cleanly.
                unsafe {
                    assert!(
                        c::malloc(size).is_null() && errno() == libc::ENOMEM,
                        "malloc({size})"
                    );
                    set_errno(0);
                    assert!(c::valloc(size).is_null() && errno() == libc::ENOMEM);
                    set_errno(0);
                    assert!(c::pvalloc(size).is_null() && errno() == libc::ENOMEM);
                    set_errno(0);
                    assert!(c::aligned_alloc(64, size).is_null() && errno() == libc::ENOMEM);
                    if let Some(i) = self.pick(k) {
                        let b = &self.live[i];
                        set_errno(0);
                        let q = c::realloc(b.addr as *mut c_void, size);
                        assert!(q.is_null() && errno() == libc::ENOMEM, "realloc to {size}");
                        check(
                            b.addr as *const u8,
                            0,
                            b.size,
                            b.seed,
                            "failed realloc kept",
                        );
                    }
                }
            }
            Op::Free(idx) => {
                if let Some(i) = self.pick(idx) {
                    let b = self.take(i);
                    // SAFETY: a live block of ours, freed once.
                    unsafe { c::free(b.addr as *mut c_void) };
                }
            }
            Op::FreeNull => {
                // SAFETY: free(NULL) does nothing; usable size of NULL is 0.
                unsafe {
                    c::free(std::ptr::null_mut());
                    assert_eq!(c::malloc_usable_size(std::ptr::null_mut()), 0);
                }
            }
            Op::Foreign {
                what,
                off,
                new,
                seed,
            } => self.foreign(what, off, new, seed),
            Op::ForeignAfterFree(idx) => {
                let Some(i) = self.pick(idx) else { return };
                let b = self.take(i);
                // SAFETY: a live block of ours, freed once.
                unsafe { c::free(b.addr as *mut c_void) };
                let page = b.addr & !(PAGE - 1);
                let len = 2 * PAGE;
                if !map_at(page, len) {
                    return; // still mapped (by tieralloc or anyone): nothing to test
                }
                // The pages are no longer tieralloc's: everything must treat them as foreign.
                let p = page as *mut u8;
                // SAFETY: our fresh mapping of len bytes.
                unsafe { fill(p, 0, len, 0x3c) };
                assert!(
                    !tieralloc::owns(p),
                    "owns() is true for {p:p}, unmapped and mapped again"
                );
                // SAFETY: foreign memory: free must ignore it, usable size must be 0.
                unsafe {
                    assert_eq!(c::malloc_usable_size(p.cast()), 0, "usable size of foreign");
                    c::free(p.cast());
                    check(p, 0, len, 0x3c, "foreign memory after free");
                    libc::munmap(p.cast(), len);
                }
            }
            Op::Trim => {
                // SAFETY: no precondition.
                assert_eq!(unsafe { c::malloc_trim(0) }, 1);
            }
            Op::CheckAll => {
                for b in &self.live {
                    // SAFETY: a live block of b.size bytes.
                    unsafe {
                        check(b.addr as *const u8, 0, b.size, b.seed, "check");
                        assert!(c::malloc_usable_size(b.addr as *mut c_void) >= b.size);
                    }
                }
            }
            Op::Thread(n) => thread_op(ops, next, n, aff, depth, |inner, aff, d| {
                self.run(inner, aff, d)
            }),
            Op::MoveCpu(k) => aff.move_to(k),
        }
    }

    fn foreign(&mut self, what: u8, off: u16, new: u16, seed: u8) {
        let new = new as usize % 12000 + 1;
        if !self.room(new) {
            return;
        }
        match what % 4 {
            0 => {
                // The read-only static buffer: a write to it would fault.
                let off = off as usize % FOREIGN.len();
                let p = FOREIGN[off..].as_ptr();
                // SAFETY: foreign memory: ignored by free, usable size 0.
                unsafe {
                    c::free(p as *mut c_void);
                    assert_eq!(c::malloc_usable_size(p as *mut c_void), 0);
                }
                assert!(FOREIGN.iter().enumerate().all(|(i, &b)| b == pat(0xa5, i)));
                // What follows the buffer in the image is readable too: compare its part only.
                // SAFETY: foreign memory with FOREIGN.len() - off readable bytes.
                unsafe { self.foreign_realloc(p, new.min(FOREIGN.len() - off), new, seed) };
            }
            1 => {
                let mut buf = [0u8; 512];
                // SAFETY: our stack buffer of 512 bytes.
                unsafe { fill(buf.as_mut_ptr(), 0, buf.len(), seed) };
                let off = off as usize % buf.len();
                let p = buf[off..].as_ptr();
                // SAFETY: foreign memory: ignored by free, usable size 0.
                unsafe {
                    c::free(p as *mut c_void);
                    assert_eq!(c::malloc_usable_size(p as *mut c_void), 0);
                    check(buf.as_ptr(), 0, buf.len(), seed, "stack buffer after free");
                }
                // The stack beyond the buffer is readable too: compare the buffer's part only.
                // SAFETY: foreign memory with buf.len() - off readable bytes.
                unsafe { self.foreign_realloc(p, new.min(buf.len() - off), new, seed ^ 1) };
            }
            k => {
                // Two readable pages followed by an inaccessible one (k == 2), or only an
                // inaccessible page (k == 3).
                let len = 3 * PAGE;
                // SAFETY: a fresh private anonymous mapping.
                let m = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                assert_ne!(m, libc::MAP_FAILED);
                let m = m as *mut u8;
                let readable = if k == 2 { 2 * PAGE } else { 0 };
                // SAFETY: our mapping: fill the readable part, then close the rest.
                unsafe {
                    fill(m, 0, readable, seed);
                    libc::mprotect(m.add(readable).cast(), len - readable, libc::PROT_NONE);
                }
                let off = if readable == 0 {
                    off as usize % PAGE
                } else {
                    off as usize % readable
                };
                // SAFETY: foreign memory: ignored by free, usable size 0; realloc only reads.
                unsafe {
                    let p = m.add(off);
                    assert!(
                        !tieralloc::owns(p),
                        "owns() is true for a fresh mapping {p:p}"
                    );
                    c::free(p.cast());
                    assert_eq!(c::malloc_usable_size(p.cast()), 0);
                    check(m, 0, readable, seed, "mapping after free");
                    self.foreign_realloc(p, readable.saturating_sub(off), new, seed ^ 2);
                    check(m, 0, readable, seed, "mapping after realloc");
                    libc::munmap(m.cast(), len);
                }
            }
        }
    }
}

/// Decodes `data` and runs it on a new thread; panics on a difference from the model.
pub fn run(data: &[u8]) {
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    in_thread(|| {
        let aff = Affinity::save();
        let mut m = Model::default();
        m.run(&ops, &aff, 0);
        while let Some(i) = m.pick(0) {
            let b = m.take(i);
            // SAFETY: a live block of ours, freed once.
            unsafe { c::free(b.addr as *mut c_void) };
        }
    });
}
