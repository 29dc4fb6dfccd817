#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

// Under `--cfg loom` only the lock-free and lock-protected cores of the heap are built, for
// the model checks in tests/loom/: the same files the heap is made of (see heap/mod.rs).
#[cfg(loom)]
#[doc(hidden)]
#[path = "heap/atfork.rs"]
pub mod atfork;
#[cfg(loom)]
#[doc(hidden)]
#[path = "heap/claim.rs"]
pub mod claim;
#[cfg(loom)]
#[doc(hidden)]
#[path = "heap/delayed.rs"]
pub mod delayed;
#[cfg(loom)]
#[doc(hidden)]
#[path = "heap/gate.rs"]
pub mod gate;
#[cfg(loom)]
#[doc(hidden)]
#[path = "heap/heaps.rs"]
pub mod heaps;
#[cfg(loom)]
#[doc(hidden)]
#[path = "heap/list.rs"]
pub mod list;
#[cfg(loom)]
#[doc(hidden)]
#[path = "heap/remote.rs"]
pub mod remote;
#[cfg(loom)]
#[doc(hidden)]
pub mod sync;
#[cfg(loom)]
#[doc(hidden)]
#[path = "heap/wake.rs"]
pub mod wake;

// The modules, in their layers from the bottom (tests/layers.rs holds the order and checks
// that no module imports one above it; docs/design.md draws it): sync → sys → topology →
// heap (with init and stats) → placed (with scope) → tier → global → arena, pool → this file
// (with metrics, the optional Prometheus collector over the public statistics).
#[cfg(not(loom))]
pub mod arena;
#[cfg(not(loom))]
mod global;
#[cfg(not(loom))]
mod heap;
#[cfg(not(loom))]
mod init;
#[cfg(all(feature = "prometheus", not(loom)))]
pub mod metrics;
#[cfg(not(loom))]
mod placed;
#[cfg(not(loom))]
pub mod pool;
#[cfg(not(loom))]
mod scope;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
mod sync;
#[cfg(not(loom))]
mod sys;
#[cfg(not(loom))]
mod tier;
#[cfg(not(loom))]
pub mod topology;

/// Memory tiers (CXL-style far memory): the global allocator's placement policies, demotion
/// and promotion of spans, and per-tier statistics. docs/tiers.md explains them.
#[cfg(not(loom))]
pub mod tiers {
    pub use crate::tier::{
        demote, move_to_node, move_to_tier, policy, promote, set_policy, start_auto_demotion,
        stats, AutoDemotion, AutoDemotionReport, MoveReport, Policy, PolicyError, TierError,
        TierStats,
    };
}

/// NUMA helpers for programs and tests: pin a thread to a node, ask which node pages are on.
#[cfg(not(loom))]
pub mod numa {
    pub use crate::sys::numa::{pages_on_nodes, weighted_interleave_supported};
    pub use crate::topology::home::{
        current_cpu_and_node, move_to_node, pin_current_thread_to_cpu, pin_current_thread_to_node,
    };
}

/// Test-only (feature `fault-injection`, never in a release): make the Nth system call of a
/// kind fail, or every one from the Nth on (`src/sys/fault.rs`).
#[doc(hidden)]
#[cfg(feature = "fault-injection")]
pub mod fault_injection {
    pub use crate::sys::fault::{calls, clear, fail_from, fail_nth, injected, Kind, KINDS};
}

/// Queries for tests (hidden from the docs): how the allocator books a block, and which node
/// the calling thread's heap draws from.
#[doc(hidden)]
#[cfg(not(loom))]
pub mod probe {
    pub use crate::heap::probe::{block_node, heap_node, is_huge, owned_by_caller};
}

#[cfg(not(loom))]
pub use arena::{
    Arena, ArenaError, ArenaMoveReport, ArenaStats, BumpCache, BumpCacheStats, BumpGuard, Key,
    SlotArena, TryAllocError,
};
#[cfg(not(loom))]
pub use global::{owns, TierAlloc};
#[cfg(all(feature = "secure", not(loom)))]
#[doc(hidden)]
pub use global::{report_foreign_free, ForeignFree};
#[cfg(not(loom))]
pub use placed::{Placed, PlacementError};
#[cfg(not(loom))]
pub use pool::{OwnedPoolGuard, Pool, PoolBuilder, PoolError, PoolGuard, PoolStats};
#[cfg(not(loom))]
pub use scope::{
    place, place_labeled, with_placement, with_placement_labeled, PlacedFuture, PlacedFutureExt,
    PlacementGuard,
};
#[cfg(not(loom))]
pub use stats::{stats, ClassStats, LabelNodeStats, LabelStats, NodeStats, Stats};
#[cfg(not(loom))]
pub use topology::{topology, Topology};

/// Collects remote frees and returns idle memory of the calling thread's heap to the OS now,
/// without waiting for the purge delay; also takes in the frees made into the segments that
/// exited threads left on the calling thread's node.
#[cfg(not(loom))]
pub fn collect() {
    heap::thread::collect_now();
}

/// Where a live block sits, for test and probe diagnostics: its segment's address, the first
/// slice and slice count of its page (0 and 0 for a huge segment), the node the segment is
/// booked on, whether the page's memory was moved to another node (demotion), whether the
/// segment is huge, and the address of the heap owning the segment (0: none).
#[doc(hidden)]
#[cfg(not(loom))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPlace {
    pub segment: usize,
    pub slice: usize,
    pub slices: usize,
    pub segment_node: u16,
    pub moved: bool,
    pub huge: bool,
    pub owner: usize,
}

/// See [`BlockPlace`].
///
/// # Safety
/// `p` must be a live pointer returned by [`TierAlloc`], not freed while this runs.
#[doc(hidden)]
#[cfg(not(loom))]
pub unsafe fn block_place(p: *const u8) -> BlockPlace {
    use heap::segment::{page_of, segment_of, SegmentKind};
    let seg = segment_of(p);
    // SAFETY: p is live (contract), so its segment header and, for a normal segment, its
    // page's descriptor were written before p was handed out; only plain reads.
    unsafe {
        let huge = (*seg).kind == SegmentKind::Huge;
        let (slice, slices, moved) = if huge {
            (0, 0, false)
        } else {
            let page = page_of(seg, p);
            (
                (*page).slice_index(),
                (*page).slice_count as usize,
                (*page).moved != 0,
            )
        };
        BlockPlace {
            segment: seg as usize,
            slice,
            slices,
            segment_node: (*seg).node,
            moved,
            huge,
            owner: (*seg).owner.load(core::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The usable size of a block that tieralloc returned: at least the size asked for.
///
/// # Safety
/// `p` must be a live pointer returned by [`TierAlloc`].
#[cfg(not(loom))]
#[inline]
pub unsafe fn usable_size(p: *const u8) -> usize {
    // SAFETY: forwarded contract.
    unsafe { heap::thread::usable_size(p) }
}
