//! The thread-local heap: the fast paths, the slow paths behind them, thread exit, purging.
//!
//! Owns: one `Heap` per thread (in a `const`-initialised `thread_local!`, so reaching it is a
//! TLS offset, no lazy-init check), its bin queues, its segments, its delayed-free stack, its
//! huge-span cache and its statistics counters; the registry of live heaps; the thread-exit
//! hook. May touch: `heap::{page, segment, remote, huge, size_class}`, `sys`, `config`.
//!
//! Invariants:
//! - `pages[bin]` is the first page of bin `bin`'s queue, or the static `EMPTY_PAGE`, whose
//!   `free` is null, so the fast path needs no "is there a page" branch.
//! - A page is in its bin's queue exactly when it is a bin page without `PAGE_IN_FULL`.
//!   Full pages and large pages sit in no queue; their delayed-free state is `USE_DELAYED`,
//!   so the first remote free tells us (through `delayed`) that they have room again.
//! - Only the owner thread touches anything but `delayed` and the stats counters (which other
//!   threads only read).
//! - On thread exit every page is set `NEVER_DELAYED` (waiting out delayed frees in flight)
//!   before the heap lets go of its segments, so no thread can push onto `delayed` after the
//!   heap is gone.

use super::delayed;
use super::huge::{self, CacheEntry, CACHE_SLOTS, EMPTY_ENTRY};
use super::remote::{Block, BlockStack, Pushed, NORMAL, USE_DELAYED};
use super::segment::{
    commit_add, commit_sub, list_push_front, list_unlink, map_tag, page_of, page_of_remote,
    segment_of, set_owner, Page, PageKind, Segment, SegmentKind, ABANDONED, ABANDONED_FULL,
    FIRST_TAG, LARGE_MAX, MAX_NODES, NO_TAG, PAGES_ABANDONED, PAGES_ADOPTED, PAGE_IN_FULL, POOLS,
    SEGMENTS, SLICES, SLICE_SIZE,
};
use super::size_class::{bin_for_aligned, bin_of, page_slices, MEDIUM_MAX, NBINS};
use crate::init;
use crate::sync::{AtomicU64, Ordering, SpinLock};
use crate::sys::os;
use crate::topology::home;
use core::cell::UnsafeCell;
use core::ptr;

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
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

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

    fn merge_into(&self, dst: &HeapStats) {
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
    /// heap's own node: its contribution to that node's live bytes.
    pub fn net_node_bytes(&self) -> i64 {
        let mut net: i64 = 0;
        let allocs = self.alloc_counts();
        for (bin, (&a, f)) in allocs.iter().zip(&self.frees).enumerate().take(NBINS) {
            let n = a as i64 - f.load(Ordering::Relaxed) as i64;
            net += n * super::size_class::bin_size(bin) as i64;
        }
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
        net + l(&self.large_alloc_bytes) - l(&self.large_free_bytes) + l(&self.huge_alloc_bytes)
            - l(&self.huge_free_bytes)
            + l(&self.foreign_free_bytes)
    }

    fn reset(&self) {
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

const UNINIT: u8 = 0;
const ACTIVE: u8 = 1;
const LEAVING: u8 = 2;
/// Torn down at thread exit. For the rest of the thread's life (glibc still runs later key
/// destructors and `__libc_thread_freeres`, which allocate and free) the heap is never
/// registered again: a registered heap must be unregistered before its TLS goes away, and
/// no destructor round is left to do that. Allocations go to the node heap, frees are
/// remote frees counted in the retired totals.
const DEAD: u8 = 3;

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
    node: u32,
    tick: u32,
    /// Blocks other threads freed back to us (collected or delayed) since we last took a new
    /// segment: 0 means nobody is returning our memory, and a full segment of ours is better
    /// off with whoever frees into it (see abandon_full).
    returned: u32,
    next_purge_ms: u64,
    /// Each bin's allocation count at the last collection: a bin that allocated since keeps
    /// its current page through the collection even when the page is empty.
    allocs_at_collect: [u64; NBINS],
    huge_cache: [CacheEntry; CACHE_SLOTS],
    /// This thread's counters.
    pub stats: HeapStats,
    reg_next: *mut Heap,
    reg_prev: *mut Heap,
}

/// A value alone on its cache line.
#[repr(C, align(64))]
struct OwnLine<T>(T);

struct SyncPage(Page);
// SAFETY: EMPTY_PAGE is never written: its `free` is null, so every path that would write it
// goes to the slow path first, which never touches it.
unsafe impl Sync for SyncPage {}
static EMPTY_PAGE: SyncPage = SyncPage(Page::EMPTY);

#[inline(always)]
fn empty_page() -> *mut Page {
    &EMPTY_PAGE.0 as *const Page as *mut Page
}

impl Heap {
    const fn new() -> Heap {
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
            node: 0,
            tick: 0,
            returned: 0,
            next_purge_ms: 0,
            allocs_at_collect: [0; NBINS],
            huge_cache: [EMPTY_ENTRY; CACHE_SLOTS],
            stats: HeapStats::new(),
            reg_next: ptr::null_mut(),
            reg_prev: ptr::null_mut(),
        }
    }
}

thread_local! {
    static HEAP: UnsafeCell<Heap> = const { UnsafeCell::new(Heap::new()) };
}

/// The calling thread's heap.
#[cfg(not(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
)))]
#[inline(always)]
pub fn heap() -> *mut Heap {
    HEAP.with(|h| h.get())
}

/// The calling thread's heap; never the unset heap here (the initial-exec variant may return
/// it: see [`is_unset`]).
#[cfg(not(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
)))]
#[inline(always)]
fn heap_or_unset() -> *mut Heap {
    heap()
}

/// Whether `h` (from [`heap_or_unset`]) is the placeholder of a thread that has not looked
/// its heap up yet. Never here.
#[cfg(not(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
)))]
#[inline(always)]
fn is_unset(_h: *mut Heap) -> bool {
    false
}

// A shared library (the malloc drop-in) reaches `thread_local!` data through
// `__tls_get_addr`, a call on every malloc and free. With the `initial-exec-tls` feature the
// heap's address is cached in a TLS slot declared by hand in the static TLS block and read
// with the initial-exec model: one load of its offset from the GOT and one %fs-relative load.
// This is what C allocators do with `__attribute__((tls_model("initial-exec")))`; it needs
// the library to be loaded at start-up (LD_PRELOAD, or linked), or glibc's static TLS reserve
// when it is dlopen'ed.
//
// A new thread's slot holds the address of UNSET_HEAP (the TLS image is initialised data, not
// zeros), a heap that owns nothing and whose pages have no free block: the fast paths need no
// null check, since with it `malloc` finds no block and `free` finds no segment of its own,
// and the slow paths they fall into look the real heap up (`is_unset`).
#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
))]
core::arch::global_asm!(
    ".pushsection .tdata,\"awT\",@progbits",
    ".p2align 3",
    ".globl __tieralloc_heap_slot",
    ".hidden __tieralloc_heap_slot",
    ".type __tieralloc_heap_slot, @tls_object",
    ".size __tieralloc_heap_slot, 8",
    "__tieralloc_heap_slot:",
    ".quad {unset}",
    ".popsection",
    unset = sym UNSET_HEAP,
);

/// The heap every thread's slot points at until the thread looks its own up. Never written:
/// it owns no segment, its `pages` and `direct` entries are `EMPTY_PAGE` (no free block), and
/// every path that would change a heap checks `is_unset` first.
#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
))]
static UNSET_HEAP: UnsetHeap = UnsetHeap(Heap::new());

/// [`UNSET_HEAP`]'s type.
#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
))]
struct UnsetHeap(Heap);

#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
))]
// SAFETY: UNSET_HEAP is only ever read (see its comment), so sharing it is sound.
unsafe impl Sync for UnsetHeap {}

/// Whether `h` (from [`heap_or_unset`]) is [`UNSET_HEAP`]: this thread has not looked its
/// heap up yet.
#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
))]
#[inline(always)]
fn is_unset(h: *mut Heap) -> bool {
    ptr::eq(h, &UNSET_HEAP.0)
}

/// The calling thread's heap (initial-exec TLS slot; see above).
#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
))]
#[inline(always)]
pub fn heap() -> *mut Heap {
    let slot = heap_slot();
    // SAFETY: the slot is this thread's (see heap_slot).
    unsafe {
        let h = *slot;
        if !is_unset(h) {
            return h;
        }
        let h = HEAP.with(|h| h.get());
        *slot = h;
        h
    }
}

/// The calling thread's heap, or [`UNSET_HEAP`] if this thread has not looked it up yet: the
/// fast paths find nothing in that one and call [`heap`] from their cold paths, so that they
/// themselves hold no call and no check.
#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
))]
#[inline(always)]
fn heap_or_unset() -> *mut Heap {
    let h: *mut Heap;
    // SAFETY: as in heap_slot; the slot is read through %fs directly (one load fewer than
    // forming its address first). The asm reads memory only.
    unsafe {
        core::arch::asm!(
            "mov {h}, qword ptr [rip + __tieralloc_heap_slot@GOTTPOFF]",
            "mov {h}, qword ptr fs:[{h}]",
            h = out(reg) h,
            options(nostack, readonly, preserves_flags),
        );
    }
    h
}

/// The address of this thread's heap slot.
#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
))]
#[inline(always)]
fn heap_slot() -> *mut *mut Heap {
    let slot: *mut *mut Heap;
    // SAFETY: the slot is an 8-byte, 8-aligned TLS variable of this object; its offset from
    // the thread pointer comes from the GOT (R_X86_64_TPOFF64, set by the dynamic linker), and
    // %fs:0 holds the thread pointer on x86-64 Linux. The asm reads memory only.
    unsafe {
        core::arch::asm!(
            "mov {slot}, qword ptr [rip + __tieralloc_heap_slot@GOTTPOFF]",
            "add {slot}, qword ptr fs:0",
            slot = out(reg) slot,
            options(nostack, readonly, preserves_flags, pure),
        );
    }
    slot
}

// ---------------------------------------------------------------------------------------------
// Registry of live heaps (for statistics) and the thread-exit hook.

struct Registry {
    lock: SpinLock,
    head: UnsafeCell<*mut Heap>,
    /// Heap tags in use, one bit each; 0, `MAP_UNOWNED` and `NO_TAG` are never handed out.
    tags: UnsafeCell<[u64; TAG_WORDS]>,
    /// The word of `tags` the next search starts at.
    tag_cursor: UnsafeCell<usize>,
}
// SAFETY: `head`, the heaps' reg links and the tag bitmap are only touched with `lock` held.
unsafe impl Sync for Registry {}
const TAG_WORDS: usize = (NO_TAG as usize + 1) / 64;
static REGISTRY: Registry = Registry {
    lock: SpinLock::new(),
    head: UnsafeCell::new(ptr::null_mut()),
    tags: UnsafeCell::new({
        let mut t = [0u64; TAG_WORDS];
        t[0] = (1 << FIRST_TAG) - 1;
        t[TAG_WORDS - 1] = 1 << 63;
        t
    }),
    tag_cursor: UnsafeCell::new(0),
};

/// A tag no registered heap has, or [`NO_TAG`] if all are taken.
///
/// # Safety
/// The caller holds the registry lock.
unsafe fn take_tag() -> u16 {
    // SAFETY: the registry lock guards the bitmap and the cursor (contract).
    unsafe {
        let tags = &mut *REGISTRY.tags.get();
        let cursor = &mut *REGISTRY.tag_cursor.get();
        for k in 0..TAG_WORDS {
            let w = (*cursor + k) % TAG_WORDS;
            if tags[w] != u64::MAX {
                let bit = (!tags[w]).trailing_zeros() as usize;
                tags[w] |= 1 << bit;
                *cursor = w;
                return (w * 64 + bit) as u16;
            }
        }
    }
    NO_TAG
}

/// Hands `tag` (from [`take_tag`]) back.
///
/// # Safety
/// The caller holds the registry lock, and no segment map entry holds `tag` any more.
unsafe fn give_tag(tag: u16) {
    if tag == NO_TAG {
        return;
    }
    // SAFETY: the registry lock guards the bitmap (contract).
    unsafe { (*REGISTRY.tags.get())[tag as usize / 64] &= !(1 << (tag % 64)) };
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
const ZERO_I64: crate::sync::AtomicI64 = crate::sync::AtomicI64::new(0);

/// Calls `f(counters, node)` for every live heap, then `f(RETIRED, None)` for exited threads.
pub fn for_each_stats(mut f: impl FnMut(&HeapStats, Option<u32>)) {
    let _g = REGISTRY.lock.lock();
    // SAFETY: we hold the registry lock, so listed heaps stay alive and linked; their counters
    // are atomics, so reading them while their owners bump them is no data race. `node` only
    // changes under this lock (see `retire_counters`).
    unsafe {
        let mut h = *REGISTRY.head.get();
        while !h.is_null() {
            f(&(*h).stats, Some((*h).node));
            h = (*h).reg_next;
        }
    }
    f(&RETIRED, None);
}

/// Folds a heap's counters into the retired totals and zeroes them (registry lock held).
unsafe fn retire_counters(hp: &mut Heap) {
    let node = (hp.node as usize).min(MAX_NODES - 1);
    RETIRED_NET_BY_NODE[node].fetch_add(hp.stats.net_node_bytes(), Ordering::Relaxed);
    hp.stats.merge_into(&RETIRED);
    hp.stats.reset();
}

static KEY_STATE: crate::sync::AtomicUsize = crate::sync::AtomicUsize::new(0);
static mut KEY: libc::pthread_key_t = 0;

fn thread_key() -> Option<libc::pthread_key_t> {
    // 0: not made, 1: being made, 2: made, 3: failed.
    loop {
        match KEY_STATE.load(Ordering::Acquire) {
            2 => {
                // SAFETY: KEY was written before KEY_STATE became 2 (release/acquire).
                return Some(unsafe { KEY });
            }
            3 => return None,
            0 => {
                if KEY_STATE
                    .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    let mut k: libc::pthread_key_t = 0;
                    // SAFETY: k is a valid out-pointer; the destructor is an extern "C" fn
                    // that lives for the whole program.
                    let r = unsafe { libc::pthread_key_create(&mut k, Some(thread_done)) };
                    if r == 0 {
                        // SAFETY: only the thread that won the CAS writes KEY, before
                        // publishing it.
                        unsafe { KEY = k };
                        KEY_STATE.store(2, Ordering::Release);
                    } else {
                        KEY_STATE.store(3, Ordering::Release);
                    }
                }
            }
            _ => crate::sync::spin_hint(),
        }
    }
}

extern "C" fn thread_done(arg: *mut libc::c_void) {
    let h = arg as *mut Heap;
    // SAFETY: the key's value is only ever set to the calling thread's own heap, and glibc runs
    // key destructors on that thread before its TLS is released.
    unsafe { heap_done(h) };
}

/// Makes `h` ready for use. Returns false if it cannot be (never, today; kept for OOM
/// handling of future per-heap metadata).
#[cold]
unsafe fn heap_init(h: *mut Heap) -> bool {
    // SAFETY: h is the calling thread's heap.
    unsafe {
        if (*h).state == ACTIVE {
            return true;
        }
        if (*h).state == LEAVING || (*h).state == DEAD {
            return false;
        }
        register(h, (home::home_node() as usize).min(MAX_NODES - 1) as u32);
        if let Some(k) = thread_key() {
            libc::pthread_setspecific(k, h as *const libc::c_void);
        }
    }
    true
}

/// Marks `h` active on `node` and lists it in the registry.
unsafe fn register(h: *mut Heap, node: u32) {
    init::init_once();
    // SAFETY: h is a heap nobody else uses right now (this thread's, or a node heap under its
    // lock).
    unsafe {
        let hp = &mut *h;
        if hp.state == ACTIVE {
            // Registered already, by an allocation init_once made on this thread (in the
            // drop-in, glibc's pthread_atfork or atexit mallocs when its table grows):
            // linking it again would make the registry a loop.
            return;
        }
        // Mark active first: whatever the steps below allocate is served by this heap.
        hp.state = ACTIVE;
        hp.node = node;
        hp.next_purge_ms = os::now_ms() + init::PURGE_DELAY_MS.load(Ordering::Relaxed);
        {
            let _g = REGISTRY.lock.lock();
            if hp.tag == NO_TAG {
                hp.tag = take_tag();
            }
            let head = *REGISTRY.head.get();
            hp.reg_prev = ptr::null_mut();
            hp.reg_next = head;
            if !head.is_null() {
                (*head).reg_prev = h;
            }
            *REGISTRY.head.get() = h;
        }
    }
}

/// Hands everything of `h` back: called on thread exit (and by tests).
///
/// # Safety
/// `h` is the calling thread's heap, and nothing of it is in use by this thread's code.
pub unsafe fn heap_done(h: *mut Heap) {
    // SAFETY: h is ours (see contract); the steps follow the module's exit invariant.
    unsafe {
        let hp = &mut *h;
        if hp.state != ACTIVE {
            return;
        }
        hp.state = LEAVING;
        release_all(h);
        // Counters, registry, tag (release_all rewrote the map entries that held it).
        {
            let _g = REGISTRY.lock.lock();
            retire_counters(hp);
            give_tag(hp.tag);
            hp.tag = NO_TAG;
            if hp.reg_prev.is_null() {
                *REGISTRY.head.get() = hp.reg_next;
            } else {
                (*hp.reg_prev).reg_next = hp.reg_next;
            }
            if !hp.reg_next.is_null() {
                (*hp.reg_next).reg_prev = hp.reg_prev;
            }
            hp.reg_next = ptr::null_mut();
            hp.reg_prev = ptr::null_mut();
        }
        hp.state = DEAD;
    }
}

/// Lets go of every segment and cached span of `h`: empty ones to the pool, the rest to the
/// abandoned list of their node. Leaves `h` with no pages (its state is the caller's).
///
/// # Safety
/// `h` is the calling thread's heap (or a node heap under its lock), in state LEAVING or
/// ACTIVE with no block of its queues in use by the caller.
unsafe fn release_all(h: *mut Heap) {
    // SAFETY: h is ours; the steps follow the module's exit invariant.
    unsafe {
        let hp = &mut *h;
        // 1. No more delayed frees onto us: wait out any in flight.
        let mut seg = hp.segments;
        while !seg.is_null() {
            for_each_used_page(seg, |p| (*p).thread_free.set_never_delayed());
            seg = (*seg).next;
        }
        // 2. Take in what was delayed; it is all ours.
        drain_delayed(h);
        // 3. Collect remote frees and give back empty pages.
        let now = os::now_ms();
        let mut seg = hp.segments;
        while !seg.is_null() {
            let next = (*seg).next;
            for_each_used_page(seg, |p| {
                (*p).collect();
                if (*p).used == 0 {
                    release_empty_page(h, p, now, 0);
                }
            });
            // 4. Empty segments go to the pool; the rest are abandoned for others to adopt.
            (*seg).next = ptr::null_mut();
            (*seg).prev = ptr::null_mut();
            // Nothing is purged here: a thread that exits should not pay for system calls
            // (each madvise of a multi-threaded process is a TLB shootdown on every CPU), and
            // a short-lived thread's memory is usually reused by the next one at once. The
            // pool unmaps what nobody took after the delay; an abandoned segment's free slices
            // are purged by the thread that adopts it or tends it (heap_collect).
            if (*seg).used_pages == 0 {
                release_segment_dirty(seg, now);
            } else {
                book_free_slices(seg, now);
                PAGES_ABANDONED.fetch_add((*seg).used_pages as usize, Ordering::Relaxed);
                ABANDONED[((*seg).node as usize).min(MAX_NODES - 1)].push_abandoned(seg);
            }
            seg = next;
        }
        hp.segments = ptr::null_mut();
        // 5. Huge spans we kept.
        for e in hp.huge_cache.iter_mut() {
            if !e.seg.is_null() {
                commit_sub((*e.seg).node, (*e.seg).map_size);
                huge::unmap(e.seg);
                *e = EMPTY_ENTRY;
            }
        }
        hp.pages = [empty_page(); NBINS];
        hp.direct = [empty_page(); DIRECT_SLOTS];
        hp.tails = [ptr::null_mut(); NBINS];
    }
}

/// Moves the calling thread's heap to `node`: it lets go of its segments (they are adopted by
/// heaps of their own node, or by this one if it comes back) and draws from `node`'s pool from
/// the next allocation on.
#[cold]
unsafe fn rehome(h: *mut Heap, node: u32) {
    // SAFETY: h is this thread's active heap, called from a slow path holding no page.
    unsafe {
        (*h).state = LEAVING;
        release_all(h);
        let _g = REGISTRY.lock.lock();
        retire_counters(&mut *h);
        (*h).node = node;
        (*h).state = ACTIVE;
    }
}

/// The node the calling thread's heap draws from (for `heap::probe`).
pub(crate) fn heap_node() -> u32 {
    // SAFETY: our own heap; `node` is written only by this thread (and read under the
    // registry lock by others).
    unsafe { (*heap()).node }
}

/// [`rehome`] from a tick, unless the tick is one of a drain's frees: moving then would
/// abandon the pages the rest of the drained list points into, and the walk would go on
/// freeing into pages another thread may adopt. The tick is then left one short, so the
/// next tick (after the walk) looks again.
#[cold]
unsafe fn rehome_when_safe(h: *mut Heap, node: u32) {
    // SAFETY: h is this thread's active heap (heap_tick's caller holds no page).
    unsafe {
        if (*h).walking {
            (*h).tick = (*h).tick.wrapping_sub(1);
            return;
        }
        rehome(h, node);
    }
}

/// Runs `f` on every page in use in `seg` (owner only).
unsafe fn for_each_used_page(seg: *mut Segment, mut f: impl FnMut(*mut Page)) {
    // SAFETY: the caller owns seg; descriptors of pages in use are valid.
    unsafe {
        let mut i = 0;
        while i < SLICES {
            if (*seg).free_slices & (1u64 << i) != 0 {
                i += 1;
                continue;
            }
            let p = (*seg).pages.as_mut_ptr().add(i);
            let n = ((*p).slice_count as usize).max(1);
            f(p);
            i += n;
        }
    }
}

/// Books every free resident slice of `seg` for purging, one purge delay from `now`: for a
/// segment that changes hands (abandoned, adopted, taken from the pool) with such slices.
///
/// # Safety
/// The caller owns `seg` (or has just taken it off a list).
unsafe fn book_free_slices(seg: *mut Segment, now: u64) {
    let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
    // SAFETY: exclusive access per the contract.
    unsafe { Segment::schedule_purge(seg, (*seg).free_slices & (*seg).dirty, now, delay) }
}

/// Purges a segment that holds nothing and puts it in its node's pool.
unsafe fn release_segment(seg: *mut Segment, now: u64) {
    // SAFETY: the caller owned seg and it has no page in use.
    unsafe {
        Segment::purge_free(seg);
        release_segment_dirty(seg, now);
    }
}

/// Puts a segment that holds nothing in its node's pool as it is, resident slices and all:
/// the next thread that needs a segment reuses them without faults, and the pool unmaps it
/// if nobody has taken it within the purge delay.
unsafe fn release_segment_dirty(seg: *mut Segment, now: u64) {
    // SAFETY: the caller owned seg and it has no page in use.
    unsafe {
        set_owner(seg, 0, NO_TAG);
        (*seg).purge_at = now + init::PURGE_DELAY_MS.load(Ordering::Relaxed);
        let node = ((*seg).node as usize).min(MAX_NODES - 1);
        POOLS[node].push(seg);
    }
}

// ---------------------------------------------------------------------------------------------
// Bin queues.

/// The largest request [`alloc_direct`] serves.
pub const DIRECT_MAX: usize = 1024;
/// Entries of `Heap::direct`: sizes 0..=DIRECT_MAX by 16-byte steps.
const DIRECT_SLOTS: usize = DIRECT_MAX / 16 + 1;

impl Heap {
    /// Makes `p` the current page of `bin`, in `pages` and in the `direct` entries of the
    /// sizes that bin serves.
    #[inline]
    fn set_head(&mut self, bin: usize, p: *mut Page) {
        self.pages[bin] = p;
        let size = super::size_class::bin_size(bin);
        if bin == 0 || size > DIRECT_MAX {
            // The 8-byte bin is below C's 16-byte minimum; the rest have no direct entry.
            return;
        }
        // Every class from 16 B on is a multiple of 16, so the sizes of this bin, rounded up
        // to 16, are the multiples of 16 above the previous class up to this one (and 0 for
        // the 16-byte bin).
        let lo = if bin == 1 {
            0
        } else {
            super::size_class::bin_size(bin - 1) / 16 + 1
        };
        for e in &mut self.direct[lo..=size / 16] {
            *e = p;
        }
    }

    #[inline]
    unsafe fn queue_push_front(&mut self, bin: usize, p: *mut Page) {
        // SAFETY: p is one of our bin pages in no queue; bin < NBINS.
        unsafe {
            let head = self.pages[bin];
            (*p).prev = ptr::null_mut();
            if head == empty_page() {
                (*p).next = ptr::null_mut();
                self.tails[bin] = p;
            } else {
                (*p).next = head;
                (*head).prev = p;
            }
            self.set_head(bin, p);
        }
    }

    #[inline]
    unsafe fn queue_push_back(&mut self, bin: usize, p: *mut Page) {
        // SAFETY: as for push_front.
        unsafe {
            if self.pages[bin] == empty_page() {
                return self.queue_push_front(bin, p);
            }
            let tail = self.tails[bin];
            (*p).next = ptr::null_mut();
            (*p).prev = tail;
            (*tail).next = p;
            self.tails[bin] = p;
        }
    }

    #[inline]
    unsafe fn queue_remove(&mut self, bin: usize, p: *mut Page) {
        // SAFETY: p is in bin's queue.
        unsafe {
            let (prev, next) = ((*p).prev, (*p).next);
            if prev.is_null() {
                self.set_head(bin, if next.is_null() { empty_page() } else { next });
            } else {
                (*prev).next = next;
            }
            if next.is_null() {
                self.tails[bin] = prev;
            } else {
                (*next).prev = prev;
            }
            (*p).next = ptr::null_mut();
            (*p).prev = ptr::null_mut();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation.

/// Pops a block of `bin` (the fast path). Null only when memory is exhausted.
///
/// # Safety
/// `bin < NBINS`.
#[inline(always)]
pub unsafe fn alloc_bin(bin: usize) -> *mut u8 {
    let h = heap_or_unset();
    // SAFETY: forwarded contract; h is this thread's heap, or the unset heap, whose pages
    // have no free block, so that alloc_bin_slow (which looks the real heap up) runs.
    unsafe { alloc_bin_in(h, bin) }
}

/// C `malloc`'s fast path for `16 * w - 15 ..= 16 * w` bytes (0 ..= 16 for `w` 0), through
/// `Heap::direct`: a 16-byte aligned block. Null only when memory is exhausted.
///
/// # Safety
/// `w <= DIRECT_MAX / 16`.
#[inline(always)]
pub unsafe fn alloc_direct(w: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe {
        let block = alloc_direct_pop(w);
        if !block.is_null() {
            return block;
        }
        alloc_direct_slow(w)
    }
}

/// [`alloc_direct`]'s pop alone: null when the page has no free block (or the thread has no
/// heap yet), where `alloc_direct` would take its slow path. For callers that do something
/// of their own on failure and want a fast path with no stack frame (C++'s `new`).
///
/// # Safety
/// `w <= DIRECT_MAX / 16`.
#[inline(always)]
pub unsafe fn alloc_direct_pop(w: usize) -> *mut u8 {
    let h = heap_or_unset();
    // SAFETY: w < DIRECT_SLOTS (contract); h is this thread's heap or the unset one; a page in
    // `direct` with a free block is one of ours (EMPTY_PAGE's free is null, so it is never
    // written, and the unset heap's entries are all EMPTY_PAGE).
    unsafe {
        let page = *(*h).direct.get_unchecked(w);
        pop_block(page, (*h).stats.direct_allocs.get_unchecked(w)) as *mut u8
    }
}

/// Takes the first block of `page`'s free list and counts it on `counter`; null if the list
/// is empty. The one pop every allocation path goes through.
///
/// # Safety
/// `page` is a page of the calling thread's heap (or EMPTY_PAGE, whose free list is always
/// empty, so it is never written) and `counter` one of that heap's counters.
#[inline(always)]
unsafe fn pop_block(page: *mut Page, counter: &AtomicU64) -> *mut Block {
    // SAFETY: the page is ours (contract): its free list and counts are ours to change, and a
    // block on the free list is free, so its link is ours to read.
    unsafe {
        let block = (*page).free;
        if !block.is_null() {
            (*page).free = Block::next(block);
            (*page).used += 1;
            bump(counter, 1);
        }
        block
    }
}

/// Clears the first `size` bytes of `block`, just popped from `page`: only its link if the
/// page's free blocks are known to be zero.
///
/// # Safety
/// `block` is a block of `page` just handed out, at least `size` bytes long.
#[inline(always)]
unsafe fn zero_block(page: *const Page, block: *mut Block, size: usize) {
    // SAFETY: the block is ours to write (contract).
    unsafe {
        if (*page).free_is_zero {
            Block::set_next(block, ptr::null_mut());
        } else {
            ptr::write_bytes(block as *mut u8, 0, size);
        }
    }
}

/// The bin whose current page `Heap::direct` slot `w` holds: slot `w` serves sizes up to
/// `16 w`, and slots 0 and 1 both the 16-byte bin.
#[inline(always)]
fn direct_bin(w: usize) -> usize {
    bin_of((w * 16).max(16))
}

/// [`alloc_direct`] when the page has no free block (or the thread has no heap yet).
///
/// # Safety
/// `w <= DIRECT_MAX / 16`.
#[cold]
#[inline(never)]
unsafe extern "C" fn alloc_direct_slow(w: usize) -> *mut u8 {
    let bin = direct_bin(w);
    let h = heap_or_unset();
    // SAFETY: 16 <= max(16 w, 16) <= DIRECT_MAX, so bin < NBINS; h is this thread's heap,
    // whose current page of `bin` (the one alloc_direct looked at) has no free block.
    unsafe {
        if is_unset(h) {
            return alloc_bin_first(bin);
        }
        alloc_bin_slow(h, bin, false)
    }
}

/// [`alloc_bin`] on a thread's first use of its heap slot.
///
/// # Safety
/// `bin < NBINS`.
#[cold]
#[inline(never)]
unsafe extern "C" fn alloc_bin_first(bin: usize) -> *mut u8 {
    // SAFETY: forwarded contract; heap() is this thread's heap.
    unsafe { alloc_bin_in(heap(), bin) }
}

/// [`alloc_bin`] on heap `h`.
///
/// # Safety
/// `bin < NBINS`; `h` is this thread's heap or a node heap whose lock we hold.
#[inline(always)]
unsafe fn alloc_bin_in(h: *mut Heap, bin: usize) -> *mut u8 {
    // SAFETY: h is usable by us (contract); pages[bin] is a valid page (maybe EMPTY_PAGE, whose
    // free is null, so we never write it).
    unsafe {
        let page = *(*h).pages.get_unchecked(bin);
        let block = pop_block(page, (*h).stats.allocs.get_unchecked(bin));
        if !block.is_null() {
            return block as *mut u8;
        }
        alloc_bin_slow(h, bin, false)
    }
}

/// Like [`alloc_bin`], but the first `size` bytes are zero.
///
/// # Safety
/// `bin < NBINS` and `size <= bin_size(bin)`.
#[inline]
pub unsafe fn alloc_bin_zeroed(bin: usize, size: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { alloc_bin_zeroed_in(heap(), bin, size) }
}

#[inline]
unsafe fn alloc_bin_zeroed_in(h: *mut Heap, bin: usize, size: usize) -> *mut u8 {
    // SAFETY: as in alloc_bin_in; the block is ours to write once popped.
    unsafe {
        let page = *(*h).pages.get_unchecked(bin);
        let block = pop_block(page, (*h).stats.allocs.get_unchecked(bin));
        if !block.is_null() {
            zero_block(page, block, size);
            return block as *mut u8;
        }
        // The slow path clears what needs clearing when asked to.
        alloc_bin_slow(h, bin, true)
    }
}

/// The fast path found the bin's current page empty. The most common refill — blocks this
/// thread freed back to that page — is done here, in a function small enough to need no stack
/// frame; everything else tail-calls [`alloc_bin_slow_long`].
///
/// # Safety
/// `h` is this thread's heap, the unset heap, or a node heap whose lock we hold; `bin < NBINS`.
#[cold]
#[inline(never)]
unsafe extern "C" fn alloc_bin_slow(h: *mut Heap, bin: usize, zero: bool) -> *mut u8 {
    if !zero && !is_unset(h) {
        // SAFETY: h is a real heap usable by us and bin < NBINS (contract); its current page
        // of `bin` is ours (or EMPTY_PAGE, whose local_free is null).
        unsafe {
            let page = *(*h).pages.get_unchecked(bin);
            if refill_from_local(h, page) {
                return pop_fresh(h, page, bin, false);
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { alloc_bin_slow_long(h, bin, zero) }
}

/// [`alloc_bin_slow`] the long way: refill, collect, new page.
///
/// # Safety
/// As [`alloc_bin_slow`].
#[cold]
#[inline(never)]
unsafe extern "C" fn alloc_bin_slow_long(h: *mut Heap, bin: usize, zero: bool) -> *mut u8 {
    // The fast path ran on the unset heap: this thread's first allocation of this kind.
    let h = if is_unset(h) { heap() } else { h };
    // SAFETY: forwarded contract.
    let p = unsafe { alloc_bin_refill(h, bin, zero) };
    if p.is_null() {
        os::set_enomem();
    }
    p
}

/// The slow path of a bin allocation: refills the bin's current page or finds another.
///
/// # Safety
/// `h` is this thread's heap (or a node heap whose lock we hold) and `bin < NBINS`.
#[inline(always)]
unsafe fn alloc_bin_refill(h: *mut Heap, bin: usize, zero: bool) -> *mut u8 {
    // SAFETY: h is this thread's heap and bin < NBINS; pages we touch are ours.
    unsafe {
        // The common refill (alloc_bin_slow tries it first, but not for zeroed blocks nor on
        // a thread's first allocation).
        let page = (*h).pages[bin];
        if refill_from_local(h, page) {
            return pop_fresh(h, page, bin, zero);
        }
        if (*h).state != ACTIVE && !heap_init(h) {
            let size = super::size_class::bin_size(bin);
            let align = (1usize << size.trailing_zeros()).min(os::OS_PAGE);
            return dead_alloc(h, size, align, zero);
        }
        heap_tick(h);
        drain_delayed(h);
        let hp = &mut *h;
        let mut page = hp.pages[bin];
        // Full pages that other threads' frees refill (`remote_fed`) stay in the queue, up to
        // this many, before they are parked as full: a page that will get a block back soon
        // does not flip between full and not full (each flip is two slow paths and two atomic
        // state changes). A page its owner's frees refill is parked at once: left in the
        // queue, each walk would take the one or two blocks freed into it since the last,
        // and refills that small are a slow path every few allocations.
        let mut retain = FULL_PAGE_RETAIN;
        while !page.is_null() && page != empty_page() {
            let next = (*page).next;
            let back = (*page).collect();
            hp.returned = hp.returned.saturating_add(back);
            if (*page).has_free() || (*page).extend() {
                if hp.pages[bin] != page {
                    hp.queue_remove(bin, page);
                    hp.queue_push_front(bin, page);
                }
                return pop_fresh(h, page, bin, zero);
            }
            if retain > 0 && ((*page).remote_fed || (*page).reserved < FEW_BLOCKS) {
                retain -= 1;
                page = next;
                continue;
            }
            page_to_full(h, bin, page);
            if (*page).flags & PAGE_IN_FULL == 0 {
                // A remote free slipped in while it went full: it is back at the front.
                return pop_fresh(h, page, bin, zero);
            }
            page = next;
        }
        let page = new_bin_page(h, bin);
        if page.is_null() {
            return ptr::null_mut();
        }
        hp.queue_push_front(bin, page);
        (*page).extend();
        pop_fresh(h, page, bin, zero)
    }
}

/// The common refill: `page`, the current page of its bin, has blocks its owner freed; they
/// become its free list. Not on every 16th tick, which goes the long way instead (collect
/// remote frees, drain delayed frees, purge): the heartbeat that keeps that work going stays
/// deterministic. Returns whether `page` now has a free block.
///
/// # Safety
/// `h` is a heap usable by us and `page` is its current page of some bin (or EMPTY_PAGE).
#[inline(always)]
unsafe fn refill_from_local(h: *mut Heap, page: *mut Page) -> bool {
    // SAFETY: the page is ours (EMPTY_PAGE's local_free is null, so it is never written).
    unsafe {
        if (*page).local_free.is_null() || (*h).tick & 15 == 15 {
            return false;
        }
        (*h).tick = (*h).tick.wrapping_add(1);
        (*page).free = (*page).local_free;
        (*page).local_free = ptr::null_mut();
        (*page).free_is_zero = false;
        (*page).remote_fed = false;
        true
    }
}

/// Full, remote-fed pages a queue walk leaves in place before parking further ones as full.
const FULL_PAGE_RETAIN: usize = 2;
/// Pages of fewer blocks than this are left in the queue like remote-fed ones: each block is
/// a large share of the page, so one freed block is a worthwhile refill, and parking and
/// unparking such pages on every block would cost more than the walk.
const FEW_BLOCKS: u32 = 64;

#[inline]
unsafe fn pop_fresh(h: *mut Heap, page: *mut Page, bin: usize, zero: bool) -> *mut u8 {
    // SAFETY: page is ours, in bin's queue (so bin < NBINS), and has a free block.
    unsafe {
        let block = pop_block(page, (*h).stats.allocs.get_unchecked(bin));
        if zero {
            zero_block(page, block, (*page).block_size as usize);
        }
        block as *mut u8
    }
}

/// Takes `page` (which has no free block) out of its queue and marks it full.
unsafe fn page_to_full(h: *mut Heap, bin: usize, page: *mut Page) {
    // SAFETY: page is ours and in bin's queue.
    unsafe {
        (*h).queue_remove(bin, page);
        (*page).flags |= PAGE_IN_FULL;
        (*page).thread_free.try_set_state(USE_DELAYED, false);
        // A remote free may have landed before the state changed: look once more.
        if (*page).thread_free.has_blocks() {
            (*page).collect();
            if (*page).has_free() {
                // Back in the queue at once, at the front: the caller takes from it now.
                (*page).flags &= !PAGE_IN_FULL;
                (*page).thread_free.try_set_state(NORMAL, false);
                (*h).queue_push_front(bin, page);
            }
        }
    }
}

unsafe fn unfull(h: *mut Heap, page: *mut Page) {
    // SAFETY: page is one of our full bin pages.
    unsafe {
        (*page).flags &= !PAGE_IN_FULL;
        // If a delayed free is in flight it ends in NORMAL by itself.
        (*page).thread_free.try_set_state(NORMAL, false);
        // At the back: a page with one block back should not become the current page.
        (*h).queue_push_back((*page).bin as usize, page);
    }
}

/// A fresh page for `bin` from our segments, an adopted one, the pool, or the OS.
unsafe fn new_bin_page(h: *mut Heap, bin: usize) -> *mut Page {
    let n = page_slices(bin);
    // SAFETY: h is ours; take_slices is called on our own segments.
    unsafe {
        let page = take_slices(h, n, n == 1);
        if page.is_null() {
            return ptr::null_mut();
        }
        let bytes = Segment::run_bytes((*page).slice_index(), n);
        if n > 1 && !(*page).fresh && (*h).pages[bin] == empty_page() {
            // The only page of a medium bin, on resident slices: keep its first slice and give
            // the rest back now. Its blocks are carved one extension at a time, and a bin with
            // a few blocks live would otherwise pin the whole run (512 KiB) for as long as the
            // page lives. (A bin that already has pages is busy: its pages come and go, and
            // giving their memory back each time would only fault it in again.)
            let keep = SLICE_SIZE;
            os::decommit((*page).start().add(keep), bytes - keep);
        }
        (*page).init_bin(bin, bytes);
        page
    }
}

/// `n` slices from one of our segments, adopting or mapping a segment if none has room.
unsafe fn take_slices(h: *mut Heap, n: usize, allow_slice0: bool) -> *mut Page {
    // SAFETY: all segments on our list are ours.
    unsafe {
        // Resident free slices of any of our segments first, then any free slices: new memory
        // is touched only when no segment has a resident run that fits.
        for dirty_only in [true, false] {
            let mut seg = (*h).segments;
            while !seg.is_null() {
                let p = Segment::take_slices_from(seg, n, allow_slice0, dirty_only);
                if !p.is_null() {
                    return p;
                }
                seg = (*seg).next;
            }
        }
        // Adopt abandoned segments of our node first: their free slices and live pages are
        // reused.
        let node = (*h).node as usize;
        while ABANDONED[node].count.load(Ordering::Relaxed) > 0 {
            let seg = ABANDONED[node].pop(h as usize, (*h).tag);
            if seg.is_null() {
                break;
            }
            adopt_segment(h, seg);
            let p = Segment::take_slices(seg, n, allow_slice0);
            if !p.is_null() {
                return p;
            }
        }
        // About to take a new segment: first give up those of ours that are (nearly) full,
        // unless other threads have been freeing our blocks back to us since the last one
        // (a producer whose consumers return its messages keeps its segments).
        if (*h).returned == 0 {
            abandon_full(h);
        }
        (*h).returned = 0;
        // A tier budget may send the new segment to another node (spill).
        let node = if super::route::ACTIVE.load(Ordering::Relaxed) && !(*h).shared {
            (super::route::segment_node(node as u32) as usize).min(MAX_NODES - 1)
        } else {
            node
        };
        let mut seg = POOLS[node].pop(h as usize, (*h).tag);
        if seg.is_null() {
            seg = Segment::map_normal(node as u32, true);
            if seg.is_null() {
                return ptr::null_mut();
            }
            set_owner(seg, h as usize, (*h).tag);
        }
        // A pooled segment may come with resident free slices: they are due for purging like
        // any others.
        (*seg).purge_at = 0;
        book_free_slices(seg, os::now_ms());
        link_segment(h, seg);
        Segment::take_slices(seg, n, allow_slice0)
    }
}

/// Whether a page can give out no block without a free coming back first: nothing free,
/// nothing left to carve, no remote free waiting to be collected (a large page always: its
/// one block is out). A page that other threads are freeing into is not exhausted: its owner
/// is about to reuse those blocks (a producer whose consumers free its messages).
#[inline]
unsafe fn page_exhausted(p: *const Page) -> bool {
    // SAFETY: p is a descriptor of a page in use in one of our segments.
    unsafe {
        (*p).kind == PageKind::Large as u8
            || ((*p).free.is_null()
                && (*p).local_free.is_null()
                && (*p).capacity == (*p).reserved
                && !(*p).thread_free.has_blocks())
    }
}

/// Whether `seg` (ours) has no free slice and at most a quarter of its pages can still give
/// out a block.
unsafe fn segment_nearly_full(seg: *mut Segment) -> bool {
    // SAFETY: seg is ours (caller).
    unsafe {
        if (*seg).free_slices != 0 {
            return false;
        }
        let (mut pages, mut open) = (0u32, 0u32);
        for_each_used_page(seg, |p| {
            pages += 1;
            open += !page_exhausted(p) as u32;
        });
        open * 4 <= pages
    }
}

/// Gives up our (nearly) full segments when we are about to take a new one. Such a segment
/// is of little use to us until its blocks are freed, and whoever frees into it first takes
/// it over (claim on free) and allocates from what it freed. This is what lets memory one
/// thread filled be reused by others while that thread lives: a thread that builds a data
/// set and hands it to workers (then waits for them) would otherwise keep every block they
/// free, uncollected, until its own next slow path. If we free into it ourselves, we take it
/// back the same way. These segments go to a list of their own, which `take_slices` does not
/// search, so a thread that only grows does not adopt them back again and again.
///
/// # Safety
/// `h` is this thread's heap, in a slow path that holds no page of it.
unsafe fn abandon_full(h: *mut Heap) {
    // SAFETY: h is ours; every segment looked at is on our list.
    unsafe {
        if (*h).shared || (*h).state != ACTIVE {
            return;
        }
        // Each pass abandons one segment (or finds none): the list may change under a drain.
        for _ in 0..64 {
            let mut seg = (*h).segments;
            while !seg.is_null() && !segment_nearly_full(seg) {
                seg = (*seg).next;
            }
            if seg.is_null() {
                return;
            }
            abandon_segment(h, seg);
        }
    }
}

/// Abandons one (nearly) full segment of ours, the way thread exit abandons all of them.
unsafe fn abandon_segment(h: *mut Heap, seg: *mut Segment) {
    // SAFETY: seg is ours; the steps are release_all's, for one segment.
    unsafe {
        // 1. No more delayed frees for its pages (waits out one in flight), then take in
        //    those already delayed, while the pages are still ours.
        for_each_used_page(seg, |p| (*p).thread_free.set_never_delayed());
        drain_delayed(h);
        // Draining can give pages back and even release segments: go on only if seg is still
        // on our list.
        let mut s = (*h).segments;
        while !s.is_null() && s != seg {
            s = (*s).next;
        }
        if s.is_null() {
            return;
        }
        // 2. Out of our queues (the pages that could still give out a block go with it) and
        //    off our list, onto the full abandoned list.
        for_each_used_page(seg, |p| {
            if (*p).kind == PageKind::Bin as u8 && (*p).flags & PAGE_IN_FULL == 0 {
                (*h).queue_remove((*p).bin as usize, p);
            }
        });
        unlink_segment(h, seg);
        book_free_slices(seg, os::now_ms());
        PAGES_ABANDONED.fetch_add((*seg).used_pages as usize, Ordering::Relaxed);
        ABANDONED_FULL[((*seg).node as usize).min(MAX_NODES - 1)].push_abandoned(seg);
    }
}

unsafe fn link_segment(h: *mut Heap, seg: *mut Segment) {
    // SAFETY: seg is ours and on no list; our segment list is ours alone.
    unsafe { list_push_front(core::ptr::addr_of_mut!((*h).segments), seg) }
}

unsafe fn unlink_segment(h: *mut Heap, seg: *mut Segment) {
    // SAFETY: seg is on our list, which is ours alone.
    unsafe { list_unlink(core::ptr::addr_of_mut!((*h).segments), seg) }
}

/// Takes over an abandoned segment whose owner we just became.
unsafe fn adopt_segment(h: *mut Heap, seg: *mut Segment) {
    // SAFETY: we own seg now (its owner field holds our address); its pages are NEVER_DELAYED,
    // so no thread is in a delayed free on them.
    unsafe {
        link_segment(h, seg);
        (*seg).purge_at = 0;
        let now = os::now_ms();
        let mut adopted = 0usize;
        for_each_used_page(seg, |p| {
            adopted += 1;
            (*p).thread_free.force_state(NORMAL);
            (*p).flags = 0;
            (*p).next = ptr::null_mut();
            (*p).prev = ptr::null_mut();
            (*p).collect();
            if (*p).used == 0 {
                release_empty_page(h, p, now, init::PURGE_DELAY_MS.load(Ordering::Relaxed));
                return;
            }
            if (*p).kind == PageKind::Large as u8 {
                (*p).flags = PAGE_IN_FULL;
                (*p).thread_free.try_set_state(USE_DELAYED, false);
                if (*p).thread_free.has_blocks() {
                    (*p).collect();
                    if (*p).used == 0 {
                        free_large_page(h, p);
                    }
                }
            } else if (*p).has_room() {
                (*h).queue_push_back((*p).bin as usize, p);
            } else {
                (*p).flags = PAGE_IN_FULL;
                (*p).thread_free.try_set_state(USE_DELAYED, false);
                if (*p).thread_free.has_blocks() {
                    (*p).collect();
                    if (*p).has_free() {
                        unfull(h, p);
                    }
                }
            }
        });
        PAGES_ADOPTED.fetch_add(adopted, Ordering::Relaxed);
        // Free slices it came with are due for purging like any others.
        book_free_slices(seg, now);
    }
}

/// Gives back a page found empty outside the free path (thread exit, adoption), keeping the
/// large-object byte counters right.
unsafe fn release_empty_page(h: *mut Heap, p: *mut Page, now: u64, delay: u64) {
    // SAFETY: p is one of our pages with no live block.
    unsafe {
        if (*p).kind == PageKind::Large as u8 {
            bump(&(*h).stats.large_free_bytes, (*p).block_size as u64);
        }
        (*p).flags = 0;
        Segment::free_page(p, now, delay);
    }
}

/// Allocation of anything that is not a plain bin request: aligned, large, huge.
///
/// # Safety
/// None beyond GlobalAlloc's: `align` is a power of two.
#[cold]
pub unsafe extern "C" fn alloc_generic(size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: forwarded contract; heap() is ours.
    let p = unsafe { alloc_generic_in(heap(), size, align, zero) };
    if p.is_null() {
        os::set_enomem();
    }
    p
}

/// [`alloc_generic`] on heap `h` (this thread's, or a node heap whose lock we hold).
unsafe fn alloc_generic_in(h: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: each branch keeps to its callee's contract.
    unsafe {
        if super::route::ACTIVE.load(Ordering::Relaxed)
            && !(*h).shared
            && ((*h).state == ACTIVE || heap_init(h))
        {
            if let Some(node) = super::route::route(size, align, (*h).node) {
                if node != (*h).node {
                    return node_alloc(node, size, align, zero);
                }
            }
        }
        if align <= 16 && size <= MEDIUM_MAX {
            let bin = bin_of(size.max(align));
            return if zero {
                alloc_bin_zeroed_in(h, bin, size)
            } else {
                alloc_bin_in(h, bin)
            };
        }
        if align <= os::OS_PAGE && size <= MEDIUM_MAX {
            if let Some(bin) = bin_for_aligned(size, align) {
                return if zero {
                    alloc_bin_zeroed_in(h, bin, size)
                } else {
                    alloc_bin_in(h, bin)
                };
            }
        }
        if align <= SLICE_SIZE && size <= LARGE_MAX {
            return alloc_large(h, size, zero);
        }
        alloc_huge(h, size, align, zero)
    }
}

/// A heap per node, shared by every thread under a lock, for explicit placement
/// (`Placed::node`). Its segments come from its node's pool and are bound to that node.
struct NodeHeap {
    lock: SpinLock,
    heap: UnsafeCell<Heap>,
}
// SAFETY: `heap` is only touched with `lock` held (remote frees touch only the atomics that
// are meant for other threads: page `thread_free` words and the heap's `delayed` stack).
unsafe impl Sync for NodeHeap {}
#[allow(clippy::declare_interior_mutable_const)]
const NODE_HEAP: NodeHeap = NodeHeap {
    lock: SpinLock::new(),
    heap: UnsafeCell::new(Heap::new()),
};
static NODE_HEAPS: [NodeHeap; MAX_NODES] = [NODE_HEAP; MAX_NODES];
/// Bit `n` is set once node `n`'s heap has been set up (it never goes back to unused), so
/// that a collection locks only the node heaps that were ever used: one shared load instead
/// of a compare-and-swap on each of `MAX_NODES` lines that every thread's collections write.
static NODE_HEAPS_USED: AtomicU64 = AtomicU64::new(0);
const _: () = assert!(MAX_NODES <= 64, "NODE_HEAPS_USED has a bit per node");

/// Allocates `size` bytes at `align` whose every page is on `node` (bound strictly when
/// binding is on). The block is freed by [`free`], from any thread. Null on failure or if
/// `node` is out of range; the caller checks that the node exists and has memory.
///
/// # Safety
/// `align` is a power of two.
pub(crate) unsafe fn node_alloc(node: u32, size: usize, align: usize, zero: bool) -> *mut u8 {
    let Some(nh) = NODE_HEAPS.get(node as usize) else {
        return ptr::null_mut();
    };
    let _g = nh.lock.lock();
    let h = nh.heap.get();
    // SAFETY: we hold the node heap's lock, so it is ours for the duration.
    unsafe {
        if (*h).state != ACTIVE {
            (*h).shared = true;
            register(h, node);
            NODE_HEAPS_USED.fetch_or(1 << node, Ordering::Relaxed);
        }
        alloc_generic_in(h, size, align, zero)
    }
}

/// Collects and purges every node heap that is free right now (try-lock: never waits).
fn collect_node_heaps(now: u64, delay: u64) {
    let mut used = NODE_HEAPS_USED.load(Ordering::Relaxed);
    while used != 0 {
        let nh = &NODE_HEAPS[used.trailing_zeros() as usize];
        used &= used - 1;
        if let Some(_g) = nh.lock.try_lock() {
            let h = nh.heap.get();
            // SAFETY: we hold its lock.
            unsafe {
                if (*h).state == ACTIVE {
                    heap_collect(h, now, delay);
                }
            }
        }
    }
}

/// Allocation for a thread whose heap is gone (see `DEAD`): from its node's shared heap.
#[cold]
unsafe fn dead_alloc(h: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: h is this thread's (dead) heap; we only read its node. If `h` is itself a node
    // heap it is ACTIVE and never gets here.
    unsafe {
        if (*h).shared {
            return ptr::null_mut();
        }
        node_alloc((*h).node, size, align, zero)
    }
}

unsafe fn alloc_large(h: *mut Heap, size: usize, zero: bool) -> *mut u8 {
    // SAFETY: h is ours; the page we get is ours.
    unsafe {
        if (*h).state != ACTIVE && !heap_init(h) {
            return dead_alloc(h, size, SLICE_SIZE, zero);
        }
        heap_tick(h);
        drain_delayed(h);
        let n = size.div_ceil(SLICE_SIZE).max(1);
        let page = take_slices(h, n, false);
        if page.is_null() {
            return ptr::null_mut();
        }
        let p = &mut *page;
        p.kind = PageKind::Large as u8;
        p.set_bin(LARGE_BIN as u8);
        p.block_size = (n * SLICE_SIZE) as u32;
        p.reserved = 1;
        p.capacity = 1;
        p.used = 1;
        p.flags = PAGE_IN_FULL;
        p.thread_free.force_state(USE_DELAYED);
        bump(&(*h).stats.allocs[LARGE_BIN], 1);
        bump(&(*h).stats.large_alloc_bytes, p.block_size as u64);
        if zero && !p.fresh {
            ptr::write_bytes(p.start(), 0, size);
        }
        p.fresh = false;
        p.start()
    }
}

unsafe fn alloc_huge(h: *mut Heap, size: usize, align: usize, zero: bool) -> *mut u8 {
    let Some((offset, map_size)) = huge::layout_for(size, align) else {
        return ptr::null_mut();
    };
    // SAFETY: h is ours; cached segments are ours alone.
    unsafe {
        if (*h).state != ACTIVE && !heap_init(h) {
            return dead_alloc(h, size, align, zero);
        }
        heap_tick(h);
        // The node the thread runs on now: a huge block is served from the cache (which
        // holds mappings of the heap's node) or mapped on the heap's node, so a move must be
        // noticed here rather than within 16 slow paths, or the block lands on the old node.
        // Cheap next to a huge allocation (no system call on one node, else a CPU lookup).
        if !(*h).shared && !(*h).walking {
            let home = (home::home_node() as usize).min(MAX_NODES - 1) as u32;
            if home != (*h).node {
                rehome(h, home);
            }
        }
        let node = (*h).node;
        // The smallest cached mapping of our node that is big enough and at most four times
        // the need (all are of our node: a move empties the cache, and free_huge keeps only
        // mappings of our node).
        let mut best: Option<usize> = None;
        for (i, e) in (*h).huge_cache.iter().enumerate() {
            if !e.seg.is_null() && (*e.seg).node as u32 == node {
                let ms = (*e.seg).map_size;
                if ms >= map_size
                    && ms >> huge::CACHE_FIT_SHIFT <= map_size
                    && best.is_none_or(|b| ms < (*(*h).huge_cache[b].seg).map_size)
                {
                    best = Some(i);
                }
            }
        }
        let mut seg = ptr::null_mut();
        if let Some(i) = best {
            seg = (*h).huge_cache[i].seg;
            (*h).huge_cache[i] = EMPTY_ENTRY;
        } else if let Some(i) = (0..CACHE_SLOTS)
            .filter(|&i| {
                let c = (*h).huge_cache[i].seg;
                // Only smaller ones: a mapping more than CACHE_FIT_SHIFT times too big was
                // passed over above and stays cached (enlarging it would shrink it).
                !c.is_null() && (*c).node as u32 == node && (*c).map_size < map_size
            })
            .max_by_key(|&i| (*(*h).huge_cache[i].seg).map_size)
        {
            // Nothing big enough: the biggest cached mapping is moved into a mapping of the
            // size needed, so that its resident pages serve the object instead of fresh ones
            // (each a page fault). The filter above makes it smaller than map_size.
            let old = (*h).huge_cache[i].seg;
            let old_map = (*old).map_size;
            let grown = huge::enlarge(old, map_size);
            if !grown.is_null() {
                (*h).huge_cache[i] = EMPTY_ENTRY;
                commit_add((*grown).node, map_size - old_map);
                seg = grown;
            }
        }
        let reused = !seg.is_null();
        if reused {
            let ms = (*seg).map_size;
            // The tail the new object does not need may be resident from the last one: when
            // it is at least as big as the object, it goes back to the OS.
            if ms - map_size >= huge::CACHE_TRIM_MIN.max(map_size) {
                os::decommit((seg as *mut u8).add(map_size), ms - map_size);
            }
            huge::init(seg, ms, offset, size, node);
        } else {
            seg = huge::map(map_size, offset, size, node, true);
            if seg.is_null() {
                return ptr::null_mut();
            }
            commit_add(node as u16, map_size);
        }
        let obj = huge::object(seg);
        huge::register(seg, os::now_ms());
        bump(&(*h).stats.huge_allocs, 1);
        bump(&(*h).stats.huge_alloc_bytes, (*seg).huge_size as u64);
        if zero && reused {
            ptr::write_bytes(obj, 0, size);
        }
        obj
    }
}

// ---------------------------------------------------------------------------------------------
// Free.

/// Grows a huge object to `new_size` bytes without copying it (its pages move to a bigger
/// mapping). Null if `p` is not a huge object, or it cannot be grown that way; then the
/// caller copies.
///
/// # Safety
/// `p` is a live block of ours that the caller may reallocate.
pub unsafe fn grow_huge(p: *mut u8, new_size: usize) -> *mut u8 {
    let seg = segment_of(p);
    // SAFETY: p is live, so its segment header is valid; a huge object is the caller's alone.
    unsafe {
        if (*seg).kind != SegmentKind::Huge || new_size <= (*seg).huge_size {
            return ptr::null_mut();
        }
        let h = heap();
        if (*h).state != ACTIVE {
            return ptr::null_mut();
        }
        let old_size = (*seg).huge_size;
        // The bytes are booked on this heap's counters, which must own the object's node:
        // `grow` checks it once the demoter can no longer change it (not here, unclaimed).
        let new = huge::grow(seg, new_size, (*h).node as u16);
        if new.is_null() {
            return ptr::null_mut();
        }
        bump(
            &(*h).stats.huge_alloc_bytes,
            ((*new).huge_size - old_size) as u64,
        );
        huge::object(new)
    }
}

/// Frees `p` (any block tieralloc handed out, from any thread).
///
/// # Safety
/// `p` was returned by this allocator and is not freed yet.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    let seg = segment_of(p);
    // The unset heap owns no segment, so a thread's first free goes to free_other, which
    // looks the real heap up.
    let h = heap_or_unset();
    // SAFETY: p is a live block of ours, so its segment header is mapped and valid.
    unsafe {
        if (*seg).owner.load(Ordering::Relaxed) == h as usize {
            free_owned(h, seg, p);
        } else {
            free_other(h, seg, p);
        }
    }
}

/// C's `free`: like [`free`], but `p` may also be null or memory tieralloc never handed out
/// (ignored). One load of the segment map answers both "is it ours" and "do we own it".
///
/// # Safety
/// `p` is null, memory outside every tieralloc segment, or a live block of ours.
#[inline(always)]
pub unsafe fn free_c(p: *mut u8) {
    let tag = map_tag(p);
    // The unset heap's tag is NO_TAG, which no entry holds: a thread's first free goes to
    // free_other like any other, which looks the real heap up.
    let h = heap_or_unset();
    // SAFETY: an entry equal to our tag means we own p's segment (segment::set_owner), and a
    // non-zero one that p lies in a segment of ours, so (contract) p is a live block of it.
    unsafe {
        if tag == (*h).tag {
            free_owned(h, segment_of(p), p);
        } else if tag != 0 {
            free_other(h, segment_of(p), p);
        }
    }
}

/// [`free`] of a block of a segment `h` owns.
///
/// # Safety
/// `h` is this thread's heap, owner of `seg`, and `p` a live block of `seg`.
#[inline(always)]
unsafe fn free_owned(h: *mut Heap, seg: *mut Segment, p: *mut u8) {
    // SAFETY: the page is ours (contract), so its owner line is ours to write.
    unsafe {
        let page = page_of(seg, p);
        let b = p as *mut Block;
        Block::set_next(b, (*page).local_free);
        (*page).local_free = b;
        // Counted before `used` drops, so that the branch tests the flags the decrement sets
        // (no compare, no flag kept in a register across the counter's add).
        bump((*h).stats.frees.get_unchecked((*page).bin as usize), 1);
        let used = (*page).used - 1;
        (*page).used = used;
        if used == 0 || (*page).flags != 0 {
            free_local_slow(h, page);
        }
    }
}

/// [`free`] on a thread's first use of its heap slot (a thread whose first call frees).
///
/// # Safety
/// As [`free`].
#[cold]
#[inline(never)]
unsafe extern "C" fn free_first(p: *mut u8) {
    let _ = heap();
    // SAFETY: forwarded contract; the slot is set now, so free takes its normal path.
    unsafe { free(p) }
}

/// Frees a block of one of our own pages outside the fast path (delayed frees, adoption).
/// `count`: whether this free is counted here (false when the remote thread counted it).
unsafe fn free_local(h: *mut Heap, page: *mut Page, b: *mut Block, count: bool) {
    // SAFETY: page is ours and b is a live block of it.
    unsafe {
        Block::set_next(b, (*page).local_free);
        (*page).local_free = b;
        (*page).used -= 1;
        if count {
            bump(&(*h).stats.frees[(*page).bin as usize], 1);
        }
        if (*page).used == 0 || (*page).flags != 0 {
            free_local_slow(h, page);
        }
    }
}

#[cold]
#[inline(never)]
unsafe extern "C" fn free_local_slow(h: *mut Heap, page: *mut Page) {
    // SAFETY: page is ours.
    unsafe {
        free_local_page_event(h, page);
        // Last: the tick may collect and retire pages, including this one.
        heap_tick(h);
    }
}

unsafe fn free_local_page_event(h: *mut Heap, page: *mut Page) {
    // SAFETY: page is ours.
    unsafe {
        if (*page).kind == PageKind::Large as u8 {
            free_large_page(h, page);
            return;
        }
        if (*page).flags & PAGE_IN_FULL != 0 {
            unfull(h, page);
        }
        // An empty page goes back to its segment at once, unless it is its bin's current
        // page: that one stays (the next collection retires it if it is still empty then),
        // because retiring it would throw away exactly the free blocks the next allocations
        // need (in a FIFO workload the allocator would be left with one free block at a time
        // and take the slow path on every allocation).
        let bin = (*page).bin as usize;
        if (*page).used == 0 && (*h).pages[bin] != page {
            (*h).queue_remove(bin, page);
            retire_page_of(h, page);
        }
    }
}

/// Retires an empty page outside a collection. If that empties its segment and we have
/// another one, the segment goes to the pool now: a thread that frees what others left behind
/// (and adopted their segments to do it) does not hold on to them until its next collection,
/// which may be far away if it hardly allocates.
unsafe fn retire_page_of(h: *mut Heap, page: *mut Page) {
    // SAFETY: page is ours, unused and in no queue; its segment is on our list.
    unsafe {
        let seg = (*page).segment();
        if retire_page(page) && ((*h).segments != seg || !(*seg).next.is_null()) {
            // Unpurged: the next thread that needs a segment takes it from the pool with its
            // memory still resident (no faults); the pool unmaps it after the delay otherwise.
            unlink_segment(h, seg);
            release_segment_dirty(seg, os::now_ms());
        }
    }
}

unsafe fn free_large_page(h: *mut Heap, page: *mut Page) {
    // SAFETY: page is one of our large pages, now unused.
    unsafe {
        bump(&(*h).stats.large_free_bytes, (*page).block_size as u64);
        (*page).flags = 0;
        (*page).thread_free.force_state(NORMAL);
        retire_page(page);
    }
}

/// Gives an unused page's slices back to its segment. A segment left empty stays on our
/// list until its purge time (see `heap_collect`), so a thread that frees and reallocates a
/// large object does not go through the pool each time.
/// Returns true if the segment now has no page in use.
unsafe fn retire_page(page: *mut Page) -> bool {
    // SAFETY: page is ours, unused and in no queue.
    unsafe {
        let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
        Segment::free_page(page, os::now_ms(), delay)
    }
}

/// A free of a block we do not own: another thread's, an abandoned segment's, or a huge one
/// (or, from [`free_c`], one of our own when we have no tag: left to [`free_other_slow`]).
///
/// The common case, a small or large block of a live thread on our own node freed by an
/// active heap (every free of a producer/consumer hand-off), is handled here with no call
/// but the tail call to the rare paths, so it needs no stack frame; everything else goes to
/// [`free_other_slow`].
#[inline(never)]
unsafe extern "C" fn free_other(h: *mut Heap, seg: *mut Segment, p: *mut u8) {
    // SAFETY: p is live, so seg is valid until we push p; we read what we need before.
    unsafe {
        let owner = (*seg).owner.load(Ordering::Acquire);
        if (*h).state != ACTIVE
            || (*seg).kind == SegmentKind::Huge
            || owner == 0
            || owner == h as usize
            || (*seg).node as u32 != (*h).node
        {
            return free_other_slow(h, seg, p);
        }
        // Only the descriptor's remote line is read or written here (see Page).
        let page = page_of_remote(seg, p);
        // An active heap of the block's node: its own counters, no per-node correction (see
        // count_node_free). A page's bin is at most LARGE_BIN = NBINS, inside the array.
        bump(
            (*h).stats.frees.get_unchecked((*page).remote_bin as usize),
            1,
        );
        bump(&(*h).stats.remote_frees, 1);
        if let Pushed::Delayed = (*page).thread_free.push(p as *mut Block) {
            free_delayed(seg, page, p);
        }
    }
}

/// Ends a remote free that found the page in the owner's full queue: the block goes on the
/// owner heap's delayed stack instead of the page's list.
///
/// # Safety
/// `thread_free.push` of `p` on `page` (of `seg`) just returned `Pushed::Delayed`.
#[cold]
#[inline(never)]
unsafe extern "C" fn free_delayed(seg: *mut Segment, page: *mut Page, p: *mut u8) {
    // SAFETY: the state is DELAYED_FREEING, so the owner cannot leave until we finish.
    unsafe {
        let owner = (*seg).owner.load(Ordering::Acquire) as *mut Heap;
        delayed::finish(&(*owner).delayed.0, &(*page).thread_free, p as *mut Block);
    }
}

/// [`free_other`] for everything but the common case: a heap's first free, a huge object, an
/// abandoned segment, a block of another node, a heap that is no longer active.
#[cold]
#[inline(never)]
unsafe extern "C" fn free_other_slow(h: *mut Heap, seg: *mut Segment, p: *mut u8) {
    if is_unset(h) {
        // SAFETY: forwarded contract.
        return unsafe { free_first(p) };
    }
    // SAFETY: p is live, so seg is valid until we push p; we read what we need before.
    unsafe {
        if (*h).state == UNINIT {
            // Register this thread's heap (counters, exit hook) at its first free, so that it
            // can adopt what it frees into. A DEAD heap never comes back (see DEAD); one that
            // is not active counts into the retired totals.
            heap_init(h);
        }
        if (*seg).kind == SegmentKind::Huge {
            free_huge(h, seg);
            return;
        }
        let page = page_of(seg, p);
        let owner = (*seg).owner.load(Ordering::Acquire);
        if owner == h as usize {
            // Our own block, reaching here from C's free because we have no tag (see
            // free_c): an ordinary local free.
            free_owned(h, seg, p);
            return;
        }
        if owner == 0 {
            // Abandoned: adopt the whole segment, so that the blocks we free into it are the
            // ones we allocate next, then free locally. (Our live block keeps the segment from
            // being released meanwhile.) Only a heap of the segment's node takes it, so its
            // pages stay where they are. A thread that only frees does not sit on what it
            // takes: pages it empties are given back at once (see free_local_page_event).
            let node = ((*seg).node as usize).min(MAX_NODES - 1);
            if (*h).state == ACTIVE
                && node as u32 == (*h).node
                && (ABANDONED_FULL[node].claim(seg, h as usize, (*h).tag)
                    || ABANDONED[node].claim(seg, h as usize, (*h).tag))
            {
                adopt_segment(h, seg);
                free_local(h, page, p as *mut Block, true);
                return;
            }
        }
        let (c, shared) = counters(h);
        add(&c.frees[(*page).bin as usize], 1, shared);
        add(&c.remote_frees, 1, shared);
        // A large block's bytes are booked off its node by the heap that takes the emptied
        // page back (`free_large_page`, `release_empty_page`); here only the free counts.
        let bytes = if (*page).bin as usize == LARGE_BIN {
            0
        } else {
            (*page).block_size as u64
        };
        count_node_free(h, (*seg).node, bytes);
        if let Pushed::Delayed = (*page).thread_free.push(p as *mut Block) {
            free_delayed(seg, page, p);
        }
    }
}

/// The counters a free by heap `h` goes to: its own (owner-only, `shared` false), or the
/// retired totals (atomic adds) if it is not active.
#[inline]
unsafe fn counters(h: *mut Heap) -> (&'static HeapStats, bool) {
    // SAFETY: h is this thread's heap, alive for the thread's life.
    unsafe {
        if (*h).state == ACTIVE {
            (&*core::ptr::addr_of!((*h).stats), false)
        } else {
            (&RETIRED, true)
        }
    }
}

#[inline]
fn add(c: &AtomicU64, n: u64, shared: bool) {
    if shared {
        c.fetch_add(n, Ordering::Relaxed);
    } else {
        bump(c, n);
    }
}

/// Books a remote free of `bytes` living on `node` for the per-node totals: a free from a
/// thread of another node (or from a heap that is not active, whose counters no longer
/// belong to any node) lowers that node's live bytes directly.
#[inline]
unsafe fn count_node_free(h: *mut Heap, node: u16, bytes: u64) {
    let n = (node as usize).min(MAX_NODES - 1);
    // SAFETY: h is ours.
    unsafe {
        let active = (*h).state == ACTIVE;
        if active && node as u32 == (*h).node {
            return;
        }
        if active {
            bump(&(*h).stats.foreign_free_bytes, bytes);
        }
        if node as u32 != (*h).node {
            CROSS_FREES[n].fetch_add(1, Ordering::Relaxed);
        }
    }
    CROSS_FREED_BYTES[n].fetch_add(bytes, Ordering::Relaxed);
}

unsafe fn free_huge(h: *mut Heap, seg: *mut Segment) {
    // SAFETY: seg is a huge segment whose object is being freed by us; once it is out of the
    // registry (which waits for a demoter that has it claimed), nobody else uses it.
    unsafe {
        huge::unregister(seg);
        let (c, shared) = counters(h);
        add(&c.huge_frees, 1, shared);
        add(&c.huge_free_bytes, (*seg).huge_size as u64, shared);
        let same_node = (*seg).node as u32 == (*h).node;
        count_node_free(h, (*seg).node, (*seg).huge_size as u64);
        // Only a span of our own node goes in our cache: reusing it elsewhere would misplace it.
        let ms = (*seg).map_size;
        if (*h).state == ACTIVE && same_node && ms <= huge::CACHE_MAX_BYTES {
            // Make room (in slots and bytes) by unmapping the mappings cached longest.
            let cache = &mut (*h).huge_cache;
            loop {
                let held: usize = cache
                    .iter()
                    .filter(|e| !e.seg.is_null())
                    .map(|e| (*e.seg).map_size)
                    .sum();
                let free_slot = cache.iter().position(|e| e.seg.is_null());
                if let Some(i) = free_slot {
                    if held + ms <= huge::CACHE_MAX_BYTES {
                        cache[i] = CacheEntry {
                            seg,
                            freed_at: os::now_ms(),
                        };
                        heap_tick(h);
                        return;
                    }
                }
                let Some(oldest) = (0..CACHE_SLOTS)
                    .filter(|&i| !cache[i].seg.is_null())
                    .min_by_key(|&i| cache[i].freed_at)
                else {
                    break;
                };
                let old = cache[oldest].seg;
                cache[oldest] = EMPTY_ENTRY;
                commit_sub((*old).node, (*old).map_size);
                huge::unmap(old);
            }
        }
        commit_sub((*seg).node, (*seg).map_size);
        huge::unmap(seg);
    }
}

/// Takes in blocks that other threads freed into our full pages.
unsafe fn drain_delayed(h: *mut Heap) {
    // SAFETY: every block on our delayed stack belongs to a page we own (module invariant).
    unsafe {
        if (*h).delayed.0.is_empty() {
            return;
        }
        // The blocks still on the stack are counted as used by their pages, which must stay
        // ours until they are freed: no rehome (which gives every segment away) until the
        // walk is over. Drains nest (a free's tick may collect, which drains), hence the save.
        let was_walking = (*h).walking;
        (*h).walking = true;
        delayed::drain(
            &(*h).delayed.0,
            |b| {
                let page = page_of(segment_of(b as *const u8), b as *const u8);
                (page, &(*page).thread_free)
            },
            |b, page| {
                // The remote thread counted the free.
                (*h).returned = (*h).returned.saturating_add(1);
                free_local(h, page, b, false);
            },
        );
        (*h).walking = was_walking;
    }
}

// ---------------------------------------------------------------------------------------------
// Purging: memory goes back to the OS after the delay, driven from slow paths.

#[inline]
unsafe fn heap_tick(h: *mut Heap) {
    // SAFETY: h is ours.
    unsafe {
        (*h).tick = (*h).tick.wrapping_add(1);
        if (*h).tick & 15 != 0 || (*h).state != ACTIVE {
            return;
        }
        // Where the thread runs, every 16 slow paths: a moved thread stops drawing from its
        // old node within 16 slow paths (so within 16 pages' worth of allocations). Cheap:
        // no call at all on one node, else sched_getcpu (rseq/vDSO) and a table lookup.
        if !(*h).shared {
            let node = (home::home_node() as usize).min(MAX_NODES - 1) as u32;
            if node != (*h).node {
                rehome_when_safe(h, node);
                return;
            }
        }
        let now = os::now_ms();
        if now < (*h).next_purge_ms {
            return;
        }
        let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
        (*h).next_purge_ms = now + (delay / 4).max(1);
        heap_collect(h, now, delay);
    }
}

/// Collects remote frees, retires empty pages, purges what has waited long enough, adopts
/// stranded segments. Cost: one pass over our pages; runs at most every delay/4 ms.
#[cold]
unsafe fn heap_collect(h: *mut Heap, now: u64, delay: u64) {
    // SAFETY: h is ours; all pages and segments touched are ours.
    unsafe {
        drain_delayed(h);
        let counts = (*h).stats.alloc_counts();
        for (bin, &allocs) in counts.iter().enumerate().take(NBINS) {
            let active = allocs != (*h).allocs_at_collect[bin];
            (*h).allocs_at_collect[bin] = allocs;
            let mut page = (*h).pages[bin];
            while !page.is_null() && page != empty_page() {
                let next = (*page).next;
                if (*page).thread_free.has_blocks() {
                    let back = (*page).collect();
                    (*h).returned = (*h).returned.saturating_add(back);
                }
                // Empty pages go back to their segment; the current one too if its class has
                // not allocated since the last collection (it no longer pins its page's
                // memory). A class that is in use keeps it: giving it back would cost a new page
                // on its next allocation, placed wherever a resident run fits, while the old
                // page's slice waits out the purge delay, resident and idle; done every
                // collection to every sparsely used class, that churn is what RSS grows by.
                if (*page).used == 0 && (page != (*h).pages[bin] || !active || delay == 0) {
                    (*h).queue_remove(bin, page);
                    retire_page(page);
                }
                page = next;
            }
        }
        let mut seg = (*h).segments;
        while !seg.is_null() {
            let next = (*seg).next;
            if (*seg).purge_at != 0 && now >= (*seg).purge_at {
                // An empty segment goes to the pool once none of its slices was freed
                // recently (a forced collection, delay 0, does not wait).
                if (*seg).used_pages == 0 && (delay == 0 || !Segment::has_recent_free(seg)) {
                    unlink_segment(h, seg);
                    release_segment(seg, now);
                } else if delay == 0 {
                    Segment::purge_free(seg);
                } else {
                    Segment::purge_step(seg, now, delay);
                }
            }
            seg = next;
        }
        for e in (*h).huge_cache.iter_mut() {
            if !e.seg.is_null() && e.freed_at + delay <= now {
                commit_sub((*e.seg).node, (*e.seg).map_size);
                huge::unmap(e.seg);
                *e = EMPTY_ENTRY;
            }
        }
        POOLS[(*h).node as usize].unmap_expired(now);
        if !(*h).shared {
            collect_node_heaps(now, delay);
        }
        // Segments stranded by exited threads, or given up full: tend one of each kind per
        // pass (see tend_abandoned).
        let node = (*h).node as usize;
        for list in [&ABANDONED[node], &ABANDONED_FULL[node]] {
            if list.count.load(Ordering::Relaxed) > 0 {
                let seg = list.pop(h as usize, (*h).tag);
                if !seg.is_null() {
                    tend_abandoned(h, seg, now);
                }
            }
        }
    }
}

/// Tends an abandoned segment on its absent owner's behalf: collects the frees other threads
/// made into its pages, gives back the pages that emptied, and purges its free slices. It
/// then goes to the pool if nothing in it is live, else back to the abandoned list (at the
/// back, so the next visit tends another). The visitor does not keep it: a thread that only
/// collects now and then would sit on memory it never reuses (a thread that needs space
/// adopts abandoned segments in `take_slices`).
///
/// # Safety
/// `h` is this thread's heap and `seg` was just popped from the abandoned list for it.
unsafe fn tend_abandoned(h: *mut Heap, seg: *mut Segment, now: u64) {
    // SAFETY: we own seg until we hand it back. Its pages are NEVER_DELAYED (set when it was
    // abandoned), so frees by other threads meanwhile go to the pages' own lists, which
    // `collect` takes atomically.
    unsafe {
        for_each_used_page(seg, |p| {
            (*p).collect();
            if (*p).used == 0 {
                release_empty_page(h, p, now, 0);
            }
        });
        let node = ((*seg).node as usize).min(MAX_NODES - 1);
        if (*seg).used_pages == 0 {
            release_segment(seg, now);
        } else if segment_nearly_full(seg) {
            ABANDONED_FULL[node].push_abandoned_back(seg);
        } else {
            Segment::purge_free(seg);
            ABANDONED[node].push_abandoned_back(seg);
        }
    }
}

/// Forces a collection and purge of the calling thread's heap now, whatever the delay.
///
/// A heap that has not yet noticed its thread's move to another node (ticks look only every
/// 16 slow paths) moves first: the collection then tends the abandoned segments, pool and
/// node heaps of the node the thread runs on, not of the one it left. (A user's call holds
/// no page and walks no list: a safe point for `rehome`.)
pub fn collect_now() {
    let h = heap();
    // SAFETY: h is ours.
    unsafe {
        if (*h).state != ACTIVE {
            return;
        }
        if !(*h).shared {
            let node = (home::home_node() as usize).min(MAX_NODES - 1) as u32;
            if node != (*h).node {
                rehome_when_safe(h, node);
            }
        }
        let now = os::now_ms();
        let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
        heap_collect(h, now.saturating_add(delay).saturating_add(1), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes and in-place reallocation.

/// The usable size of the block at `p`.
///
/// # Safety
/// `p` is a live block of ours.
pub unsafe fn usable_size(p: *const u8) -> usize {
    let seg = segment_of(p);
    // SAFETY: p is live, so its segment and page descriptors are valid.
    unsafe {
        if (*seg).kind == SegmentKind::Huge {
            return (*seg).huge_size - (p as usize - huge::object(seg) as usize);
        }
        let page = page_of(seg, p);
        let bs = (*page).block_size as usize;
        bs - ((p as usize - (*page).start() as usize) % bs)
    }
}

/// Tries to make the block at `p` hold `new_size` bytes without moving it. Returns true if it
/// now does.
///
/// # Safety
/// `p` is a live block of ours.
pub unsafe fn resize_in_place(p: *mut u8, new_size: usize) -> bool {
    let seg = segment_of(p);
    // SAFETY: p is live; we only change pages we own.
    unsafe {
        if (*seg).kind == SegmentKind::Huge {
            let cap = (*seg).huge_size;
            return new_size <= cap && new_size > LARGE_MAX && new_size >= cap / 2;
        }
        let page = page_of(seg, p);
        let cap = (*page).block_size as usize;
        if (*page).kind == PageKind::Bin as u8 {
            // Shrinking by more than half moves, so a small object does not pin a big block.
            return new_size <= cap && (new_size * 2 >= cap || cap <= 32);
        }
        // Large page.
        if (*page).moved != 0 {
            // Its memory is on another node: no slices change hands while it is.
            return new_size <= cap && new_size * 2 >= cap;
        }
        let h = heap();
        let owner = (*seg).owner.load(Ordering::Relaxed) == h as usize;
        if new_size <= MEDIUM_MAX {
            return new_size <= cap && new_size * 2 >= cap;
        }
        let i = (*page).slice_index();
        let n = (*page).slice_count as usize;
        let want = new_size.div_ceil(SLICE_SIZE);
        if want <= n {
            if want < n && owner {
                // Give the tail slices back to the segment.
                let tail = super::segment::run_mask(n - want) << (i + want);
                (*seg).free_slices |= tail;
                for j in want..n {
                    let d = (*seg).pages.as_mut_ptr().add(i + j);
                    (*d).set_back(0);
                }
                (*page).slice_count = want as u8;
                let shrink = (n - want) * SLICE_SIZE;
                (*page).block_size -= shrink as u32;
                commit_sub((*seg).node, shrink);
                bump(&(*h).stats.large_free_bytes, shrink as u64);
                let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
                Segment::schedule_purge(seg, tail, os::now_ms(), delay);
            }
            return true;
        }
        if new_size > LARGE_MAX || !owner || i + want > SLICES {
            return false;
        }
        let extra = super::segment::run_mask(want - n) << (i + n);
        if (*seg).free_slices & extra != extra {
            return false;
        }
        (*seg).free_slices &= !extra;
        (*seg).dirty |= extra;
        (*seg).purge_recent &= !extra;
        (*seg).purge_pending &= !extra;
        for j in n..want {
            let d = (*seg).pages.as_mut_ptr().add(i + j);
            (*d).set_back(j as u8);
            (*d).kind = PageKind::Free as u8;
        }
        (*page).slice_count = want as u8;
        let grow = ((want - n) * SLICE_SIZE) as u64;
        (*page).block_size += grow as u32;
        commit_add((*seg).node, grow as usize);
        bump(&(*h).stats.large_alloc_bytes, grow);
        true
    }
}

// ---------------------------------------------------------------------------------------------
// fork: no lock may be held by a thread that does not exist in the child, and no heap of one
// may stay listed or own segments there (see fork.rs).

mod fork;
pub(crate) use fork::register_fork_handlers;

/// Segments in the node pools and abandoned right now (for statistics).
pub fn segment_counts() -> (usize, usize, usize) {
    let pooled = POOLS.iter().map(|p| p.count.load(Ordering::Relaxed)).sum();
    let abandoned = ABANDONED
        .iter()
        .chain(ABANDONED_FULL.iter())
        .map(|p| p.count.load(Ordering::Relaxed))
        .sum();
    (SEGMENTS.load(Ordering::Relaxed), pooled, abandoned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached huge mapping more than `CACHE_FIT_SHIFT` times bigger than a request is not
    /// taken by the "nothing big enough, enlarge the biggest" fallback: that fallback only
    /// grows. It took it before (found by the `tieralloc` fuzz target: `map_size - old_map`
    /// underflowed, a panic in the allocator under debug assertions, and the cached mapping
    /// was shrunk under the request).
    #[test]
    fn a_far_too_big_cached_mapping_is_not_shrunk_for_a_small_huge_request() {
        std::thread::spawn(|| {
            // SAFETY: this thread's heap, used only by this thread; each block freed once.
            unsafe {
                let h = heap();
                let big = alloc_huge(h, 7 << 20, 16, false);
                assert!(!big.is_null());
                free(big);
                let cached = |h: *mut Heap| {
                    (*h).huge_cache
                        .iter()
                        .filter(|e| !e.seg.is_null())
                        .map(|e| (*e.seg).map_size)
                        .max()
                };
                let before = cached(h).expect("a freed 7 MiB block is cached");
                assert!(before >= 7 << 20);
                // A 1-byte block aligned to 128 KiB takes the huge path with a small mapping.
                let (_, need) = huge::layout_for(1, 128 << 10).expect("a huge layout");
                assert!(
                    need << huge::CACHE_FIT_SHIFT < before,
                    "request not small enough"
                );
                let small = alloc_huge(h, 1, 128 << 10, false);
                assert!(!small.is_null());
                assert_eq!(small as usize % (128 << 10), 0);
                assert_eq!(cached(h), Some(before), "the big cached mapping was taken");
                free(small);
            }
        })
        .join()
        .unwrap();
    }

    /// A class that allocated since the last collection keeps its empty current page through
    /// the next one; a collection after a quiet interval gives it back.
    #[test]
    fn an_empty_current_page_stays_while_its_class_allocates() {
        std::thread::spawn(|| {
            let bin = bin_of(3000);
            // SAFETY: this thread's heap, used only by this thread; the block is freed once.
            unsafe {
                let p = alloc_bin(bin);
                assert!(!p.is_null());
                free(p);
                let h = heap();
                let page = (*h).pages[bin];
                assert_ne!(page, empty_page());
                assert_eq!((*page).used, 0);
                heap_collect(h, os::now_ms(), 100);
                assert_eq!((*h).pages[bin], page, "page of an active class given back");
                heap_collect(h, os::now_ms(), 100);
                assert_eq!((*h).pages[bin], empty_page(), "page of a quiet class kept");
            }
        })
        .join()
        .unwrap();
    }

    /// A node heap that was used is marked so, and a collection run by any thread reaches it:
    /// a block freed into it from here is taken back into its page by our collection.
    #[test]
    fn collections_reach_the_node_heaps_that_were_used() {
        std::thread::spawn(|| {
            // SAFETY: blocks from node_alloc, each freed once; b stays live until the end, so
            // the page of a and b stays in use and its descriptor valid; the node heap's page
            // is read only under its lock.
            unsafe {
                let b = node_alloc(0, 1000, 16, false);
                let mut a = node_alloc(0, 1000, 16, false);
                assert!(!a.is_null() && !b.is_null());
                assert_ne!(NODE_HEAPS_USED.load(Ordering::Relaxed) & 1, 0);
                // b may have been the last block of its page: then a and a second block
                // share the next one.
                let (b, spare) = if page_of(segment_of(a), a) == page_of(segment_of(b), b) {
                    (b, ptr::null_mut())
                } else {
                    let next = a;
                    a = node_alloc(0, 1000, 16, false);
                    assert!(!a.is_null());
                    (next, b)
                };
                let page = page_of(segment_of(a), a);
                assert_eq!(
                    page,
                    page_of(segment_of(b), b),
                    "a fresh page held one block"
                );
                let used = {
                    let _g = NODE_HEAPS[0].lock.lock();
                    (*page).used
                };
                free(a); // a remote free: the node heap owns the page
                collect_now();
                let _g = NODE_HEAPS[0].lock.lock();
                assert_eq!((*page).used, used - 1, "the node heap was not collected");
                drop(_g);
                free(b);
                if !spare.is_null() {
                    free(spare);
                }
            }
        })
        .join()
        .unwrap();
    }

    /// Every slice of a page in use leads to the same page and bin from the owner's line of
    /// its descriptor and from the remote line: small, medium and large pages, slices given
    /// back when a large object shrinks in place and taken when it grows.
    #[test]
    fn both_lines_of_a_descriptor_agree() {
        std::thread::spawn(|| {
            let check = |p: *mut u8, len: usize| {
                let seg = segment_of(p);
                // SAFETY: p is a live block of ours of at least len bytes.
                unsafe {
                    for off in (0..len).step_by(SLICE_SIZE / 2).chain([len - 1]) {
                        let q = p.add(off);
                        let page = page_of(seg, q);
                        assert_eq!(page, page_of_remote(seg, q), "offset {off} of {len}");
                        assert_eq!((*page).bin, (*page).remote_bin);
                    }
                }
            };
            let sizes = [16, 100, 3000, 20_000, 60_000, 100_000, 700_000, 1_500_000];
            // SAFETY: blocks of this thread's heap, each freed once.
            unsafe {
                let mut live = vec![];
                for &n in &sizes {
                    for _ in 0..3 {
                        let p = alloc_generic(n, 16, false);
                        assert!(!p.is_null());
                        check(p, n);
                        live.push((p, n));
                    }
                }
                // A large object shrinks in place, then grows in place again.
                let (p, n) = live[live.len() - 1];
                assert!(resize_in_place(p, n / 3));
                check(p, n / 3);
                if resize_in_place(p, n) {
                    check(p, n);
                }
                for (p, _) in live {
                    free(p);
                }
            }
        })
        .join()
        .unwrap();
    }

    /// The tag tests change what tags are left; they run one at a time.
    static TAG_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Tags are handed out once each, never 0, `MAP_UNOWNED` or `NO_TAG`; when none is left
    /// the answer is `NO_TAG`; given back, they are handed out again.
    #[test]
    fn heap_tags_are_unique_until_they_run_out() {
        let _t = TAG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let take = || {
            let _g = REGISTRY.lock.lock();
            // SAFETY: we hold the registry lock.
            unsafe { take_tag() }
        };
        let mut taken = vec![];
        loop {
            let t = take();
            if t == NO_TAG {
                break;
            }
            taken.push(t);
        }
        // Heaps of other tests' threads hold a few.
        assert!(taken.len() > 65_000, "only {} tags", taken.len());
        let mut sorted = taken.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), taken.len(), "a tag handed out twice");
        assert!(sorted[0] >= FIRST_TAG && sorted[sorted.len() - 1] < NO_TAG);
        {
            let _g = REGISTRY.lock.lock();
            for &t in &taken {
                // SAFETY: we hold the registry lock; these tags are in no map entry.
                unsafe { give_tag(t) };
            }
        }
        let again = take();
        assert_ne!(again, NO_TAG);
        let _g = REGISTRY.lock.lock();
        // SAFETY: as above.
        unsafe { give_tag(again) };
    }

    /// A heap's segments carry its tag in the segment map while it owns them; when it lets
    /// go (thread exit) the entry no longer names it, and the block is still known as ours.
    /// Memory that is not ours maps to 0, and C's free ignores it.
    #[test]
    fn the_segment_map_names_the_owner_while_it_owns() {
        let _t = TAG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        std::thread::spawn(|| {
            // SAFETY: this thread's heap; heap_done runs with no block of it in use by us
            // but p, which stays live across it and is freed once, after.
            unsafe {
                let p = alloc_bin(bin_of(64));
                let h = heap();
                let tag = (*h).tag;
                assert!((FIRST_TAG..NO_TAG).contains(&tag));
                assert_eq!(map_tag(p), tag);
                let seg = segment_of(p);
                heap_done(h);
                assert_eq!((*h).tag, NO_TAG);
                assert_ne!((*seg).owner.load(Ordering::Relaxed), h as usize);
                assert_ne!(map_tag(p), 0, "a live block's segment left the map");
                free_c(p);
            }
        })
        .join()
        .unwrap();
        let local = 7u64;
        let boxed = Box::new(7u64);
        assert_eq!(map_tag(&local as *const u64 as *const u8), 0);
        assert_eq!(map_tag(&*boxed as *const u64 as *const u8), 0);
        assert_eq!(map_tag(usize::MAX as *const u8), 0);
        // SAFETY: null and memory outside every tieralloc segment, which free_c ignores.
        unsafe {
            free_c(ptr::null_mut());
            free_c(&*boxed as *const u64 as *mut u8);
        }
        assert_eq!(*boxed, 7);
    }

    /// A heap with no tag (all were taken when it started) still frees its own blocks through
    /// C's free as local frees: each counted once, as a free of its class, none as remote;
    /// and the blocks come back to it.
    #[test]
    fn a_heap_without_a_tag_frees_its_own_blocks_locally() {
        let _t = TAG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        std::thread::spawn(|| {
            // SAFETY: this thread's heap and blocks, each freed once; set_owner on segments
            // we own, as taking them with no tag would have done.
            unsafe {
                let bin = bin_of(48);
                let first = alloc_bin(bin);
                let h = heap();
                // Become a heap that got no tag.
                {
                    let _g = REGISTRY.lock.lock();
                    let mut seg = (*h).segments;
                    while !seg.is_null() {
                        set_owner(seg, h as usize, NO_TAG);
                        seg = (*seg).next;
                    }
                    give_tag((*h).tag);
                    (*h).tag = NO_TAG;
                }
                assert_eq!(map_tag(first), super::super::segment::MAP_UNOWNED);
                let frees = (*h).stats.frees[bin].load(Ordering::Relaxed);
                let remote = (*h).stats.remote_frees.load(Ordering::Relaxed);
                let blocks: Vec<*mut u8> = (0..1000).map(|_| alloc_bin(bin)).collect();
                assert!(blocks.iter().all(|p| !p.is_null()));
                free_c(first);
                for &p in &blocks {
                    free_c(p);
                }
                assert_eq!((*h).stats.frees[bin].load(Ordering::Relaxed), frees + 1001);
                assert_eq!((*h).stats.remote_frees.load(Ordering::Relaxed), remote);
                // Freed locally: no page of the class has a block out (a remote free would
                // leave them counted as used until collected).
                let mut page = (*h).pages[bin];
                assert_ne!(page, empty_page());
                while !page.is_null() {
                    assert_eq!((*page).used, 0);
                    assert!(!(*page).thread_free.has_blocks());
                    page = (*page).next;
                }
            }
        })
        .join()
        .unwrap();
    }

    /// Which exhausted pages a queue walk parks as full: one its owner's frees (or nobody's)
    /// refilled last is parked at once; one that other threads' frees refilled last stays in
    /// the queue, and so does a page of few (big) blocks.
    #[test]
    fn exhausted_pages_are_parked_unless_remote_fed_or_of_few_blocks() {
        /// Allocates blocks of `bin` from `page`, the current page, until it has nothing left
        /// to hand out (the next allocation takes the slow path).
        ///
        /// # Safety
        /// `page` is the current page of `bin` in this thread's heap.
        unsafe fn exhaust(bin: usize, page: *mut Page, out: &mut Vec<usize>) {
            // SAFETY: the page is ours (contract); its owner reads its fields.
            unsafe {
                while !((*page).free.is_null()
                    && (*page).local_free.is_null()
                    && (*page).capacity == (*page).reserved)
                {
                    let p = alloc_bin(bin);
                    assert_eq!(page_of(segment_of(p), p), page);
                    out.push(p as usize);
                }
            }
        }
        std::thread::spawn(|| {
            // SAFETY: this thread's heap; every block is freed once, by one thread.
            unsafe {
                let parked = |page: *mut Page| (*page).flags & PAGE_IN_FULL != 0;
                let page_of_addr = |p: usize| page_of(segment_of(p as *const u8), p as *const u8);
                let mut live = vec![];
                // A page nobody refilled, of many blocks: parked when it runs out.
                let bin = bin_of(64);
                let first = alloc_bin(bin);
                live.push(first as usize);
                let a = page_of_addr(first as usize);
                assert!((*a).reserved >= FEW_BLOCKS);
                exhaust(bin, a, &mut live);
                live.push(alloc_bin(bin) as usize);
                let b = page_of_addr(*live.last().unwrap());
                assert_ne!(b, a);
                assert!(
                    parked(a),
                    "an exhausted page its owner refills stayed in the queue"
                );
                // A page that other threads' frees refilled: stays in the queue.
                exhaust(bin, b, &mut live);
                let of_b: Vec<usize> = live
                    .iter()
                    .copied()
                    .filter(|&p| page_of_addr(p) == b)
                    .take(2)
                    .collect();
                live.retain(|p| !of_b.contains(p));
                std::thread::spawn(move || {
                    // Live blocks handed to this thread, freed once (the outer SAFETY).
                    for p in of_b {
                        free(p as *mut u8);
                    }
                })
                .join()
                .unwrap();
                for _ in 0..2 {
                    let p = alloc_bin(bin);
                    assert_eq!(
                        page_of_addr(p as usize),
                        b,
                        "the remote frees were not reused"
                    );
                    live.push(p as usize);
                }
                assert!((*b).remote_fed);
                live.push(alloc_bin(bin) as usize);
                assert_ne!(page_of_addr(*live.last().unwrap()), b);
                assert!(!parked(b), "an exhausted remote-fed page was parked");
                // A page of few blocks: stays in the queue.
                let big = bin_of(8000);
                let first = alloc_bin(big);
                live.push(first as usize);
                let f = page_of_addr(first as usize);
                assert!((*f).reserved < FEW_BLOCKS);
                exhaust(big, f, &mut live);
                live.push(alloc_bin(big) as usize);
                assert_ne!(page_of_addr(*live.last().unwrap()), f);
                assert!(!parked(f), "an exhausted page of few blocks was parked");
                for p in live {
                    free(p as *mut u8);
                }
            }
        })
        .join()
        .unwrap();
    }
}
