//! The tier routing core: the policy state the heap's paths read (one relaxed load each when
//! no policy is set) and the allocation-free node choice made from it.
//!
//! Owns: the policy's atomics (threshold, near:far ratio, per-tier budgets, and the derived
//! `ACTIVE`, `FAST_MAX`, `DIRECT_MAX`; and `SCOPED_GATE`, the constant 0 a scoped thread's
//! inline gate reads instead of `FAST_MAX`), [`apply`] (the only writer: `tier::policy` and the
//! start-up in `init` call it), the choice of node for a request or a segment ([`route`],
//! [`segment_node`], [`admit`], [`fits`]), the room explicit requests hold in a budget until
//! their blocks are allocated ([`Reservation`]) and the counters of that choice (spills,
//! refusals, routed bytes). May touch: `heap::{segment, size_class}` (committed bytes per node, sizes), the
//! `DIRECT_MAX` constant of `heap::thread`, `topology::{raw, discover}` (the tiers) and
//! `sync`. A leaf of the heap: nothing here calls into the thread heap. Everything here is
//! allocation-free, panic-free and format-free. The public policy API and the per-tier
//! statistics are in `tier`, above.
//!
//! Changing the policy at run time is sound: every field is one atomic, the hooks only choose
//! a node, and any node choice is a valid allocation. A decision made while [`apply`] runs may
//! mix old and new fields; blocks already placed stay where they are.

use super::segment::{COMMITTED_BY_NODE, SEGMENT_SIZE};
use super::size_class::MEDIUM_MAX;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::topology::discover;
use crate::topology::raw::{self as topo, Raw, MAX_TIERS};
use core::sync::atomic::AtomicU32;

/// Whether any policy is on (checked before calling `route` or `segment_node`).
pub(crate) static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The largest request the inline bin path serves; lowered below `MEDIUM_MAX` by a size
/// threshold policy so that requests at or over the threshold reach `route`.
pub(crate) static FAST_MAX: AtomicUsize = AtomicUsize::new(MEDIUM_MAX);
/// The inline gate of a thread heap with a placement scope active (see
/// `thread::scoped`): 0, so that every request goes to `alloc_generic`. Never written.
pub(crate) static SCOPED_GATE: AtomicUsize = AtomicUsize::new(0);
/// The largest C request the direct path (`thread::alloc_direct`) serves: `DIRECT_MAX`, or
/// less when `FAST_MAX` is lower.
pub(crate) static DIRECT_MAX: AtomicUsize = AtomicUsize::new(super::thread::DIRECT_MAX);

/// "Refuse": a node no heap has. `route` returns it when an allocation must fail (a threshold
/// request whose far tier's budget is spent); the heap's `node_alloc` returns null for a node
/// outside its tables.
pub(crate) const REFUSE: u32 = u32::MAX;

/// "No budget".
pub(crate) const NONE: u64 = u64::MAX;

/// Allocations of at least this many bytes go to the far tier (0: off).
pub(crate) static THRESHOLD: AtomicUsize = AtomicUsize::new(0);
/// near:far weights (far 0: off).
static RATIO_NEAR: AtomicU32 = AtomicU32::new(0);
static RATIO_FAR: AtomicU32 = AtomicU32::new(0);
static BUDGET_NEAR: AtomicU64 = AtomicU64::new(NONE);
static BUDGET_FAR: AtomicU64 = AtomicU64::new(NONE);
#[allow(clippy::declare_interior_mutable_const)]
const NO_BUDGET: AtomicU64 = AtomicU64::new(NONE);
static BUDGET_TIER: [AtomicU64; MAX_TIERS] = [NO_BUDGET; MAX_TIERS];
/// Whether any budget is set (one load on the hooks' path).
static ANY_BUDGET: AtomicBool = AtomicBool::new(false);

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
/// Per tier: bytes of explicit requests admitted within its budget whose blocks are not
/// allocated yet ([`Reservation`]): counted with the committed bytes by every budget check, so
/// that requests checked at once cannot each take the same room (review rev24: eight threads'
/// 8 MiB `Placed::far()` requests against 20 MiB of room were all served).
static PENDING: [AtomicU64; MAX_TIERS] = [ZERO64; MAX_TIERS];

/// An explicit request's room in its tier's budget, held from [`admit`] until its block is
/// allocated (or has failed): dropping it gives the room back to [`PENDING`], where the
/// block's committed bytes, booked by then, take its place.
#[must_use]
pub(crate) struct Reservation {
    /// The tier (`MAX_TIERS`: nothing reserved, no budget applies).
    tier: usize,
    bytes: u64,
}

impl Reservation {
    const NONE: Reservation = Reservation {
        tier: MAX_TIERS,
        bytes: 0,
    };
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(p) = PENDING.get(self.tier) {
            // Release: the block's committed bytes, booked before, are seen by whoever sees
            // the room given back (`has_room` reads PENDING first, with Acquire).
            p.fetch_sub(self.bytes, Ordering::Release);
        }
    }
}

/// In a fork child: the room of every reservation goes back. Only the forking thread exists,
/// and it holds none (a reservation lives inside one allocator call); the others' are of
/// threads the child does not have, which would never drop them (review rev29: their bytes
/// stayed counted as taken by every budget check of the child).
pub(crate) fn forget_reservations_after_fork() {
    for p in PENDING.iter() {
        p.store(0, Ordering::Relaxed);
    }
}

/// A reservation of `bytes` in tier `tier`'s pending room with no budget check, for the tests
/// of what a fork child makes of a thread's reservation.
#[cfg(test)]
pub(crate) fn reserve_for_test(tier: usize, bytes: u64) -> Reservation {
    PENDING[tier].fetch_add(bytes, Ordering::AcqRel);
    Reservation { tier, bytes }
}

/// Tier `tier`'s pending room (see [`PENDING`]), for tests.
#[cfg(test)]
pub(crate) fn pending(tier: usize) -> u64 {
    PENDING[tier].load(Ordering::Acquire)
}

/// Whether a block of `old` bytes reallocated to `new` crosses the size threshold upwards
/// (from under it to it or past it): then it must not grow in place but be placed anew, as a
/// request of `new` bytes would be. One relaxed load.
#[inline]
pub(crate) fn crosses_threshold(old: usize, new: usize) -> bool {
    let th = THRESHOLD.load(Ordering::Relaxed);
    th != 0 && old < th && new >= th
}

/// See `FAST_MAX`.
#[inline(always)]
pub(crate) fn fast_max() -> usize {
    FAST_MAX.load(Ordering::Relaxed)
}

/// See `DIRECT_MAX`.
#[inline(always)]
pub(crate) fn direct_max() -> usize {
    DIRECT_MAX.load(Ordering::Relaxed)
}

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

/// The budgets as set: near, far and by tier index (`NONE`: no budget).
pub(crate) fn budgets() -> (u64, u64, [u64; MAX_TIERS]) {
    let mut tiers = [NONE; MAX_TIERS];
    for (t, b) in tiers.iter_mut().zip(&BUDGET_TIER) {
        *t = b.load(Ordering::Relaxed);
    }
    (
        BUDGET_NEAR.load(Ordering::Relaxed),
        BUDGET_FAR.load(Ordering::Relaxed),
        tiers,
    )
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

/// Replaces the whole policy: a size threshold (0: off), near:far weights (far 0: off) and
/// the budgets (`NONE`: none). The values are checked by the caller.
pub(crate) fn apply(
    threshold: usize,
    ratio: (u32, u32),
    near: u64,
    far: u64,
    tiers: &[u64; MAX_TIERS],
) {
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
    DIRECT_MAX.store(super::thread::DIRECT_MAX.min(fast_max()), Ordering::Relaxed);
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

/// Committed bytes of tier `tier` (the sum over its nodes).
pub(crate) fn tier_bytes(t: &Raw, tier: usize) -> u64 {
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

/// Whether tier `tier` can take `size` more bytes within its budget (the room reserved by
/// admitted requests counted as taken).
fn has_room(t: &Raw, tier: usize, size: usize) -> bool {
    let b = budget_of(tier, t.n_tiers);
    if b == u64::MAX {
        return true;
    }
    let pending = PENDING[tier].load(Ordering::Acquire);
    tier_bytes(t, tier)
        .saturating_add(pending)
        .saturating_add(size as u64)
        <= b
}

/// Reserves `size` bytes of tier `tier`'s budget if it has the room (see [`Reservation`]).
fn reserve(t: &Raw, tier: usize, size: usize) -> Option<Reservation> {
    let b = budget_of(tier, t.n_tiers);
    if b == u64::MAX {
        return Some(Reservation::NONE);
    }
    let mut pending = PENDING[tier].load(Ordering::Acquire);
    loop {
        let want = tier_bytes(t, tier)
            .saturating_add(pending)
            .saturating_add(size as u64);
        if want > b {
            return None;
        }
        match PENDING[tier].compare_exchange_weak(
            pending,
            pending + size as u64,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                return Some(Reservation {
                    tier,
                    bytes: size as u64,
                })
            }
            Err(now) => pending = now,
        }
    }
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
    let (wn, wf) = ratio();
    if wf != 0 {
        tier = if ratio_wants_far(t, size, wn, wf) {
            n - 1
        } else {
            0
        };
    }
    if any_budget() && !has_room(t, tier, size) {
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
pub(crate) fn route(size: usize, align: usize, home: u32) -> Option<u32> {
    route_in(size, align, home, true)
}

/// [`route`] with no refusal counted (the caller makes room and asks again).
#[inline]
pub(crate) fn try_route(size: usize, align: usize, home: u32) -> Option<u32> {
    route_in(size, align, home, false)
}

#[inline]
fn route_in(size: usize, _align: usize, home: u32, count: bool) -> Option<u32> {
    let t = discover::get();
    if t.n_tiers == 0 {
        return None;
    }
    let th = THRESHOLD.load(Ordering::Relaxed);
    if th != 0 && size >= th {
        let last = t.n_tiers - 1;
        let node = nearest(t, last, home)?;
        if any_budget() && !has_room(t, last, size) {
            if count {
                REFUSED[last].fetch_add(1, Ordering::Relaxed);
            }
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

/// The nodes of the far tier (the slowest), where threshold requests go.
pub(crate) fn far_tier_nodes() -> u64 {
    let t = discover::get();
    t.n_tiers.checked_sub(1).map_or(0, |last| t.tiers[last])
}

/// The nodes of `node`'s tier (none if it is in no tier).
pub(crate) fn tier_nodes_of(node: u32) -> u64 {
    let t = discover::get();
    t.tier_of(node as usize).map_or(0, |k| t.tiers[k])
}

/// Whether `size` more bytes on `node` would spill: its tier's budget cannot take them and
/// a slower tier's can take a new segment (so that [`segment_node`] sends one there, rather
/// than map it on `node` after all). A thread heap
/// asks it before it makes a page in a segment of `node` it already holds (review rev24:
/// pages made in the free slices of a thread's own segments took the near tier 47 MiB past
/// its budget, only a new segment having asked). False when no budget is set (one relaxed
/// load), and when no tier has room (the heap then uses what it holds).
pub(crate) fn would_spill(node: u32, size: usize) -> bool {
    if !any_budget() {
        return false;
    }
    let t = discover::get();
    match t.tier_of(node as usize) {
        Some(tier) => {
            let seg = size.max(SEGMENT_SIZE);
            !has_room(t, tier, size) && (tier + 1..t.n_tiers).any(|k| has_room(t, k, seg))
        }
        None => false,
    }
}

/// The node a thread heap on `home` maps its next segment on (a spilled node when `home`'s
/// tier budget is spent, the far node when the ratio wants far). Must not allocate.
#[inline]
pub(crate) fn segment_node(home: u32) -> u32 {
    let t = discover::get();
    choose(t, SEGMENT_SIZE, home).unwrap_or(home)
}

/// Whether an explicit request (a `Placed` handle) for `size` bytes on `node` fits its tier's
/// budget: if so, its room, held until the returned reservation is dropped (after the block
/// is allocated); if not, None and a refusal counted. Explicit requests never spill.
pub(crate) fn admit(node: u32, size: usize) -> Option<Reservation> {
    let r = try_admit(node, size);
    if r.is_none() {
        if let Some(tier) = discover::get().tier_of(node as usize) {
            REFUSED[tier].fetch_add(1, Ordering::Relaxed);
        }
    }
    r
}

/// [`admit`] with no refusal counted.
pub(crate) fn try_admit(node: u32, size: usize) -> Option<Reservation> {
    if !any_budget() {
        return Some(Reservation::NONE);
    }
    let t = discover::get();
    match t.tier_of(node as usize) {
        Some(tier) => reserve(t, tier, size),
        None => Some(Reservation::NONE),
    }
}

/// [`admit`]'s test, with no refusal counted: whether `size` more bytes on `node` fit its
/// tier's budget (always, with no budget set).
pub(crate) fn fits(node: u32, size: usize) -> bool {
    if !any_budget() {
        return true;
    }
    let t = discover::get();
    match t.tier_of(node as usize) {
        Some(tier) => has_room(t, tier, size),
        None => true,
    }
}
