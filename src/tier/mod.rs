//! Memory tiers: which node (and so which tier) an allocation of the global allocator goes to,
//! moving spans between tiers, and per-tier statistics.
//!
//! Owns: the tier policies (size threshold, near:far ratio, per-tier budgets: `policy`), the
//! hooks the heap calls (below), migration (`migrate`) and the per-tier counters. May touch:
//! `topology` (the tiers), `sys::numa` (mbind, move_pages), `heap::segment` (committed bytes
//! per node; the node of a huge segment that `migrate` moves) and `config` (environment,
//! warnings). The heap calls the three hooks below; with no policy set they cost one relaxed
//! load each, on paths that are already slow (except `fast_max`, one load on the fast path).
//! Everything the heap calls here is allocation-free, panic-free and format-free.

pub(crate) mod auto;
pub(crate) mod migrate;
pub(crate) mod policy;

pub use auto::{start_auto_demotion, AutoDemotion, AutoDemotionReport};
pub use migrate::{demote, move_to_node, move_to_tier, promote, MoveReport, TierError};
pub use policy::{policy, set_policy, Policy, PolicyError};

use crate::heap::segment::COMMITTED_BY_NODE;
use crate::heap::size_class::MEDIUM_MAX;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::topology::raw::{self as topo, Raw, MAX_TIERS};
use serde::Serialize;

/// Whether any policy is on (checked before calling `route` or `segment_node`).
pub(crate) static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The largest request the inline bin path serves; lowered below `MEDIUM_MAX` by a size
/// threshold policy so that requests at or over the threshold reach `route`.
pub(crate) static FAST_MAX: AtomicUsize = AtomicUsize::new(MEDIUM_MAX);

/// "Refuse": a node no heap has. `route` returns it when an allocation must fail (a threshold
/// request whose far tier's budget is spent); the heap's `node_alloc` returns null for a node
/// outside its tables.
pub(crate) const REFUSE: u32 = u32::MAX;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO64: AtomicU64 = AtomicU64::new(0);
/// Per tier: allocations (or segments) that spilled out of it because its budget was spent.
pub(crate) static SPILLS: [AtomicU64; MAX_TIERS] = [ZERO64; MAX_TIERS];
/// Per tier: bytes that spilled out of it.
pub(crate) static SPILLED_BYTES: [AtomicU64; MAX_TIERS] = [ZERO64; MAX_TIERS];
/// Per tier: explicit requests refused because its budget was spent.
pub(crate) static REFUSED: [AtomicU64; MAX_TIERS] = [ZERO64; MAX_TIERS];
/// Per tier: bytes the policies routed to it away from the thread's own node.
pub(crate) static ROUTED_BYTES: [AtomicU64; MAX_TIERS] = [ZERO64; MAX_TIERS];
/// Per tier: bytes moved into it from a faster tier (demotion).
pub(crate) static DEMOTED_BYTES: [AtomicU64; MAX_TIERS] = [ZERO64; MAX_TIERS];
/// Per tier: bytes moved into it from a slower tier (promotion).
pub(crate) static PROMOTED_BYTES: [AtomicU64; MAX_TIERS] = [ZERO64; MAX_TIERS];

/// Reads the policy environment variables (called once from `config::read_all`).
pub(crate) fn init() {
    policy::read_env();
}

/// See `FAST_MAX`.
#[inline(always)]
pub(crate) fn fast_max() -> usize {
    FAST_MAX.load(Ordering::Relaxed)
}

/// The largest C request the direct path (`thread::alloc_direct`) serves: `DIRECT_MAX`, or
/// less when `FAST_MAX` is lower.
pub(crate) static DIRECT_MAX: AtomicUsize = AtomicUsize::new(crate::heap::thread::DIRECT_MAX);

/// See `DIRECT_MAX`.
#[inline(always)]
pub(crate) fn direct_max() -> usize {
    DIRECT_MAX.load(Ordering::Relaxed)
}

/// Committed bytes of tier `tier` (the sum over its nodes).
fn tier_bytes(t: &Raw, tier: usize) -> u64 {
    let mut sum = 0u64;
    for n in topo::iter(t.tiers[tier]) {
        sum += COMMITTED_BY_NODE[n].load(Ordering::Relaxed) as u64;
    }
    sum
}

/// The node of tier `tier` nearest to `from` among the nodes the process may use.
fn nearest(t: &Raw, tier: usize, from: u32) -> Option<u32> {
    let set = t.tiers[tier] & t.mems_allowed;
    t.nearest_in(if set != 0 { set } else { t.tiers[tier] }, from as usize)
}

/// Whether tier `tier` can take `size` more bytes within its budget.
fn has_room(t: &Raw, tier: usize, size: usize) -> bool {
    let b = policy::budget_of(tier, t.n_tiers);
    b == u64::MAX || tier_bytes(t, tier).saturating_add(size as u64) <= b
}

/// The ratio rule: whether `size` more bytes should go to the far tier (the slowest) rather
/// than the near one (tier 0) to keep far's share of their committed bytes closest to
/// far / (near + far). Greedy: the choice that leaves the split nearer the target.
fn ratio_wants_far(t: &Raw, size: usize, wn: u32, wf: u32) -> bool {
    let last = t.n_tiers - 1;
    let near = tier_bytes(t, 0) as i128;
    let far = tier_bytes(t, last) as i128;
    let (wn, wf, s) = (wn as i128, wf as i128, size as i128);
    let w = wn + wf;
    let target = wf * (near + far + s);
    let if_far = ((far + s) * w - target).abs();
    let if_near = (far * w - target).abs();
    if_far < if_near
}

/// The tier a request of `size` bytes from a thread on `home` should land in by the ratio and
/// budget rules, or None for "the thread's own node". `size` is a segment for `segment_node`.
fn choose(t: &Raw, size: usize, home: u32) -> Option<u32> {
    let n = t.n_tiers;
    if n == 0 {
        return None;
    }
    let home_tier = t.tier_of(home as usize).unwrap_or(0);
    let mut tier = home_tier;
    let (wn, wf) = policy::ratio();
    if wf != 0 {
        tier = if ratio_wants_far(t, size, wn, wf) {
            n - 1
        } else {
            0
        };
    }
    if policy::any_budget() && !has_room(t, tier, size) {
        // Spill: the next slower tier with room; none: stay on the thread's node (the global
        // allocator never fails because of a budget, except for threshold requests).
        match (tier + 1..n).find(|&k| has_room(t, k, size)) {
            Some(k) => {
                SPILLS[tier].fetch_add(1, Ordering::Relaxed);
                SPILLED_BYTES[tier].fetch_add(size as u64, Ordering::Relaxed);
                tier = k;
            }
            None => tier = home_tier,
        }
    }
    if tier == home_tier {
        return None;
    }
    let node = nearest(t, tier, home)?;
    ROUTED_BYTES[tier].fetch_add(size as u64, Ordering::Relaxed);
    Some(node)
}

/// The node an allocation of `size` bytes at `align` should go to instead of the calling
/// thread's heap, or None to leave it there; `REFUSE` to fail it. Must not allocate.
///
/// Threshold: `size >= threshold` goes to the far tier's node nearest `home` (refused when the
/// far tier's budget cannot take it). Ratio and budgets route only requests over `MEDIUM_MAX`
/// one by one; smaller ones follow the segment they are carved from (`segment_node`).
#[inline]
pub(crate) fn route(size: usize, _align: usize, home: u32) -> Option<u32> {
    let t = topo::get();
    if t.n_tiers == 0 {
        return None;
    }
    let th = policy::THRESHOLD.load(Ordering::Relaxed);
    if th != 0 && size >= th {
        let last = t.n_tiers - 1;
        let node = nearest(t, last, home)?;
        if policy::any_budget() && !has_room(t, last, size) {
            REFUSED[last].fetch_add(1, Ordering::Relaxed);
            return Some(REFUSE);
        }
        if node != home {
            ROUTED_BYTES[last].fetch_add(size as u64, Ordering::Relaxed);
        }
        return Some(node);
    }
    if size <= MEDIUM_MAX {
        return None;
    }
    choose(t, size, home)
}

/// The node a thread heap on `home` maps its next segment on (a spilled node when `home`'s
/// tier budget is spent, the far node when the ratio wants far). Must not allocate.
#[inline]
pub(crate) fn segment_node(home: u32) -> u32 {
    let t = topo::get();
    choose(t, crate::heap::segment::SEGMENT_SIZE, home).unwrap_or(home)
}

/// Whether an explicit request (a `Placed` handle) for `size` bytes on `node` fits its tier's
/// budget; counts a refusal if not. Explicit requests never spill.
pub(crate) fn admit(node: u32, size: usize) -> bool {
    if !policy::any_budget() {
        return true;
    }
    let t = topo::get();
    match t.tier_of(node as usize) {
        Some(tier) if !has_room(t, tier, size) => {
            REFUSED[tier].fetch_add(1, Ordering::Relaxed);
            false
        }
        _ => true,
    }
}

/// One tier in [`stats`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TierStats {
    /// The tier (0 is the fastest).
    pub index: usize,
    /// Its nodes, ascending.
    pub nodes: Vec<u32>,
    /// Bytes of pages and spans the allocator holds on its nodes (`Stats::nodes` summed).
    pub committed_bytes: u64,
    /// Bytes live on its nodes (allocated minus freed, as `Stats::nodes` counts them).
    pub live_bytes: i64,
    /// Its budget (`TIERALLOC_TIER_BUDGET` or [`Policy`]), if any.
    pub budget_bytes: Option<u64>,
    /// Allocations and segments that spilled out of it to a slower tier (budget spent).
    pub spills: u64,
    /// Bytes that spilled out of it.
    pub spilled_bytes: u64,
    /// Explicit requests for it refused because its budget was spent.
    pub refused: u64,
    /// Bytes the policies sent to it away from the allocating thread's node.
    pub routed_bytes: u64,
    /// Bytes moved into it from a faster tier ([`demote`], [`move_to_tier`]).
    pub demoted_bytes: u64,
    /// Bytes moved into it from a slower tier ([`promote`], [`move_to_tier`]).
    pub promoted_bytes: u64,
}

/// Per-tier statistics: committed and live bytes, spills, refusals, routed, demoted and
/// promoted bytes. Allocates its result (call it from ordinary code).
pub fn stats() -> Vec<TierStats> {
    crate::config::init_once();
    let t = topo::get();
    let s = crate::stats::stats();
    (0..t.n_tiers)
        .map(|i| {
            let nodes: Vec<u32> = topo::iter(t.tiers[i]).map(|n| n as u32).collect();
            let live = s
                .nodes
                .iter()
                .filter(|n| nodes.contains(&n.node))
                .map(|n| n.bytes_live)
                .sum();
            let b = policy::budget_of(i, t.n_tiers);
            TierStats {
                index: i,
                committed_bytes: tier_bytes(t, i),
                live_bytes: live,
                budget_bytes: (b != u64::MAX).then_some(b),
                spills: SPILLS[i].load(Ordering::Relaxed),
                spilled_bytes: SPILLED_BYTES[i].load(Ordering::Relaxed),
                refused: REFUSED[i].load(Ordering::Relaxed),
                routed_bytes: ROUTED_BYTES[i].load(Ordering::Relaxed),
                demoted_bytes: DEMOTED_BYTES[i].load(Ordering::Relaxed),
                promoted_bytes: PROMOTED_BYTES[i].load(Ordering::Relaxed),
                nodes,
            }
        })
        .collect()
}
