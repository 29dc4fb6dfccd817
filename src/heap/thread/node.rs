//! Node heaps: one shared heap per NUMA node, for explicit placement.
//!
//! Owns: `NODE_HEAPS` (each behind its own lock; a thread that holds the lock uses the heap
//! as its own), `NODE_HEAPS_USED`, `node_alloc`, and their collection from other threads'
//! ticks, which also sets up and collects the heap of a node without CPUs that has abandoned
//! segments (so that they are tended). Lock order: a node heap's lock before the registry's
//! (see `fork`). May touch: the `Heap` type (`super`), `alloc` (the allocation itself),
//! `registry` (a node heap's first use), `tick` (collections), `heap::segment` (the abandoned
//! lists' counts), `topology::discover` (which nodes have no CPU), `sync`.

use super::alloc::alloc_generic_in;
use super::large::retry_making_room;
use super::registry::register;
use super::tick::heap_collect;
use super::{Heap, HeapRef, ACTIVE};
use crate::heap::segment::{ABANDONED, ABANDONED_FULL, MAX_NODES};
use crate::sync::{AtomicU64, Ordering, SpinLock};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;

/// A heap per node, shared by every thread under a lock, for explicit placement
/// (`Placed::node`). Its segments come from its node's pool and are bound to that node.
///
/// Its `Heap` is written on first use, not by the static's initialiser: a `Heap` points at
/// `EMPTY_PAGE` from each of its queue and direct slots, so `MAX_NODES` set-up heaps made
/// the library's writable data 296 KiB and gave the dynamic loader over 8 000 relocations
/// to apply at start-up (both resident in every process, used nodes or not). All-zero
/// bytes instead sit in `.bss`, which costs nothing until a node heap is used.
pub(super) struct NodeHeap {
    pub(super) lock: SpinLock,
    /// Whether `heap` holds a `Heap` yet; read and written only with `lock` held.
    ready: UnsafeCell<bool>,
    heap: UnsafeCell<MaybeUninit<Heap>>,
}
// SAFETY: `heap` and `ready` are only touched with `lock` held (remote frees touch only the
// atomics that are meant for other threads: page `thread_free` words and the heap's
// `delayed` stack).
unsafe impl Sync for NodeHeap {}
#[allow(clippy::declare_interior_mutable_const)]
pub(super) const NODE_HEAP: NodeHeap = NodeHeap {
    lock: SpinLock::new(),
    ready: UnsafeCell::new(false),
    heap: UnsafeCell::new(MaybeUninit::zeroed()),
};
pub(super) static NODE_HEAPS: [NodeHeap; MAX_NODES] = [NODE_HEAP; MAX_NODES];

impl NodeHeap {
    /// The node heap, set up (not yet registered) if this is its first use.
    ///
    /// # Safety
    /// The caller holds `self.lock`, and keeps holding it while it uses the heap.
    pub(super) unsafe fn heap(&self) -> HeapRef {
        let heap = self.heap.get().cast::<Heap>();
        // SAFETY: `ready` and `heap` are ours while we hold the lock (contract); once `ready`
        // is set, `heap` holds an initialised `Heap` that only lock holders touch.
        unsafe {
            if !*self.ready.get() {
                heap.write(Heap::new());
                *self.ready.get() = true;
            }
            HeapRef::new(heap)
        }
    }
}
/// Bit `n` is set once node `n`'s heap has been set up (it never goes back to unused), so
/// that a collection locks only the node heaps that were ever used: one shared load instead
/// of a compare-and-swap on each of `MAX_NODES` lines that every thread's collections write.
pub(super) static NODE_HEAPS_USED: AtomicU64 = AtomicU64::new(0);
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
    // Refused (out of address space): the calling thread's huge cache makes way, with the
    // node heap's lock let go.
    retry_making_room(|| {
        let _g = nh.lock.lock();
        // SAFETY: we hold the node heap's lock, so it is ours for the duration.
        let h = unsafe { nh.heap() };
        // SAFETY: we hold its lock (above).
        unsafe { activate(h, node) };
        // SAFETY: forwarded contract.
        unsafe { alloc_generic_in(h, size, align, zero) }
    })
}

/// Registers node `node`'s heap `h` on its first use.
///
/// # Safety
/// `h` is `NODE_HEAPS[node]`'s heap, whose lock the caller holds.
unsafe fn activate(mut h: HeapRef, node: u32) {
    if h.state != ACTIVE {
        h.shared = true;
        // SAFETY: a node heap is never unregistered, so one that is not ACTIVE was never
        // listed.
        unsafe { register(h, node) };
        NODE_HEAPS_USED.fetch_or(1 << node, Ordering::Relaxed);
    }
}

/// Collects and purges every node heap that is free right now (try-lock: never waits), and
/// that of every node without CPUs that has abandoned segments ([`stranded_nodes`]), set up
/// for it if it was never used: its collection tends them (a heap tends only its own node's
/// abandoned segments, and no thread runs on such a node).
pub(super) fn collect_node_heaps(now: u64, delay: u64) {
    let stranded = stranded_nodes();
    let mut used = NODE_HEAPS_USED.load(Ordering::Relaxed) | stranded;
    while used != 0 {
        let node = used.trailing_zeros();
        let nh = &NODE_HEAPS[node as usize];
        used &= used - 1;
        if let Some(_g) = nh.lock.try_lock() {
            // SAFETY: we hold its lock, so it is ours for the duration.
            let h = unsafe { nh.heap() };
            if stranded & (1 << node) != 0 {
                // SAFETY: we hold its lock.
                unsafe { activate(h, node) };
            }
            if h.state == ACTIVE {
                // SAFETY: we hold no page of the node heap (we only took its lock).
                unsafe { heap_collect(h, now, delay) };
            }
        }
    }
}

/// Collects and purges now, whatever the purge delay, the node heaps of `nodes` that were
/// ever used (waiting for each one's lock), for a caller that a tier budget is about to refuse
/// ([`super::large::make_budget_room`]): the blocks other threads freed into them (every free
/// of a threshold or placed block by a thread is such a free: a node heap is no thread's)
/// are taken back and the memory they held decommitted, so that a budget does not count as
/// taken what nobody holds (review rev40). Returns whether there was a heap to collect.
///
/// # Safety
/// The caller holds no node heap's lock and uses no page of a node heap.
pub(super) unsafe fn reclaim_node_heaps(nodes: u64) -> bool {
    let mut used = NODE_HEAPS_USED.load(Ordering::Relaxed) & nodes;
    let any = used != 0;
    let now = crate::sys::os::now_ms();
    let delay = crate::init::PURGE_DELAY_MS.load(Ordering::Relaxed);
    while used != 0 {
        let node = used.trailing_zeros() as usize;
        used &= used - 1;
        let nh = &NODE_HEAPS[node];
        let _g = nh.lock.lock();
        // SAFETY: we hold its lock, so it is ours for the duration.
        let h = unsafe { nh.heap() };
        if h.state == ACTIVE {
            // SAFETY: we hold its lock and no page of it (contract). A time a delay ahead
            // and no delay, as `tick::collect_now`: everything free counts as due.
            unsafe { heap_collect(h, now.saturating_add(delay).saturating_add(1), 0) };
        }
    }
    any
}

/// The nodes with memory but no CPU (a far tier's, such as a CXL expander's), as found once;
/// `u64::MAX` until then.
static CPULESS: AtomicU64 = AtomicU64::new(u64::MAX);

/// The nodes without CPUs that have segments on an abandoned list: left by threads whose
/// heaps a tier policy gave segments there (far pages), which no thread of theirs will tend.
/// A load of each such node's two list counts (none on a machine whose nodes all have CPUs).
fn stranded_nodes() -> u64 {
    let mut cpuless = CPULESS.load(Ordering::Relaxed);
    if cpuless == u64::MAX {
        let t = crate::topology::discover::get();
        cpuless = t.mem_nodes & t.nodes & !t.cpu_nodes();
        CPULESS.store(cpuless, Ordering::Relaxed);
    }
    let mut stranded = 0u64;
    let mut m = cpuless;
    while m != 0 {
        let n = m.trailing_zeros() as usize;
        m &= m - 1;
        if n < MAX_NODES
            && (ABANDONED[n].count.load(Ordering::Relaxed) != 0
                || ABANDONED_FULL[n].count.load(Ordering::Relaxed) != 0)
        {
            stranded |= 1 << n;
        }
    }
    stranded
}

/// Allocation for a thread whose heap is gone (see `DEAD`): from its node's shared heap.
///
/// # Safety
/// `align` is a power of two.
#[cold]
pub(super) unsafe fn dead_alloc(h: HeapRef, size: usize, align: usize, zero: bool) -> *mut u8 {
    // A node heap is ACTIVE and never gets here; a thread's (dead) heap is only read.
    if h.shared {
        return ptr::null_mut();
    }
    // SAFETY: forwarded contract.
    unsafe { node_alloc(h.node, size, align, zero) }
}
