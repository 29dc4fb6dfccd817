//! Memory tiers: which node (and so which tier) an allocation of the global allocator goes to,
//! and moving spans between tiers.
//!
//! Owns: the tier policies (size threshold, near:far ratio, per-tier budgets) and migration.
//! May touch: `topology` (the tiers), `sys::numa` (mbind, move_pages), `heap::segment`
//! (committed bytes per node). The heap calls the three hooks below; with no policy set they
//! cost one relaxed load each, on paths that are already slow (except `fast_max`, one load on
//! the fast path).

use crate::heap::size_class::MEDIUM_MAX;
use crate::sync::{AtomicBool, AtomicUsize, Ordering};

/// Whether any policy is on (checked before calling `route` or `segment_node`).
pub(crate) static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The largest request the inline bin path serves; lowered below `MEDIUM_MAX` by a size
/// threshold policy so that requests at or over the threshold reach `route`.
static FAST_MAX: AtomicUsize = AtomicUsize::new(MEDIUM_MAX);

/// See `FAST_MAX`.
#[inline(always)]
pub(crate) fn fast_max() -> usize {
    FAST_MAX.load(Ordering::Relaxed)
}

/// The node an allocation of `size` bytes at `align` should go to instead of the calling
/// thread's heap, or None to leave it there. Must not allocate.
#[inline]
pub(crate) fn route(_size: usize, _align: usize, _home: u32) -> Option<u32> {
    None
}

/// The node a thread heap on `home` maps its next segment on (a spilled node when `home`'s
/// tier budget is spent). Must not allocate.
#[inline]
pub(crate) fn segment_node(home: u32) -> u32 {
    home
}
