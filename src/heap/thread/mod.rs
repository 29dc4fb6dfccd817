//! The thread-local heap: fast paths, slow paths, thread exit, purging, one file per job.
//!
//! Owns, here: the `Heap` struct and its states, the static `EMPTY_PAGE` every empty bin
//! points at, and [`HeapRef`], the proof that a heap is the caller's to use. The jobs:
//! `tls` (finding the thread's heap), `registry` (init, registration, thread exit, tags,
//! moving to another node), `bins` (bin queues, the direct table), `alloc` (fast paths,
//! refill, the generic path), `slices` (taking slices, abandon, adopt), `large` (large and
//! huge objects, in-place resize), `node` (node heaps), `free` (free paths, delayed frees),
//! `tick` (collect, purge), `purger` (the opt-in background purger and its per-heap gate,
//! which `grow_huge` and `resize_in_place` below take), `quiet` (a pass taking in the frees
//! made into a quiet owner's full pages), `refilled` (full pages other threads' frees gave
//! room, kept full until their bin needs a page), `counters` (statistics), `trim`
//! (which sparse pages to trim, when), `fork` (the atfork handlers), `scoped` (a thread's
//! placement scope and the allocations it diverts), `labels` (scope labels: a shared heap per
//! label and node, and their live bytes), and in the `secure` build `canary` (the paths that
//! write a block's canary for the request's size). The crate sees only what is re-exported below. May
//! touch (the folder as a whole):
//! `heap::{page, segment, remote, huge, size_class, delayed, trim}`, `sys`, `topology::home`,
//! `init`, and `heap::route` (the node-choice calls in `alloc::alloc_generic_in` and
//! `slices::take_slices`).
//!
//! Invariants:
//! - `pages[bin]` is the first page of bin `bin`'s queue, or the static `EMPTY_PAGE`, whose
//!   `free` is null, so the fast path needs no "is there a page" branch.
//! - A page is in its bin's queue exactly when it is a bin page without `PAGE_IN_FULL`.
//!   Full pages and large pages sit in no queue; their delayed-free state is `USE_DELAYED`,
//!   so the first remote free tells us (through `delayed`) that they have room again, except
//!   for the full pages on a refilled list (`refilled`), which have heard so already.
//! - Only the owner thread touches anything but `delayed` and the stats counters (which other
//!   threads only read), except a pass holding the heap's gate (`purger`), which the owner's
//!   slow paths hold too: it touches the heap's segments, huge cache and full pages (`quiet`:
//!   no fast path reaches a page in no queue, and the owner's free into a flagged page takes
//!   the gate before it writes anything).
//! - On thread exit every page is set `NEVER_DELAYED` (waiting out delayed frees in flight)
//!   before the heap lets go of its segments, so no thread can push onto `delayed` after the
//!   heap is gone.

// The secure build's global allocator goes through `canary` instead of `alloc`'s plain
// inline paths, which only the crate's tests call then.
#[cfg_attr(feature = "secure", allow(dead_code))]
mod alloc;
mod bins;
// The secure build's allocation paths that write a block's canary for the request's size.
#[cfg(feature = "secure")]
mod canary;
mod counters;
mod free;
mod labels;
mod large;
mod node;
mod purger;
mod quiet;
mod refilled;
mod registry;
mod scoped;
mod slices;
mod tick;
mod tls;
mod trim;

// fork: no lock may be held by a thread that does not exist in the child, and no heap of one
// may stay listed or own segments there (see fork.rs).
mod fork;
// A shadow model of the bin pages across thread exits (in a process of its own).
#[cfg(test)]
mod exit_tests;
#[cfg(test)]
mod purger_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tick_tests;

// The secure build's global allocator calls `canary`'s paths instead (below); these stay for
// the crate's tests (the blocks they hand out have a canary for the largest request).
#[cfg_attr(feature = "secure", allow(unused_imports))]
pub(crate) use alloc::{
    alloc_bin, alloc_direct, alloc_direct_pop, alloc_generic, alloc_small, alloc_small_zeroed,
};
pub(crate) use bins::DIRECT_MAX;
#[cfg(feature = "secure")]
pub(crate) use canary::{
    alloc_bin as alloc_bin_sized, alloc_direct as alloc_direct_sized,
    alloc_direct_pop as alloc_direct_pop_sized, alloc_small as alloc_small_sized,
    alloc_small_zeroed as alloc_small_zeroed_sized, resize as resize_checked, usable_size, Resize,
};
pub(crate) use counters::{
    HeapStats, CROSS_FREED_BYTES, CROSS_FREES, LARGE_BIN, RETIRED_NET_BY_NODE,
};
pub(crate) use fork::register_fork_handlers;
pub(crate) use free::{free, free_c, free_c_or};
pub(crate) use labels::{for_each_label_live, label_id, label_name, MAX_LABELS};
#[cfg(not(feature = "secure"))]
pub(crate) use large::usable_size;
pub(crate) use large::{admit_making_room, book_huge_moved, retry_making_room};
pub(crate) use node::node_alloc;
pub(crate) use purger::{register_purger_fork_handlers, BACKGROUND_PURGE, PASS_PURGES};
pub(crate) use quiet::FULL_TAKEN_IN;
pub(crate) use registry::{for_each_stats, heap_node};
pub(crate) use scoped::{scope, scope_label, set_scope, Scope, Spread, MAX_SPREAD};
pub(crate) use slices::segment_counts;
pub(crate) use tick::collect_now;
pub(crate) use tls::heap;

use crate::heap::huge::HugeCache;
use crate::heap::remote::BlockStack;
use crate::heap::segment::{Page, Segment, NO_TAG};
use crate::heap::size_class::NBINS;
use crate::sync::{AtomicBool, AtomicU64, AtomicU8};
use bins::DIRECT_SLOTS;
use core::ops::{Deref, DerefMut};
use core::ptr;
use counters::HeapStats as Stats;

pub(super) const UNINIT: u8 = 0;
pub(super) const ACTIVE: u8 = 1;
pub(super) const LEAVING: u8 = 2;
/// Torn down at thread exit. For the rest of the thread's life (glibc still runs later key
/// destructors and `__libc_thread_freeres`, which allocate and free) the heap is never
/// registered again: a registered heap must be unregistered before its TLS goes away, and
/// no destructor round is left to do that. Allocations go to the node heap, frees are
/// remote frees counted in the retired totals.
pub(super) const DEAD: u8 = 3;

/// A thread's heap.
pub struct Heap {
    /// The fast path's entry: the current page of each bin.
    pages: [*mut Page; NBINS],
    /// C `malloc`'s entry for requests up to `DIRECT_MAX` bytes: the current page of the bin
    /// of each size rounded up to 16 bytes, by size / 16 (so `malloc` needs no size-to-bin
    /// step). Always equal to `pages` of that bin (see `set_head`).
    direct: [*mut Page; DIRECT_SLOTS],
    /// The last page of each bin's queue.
    tails: [*mut Page; NBINS],
    /// Blocks freed by other threads into our full pages: the one field other threads write,
    /// so it has a cache line to itself (on a line with `tick` or `pages`, every such free
    /// would cost the owner a miss on its next allocation).
    delayed: OwnLine<BlockStack>,
    /// Our normal segments (linked through `Segment::next/prev`).
    segments: *mut Segment,
    state: u8,
    /// What the segment map holds for our segments (see `segment::set_owner`): unique among
    /// registered heaps, [`NO_TAG`] while unregistered or when all tags are taken.
    tag: u16,
    /// A node heap (shared, lock-protected, fixed node) rather than a thread's.
    shared: bool,
    /// A walk over a list of blocks that point into our pages is in progress (a drain of
    /// `delayed`): the heap must keep every segment until it ends, so a home-node change
    /// seen meanwhile waits (see `heap_tick`).
    walking: bool,
    /// A label heap (see `labels`): its label id (slot + 1); 0 for every other heap.
    label: u8,
    /// Memory this heap could give back is waiting out the purge delay (more than
    /// `tick::WAIT_BYTES` of it, estimated): while set, every slow path reads the clock and a
    /// refill hands the fast path at most `alloc::WAIT_REFILL` blocks, so that even a loop
    /// that allocates and frees one size over and over reaches the clock every few dozen
    /// allocations (see `heap_tick`).
    waiting: AtomicBool,
    /// Some memory this heap could give back is waiting out the purge delay (as last counted:
    /// any amount, where `waiting` needs more than `tick::WAIT_BYTES`): other threads'
    /// passes visit a quiet heap that is `holding` (see [`purger::help`]), so a thread that
    /// went quiet below `WAIT_BYTES` does not keep it resident, each such thread adding its
    /// slack to the process's.
    holding: AtomicBool,
    /// Each bin's refilled list (`refilled`): full pages with a live block that other
    /// threads' frees gave room, oldest first, which the allocation slow path takes before
    /// it makes a new page. Changed under our gate only (by us, or a pass holding it).
    refilled: [*mut Page; NBINS],
    /// The last page of each refilled list.
    refilled_tail: [*mut Page; NBINS],
    /// A page on a refilled list may take other threads' frees without a word to us (its
    /// remote-free state is `NORMAL`): a pass visits the heap once we are quiet, takes them
    /// in and arms the pages `USE_DELAYED` again (`quiet`), and clears it. Set by us, cleared
    /// by a pass, both under our gate; read by passes deciding whether to visit.
    refilled_silent: AtomicBool,
    /// Where the next trim of the refilled lists goes on (`refilled::trim`): a page on
    /// `refilled_trim_bin`'s list, or null (the next bin's front). `refilled::unlink` moves it
    /// on from a page it takes off.
    refilled_trim_at: *mut Page,
    refilled_trim_bin: u8,
    /// When anything of a `holding` heap is next due (ms: the earliest purge step, tail step,
    /// retry of a refused purge or huge cache expiry, as its last collection or pass found
    /// them), 0 if not known (memory given back since: `tick::note_idle`). A pass visits a
    /// quiet holding heap only once that time has come, not every quarter delay with nothing
    /// to do.
    due_ms: AtomicU64,
    /// When the owner last collected (ms; written by the owner at each collection, read by
    /// other threads' [`purger::help`] passes, which visit only a heap whose owner has not
    /// collected for a whole purge delay: a worker that went quiet, not an owner busy with
    /// its own purging, which would then wait for them at its gate).
    collected_ms: AtomicU64,
    /// Who may touch the heap's segments (slice bitmaps, purge state, list) and huge cache
    /// right now when the background purger is on (see `purger`): free, the owner, or the
    /// purger.
    gate: AtomicU8,
    /// How deep the owner is in gated slow paths (owner only).
    gate_depth: u32,
    node: u32,
    tick: u32,
    /// Blocks other threads freed back to us (collected or delayed) since we last took a new
    /// segment: 0 means nobody is returning our memory, and a full segment of ours is better
    /// off with whoever frees into it (see abandon_full).
    returned: u32,
    next_purge_ms: u64,
    /// Resident bytes given back to our segments (or the pool, or the huge cache) since the
    /// last collection: an over-estimate of what waits to be purged, which sets `waiting`
    /// once it passes `tick::WAIT_BYTES` (a collection recounts it exactly).
    idle_bytes: usize,
    /// Each bin's allocation count at the last collection: a bin that allocated since keeps
    /// its current page through the collection even when the page is empty.
    allocs_at_collect: [u64; NBINS],
    /// Where the next trim of sparse pages goes on (see `trim`): a page in `trim_bin`'s
    /// queue, or null (the next bin's head). `queue_remove` moves it on from a page it takes
    /// out.
    trim_at: *mut Page,
    trim_bin: u8,
    huge_cache: HugeCache,
    /// This thread's counters.
    pub stats: Stats,
    /// The limit of the global allocator's inline size gate on this heap: `route::FAST_MAX`,
    /// or `route::SCOPED_GATE` (0, so that every request reaches `alloc_generic`) while a
    /// placement scope is active (see `scoped`). Owner only.
    fast_gate: &'static crate::sync::AtomicUsize,
    /// The placement scope in force on this thread (`Scope::None` on node heaps). Owner only.
    scope: scoped::Scope,
    /// The label id of the scope in force on this thread (0: none). Owner only.
    scope_label: u8,
    reg_next: *mut Heap,
    reg_prev: *mut Heap,
}

/// [`large::grow_huge`] inside the purger's gate (see `purger`).
///
/// # Safety
/// As for [`large::grow_huge`].
pub(crate) unsafe fn grow_huge(p: *mut u8, new_size: usize) -> *mut u8 {
    let _gate = purger::enter(tls::heap_or_unset());
    // SAFETY: forwarded contract.
    unsafe { large::grow_huge(p, new_size) }
}

/// [`large::resize_in_place`] inside the purger's gate (see `purger`).
///
/// # Safety
/// As for [`large::resize_in_place`].
pub(crate) unsafe fn resize_in_place(p: *mut u8, new_size: usize) -> bool {
    let _gate = purger::enter(tls::heap_or_unset());
    // SAFETY: forwarded contract.
    unsafe { large::resize_in_place(p, new_size) }
}

/// A value alone on its cache line.
#[repr(C, align(64))]
pub(super) struct OwnLine<T>(T);

pub(super) struct SyncPage(Page);
// SAFETY: EMPTY_PAGE is never written: its `free` is null, so every path that would write it
// goes to the slow path first, which never touches it.
unsafe impl Sync for SyncPage {}
pub(super) static EMPTY_PAGE: SyncPage = SyncPage(Page::EMPTY);

#[inline(always)]
pub(super) fn empty_page() -> *mut Page {
    &EMPTY_PAGE.0 as *const Page as *mut Page
}

impl Heap {
    pub(super) const fn new() -> Heap {
        Heap {
            pages: [&EMPTY_PAGE.0 as *const Page as *mut Page; NBINS],
            direct: [&EMPTY_PAGE.0 as *const Page as *mut Page; DIRECT_SLOTS],
            tails: [ptr::null_mut(); NBINS],
            delayed: OwnLine(BlockStack::new()),
            segments: ptr::null_mut(),
            state: UNINIT,
            tag: NO_TAG,
            shared: false,
            walking: false,
            label: 0,
            waiting: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            refilled: [ptr::null_mut(); NBINS],
            refilled_tail: [ptr::null_mut(); NBINS],
            refilled_silent: AtomicBool::new(false),
            due_ms: AtomicU64::new(0),
            collected_ms: AtomicU64::new(0),
            gate: AtomicU8::new(0),
            gate_depth: 0,
            node: 0,
            tick: 0,
            returned: 0,
            next_purge_ms: 0,
            idle_bytes: 0,
            allocs_at_collect: [0; NBINS],
            trim_at: ptr::null_mut(),
            trim_bin: 0,
            refilled_trim_at: ptr::null_mut(),
            refilled_trim_bin: 0,
            huge_cache: HugeCache::new(),
            stats: Stats::new(),
            fast_gate: &crate::heap::route::FAST_MAX,
            scope: scoped::Scope::None,
            scope_label: 0,
            reg_next: ptr::null_mut(),
            reg_prev: ptr::null_mut(),
        }
    }
}

/// A heap the calling thread may use as its own: the thread's registered (or registering, or
/// leaving) heap, or a heap it holds exclusively — a node heap whose lock it holds, a heap
/// being torn down. Obtained once at each entry point (`tls::own`, `node_alloc`, a drain's
/// owner...), so that the functions inside take it safely: holding one is the proof that the
/// heap's owner-only fields are ours to read and write.
///
/// It gives `&Heap`/`&mut Heap` for the length of one expression or statement, and the code
/// keeps it so: a `&mut Heap` from `DerefMut` is never held across a call that takes the
/// `HeapRef` again (it is `Copy`, so the compiler does not check this; two live `&mut Heap`
/// would alias). Never the unset heap of `tls` (read-only): the fast paths that may meet it
/// keep a raw pointer.
///
/// Other threads touch a heap's `delayed` stack and counters (atomics, interior-mutable)
/// and, under the registry lock, its registry links and `node`, which its owner writes only
/// under that lock too. A `&mut Heap` formed while another thread reads the registry links is
/// formally an aliasing violation even though no access races (the links are not read or
/// written through it); the clean cut is to split `Heap` into an owner-only part, which
/// `DerefMut` would reach, and a shared part (docs/design.md, "Known limits").
#[repr(transparent)]
#[derive(Clone, Copy)]
pub(super) struct HeapRef(*mut Heap);

impl HeapRef {
    /// Wraps `h`.
    ///
    /// # Safety
    /// `h` is the calling thread's own heap (from `tls::heap`, not the unset placeholder), or
    /// a heap the calling thread holds exclusively for as long as the `HeapRef` is used (a
    /// node heap whose lock it holds, a heap it is tearing down that no other thread uses).
    #[inline(always)]
    pub(super) unsafe fn new(h: *mut Heap) -> HeapRef {
        HeapRef(h)
    }

    /// The heap's address.
    #[inline(always)]
    pub(super) fn as_ptr(self) -> *mut Heap {
        self.0
    }

    /// The heap's address as an owner id (what segment headers and lists hold).
    #[inline(always)]
    pub(super) fn addr(self) -> usize {
        self.0 as usize
    }
}

impl Deref for HeapRef {
    type Target = Heap;
    #[inline(always)]
    fn deref(&self) -> &Heap {
        // SAFETY: the heap is ours to use (type invariant).
        unsafe { &*self.0 }
    }
}

impl DerefMut for HeapRef {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Heap {
        // SAFETY: the heap is ours to use (type invariant); other threads touch only its
        // atomics (see the type's comment).
        unsafe { &mut *self.0 }
    }
}
