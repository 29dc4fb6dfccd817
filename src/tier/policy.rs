//! Tier policies for the global allocator: a size threshold, a near:far byte ratio and
//! per-tier capacity budgets, held in atomics so that the allocation paths read them without a
//! lock.
//!
//! Owns: the policy state, its environment variables (`TIERALLOC_FAR_THRESHOLD`,
//! `TIERALLOC_TIER_RATIO`, `TIERALLOC_TIER_BUDGET`) and [`set_policy`]. May touch: `config`
//! (getenv, warnings) and the `tier` statics (`ACTIVE`, `FAST_MAX`). Reading the environment
//! allocates nothing (it runs inside the allocator's first call).
//!
//! Changing the policy at run time is sound: every field is one atomic, the hooks only choose
//! a node, and any node choice is a valid allocation. A decision made while [`set_policy`]
//! runs may mix old and new fields; blocks already placed stay where they are.

use super::{ACTIVE, FAST_MAX};
use crate::config::{getenv, trim, warn_bad};
use crate::heap::size_class::MEDIUM_MAX;
use crate::sync::{AtomicU64, AtomicUsize, Ordering};
use crate::topology::raw::MAX_TIERS;
use core::fmt;
use core::sync::atomic::AtomicU32;

/// Allocations of at least this many bytes go to the far tier (0: off).
pub(crate) static THRESHOLD: AtomicUsize = AtomicUsize::new(0);
/// near:far weights (far 0: off).
static RATIO_NEAR: AtomicU32 = AtomicU32::new(0);
static RATIO_FAR: AtomicU32 = AtomicU32::new(0);
const NONE: u64 = u64::MAX;
static BUDGET_NEAR: AtomicU64 = AtomicU64::new(NONE);
static BUDGET_FAR: AtomicU64 = AtomicU64::new(NONE);
#[allow(clippy::declare_interior_mutable_const)]
const NO_BUDGET: AtomicU64 = AtomicU64::new(NONE);
static BUDGET_TIER: [AtomicU64; MAX_TIERS] = [NO_BUDGET; MAX_TIERS];
/// Whether any budget is set (one load on the hooks' path).
static ANY_BUDGET: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The near:far weights; far is 0 when the ratio policy is off.
pub(crate) fn ratio() -> (u32, u32) {
    (
        RATIO_NEAR.load(Ordering::Relaxed),
        RATIO_FAR.load(Ordering::Relaxed),
    )
}

/// Whether any budget is set.
#[inline]
pub(crate) fn any_budget() -> bool {
    ANY_BUDGET.load(Ordering::Relaxed)
}

/// The budget of tier `tier` of `n` (u64::MAX: none): the smallest of its per-index budget,
/// the near budget (tier 0) and the far budget (the last tier).
pub(crate) fn budget_of(tier: usize, n: usize) -> u64 {
    let mut b = BUDGET_TIER
        .get(tier)
        .map_or(NONE, |a| a.load(Ordering::Relaxed));
    if tier == 0 {
        b = b.min(BUDGET_NEAR.load(Ordering::Relaxed));
    }
    if n > 0 && tier == n - 1 {
        b = b.min(BUDGET_FAR.load(Ordering::Relaxed));
    }
    b
}

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
    /// A budget for a tier index of 8 or more.
    BadTier(usize),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::ZeroThreshold => f.write_str("a far threshold must be at least 1 byte"),
            PolicyError::BadRatio => f.write_str(
                "a near:far ratio needs a far weight of at least 1 and weights up to 1000000",
            ),
            PolicyError::BadTier(t) => write!(
                f,
                "tier {t} cannot have a budget: tieralloc handles tiers 0 to {}",
                MAX_TIERS - 1
            ),
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
    crate::config::init_once();
    if p.far_threshold == Some(0) {
        return Err(PolicyError::ZeroThreshold);
    }
    if let Some((n, f)) = p.ratio {
        if f == 0 || n > 1_000_000 || f > 1_000_000 {
            return Err(PolicyError::BadRatio);
        }
    }
    if let Some(&(t, _)) = p.tier_budgets.iter().find(|(t, _)| *t >= MAX_TIERS) {
        return Err(PolicyError::BadTier(t));
    }
    let mut tiers = [NONE; MAX_TIERS];
    for &(t, b) in &p.tier_budgets {
        tiers[t] = tiers[t].min(b);
    }
    apply(
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
    crate::config::init_once();
    let th = THRESHOLD.load(Ordering::Relaxed);
    let (n, f) = ratio();
    let opt = |v: u64| (v != NONE).then_some(v);
    Policy {
        far_threshold: (th != 0).then_some(th),
        ratio: (f != 0).then_some((n, f)),
        near_budget: opt(BUDGET_NEAR.load(Ordering::Relaxed)),
        far_budget: opt(BUDGET_FAR.load(Ordering::Relaxed)),
        tier_budgets: BUDGET_TIER
            .iter()
            .enumerate()
            .filter_map(|(i, b)| opt(b.load(Ordering::Relaxed)).map(|b| (i, b)))
            .collect(),
    }
}

fn apply(threshold: usize, ratio: (u32, u32), near: u64, far: u64, tiers: &[u64; MAX_TIERS]) {
    // Off first, so that no decision sees a half-written policy as a complete one for long.
    ACTIVE.store(false, Ordering::Relaxed);
    THRESHOLD.store(threshold, Ordering::Relaxed);
    FAST_MAX.store(
        if threshold == 0 {
            MEDIUM_MAX
        } else {
            MEDIUM_MAX.min(threshold - 1)
        },
        Ordering::Relaxed,
    );
    super::DIRECT_MAX.store(
        crate::heap::thread::DIRECT_MAX.min(super::fast_max()),
        Ordering::Relaxed,
    );
    RATIO_NEAR.store(ratio.0, Ordering::Relaxed);
    RATIO_FAR.store(ratio.1, Ordering::Relaxed);
    BUDGET_NEAR.store(near, Ordering::Relaxed);
    BUDGET_FAR.store(far, Ordering::Relaxed);
    let mut any = near != NONE || far != NONE;
    for (a, &b) in BUDGET_TIER.iter().zip(tiers) {
        a.store(b, Ordering::Relaxed);
        any |= b != NONE;
    }
    ANY_BUDGET.store(any, Ordering::Relaxed);
    ACTIVE.store(threshold != 0 || ratio.1 != 0 || any, Ordering::Release);
}

// ---------------------------------------------------------------------------------------------
// Environment (allocation-free parsing).

/// A byte count: digits with an optional binary suffix K, M, G or T (case-insensitive, an
/// optional trailing "iB"/"B").
pub(crate) fn parse_size(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    let digits = v.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let n = crate::config::parse_u64(&v[..digits])?;
    let mut rest = &v[digits..];
    if rest.len() == 3 && rest[1..].eq_ignore_ascii_case(b"ib") {
        rest = &rest[..1];
    } else if rest.last().is_some_and(|c| c.eq_ignore_ascii_case(&b'b')) {
        rest = &rest[..rest.len() - 1];
    }
    let shift = match rest {
        b"" => 0,
        b"k" | b"K" => 10,
        b"m" | b"M" => 20,
        b"g" | b"G" => 30,
        b"t" | b"T" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// "near:far" weights, far at least 1.
pub(crate) fn parse_ratio(v: &[u8]) -> Option<(u32, u32)> {
    let v = trim(v);
    let i = v.iter().position(|&c| c == b':')?;
    let n = crate::config::parse_u64(&v[..i])?;
    let f = crate::config::parse_u64(&v[i + 1..])?;
    if f == 0 || n > 1_000_000 || f > 1_000_000 {
        return None;
    }
    Some((n as u32, f as u32))
}

/// Parsed budgets: near, far, by index.
pub(crate) type Budgets = (u64, u64, [u64; MAX_TIERS]);

/// "near:2G,far:8G" or "0:2G,1:8G" (any mix, at least one entry).
pub(crate) fn parse_budgets(v: &[u8]) -> Option<Budgets> {
    let v = trim(v);
    if v.is_empty() {
        return None;
    }
    let (mut near, mut far, mut tiers) = (NONE, NONE, [NONE; MAX_TIERS]);
    for item in v.split(|&c| c == b',') {
        let item = trim(item);
        let i = item.iter().position(|&c| c == b':')?;
        let (key, val) = (trim(&item[..i]), parse_size(&item[i + 1..])?);
        if key.eq_ignore_ascii_case(b"near") {
            near = val;
        } else if key.eq_ignore_ascii_case(b"far") {
            far = val;
        } else {
            let t = crate::config::parse_u64(key)? as usize;
            if t >= MAX_TIERS {
                return None;
            }
            tiers[t] = val;
        }
    }
    Some((near, far, tiers))
}

/// Reads the three variables; a malformed one gives one warning and stays off.
pub(crate) fn read_env() {
    let mut threshold = 0usize;
    if let Some(v) = getenv(b"TIERALLOC_FAR_THRESHOLD\0") {
        match parse_size(v) {
            Some(n) if n >= 1 && n <= isize::MAX as u64 => threshold = n as usize,
            _ => warn_bad(
                b"TIERALLOC_FAR_THRESHOLD\0",
                v,
                "a size in bytes of at least 1, such as 1048576 or 1M",
            ),
        }
    }
    let mut ratio = (0, 0);
    if let Some(v) = getenv(b"TIERALLOC_TIER_RATIO\0") {
        match parse_ratio(v) {
            Some(r) => ratio = r,
            None => warn_bad(
                b"TIERALLOC_TIER_RATIO\0",
                v,
                "near:far weights such as 1:4, far at least 1",
            ),
        }
    }
    let (mut near, mut far, mut tiers) = (NONE, NONE, [NONE; MAX_TIERS]);
    if let Some(v) = getenv(b"TIERALLOC_TIER_BUDGET\0") {
        match parse_budgets(v) {
            Some(b) => (near, far, tiers) = b,
            None => warn_bad(
                b"TIERALLOC_TIER_BUDGET\0",
                v,
                "tier:size pairs such as near:2G,far:8G or 0:2G,1:8G",
            ),
        }
    }
    apply(threshold, ratio, near, far, &tiers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ratios_and_budgets_parse() {
        assert_eq!(parse_size(b"1048576"), Some(1 << 20));
        assert_eq!(parse_size(b"1M"), Some(1 << 20));
        assert_eq!(parse_size(b" 2g "), Some(2 << 30));
        assert_eq!(parse_size(b"8GiB"), Some(8 << 30));
        assert_eq!(parse_size(b"64KB"), Some(64 << 10));
        assert_eq!(parse_size(b"12B"), Some(12));
        assert_eq!(parse_size(b"x"), None);
        assert_eq!(parse_size(b"1Q"), None);
        assert_eq!(parse_size(b"99999999999T"), None);
        assert_eq!(parse_ratio(b"1:4"), Some((1, 4)));
        assert_eq!(parse_ratio(b"0:1"), Some((0, 1)));
        assert_eq!(parse_ratio(b"1:0"), None);
        assert_eq!(parse_ratio(b"14"), None);
        let (n, f, t) = parse_budgets(b"near:2G,far:8G").unwrap();
        assert_eq!((n, f), (2 << 30, 8 << 30));
        assert!(t.iter().all(|b| *b == NONE));
        let (n, _, t) = parse_budgets(b"0:1M, 1:3M").unwrap();
        assert_eq!((n, t[0], t[1]), (NONE, 1 << 20, 3 << 20));
        assert!(parse_budgets(b"mid:1G").is_none());
        assert!(parse_budgets(b"9:1G").is_none());
        assert!(parse_budgets(b"").is_none());
    }
}
