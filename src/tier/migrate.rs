//! Demotion and promotion: moving a span's pages to another node or tier, keeping its
//! addresses and contents (mbind with MPOL_BIND | MPOL_MF_MOVE), and reporting what moved.
//!
//! Owns: [`MoveReport`], [`TierError`] and the move functions. May touch: `sys::numa`
//! (mbind, move_pages), `sys::os` (the page size, splitting a transparent huge page),
//! `topology` (tiers), `placed` (node checks), `sync` (the lock that lets one large block
//! move at a time, and its fork handlers), `heap::{segment, huge}` (a huge block's
//! segment: its node and tier fields and the committed bytes per node, so that the heap's
//! bookkeeping follows the move; the claim that keeps it from being freed meanwhile; a large
//! block's page: where its memory is, `moved`), `heap::thread` (a moved huge block's live
//! bytes, and its label's, booked on its new node), `heap::route` (the target tier's budget),
//! `init` (start-up) and the `tier` counters.
//! Allocation-free.
//!
//! What can move: a huge block of the global allocator or of a `Placed` handle (over 2 MiB:
//! it has a mapping of its own, which moves whole and stays bound to its new node), a large
//! block (its own run of slices in a shared segment: its page remembers the node, and the
//! heap drops and rebinds the slices when they are given back), and any memory that is not
//! tieralloc's (a mapping of the caller's, an interleaved `Placed` block). Smaller blocks
//! share their pages with other blocks and are refused.
//!
//! Invariant: a move changes the node of the span's pages only. The kernel moves a
//! transparent huge page whole, so a huge page that the span shares with other memory (a
//! large block's neighbours in its segment) is split first, and a large block's neighbours
//! that went along anyway are moved back, each to the node it was on ([`Neighbours`]; one
//! large-block move at a time, [`LARGE_MOVES`]); tests/tier_thp.rs, the unit tests below, and
//! the VM's `map-after-demotions-100-percent-on-node-0`.

use super::{DEMOTED_BYTES, PROMOTED_BYTES};
use crate::heap::huge;
use crate::heap::segment::{self, SegmentKind};
use crate::placed::{Placed, PlacementError};
use crate::sync::{
    register_once, AtomicU8, ForkOnceCell, Ordering, SpinGuard, SpinLock, NOT_REGISTERED,
    REGISTERED,
};
use crate::sys::numa;
use crate::sys::os::{self, OS_PAGE, THP_SIZE};
use crate::topology::discover;
use crate::topology::raw::{MAX_NODES, MAX_TIERS};
use core::fmt;

/// What a move did, page by page (OS pages of the span widened to whole pages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoveReport {
    /// The node the span was moved to.
    pub node: u32,
    /// Pages in the span.
    pub pages: usize,
    /// Pages that were elsewhere and are now on `node`.
    pub moved: usize,
    /// Pages that were on `node` already.
    pub already: usize,
    /// Pages never touched (they land on `node` when first touched).
    pub not_present: usize,
    /// Pages that are present and still not on `node` (the kernel could not move them:
    /// `node` is full, or they are shared with another process).
    pub failed: usize,
}

/// Why a span could not be moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TierError {
    /// The node cannot take placements (see [`PlacementError`]).
    Placement(PlacementError),
    /// The tier does not exist.
    NoSuchTier {
        /// The tier asked for.
        tier: usize,
        /// How many tiers there are.
        tiers: usize,
    },
    /// The span is a block that shares its pages with other blocks (64 KiB or less), or not a
    /// whole block: only whole large and huge blocks, and memory that is not tieralloc's, can
    /// move.
    SharedSegment,
    /// The span is empty or wraps around the address space.
    BadSpan,
    /// The kernel refused (an errno: EFAULT or ENOMEM for unmapped memory, EPERM, ENOSYS).
    Os(i32),
    /// The span is a block of the allocator whose committed bytes the target node's tier
    /// cannot take within its budget (`TIERALLOC_TIER_BUDGET`, [`Policy`](super::Policy)).
    OverBudget {
        /// The target tier.
        tier: usize,
    },
}

impl fmt::Display for TierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TierError::Placement(e) => e.fmt(f),
            TierError::NoSuchTier { tier, tiers } => write!(
                f,
                "memory tier {tier} does not exist (this machine has {tiers} tier{})",
                if *tiers == 1 { "" } else { "s" }
            ),
            TierError::SharedSegment => f.write_str(
                "the span is a block of 64 KiB or less (its pages hold other blocks too) or \
                 not a whole block; only whole large and huge blocks and memory that is not \
                 tieralloc's can move between tiers (allocate small data with Placed::far or \
                 Placed::tier instead)",
            ),
            TierError::BadSpan => f.write_str("the span is empty or wraps around"),
            TierError::Os(e) => write!(
                f,
                "the kernel refused to move the pages: {}",
                std::io::Error::from_raw_os_error(*e)
            ),
            TierError::OverBudget { tier } => write!(
                f,
                "memory tier {tier} cannot take the block within its budget"
            ),
        }
    }
}

impl std::error::Error for TierError {}

/// Blocks up to this size share their pages with other blocks: a move refuses them
/// ([`TierError::SharedSegment`]).
pub(crate) const SHARED_MAX: usize = crate::heap::size_class::MEDIUM_MAX;

/// Whether `p` is where a large or huge block of ours starts, the span [`move_to_node`] moves
/// whole for it (a huge block's mapping, a large block's slices). A piece of such a block that
/// another allocator carved out of it (a `bumpalo::Bump`'s chunk) does not start it, unless it
/// happens to be the block's first piece.
///
/// # Safety
/// `p` points into a live block of ours (`segment::contains(p)`), not freed while this runs.
pub(crate) unsafe fn starts_block(p: *const u8) -> bool {
    let seg = segment::segment_of(p);
    // SAFETY: `p` lies in a live block (contract), so its segment header and, for a normal
    // segment, its page's descriptor were written before the block was handed out; plain
    // reads of fields that do not change while it lives.
    unsafe {
        if (*seg).kind == SegmentKind::Huge {
            return core::ptr::eq(p, huge::object(seg));
        }
        let page = segment::page_of(seg, p);
        (*page).kind == segment::PageKind::Large as u8 && core::ptr::eq(p, (*page).start())
    }
}

/// Pages of a transparent huge page: at most this many of a large block's neighbours share
/// one with its first or last page.
const SIDE: usize = THP_SIZE / OS_PAGE;

/// The pages of a large block's segment that share a transparent huge page with the block's
/// first or last page (the rest of the 2 MiB units its edges fall in), and the node of each
/// before the block moved: the kernel moves a huge page whole, so if it could not split one
/// (`os::split_huge_page_at`), a move of the block takes these pages along, other blocks and
/// free slices that the heap books on the segment's node. [`Neighbours::restore`] moves them
/// back. Allocation-free (on the stack).
struct Neighbours {
    /// Per side: first page, number of pages, each page's node (or a negative errno).
    sides: [(usize, usize, [i32; SIDE]); 2],
}

impl Neighbours {
    /// Where the neighbours of the block `[start, end)` of the segment at `seg` are now.
    fn record(seg: usize, start: usize, end: usize) -> Self {
        let lo = (start & !(THP_SIZE - 1)).max(seg);
        let hi = ((end + THP_SIZE - 1) & !(THP_SIZE - 1)).min(seg + segment::SEGMENT_SIZE);
        let mut n = Neighbours {
            sides: [
                (lo, (start - lo) / OS_PAGE, [-1; SIDE]),
                (end, (hi - end) / OS_PAGE, [-1; SIDE]),
            ],
        };
        for (first, count, was) in &mut n.sides {
            if *count > 0 && census(*first, *first + *count * OS_PAGE, |i, s| was[i] = s).is_err() {
                *count = 0;
            }
        }
        n
    }

    /// Moves every neighbour that was elsewhere and is now on `node` (taken along by the move
    /// of the block) back where it was, and no other page: one not present at the record, or
    /// first touched since, stays where it is. If the block still shares a huge page with it,
    /// the block's pages there go back too, and its census counts them as failed.
    fn restore(&self, node: i32) {
        for (first, count, was) in &self.sides {
            let mut now = [-1; SIDE];
            if *count == 0 || census(*first, *first + *count * OS_PAGE, |i, s| now[i] = s).is_err()
            {
                continue;
            }
            let mut addrs = [core::ptr::null_mut::<libc::c_void>(); SIDE];
            let mut to = [0; SIDE];
            let mut k = 0;
            for (i, w) in taken_along(&was[..*count], &now[..*count], node) {
                addrs[k] = (*first + i * OS_PAGE) as *mut libc::c_void;
                to[k] = w;
                k += 1;
            }
            if k > 0 {
                let mut status = [0; SIDE];
                let _ = numa::move_pages(&addrs[..k], Some(&to[..k]), &mut status[..k]);
            }
        }
    }
}

/// The neighbours a move to `node` took along, from their nodes at the record (`was`) and
/// now (`now`), each with the node to send it back to: the pages that were present on
/// another node and are on `node` now. Pages not present at the record (or not now), and
/// pages that did not come to `node`, are left out.
fn taken_along<'a>(
    was: &'a [i32],
    now: &'a [i32],
    node: i32,
) -> impl Iterator<Item = (usize, i32)> + 'a {
    was.iter()
        .zip(now)
        .enumerate()
        .filter(move |&(_, (&w, &n))| w >= 0 && w != node && n == node)
        .map(|(i, (&w, _))| (i, w))
}

/// One large-block move at a time, from the record of its neighbours through their restore:
/// otherwise a move could record a neighbour that another move is moving (a large block of
/// the same segment) and then "restore" it to where it was before that move, leaving its
/// memory where its page no longer says. Held across system calls only (nothing under it
/// allocates); the tiers API, never the allocation path, takes it.
static LARGE_MOVES: SpinLock = SpinLock::new();

/// Takes [`LARGE_MOVES`], after registering (once, before anyone takes it) fork handlers that
/// hold it across a `fork`, so that a child never inherits it held by a thread it lacks.
fn lock_large_moves() -> SpinGuard<'static> {
    extern "C" fn prepare() {
        // Registered, as this runs (see `sync::register_once`).
        HANDLERS.store(REGISTERED, Ordering::Relaxed);
        LARGE_MOVES.lock_raw();
    }
    extern "C" fn release() {
        LARGE_MOVES.unlock_raw();
    }
    static HANDLERS: AtomicU8 = AtomicU8::new(NOT_REGISTERED);
    // Not std's `Once`: a fork child whose parent's thread was registering them would wait
    // for it forever (review rev29); this one registers them in the child if they were not.
    static FORK_HANDLERS: ForkOnceCell<()> = ForkOnceCell::new();
    FORK_HANDLERS.get_or_init(|| register_once(&HANDLERS, prepare, release, release));
    LARGE_MOVES.lock()
}

/// Calls `f(page_index, node_or_negative_errno)` for every page of `[start, end)`.
fn census(start: usize, end: usize, mut f: impl FnMut(usize, i32)) -> Result<(), i32> {
    numa::move_pages_batched(start, (end - start) / OS_PAGE, None, |i, s| {
        f(i, s);
        Ok(())
    })
}

/// Moves every page of `[ptr, ptr+len)` (widened to whole pages) to NUMA node `node`,
/// keeping addresses and contents, and binds it there for pages touched later. For a huge
/// tieralloc block (pass its start), its whole mapping moves and the allocator books it on
/// `node` from now on.
///
/// # Safety
/// The span must be memory of this process that the caller owns and that nobody frees,
/// resizes or moves while this runs; for memory that is not tieralloc's, the caller owns the
/// whole widened page range (its placement policy is replaced).
///
/// # Errors
/// [`TierError`]: the node cannot take placements, the span is in a shared segment, the span
/// is one of the allocator's blocks and the node's tier cannot take it within its budget
/// (`OverBudget`), or the kernel refused.
pub unsafe fn move_to_node(ptr: *mut u8, len: usize, node: u32) -> Result<MoveReport, TierError> {
    if segment::contains(ptr) {
        let seg = segment::segment_of(ptr);
        // SAFETY: `ptr` lies in a live segment of ours, whose header is mapped.
        if unsafe { (*seg).kind } == SegmentKind::Huge {
            // Hold the block's registry claim, so that the automatic demoter does not move
            // it at the same time (both would book its bytes on their target node).
            // SAFETY: the caller owns the block (contract), so it is not freed meanwhile.
            return unsafe { huge::with_claim(seg, || move_to_node_claimed(ptr, len, node)) };
        }
    }
    // SAFETY: forwarded contract.
    unsafe { move_to_node_claimed(ptr, len, node) }
}

/// [`move_to_node`] for a caller that holds a huge block's registry claim already (the
/// automatic demoter), or for any other span.
///
/// # Safety
/// As [`move_to_node`].
pub(crate) unsafe fn move_to_node_claimed(
    ptr: *mut u8,
    len: usize,
    node: u32,
) -> Result<MoveReport, TierError> {
    Placed::node(node).map_err(TierError::Placement)?;
    if len == 0 {
        return Err(TierError::BadSpan);
    }
    let end = (ptr as usize)
        .checked_add(len)
        .and_then(|e| e.checked_add(OS_PAGE - 1))
        .ok_or(TierError::BadSpan)?
        & !(OS_PAGE - 1);
    let mut start = ptr as usize & !(OS_PAGE - 1);
    let mut end = end;
    let mut huge: *mut segment::Segment = core::ptr::null_mut();
    let mut large: *mut segment::Page = core::ptr::null_mut();
    let mut large_seg = 0usize;
    if segment::contains(ptr) {
        let seg = segment::segment_of(ptr);
        // SAFETY: `ptr` lies in a live segment of ours (contains), whose header is mapped;
        // the caller owns the block, so nobody frees or resizes it meanwhile.
        let (kind, map_size) = unsafe { ((*seg).kind, (*seg).map_size) };
        if kind == SegmentKind::Huge {
            if (ptr as usize).saturating_add(len) > seg as usize + map_size {
                return Err(TierError::SharedSegment);
            }
            // The whole mapping: it holds this block only.
            start = seg as usize;
            end = seg as usize + map_size;
            huge = seg;
        } else {
            // A large block (a run of slices holding this block only) can move: the page
            // remembers it, and when it is given back its slices are purged and bound to the
            // segment's node again. Anything smaller shares its pages with other blocks.
            // SAFETY: as above; `ptr` is a live block of a normal segment.
            let page = unsafe { segment::page_of(seg, ptr) };
            // SAFETY: the page descriptor of a live block is valid; these fields were written
            // when the block was allocated.
            let (pkind, pstart, bsize) = unsafe {
                (
                    (*page).kind,
                    (*page).start() as usize,
                    (*page).block_size as usize,
                )
            };
            if pkind != segment::PageKind::Large as u8 || ptr as usize != pstart || len > bsize {
                return Err(TierError::SharedSegment);
            }
            start = pstart;
            end = pstart + bsize;
            large = page;
            large_seg = seg as usize;
        }
    }
    let t = discover::get();
    let tier_of = |n: i32| -> Option<usize> {
        if n >= 0 && (n as usize) < MAX_NODES {
            t.tier_of(n as usize)
        } else {
            None
        }
    };
    let target_tier = tier_of(node as i32);
    let pages = (end - start) / OS_PAGE;
    let mut r = MoveReport {
        node,
        pages,
        ..MoveReport::default()
    };
    // With simulated nodes nothing was ever bound, so the kernel reports the real node: a
    // page that is present counts as on the node the allocator booked it on (a huge block's
    // node, a large block's current node), and after the move as on `node`.
    let sim = numa::simulated();
    let booked: Option<i32> = if !huge.is_null() {
        // SAFETY: the caller owns the huge block (and holds its claim), so its header is live.
        Some(unsafe { (*huge).node } as i32)
    } else if !large.is_null() {
        // SAFETY: the caller owns the large block, so its page and segment are live.
        Some(unsafe {
            match (*large).moved {
                0 => (*(*large).segment()).node as i32,
                m => m as i32 - 1,
            }
        })
    } else {
        None
    };
    // A budget caps the target tier's committed bytes, and a move of one of our blocks takes
    // its committed bytes there (memory that is not ours is counted nowhere): refused when
    // they do not fit (review rev24: a demotion took the far tier 7.5 MiB past its budget).
    if let (Some(tt), Some(from)) = (target_tier, booked) {
        let bytes = if huge.is_null() {
            end - start
        } else {
            // SAFETY: as above.
            unsafe { (*huge).map_size }
        };
        if tier_of(from) != Some(tt) && !crate::heap::route::fits(node, bytes) {
            return Err(TierError::OverBudget { tier: tt });
        }
    }
    let before = |s: i32| {
        if sim && s >= 0 {
            booked.unwrap_or(s)
        } else {
            s
        }
    };
    let after = |s: i32| if sim && s >= 0 { node as i32 } else { s };
    // Where the pages are now, per source tier (for the demoted/promoted counters).
    let mut from_tier = [0usize; MAX_TIERS];
    census(start, end, |_, s| {
        let s = before(s);
        if s == node as i32 {
            r.already += 1;
        } else if s >= 0 {
            if let Some(k) = tier_of(s) {
                from_tier[k] += 1;
            }
        }
    })
    .map_err(TierError::Os)?;
    // The kernel moves a transparent huge page whole: one that holds the span's first or last
    // page and memory outside it would take that memory along (for a large block: other
    // blocks and free slices of its segment, which the heap books on the segment's node and
    // hands out as such). Split those first. A huge block's mapping is all its own.
    if huge.is_null() {
        if start % THP_SIZE != 0 {
            os::split_huge_page_at(start as *mut u8);
        }
        if end % THP_SIZE != 0 {
            os::split_huge_page_at((end - OS_PAGE) as *mut u8);
        }
    }
    // In case the kernel would not split one: where the block's neighbours are before, to
    // move back those that went along (whether or not the move succeeded), all under the
    // large-move lock (the guard in `neighbours`).
    let neighbours = (!large.is_null() && !sim).then(|| {
        (
            lock_large_moves(),
            Neighbours::record(large_seg, start, end),
        )
    });
    let moved = numa::move_range(start as *mut u8, end - start, node);
    if let Some((_, n)) = &neighbours {
        n.restore(node as i32);
    }
    drop(neighbours);
    match moved {
        // EIO: some pages could not move; the census below counts them.
        Ok(()) | Err(libc::EIO) => {}
        Err(e) => return Err(TierError::Os(e)),
    }
    let mut on_target = 0usize;
    census(start, end, |_, s| {
        let s = after(s);
        if s == node as i32 {
            on_target += 1;
        } else if s >= 0 {
            r.failed += 1;
        } else {
            r.not_present += 1;
        }
    })
    .map_err(TierError::Os)?;
    r.moved = on_target.saturating_sub(r.already);
    // Count bytes by tier direction, scaled down if some pages failed.
    if let Some(tt) = target_tier {
        let total: usize = from_tier.iter().sum();
        for (k, &c) in from_tier.iter().enumerate() {
            if c == 0 || k == tt || total == 0 {
                continue;
            }
            let moved = (c * r.moved / total) as u64 * OS_PAGE as u64;
            if k < tt {
                DEMOTED_BYTES[tt].fetch_add(moved, Ordering::Relaxed);
            } else {
                PROMOTED_BYTES[tt].fetch_add(moved, Ordering::Relaxed);
            }
        }
    }
    if !large.is_null() {
        // SAFETY: the caller owns the large block, so its page stays live while we record
        // where its memory is; the heap reads `moved` only when the page is given back.
        unsafe {
            let seg = (*large).segment();
            let home = (*seg).node;
            let was = if (*large).moved == 0 {
                home
            } else {
                (*large).moved as u16 - 1
            };
            if was as u32 != node {
                let bytes = end - start;
                segment::commit_sub(was, bytes);
                segment::commit_add(node as u16, bytes);
                // Its live bytes too (review rev24), until its page is given back.
                segment::move_live(was, node as u16, (*large).block_size as usize);
            }
            (*large).moved = if node == home as u32 {
                0
            } else {
                node as u8 + 1
            };
        }
    }
    if !huge.is_null() && r.failed == 0 {
        // SAFETY: the caller owns the huge block and nobody frees or resizes it while we
        // rewrite its node: the heap reads `node` when the block is freed or resized, and
        // books the mapping's committed bytes on it, so they move with it.
        unsafe {
            if (*huge).node as u32 != node {
                let bytes = (*huge).map_size;
                // Its committed, live and label bytes go with it: its free books them off
                // `node` from now on.
                crate::heap::thread::book_huge_moved(huge, node as u16);
                (*huge).tier = target_tier.unwrap_or(0) as u8;
                // The rest of the reservation, past the map size (never touched, nothing
                // resident): the huge cache may grow the mapping into it in place once the
                // block is freed (it is then cached as a mapping of `node`), so it must fault
                // in on `node` too. A refusal leaves those bytes on their old policy only.
                let res = huge::reservation(bytes);
                if res > bytes {
                    numa::bind((huge as *mut u8).add(bytes), res - bytes, node);
                }
            }
        }
    }
    Ok(r)
}

/// Moves the span to tier `tier`: its node nearest to the calling thread's node. See
/// [`move_to_node`].
///
/// # Safety
/// As [`move_to_node`].
///
/// # Errors
/// The tier does not exist, or as [`move_to_node`].
pub unsafe fn move_to_tier(ptr: *mut u8, len: usize, tier: usize) -> Result<MoveReport, TierError> {
    crate::init::init_once();
    let t = discover::get();
    if tier >= t.n_tiers {
        return Err(TierError::NoSuchTier {
            tier,
            tiers: t.n_tiers,
        });
    }
    let node = Placed::tier(tier)
        .map_err(TierError::Placement)?
        .node_id()
        .ok_or(TierError::NoSuchTier {
            tier,
            tiers: t.n_tiers,
        })?;
    // SAFETY: forwarded contract.
    unsafe { move_to_node(ptr, len, node) }
}

/// Moves the span to the slowest tier (far memory), nearest the calling thread's node.
///
/// ```no_run
/// // A 64 MiB buffer that has gone cold moves to far memory, and comes back later.
/// let mut v = vec![7u8; 64 << 20];
/// // SAFETY: our own block, not freed or resized while it moves.
/// let r = unsafe { tieralloc::tiers::demote(v.as_mut_ptr(), v.len()) }.unwrap();
/// assert_eq!(r.failed, 0);
/// let _ = unsafe { tieralloc::tiers::promote(v.as_mut_ptr(), v.len()) }.unwrap();
/// assert!(v.iter().all(|b| *b == 7));
/// ```
///
/// # Safety
/// As [`move_to_node`].
///
/// # Errors
/// As [`move_to_tier`].
pub unsafe fn demote(ptr: *mut u8, len: usize) -> Result<MoveReport, TierError> {
    crate::init::init_once();
    let n = discover::get().n_tiers;
    // SAFETY: forwarded contract.
    unsafe { move_to_tier(ptr, len, n.saturating_sub(1)) }
}

/// Moves the span to the fastest tier (tier 0), nearest the calling thread's node.
///
/// # Safety
/// As [`move_to_node`].
///
/// # Errors
/// As [`move_to_tier`].
pub unsafe fn promote(ptr: *mut u8, len: usize) -> Result<MoveReport, TierError> {
    // SAFETY: forwarded contract.
    unsafe { move_to_tier(ptr, len, 0) }
}

#[cfg(test)]
mod tests {
    use super::{taken_along, LARGE_MOVES};

    /// Only the pages that were present on another node at the record and are on the target
    /// now go back, each to the node it was on; pages not present then (first touched since),
    /// not present now, already on the target, or elsewhere still, are left alone.
    #[test]
    fn only_pages_taken_along_go_back_each_to_its_node() {
        const ENOENT: i32 = -libc::ENOENT;
        let node = 2;
        // index:      0  1       2       3  4  5  6
        let was = [0, 1, ENOENT, ENOENT, 2, 0, 1];
        let now = [2, 2, 2, ENOENT, 2, 0, 1];
        let back: Vec<(usize, i32)> = taken_along(&was, &now, node).collect();
        assert_eq!(back, [(0, 0), (1, 1)]);
        // Nothing moved: nothing goes back.
        assert_eq!(taken_along(&was, &was, node).count(), 0);
    }

    /// A large block's move (here to the node its memory is on: any machine) goes through
    /// the large-move lock and leaves it free again.
    #[test]
    fn a_large_block_move_lets_go_of_the_lock() {
        use core::alloc::{GlobalAlloc, Layout};
        static A: crate::TierAlloc = crate::TierAlloc::new();
        let layout = Layout::from_size_align(1 << 20, 8).unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { A.alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: our own block of `layout.size()` bytes, written before it moves, freed after.
        let r = unsafe {
            p.write_bytes(7, layout.size());
            let node = u32::from(crate::block_place(p).segment_node);
            super::move_to_node(p, layout.size(), node)
        };
        assert_eq!(
            r.map(|r| r.pages),
            Ok(layout.size() / crate::sys::os::OS_PAGE)
        );
        assert!(LARGE_MOVES.try_lock().is_some());
        // SAFETY: our own block, read in bounds, then freed once with its layout.
        unsafe {
            assert!((0..layout.size()).all(|i| *p.add(i) == 7));
            A.dealloc(p, layout);
        }
    }
}
