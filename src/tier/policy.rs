//! Tier policies for the global allocator: a size threshold, a near:far byte ratio and
//! per-tier capacity budgets, held in atomics so that the allocation paths read them without a
//! lock.
//!
//! Owns: [`Policy`], its checks and [`set_policy`] / [`policy`]. The state itself is the
//! routing core's (`heap::route`), which the allocation paths read; its environment variables
//! (`TIERALLOC_FAR_THRESHOLD`, `TIERALLOC_TIER_RATIO`, `TIERALLOC_TIER_BUDGET`) are read at
//! start-up by `init`. May touch: `heap::route` (writes the policy, reads it back), `init`
//! (start-up first, so that the environment's policy never overwrites one set here) and
//! `topology::raw` and `topology::discover` (the number of tiers tieralloc handles, and this
//! machine's).
//!
//! Changing the policy at run time is sound: every field is one atomic, the hooks only choose
//! a node, and any node choice is a valid allocation. A decision made while [`set_policy`]
//! runs may mix old and new fields; blocks already placed stay where they are.

use crate::heap::route::{self, NONE};
use crate::sync::Ordering;
use crate::topology::raw::MAX_TIERS;
use core::fmt;

/// A policy for the global allocator's placement across tiers (see docs/tiers.md).
///
/// ```
/// use tieralloc::tiers::{set_policy, Policy};
/// let p = Policy { far_threshold: Some(1 << 20), ..Policy::default() };
/// set_policy(&p).unwrap();
/// set_policy(&Policy::default()).unwrap(); // all off again
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Allocations of at least this many bytes go to the far tier (the slowest tier's node
    /// nearest the allocating thread). `TIERALLOC_FAR_THRESHOLD`.
    pub far_threshold: Option<usize>,
    /// Hold committed bytes of the near tier (tier 0) and the far tier (the slowest) at
    /// `near:far`. `TIERALLOC_TIER_RATIO`.
    pub ratio: Option<(u32, u32)>,
    /// Budget of tier 0 in bytes: when spent, the global allocator spills to the next tier
    /// with room; explicit requests (`Placed`) on it fail. `TIERALLOC_TIER_BUDGET=near:..`.
    pub near_budget: Option<u64>,
    /// Budget of the slowest tier: when spent, explicit far requests (`Placed::far`,
    /// `Placed::tier`, threshold routing) fail. `TIERALLOC_TIER_BUDGET=far:..`.
    pub far_budget: Option<u64>,
    /// Budgets by tier index, `(tier, bytes)`. `TIERALLOC_TIER_BUDGET=0:..,1:..`.
    pub tier_budgets: Vec<(usize, u64)>,
}

/// Why [`set_policy`] refused a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// A threshold of 0 bytes.
    ZeroThreshold,
    /// A ratio with a far weight of 0, or weights over 1,000,000.
    BadRatio,
    /// A budget for a tier index this machine does not have (its tiers are
    /// `tieralloc::topology().tiers`; never more than 8).
    BadTier(usize),
    /// A tier given two budgets in `tier_budgets`.
    RepeatedTier(usize),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::ZeroThreshold => f.write_str("a far threshold must be at least 1 byte"),
            PolicyError::BadRatio => f.write_str(
                "a near:far ratio needs a far weight of at least 1 and weights up to 1000000",
            ),
            PolicyError::BadTier(t) => {
                write!(
                    f,
                    "tier {t} cannot have a budget: this machine has no such tier"
                )
            }
            PolicyError::RepeatedTier(t) => write!(f, "tier {t} is given two budgets"),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Replaces the global allocator's tier policy, from now on (the environment's policy, read at
/// the allocator's first use, is replaced entirely). May be called at any time: blocks already
/// allocated stay where they are.
///
/// # Errors
/// A malformed policy (see [`PolicyError`]); nothing changes then.
pub fn set_policy(p: &Policy) -> Result<(), PolicyError> {
    crate::init::init_once();
    if p.far_threshold == Some(0) {
        return Err(PolicyError::ZeroThreshold);
    }
    if let Some((n, f)) = p.ratio {
        if f == 0 || n > 1_000_000 || f > 1_000_000 {
            return Err(PolicyError::BadRatio);
        }
    }
    // Only the tiers this machine has (review of the rev24 leftovers: a budget for tier 5 on
    // two tiers applied to nothing), each once.
    let n_tiers = crate::topology::discover::get().n_tiers.min(MAX_TIERS);
    let mut tiers = [NONE; MAX_TIERS];
    for &(t, b) in &p.tier_budgets {
        if t >= n_tiers {
            return Err(PolicyError::BadTier(t));
        }
        if tiers[t] != NONE {
            return Err(PolicyError::RepeatedTier(t));
        }
        tiers[t] = b;
    }
    route::apply(
        p.far_threshold.unwrap_or(0),
        p.ratio.unwrap_or((0, 0)),
        p.near_budget.unwrap_or(NONE),
        p.far_budget.unwrap_or(NONE),
        &tiers,
    );
    Ok(())
}

/// The policy in force.
pub fn policy() -> Policy {
    crate::init::init_once();
    let th = route::THRESHOLD.load(Ordering::Relaxed);
    let (n, f) = route::ratio();
    let (near, far, tiers) = route::budgets();
    let opt = |v: u64| (v != NONE).then_some(v);
    Policy {
        far_threshold: (th != 0).then_some(th),
        ratio: (f != 0).then_some((n, f)),
        near_budget: opt(near),
        far_budget: opt(far),
        tier_budgets: tiers
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| opt(b).map(|b| (i, b)))
            .collect(),
    }
}
