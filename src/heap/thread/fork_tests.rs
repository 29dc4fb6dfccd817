//! The fork handlers' unit tests (a child module of `fork`, in a file of its own for
//! `fork.rs`'s length): each forks the test process, or holds the handlers' locks as a fork
//! would, and checks the child's state. Owns nothing else; may touch what `fork` may.

use super::super::registry::heap_done;
use super::super::{alloc_bin, alloc_generic, free};
use super::*;
use crate::heap::remote::{Block, Pushed, DELAYED_FREEING, USE_DELAYED};
use crate::heap::segment::{map_tag, page_of, PageKind, FIRST_TAG, MAP_UNOWNED, MAX_NODES};
use crate::heap::size_class::bin_of;
use crate::sync::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

/// Pins the calling thread (and the threads it starts, which inherit the affinity) to the CPU
/// it runs on, its heap moved to that CPU's node now. Under `TIERALLOC_SIMULATE_NODES` (CPU c
/// is node c % n) a thread the scheduler moves changes node: its next slow path lets go of
/// its segments (`registry::rehome`), and a heap of another node does not adopt what it
/// frees into (review rev52: 4 runs of 6 of these tests failed under `=2`, exits 6 and the
/// refilled check, with the test threads on different nodes).
fn pin_here() {
    // SAFETY: a plain query of the calling thread's CPU.
    let cpu = unsafe { libc::sched_getcpu() };
    // Not possible outside our cpuset: then the threads run where they may.
    let _ = crate::topology::home::pin_current_thread_to_cpu(cpu.max(0) as u32);
    let h = heap();
    // SAFETY: our own heap, between two calls: no page of it in use, no walk in progress.
    unsafe {
        if (*h).state == super::super::ACTIVE {
            super::super::registry::follow_home(HeapRef::new(h));
        }
    }
}

/// The fork tests run one at a time (one of them holds fork_prepare's locks).
static FORK_TESTS: Mutex<()> = Mutex::new(());

/// Forks; the child runs `child` (see `sync::fork_and_wait`); a child that hangs (the
/// failure these tests look for) is killed after a minute.
fn in_child(child: impl FnOnce() -> i32) -> Result<i32, String> {
    crate::sync::fork_and_wait(Duration::from_secs(60), child)
}

/// `node_alloc` registers a node heap's first use while it holds that node heap's lock, so
/// it takes the registry lock after a node heap's. `fork_prepare` must take them in the
/// same order: if it held the registry lock while waiting for a node heap's, a fork during
/// a thread's first placed allocation would deadlock both threads.
#[test]
fn fork_prepare_takes_the_node_heap_locks_before_the_registry_lock() {
    let _t = FORK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    // We are a thread inside node_alloc: the last node heap's lock held, about to register.
    let held = NODE_HEAPS[MAX_NODES - 1].lock.lock();
    let forker = std::thread::spawn(|| {
        fork_prepare();
        fork_parent();
    });
    // Wait until the forker has taken every lock it takes before that node heap's and is
    // waiting for it (node heap MAX_NODES - 2 is used by nobody else).
    while let Some(g) = NODE_HEAPS[MAX_NODES - 2].lock.try_lock() {
        drop(g);
        std::thread::yield_now();
    }
    // Now register, as node_alloc would: the registry lock must be free (other threads take
    // it only for a moment).
    let mut registered = false;
    for _ in 0..1_000_000 {
        if let Some(g) = REGISTRY.lock.try_lock() {
            drop(g);
            registered = true;
            break;
        }
        std::thread::yield_now();
    }
    drop(held);
    forker.join().unwrap();
    assert!(
        registered,
        "fork_prepare held the registry lock while waiting for a node heap's lock: a thread \
         registering that node heap would wait for it forever"
    );
}

/// Runs `check` on this thread while another thread is between `fork_prepare` and
/// `fork_parent` (every lock the handlers take is held).
fn while_prepared<R>(check: impl FnOnce() -> R) -> R {
    let (prepared, checked) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let (pr, ch) = (prepared.clone(), checked.clone());
    let forker = std::thread::spawn(move || {
        fork_prepare();
        pr.wait();
        ch.wait();
        fork_parent();
    });
    prepared.wait();
    let r = check();
    checked.wait();
    forker.join().unwrap();
    r
}

/// A label heap is made under `CREATE` and used under its own lock, like a node heap: once
/// `fork_prepare` has returned, both are held, so no thread is inside one across the fork
/// (a child would wait forever for a lock held by a thread it does not have).
#[test]
fn fork_prepare_holds_the_label_heaps_locks() {
    let _t = FORK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let id = super::super::labels::label_id("fork-prepare-test");
    // SAFETY: a block of the label heap, freed once below.
    let p = unsafe { super::super::labels::label_alloc(id, 0, 64, 8, false) };
    assert!(!p.is_null());
    let (create_held, all_held, some) = while_prepared(|| {
        (
            CREATE.try_lock().is_none(),
            label_heaps().all(|lh| lh.lock.try_lock().is_none()),
            label_heaps().count(),
        )
    });
    assert!(some > 0, "the label heap exists");
    assert!(
        create_held,
        "fork_prepare left the label heaps' creation lock free"
    );
    assert!(all_held, "fork_prepare left a label heap's lock free");
    // SAFETY: the block from label_alloc above, live until now.
    unsafe { free(p) };
}

/// The start-up run again in a fork child (`init::init_once`, review rev29) registers the
/// handlers again only if they were not before the fork: registered twice, a prepare
/// handler would run twice (the heap's would wait for its own locks).
#[test]
fn handlers_registered_once_run_once_per_fork() {
    use crate::sync::REGISTERING;
    let _t = FORK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    static STATE: AtomicU8 = AtomicU8::new(NOT_REGISTERED);
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn prepare() {
        STATE.store(REGISTERED, Ordering::Relaxed);
        RUNS.fetch_add(1, Ordering::Relaxed);
    }
    extern "C" fn nothing() {}
    register_once(&STATE, prepare, nothing, nothing);
    // A fork child of a start-up that was registering: the word says so, the prepare
    // handler ran at the fork, and the child's second registration does nothing.
    STATE.store(REGISTERING, Ordering::Relaxed);
    assert_eq!(in_child(|| 0), Ok(0));
    assert_eq!(STATE.load(Ordering::Relaxed), REGISTERED);
    register_once(&STATE, prepare, nothing, nothing);
    let before = RUNS.load(Ordering::Relaxed);
    assert_eq!(in_child(|| 0), Ok(0));
    assert_eq!(
        RUNS.load(Ordering::Relaxed) - before,
        1,
        "the prepare handler ran more than once in one fork"
    );
}

/// Checks every segment on the node pools and the abandoned lists (for a fork child's
/// tests): a pooled one holds no page (`used_pages` 0, every slice free); an abandoned one's
/// pages, walked through its slices, number its `used_pages`, each a run of slices inside the
/// segment none of which is free. Returns the first inconsistency, or how many abandoned
/// segments it walked.
pub(super) fn check_lists() -> Result<usize, &'static str> {
    use crate::heap::segment::{run_mask, ALL_SLICES_FREE, PAGE_SLICES};
    let mut bad = None;
    let mut walked = 0;
    for pool in POOLS.iter() {
        // SAFETY: a pooled segment's header is valid and nobody changes it under the lock.
        pool.for_each(|seg| unsafe {
            if (*seg).used_pages != 0 || (*seg).free_slices != ALL_SLICES_FREE {
                bad = bad.or(Some("a pooled segment holds a page"));
            }
        });
    }
    for list in ABANDONED.iter().chain(ABANDONED_FULL.iter()) {
        // SAFETY: an abandoned segment's header and descriptors are valid, and nobody
        // changes them under the lock.
        list.for_each(|seg| unsafe {
            walked += 1;
            let (mut i, mut pages) = (0usize, 0u32);
            while i < PAGE_SLICES {
                if (*seg).free_slices & (1u64 << i) != 0 {
                    i += 1;
                    continue;
                }
                let n = (*seg).pages[i].slice_count as usize;
                if n == 0 || i + n > PAGE_SLICES {
                    bad = bad.or(Some("a page in use has no slices or ends past the segment"));
                    break;
                }
                if (*seg).free_slices & (run_mask(n) << i) != 0 {
                    bad = bad.or(Some("a page in use is on free_slices"));
                }
                pages += 1;
                i += n;
            }
            if pages != (*seg).used_pages {
                bad = bad.or(Some("an abandoned segment's used_pages is not its pages"));
            }
        });
    }
    match bad {
        Some(why) => Err(why),
        None => Ok(walked),
    }
}

/// A thread held inside a slow path (its heap's gate taken, as `purger::enter` takes it) when
/// another thread forks, with its segment torn as a cut slow path leaves it (`used_pages` one
/// below its pages: a page taken but not yet counted): the fork does not wait for it (review
/// rev51: waiting hung programs, tests/fork_atfork_lock.rs). The child quarantines that
/// heap's segments (counted in `stats()`), abandons those of another dead heap that was
/// between calls, finds every pooled and abandoned segment consistent (`check_lists`), frees
/// the caught thread's blocks (dropped) and the other's from its main thread and a new one,
/// allocates and frees a lot of every kind, and exits 0.
#[test]
fn a_fork_quarantines_the_segments_of_a_thread_inside_a_slow_path() {
    use super::super::purger;
    use crate::heap::segment::LARGE_MAX;
    let _t = FORK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    crate::init::init_once(); // the fork handlers registered
    let (ready, forked) = (Arc::new(Barrier::new(3)), Arc::new(Barrier::new(3)));
    // The caught thread: a large block and small ones, its gate held, its segment torn.
    let (r2, f2) = (ready.clone(), forked.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let caught = std::thread::spawn(move || {
        // SAFETY: blocks of this thread's heap, freed by the child (or lost with it) and
        // here after the fork; the tear is mended before the gate is let go.
        unsafe {
            let big = alloc_generic(LARGE_MAX / 2, 8, false) as usize;
            let small: Vec<usize> = (0..64).map(|_| alloc_bin(bin_of(64)) as usize).collect();
            let segs = {
                let mut n = 0;
                let mut s = (*heap()).segments;
                while !s.is_null() {
                    n += 1;
                    s = (*s).next;
                }
                n
            };
            let seg = segment_of(big as *const u8);
            let gate = purger::enter(heap());
            (*seg).used_pages -= 1; // the cut
            tx.send((big, small.clone(), segs)).unwrap();
            r2.wait();
            f2.wait();
            (*seg).used_pages += 1;
            drop(gate);
            free(big as *mut u8);
            for b in small {
                free(b as *mut u8);
            }
        }
    });
    // The other dead thread: between calls at the fork.
    let (r3, f3) = (ready.clone(), forked.clone());
    let (tx3, rx3) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        // SAFETY: blocks of this thread's heap, freed by the child and here after the fork.
        unsafe {
            let big = alloc_generic(LARGE_MAX / 2, 8, false) as usize;
            let small: Vec<usize> = (0..64).map(|_| alloc_bin(bin_of(64)) as usize).collect();
            tx3.send((big, small.clone())).unwrap();
            r3.wait();
            f3.wait();
            free(big as *mut u8);
            for b in small {
                free(b as *mut u8);
            }
        }
    });
    let (c_big, c_small, c_segs) = rx.recv().unwrap();
    let (o_big, o_small) = rx3.recv().unwrap();
    ready.wait();
    let before = crate::stats::stats();
    let child = in_child(move || {
        let owner = |b: usize| {
            // SAFETY: b is a live block, so its segment header is mapped.
            unsafe { (*segment_of(b as *const u8)).owner.load(Ordering::Relaxed) }
        };
        let s = crate::stats::stats();
        // At least: other test threads may have been caught too.
        if c_small
            .iter()
            .chain([&c_big])
            .any(|&b| owner(b) != QUARANTINED)
            || s.segments_quarantined < before.segments_quarantined + c_segs as u64
        {
            return 2; // the caught heap's segments not quarantined
        }
        if s.bytes_quarantined
            < before.bytes_quarantined + (c_segs * crate::heap::segment::SEGMENT_SIZE) as u64
        {
            return 3;
        }
        if o_small.iter().chain([&o_big]).any(|&b| owner(b) != 0) {
            return 4; // the other dead heap's segments not abandoned
        }
        if check_lists().is_err() {
            return 5; // a pooled or abandoned segment inconsistent
        }
        // Half of both threads' blocks freed here, half on a new thread.
        let (here, there): (Vec<usize>, Vec<usize>) = c_small
            .iter()
            .chain(&o_small)
            .copied()
            .chain([c_big, o_big])
            .partition(|&b| (b >> 6) % 2 == 0);
        for b in here {
            // SAFETY: a live block of a dead thread, freed once.
            unsafe { free(b as *mut u8) };
        }
        let r = std::thread::spawn(move || {
            for b in there {
                // SAFETY: as above.
                unsafe { free(b as *mut u8) };
            }
            let mut kept = Vec::new();
            for i in 0..20_000usize {
                let size = match i % 10 {
                    0 => 70_000 + i,
                    1 => 5_000 + i % 3000,
                    _ => 16 + i % 900,
                };
                // SAFETY: freed below, once.
                let b = unsafe { alloc_generic(size, 8, false) };
                if b.is_null() {
                    return 6;
                }
                // SAFETY: b holds size bytes.
                unsafe { ptr::write_bytes(b, i as u8, size) };
                kept.push((b as usize, size, i as u8));
                if kept.len() > 200 {
                    let (p, n, v) = kept.swap_remove(i % 150);
                    // SAFETY: a live block of n bytes written with v.
                    let ok = unsafe { core::slice::from_raw_parts(p as *const u8, n) }
                        .iter()
                        .all(|&x| x == v);
                    if !ok {
                        return 7; // a live block overwritten: handed out twice
                    }
                    // SAFETY: freed once.
                    unsafe { free(p as *mut u8) };
                }
            }
            0
        })
        .join()
        .unwrap_or(8);
        if r != 0 {
            return r;
        }
        let s = crate::stats::stats();
        if s.frees_quarantined < before.frees_quarantined + c_small.len() as u64 + 1 {
            return 9; // the frees into the quarantined segments not dropped
        }
        match check_lists() {
            Ok(_) => 0,
            Err(_) => 10,
        }
    });
    forked.wait();
    caught.join().unwrap();
    other.join().unwrap();
    assert_eq!(
        child,
        Ok(0),
        "the child (2, 3: the caught heap's segments not quarantined; 4: the other's not \
         abandoned; 5, 10: a pooled or abandoned segment inconsistent; 7: a block handed out \
         twice; 9: frees into quarantined segments not dropped)"
    );
}

/// A thread stopped by the fork inside an ungated refill (`alloc::refill_from_local` or
/// `refill_from_next`: `Page::move_local_to_free`, `free` written, `local_free` not yet
/// emptied nor `free_is_zero` cleared): in the child its page's two lists start at the same
/// block. Here the cut is made by hand on a thread that dies with the fork; in the child a
/// new thread frees half of that thread's live blocks (adopting the segment) and allocates
/// from the bin: no block may be handed out twice, nor one that is live (review rev50).
#[test]
fn a_fork_that_cut_a_local_refill_halfway_hands_out_no_block_twice() {
    let _t = FORK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    crate::init::init_once();
    let bin = bin_of(1000);
    let (cut, forked) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let (c2, f2) = (cut.clone(), forked.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        // SAFETY: blocks of this thread's fresh heap; half freed here, the rest below.
        unsafe {
            let blocks: Vec<usize> = (0..16).map(|_| alloc_bin(bin) as usize).collect();
            let page = page_of(segment_of(blocks[0] as *const u8), blocks[0] as *const u8);
            let same = blocks
                .iter()
                .all(|&b| page_of(segment_of(b as *const u8), b as *const u8) == page);
            let (live, gone): (Vec<usize>, Vec<usize>) =
                blocks.iter().partition(|&&b| (b / 1008) % 2 == 0);
            for &b in &gone {
                free(b as *mut u8);
            }
            // The refill cut after its first store.
            let (free_was, zero_was) = ((*page).free, (*page).free_is_zero);
            let cut_made = !(*page).local_free.is_null();
            (*page).free = (*page).local_free;
            (*page).free_is_zero = true;
            tx.send((live.clone(), same && cut_made)).unwrap();
            c2.wait();
            f2.wait();
            (*page).free = free_was;
            (*page).free_is_zero = zero_was;
            for b in live {
                free(b as *mut u8);
            }
        }
    });
    let (live, set_up) = rx.recv().unwrap();
    cut.wait();
    let child = in_child(move || {
        let (keep, go): (Vec<usize>, Vec<usize>) = live.iter().partition(|&&b| (b / 1008) % 4 == 0);
        let keep2 = keep.clone();
        let r = std::thread::spawn(move || {
            for b in go {
                // SAFETY: a live block of the dead thread, freed once.
                unsafe { free(b as *mut u8) };
            }
            let mut seen: std::collections::HashSet<usize> = keep2.into_iter().collect();
            for _ in 0..4_000 {
                // SAFETY: bin < NBINS.
                let b = unsafe { alloc_bin(bin) } as usize;
                if b == 0 || !seen.insert(b) {
                    return 2; // handed out twice, or while live
                }
            }
            0
        })
        .join();
        r.unwrap_or(8)
    });
    forked.wait();
    other.join().unwrap();
    assert!(
        set_up,
        "the blocks share a page, with blocks on its local_free"
    );
    assert_eq!(
        child,
        Ok(0),
        "a page whose refill the fork cut halfway handed out a block twice in the child \
         (2: twice or while live)"
    );
}

/// A thread held room in a tier's budget for an explicit request (`route::Reservation`,
/// from the budget check until its block is mapped) when another thread forked: in the
/// child that thread does not exist, and nothing would give the room back, so every later
/// budget check of the child counted those bytes as taken, for good (review rev29).
#[test]
fn reservations_of_threads_gone_with_the_fork_hold_no_room_in_the_child() {
    use crate::heap::route;
    use crate::topology::raw::MAX_TIERS;
    let _t = FORK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    crate::init::init_once(); // the fork handlers registered
    let tier = MAX_TIERS - 1; // a tier no other test reserves in
    let before = route::pending(tier);
    let barrier = Arc::new(Barrier::new(2));
    let b2 = barrier.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        let r = route::reserve_for_test(tier, 64 << 20);
        tx.send(()).unwrap();
        b2.wait(); // the reservation held across the fork
        drop(r);
    });
    rx.recv().unwrap();
    let child = in_child(|| route::pending(tier).min(100) as i32);
    barrier.wait();
    other.join().unwrap();
    assert_eq!(route::pending(tier), before, "the parent's room came back");
    assert_eq!(
        child,
        Ok(0),
        "the child counts a dead thread's reservation as taken room (exit code: the \
         pending bytes, capped at 100)"
    );
}

/// `label_id` fills a free slot of the label names' table under `NAMES_LOCK` (a scope
/// entry with a name not seen before). A thread inside it when another forks leaves the
/// lock held in the child, where that thread does not exist: the child's first scope with
/// a new name would spin forever. `fork_prepare` must hold it too (review rev22).
#[test]
fn fork_prepare_holds_the_label_names_lock() {
    let _t = FORK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let held = while_prepared(|| super::super::labels::NAMES_LOCK.try_lock().is_none());
    assert!(
        held,
        "fork_prepare left the label names' lock free: a thread naming a new label across \
         a fork leaves it held in the child"
    );
}

/// Pages on refilled lists at the fork, the forking thread's and a thread's that dies with
/// the fork (full pages whose first remote free their owner's drain took in, and that took
/// more frees without a word since): in the child, every block of them is freed once, by
/// the forking thread and by a new thread, and allocations of their bin hand out no block
/// twice and none that is live (review rev22).
#[test]
fn refilled_pages_at_fork_hand_out_no_block_twice_in_the_child() {
    use super::super::quiet::tests::full_pages;
    let _t = FORK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    pin_here();
    let bin = bin_of(64);
    let free_elsewhere = move |blocks: Vec<usize>| {
        std::thread::spawn(move || {
            for b in blocks {
                // SAFETY: live blocks of another thread's, each freed once.
                unsafe { free(b as *mut u8) };
            }
        })
        .join()
        .unwrap();
    };
    let pg = move |b: usize| {
        // SAFETY: b is a live block, so its segment header is mapped.
        unsafe { page_of(segment_of(b as *const u8), b as *const u8) as usize }
    };
    // Full pages of this thread, their first frees heard of, then more frees silently.
    let refill = move |pages: usize| -> (Vec<usize>, Vec<usize>) {
        let (pages, mine, rest) = full_pages(bin, pages);
        let first: Vec<usize> = pages
            .iter()
            .map(|&p| *mine.iter().find(|&&b| pg(b) == p).unwrap())
            .collect();
        free_elsewhere(first.clone());
        super::super::tick::collect_now();
        // SAFETY: our heap and pages, read on our thread between calls.
        let linked = pages.iter().all(|&p| unsafe {
            super::super::refilled::is_linked(heap(), p as *mut crate::heap::segment::Page)
        });
        assert!(
            linked,
            "the pages are on their refilled list before the fork"
        );
        let (more, live): (Vec<usize>, Vec<usize>) = mine
            .iter()
            .copied()
            .filter(|b| !first.contains(b))
            .partition(|b| b % 3 == 0);
        free_elsewhere(more);
        (live, rest)
    };
    let barrier = Arc::new(Barrier::new(2));
    let b2 = barrier.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        let (live, rest) = refill(6);
        tx.send((live, rest)).unwrap();
        b2.wait(); // alive until the fork is over
    });
    let (dead_live, dead_rest) = rx.recv().unwrap();
    let (my_live, my_rest) = refill(6);
    let all: Vec<usize> = dead_live
        .iter()
        .chain(&dead_rest)
        .chain(&my_live)
        .chain(&my_rest)
        .copied()
        .collect();
    for &b in &all {
        // SAFETY: live 64-byte blocks, ours to write.
        unsafe { *(b as *mut usize).add(1) = b ^ 0x5a5a };
    }
    let child = in_child(|| {
        // Keep every fourth block live; free the rest, half here, half on a new thread.
        let (keep, go): (Vec<usize>, Vec<usize>) = all.iter().partition(|&&b| b % 4 == 0);
        let (here, there): (Vec<usize>, Vec<usize>) = go.iter().partition(|&&b| b % 8 == 2);
        for b in here {
            // SAFETY: a live block, freed once.
            unsafe { free(b as *mut u8) };
        }
        let r = std::thread::spawn(move || {
            for b in there {
                // SAFETY: a live block, freed once.
                unsafe { free(b as *mut u8) };
            }
            let mut got = Vec::new();
            for _ in 0..20_000 {
                // SAFETY: bin < NBINS.
                got.push(unsafe { alloc_bin(bin) } as usize);
            }
            got
        })
        .join();
        let Ok(theirs) = r else { return 8 };
        let mut seen: std::collections::HashSet<usize> = keep.iter().copied().collect();
        for _ in 0..20_000 {
            // SAFETY: bin < NBINS.
            let b = unsafe { alloc_bin(bin) } as usize;
            if !seen.insert(b) {
                return 2; // handed out twice, or while live
            }
        }
        for b in theirs {
            if !seen.insert(b) {
                return 3;
            }
        }
        for &b in &keep {
            // SAFETY: a live block, written before the fork.
            if unsafe { *(b as *const usize).add(1) } != b ^ 0x5a5a {
                return 4; // a live block overwritten
            }
        }
        0
    });
    barrier.wait();
    other.join().unwrap();
    for &b in &all {
        // SAFETY: live blocks (the other thread's, now exited, and ours), freed once.
        unsafe { free(b as *mut u8) };
    }
    assert_eq!(
        child,
        Ok(0),
        "2: a block handed out twice or while live (forking thread); 3: across the two \
         threads; 4: a live block overwritten; 8: the new thread panicked"
    );
}

/// A remote free that found a full page of ours flipped it to DELAYED_FREEING, and its
/// thread did not get to end it before another thread forked: in the child, that thread
/// does not exist. The forking thread's exit in the child (which waits out delayed frees
/// in flight on its pages) must not wait for it forever.
#[test]
fn a_delayed_free_in_flight_at_fork_does_not_hold_up_the_child() {
    let _t = FORK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    std::thread::spawn(|| {
        // SAFETY: this thread's heap and block; the block is freed once: by the simulated
        // remote free, which the parent ends below (and the child's heap_done only
        // touches the child's copy).
        unsafe {
            let p = alloc_generic(200_000, 16, false);
            assert!(!p.is_null());
            let seg = segment_of(p);
            let page = page_of(seg, p);
            assert_eq!((*page).kind, PageKind::Large as u8);
            assert_eq!((*page).thread_free.state(), USE_DELAYED);
            // Another thread frees p and stops between its two steps.
            let (pa, pg) = (p as usize, page as usize);
            std::thread::spawn(move || {
                let page = pg as *mut crate::heap::segment::Page;
                assert_eq!((*page).thread_free.push(pa as *mut Block), Pushed::Delayed);
            })
            .join()
            .unwrap();
            assert_eq!((*page).thread_free.state(), DELAYED_FREEING);
            let child = in_child(|| {
                heap_done(heap());
                0
            });
            // The remote free ends here, in the parent.
            free_delayed(seg, page, p);
            assert_eq!(child, Ok(0));
        }
    })
    .join()
    .unwrap();
}

/// The automatic demoter (or any visitor of the huge registry) had a huge block claimed
/// when another thread forked: in the child, no thread will ever release that claim, and
/// the block's free, which waits out a claim, must not wait forever.
#[test]
fn a_huge_block_claimed_at_fork_can_be_freed_in_the_child() {
    let _t = FORK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    static INSIDE: AtomicBool = AtomicBool::new(false);
    static GO: AtomicBool = AtomicBool::new(false);
    static TARGET: AtomicUsize = AtomicUsize::new(0);
    INSIDE.store(false, Ordering::Relaxed);
    GO.store(false, Ordering::Relaxed);
    std::thread::spawn(|| {
        // SAFETY: this thread's block, freed once (in the parent, after the visit; the
        // child frees its own copy).
        unsafe {
            let p = alloc_generic(8 << 20, 16, false);
            assert!(!p.is_null());
            let seg = segment_of(p);
            assert_eq!((*seg).kind, SegmentKind::Huge);
            TARGET.store(seg as usize, Ordering::Relaxed);
            let visitor = std::thread::spawn(|| {
                // Other visitors may hold the slot for a moment: visit until we had it.
                while !INSIDE.load(Ordering::Acquire) {
                    huge::for_each_claimed(|s| {
                        if s as usize == TARGET.load(Ordering::Relaxed) {
                            INSIDE.store(true, Ordering::Release);
                            while !GO.load(Ordering::Acquire) {
                                std::thread::yield_now();
                            }
                        }
                    });
                }
            });
            while !INSIDE.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            let child = in_child(|| {
                free(p);
                0
            });
            GO.store(true, Ordering::Release);
            visitor.join().unwrap();
            free(p);
            assert_eq!(child, Ok(0));
        }
    })
    .join()
    .unwrap();
}

/// A thread alive in the parent at fork is dead in the child: the registry keeps only the
/// forking thread's heap (and node heaps), the dead heap's segments have no owner and no
/// tag in the map, its tag is free, and the child adopts its segment by freeing into it.
#[test]
fn in_the_child_the_heaps_of_the_other_threads_are_gone() {
    let _t = FORK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    pin_here();
    let barrier = Arc::new(Barrier::new(2));
    let b2 = barrier.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        let bin = bin_of(64);
        // SAFETY: this thread's heap; the blocks are freed once each, by the forking
        // thread (which keeps them in the parent until this thread has sent them).
        unsafe {
            let blocks: Vec<usize> = (0..100).map(|_| alloc_bin(bin) as usize).collect();
            tx.send((blocks, heap() as usize, (*heap()).tag)).unwrap();
        }
        b2.wait(); // alive until the fork is over
    });
    let (blocks, dead, dead_tag) = rx.recv().unwrap();
    assert!((FIRST_TAG..NO_TAG).contains(&dead_tag));
    let child = in_child(|| {
        let me = heap();
        // SAFETY: the child's only thread; the registry is read under its lock; the
        // blocks are live blocks of the dead thread, each freed once.
        unsafe {
            {
                let _g = REGISTRY.lock.lock();
                let mut stranger = false;
                REGISTRY
                    .heaps
                    .for_each(|h| stranger |= h != me && !(*h).shared);
                if stranger {
                    return 2; // a heap of a thread the child does not have
                }
                let tags = &*REGISTRY.tags.get();
                if tags[dead_tag as usize / 64] & (1 << (dead_tag % 64)) != 0 {
                    return 3; // the dead heap's tag is still taken
                }
            }
            let p = blocks[0] as *mut u8;
            let seg = segment_of(p);
            if (*seg).owner.load(Ordering::Relaxed) == dead {
                return 4;
            }
            if map_tag(p) != MAP_UNOWNED {
                return 5;
            }
        }
        // A new thread (glibc may well give it the dead thread's stack, and so its heap's
        // address) frees the blocks: it adopts their segment, which is then on its list.
        let blocks = blocks.clone();
        std::thread::spawn(move || {
            // SAFETY: live blocks of the dead thread, each freed once; our own heap's
            // segment list is read by us.
            unsafe {
                for &b in &blocks {
                    free(b as *mut u8);
                }
                let seg = segment_of(blocks[0] as *const u8);
                let me = heap();
                if (*seg).owner.load(Ordering::Relaxed) != me as usize {
                    return 6;
                }
                let mut s = (*me).segments;
                while !s.is_null() && s != seg {
                    s = (*s).next;
                }
                if s.is_null() {
                    return 7;
                }
            }
            0
        })
        .join()
        .unwrap_or(8)
    });
    barrier.wait();
    other.join().unwrap();
    for &b in &blocks {
        // SAFETY: live blocks of the other (now exited) thread, freed once here.
        unsafe { free(b as *mut u8) };
    }
    assert_eq!(
        child,
        Ok(0),
        "2: a dead heap in the registry; 3: its tag taken; 4: its segment still names it; \
         5: its map entry names a tag; 6: not adopted by its freer; 7: owned but not on the \
         owner's list; 8: the thread panicked"
    );
}
