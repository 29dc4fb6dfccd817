//! Memory tiers: which node (and so which tier) an allocation of the global allocator goes to,
//! moving spans between tiers, and per-tier statistics.
//!
//! Owns: the public tier API: setting and reading the policy (`policy`, which writes the
//! routing state the heap reads in `heap::route`), migration (`migrate`), auto-demotion
//! (`auto`) and the per-tier statistics (below, with the demotion and promotion counters).
//! May touch: `heap` (`route`: the policy state and its counters; `segment`, `huge`: the
//! node of a huge segment that `migrate` moves), `placed` (node checks), `stats`, `init`
//! (start-up), `topology` (the tiers), `sys` (numa, os) and `sync`. Nothing below calls
//! into this module: the heap's allocation paths read `heap::route` only.

pub(crate) mod auto;
pub(crate) mod migrate;
pub(crate) mod policy;

pub use auto::{start_auto_demotion, AutoDemotion, AutoDemotionReport};
pub use migrate::{demote, move_to_node, move_to_tier, promote, MoveReport, TierError};
pub(crate) use migrate::{starts_block, SHARED_MAX};
pub use policy::{policy, set_policy, Policy, PolicyError};

use crate::heap::route::{self, REFUSED, ROUTED_BYTES, SPILLED_BYTES, SPILLS};
use crate::sync::{AtomicU64, Ordering};
use crate::topology::discover;
use crate::topology::raw::{self as topo, MAX_TIERS};
use serde::Serialize;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO64: AtomicU64 = AtomicU64::new(0);
/// Per tier: bytes moved into it from a faster tier (demotion).
pub(crate) static DEMOTED_BYTES: [AtomicU64; MAX_TIERS] = [ZERO64; MAX_TIERS];
/// Per tier: bytes moved into it from a slower tier (promotion).
pub(crate) static PROMOTED_BYTES: [AtomicU64; MAX_TIERS] = [ZERO64; MAX_TIERS];

/// The number of memory tiers of the machine (0 when it has no node with memory known).
pub(crate) fn tier_count() -> usize {
    discover::get().n_tiers
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
    crate::init::init_once();
    stats_of(&crate::stats::stats())
}

/// [`stats`] of the nodes in the snapshot `s`: each tier's live and committed bytes are the
/// sums of its nodes' in `s` (the metrics collector reports both from one snapshot, so a
/// scrape's tier series add up to its node series).
pub(crate) fn stats_of(s: &crate::stats::Stats) -> Vec<TierStats> {
    let t = discover::get();
    (0..t.n_tiers)
        .map(|i| {
            let nodes: Vec<u32> = topo::iter(t.tiers[i]).map(|n| n as u32).collect();
            let of_tier = || s.nodes.iter().filter(|n| nodes.contains(&n.node));
            let live = of_tier().map(|n| n.bytes_live).sum();
            let committed = of_tier().map(|n| n.bytes_committed).sum();
            let b = route::budget_of(i, t.n_tiers);
            TierStats {
                index: i,
                committed_bytes: committed,
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
