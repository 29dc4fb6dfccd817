//! Statistics counters: each heap's own, the retired totals of heaps that are gone, and the
//! per-node cross-free totals.
//!
//! Owns: `HeapStats` (bumped by its owner with a plain load and store, read by anyone), the
//! `RETIRED*` and `CROSS_*` statics, the choice of which counters a free goes to, and the
//! booking of a heap's far pages (bin pages of its segments on another node than its own, which
//! a tier policy gave it, mapped or adopted) and of its large pages on such segments on their
//! node: [`note_far_collected`], [`note_far_abandoned`], [`note_far_adopted`],
//! [`note_far_large`], [`settle_far`], and of a large page a tender of another node takes back
//! ([`book_tended_large`]). May touch: the `Heap` type (`super`, for its state, its segment
//! list and its own counters), `bins` (which bin a direct-table slot serves), `slices` (the
//! walk of a segment's pages), `heap::{segment, size_class}`, `heap::page` (`LEAKED`), `sync`.

use super::bins::{direct_bin, DIRECT_SLOTS};
use super::slices::for_each_used_page;
use super::{HeapRef, ACTIVE};
use crate::heap::page::LEAKED;
use crate::heap::segment::MAX_NODES;
use crate::heap::segment::{Page, PageKind, Segment};
use crate::heap::size_class::NBINS;
use crate::sync::{AtomicI64, AtomicU64, Ordering};

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
    /// Per node other than the heap's: bytes of blocks of the heap's far pages on that node
    /// that its per-bin counts hold as live (its pops minus its own frees of them), as of the
    /// last [`settle_far`]. `stats()` books them on that node instead of the heap's.
    pub far_net: [AtomicI64; MAX_NODES],
    /// The part of `far_net` that no walk of the heap's far bin pages finds: blocks of its far
    /// pages that other threads freed (booked on the far node by the freer, taken back into
    /// circulation by a collect or a drain of the owner), the live blocks of far segments
    /// given up, and its large pages on far segments (booked at their allocation, taken off
    /// when the heap takes the page back: [`note_far_large`]).
    pub far_fixed: [AtomicI64; MAX_NODES],
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
            far_net: [ZERO_I64; MAX_NODES],
            far_fixed: [ZERO_I64; MAX_NODES],
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
    /// heap's own node: its contribution to that node's live bytes (its far pages' blocks
    /// are booked on their own nodes: `far_net`). Returned with the `far_net` it left out, per node, from one read of `far_net` (a
    /// settle between two reads would shift bytes between the heap's node and its far nodes
    /// in a snapshot).
    pub fn net_and_far(&self) -> (i64, [i64; MAX_NODES]) {
        let mut far = [0i64; MAX_NODES];
        for (d, c) in far.iter_mut().zip(&self.far_net) {
            *d = c.load(Ordering::Relaxed);
        }
        let far_total = far.iter().fold(0i64, |a, &b| a.wrapping_add(b));
        let mut net: i64 = 0;
        let allocs = self.alloc_counts();
        for (bin, (&a, f)) in allocs.iter().zip(&self.frees).enumerate().take(NBINS) {
            let n = a as i64 - f.load(Ordering::Relaxed) as i64;
            net += n * crate::heap::size_class::bin_size(bin) as i64;
        }
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
        let net = net + l(&self.large_alloc_bytes) - l(&self.large_free_bytes)
            + l(&self.huge_alloc_bytes)
            - l(&self.huge_free_bytes)
            + l(&self.foreign_free_bytes)
            - far_total;
        (net, far)
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
        for c in self.far_net.iter().chain(&self.far_fixed) {
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

/// Adds `n` to an owner-only signed counter without a read-modify-write instruction.
#[inline]
fn bump_i64(c: &AtomicI64, n: i64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// The node of `seg` if it is a far segment of `h` (on another node than `h`'s).
///
/// # Safety
/// `seg` is a segment of `h`.
#[inline]
unsafe fn far_node(h: HeapRef, seg: *const Segment) -> Option<usize> {
    // SAFETY: forwarded contract.
    unsafe { far_node_of(h.node, seg) }
}

/// The node of `seg` if it is not `node` (a far segment of a heap of `node`).
///
/// # Safety
/// `seg` is a segment in use, valid for the call.
#[inline]
unsafe fn far_node_of(node: u32, seg: *const Segment) -> Option<usize> {
    // SAFETY: seg is valid (contract).
    let seg_node = unsafe { (*seg).node } as u32;
    (seg_node != node).then(|| (seg_node as usize).min(MAX_NODES - 1))
}

/// The owner took `blocks` blocks that other threads freed back into `page` (a collect, a
/// drain of its delayed stack): if the page is a far bin page, they leave its `used` but
/// stay in the heap's per-bin counts (the freer booked them off the far node already), so
/// they go to `far_fixed`.
///
/// # Safety
/// `page` is a page of `h` in use.
#[inline(always)]
pub(super) unsafe fn note_far_collected(h: HeapRef, page: *const Page, blocks: u32) {
    if blocks != 0 {
        // SAFETY: forwarded contract.
        unsafe { book_far_collected(h, page, blocks) }
    }
}

/// The owner takes in the blocks other threads freed into `page` ([`Page::collect`]) and
/// books them as every collection does: in `returned` (somebody returns our memory: see
/// `slices::abandon_full`) and, for a far page, through [`note_far_collected`]. Returns how
/// many.
///
/// # Safety
/// `page` is a page of `h` in use.
#[inline(always)]
pub(super) unsafe fn collect_remote(mut h: HeapRef, page: *mut Page) -> u32 {
    // SAFETY: forwarded contract.
    unsafe {
        let back = (*page).collect();
        h.returned = h.returned.saturating_add(back);
        note_far_collected(h, page, back);
        back
    }
}

/// [`note_far_collected`] when something was taken back: out of line, so that the refill
/// paths it sits in keep their shape.
///
/// # Safety
/// As for [`note_far_collected`].
#[cold]
#[inline(never)]
unsafe fn book_far_collected(h: HeapRef, page: *const Page, blocks: u32) {
    // SAFETY: forwarded contract.
    unsafe { book_far_collected_in(&h.stats, h.node, page, blocks) }
}

/// [`note_far_collected`] for a heap known by its counters and node (a pass collecting a
/// quiet heap's full pages, `quiet`, which must not form a reference to the whole heap).
///
/// # Safety
/// `page` is a page in use of the heap whose counters `stats` are and whose node is `node`,
/// and the caller may write that heap's slow-path counters (its owner, or a pass holding its
/// gate).
pub(super) unsafe fn book_far_collected_in(
    stats: &HeapStats,
    node: u32,
    page: *const Page,
    blocks: u32,
) {
    // SAFETY: page is in use (contract).
    unsafe {
        if blocks == 0 || (*page).kind != PageKind::Bin as u8 {
            return;
        }
        if let Some(n) = far_node_of(node, (*page).segment()) {
            let bytes = blocks as i64 * (*page).block_size as i64;
            bump_i64(&stats.far_fixed[n], bytes);
        }
    }
}

/// A large page of `bytes` on `seg` went back to its segment: the heap's `large_free_bytes`,
/// and, for a far segment, its far node's counts ([`note_far_large`] with `-bytes`), for a
/// heap known by its counters and node (see [`book_far_collected_in`]).
///
/// # Safety
/// As [`book_far_collected_in`], for `seg`, a segment of that heap.
pub(super) unsafe fn book_large_freed_in(
    stats: &HeapStats,
    node: u32,
    seg: *const Segment,
    bytes: u64,
) {
    bump(&stats.large_free_bytes, bytes);
    // SAFETY: forwarded contract.
    unsafe { note_far_large_in(stats, node, seg, -(bytes as i64)) }
}

/// `h` gives up `seg` with blocks live in it: if it is a far segment, its bin pages' live
/// blocks (frees still to collect included: their freers booked them off already) stay in
/// the heap's per-bin counts for good, so they go to `far_fixed`.
///
/// # Safety
/// `seg` is a segment of `h`, still on its list, whose pages no walk is using.
pub(super) unsafe fn note_far_abandoned(h: HeapRef, seg: *mut Segment) {
    // SAFETY: seg is ours (contract).
    unsafe {
        if let Some(n) = far_node(h, seg) {
            let mut bytes = 0i64;
            for_each_used_page(seg, |p| bytes += bin_page_bytes(p));
            bump_i64(&h.stats.far_fixed[n], bytes);
        }
    }
}

/// `h` has just adopted `seg`, another thread's far segment (a tier policy sends `h`'s next
/// segment to that node: `slices::take_slices`), and its pages' remote frees are collected:
/// the blocks its bin pages count as used were booked on that node by the heap that allocated
/// them (in its `far_fixed`, now retired), and are none of `h`'s pops, yet [`settle_far`]'s
/// walk finds them on `h`'s far pages from now on; so they come off `h`'s `far_fixed` (the
/// mirror of [`note_far_abandoned`]). `h`'s frees of them then book them off that node, as
/// its frees of its own far blocks do. Its live large pages need nothing: they stay booked
/// where they are, and `h` takes one back through [`note_far_large`] as one of its own.
///
/// # Safety
/// `seg` is a segment of `h`, on its list, whose pages no walk is using.
pub(super) unsafe fn note_far_adopted(h: HeapRef, seg: *mut Segment) {
    // SAFETY: seg is ours (contract).
    unsafe {
        if let Some(n) = far_node(h, seg) {
            let mut bytes = 0i64;
            for_each_used_page(seg, |p| bytes += bin_page_bytes(p));
            bump_i64(&h.stats.far_fixed[n], -bytes);
        }
    }
}

/// A large page of `h` on `seg` grew by `bytes` (its allocation, a resize in place) or shrank
/// (negative: a resize, its free taken back by `h` while `seg` is on `h`'s list): if `seg` is
/// a far segment of `h`, the bytes go to `far_fixed` and `far_net` at once, so that they are
/// live on their node while `h` holds the page, and stay there (in the retired totals) when
/// `h` exits or gives `seg` up with the page live. Whoever takes such a page back after that
/// books it off that node ([`book_tended_large`]).
///
/// # Safety
/// `seg` is a segment of `h`, and `h` is the calling thread's heap (or a node heap whose lock
/// the caller holds).
#[inline]
pub(super) unsafe fn note_far_large(h: HeapRef, seg: *const Segment, bytes: i64) {
    // SAFETY: forwarded contract.
    unsafe { note_far_large_in(&h.stats, h.node, seg, bytes) }
}

/// [`note_far_large`] for a heap known by its counters and node (see
/// [`book_far_collected_in`]).
///
/// # Safety
/// `seg` is a segment of that heap, and the caller may write its slow-path counters.
unsafe fn note_far_large_in(stats: &HeapStats, node: u32, seg: *const Segment, bytes: i64) {
    // SAFETY: forwarded contract.
    if let Some(n) = unsafe { far_node_of(node, seg) } {
        bump_i64(&stats.far_fixed[n], bytes);
        bump_i64(&stats.far_net[n], bytes);
    }
}

/// `h` took back a large page of `bytes` that it found empty in `seg`, a segment it tends
/// or adopted from an abandoned list (its `large_free_bytes` take the bytes): if `seg` is of
/// another node than `h`'s, the bytes leave that node (where the heap that allocated the page
/// booked them: its own node, or its far node through [`note_far_large`]) rather than `h`'s,
/// as a free of a block of another node does.
///
/// # Safety
/// `seg` was taken off an abandoned list for `h`, an active heap the caller may use.
pub(super) unsafe fn book_tended_large(h: HeapRef, seg: *const Segment, bytes: u64) {
    // SAFETY: seg is ours for now (contract).
    if let Some(n) = unsafe { far_node(h, seg) } {
        bump(&h.stats.foreign_free_bytes, bytes);
        // Release: see `free::count_node_free`'s add.
        CROSS_FREED_BYTES[n].fetch_add(bytes, Ordering::Release);
    }
}

/// Bytes of the blocks a bin page counts as used (0 for another kind of page).
///
/// # Safety
/// `p` is a page in use of a segment the caller owns.
pub(super) unsafe fn bin_page_bytes(p: *const Page) -> i64 {
    // SAFETY: per the contract.
    unsafe {
        if (*p).kind == PageKind::Bin as u8 {
            // A count marked leaked by a wrong free (`page::mark_leaked`, warn/ignore only)
            // is booked without the mark: the mark is not blocks.
            let used = if (*p).used >= LEAKED {
                (*p).used - LEAKED
            } else {
                (*p).used
            };
            used as i64 * (*p).block_size as i64
        } else {
            0
        }
    }
}

/// Recomputes `h`'s `far_net`: per far node, `far_fixed` plus the used blocks of the far
/// bin pages `h` holds now. Exact when it returns (the heap's thread is the caller); between
/// two settles, off by what the fast path popped and freed on far pages since.
///
/// # Safety
/// `h` is the calling thread's heap (or one no thread uses), and no walk over its pages is
/// in progress that this could disturb (it only reads them).
pub(super) unsafe fn settle_far(h: HeapRef) {
    let mut held = [0i64; MAX_NODES];
    let mut any = false;
    let mut seg = h.segments;
    // SAFETY: the segments on h's list are h's (contract), and their pages in use valid.
    unsafe {
        while !seg.is_null() {
            if let Some(n) = far_node(h, seg) {
                for_each_used_page(seg, |p| held[n] += bin_page_bytes(p));
                any = true;
            }
            seg = (*seg).next;
        }
    }
    for (n, (net, fixed)) in h.stats.far_net.iter().zip(&h.stats.far_fixed).enumerate() {
        let f = fixed.load(Ordering::Relaxed);
        if !any && f == 0 && net.load(Ordering::Relaxed) == 0 {
            continue;
        }
        net.store(f.wrapping_add(held[n]), Ordering::Relaxed);
    }
}
