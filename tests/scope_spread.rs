//! Spreading scopes (`Placed::interleave`, `interleave_weighted`) keep their rotation when a
//! nested scope ends: the outer scope, in force again, goes on where it stopped rather than
//! starting over at its first node.
//!
//! Under `TIERALLOC_SIMULATE_NODES=2,far=1` (a child process, since the variable is read at
//! start-up): an interleave over nodes 0 and 2, with a nested scope entered and left after
//! each of its 4 KiB blocks (one quantum each, so the rotation is exact), puts exactly half
//! of its blocks on each node; a 1:3 weighted one, 100 and 300 of 400. Guards of scopes below
//! a spread, dropped out of order while it is in force, change nothing (the documented rule),
//! so its rotation goes on too. A spreading `PlacedFuture` goes on from poll to poll the same
//! way: one 4 KiB block per poll, 400 polls, half on each node.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tieralloc::{place, with_placement, Placed, PlacedFutureExt};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

/// The node `stats()` books the live block at `p` on.
fn node_of(p: *const u8) -> u32 {
    // SAFETY: live blocks of the global allocator that no other thread frees.
    unsafe { tieralloc::probe::block_node(p) }
}

/// How many of `blocks` are on each node.
fn by_node(blocks: &[Vec<u8>]) -> [usize; 3] {
    let mut n = [0usize; 3];
    for b in blocks {
        n[node_of(b.as_ptr()) as usize] += 1;
    }
    n
}

/// 400 blocks of 4 KiB in a scope on `p`, each followed by a nested scope on `inner` entered
/// and left (allocating nothing); how many blocks landed on each node.
fn count_with_nested(p: Placed, inner: Placed) -> [usize; 3] {
    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(400);
    {
        let _g = place(p);
        for _ in 0..400 {
            blocks.push(vec![9u8; 4096]);
            with_placement(inner, || ());
        }
    }
    by_node(&blocks)
}

#[test]
fn inner_an_outer_spread_goes_on_where_it_stopped() {
    if !child::is_child() {
        return;
    }
    let local = Placed::local().unwrap();
    let node1 = Placed::node(1).unwrap();
    let even = Placed::interleave(&[0, 2]).unwrap();
    let weighted = Placed::interleave_weighted(&[(0, 1), (2, 3)]).unwrap();
    for inner in [local, node1] {
        assert_eq!(count_with_nested(even, inner), [200, 0, 200], "{inner:?}");
        assert_eq!(
            count_with_nested(weighted, inner),
            [100, 0, 300],
            "{inner:?}"
        );
    }
}

#[test]
fn inner_a_spread_keeps_its_rotation_when_guards_below_it_drop() {
    if !child::is_child() {
        return;
    }
    let local = Placed::local().unwrap();
    let even = Placed::interleave(&[0, 2]).unwrap();
    // 400 guards entered below the spread, one dropped (out of order) after each block: the
    // scope in force does not change, so neither may its rotation.
    let mut below: Vec<tieralloc::PlacementGuard> = (0..400).map(|_| place(local)).collect();
    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(400);
    {
        let _g = place(even);
        for _ in 0..400 {
            blocks.push(vec![9u8; 4096]);
            drop(below.pop());
        }
    }
    assert_eq!(by_node(&blocks), [200, 0, 200]);
}

/// `count` (400 blocks placed somehow under a placement, counted by node) puts exactly half
/// on each node of an even interleave over nodes 0 and 2, and 100 and 300 under 1:3 weights.
fn spreads_split_400_blocks_exactly(count: impl Fn(Placed) -> [usize; 3]) {
    let even = Placed::interleave(&[0, 2]).unwrap();
    let weighted = Placed::interleave_weighted(&[(0, 1), (2, 3)]).unwrap();
    assert_eq!(count(even), [200, 0, 200]);
    assert_eq!(count(weighted), [100, 0, 300]);
}

/// A future that allocates one 4 KiB block at each poll and is ready after 400.
struct OneBlockPerPoll(Vec<Vec<u8>>);

impl Future for OneBlockPerPoll {
    type Output = Vec<Vec<u8>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.push(vec![9u8; 4096]);
        if self.0.len() == 400 {
            return Poll::Ready(std::mem::take(&mut self.0));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Polls `OneBlockPerPoll` wrapped in `p` to the end; how many blocks landed on each node.
fn count_over_polls(p: Placed) -> [usize; 3] {
    let mut fut = Box::pin(OneBlockPerPoll(Vec::with_capacity(400)).placed(p));
    let mut cx = Context::from_waker(Waker::noop());
    let blocks = loop {
        if let Poll::Ready(b) = fut.as_mut().poll(&mut cx) {
            break b;
        }
    };
    by_node(&blocks)
}

#[test]
fn inner_a_placed_future_goes_on_with_its_spread_from_poll_to_poll() {
    if !child::is_child() {
        return;
    }
    spreads_split_400_blocks_exactly(count_over_polls);
}

/// Polls `OneBlockPerPoll` wrapped in `p` to the end, each poll on a thread of its own (the
/// placed future moves from thread to thread between polls); the blocks by node.
fn count_over_polls_on_new_threads(p: Placed) -> [usize; 3] {
    let mut fut = Box::pin(OneBlockPerPoll(Vec::with_capacity(400)).placed(p));
    let blocks = loop {
        let r = std::thread::scope(|s| {
            s.spawn(|| fut.as_mut().poll(&mut Context::from_waker(Waker::noop())))
                .join()
                .unwrap()
        });
        if let Poll::Ready(b) = r {
            break b;
        }
    };
    by_node(&blocks)
}

/// `OneBlockPerPoll` wrapped in `p`, as a task of a two-worker tokio runtime (it wakes itself
/// at each poll, so either worker may poll it next); the blocks by node, and how many
/// threads polled it.
fn count_over_tokio_polls(p: Placed) -> ([usize; 3], usize) {
    /// Records the thread of each poll of the future it wraps (outside the placement).
    struct Threads<F>(Pin<Box<F>>, Vec<std::thread::ThreadId>);
    impl<F: Future> Future for Threads<F> {
        type Output = (F::Output, Vec<std::thread::ThreadId>);
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let id = std::thread::current().id();
            if !self.1.contains(&id) {
                self.1.push(id);
            }
            match self.0.as_mut().poll(cx) {
                Poll::Ready(v) => Poll::Ready((v, std::mem::take(&mut self.1))),
                Poll::Pending => Poll::Pending,
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let task = Threads(
        Box::pin(OneBlockPerPoll(Vec::with_capacity(400)).placed(p)),
        Vec::with_capacity(8),
    );
    let (blocks, threads) = rt.block_on(async { tokio::spawn(task).await.unwrap() });
    (by_node(&blocks), threads.len())
}

#[test]
fn inner_a_placed_future_goes_on_with_its_spread_on_whichever_thread_polls_it() {
    if !child::is_child() {
        return;
    }
    spreads_split_400_blocks_exactly(count_over_polls_on_new_threads);
    // On a runtime: whichever workers polled it (one or both: the runtime decides), the
    // rotation went on from poll to poll.
    spreads_split_400_blocks_exactly(|p| count_over_tokio_polls(p).0);
}

#[test]
fn spreads_keep_their_rotation_across_nested_scopes() {
    if child::is_child() {
        return;
    }
    let mut cmd =
        child::on_simulated_nodes("inner_an_outer_spread_goes_on_where_it_stopped", "2,far=1");
    child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
    let mut cmd = child::on_simulated_nodes(
        "inner_a_spread_keeps_its_rotation_when_guards_below_it_drop",
        "2,far=1",
    );
    child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
    let mut cmd = child::on_simulated_nodes(
        "inner_a_placed_future_goes_on_with_its_spread_from_poll_to_poll",
        "2,far=1",
    );
    child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
    let mut cmd = child::on_simulated_nodes(
        "inner_a_placed_future_goes_on_with_its_spread_on_whichever_thread_polls_it",
        "2,far=1",
    );
    child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
}
