//! Heap errors: what happens when a free is proven wrong (a double free, a pointer that is
//! not the start of a live block of ours), and the one-line report of it.
//!
//! Owns: the error policy ([`ON_ERROR`], set from `TIERALLOC_ON_ERROR` by `init`), the kinds
//! of error ([`HeapError`]) and [`report`], which writes a fixed message and the pointer in
//! hex (rendered here, into a stack buffer) to stderr with one `write`, then aborts, or
//! returns so that the caller leaks the block. May touch: `sys::os` (stderr), `init` (the
//! settings, read once before the policy). Nothing here allocates, formats with `core::fmt`,
//! panics or takes a lock: it runs inside `free`, possibly on a corrupted heap.
//!
//! The checks themselves live where the heap already looks at the segment and page (the free
//! paths in `thread/free.rs`, the collection in `page.rs`, huge frees in `thread/large.rs`,
//! the `secure` build's in `heap::secure`);
//! docs/security.md lists what they catch and what they do not.

use crate::sync::{AtomicU8, Ordering};
use crate::sys::os;

/// `TIERALLOC_ON_ERROR=abort` (the default): report, then `abort()` (SIGABRT).
pub const ABORT: u8 = 0;
/// `TIERALLOC_ON_ERROR=warn`: report and keep going; the block in question is leaked.
pub const WARN: u8 = 1;
/// `TIERALLOC_ON_ERROR=ignore`: say nothing and keep going; the block is leaked.
pub const IGNORE: u8 = 2;

/// What the allocator does on a heap error: [`ABORT`], [`WARN`] or [`IGNORE`].
pub(crate) static ON_ERROR: AtomicU8 = AtomicU8::new(ABORT);

/// A wrong free, as far as the allocator can tell which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapError {
    /// A block freed again while it was still free (found on one of its page's lists, or on
    /// the remote list of a page that says it has no live block).
    DoubleFree,
    /// A free that takes a page's count of live blocks below zero: this block, or one of the
    /// page's freed twice before it.
    NoLiveBlock,
    /// A pointer inside a page in use that is not the start of one of its blocks.
    NotABlock,
    /// A pointer into our memory where no block is in use: a slice of a segment that holds no
    /// page (a freed large block, a retired page) or a segment's header.
    NotInUse,
    /// A huge block that was already freed (its mapping is cached, holding no object).
    HugeFreed,
    /// A pointer inside a huge block that is not its start.
    HugeInterior,
    /// Another thread freed more blocks into a page than it has live: a block freed twice
    /// from other threads (found when the owner collects them).
    RemoteDoubleFree,
    /// A page's free list links a block to itself: a block freed twice in a row (found when
    /// the list is handed to the allocation path).
    FreeListLoop,
    /// A free block's link decodes to an address that is not a block of its page: the block
    /// was written after it was freed (a use after free, an overflow from the block before).
    /// Only the `secure` build, whose links are encoded, can tell.
    #[cfg(feature = "secure")]
    CorruptLink,
    /// C's `free` (or `realloc`) of an address on the calling thread's stack, or on the main
    /// thread's: outside every segment. Only the `secure` drop-in looks (preload/src/
    /// foreign.rs); the default build leaves every pointer outside its segments alone.
    #[cfg(feature = "secure")]
    FreeOfStack,
    /// C's `free` (or `realloc`) of an address inside a loaded object's image (the program's
    /// or a library's data, bss or read-only data), not the dynamic loader's. The `secure`
    /// drop-in only, as [`HeapError::FreeOfStack`].
    #[cfg(feature = "secure")]
    FreeOfStatic,
    /// A freed (or resized) block whose canary, past the size the program asked for, was
    /// overwritten: a write past the block's end. Only the `secure` build, whose blocks carry
    /// a canary (`heap::secure::canary`), can tell.
    #[cfg(feature = "secure")]
    Overflow,
}

impl HeapError {
    /// The fixed text of the report.
    fn text(self) -> &'static [u8] {
        match self {
            HeapError::DoubleFree => b"double free",
            HeapError::NoLiveBlock => b"double free: the page has no live block (this one, or one of its blocks freed twice before)",
            HeapError::NotABlock => b"invalid free: not the start of a block (interior or unaligned pointer)",
            HeapError::NotInUse => b"invalid free: no block is in use there (double free of a large block, or a stray pointer)",
            HeapError::HugeFreed => b"double free of a huge block",
            HeapError::HugeInterior => b"invalid free: not the start of a huge block (interior pointer)",
            HeapError::RemoteDoubleFree => b"double free: more blocks freed from other threads than the page has live",
            HeapError::FreeListLoop => b"double free: a free list links a block to itself",
            #[cfg(feature = "secure")]
            HeapError::CorruptLink => b"free list corrupted: a freed block was overwritten (use after free or overflow)",
            #[cfg(feature = "secure")]
            HeapError::FreeOfStack => b"invalid free: free of a stack address",
            #[cfg(feature = "secure")]
            HeapError::FreeOfStatic => b"invalid free: free of a static address",
            #[cfg(feature = "secure")]
            HeapError::Overflow => b"heap overflow: canary overwritten (a write past the size asked for)",
        }
    }
}

/// Renders `v` as 16 hex digits after "0x" into `out` (18 bytes).
fn hex(v: usize, out: &mut [u8; 18]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out[0] = b'0';
    out[1] = b'x';
    for i in 0..16 {
        out[17 - i] = DIGITS[(v >> (4 * i)) & 15];
    }
}

/// The report's line: "tieralloc: error: <text> (pointer 0x...)\n", into `buf`; returns its
/// length (the text is cut if it would not fit, which no text here does).
fn line(err: HeapError, p: *const u8, buf: &mut [u8; 192]) -> usize {
    let mut n = 0;
    let mut put = |s: &[u8]| {
        let k = s.len().min(buf.len() - n);
        buf[n..n + k].copy_from_slice(&s[..k]);
        n += k;
    };
    put(b"tieralloc: error: ");
    put(err.text());
    put(b" (pointer ");
    let mut h = [0u8; 18];
    hex(p as usize, &mut h);
    put(&h);
    put(b")\n");
    n
}

/// Reports `err` about pointer `p` as `TIERALLOC_ON_ERROR` says: writes one line to stderr
/// and aborts (the default), or writes it and returns (`warn`), or returns at once
/// (`ignore`). When it returns, the caller must leave the block alone (leak it): the heap's
/// lists and counts stay as they were before the wrong free.
#[cold]
#[inline(never)]
pub fn report(err: HeapError, p: *const u8) {
    // The settings are read by a thread heap's first registration, which every thread that
    // frees one of our blocks has been through; a no-op then (one load).
    crate::init::init_once();
    let mode = ON_ERROR.load(Ordering::Relaxed);
    if mode == IGNORE {
        return;
    }
    let mut buf = [0u8; 192];
    let n = line(err, p, &mut buf);
    os::write_stderr(&buf[..n]);
    if mode == WARN {
        return;
    }
    // SAFETY: abort has no preconditions; it raises SIGABRT and does not return.
    unsafe { libc::abort() }
}

/// For unit tests that provoke reports: holds a lock that every such test takes (tests run
/// in parallel, and `ON_ERROR` is process-wide: one test's restore to `abort` would end the
/// process while another expects its report to return), sets `ignore` and restores `abort`
/// when dropped.
#[cfg(all(test, not(loom)))]
pub(crate) fn ignore_errors_for_test() -> impl Drop {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    struct Restore(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ON_ERROR.store(ABORT, crate::sync::Ordering::Relaxed);
        }
    }
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ON_ERROR.store(IGNORE, crate::sync::Ordering::Relaxed);
    Restore(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_error_and_the_pointer_in_hex() {
        let mut buf = [0u8; 192];
        let n = line(
            HeapError::DoubleFree,
            0x7f12_3456_abc0 as *const u8,
            &mut buf,
        );
        assert_eq!(
            &buf[..n],
            b"tieralloc: error: double free (pointer 0x00007f123456abc0)\n"
        );
        let n = line(HeapError::NotABlock, usize::MAX as *const u8, &mut buf);
        assert!(buf[..n].ends_with(b"(pointer 0xffffffffffffffff)\n"));
    }

    #[test]
    fn every_line_fits() {
        for e in [
            HeapError::DoubleFree,
            HeapError::NoLiveBlock,
            HeapError::NotABlock,
            HeapError::NotInUse,
            HeapError::HugeFreed,
            HeapError::HugeInterior,
            HeapError::RemoteDoubleFree,
            HeapError::FreeListLoop,
            #[cfg(feature = "secure")]
            HeapError::CorruptLink,
            #[cfg(feature = "secure")]
            HeapError::FreeOfStack,
            #[cfg(feature = "secure")]
            HeapError::FreeOfStatic,
            #[cfg(feature = "secure")]
            HeapError::Overflow,
        ] {
            let mut buf = [0u8; 192];
            let n = line(e, core::ptr::null(), &mut buf);
            assert!(n < buf.len() && buf[n - 1] == b'\n', "{e:?}");
        }
    }
}
