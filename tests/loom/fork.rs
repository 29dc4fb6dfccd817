//! fork (`heap::atfork`, `heap::heaps`, with `heap::list`, `heap::remote` and `heap::claim`).
//!
//! loom cannot fork. But a fork is a copy of memory taken at one instant while the other
//! threads are anywhere between two of their atomic steps, and the child goes on with the
//! forking thread alone. So here the forking thread takes the handlers' locks
//! (`atfork::prepare`, as `fork_prepare` does), copies the shared state (`fork_copy`: a
//! read-modify-write that changes nothing, so it reads the latest value and sees the writes
//! before it, as the copy does; what a lock guards is read under the lock), lets go
//! (`atfork::parent`), and once the other threads are joined (the child's objects are its
//! own: no thread of the parent touches them, so their schedules do not matter) builds the
//! child's objects from the copy, runs the child's real resets on them and goes on as the
//! child would, checking that nothing waits for a thread the child does not have, no block
//! is lost from a list or found twice, and every list is whole. A copy of several words must
//! be of one instant: it is taken twice and used only if both agree (no word in these models
//! takes one value twice, so then no word changed in between). loom runs every schedule, so
//! every instant is copied in some of them.

use super::registry::{whole, Registry, H};
use super::remote::{drain_into, remote_free};
use super::segments::Seg;
use super::*;
use tieralloc::atfork;
use tieralloc::heaps::HeapList;
use tieralloc::sync::SpinLock;

// ---------------------------------------------------------------------------------------------
// A page's delayed-free word and a heap's delayed stack (`atfork::unstick`, `abandon`,
// `return_delayed`).

/// What a fork copies of a page and of its owner heap's delayed stack.
struct PageCopy {
    state: u8,
    /// The blocks on the page's remote list, in order.
    page: Vec<usize>,
    /// The blocks on the owner's delayed stack, in order.
    stack: Vec<usize>,
}

/// The fork's copy of `page` and `stack` at one instant, or None if they changed while it
/// was taken (that schedule then has no fork).
fn copy_page(page: &RemoteFree, stack: &BlockStack) -> Option<PageCopy> {
    let first = (page.fork_copy(), stack.fork_copy());
    let second = (page.fork_copy(), stack.fork_copy());
    if first != second {
        return None;
    }
    let ((state, head, n), top) = first;
    let page = walk(head);
    assert_eq!(
        page.len(),
        n as usize,
        "a remote list's count is its length"
    );
    Some(PageCopy {
        state: state as u8,
        page,
        stack: walk(top),
    })
}

/// The child's page and delayed stack, rebuilt from the copy with the child's own blocks
/// (`child_of` maps a parent block to its copy).
fn child_page(copy: &PageCopy, child_of: &HashMap<usize, usize>) -> (RemoteFree, BlockStack) {
    let page = RemoteFree::new();
    for b in copy.page.iter().rev() {
        // SAFETY: the child's copy of a block, on no list yet.
        let r = unsafe { page.push(child_of[b] as *mut Block) };
        assert_eq!(r, Pushed::OnPage);
    }
    page.force_state(copy.state as usize);
    let stack = BlockStack::new();
    for b in copy.stack.iter().rev() {
        // SAFETY: as above.
        unsafe { stack.push(child_of[b] as *mut Block) };
    }
    (page, stack)
}

/// The child's copies of the blocks on the copied lists.
fn child_blocks(copy: &PageCopy) -> HashMap<usize, usize> {
    copy.page
        .iter()
        .chain(&copy.stack)
        .map(|&b| (b, new_block()))
        .collect()
}

/// The child when the page's owner is the forking thread (its heap lives on): the page's
/// reset (`atfork::unstick`), then a remote free by a thread of the child, the owner's drains,
/// and its exit (`set_never_delayed`, which waits out a delayed free in flight).
fn child_of_the_owner(copy: &PageCopy) {
    let child_of = child_blocks(copy);
    let (page, stack) = child_page(copy, &child_of);
    // The page is still full: its owner, the forking thread, had not drained its stack.
    atfork::unstick(&page, true);
    let state = page.state();
    assert_ne!(
        state, DELAYED_FREEING,
        "the child's page waits for the end of a free whose thread is gone"
    );
    if state == NORMAL {
        assert!(
            !stack.is_empty(),
            "a full page that no delayed free announces: its next remote free goes onto a \
             list its owner never looks at"
        );
    }
    let local = UnsafeCell::new(Vec::new());
    let b = new_block();
    remote_free(&page, &stack, b);
    drain_into(&stack, &page, &local);
    let mut seen = take_page_list(&page);
    page.set_never_delayed();
    drain_into(&stack, &page, &local);
    seen.extend(take_page_list(&page));
    // SAFETY: single-threaded child.
    seen.extend(local.with(|l| unsafe { (*l).clone() }));
    let mut expected: Vec<usize> = child_of.values().copied().collect();
    expected.push(b);
    exactly_once(&expected, &seen);
    for b in expected {
        free_block(b);
    }
}

/// The child when the page's owner died with the fork: its segment is abandoned
/// (`atfork::abandon` on the page, as `abandon_dead` does) and its delayed stack emptied onto
/// the pages (`atfork::return_delayed`); then a thread of the child frees a block into the
/// page, and the heap that adopts the segment takes the page's list.
fn child_of_a_dead_owner(copy: &PageCopy) {
    let child_of = child_blocks(copy);
    let (page, stack) = child_page(copy, &child_of);
    atfork::abandon(&page);
    // SAFETY: single-threaded child; every block on the stack is the page's.
    unsafe {
        atfork::return_delayed(
            &stack,
            |_| ((), &page),
            |b, ()| delayed::finish(&stack, &page, b),
        )
    };
    assert!(
        stack.take_all().is_null(),
        "a block left on the delayed stack of a heap that died with the fork"
    );
    assert_eq!(
        page.state(),
        NEVER_DELAYED,
        "an abandoned page takes plain frees"
    );
    let b = new_block();
    // SAFETY: ours, on no list.
    let r = unsafe { page.push(b as *mut Block) };
    assert_eq!(r, Pushed::OnPage);
    let seen = take_page_list(&page);
    let mut expected: Vec<usize> = child_of.values().copied().collect();
    expected.push(b);
    exactly_once(&expected, &seen);
    for b in expected {
        free_block(b);
    }
}

/// fork while two threads free blocks of a full page (`USE_DELAYED`) of another heap: the
/// first goes the delayed way (push flips the page to `DELAYED_FREEING`, `delayed::finish`
/// puts the block on the owner's stack and ends it), the second pushes onto the page. The
/// fork may copy the page in any of these steps, `DELAYED_FREEING` included, whose freer the
/// child does not have. Each copy is checked twice: as the child of the page's owner (the
/// forking thread: its page must not wait for that freer, and a full page must still tell
/// its owner when it has room) and as the child of another thread whose heap died with the
/// fork (its page abandoned, its delayed blocks back on the page). In both, every block the
/// copy had on a list is found once, and a later free and the owner's exit go through.
#[test]
fn fork_during_remote_frees_into_a_full_page() {
    check(2, |yield_first| {
        let page = Arc::new(RemoteFree::new());
        let stack = Arc::new(BlockStack::new());
        page.force_state(USE_DELAYED);
        let blocks = [new_block(), new_block()];
        let freers: Vec<_> = blocks
            .iter()
            .map(|&b| {
                let (page, stack) = (page.clone(), stack.clone());
                thread::spawn(move || remote_free(&page, &stack, b))
            })
            .collect();
        if yield_first {
            thread::yield_now();
        }
        // fork_prepare takes no lock a remote free takes.
        let copy = copy_page(&page, &stack);
        for f in freers {
            f.join().unwrap();
        }
        if let Some(copy) = copy {
            child_of_the_owner(&copy);
            child_of_a_dead_owner(&copy);
        }
        for b in blocks {
            free_block(b);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The huge registry's claims (`ClaimSlot::clear_claim_after_fork`).

/// fork while the automatic demoter has a huge block claimed (`for_each_claimed`): the
/// child does not have the demoter's thread, so after its reset (`clear_claim_after_fork`, as
/// `huge::clear_claims_after_fork` runs it on every slot) the owner's free of the block
/// (`take`) must not wait for the claim, and the block is then out of the registry.
#[test]
fn fork_during_a_huge_claim() {
    check(3, |yield_first| {
        let slot = Arc::new(ClaimSlot::new());
        // The object is never touched here: any address with the claim bit clear.
        let addr = 0x1000;
        assert!(slot.try_fill(addr));
        let demoter = {
            let slot = slot.clone();
            thread::spawn(move || {
                if let Some(v) = slot.try_claim() {
                    slot.release(v);
                }
            })
        };
        if yield_first {
            thread::yield_now();
        }
        let (v, claimed) = slot.fork_copy();
        demoter.join().unwrap();
        assert_eq!(v, addr);
        // The child's slot, from the copy.
        let child = ClaimSlot::new();
        assert!(child.try_fill(v));
        if claimed {
            assert!(child.claim_own(v));
        }
        child.clear_claim_after_fork();
        child.take(v, || {
            panic!("the child's free of a huge block waits for a claim whose thread is gone")
        });
        assert!(child.try_claim().is_none(), "a freed block is in no slot");
    });
}

// ---------------------------------------------------------------------------------------------
// The registry of live heaps at fork and the handlers' lock order (`heap::heaps`,
// `atfork::prepare`, `parent`, `child`).

const ME: usize = 0;
const NODE: usize = 1;
const OTHER: usize = 2;

/// fork while another thread makes its first placed allocation (`node_alloc`: the node heap's
/// lock, then the registry's, to register the node heap) and then exits (`heap_done`: the
/// registry's lock, to unlink its heap). The forking thread's `atfork::prepare` takes the
/// node heap's lock, the registry's, then a segment list's: in the order the allocator takes
/// them, so neither thread waits for the other forever (with the registry's first, loom finds
/// the deadlock). It copies the registry under its lock (the list whole), and `parent` lets
/// go. The child (`atfork::child`: every lock but the registry's let go) splits the registry
/// (`split_after_fork`: only the forking thread's heap and node heaps stay; both lists whole,
/// the exited thread's heap on the dead one if it was still listed), then a new thread of the
/// child gets the dead heap's address (glibc gives it the dead thread's stack, where its TLS
/// and heap live) and registers it, and makes a placed allocation: the registry stays whole,
/// with no cycle, and no lock is held by a thread the child does not have.
#[test]
fn fork_during_thread_start_and_exit() {
    check(2, |yield_first| {
        let node_lock = Arc::new(SpinLock::new());
        let reg = Arc::new(Registry {
            lock: SpinLock::new(),
            heaps: HeapList::new(),
        });
        let lists = Arc::new([LockedList::<Seg>::tagged(1)]);
        let heaps = Arc::new([H::new(ME, false), H::new(NODE, true), H::new(OTHER, false)]);
        {
            let _g = reg.lock.lock();
            // SAFETY: we hold the lock; neither heap is listed yet.
            unsafe {
                reg.heaps.link(heaps[ME].ptr());
                reg.heaps.link(heaps[OTHER].ptr());
            }
        }
        let other = {
            let (node_lock, reg, heaps) = (node_lock.clone(), reg.clone(), heaps.clone());
            thread::spawn(move || {
                {
                    let _n = node_lock.lock();
                    let _g = reg.lock.lock();
                    // SAFETY: we hold the registry lock; the node heap is not listed yet.
                    unsafe { reg.heaps.link(heaps[NODE].ptr()) };
                }
                let _g = reg.lock.lock();
                // SAFETY: we hold the registry lock; our heap is listed.
                unsafe { reg.heaps.unlink(heaps[OTHER].ptr()) };
            })
        };
        if yield_first {
            thread::yield_now();
        }
        atfork::prepare([&*node_lock].into_iter(), &reg.lock, lists.iter());
        // SAFETY: we hold the registry lock (prepare took it).
        let listed = unsafe { whole(reg.heaps.first()) };
        atfork::parent([&*node_lock].into_iter(), &reg.lock, lists.iter());
        other.join().unwrap();
        assert!(listed.contains(&ME));
        registry_child(&listed);
    });
}

/// The child of [`fork_during_thread_start_and_exit`], from the copied registry `listed`.
fn registry_child(listed: &[usize]) {
    // The child's copies: its heaps, its locks (held, as fork_prepare held them).
    let heaps = [H::new(ME, false), H::new(NODE, true), H::new(OTHER, false)];
    let node_lock = SpinLock::new();
    let reg = Registry {
        lock: SpinLock::new(),
        heaps: HeapList::new(),
    };
    let lists = [LockedList::<Seg>::tagged(1)];
    for &id in listed.iter().rev() {
        // SAFETY: the child's only thread; each heap linked once.
        unsafe { reg.heaps.link(heaps[id].ptr()) };
    }
    atfork::prepare([&node_lock].into_iter(), &reg.lock, lists.iter());
    // fork_child: every lock but the registry's let go, then the reset.
    atfork::child([&node_lock].into_iter(), lists.iter());
    // SAFETY: the child's only thread, holding the registry lock.
    let (live, dead) = unsafe {
        let dead = reg.heaps.split_after_fork(|h| (*h).id == ME || (*h).shared);
        (whole(reg.heaps.first()), whole(dead))
    };
    reg.lock.unlock_raw();
    let sorted = |mut v: Vec<usize>| {
        v.sort();
        v
    };
    let kept: Vec<usize> = listed.iter().copied().filter(|&id| id != OTHER).collect();
    assert_eq!(
        sorted(live),
        sorted(kept.clone()),
        "the registry keeps the live heaps"
    );
    let gone = listed.contains(&OTHER);
    assert_eq!(dead, if gone { vec![OTHER] } else { vec![] });
    // A new thread of the child, whose heap lands where the dead one was, starts.
    {
        let _g = reg.lock.lock();
        // SAFETY: we hold the lock; the heap is on no list (the reset took it off).
        unsafe { reg.heaps.link(heaps[OTHER].ptr()) };
    }
    // Its first placed allocation: the node heap's lock, then the registry's.
    {
        let _n = node_lock.lock();
        let _g = reg.lock.lock();
        // SAFETY: we hold the lock.
        let ids = unsafe { whole(reg.heaps.first()) };
        assert_eq!(ids.len(), kept.len() + 1);
    }
    // A segment goes to a list.
    let seg = Seg::new(7);
    // SAFETY: ours, on no list.
    unsafe { lists[0].push_abandoned(seg.ptr()) };
    assert_eq!(lists[0].count.load(Ordering::Relaxed), 1);
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
