//! Test-only fault injection into the system calls (cargo feature `fault-injection`, off by
//! default): "fail the Nth call of kind K from now" and "fail every call of kind K from the Nth
//! on", in the style of bumpalo's fault-injecting allocator, so that the tests can run the
//! error paths no real kernel takes on demand (review rev38: a refused `munmap`, `madvise`,
//! `mprotect`, `mbind`, `move_pages`, `mremap`, futex wait, or one exact `mmap`).
//!
//! Owns: one call counter and one trigger per [`Kind`]; every wrapper of `sys` (and the futex
//! wait of `heap::wake`) asks [`fails`] before it makes its call and, when told to fail, sets
//! `errno` as the kernel would and returns the kernel's failure without making the call. May
//! touch: `sync` only. Never allocates, never panics.
//!
//! In a normal build [`fails`] is a constant `false` that the compiler folds away: no counter,
//! no load, no code. A feature rather than `cfg(test)`: the workloads that reach every error
//! path run in integration tests (tieralloc as the global allocator, one child process per
//! injected failure), which link the library built without `cfg(test)`.

/// The kinds of system call a test can make fail.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(usize)]
pub enum Kind {
    /// `mmap` of fresh memory (`os::map_aligned`): fails with ENOMEM.
    Map,
    /// `munmap`, whole mappings and the trims of `map_aligned`: ENOMEM (the kernel's answer
    /// when splitting a mapping would pass `vm.max_map_count`).
    Unmap,
    /// `madvise(MADV_DONTNEED)`, the purge (`os::decommit`): EINVAL (locked memory).
    Decommit,
    /// The other `madvise` advice: no huge pages, a huge page's split, populate: EINVAL.
    Advise,
    /// `mprotect`, the `secure` build's guard pages: ENOMEM.
    Protect,
    /// `mbind` (binding, interleaving, moving a range; also with simulated nodes): ENOMEM
    /// (not EIO, which a move takes for "some pages stayed" and then counts the pages).
    Bind,
    /// `move_pages`, queries and moves (also moves with simulated nodes): ENOMEM.
    MovePages,
    /// `mremap`, a huge block's growth: ENOMEM.
    Remap,
    /// A futex wait (the purger's sleep): returns at once with EINTR.
    Futex,
}

/// Every kind, in order.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub const KINDS: [Kind; 9] = [
    Kind::Map,
    Kind::Unmap,
    Kind::Decommit,
    Kind::Advise,
    Kind::Protect,
    Kind::Bind,
    Kind::MovePages,
    Kind::Remap,
    Kind::Futex,
];

#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
impl Kind {
    /// The errno the injected failure sets.
    pub fn errno(self) -> i32 {
        match self {
            Kind::Decommit | Kind::Advise => libc::EINVAL,
            Kind::Futex => libc::EINTR,
            _ => libc::ENOMEM,
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
/// Whether this call of kind `_k` is to fail: never, in a normal build.
#[inline(always)]
pub(crate) fn fails(_k: Kind) -> bool {
    false
}

#[cfg(feature = "fault-injection")]
pub use on::*;

#[cfg(feature = "fault-injection")]
mod on {
    use super::{Kind, KINDS};
    use core::sync::atomic::{AtomicU64, Ordering};

    const N: usize = KINDS.len();
    #[allow(clippy::declare_interior_mutable_const)]
    const ZERO: AtomicU64 = AtomicU64::new(0);
    /// Calls of each kind made (or refused) so far.
    static CALLS: [AtomicU64; N] = [ZERO; N];
    /// The call number (in `CALLS`) of each kind that fails; 0: none.
    static FAIL_AT: [AtomicU64; N] = [ZERO; N];
    /// From which call number every call of each kind fails; 0: none.
    static FAIL_FROM: [AtomicU64; N] = [ZERO; N];
    /// Failures injected of each kind.
    static INJECTED: [AtomicU64; N] = [ZERO; N];

    /// Whether this call of kind `k` is to fail; if so, `errno` is set to `k`'s error, as the
    /// kernel would. Counts the call.
    pub(crate) fn fails(k: Kind) -> bool {
        let i = k as usize;
        let n = CALLS[i].fetch_add(1, Ordering::SeqCst) + 1;
        let at = FAIL_AT[i].load(Ordering::SeqCst);
        let from = FAIL_FROM[i].load(Ordering::SeqCst);
        if n != at && (from == 0 || n < from) {
            return false;
        }
        INJECTED[i].fetch_add(1, Ordering::SeqCst);
        // SAFETY: __errno_location returns the calling thread's errno slot, valid for the
        // thread.
        unsafe { *libc::__errno_location() = k.errno() };
        true
    }

    /// Makes the `n`th call of kind `k` from now fail (`n` >= 1; 0 clears it).
    pub fn fail_nth(k: Kind, n: u64) {
        let i = k as usize;
        let now = CALLS[i].load(Ordering::SeqCst);
        FAIL_AT[i].store(if n == 0 { 0 } else { now + n }, Ordering::SeqCst);
    }

    /// Makes every call of kind `k` fail from the `n`th from now on (`n` >= 1; 0 clears it).
    pub fn fail_from(k: Kind, n: u64) {
        let i = k as usize;
        let now = CALLS[i].load(Ordering::SeqCst);
        FAIL_FROM[i].store(if n == 0 { 0 } else { now + n }, Ordering::SeqCst);
    }

    /// Stops injecting failures of every kind.
    pub fn clear() {
        for i in 0..N {
            FAIL_AT[i].store(0, Ordering::SeqCst);
            FAIL_FROM[i].store(0, Ordering::SeqCst);
        }
    }

    /// Calls of kind `k` made (or refused) since the start of the process.
    pub fn calls(k: Kind) -> u64 {
        CALLS[k as usize].load(Ordering::SeqCst)
    }

    /// Failures of kind `k` injected since the start of the process.
    pub fn injected(k: Kind) -> u64 {
        INJECTED[k as usize].load(Ordering::SeqCst)
    }
}
