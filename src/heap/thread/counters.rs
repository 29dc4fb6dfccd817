//! Statistics counters: each heap's own, the retired totals of heaps that are gone, and the
//! per-node cross-free totals.
//!
//! Owns: `HeapStats` (bumped by its owner with a plain load and store, read by anyone), the
//! `RETIRED*` and `CROSS_*` statics, and the choice of which counters a free goes to. May
//! touch: the `Heap` type (`super`, for its state and its own counters), `bins` (which bin a
//! direct-table slot serves), `heap::{segment, size_class}`, `sync`.

use super::bins::{direct_bin, DIRECT_SLOTS};
use super::{HeapRef, ACTIVE};
use crate::heap::segment::MAX_NODES;
use crate::heap::size_class::NBINS;
use crate::sync::{AtomicU64, Ordering};

/// Bin index used for large pages in the statistics arrays.
pub const LARGE_BIN: usize = NBINS;

/// Per-thread counters. The owner bumps them with a relaxed load and store (no read-modify-
/// write); readers merge them under the registry lock.
pub struct HeapStats {
    /// Blocks handed out per bin (and large pages at `LARGE_BIN`), except those C `malloc`'s
    /// direct path handed out: see [`HeapStats::alloc_counts`] for the totals.
    pub allocs: [AtomicU64; NBINS + 1],
    /// Blocks C `malloc`'s direct path handed out, by `Heap::direct` slot (size / 16): the
    /// fast path adds to the slot it already has in a register instead of looking the page's
    /// bin up first; readers fold the slots into their bins.
    pub direct_allocs: [AtomicU64; DIRECT_SLOTS],
    /// Blocks freed per bin by this thread (whoever allocated them).
    pub frees: [AtomicU64; NBINS + 1],
    /// Bytes of large pages allocated and freed.
    pub large_alloc_bytes: AtomicU64,
    /// Bytes of large pages freed.
    pub large_free_bytes: AtomicU64,
    /// Huge objects allocated and freed, and their bytes.
    pub huge_allocs: AtomicU64,
    /// Huge objects freed.
    pub huge_frees: AtomicU64,
    /// Bytes of huge objects allocated.
    pub huge_alloc_bytes: AtomicU64,
    /// Bytes of huge objects freed.
    pub huge_free_bytes: AtomicU64,
    /// Frees of blocks owned by another thread.
    pub remote_frees: AtomicU64,
    /// Bytes this thread freed that live on another node than its own.
    pub foreign_free_bytes: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
pub(super) const ZERO: AtomicU64 = AtomicU64::new(0);

impl HeapStats {
    /// All zero.
    pub const fn new() -> Self {
        HeapStats {
            allocs: [ZERO; NBINS + 1],
            direct_allocs: [ZERO; DIRECT_SLOTS],
            frees: [ZERO; NBINS + 1],
            large_alloc_bytes: ZERO,
            large_free_bytes: ZERO,
            huge_allocs: ZERO,
            huge_frees: ZERO,
            huge_alloc_bytes: ZERO,
            huge_free_bytes: ZERO,
            remote_frees: ZERO,
            foreign_free_bytes: ZERO,
        }
    }

    /// Blocks handed out per bin (large pages at `LARGE_BIN`), by both paths.
    pub fn alloc_counts(&self) -> [u64; NBINS + 1] {
        let mut n = [0u64; NBINS + 1];
        for (d, c) in n.iter_mut().zip(&self.allocs) {
            *d = c.load(Ordering::Relaxed);
        }
        for (w, c) in self.direct_allocs.iter().enumerate() {
            let bin = direct_bin(w);
            n[bin] = n[bin].wrapping_add(c.load(Ordering::Relaxed));
        }
        n
    }

    pub(super) fn merge_into(&self, dst: &HeapStats) {
        for i in 0..=NBINS {
            dst.allocs[i].fetch_add(self.allocs[i].load(Ordering::Relaxed), Ordering::Relaxed);
            dst.frees[i].fetch_add(self.frees[i].load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (d, c) in dst.direct_allocs.iter().zip(&self.direct_allocs) {
            d.fetch_add(c.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let pairs = [
            (&self.large_alloc_bytes, &dst.large_alloc_bytes),
            (&self.large_free_bytes, &dst.large_free_bytes),
            (&self.huge_allocs, &dst.huge_allocs),
            (&self.huge_frees, &dst.huge_frees),
            (&self.huge_alloc_bytes, &dst.huge_alloc_bytes),
            (&self.huge_free_bytes, &dst.huge_free_bytes),
            (&self.remote_frees, &dst.remote_frees),
            (&self.foreign_free_bytes, &dst.foreign_free_bytes),
        ];
        for (s, d) in pairs {
            d.fetch_add(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Bytes allocated minus bytes freed by this heap's thread, counting only blocks of the
    /// heap's own node: its contribution to that node's live bytes.
    pub fn net_node_bytes(&self) -> i64 {
        let mut net: i64 = 0;
        let allocs = self.alloc_counts();
        for (bin, (&a, f)) in allocs.iter().zip(&self.frees).enumerate().take(NBINS) {
            let n = a as i64 - f.load(Ordering::Relaxed) as i64;
            net += n * crate::heap::size_class::bin_size(bin) as i64;
        }
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
        net + l(&self.large_alloc_bytes) - l(&self.large_free_bytes) + l(&self.huge_alloc_bytes)
            - l(&self.huge_free_bytes)
            + l(&self.foreign_free_bytes)
    }

    pub(super) fn reset(&self) {
        for i in 0..=NBINS {
            self.allocs[i].store(0, Ordering::Relaxed);
            self.frees[i].store(0, Ordering::Relaxed);
        }
        for c in &self.direct_allocs {
            c.store(0, Ordering::Relaxed);
        }
        for c in [
            &self.large_alloc_bytes,
            &self.large_free_bytes,
            &self.huge_allocs,
            &self.huge_frees,
            &self.huge_alloc_bytes,
            &self.huge_free_bytes,
            &self.remote_frees,
            &self.foreign_free_bytes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

impl Default for HeapStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Adds `n` to an owner-only counter without a read-modify-write instruction.
#[inline(always)]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Counters of threads that have exited.
pub static RETIRED: HeapStats = HeapStats::new();

/// Per node: net live bytes of heaps that have exited or moved away from the node.
pub static RETIRED_NET_BY_NODE: [crate::sync::AtomicI64; MAX_NODES] = [ZERO_I64; MAX_NODES];
/// Per node: bytes of its blocks freed by threads of other nodes.
pub static CROSS_FREED_BYTES: [AtomicU64; MAX_NODES] = [ZERO; MAX_NODES];
/// Per node: frees of its blocks by threads of other nodes.
pub static CROSS_FREES: [AtomicU64; MAX_NODES] = [ZERO; MAX_NODES];
#[allow(clippy::declare_interior_mutable_const)]
pub(super) const ZERO_I64: crate::sync::AtomicI64 = crate::sync::AtomicI64::new(0);

/// The counters a free by heap `h` goes to: its own (owner-only, `shared` false), or the
/// retired totals (atomic adds) if it is not active.
///
/// # Safety
/// The caller uses the returned counters only within the free it is doing, while the heap
/// cannot exit (the `'static` is a lie for the heap's own counters: they live in the heap).
#[inline]
pub(super) unsafe fn counters(h: HeapRef) -> (&'static HeapStats, bool) {
    if h.state == ACTIVE {
        // SAFETY: a thread's heap lives as long as its thread and a node heap for good; the
        // counters are atomics, and the caller uses them only within the free it is doing.
        (unsafe { &*core::ptr::addr_of!((*h.as_ptr()).stats) }, false)
    } else {
        (&RETIRED, true)
    }
}

/// Adds `n` to `c`: with a plain load and store when the counter is its owner's (`shared`
/// false), with an atomic add when other threads add to it too.
#[inline]
pub(super) fn add(c: &AtomicU64, n: u64, shared: bool) {
    if shared {
        c.fetch_add(n, Ordering::Relaxed);
    } else {
        bump(c, n);
    }
}
