//! Loom model checks of the heap's concurrent cores, run on the real code: `tieralloc::remote`
//! (a page's remote-free list and delayed-free state, a heap's delayed stack),
//! `tieralloc::delayed` (the two ends of a delayed free), `tieralloc::list` (the locked
//! segment pools and abandoned lists, with `claim`) and `tieralloc::claim` (the huge
//! registry's slots). Under `--cfg loom` the crate builds only these, with atomics and
//! `UnsafeCell` from loom, so loom sees every access to shared memory, free-list links
//! included. Run with (scripts/test.sh):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --profile loom --test loom
//! ```
//!
//! The `loom` profile keeps debug assertions on. docs/correctness/loom.md lists which
//! ordering each model needs (weakened to relaxed, a model fails).
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use std::collections::HashMap;
use tieralloc::claim::ClaimSlot;
use tieralloc::delayed;
use tieralloc::list::{ListNode, LockedList};
use tieralloc::remote::{
    Block, BlockStack, Pushed, RemoteFree, DELAYED_FREEING, NEVER_DELAYED, NORMAL, USE_DELAYED,
};

/// A block the test owns, passed between threads as an address (8-byte aligned: the low bits
/// of the list word carry the page state).
fn new_block() -> usize {
    Box::into_raw(Box::new(Block::new())) as usize
}

fn free_block(b: usize) {
    // SAFETY: made by new_block and freed once, after every list let go of it.
    drop(unsafe { Box::from_raw(b as *mut Block) });
}

/// The addresses on a list taken with `take_all`, in list order.
fn walk(mut b: *mut Block) -> Vec<usize> {
    let mut v = Vec::new();
    while !b.is_null() {
        v.push(b as usize);
        // SAFETY: b is one of our blocks, taken from a list after it was published.
        b = unsafe { Block::next(b) };
        assert!(v.len() <= 16, "cycle in a block list");
    }
    v
}

/// Takes a page's remote list, checking that its count is its length.
fn take_page_list(page: &RemoteFree) -> Vec<usize> {
    let (head, n) = page.take_counted();
    let v = walk(head);
    assert_eq!(v.len(), n as usize, "a remote list's count is its length");
    v
}

/// Every block in `blocks` seen exactly once in `seen`, and nothing else.
fn exactly_once(blocks: &[usize], seen: &[usize]) {
    let mut count: HashMap<usize, usize> = HashMap::new();
    for &b in seen {
        *count.entry(b).or_default() += 1;
    }
    for &b in blocks {
        assert_eq!(count.remove(&b), Some(1), "block {b:#x} seen {seen:x?}");
    }
    assert!(count.is_empty(), "unknown blocks {count:x?}");
}

/// Checks `model` with loom, bounded to `preemptions` preemptions unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise, twice: once as written, once with the model's main
/// thread yielding before its first step against the threads it spawned (`model(true)`).
///
/// Both are needed. Under a preemption bound loom does not get every schedule: without the
/// yield it never ran a spawned thread before the main thread's first step of the first
/// model below (its take always found the list empty); with it, the main thread's loads after
/// the yield no longer return values older than the yield (loom's rule to make spinning
/// progress), which hides the stale reads that a missing release or acquire allows.
fn check(preemptions: usize, model: fn(bool)) {
    for yield_first in [false, true] {
        let mut b = loom::model::Builder::new();
        if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
            b.preemption_bound = Some(preemptions);
        }
        b.check(move || model(yield_first));
    }
}

// ---------------------------------------------------------------------------------------------
// Remote frees and delayed frees (heap::remote, heap::delayed).

/// Two threads push blocks onto a page's RemoteFree while the owner takes the list
/// concurrently: every block is collected exactly once, each take's count is the length of
/// its list, the links the owner walks are the ones the pushers wrote (loom checks the
/// release of `push` against the acquire of `take_counted`), and the state bits are
/// untouched.
#[test]
fn remote_free_pushes_race_with_take_all() {
    check(3, |yield_first| {
        let rf = Arc::new(RemoteFree::new());
        let blocks: Vec<usize> = (0..3).map(|_| new_block()).collect();
        let pushers: Vec<_> = [vec![blocks[0], blocks[1]], vec![blocks[2]]]
            .into_iter()
            .map(|mine| {
                let rf = rf.clone();
                thread::spawn(move || {
                    for b in mine {
                        // SAFETY: we own b; it is on no list and 8-byte aligned.
                        let r = unsafe { rf.push(b as *mut Block) };
                        assert_eq!(r, Pushed::OnPage, "state NORMAL always pushes");
                    }
                })
            })
            .collect();
        if yield_first {
            thread::yield_now();
        }
        let mut seen = take_page_list(&rf);
        for p in pushers {
            p.join().unwrap();
        }
        seen.extend(take_page_list(&rf));
        exactly_once(&blocks, &seen);
        assert!(rf.take_all().is_null());
        assert!(!rf.has_blocks());
        assert_eq!(rf.state(), NORMAL);
        for b in blocks {
            free_block(b);
        }
    });
}

/// A remote free in the real order: push, and if that says Delayed, `delayed::finish` onto
/// the owner's stack. Returns whether it went the delayed way.
fn remote_free(page: &RemoteFree, owner_stack: &BlockStack, b: usize) -> bool {
    // SAFETY: we own b, which is on no list.
    match unsafe { page.push(b as *mut Block) } {
        Pushed::OnPage => false,
        Pushed::Delayed => {
            assert_eq!(page.state(), DELAYED_FREEING);
            // SAFETY: push said Delayed; the owner cannot leave until finish returns.
            unsafe { delayed::finish(owner_stack, page, b as *mut Block) };
            true
        }
    }
}

/// The owner's drain, with the page's owner-side free list as a loom cell: `delayed::drain`
/// hands each block to the closure, which frees it into the page.
fn drain_into(stack: &BlockStack, page: &RemoteFree, local: &UnsafeCell<Vec<usize>>) {
    // SAFETY: the caller owns the heap of `stack` and the page; every block is the page's.
    unsafe {
        delayed::drain(
            stack,
            |_| ((), page),
            |b, ()| {
                // Freeing may retire the page (free_local): never while a remote thread is
                // still between its push and finish_delayed on it.
                assert_ne!(
                    page.state(),
                    DELAYED_FREEING,
                    "drained under a delayed free"
                );
                // SAFETY: the page's local list is the owner's (the caller).
                local.with_mut(|l| (*l).push(b as usize))
            },
        )
    };
}

/// The delayed-free protocol against an owner that is leaving (thread exit). The page is
/// full (USE_DELAYED); a remote thread frees a block (push, then `delayed::finish` if
/// Delayed). Meanwhile the owner calls set_never_delayed (which must wait out
/// DELAYED_FREEING), then drains its stack with `delayed::drain` and takes the page's list.
/// Whatever the interleaving: the block is found exactly once, no block reaches the owner's
/// stack after it left, and the final state is NEVER_DELAYED.
#[test]
fn delayed_free_races_with_owner_leaving() {
    check(3, |yield_first| {
        let page = Arc::new(RemoteFree::new());
        let stack = Arc::new(BlockStack::new());
        let local = UnsafeCell::new(Vec::new());
        page.force_state(USE_DELAYED);
        let block = new_block();
        let remote = {
            let (page, stack) = (page.clone(), stack.clone());
            thread::spawn(move || remote_free(&page, &stack, block))
        };
        if yield_first {
            thread::yield_now();
        }
        // The owner leaves.
        page.set_never_delayed();
        assert_eq!(page.state(), NEVER_DELAYED);
        drain_into(&stack, &page, &local);
        // SAFETY: every other thread of the model has been joined: nothing else reaches the cell now.
        let mut seen = local.with(|l| unsafe { (*l).clone() });
        seen.extend(take_page_list(&page));
        let delayed = remote.join().unwrap();
        // After the owner drained its stack, nothing may arrive there any more.
        assert!(
            stack.take_all().is_null(),
            "a delayed free reached the stack of an owner that had left"
        );
        // A free that came after the owner left is on the page list (for the adopter).
        seen.extend(take_page_list(&page));
        exactly_once(&[block], &seen);
        if delayed {
            // SAFETY: every other thread of the model has been joined: nothing else reaches the cell now.
            assert!(local.with(|l| unsafe { (*l).len() }) == 1);
        }
        assert_eq!(page.state(), NEVER_DELAYED);
        free_block(block);
    });
}

/// Two remote frees on a full page: the first goes the delayed way, the second (seeing
/// DELAYED_FREEING or NORMAL) pushes onto the page. The owner, still active, drains its stack
/// as it does on its slow paths (`delayed::drain` puts back a block whose pusher has not
/// finished); at the end both blocks are found exactly once and the state is back to NORMAL.
#[test]
fn two_remote_frees_on_a_full_page() {
    check(3, |yield_first| {
        let page = Arc::new(RemoteFree::new());
        let stack = Arc::new(BlockStack::new());
        let local = UnsafeCell::new(Vec::new());
        page.force_state(USE_DELAYED);
        let blocks = [new_block(), new_block()];
        let remotes: Vec<_> = blocks
            .iter()
            .map(|&b| {
                let (page, stack) = (page.clone(), stack.clone());
                thread::spawn(move || remote_free(&page, &stack, b) as usize)
            })
            .collect();
        if yield_first {
            thread::yield_now();
        }
        drain_into(&stack, &page, &local);
        let mut seen = take_page_list(&page);
        let delayed: usize = remotes.into_iter().map(|r| r.join().unwrap()).sum();
        assert_eq!(delayed, 1, "exactly one free sees USE_DELAYED");
        drain_into(&stack, &page, &local);
        seen.extend(take_page_list(&page));
        // SAFETY: the remote threads are joined: the owner's list is read by its only user.
        seen.extend(local.with(|l| unsafe { (*l).clone() }));
        exactly_once(&blocks, &seen);
        assert_eq!(page.state(), NORMAL);
        for b in blocks {
            free_block(b);
        }
    });
}

/// BlockStack: two pushers, one consumer taking everything in a loop until it has seen
/// every block: nothing lost, nothing duplicated, every link read after it was written.
#[test]
fn block_stack_two_pushers_one_consumer() {
    check(3, |yield_first| {
        let stack = Arc::new(BlockStack::new());
        let blocks: Vec<usize> = (0..4).map(|_| new_block()).collect();
        let pushers: Vec<_> = blocks
            .chunks(2)
            .map(|mine| {
                let mine = mine.to_vec();
                let stack = stack.clone();
                thread::spawn(move || {
                    for b in mine {
                        // SAFETY: we own b.
                        unsafe { stack.push(b as *mut Block) };
                    }
                })
            })
            .collect();
        if yield_first {
            thread::yield_now();
        }
        let mut seen = Vec::new();
        while seen.len() < blocks.len() {
            let got = walk(stack.take_all());
            if got.is_empty() {
                thread::yield_now();
            }
            seen.extend(got);
        }
        for p in pushers {
            p.join().unwrap();
        }
        assert!(stack.take_all().is_null());
        exactly_once(&blocks, &seen);
        for b in blocks {
            free_block(b);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Segments: ownership, the abandoned lists, the pools (heap::list), with the delayed frees.

/// A segment with one page, as the models need it: an owner word, the list tag and links
/// (`ListNode`), the page's remote-free word, and the page's owner-side free list and a
/// payload as loom cells (only the segment's owner, or the holder of its list's lock,
/// touches them).
struct Seg {
    owner: AtomicUsize,
    tag: AtomicU8,
    next: UnsafeCell<*mut Seg>,
    prev: UnsafeCell<*mut Seg>,
    page: RemoteFree,
    local: UnsafeCell<Vec<usize>>,
    data: UnsafeCell<u32>,
}

// SAFETY: the raw links are only followed under a list's lock (ListNode's contract).
unsafe impl Send for Seg {}
// SAFETY: as above; every other field is an atomic or a loom cell.
unsafe impl Sync for Seg {}

impl Seg {
    fn new(owner: usize) -> Seg {
        Seg {
            owner: AtomicUsize::new(owner),
            tag: AtomicU8::new(0),
            next: UnsafeCell::new(std::ptr::null_mut()),
            prev: UnsafeCell::new(std::ptr::null_mut()),
            page: RemoteFree::new(),
            local: UnsafeCell::new(Vec::new()),
            data: UnsafeCell::new(0),
        }
    }
    fn ptr(&self) -> *mut Seg {
        self as *const Seg as *mut Seg
    }
}

impl ListNode for Seg {
    unsafe fn next(n: *mut Self) -> *mut Self {
        // SAFETY: n is a live Seg (the Arcs outlive the model's threads).
        unsafe { (*n).next.with(|p| *p) }
    }
    unsafe fn set_next(n: *mut Self, next: *mut Self) {
        // SAFETY: as above.
        unsafe { (*n).next.with_mut(|p| *p = next) }
    }
    unsafe fn prev(n: *mut Self) -> *mut Self {
        // SAFETY: as above.
        unsafe { (*n).prev.with(|p| *p) }
    }
    unsafe fn set_prev(n: *mut Self, prev: *mut Self) {
        // SAFETY: as above.
        unsafe { (*n).prev.with_mut(|p| *p = prev) }
    }
    unsafe fn list_tag(n: *mut Self) -> u8 {
        // SAFETY: as above.
        unsafe { (*n).tag.load(Ordering::Relaxed) }
    }
    unsafe fn set_list_tag(n: *mut Self, tag: u8) {
        // SAFETY: as above.
        unsafe { (*n).tag.store(tag, Ordering::Relaxed) }
    }
    unsafe fn owner(n: *mut Self) -> usize {
        // SAFETY: as above.
        unsafe { (*n).owner.load(Ordering::Relaxed) }
    }
    unsafe fn set_owner(n: *mut Self, owner: usize, _tag: u16) {
        // As segment::set_owner: a release store.
        // SAFETY: as above.
        unsafe { (*n).owner.store(owner, Ordering::Release) }
    }
}

/// A thread with heap id `me` frees block `b` of `seg`'s page, as `free_other` and
/// `free_other_slow` do: if the segment is abandoned and `same_node`, it tries to claim it
/// from `list` and, having adopted it, frees locally; else it pushes (and finishes a delayed
/// free onto the owner's stack in `stacks`). Returns whether it adopted the segment.
fn free_into(
    seg: &Seg,
    list: &LockedList<Seg>,
    stacks: &[BlockStack],
    me: usize,
    same_node: bool,
    b: usize,
) -> bool {
    let owner = seg.owner.load(Ordering::Acquire);
    // SAFETY: our live block keeps the segment alive.
    if owner == 0 && same_node && unsafe { list.claim(seg.ptr(), me, me as u16) } {
        // Adopted (adopt_segment): no delayed free is in flight on its pages, so the state
        // can be forced; take in the remote frees; then free our block locally.
        seg.page.force_state(NORMAL);
        let got = take_page_list(&seg.page);
        // SAFETY: the segment is ours now; its page's free list is ours.
        seg.local.with_mut(|l| unsafe {
            (*l).extend(got);
            (*l).push(b);
        });
        return true;
    }
    // SAFETY: we own b.
    if let Pushed::Delayed = unsafe { seg.page.push(b as *mut Block) } {
        // free_delayed: the owner cannot have left while the page is DELAYED_FREEING.
        let o = seg.owner.load(Ordering::Acquire);
        assert_ne!(o, 0, "a delayed free found no owner");
        // SAFETY: push said Delayed.
        unsafe { delayed::finish(&stacks[o], &seg.page, b as *mut Block) };
    }
    false
}

/// The drain of the delayed stack against abandonment and claim on free. Heap 1 owns a
/// segment whose page is full (USE_DELAYED) and gives it up (abandon_segment / thread exit:
/// set_never_delayed, `delayed::drain`, take in the page's remote frees, push it on the
/// abandoned list). Heaps 2 and 3 each free a block of that page meanwhile: through the
/// delayed path, onto the page, or (heap 2, of the segment's node), finding it abandoned, by
/// claiming and adopting it. (Heap 3 is of another node and never claims: loom's scheduler
/// cannot get through three threads spinning on one lock.)
/// Whatever the interleaving: each block is freed exactly once (into the page's free list by
/// whoever owned it, or left on the page's remote list), at most one heap adopts, nothing is
/// left on a delayed stack (above all not on heap 1's after it left), and the page's free
/// list is only written by its owner of the moment (loom checks each owner's writes happen
/// before the next one's).
#[test]
fn drain_races_with_abandon_and_claim_on_free() {
    check(2, |yield_first| {
        let seg = Arc::new(Seg::new(1));
        seg.page.force_state(USE_DELAYED);
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        let stacks: Arc<[BlockStack; 4]> = Arc::new(Default::default());
        let blocks = [new_block(), new_block()];
        let freers: Vec<_> = [(2, true), (3, false)]
            .into_iter()
            .zip(blocks)
            .map(|((me, same_node), b)| {
                let (seg, list, stacks) = (seg.clone(), list.clone(), stacks.clone());
                thread::spawn(move || free_into(&seg, &list, &stacks[..], me, same_node, b))
            })
            .collect();
        if yield_first {
            thread::yield_now();
        }
        // Heap 1 abandons the segment.
        seg.page.set_never_delayed();
        drain_into(&stacks[1], &seg.page, &seg.local);
        let got = take_page_list(&seg.page);
        // SAFETY: still ours.
        seg.local.with_mut(|l| unsafe { (*l).extend(got) });
        // SAFETY: ours, on no list.
        unsafe { list.push_abandoned(seg.ptr()) };
        let adopted: usize = freers.into_iter().map(|t| t.join().unwrap() as usize).sum();
        assert!(adopted <= 1, "two heaps adopted one segment");
        for (i, s) in stacks.iter().enumerate() {
            assert!(
                s.take_all().is_null(),
                "a block left on heap {i}'s delayed stack"
            );
        }
        let owner = seg.owner.load(Ordering::Relaxed);
        let mut on_list = 0;
        list.for_each(|s| {
            assert_eq!(s, seg.ptr());
            on_list += 1;
        });
        assert_eq!(on_list, list.count.load(Ordering::Relaxed));
        if adopted == 1 {
            assert_eq!(owner, 2);
            assert_eq!(on_list, 0, "an adopted segment is off the list");
        } else {
            assert_eq!(owner, 0);
            assert_eq!(on_list, 1);
        }
        // SAFETY: both threads are joined: the segment's owner-side list has no other reader or writer.
        let mut seen = seg.local.with(|l| unsafe { (*l).clone() });
        seen.extend(take_page_list(&seg.page));
        exactly_once(&blocks, &seen);
        for b in blocks {
            free_block(b);
        }
    });
}

/// The abandoned lists, abandonment against claim on free: heap 1 writes its segment and
/// abandons it (`push_abandoned` onto the list of segments with room) while heap 2, holding a
/// block of it, tries to claim it as `free_other_slow` does, from the full list first, then
/// from the other, and writes it if it got it. The segment's contents pass from one to the
/// other only through the list (loom checks heap 1's write happens before heap 2's); a claim
/// on the list the segment is not on fails and leaves both lists whole; each list's count is
/// its length; at the end the segment is either on its list, unowned, or heap 2's.
#[test]
fn abandoned_list_abandon_against_claim() {
    check(3, |yield_first| {
        let seg = Arc::new(Seg::new(1));
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        let full = LockedList::<Seg>::tagged(2);
        let owner = {
            let (seg, list) = (seg.clone(), list.clone());
            thread::spawn(move || {
                // SAFETY: the segment is heap 1's until it lets go of it.
                seg.data.with_mut(|d| unsafe { *d = 1 });
                // SAFETY: ours, on no list.
                unsafe { list.push_abandoned(seg.ptr()) };
            })
        };
        if yield_first {
            thread::yield_now();
        }
        // SAFETY: the model's Arc keeps the segment alive.
        let claimed = unsafe { full.claim(seg.ptr(), 2, 2) || list.claim(seg.ptr(), 2, 2) };
        if claimed {
            // SAFETY: claimed: ours.
            seg.data.with_mut(|d| unsafe { *d += 100 });
        }
        owner.join().unwrap();
        let mut len = 0;
        list.for_each(|_| len += 1);
        assert_eq!(len, list.count.load(Ordering::Relaxed), "count is length");
        let mut full_len = 0;
        full.for_each(|_| full_len += 1);
        assert_eq!((full_len, full.count.load(Ordering::Relaxed)), (0, 0));
        // SAFETY: the threads that wrote the data are joined: this read races with nothing.
        let data = seg.data.with(|d| unsafe { *d });
        assert_eq!(data, 1 + 100 * claimed as u32);
        let state = (seg.owner.load(Ordering::Relaxed), len);
        assert_eq!(state, if claimed { (2, 0) } else { (0, 1) });
    });
}

/// The abandoned list, a visit against claim on free: a thread tending abandoned segments
/// pops one, writes it and puts it back at the end (heap_collect / tend_abandoned), while a
/// freeing thread claims it and writes it. At most one holds it at a time (loom checks each
/// write happens before the other's access); a claim fails while the visitor holds it (it
/// is on no list then); the list's count is its length; the segment ends on the list
/// (unowned) or with the claimer.
#[test]
fn abandoned_list_visit_against_claim() {
    check(3, |yield_first| {
        let seg = Arc::new(Seg::new(1));
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        // SAFETY: heap 1's; it abandons it before the others start.
        unsafe { list.push_abandoned(seg.ptr()) };
        let tender = {
            let list = list.clone();
            thread::spawn(move || {
                let s = list.pop(3, 3);
                if s.is_null() {
                    return false;
                }
                // SAFETY: popped: ours until we push it back.
                unsafe {
                    assert_eq!((*s).owner.load(Ordering::Relaxed), 3);
                    (*s).data.with_mut(|d| *d += 10);
                    list.push_abandoned_back(s);
                }
                true
            })
        };
        if yield_first {
            thread::yield_now();
        }
        // SAFETY: the model's Arc keeps the segment alive.
        let claimed = unsafe { list.claim(seg.ptr(), 2, 2) };
        if claimed {
            // SAFETY: claimed: ours.
            seg.data.with_mut(|d| unsafe { *d += 100 });
        }
        let tended = tender.join().unwrap();
        let mut len = 0;
        list.for_each(|_| len += 1);
        assert_eq!(len, list.count.load(Ordering::Relaxed), "count is length");
        // SAFETY: the threads that wrote the data are joined: this read races with nothing.
        let data = seg.data.with(|d| unsafe { *d });
        assert_eq!(data, 10 * tended as u32 + 100 * claimed as u32);
        assert!(tended || claimed, "one of them got it");
        let state = (seg.owner.load(Ordering::Relaxed), len);
        assert_eq!(state, if claimed { (2, 0) } else { (0, 1) });
    });
}

/// A pool: two segments pushed by one thread, one popped by another, while a third unmaps
/// the expired ones (`remove_if`, the core of `unmap_expired`, which gives up if the lock is
/// busy). Each segment ends up exactly once: popped, unmapped, or still pooled; the unmapper
/// and the popper never get the same one (the "unmap" writes the segment, which loom checks
/// against the popper's write); count is length.
#[test]
fn pool_push_pop_and_expiry() {
    check(2, |yield_first| {
        let segs = [Arc::new(Seg::new(0)), Arc::new(Seg::new(0))];
        let pool = Arc::new(LockedList::<Seg>::new());
        let pusher = {
            let (segs, pool) = (segs.clone(), pool.clone());
            thread::spawn(move || {
                for s in &segs {
                    // SAFETY: unowned, on no list.
                    unsafe { pool.push(s.ptr()) };
                }
            })
        };
        let popper = {
            let pool = pool.clone();
            thread::spawn(move || {
                let s = pool.pop(7, 7);
                if !s.is_null() {
                    // SAFETY: popped: ours.
                    unsafe { (*s).data.with_mut(|d| *d += 1) };
                }
                s as usize
            })
        };
        if yield_first {
            thread::yield_now();
        }
        let mut gone = Vec::new();
        pool.remove_if(
            |_| true,
            |s| {
                // SAFETY: off the list: ours to unmap.
                unsafe { (*s).data.with_mut(|d| *d += 100) };
                gone.push(s as usize);
            },
        );
        pusher.join().unwrap();
        let popped = popper.join().unwrap();
        let mut pooled = Vec::new();
        pool.for_each(|s| pooled.push(s as usize));
        assert_eq!(pooled.len(), pool.count.load(Ordering::Relaxed));
        let mut seen = gone.clone();
        seen.extend(pooled);
        if popped != 0 {
            seen.push(popped);
        }
        let all: Vec<usize> = segs.iter().map(|s| s.ptr() as usize).collect();
        exactly_once(&all, &seen);
        for s in &segs {
            // SAFETY: the pusher and popper are joined: nothing else reads or writes the data.
            let d = s.data.with(|d| unsafe { *d });
            assert!(
                d == 0 || d == 1 || d == 100,
                "a segment popped and unmapped: {d}"
            );
        }
    });
}

/// fork: the forking thread holds every list lock across fork (`lock_for_fork`), so the
/// child, which has only that thread, sees each list whole: not in the middle of another
/// thread's push or pop. Here a thread pushes two segments and pops one while the "forker"
/// takes the lock, walks the list as the child would (`for_each_held`: the links and count
/// agree, loom checks the links were written before), and lets go (`unlock_after_fork`).
#[test]
fn fork_sees_lists_whole() {
    check(3, |yield_first| {
        let segs = [Arc::new(Seg::new(1)), Arc::new(Seg::new(1))];
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        let worker = {
            let (segs, list) = (segs.clone(), list.clone());
            thread::spawn(move || {
                for s in &segs {
                    // SAFETY: ours, on no list.
                    unsafe { list.push_abandoned(s.ptr()) };
                }
                let s = list.pop(2, 2);
                assert!(!s.is_null());
            })
        };
        if yield_first {
            thread::yield_now();
        }
        list.lock_for_fork();
        let mut len = 0;
        // SAFETY: we hold the lock (lock_for_fork).
        unsafe { list.for_each_held(|_| len += 1) };
        assert_eq!(
            len,
            list.count.load(Ordering::Relaxed),
            "the child sees a whole list"
        );
        assert!(len <= 2);
        list.unlock_after_fork();
        worker.join().unwrap();
        let mut len = 0;
        list.for_each(|_| len += 1);
        assert_eq!(len, 1);
    });
}

// ---------------------------------------------------------------------------------------------
// The huge registry's claim bit (heap::claim).

/// A huge object as the claim protocol sees it: its header's `node` (written by a demoter
/// that moves it, read and written by the owner under its own claim) and a "freed" mark the
/// owner sets after taking it out of its slot (where it unmaps the object).
struct Huge {
    node: UnsafeCell<u32>,
    freed: UnsafeCell<bool>,
}

// SAFETY: the cells are only touched by the holder of the claim (or the owner after `take`).
unsafe impl Sync for Huge {}
// SAFETY: as above.
unsafe impl Send for Huge {}

/// The owner of a huge object registers it (`register`), works on it under its claim
/// (`with_claim`: an explicit move or grow_huge), then frees it (`unregister`, then unmap), while the automatic demoter visits
/// the registry (`for_each_claimed`) and moves it. Never both at once (loom checks every
/// header access happens before the other side's); the demoter never touches the object
/// after the owner took it out of its slot.
#[test]
fn huge_claim_owner_visitor_and_free() {
    check(3, |yield_first| {
        let obj = Arc::new(Huge {
            node: UnsafeCell::new(0),
            freed: UnsafeCell::new(false),
        });
        let slot = Arc::new(ClaimSlot::new());
        let addr = Arc::as_ptr(&obj) as usize;
        let visitor = {
            let slot = slot.clone();
            thread::spawn(move || {
                if let Some(v) = slot.try_claim() {
                    let h = v as *const Huge;
                    // SAFETY: claimed: the object is live and ours until we release it.
                    unsafe {
                        assert!(!(*h).freed.with(|f| *f), "visited a freed object");
                        (*h).node.with_mut(|n| *n = 1);
                    }
                    slot.release(v);
                }
            })
        };
        if yield_first {
            thread::yield_now();
        }
        // The owner hands the object out: writes its header (register sets huge_born_ms),
        // then puts it in the registry, where the visitor may find it at once.
        // SAFETY: not registered yet: ours alone.
        unsafe { obj.node.with_mut(|n| *n = 5) };
        assert!(slot.try_fill(addr));
        // The owner: an explicit move under its claim.
        assert!(slot.claim_own(addr), "the owner's object is in its slot");
        // SAFETY: claimed.
        unsafe {
            let n = obj.node.with(|n| *n);
            obj.node.with_mut(|m| *m = n + 2);
        }
        slot.release(addr);
        // Its free: out of the registry, then gone.
        slot.take(addr, || {});
        // SAFETY: no visitor reaches it any more.
        unsafe {
            obj.freed.with_mut(|f| *f = true);
            obj.node.with_mut(|n| *n = 99);
        }
        assert!(slot.try_claim().is_none(), "a freed object is in no slot");
        visitor.join().unwrap();
    });
}
