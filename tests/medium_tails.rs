//! The uncarved memory of a medium class's first page made on resident slices (two 64 KiB
//! slices while the class is sparse, eight once it is busy: `alloc::new_bin_page`): kept
//! resident for one to two purge delays (a thread that carves the page meanwhile faults
//! none of it in again), then given back if still uncarved, whoever holds the page:
//! its owner's collections, other threads' passes once the owner has gone quiet (also
//! before its first collection), the tending of an exited owner's segment. The passes
//! themselves (what they need to find quiet heaps, how often they visit one) and the
//! background purger are covered by tests/quiet_passes.rs.
//!
//! Each scenario runs in a child process with its own purge delay; residency (`mincore`) is
//! read there. Not timing tests: each polls up to a generous deadline, except the one lower
//! bound (nothing given back before the delay).

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
use rss::{drop_block, is_scenario, new_block, run_scenario};
use std::time::Duration;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// Slices of a medium class's pages once the heap has handed out [`BUSY_BLOCKS`] of its
/// blocks (`MEDIUM_PAGE_SLICES`; before, [`SPARSE_SLICES`]).
const BUSY_SLICES: usize = 8;
/// Blocks of a medium class a heap hands out before its pages take [`BUSY_SLICES`].
const BUSY_BLOCKS: usize = 16;

/// Makes this thread's heap's class of `s`-byte blocks busy ([`BUSY_BLOCKS`] blocks handed
/// out, on sparse pages) and leaves it with no page (all freed, then a collection retires
/// the empty pages and gives back every free slice): its next block starts an 8-slice page,
/// the class's first again.
fn make_busy(s: usize) {
    let blocks: Vec<usize> = (0..BUSY_BLOCKS).map(|i| new_block(s, i as u8)).collect();
    for (i, p) in blocks.into_iter().enumerate() {
        drop_block(p, s, i as u8);
    }
    tieralloc::collect();
}

/// For the block `p` of `s` bytes that starts its medium page on resident slices: checks
/// that the page's tail is booked (all of it resident), then runs this thread's slow paths
/// until it is given back or [`DEADLINE`] passes. Returns the tail's resident pages left and
/// the time taken.
fn booked_tail_traffic(p: usize, s: usize, slices: usize) -> (usize, Duration) {
    assert_eq!(p % SLICE, 0, "the first block starts its page");
    let (from, len) = tail_of(p, s, slices);
    assert_eq!(
        resident_pages(from, len),
        len / 4096,
        "the tail was not booked on resident slices"
    );
    slow_traffic_until(DEADLINE, || resident_pages(from, len))
}

/// A page made on resident slices keeps them while its bin may still carve them, and gives
/// back what is still uncarved after a delay or two; what was carved stays. On this
/// thread's heap, the first page of the 20 KiB class of `slices` slices (a busy class's
/// if [`BUSY_SLICES`]) carved `n` blocks in. Delay 200 ms.
fn sparse_medium_page(slices: usize, n: usize) {
    std::thread::spawn(move || {
        let s = 20 << 10;
        if slices == BUSY_SLICES {
            // First: its collection gives back every free slice at once.
            make_busy(s);
        }
        let kept = resident_free_slices(16 * 16);
        // `n` blocks: the first page of their class, on those resident slices, carved one
        // block at a time.
        let m: Vec<usize> = (0..n).map(|i| new_block(s, 0xB0 + i as u8)).collect();
        let p = m[0];
        assert_eq!(p % SLICE, 0, "the first block starts its page");
        let size = m[1] - m[0];
        assert!(
            m.windows(2).all(|w| w[1] - w[0] == size),
            "carved in address order"
        );
        let end = p + slices * SLICE;
        let carved = (p + n * size + 4095) & !4095;
        assert!(carved < end, "{n} blocks of {size} bytes fill the page");
        let rest = resident_pages(carved, end - carved);
        assert_eq!(
            rest,
            (end - carved) / 4096,
            "the uncarved memory of the page was given back at once"
        );
        let (rest, took) = slow_traffic_until(DEADLINE, || resident_pages(carved, end - carved));
        assert_eq!(
            rest, 0,
            "{rest} uncarved pages still resident after {took:?}"
        );
        assert!(
            took >= Duration::from_millis(150),
            "given back after {took:?}, before the purge delay"
        );
        // What was carved stays, with its contents.
        assert_eq!(resident_pages(p, carved - p), (carved - p) / 4096);
        for (i, q) in m.into_iter().enumerate() {
            drop_block(q, s, 0xB0 + i as u8);
        }
        drop_block(kept, SMALL, 0);
    })
    .join()
    .unwrap();
}

/// A sparse class's first page (2 slices), 3 blocks carved.
#[test]
fn child_sparse_medium_page() {
    if is_scenario("sparse-medium") {
        sparse_medium_page(SPARSE_SLICES, 3);
    }
}

#[test]
fn a_sparse_medium_page_gives_back_its_uncarved_memory_after_the_delay() {
    run_scenario(
        "child_sparse_medium_page",
        "sparse-medium",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}

/// A busy class's first page (8 slices: its blocks handed out, freed, its pages retired),
/// 7 blocks carved (more than a 2-slice page holds: one page, in address order).
#[test]
fn child_busy_medium_page() {
    if is_scenario("busy-medium") {
        sparse_medium_page(BUSY_SLICES, 7);
    }
}

#[test]
fn a_busy_classs_new_first_page_gives_back_its_uncarved_memory_after_the_delay() {
    run_scenario(
        "child_busy_medium_page",
        "busy-medium",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}

/// Review rev9: a quiet thread whose heap holds less than 4 MiB to purge (not `waiting`)
/// had its tails kept for as long as it was quiet: the passes visited only `waiting`
/// heaps. Delay 500 ms.
#[test]
fn child_quiet_thread_tails() {
    if !is_scenario("quiet-tails") {
        return;
    }
    let (w, (medium, _)) = quiet_worker();
    // Only pages whose one block starts them (each its class's new page).
    let tails: Vec<(usize, usize)> = medium
        .iter()
        .filter(|&&(p, _)| p % SLICE == 0)
        .map(|&(p, s)| tail_of(p, s, SPARSE_SLICES))
        .collect();
    let resident = || -> usize {
        tails
            .iter()
            .map(|&(c, n)| resident_pages(c, n) * 4096)
            .sum()
    };
    let booked = resident();
    assert!(booked > 0, "no tail booked");
    let (rest, took) = slow_traffic_until(DEADLINE, resident);
    w.finish();
    assert_eq!(
        rest, 0,
        "{rest} of {booked} bytes of a quiet thread's uncarved medium pages still resident \
         after {took:?} of other threads' traffic"
    );
}

#[test]
fn a_quiet_threads_sparse_medium_pages_give_back_their_uncarved_memory() {
    run_scenario(
        "child_quiet_thread_tails",
        "quiet-tails",
        &[("TIERALLOC_PURGE_DELAY_MS", "500")],
    );
}

/// As `a_quiet_threads_sparse_medium_pages_give_back_their_uncarved_memory`, with the
/// background purger on (see tests/quiet_passes.rs's
/// `rss_falls_with_quiet_threads_holding_sparse_medium_pages_and_the_purger_on`).
#[test]
fn a_quiet_threads_sparse_medium_pages_give_back_their_uncarved_memory_with_the_purger_on() {
    run_scenario(
        "child_quiet_thread_tails",
        "quiet-tails",
        &[
            ("TIERALLOC_PURGE_DELAY_MS", "500"),
            ("TIERALLOC_BACKGROUND_PURGE", "1"),
        ],
    );
}

/// Review rev9: the tails of a thread that exits with its medium block live are given back
/// from its abandoned segment (`tick::tend_abandoned`) or by its adopter. Delay 200 ms.
#[test]
fn child_exited_thread_tails() {
    if !is_scenario("exited-tails") {
        return;
    }
    let (p, s, kept) = std::thread::spawn(|| {
        let kept = resident_free_slices(16 * 16);
        let s = (20 << 10) - 64;
        (new_block(s, 0xD1), s, kept)
    })
    .join()
    .unwrap();
    let (rest, took) = booked_tail_traffic(p, s, SPARSE_SLICES);
    assert_eq!(
        rest, 0,
        "{rest} pages of an exited thread's tail resident after {took:?}"
    );
    drop_block(p, s, 0xD1);
    drop_block(kept, SMALL, 0);
}

#[test]
fn an_exited_threads_sparse_medium_page_gives_back_its_tail() {
    run_scenario(
        "child_exited_thread_tails",
        "exited-tails",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}

/// A thread whose first page of a medium class lands on resident slices of a segment it has
/// just adopted (an exited thread's), and which goes quiet before any collection of its own:
/// the booking marks its heap as holding memory to purge, so other threads' passes give the
/// tail back. Delay 200 ms.
#[test]
fn child_adopted_tails() {
    if !is_scenario("adopted-tails") {
        return;
    }
    // 248 blocks: the list of them (1984 bytes) on a 1-slice page in the `secure` build too
    // (256, 2 KiB with its trailer, took a 2-slice page, written only in part, which the
    // adopter's 2-slice page then took: its tail not all resident).
    let kept = std::thread::spawn(|| resident_free_slices(16 * 16 - 8))
        .join()
        .unwrap();
    let (worker, (p, s)) = Quiet::start(|| {
        let s = (20 << 10) - 64;
        (
            (new_block(s, 0xE1), s),
            Box::new(|| ()) as Box<dyn FnOnce() + Send>,
        )
    });
    let (rest, took) = booked_tail_traffic(p, s, SPARSE_SLICES);
    worker.finish();
    assert_eq!(
        rest, 0,
        "{rest} pages of a quiet adopter's tail resident after {took:?}"
    );
    drop_block(p, s, 0xE1);
    drop_block(kept, SMALL, 0);
}

#[test]
fn a_quiet_adopters_sparse_medium_page_gives_back_its_tail() {
    run_scenario(
        "child_adopted_tails",
        "adopted-tails",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}
