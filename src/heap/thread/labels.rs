//! Scope labels, the heap's side: the table of label names, a shared heap per (label, node)
//! that serves a labelled scope's allocations, and the live bytes of each.
//!
//! Owns: `NAMES` (slot 0 is the shared "other" slot that names past the table's size go to),
//! `LABEL_HEAPS` (made on first use, in a mapping of their own, never freed; each behind its
//! own lock like a node heap), `CREATE` (taken to make one, and by the fork handlers first),
//! `HUGE_NET` (the huge objects' bytes per label and node), [`label_id`], [`label_alloc`],
//! [`for_each_label_live`], and the collection of the label heaps. May touch: the `Heap` type
//! (`super`), `alloc` (the allocation itself), `registry` (a label heap's first use), `tick`
//! (collections), `counters` (a bin page's live bytes), `slices` (the walk of a segment's
//! pages), `heap::segment`, `sys::os`, `sync`, `init` (the purge delay).
//!
//! The accounting: a labelled scope's blocks live only in its label heaps' pages (a label heap
//! never adopts another heap's segment, never gives its own away, and is never a thread's
//! own, so every free of its blocks is a remote free that lands on its page's list or its
//! delayed stack). Their live bytes are therefore read off the pages: [`for_each_label_live`]
//! takes each label heap's lock, collects the frees waiting on it (as the heap's owner would),
//! and sums the used blocks of its pages. No free path does anything for labels, labelled or
//! not; a huge block (a mapping of its own, in no heap's pages) carries its label in its
//! header, and its free books it off [`HUGE_NET`] (a huge free is a system call or a cache
//! put: one more test there is nothing).

use super::alloc::alloc_generic_in;
use super::counters::bin_page_bytes;
use super::large::retry_making_room;
use super::registry::register;
use super::slices::for_each_used_page_on;
use super::tick::heap_collect;
use super::{Heap, HeapRef, ACTIVE};
use crate::heap::segment::{PageKind, MAX_NODES};
use crate::sync::{AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering, SpinLock};
use core::cell::UnsafeCell;
use core::ptr;

/// Slots in the label table, the shared "other" slot (0) included.
pub(crate) const MAX_LABELS: usize = 32;

/// The name of the shared slot that labels past the table's size count to.
pub(crate) const OTHER: &str = "other";

/// One slot of the label table: a `&'static str`'s pointer and length (null: free).
struct Name {
    ptr: AtomicPtr<u8>,
    len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_NAME: Name = Name {
    ptr: AtomicPtr::new(ptr::null_mut()),
    len: AtomicUsize::new(0),
};
static NAMES: [Name; MAX_LABELS] = [NO_NAME; MAX_LABELS];
/// Serializes filling a slot of `NAMES` (scope entry only, never an allocation); the fork
/// handlers hold it across a `fork` (`heap::thread::fork`).
pub(super) static NAMES_LOCK: SpinLock = SpinLock::new();

/// The name in slot `slot`, if it is filled (slot 0 is always "other").
pub(crate) fn label_name(slot: usize) -> Option<&'static str> {
    if slot == 0 {
        return Some(OTHER);
    }
    let n = NAMES.get(slot)?;
    let p = n.ptr.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    let len = n.len.load(Ordering::Relaxed);
    // SAFETY: a filled slot holds the pointer and length of a `&'static str` (stored before
    // the pointer was published with Release), so the bytes are valid UTF-8 for good.
    Some(unsafe { core::str::from_utf8_unchecked(core::slice::from_raw_parts(p, len)) })
}

/// The label id of `name` (its slot plus one; never 0, which means "no label"): the slot that
/// holds it (compared by pointer, then by contents), a free slot filled with it, or the
/// shared "other" slot when the table is full. Never fails, never allocates.
pub(crate) fn label_id(name: &'static str) -> u8 {
    let find = || {
        (0..MAX_LABELS)
            .find(|&i| {
                label_name(i)
                    .is_some_and(|s| ptr::eq(s.as_ptr(), name.as_ptr()) && s.len() == name.len())
            })
            .or_else(|| (0..MAX_LABELS).find(|&i| label_name(i) == Some(name)))
    };
    if let Some(i) = find() {
        return i as u8 + 1;
    }
    let _g = NAMES_LOCK.lock();
    if let Some(i) = find() {
        return i as u8 + 1;
    }
    for (i, n) in NAMES.iter().enumerate().skip(1) {
        if n.ptr.load(Ordering::Relaxed).is_null() {
            n.len.store(name.len(), Ordering::Relaxed);
            n.ptr.store(name.as_ptr() as *mut u8, Ordering::Release);
            return i as u8 + 1;
        }
    }
    1
}

/// A label heap: a node heap of one label (see `node::NodeHeap`).
pub(super) struct LabelHeap {
    pub(super) lock: SpinLock,
    heap: UnsafeCell<Heap>,
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_HEAP: AtomicPtr<LabelHeap> = AtomicPtr::new(ptr::null_mut());
#[allow(clippy::declare_interior_mutable_const)]
const NO_HEAPS: [AtomicPtr<LabelHeap>; MAX_NODES] = [NO_HEAP; MAX_NODES];
/// The label heaps, by label slot and node: null until first used.
static LABEL_HEAPS: [[AtomicPtr<LabelHeap>; MAX_NODES]; MAX_LABELS] = [NO_HEAPS; MAX_LABELS];
/// Bit `n` of entry `l`: label slot `l` has a heap on node `n` (set once it is made).
static LABEL_HEAPS_USED: [AtomicU64; MAX_LABELS] = [const { AtomicU64::new(0) }; MAX_LABELS];
/// Taken to make a label heap, so that the fork handlers (which take it first, then every
/// label heap's lock that exists) see a fixed set of them.
pub(super) static CREATE: SpinLock = SpinLock::new();

#[allow(clippy::declare_interior_mutable_const)]
const ZERO_NET: AtomicI64 = AtomicI64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO_NETS: [AtomicI64; MAX_NODES] = [ZERO_NET; MAX_NODES];
/// Per label slot and node: bytes of the label's live huge objects on that node (added when
/// one is made or grows, taken off when it is freed, from any thread; moved from node to node
/// with the object by a tier move, `large::book_huge_moved`).
pub(super) static HUGE_NET: [[AtomicI64; MAX_NODES]; MAX_LABELS] = [ZERO_NETS; MAX_LABELS];

/// The heap of label `id` (not 0) on `node`, made now if it does not exist yet; None if the
/// kernel refuses the memory for it.
fn label_heap(id: u8, node: u32) -> Option<&'static LabelHeap> {
    let slot = (id as usize).checked_sub(1)?;
    let cell = LABEL_HEAPS.get(slot)?.get(node as usize)?;
    let p = cell.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: a published label heap is never freed.
        return Some(unsafe { &*p });
    }
    let _g = CREATE.lock();
    let p = cell.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: as above.
        return Some(unsafe { &*p });
    }
    let size = core::mem::size_of::<LabelHeap>().next_multiple_of(crate::sys::os::OS_PAGE);
    let p = crate::sys::os::map_aligned(size, crate::sys::os::OS_PAGE, None) as *mut LabelHeap;
    if p.is_null() {
        return None;
    }
    let mut heap = Heap::new();
    heap.label = id;
    // SAFETY: a fresh mapping of ours, big enough and page-aligned; nobody else knows it yet.
    unsafe {
        p.write(LabelHeap {
            lock: SpinLock::new(),
            heap: UnsafeCell::new(heap),
        })
    };
    cell.store(p, Ordering::Release);
    LABEL_HEAPS_USED[slot].fetch_or(1 << node, Ordering::Relaxed);
    // SAFETY: just published, never freed.
    Some(unsafe { &*p })
}

/// Every label heap made so far (only stable while `CREATE` is held).
pub(super) fn label_heaps() -> impl Iterator<Item = &'static LabelHeap> {
    LABEL_HEAPS.iter().flat_map(|row| {
        row.iter().filter_map(|c| {
            let p = c.load(Ordering::Acquire);
            // SAFETY: a published label heap is never freed.
            (!p.is_null()).then(|| unsafe { &*p })
        })
    })
}

/// Allocates `size` bytes at `align` for label `id` (not 0) on `node` (whose tier budget the
/// caller has checked), from that label heap. Null on failure (the caller then serves the
/// request as if no scope were active).
///
/// # Safety
/// `align` is a power of two.
pub(crate) unsafe fn label_alloc(
    id: u8,
    node: u32,
    size: usize,
    align: usize,
    zero: bool,
) -> *mut u8 {
    let Some(lh) = label_heap(id, node) else {
        return ptr::null_mut();
    };
    // Refused (out of address space): the calling thread's huge cache makes way, with the
    // label heap's lock let go (else the block would be served unlabelled).
    retry_making_room(|| {
        let _g = lh.lock.lock();
        // SAFETY: we hold the label heap's lock, so it is ours for the duration.
        let mut h = unsafe { HeapRef::new(lh.heap.get()) };
        if h.state != ACTIVE {
            h.shared = true;
            // SAFETY: a label heap is never unregistered, so one that is not ACTIVE was never
            // listed.
            unsafe { register(h, node) };
        }
        // SAFETY: forwarded contract.
        unsafe { alloc_generic_in(h, size, align, zero) }
    })
}

/// Calls `f(slot, node, heap)` for every label heap published so far.
fn for_each_label_heap(mut f: impl FnMut(usize, usize, &LabelHeap)) {
    for (slot, used) in LABEL_HEAPS_USED.iter().enumerate() {
        let mut used = used.load(Ordering::Relaxed);
        while used != 0 {
            let node = used.trailing_zeros() as usize;
            used &= used - 1;
            let p = LABEL_HEAPS[slot][node].load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: a published label heap is never freed.
                f(slot, node, unsafe { &*p });
            }
        }
    }
}

/// Collects and purges every label heap that is free right now (try-lock: never waits).
pub(super) fn collect_label_heaps(now: u64, delay: u64) {
    for_each_label_heap(|_, _, lh| {
        if let Some(_g) = lh.lock.try_lock() {
            // SAFETY: we hold its lock, so it is ours for the duration.
            let h = unsafe { HeapRef::new(lh.heap.get()) };
            if h.state == ACTIVE {
                // SAFETY: we hold no page of the label heap (we only took its lock).
                unsafe { heap_collect(h, now, delay) };
            }
        }
    });
}

/// Calls `f(slot, node, bytes)` with the live bytes of every label heap: each is locked in
/// turn (waiting for an allocation in progress), the frees other threads made into it are
/// collected, and its pages' used blocks summed (bin pages: used blocks times the block size;
/// large pages: the page's block), plus its huge objects. Exact for the heap when it is read.
/// Then the huge bytes a label has on a node where it has no heap: a tier move took its huge
/// objects there (`large::book_huge_moved`; review rev19).
pub(crate) fn for_each_label_live(mut f: impl FnMut(usize, u32, i64)) {
    let delay = crate::init::PURGE_DELAY_MS.load(Ordering::Relaxed);
    let mut seen = [0u64; MAX_LABELS];
    for_each_label_heap(|slot, node, lh| {
        seen[slot] |= 1 << node;
        let mut bytes = HUGE_NET[slot][node].load(Ordering::Relaxed);
        {
            let _g = lh.lock.lock();
            // SAFETY: we hold its lock, so it is ours for the duration.
            let h = unsafe { HeapRef::new(lh.heap.get()) };
            if h.state == ACTIVE {
                // SAFETY: we hold no page of the heap; its segments are its own (a label
                // heap adopts none and gives none away) and stay so while we hold the
                // lock.
                unsafe {
                    heap_collect(h, crate::sys::os::now_ms(), delay);
                    for_each_used_page_on(h.segments, |p| bytes += page_live_bytes(p));
                }
            }
        }
        f(slot, node as u32, bytes);
    });
    for (slot, row) in HUGE_NET.iter().enumerate() {
        for (node, net) in row.iter().enumerate() {
            let bytes = net.load(Ordering::Relaxed);
            if seen[slot] & (1 << node) == 0 && bytes != 0 {
                f(slot, node as u32, bytes);
            }
        }
    }
}

/// Bytes of the live blocks of a page in use: a bin page's used blocks, a large page's block.
///
/// # Safety
/// `p` is a page in use of a segment the caller owns.
unsafe fn page_live_bytes(p: *const crate::heap::segment::Page) -> i64 {
    // SAFETY: per the contract.
    unsafe {
        if (*p).kind == PageKind::Large as u8 {
            if (*p).used != 0 {
                (*p).block_size as i64
            } else {
                0
            }
        } else {
            bin_page_bytes(p)
        }
    }
}

/// A huge object of `bytes` made (positive) or freed (negative) by the label heap `id` (not
/// 0) of `node`.
pub(super) fn book_huge(id: u8, node: u16, bytes: i64) {
    let slot = (id as usize).saturating_sub(1).min(MAX_LABELS - 1);
    let node = (node as usize).min(MAX_NODES - 1);
    HUGE_NET[slot][node].fetch_add(bytes, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::huge::AFTER_REGISTER;
    use crate::heap::segment::Segment;

    /// The node the stand-in demoter moves huge objects to.
    const FAR: u16 = 1;

    /// A stand-in for the automatic demoter, run right as a huge object is registered
    /// (`AFTER_REGISTER`): books the object's move to [`FAR`] as `migrate` does (its pages
    /// stay where they are).
    fn demote(s: *mut Segment) {
        // SAFETY: the object is live and held still (its owner is inside its allocation or
        // growth, the demoter would hold its claim).
        unsafe { crate::heap::thread::book_huge_moved(s, FAR) }
    }

    /// Review rev21: `alloc_huge` registered a new huge object (from then on the automatic
    /// demoter may claim and move it; with `after` 0 it does so at once) and only then
    /// wrote its label and booked the label's bytes on the heap's node. A move in between
    /// found no label to move (`book_huge_moved`), so the label's bytes stayed on the old
    /// node while the block lived on the new one (and the two threads wrote and read the
    /// header's label fields at once). Here a stand-in demoter moves the block (as `migrate`
    /// books a move, under the claim it would hold) right as it is registered.
    #[test]
    fn a_labelled_huge_block_moved_as_it_is_registered_counts_on_its_new_node() {
        std::thread::spawn(|| {
            let id = label_id("review rev21: moved as it is registered");
            let slot = id as usize - 1;
            let net = |node: usize| HUGE_NET[slot][node].load(Ordering::Relaxed);
            let size = 3 << 20;
            AFTER_REGISTER.with(|f| f.set(Some(demote)));
            // SAFETY: 16 is a power of two.
            let p = unsafe { label_alloc(id, 0, size, 16, false) };
            AFTER_REGISTER.with(|f| f.set(None));
            assert!(!p.is_null());
            // SAFETY: a live huge block of ours.
            let usable = unsafe { crate::heap::thread::usable_size(p) } as i64;
            let (home, far) = (net(0), net(FAR as usize));
            // SAFETY: the block from label_alloc, freed once.
            unsafe { crate::heap::thread::free(p) };
            assert_eq!(
                (home, far),
                (0, usable),
                "label bytes on node 0 and on the node the block moved to, while it lived"
            );
            assert_eq!((net(0), net(FAR as usize)), (0, 0), "after its free");
        })
        .join()
        .unwrap();
    }

    /// Review rev21: `grow_huge` (an in-place `realloc`) registered the grown object again
    /// (`huge::grow`, with its old birth time: the demoter takes it at its next pass) and
    /// only then booked the label's growth on the label's node. A move in between took the
    /// whole grown size off the old node, which had only the old size, and the growth was
    /// then booked on the new node: the grown bytes stayed below zero on the old node and
    /// above on the new one for good.
    #[test]
    fn a_labelled_huge_block_moved_as_its_growth_is_registered_leaves_no_bytes_behind() {
        std::thread::spawn(|| {
            // The thread's own heap, which `grow_huge` books on, set up.
            // SAFETY: 16 is a power of two; the block is freed at once.
            unsafe { crate::heap::thread::free(crate::heap::thread::alloc_generic(64, 16, false)) };
            let id = label_id("review rev21: moved as its growth is registered");
            let slot = id as usize - 1;
            let net = |node: usize| HUGE_NET[slot][node].load(Ordering::Relaxed);
            // SAFETY: 16 is a power of two.
            let p = unsafe { label_alloc(id, 0, 3 << 20, 16, false) };
            assert!(!p.is_null());
            AFTER_REGISTER.with(|f| f.set(Some(demote)));
            // SAFETY: a live huge block of ours, ours to reallocate.
            let q = unsafe { crate::heap::thread::grow_huge(p, 5 << 20) };
            AFTER_REGISTER.with(|f| f.set(None));
            assert!(!q.is_null(), "not grown in place");
            // SAFETY: the grown block, live.
            let usable = unsafe { crate::heap::thread::usable_size(q) } as i64;
            let (home, far) = (net(0), net(FAR as usize));
            // SAFETY: the grown block, freed once.
            unsafe { crate::heap::thread::free(q) };
            let after = (net(0), net(FAR as usize));
            assert_eq!(
                ((home, far), after),
                ((0, usable), (0, 0)),
                "label bytes on node 0 and the new node: while it lived, after its free"
            );
        })
        .join()
        .unwrap();
    }
}
