//! Other threads' passes over quiet heaps, and the background purger (docs/correctness.md
//! invariant 26): what the passes need to find quiet heaps (`Heap::holding`), so that several
//! quiet threads stay within the idle bound together, each under 4 MiB to purge (by sparse
//! medium pages, a pooled segment, a large block shrunk in place, free slices under
//! `WAIT_BYTES`), with and without the background purger; a quiet heap visited only when a
//! step of it is due, and no endless visits of one whose purge the kernel refused (`mlock`)
//! or whose tail went back with its page; refused purges tried again once the lock is lifted;
//! the purger asleep when only locked free slices are left. The tails themselves are covered
//! by tests/medium_tails.rs.
//!
//! Each scenario runs in a child process with its own purge delay (and purger setting); RSS,
//! residency (`mincore`), visits (`purges_for_others`) and the purger's wake-ups are read
//! there. Not timing tests: each polls up to a generous deadline, or bounds a count from
//! above over a fixed stretch of traffic.

#[path = "common/child.rs"]
mod child;
#[path = "common/quiet.rs"]
mod quiet;
#[path = "common/rss.rs"]
mod rss;

use quiet::{
    quiet_worker, resident_free_slices, resident_pages, slow_traffic_until, tail_of, Quiet,
    DEADLINE, SLICE, SMALL, SPARSE_SLICES,
};
use rss::{drop_block, is_scenario, new_block, purger_status, report, rss, run_scenario, switches};
use std::time::Duration;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// This thread's slow paths until RSS is within the README's bound over `baseline` for
/// `live` bytes (at most `limit`), then the quiet threads finish, then the bound is asserted.
fn assert_rss_falls(what: &str, baseline: usize, live: usize, limit: Duration, quiet: Vec<Quiet>) {
    let bound = rss::bound(baseline, live);
    let (_, _) = slow_traffic_until(limit, || rss().saturating_sub(bound));
    let r = rss();
    for q in quiet {
        q.finish();
    }
    report(what, r, baseline, live);
}

/// Review rev9: the README's idle bound (live + 10 % + 8 MiB over the baseline) with three
/// quiet threads, each as in tests/medium_tails.rs's `child_quiet_thread_tails`: it failed
/// before the passes visited every quiet heap holding memory (39.7 MiB against 25.4 with the
/// tails kept; 28.1 against 25.6 before the tails, each quiet heap's slack below 4 MiB adding
/// up). Delay 500 ms.
#[test]
fn child_quiet_threads_rss() {
    if !is_scenario("quiet-rss") {
        return;
    }
    let baseline = rss();
    let mut workers = Vec::new();
    let mut live = 0usize;
    // One at a time: each worker's spike and medium pages in a quiet moment.
    for _ in 0..3 {
        let (w, (_, bytes)) = quiet_worker();
        live += bytes;
        workers.push(w);
    }
    assert_rss_falls(
        "three quiet threads with sparse medium pages, after other threads' traffic",
        baseline,
        live,
        Duration::from_secs(10),
        workers,
    );
}

#[test]
fn rss_falls_with_quiet_threads_holding_sparse_medium_pages() {
    run_scenario(
        "child_quiet_threads_rss",
        "quiet-rss",
        &[("TIERALLOC_PURGE_DELAY_MS", "500")],
    );
}

/// Review rev10: the passes visit a quiet heap only if it is `holding` (or `waiting`), which
/// only `note_idle` and collections set; a segment taken from the pool as its previous owner
/// left it (`release_segment_dirty`: an exited thread's emptied segment, resident) was booked
/// by neither. A thread that took one and went quiet before its first collection (fewer
/// than 16 slow paths) kept its other 63 free slices resident with `holding` false, visited
/// by nobody: four such threads (a thread pool whose workers got one small job each) kept
/// 15.5 MiB against an 11.5 MiB bound. Now `note_segment_idle` books them (and an adopted
/// segment's). Delay 200 ms.
#[test]
fn child_quiet_threads_on_pooled_segments() {
    if !is_scenario("pooled-quiet") {
        return;
    }
    // This thread's own segment first, so its traffic below takes no pooled one.
    let (_, _) = slow_traffic_until(Duration::from_millis(20), || 1);
    let baseline = rss();
    // An exited thread's spike: 5 segments of 4 KiB blocks, written, freed, then the thread
    // exits: its emptied segments go to the pool resident.
    std::thread::spawn(|| {
        let blocks: Vec<usize> = (0..5000).map(|i| new_block(SMALL, i as u8)).collect();
        for (i, p) in blocks.into_iter().enumerate() {
            drop_block(p, SMALL, i as u8);
        }
    })
    .join()
    .unwrap();
    // Four workers, one block each (a pooled segment each), then quiet.
    let workers = (0..4u8)
        .map(|k| {
            Quiet::start(move || {
                let p = new_block(SMALL, 0x70 + k);
                (
                    (),
                    Box::new(move || drop_block(p, SMALL, 0x70 + k)) as Box<dyn FnOnce() + Send>,
                )
            })
            .0
        })
        .collect();
    assert_rss_falls(
        "four quiet threads on pooled resident segments, after other threads' traffic",
        baseline,
        4 * SMALL,
        DEADLINE,
        workers,
    );
}

#[test]
fn rss_falls_with_quiet_threads_on_pooled_segments() {
    run_scenario(
        "child_quiet_threads_on_pooled_segments",
        "pooled-quiet",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}

/// Review rev10: as `child_quiet_threads_on_pooled_segments`, with the resident free slices
/// of a large block shrunk in place (`large::resize_in_place`, `Segment::shrink_large`),
/// which were booked for purging but not in `idle_bytes`/`holding`: six threads that each
/// wrote a 2 MiB block, shrank it to 100 KiB and went quiet kept 15.7 MiB against a 12.1 MiB
/// bound. Delay 200 ms.
#[test]
fn child_quiet_threads_after_a_large_shrink() {
    if !is_scenario("shrunk-quiet") {
        return;
    }
    let (_, _) = slow_traffic_until(Duration::from_millis(20), || 1);
    let baseline = rss();
    const BIG: usize = (2 << 20) - 4096;
    const SMALLER: usize = 100 << 10;
    let workers = (0..6u8)
        .map(|k| {
            Quiet::start(move || {
                let layout = std::alloc::Layout::from_size_align(BIG, 8).unwrap();
                // SAFETY: a non-zero layout; the block is written whole, then shrunk in place
                // (a large block over 64 KiB keeps its address) and freed with its new size.
                let q = unsafe {
                    let p = std::alloc::alloc(layout);
                    assert!(!p.is_null());
                    std::ptr::write_bytes(p, 0x60 + k, BIG);
                    let q = std::alloc::realloc(p, layout, SMALLER);
                    assert_eq!(q, p, "shrunk in place");
                    q as usize
                };
                (
                    (),
                    Box::new(move || drop_block(q, SMALLER, 0x60 + k)) as Box<dyn FnOnce() + Send>,
                )
            })
            .0
        })
        .collect();
    assert_rss_falls(
        "six quiet threads after shrinking a large block in place, after other threads' traffic",
        baseline,
        6 * SMALLER,
        DEADLINE,
        workers,
    );
}

#[test]
fn rss_falls_with_quiet_threads_after_a_large_shrink() {
    run_scenario(
        "child_quiet_threads_after_a_large_shrink",
        "shrunk-quiet",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}

/// A quiet thread that writes 256 blocks of 4 KiB, `mlock`s the range of all but the first
/// 16 (~1 MiB, under the default 8 MiB `RLIMIT_MEMLOCK`) and frees all but the first: free
/// slices whose purge the kernel refuses. Its finish frees the last block and unlocks.
fn locked_quiet_worker() -> Quiet {
    Quiet::start(|| {
        let blocks: Vec<usize> = (0..256).map(|i| new_block(SMALL, i as u8)).collect();
        let lo = blocks[16..].iter().min().unwrap() & !4095;
        let hi = (blocks[16..].iter().max().unwrap() + SMALL + 4095) & !4095;
        // SAFETY: a range of this process's mapped, written memory; only its residency
        // changes.
        let r = unsafe { libc::mlock(lo as *const libc::c_void, hi - lo) };
        assert_eq!(r, 0, "mlock {} KiB", (hi - lo) >> 10);
        for (i, &p) in blocks.iter().enumerate().skip(1) {
            drop_block(p, SMALL, i as u8);
        }
        let undo = move || {
            drop_block(blocks[0], SMALL, 0);
            // SAFETY: as above.
            unsafe { libc::munlock(lo as *const libc::c_void, hi - lo) };
        };
        ((), Box::new(undo) as Box<dyn FnOnce() + Send>)
    })
    .0
}

/// Review rev10: `holding` counted every resident free byte, not only what a step is due to
/// purge: free slices whose `MADV_DONTNEED` the kernel refuses (locked memory: `mlock`,
/// `mlockall` in a real-time program) stay resident for good, so a quiet heap holding them
/// stayed `holding`, and every pass (one a quarter delay, in some thread's `malloc`) took its
/// gate and walked its segments with nothing due: 37 visits in 2 s. One quiet thread, 15
/// locked free slices (~1 MiB, under the default 8 MiB `RLIMIT_MEMLOCK`); once the first
/// visits are done, 2 s of other threads' traffic visit it no more. Delay 200 ms.
#[test]
fn child_quiet_thread_with_locked_free_slices() {
    if !is_scenario("locked-quiet") {
        return;
    }
    let (_, _) = slow_traffic_until(Duration::from_millis(20), || 1);
    let worker = locked_quiet_worker();
    // The worker's slices come due (one to two delays) and the refused purge is tried.
    let (_, _) = slow_traffic_until(Duration::from_secs(1), || 1);
    let before = tieralloc::stats().purges_for_others;
    let (_, _) = slow_traffic_until(Duration::from_secs(2), || 1);
    let visits = tieralloc::stats().purges_for_others - before;
    worker.finish();
    assert!(
        visits <= 4,
        "{visits} visits of quiet heaps in 2 s with nothing due (every pass takes the quiet \
         owner's gate and walks its segments)"
    );
}

#[test]
fn passes_stop_visiting_a_quiet_heap_whose_purge_was_refused() {
    run_scenario(
        "child_quiet_thread_with_locked_free_slices",
        "locked-quiet",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}

/// Review rev10: with the background purger on, `purger::help` runs no pass (the purger
/// thread does them), and the purger slept as soon as nothing was `waiting` and no pool held
/// a segment (`anything_waits` looked at `waiting` only, and `note_idle` woke it only past
/// `WAIT_BYTES`): a quiet heap that was only `holding` was visited by nobody (26.8 MiB
/// against 25.5). The same three quiet threads as
/// `rss_falls_with_quiet_threads_holding_sparse_medium_pages`.
#[test]
fn rss_falls_with_quiet_threads_holding_sparse_medium_pages_and_the_purger_on() {
    run_scenario(
        "child_quiet_threads_rss",
        "quiet-rss",
        &[
            ("TIERALLOC_PURGE_DELAY_MS", "500"),
            ("TIERALLOC_BACKGROUND_PURGE", "1"),
        ],
    );
}

/// Review rev11: with `TIERALLOC_BACKGROUND_PURGE=1`, `purger::help` runs no pass unless the
/// purger thread has failed to start (`OFF` included), and the purger thread was started
/// only by a slow path of a heap that is `waiting` (more than 4 MiB to purge: `heap_tick`'s
/// `maybe_start`). Five threads that each freed 3.5 MiB of resident slices (`holding`, never
/// `waiting`) and went quiet were visited by nobody (21.3 MiB against an 11.5 MiB bound): no
/// purger existed to be notified, and the other threads' collections did not help. Now a
/// `holding` heap starts it too. The default configuration (helping) is the control.
/// Delay 200 ms.
#[test]
fn child_quiet_threads_holding_under_the_wait_threshold() {
    if !is_scenario("holding-under-wait") {
        return;
    }
    let (_, _) = slow_traffic_until(Duration::from_millis(20), || 1);
    let baseline = rss();
    let workers = (0..5)
        .map(|_| {
            Quiet::start(move || {
                // 56 pages of the 4 KiB class: 3.5 MiB of slices, all but the first freed.
                let p = resident_free_slices(56 * 16);
                (
                    (),
                    Box::new(move || drop_block(p, SMALL, 0)) as Box<dyn FnOnce() + Send>,
                )
            })
            .0
        })
        .collect();
    assert_rss_falls(
        "five quiet threads each holding 3.5 MiB (under WAIT_BYTES), background purger on",
        baseline,
        5 * SMALL,
        DEADLINE,
        workers,
    );
}

#[test]
fn rss_falls_with_quiet_threads_holding_under_the_wait_threshold() {
    run_scenario(
        "child_quiet_threads_holding_under_the_wait_threshold",
        "holding-under-wait",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}

#[test]
fn rss_falls_with_quiet_threads_holding_under_the_wait_threshold_and_the_purger_on() {
    run_scenario(
        "child_quiet_threads_holding_under_the_wait_threshold",
        "holding-under-wait",
        &[
            ("TIERALLOC_PURGE_DELAY_MS", "200"),
            ("TIERALLOC_BACKGROUND_PURGE", "1"),
        ],
    );
}

/// Review rev11: free slices whose purge the kernel refused (locked memory) leave the purge
/// schedule for good (`purge_step` drops them from `purge_pending`, and only a free or a
/// change of owner books slices again), and since rev10 they do not count in `holding`
/// either. Once the lock is lifted (`munlock` after the free: a real-time phase that ends
/// with `munlockall`) they are ordinary free resident slices, yet no step of the quiet
/// owner's, nor of any pass, ever purges them. Two quiet threads do the same work (~1 MiB of
/// 4 KiB blocks written, `mlock`ed, freed but for the first): one's lock is lifted at once
/// (the control), the other's only after its refused purge; 2 s of other threads' traffic
/// later, the second keeps more of its range resident than the control (all of it: 239 of
/// 239 pages, against 96 of the control's, which are its queued empty pages). Delay 200 ms.
#[test]
fn child_quiet_thread_with_unlocked_free_slices() {
    if !is_scenario("unlocked-quiet") {
        return;
    }
    let (_, _) = slow_traffic_until(Duration::from_millis(20), || 1);
    let worker = || {
        Quiet::start(|| {
            let blocks: Vec<usize> = (0..256).map(|i| new_block(SMALL, i as u8)).collect();
            let lo = (blocks[16..].iter().min().unwrap() + 4095) & !4095;
            let hi = blocks[16..].iter().max().unwrap() & !4095;
            // SAFETY: a range of this process's mapped, written memory; only its residency
            // changes.
            let r = unsafe { libc::mlock(lo as *const libc::c_void, hi - lo) };
            assert_eq!(r, 0, "mlock {} KiB", (hi - lo) >> 10);
            for (i, &p) in blocks.iter().enumerate().skip(1) {
                drop_block(p, SMALL, i as u8);
            }
            let undo = move || drop_block(blocks[0], SMALL, 0);
            ((lo, hi), Box::new(undo) as Box<dyn FnOnce() + Send>)
        })
    };
    let unlock = |(lo, hi): (usize, usize)| {
        // SAFETY: as above.
        unsafe { libc::munlock(lo as *const libc::c_void, hi - lo) };
    };
    let (control, c) = worker();
    unlock(c);
    let (locked, l) = worker();
    // The workers' slices come due (one to two delays) and the purges are tried: the
    // locked one's refused.
    let (_, _) = slow_traffic_until(Duration::from_secs(1), || 1);
    unlock(l);
    let resident = |(lo, hi): (usize, usize)| resident_pages(lo, hi - lo);
    let (_, _) = slow_traffic_until(Duration::from_secs(2), || {
        resident(l).saturating_sub(resident(c))
    });
    let (rl, rc) = (resident(l), resident(c));
    locked.finish();
    control.finish();
    assert!(
        rl <= rc,
        "{rl} of {} pages of free slices still resident 2 s after their lock was lifted \
         (control: {rc})",
        (l.1 - l.0) / 4096
    );
}

#[test]
fn free_slices_whose_purge_was_refused_go_back_once_unlocked() {
    run_scenario(
        "child_quiet_thread_with_unlocked_free_slices",
        "unlocked-quiet",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}

/// As `free_slices_whose_purge_was_refused_go_back_once_unlocked`, with the background
/// purger on (review rev12: it sleeps until a retry is due rather than waking every quarter
/// delay, and must still wake for it).
#[test]
fn free_slices_whose_purge_was_refused_go_back_once_unlocked_with_the_purger_on() {
    run_scenario(
        "child_quiet_thread_with_unlocked_free_slices",
        "unlocked-quiet",
        &[
            ("TIERALLOC_PURGE_DELAY_MS", "200"),
            ("TIERALLOC_BACKGROUND_PURGE", "1"),
        ],
    );
}

/// Passes visit a quiet heap only when something of it is due (`Heap::due_ms`), not every
/// quarter delay while it holds anything: before, one quiet worker (`quiet_worker`: purge
/// steps, tail steps, nothing else) was visited by every pass from the moment its owner went
/// quiet until its last step, most of them with nothing to do. Delay 200 ms, 8 delays of other
/// threads' traffic (passes at most every 50 ms: up to 32).
#[test]
fn child_quiet_thread_visits() {
    if !is_scenario("quiet-visits") {
        return;
    }
    let (_, _) = slow_traffic_until(Duration::from_millis(20), || 1);
    let before = tieralloc::stats().purges_for_others;
    let (w, _) = quiet_worker();
    let (_, _) = slow_traffic_until(Duration::from_millis(1600), || 1);
    let visits = tieralloc::stats().purges_for_others - before;
    w.finish();
    assert!(
        (1..=3).contains(&visits),
        "{visits} visits of one quiet heap in 8 purge delays (2 in 4 runs; 5 in 3 of 3 with \
         every pass visiting it while it held anything)"
    );
}

#[test]
fn passes_visit_a_quiet_heap_only_when_a_step_is_due() {
    run_scenario(
        "child_quiet_thread_visits",
        "quiet-visits",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}

/// Review rev12: `purge_segments` takes every segment's `tails_at` into `Left::due`, and a
/// `due` that is not 0 keeps the heap `holding`; but `tails_at` is reset only by a tail step
/// (`tend_tails`), which runs only while `tails` is not 0. A medium page whose tail was booked
/// and which is given back before its tail step (`free_page`'s `drop_tail`) leaves `tails` 0
/// and `tails_at` set, in the past, for good: the heap stays `holding` with `due_ms` in the
/// past, and every pass visits it forever (the background purger never sleeps either). One
/// worker books a tail, frees its medium block, has the page retired by a collection of its
/// own (`tieralloc::collect`) and goes quiet; once its purge steps are done (3 delays), 4
/// delays of other threads' traffic must visit it at most once (15 and 16 visits in 2 runs:
/// every pass). Delay 400 ms.
#[test]
fn child_quiet_thread_after_a_tail_given_back_early() {
    if !is_scenario("stale-tail") {
        return;
    }
    let (_, _) = slow_traffic_until(Duration::from_millis(20), || 1);
    let (w, ()) = Quiet::start(|| {
        let kept = resident_free_slices(16 * 16);
        let s = (20 << 10) - 64;
        let p = new_block(s, 0xE7);
        assert_eq!(p % SLICE, 0, "the first block starts its page");
        let (from, len) = tail_of(p, s, SPARSE_SLICES);
        assert_eq!(resident_pages(from, len), len / 4096, "no tail booked");
        drop_block(p, s, 0xE7);
        // The emptied page goes back to its segment (taking its tail bit off) before its
        // tail step: here an explicit collection (a quarter delay's collection of a bin no
        // longer in use does the same).
        tieralloc::collect();
        (
            (),
            Box::new(move || drop_block(kept, SMALL, 0)) as Box<dyn FnOnce() + Send>,
        )
    });
    // The worker's purge steps come due and run (one to two delays).
    let (_, _) = slow_traffic_until(Duration::from_millis(1200), || 1);
    let before = tieralloc::stats().purges_for_others;
    let (_, _) = slow_traffic_until(Duration::from_millis(1600), || 1);
    let visits = tieralloc::stats().purges_for_others - before;
    w.finish();
    assert!(
        visits <= 1,
        "{visits} visits of a quiet heap with nothing to purge in 4 purge delays (passes at most \
         every 100 ms: up to 16)"
    );
}

#[test]
fn passes_stop_visiting_a_quiet_heap_whose_tail_went_back_with_its_page() {
    run_scenario(
        "child_quiet_thread_after_a_tail_given_back_early",
        "stale-tail",
        &[("TIERALLOC_PURGE_DELAY_MS", "400")],
    );
}

/// Review rev12: with `TIERALLOC_BACKGROUND_PURGE=1` the purger sleeps (no timer) only when
/// no heap is `holding`, and a heap is now `holding` while any refused purge waits for its
/// retry (`Left::due`): slices that stay locked (`mlockall` in a real-time program) are
/// retried for good, so the purger wakes every quarter delay forever, to find nothing due
/// (the retries back off to one a minute). Since rev10 (locked slices not counted) it slept.
/// One quiet thread with ~1 MiB of locked free slices, the test thread idle (no allocator
/// call) once its own steps are done: in 2 s the purger may wake for the retries due (a few),
/// not 40 times (a pass every 50 ms). Delay 200 ms.
#[test]
fn child_purger_with_locked_free_slices() {
    if !is_scenario("locked-purger") {
        return;
    }
    let (_, _) = slow_traffic_until(Duration::from_millis(20), || 1);
    let worker = locked_quiet_worker();
    // The worker's slices come due and their purge is refused; the purger has started.
    let (_, _) = slow_traffic_until(Duration::from_secs(1), || 1);
    let status = purger_status();
    // This thread idle: its own steps are done by the purger within two delays.
    rss::sleep_raw(1000);
    let before = switches(&status);
    rss::sleep_raw(2000);
    let woke = switches(&status) - before;
    worker.finish();
    assert!(
        woke <= 8,
        "the purger woke {woke} times in 2 s with only locked free slices (retries backing \
         off) to purge"
    );
}

#[test]
fn the_purger_sleeps_when_only_locked_free_slices_are_left() {
    run_scenario(
        "child_purger_with_locked_free_slices",
        "locked-purger",
        &[
            ("TIERALLOC_PURGE_DELAY_MS", "200"),
            ("TIERALLOC_BACKGROUND_PURGE", "1"),
        ],
    );
}
