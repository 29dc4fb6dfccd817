//! mmap, munmap, madvise, mprotect (the `secure` build's guard pages), the monotonic clock,
//! raw writes to stderr, and glibc's stdio list lock (for the fork handlers).
//!
//! Owns: the process-wide byte counters for reserved (mapped) and committed memory, which are
//! kept here because this is the only place that maps and purges, and every `madvise` and
//! `mprotect` of the crate. May touch: `sys::numa` (to bind a fresh mapping to a node before its first touch)
//! and `sync`. Never allocates, never panics.

use super::fault::{fails, Kind};
use crate::sync::{AtomicU64, AtomicUsize, Ordering};
use core::ptr;

/// Bytes of address space mapped by the allocator right now.
pub(crate) static RESERVED: AtomicUsize = AtomicUsize::new(0);
/// Bytes handed to pages and spans and not purged since (an upper bound on what is resident).
pub(crate) static COMMITTED: AtomicUsize = AtomicUsize::new(0);
/// Number of mmap calls that failed (out of memory or address space).
pub(crate) static MAP_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Purge operations (madvise or unmap of idle memory) and the bytes they returned.
pub(crate) static PURGES: AtomicU64 = AtomicU64::new(0);
pub(crate) static PURGED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Sets the calling thread's `errno` to `ENOMEM`, as C's `malloc` does when it returns null.
/// The allocation paths do it themselves, so that the malloc drop-in's fast path can hand
/// their result straight back (a tail call); a Rust program never looks at it.
#[cold]
pub(crate) fn set_enomem() {
    // SAFETY: __errno_location returns the calling thread's errno slot, valid for the thread.
    unsafe { *libc::__errno_location() = libc::ENOMEM }
}

/// Runs `f`, system calls whose failure the caller handles itself (a refused purge or guard,
/// a refused mapping that the caller turns into a null), and puts the calling thread's `errno`
/// back as it was: a C program's `free` must leave `errno` alone (glibc's has since 2.33,
/// POSIX.1-2024 requires it), and a purge refused for locked memory (`EINVAL`) inside a free
/// set it (review rev18). Allocation failures set `ENOMEM` themselves ([`set_enomem`]).
#[inline(always)]
pub(crate) fn keeping_errno<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: __errno_location returns the calling thread's errno slot, valid for the thread.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: as above: a valid, aligned int of this thread.
    let saved = unsafe { *slot };
    let r = f();
    // SAFETY: as above.
    unsafe { *slot = saved };
    r
}

/// The smallest unit the kernel maps; tieralloc assumes 4 KiB pages (checked in `global`).
pub(crate) const OS_PAGE: usize = 4096;

/// Maps `size` bytes of fresh, zeroed, read-write memory aligned to `align` (a power of two,
/// at least `OS_PAGE`), bound to `node` when one is given and binding is on. Returns null when
/// the kernel refuses.
pub(crate) fn map_aligned(size: usize, align: usize, node: Option<u32>) -> *mut u8 {
    debug_assert!(align.is_power_of_two() && align >= OS_PAGE && size % OS_PAGE == 0);
    let Some(total) = size.checked_add(align - OS_PAGE) else {
        return ptr::null_mut();
    };
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
    // result is checked against MAP_FAILED before use.
    let raw = keeping_errno(|| unsafe {
        if fails(Kind::Map) {
            return libc::MAP_FAILED;
        }
        libc::mmap(
            ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    });
    if raw == libc::MAP_FAILED {
        MAP_FAILURES.fetch_add(1, Ordering::Relaxed);
        return ptr::null_mut();
    }
    let start = raw as usize;
    let aligned = (start + align - 1) & !(align - 1);
    let head = aligned - start;
    let tail = total - head - size;
    // SAFETY: [start, start+head) and [aligned+size, start+total) lie inside the mapping we
    // just made and nobody else knows about them yet; so does the whole of it, given back
    // when a trim is refused.
    let trimmed = keeping_errno(|| unsafe {
        let munmap = |p: usize, len: usize| !fails(Kind::Unmap) && libc::munmap(p as _, len) == 0;
        if head > 0 && !munmap(start, head) {
            // Refused (the split would pass vm.max_map_count: ENOMEM). The pieces trimmed off
            // would stay mapped for good, reached by no unmap and counted nowhere (review
            // rev38): the whole mapping goes back instead (which splits nothing), and this
            // mapping fails like a refused mmap. If even that is refused, it stays, counted.
            if !munmap(start, total) {
                RESERVED.fetch_add(total, Ordering::Relaxed);
            }
            return false;
        }
        if tail > 0 && !munmap(aligned + size, tail) {
            // As above, for what is left of it after the head's trim.
            if !munmap(aligned, size + tail) {
                RESERVED.fetch_add(size + tail, Ordering::Relaxed);
            }
            return false;
        }
        true
    });
    if !trimmed {
        MAP_FAILURES.fetch_add(1, Ordering::Relaxed);
        return ptr::null_mut();
    }
    if let Some(n) = node {
        // Binding failures are not fatal: the memory is still usable, only unplaced.
        super::numa::bind(aligned as *mut u8, size, n);
    }
    RESERVED.fetch_add(size, Ordering::Relaxed);
    aligned as *mut u8
}

/// Returns a mapping made by [`map_aligned`] to the kernel. Refused (ENOMEM: a part of a
/// mapping whose unmap would split it past `vm.max_map_count`), the range stays mapped and
/// counted as reserved (review rev38: it was subtracted as if gone), lost to the allocator.
///
/// # Safety
/// `[p, p+size)` must be a mapping made by `map_aligned`, or the tail of one, that nothing
/// uses any more.
pub(crate) unsafe fn unmap(p: *mut u8, size: usize) {
    // SAFETY: the caller hands us a whole mapping of ours that is no longer in use.
    let done = keeping_errno(|| unsafe {
        !fails(Kind::Unmap) && libc::munmap(p as *mut libc::c_void, size) == 0
    });
    if !done {
        return;
    }
    RESERVED.fetch_sub(size, Ordering::Relaxed);
    PURGES.fetch_add(1, Ordering::Relaxed);
    PURGED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
}

/// Turns transparent huge pages off for `[p, p+len)` (MADV_NOHUGEPAGE), before a range is
/// spread over nodes page by page: a 2 MiB page would put 512 pages on one node.
pub(crate) fn no_huge_pages(p: *mut u8, len: usize) {
    // SAFETY: advice that changes only how future faults of the range are served, never the
    // contents of any page; on a range that is not mapped the kernel refuses (ENOMEM) and
    // nothing changes.
    keeping_errno(|| unsafe {
        if !fails(Kind::Advise) {
            libc::madvise(p as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE);
        }
    });
}

/// The size of a transparent huge page (PMD-mapped) on x86-64 and aarch64 with 4 KiB pages.
pub(crate) const THP_SIZE: usize = 2 << 20;

/// Splits the transparent huge page (or large folio) holding the OS page at `p`, if any, into
/// OS pages: MADV_COLD over that one page, which the kernel can only apply to part of a large
/// folio by splitting it first (Linux 5.4+; it also marks that one page as a candidate for
/// reclaim). Before pages are moved between nodes: the kernel moves a large folio whole, so a
/// move of a range that shares one with other memory would move that memory too. The kernel
/// may decline (older kernels, a folio shared with another process or busy): callers check.
pub(crate) fn split_huge_page_at(p: *mut u8) {
    let page = (p as usize & !(OS_PAGE - 1)) as *mut libc::c_void;
    // SAFETY: advice about one page of a mapping of ours; it changes no page's contents (only
    // how the page is backed and how soon it may be reclaimed); on a range that is not mapped
    // the kernel refuses (ENOMEM) and nothing changes.
    keeping_errno(|| unsafe {
        if !fails(Kind::Advise) {
            libc::madvise(page, OS_PAGE, libc::MADV_COLD);
        }
    });
}

/// Moves the mapping `[old, old+old_size)` to `new`, grown to `new_size` bytes, in place of
/// the mapping made there by [`map_aligned`]: the pages move without being copied, the grown
/// part is fresh zeroed memory, and the old range is unmapped. Returns false (and changes
/// nothing) if the kernel refuses.
///
/// # Safety
/// `[old, old+old_size)` is a mapping of ours (or a page-aligned part of one) whose contents
/// only the caller uses; `[new, new+new_size)` is a mapping made by `map_aligned` (or a
/// page-aligned part of one) that nothing uses.
pub(crate) unsafe fn remap(old: *mut u8, old_size: usize, new: *mut u8, new_size: usize) -> bool {
    // SAFETY: both ranges are (parts of) mappings of ours (contract); MREMAP_FIXED replaces
    // the mapping at `new`, which nobody uses, and the old range is nobody else's to read.
    let r = keeping_errno(|| unsafe {
        if fails(Kind::Remap) {
            return libc::MAP_FAILED;
        }
        libc::mremap(
            old as *mut libc::c_void,
            old_size,
            new_size,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            new as *mut libc::c_void,
        )
    });
    if r == libc::MAP_FAILED {
        return false;
    }
    RESERVED.fetch_sub(old_size, Ordering::Relaxed);
    true
}

/// Drops the physical pages behind `[p, p+size)` (MADV_DONTNEED: RSS falls now, and the next
/// touch sees zeros). The range stays mapped. Returns false if the kernel refused (locked
/// memory: `mlock`, `mlockall`): the contents are then still there, and counted nowhere.
///
/// # Safety
/// `[p, p+size)` must be page-aligned memory of ours that holds no live object.
pub(crate) unsafe fn decommit(p: *mut u8, size: usize) -> bool {
    if size == 0 {
        return true;
    }
    // SAFETY: the caller guarantees the range is ours, page aligned and holds nothing live, so
    // discarding its contents is invisible to every user.
    let done = keeping_errno(|| unsafe {
        if fails(Kind::Decommit) {
            return -1;
        }
        libc::madvise(p as *mut libc::c_void, size, libc::MADV_DONTNEED)
    }) == 0;
    if done {
        PURGES.fetch_add(1, Ordering::Relaxed);
        PURGED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
    done
}

/// Makes `[p, p+len)` inaccessible (`PROT_NONE`): a guard that any read or write faults on
/// (SIGSEGV). The pages stay mapped (reserved), so nothing else is placed there. Returns false
/// if the kernel refused (ENOMEM: too many mappings, `vm.max_map_count`): the range then stays
/// read-write, only unguarded.
///
/// # Safety
/// `[p, p+len)` is page-aligned memory of ours that holds no live object and that nothing
/// reads or writes until [`protect_rw`] gives it back.
#[cfg(feature = "secure")]
pub(crate) unsafe fn protect_none(p: *mut u8, len: usize) -> bool {
    // SAFETY: the range is ours and unused (contract); taking access away changes no contents.
    keeping_errno(|| unsafe {
        if fails(Kind::Protect) {
            return -1;
        }
        libc::mprotect(p as *mut libc::c_void, len, libc::PROT_NONE)
    }) == 0
}

/// Makes `[p, p+len)` read-write again (a guard page that becomes part of a block). Contents
/// are kept: not always zero (the tail guard the huge cache's split puts in a mapping lies
/// where the last object may have written), so no caller counts them as zero. Returns false
/// if the kernel refused.
///
/// # Safety
/// `[p, p+len)` is page-aligned memory of ours.
#[cfg(feature = "secure")]
pub(crate) unsafe fn protect_rw(p: *mut u8, len: usize) -> bool {
    // SAFETY: the range is ours (contract); giving access changes no contents.
    keeping_errno(|| unsafe {
        if fails(Kind::Protect) {
            return -1;
        }
        libc::mprotect(
            p as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    }) == 0
}

/// Milliseconds on the monotonic clock (coarse: a vDSO read, no system call).
pub(crate) fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec on our stack.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
    }
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Writes bytes to stderr without allocating or locking Rust's stderr.
pub(crate) fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid readable slice for its whole length.
        let n = unsafe { libc::write(2, rest.as_ptr() as *const libc::c_void, rest.len()) };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// A fixed-size text buffer on the stack, for messages written from inside the allocator
/// (where `format!` would allocate).
pub(crate) struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    pub(crate) const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> core::fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let b = s.as_bytes();
        let n = b.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        if n < b.len() {
            Err(core::fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// glibc's stdio list lock (`_IO_list_lock`, exported since GLIBC_2.2.5), for the heap's fork
/// prepare handler, which takes it before the allocator's locks: glibc's `fork` takes it
/// after the prepare handlers, and a thread that holds it (`fflush(NULL)`) may wait for a
/// stream's lock that a thread holds while it allocates (`getline` reallocs under it), whose
/// allocation may need an allocator lock (reviews rev50, rev52). A recursive lock of the
/// forking thread's, so glibc's own take succeeds. Nothing on a libc without it.
pub(crate) fn stdio_list_lock() {
    #[cfg(target_env = "gnu")]
    // SAFETY: glibc's own lock, taken and let go as its `fork` does.
    unsafe {
        gnu::_IO_list_lock()
    };
}

/// Lets go of [`stdio_list_lock`] in the parent (after glibc's `fork` has let go of its own
/// take).
pub(crate) fn stdio_list_unlock() {
    #[cfg(target_env = "gnu")]
    // SAFETY: held by this thread ([`stdio_list_lock`]).
    unsafe {
        gnu::_IO_list_unlock()
    };
}

/// Frees [`stdio_list_lock`] in a fork child, the process's only thread (glibc's `fork` has
/// already done so if the parent had other threads).
pub(crate) fn stdio_list_reset() {
    #[cfg(target_env = "gnu")]
    // SAFETY: glibc's reset of its lock, for a child's only thread.
    unsafe {
        gnu::_IO_list_resetlock()
    };
}

#[cfg(target_env = "gnu")]
mod gnu {
    extern "C" {
        pub fn _IO_list_lock();
        pub fn _IO_list_unlock();
        pub fn _IO_list_resetlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_aligned_is_aligned_zeroed_and_counted() {
        let align = 4 << 20;
        let p = map_aligned(align, align, None);
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0);
        // Other tests map and unmap concurrently, so only a lower bound is certain.
        assert!(RESERVED.load(Ordering::Relaxed) >= align);
        // SAFETY: p is a fresh 4 MiB mapping of ours.
        unsafe {
            assert_eq!(*p.add(12345), 0);
            *p.add(12345) = 7;
            decommit(p, align);
            assert_eq!(*p.add(12345), 0, "MADV_DONTNEED must give back zero pages");
            unmap(p, align);
        }
    }

    #[test]
    fn absurd_sizes_fail_cleanly() {
        assert!(map_aligned(usize::MAX & !(OS_PAGE - 1), OS_PAGE, None).is_null());
        assert!(map_aligned(1 << 62, 4 << 20, None).is_null());
    }

    #[test]
    fn stack_buf_truncates_instead_of_failing_hard() {
        use core::fmt::Write;
        let mut b = StackBuf::<8>::new();
        assert!(write!(b, "{}", 1234567890u64).is_err());
        assert_eq!(b.as_bytes(), b"12345678");
    }
}
