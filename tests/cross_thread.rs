//! Blocks that change threads: a realloc by a thread that does not own the block's segment,
//! and a thread that exits while another thread's frees into its full pages (delayed frees)
//! are still arriving.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

#[path = "common/child.rs"]
mod child;
#[path = "common/nodes.rs"]
mod nodes;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const KIB: usize = 1 << 10;
const SLICE: usize = 64 * KIB;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A raw block that may be sent to another thread.
struct Raw(*mut u8, Layout);
// SAFETY: a plain heap block; whoever holds it frees it once.
unsafe impl Send for Raw {}

fn alloc_filled(size: usize, seed: u8) -> Raw {
    let l = Layout::from_size_align(size, 8).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { GLOBAL.alloc(l) };
    assert!(!p.is_null());
    // SAFETY: p holds size bytes.
    unsafe { std::ptr::write_bytes(p, seed, size) };
    Raw(p, l)
}

fn holds(p: *const u8, len: usize, seed: u8) -> bool {
    // SAFETY: the caller hands a live block of at least len bytes.
    unsafe { std::slice::from_raw_parts(p, len) }
        .iter()
        .all(|&b| b == seed)
}

/// The slices of a segment change hands only on the thread that owns it: a realloc made by
/// another thread never grows a large block into its owner's free slices (it moves the
/// block), and never gives a shrunk block's tail slices back (the block keeps them). The
/// owner, allocating meanwhile, never gets memory that overlaps a block it handed away.
#[test]
fn realloc_by_a_thread_that_does_not_own_the_block() {
    let _g = serial();
    let (to_b, from_a) = mpsc::channel::<Option<Raw>>();
    let (to_a, from_b) = mpsc::channel::<Raw>();
    let owner = thread::spawn(move || {
        // The channel's first send allocates its buffer: done now, so that nothing of this
        // thread takes slices after the blocks arranged below.
        to_b.send(None).unwrap();
        // A 1.5 MiB run taken and freed, then a 512 KiB and a 256 KiB block from its start:
        // the second has free slices of this thread's segment right after it.
        let run = alloc_filled(24 * SLICE, 0);
        // SAFETY: live with its layout.
        unsafe { GLOBAL.dealloc(run.0, run.1) };
        let shrink = alloc_filled(8 * SLICE, 2);
        let grow = alloc_filled(4 * SLICE, 1);
        to_b.send(Some(grow)).unwrap();
        to_b.send(Some(shrink)).unwrap();
        // Wait for B's reallocs, then allocate large blocks here while B holds them.
        let grown = from_b.recv().unwrap();
        let shrunk = from_b.recv().unwrap();
        let mine: Vec<Raw> = (0..16).map(|k| alloc_filled(4 * SLICE, 100 + k)).collect();
        for (k, m) in mine.iter().enumerate() {
            for other in [&grown, &shrunk] {
                // SAFETY: live blocks of ours.
                let cap = unsafe { tieralloc::usable_size(other.0) };
                let (a, b) = (m.0 as usize, other.0 as usize);
                assert!(
                    a + m.1.size() <= b || b + cap <= a,
                    "the owner's block {k} at {a:#x} overlaps a block another thread \
                     reallocated ({b:#x}, {cap} B)"
                );
            }
            assert!(holds(m.0, m.1.size(), 100 + k as u8));
        }
        (grown, shrunk, mine)
    });
    // B: not the owner of the two blocks' segment.
    assert!(from_a.recv().unwrap().is_none());
    let grow = from_a.recv().unwrap().unwrap();
    let shrink = from_a.recv().unwrap().unwrap();
    let g0 = grow.0 as usize;
    // Grow 256 KiB -> 512 KiB: the next four slices are free in A's segment, but not ours.
    // SAFETY: a live block with its layout.
    let g = unsafe { GLOBAL.realloc(grow.0, grow.1, 8 * SLICE) };
    assert!(!g.is_null());
    assert_ne!(
        g as usize, g0,
        "a thread grew a block in place into slices of a segment it does not own"
    );
    assert!(holds(g, 4 * SLICE, 1), "grown block lost its contents");
    // SAFETY: g holds 8 slices.
    unsafe { std::ptr::write_bytes(g, 11, 8 * SLICE) };
    // Shrink 512 KiB -> 300 KiB: in place, and the block keeps all its slices (giving the
    // tail back would change the owner's slice map from here).
    let s0 = shrink.0;
    // SAFETY: a live block with its layout.
    let s = unsafe { GLOBAL.realloc(shrink.0, shrink.1, 300 * KIB) };
    assert_eq!(s, s0, "a shrink by half moved the block");
    // SAFETY: s is live.
    let cap = unsafe { tieralloc::usable_size(s) };
    assert_eq!(
        cap,
        8 * SLICE,
        "a thread that does not own the segment gave the tail of a shrunk block back"
    );
    assert!(holds(s, 300 * KIB, 2));
    // SAFETY: s holds its usable size.
    unsafe { std::ptr::write_bytes(s, 12, cap) };
    to_a.send(Raw(g, Layout::from_size_align(8 * SLICE, 8).unwrap()))
        .unwrap();
    to_a.send(Raw(s, Layout::from_size_align(300 * KIB, 8).unwrap()))
        .unwrap();
    let (grown, shrunk, mine) = owner.join().unwrap();
    assert!(holds(grown.0, 8 * SLICE, 11), "grown block overwritten");
    assert!(holds(shrunk.0, cap, 12), "shrunk block overwritten");
    for r in [grown, shrunk].into_iter().chain(mine) {
        // SAFETY: live blocks with their layouts.
        unsafe { GLOBAL.dealloc(r.0, r.1) };
    }
}

/// A thread fills pages (so they sit in its full queue, where a remote free goes onto the
/// heap's delayed stack) and exits while another thread frees those blocks: part of them
/// before the exit starts, the rest racing it. Nothing is lost: once everything is freed and
/// the owner's node has been tended, the memory is back (committed bytes near where they
/// were, no more segments abandoned), and the per-class live count is back too. Run with
/// the freeing thread on the owner's node, and (several nodes, or TIERALLOC_SIMULATE_NODES)
/// on another node, where its frees are cross-node frees.
///
/// In a process of its own: its checks read process-wide counters, and in the test binary's
/// process the test harness's threads come and go meanwhile. The thread of the test that
/// finished first allocates the harness's channel block for the finished tests' reports (a
/// ~9.7 KB block, class 10240, live until the harness ends) and exits: when that exit fell
/// between this test's two snapshots, its segment, holding only that block, was one more
/// abandoned (review rev28, under `TIERALLOC_SIMULATE_NODES=2`: `secure` 2 runs of 100 and 3
/// of 800, default 3 of 800; the block left held the other two tests' reports).
#[test]
fn a_thread_exits_while_its_delayed_frees_arrive() {
    const NAME: &str = "a_thread_exits_while_its_delayed_frees_arrive";
    let _g = serial();
    if !child::is_child() {
        child::run(&mut child::this_test(NAME), Duration::from_secs(300)).expect_test_passed();
        return;
    }
    let cpu_nodes = nodes::cpu_nodes();
    let first = cpu_nodes[0];
    let last = *cpu_nodes.last().unwrap();
    for freer_node in if first == last {
        vec![first]
    } else {
        vec![first, last]
    } {
        thread::spawn(move || delayed_frees_race_the_owners_exit(first, freer_node))
            .join()
            .unwrap();
    }
}

/// What the freeing thread is asked to do.
enum FreerJob {
    /// Free the first half, wait for the owner to start its exit, free the second half.
    Round(Vec<Raw>, Vec<Raw>, Arc<Barrier>),
    /// Collect this many times (tending its node's abandoned segments).
    Tend(usize),
}

/// [`a_thread_exits_while_its_delayed_frees_arrive`] with the owners (one a round, each
/// exiting) on `owner_node` and the freeing thread on `freer_node`. Only the owners exit:
/// this thread (which tends `owner_node`) and the freeing thread (which tends `freer_node`)
/// live until the end is measured. A thread tends only its own node's abandoned segments, and
/// an exiting tender would leave its own blocks abandoned on its node: with unpinned threads
/// the owners' segments were left on a node that nobody tended (the flake of
/// docs/correctness.md, about 1 run in 4 under `TIERALLOC_SIMULATE_NODES=2,far=1`).
fn delayed_frees_race_the_owners_exit(owner_node: u32, freer_node: u32) {
    // 10 000 x 1700 B (class 1792, which the harness uses in neither build: in the secure
    // build, whose blocks hold 8 bytes more, one of the harness's blocks lands in 1280): 17 MB
    // of full pages.
    const N: usize = 10_000;
    const SIZE: usize = 1700;
    const ROUNDS: usize = 6;
    if !nodes::move_to_node(owner_node) {
        eprintln!("node {owner_node}'s CPUs are outside this process's cpuset: not run");
        return;
    }
    let (to_freer, jobs) = mpsc::channel::<FreerJob>();
    let (done_tx, done) = mpsc::channel::<()>();
    let freer = thread::spawn(move || {
        assert!(
            nodes::move_to_node(freer_node),
            "node {freer_node}'s CPUs are outside this process's cpuset"
        );
        for (round, job) in jobs.into_iter().enumerate() {
            match job {
                FreerJob::Round(first, second, half_freed) => {
                    for (k, r) in first.iter().enumerate() {
                        assert!(holds(r.0, SIZE, (k % 251) as u8), "job {round} block {k}");
                        // SAFETY: live with its layout.
                        unsafe { GLOBAL.dealloc(r.0, r.1) };
                    }
                    half_freed.wait();
                    for (k, r) in second.iter().enumerate() {
                        let k = k + N / 2;
                        assert!(holds(r.0, SIZE, (k % 251) as u8), "job {round} block {k}");
                        // SAFETY: live with its layout.
                        unsafe { GLOBAL.dealloc(r.0, r.1) };
                    }
                }
                FreerJob::Tend(passes) => nodes::collect_passes(passes),
            }
            done_tx.send(()).unwrap();
        }
    });
    // Each node is tended through: a pass per abandoned segment, and two more.
    let tend = || {
        let passes = tieralloc::stats().segments_abandoned as usize + 2;
        to_freer.send(FreerJob::Tend(passes)).unwrap();
        done.recv().unwrap();
        nodes::collect_passes(passes);
    };
    tend();
    let before = tieralloc::stats();
    let live_class = |s: &tieralloc::Stats| {
        s.classes
            .iter()
            .find(|c| c.block_size == 1792)
            .map_or(0, |c| c.live)
    };
    for _ in 0..ROUNDS {
        let half_freed = Arc::new(Barrier::new(2));
        let (hf, to_freer) = (half_freed.clone(), to_freer.clone());
        // Spawned here, so pinned to owner_node from its start.
        let owner = thread::spawn(move || {
            let blocks: Vec<Raw> = (0..N)
                .map(|k| alloc_filled(SIZE, (k % 251) as u8))
                .collect();
            let mut it = blocks.into_iter();
            let first = it.by_ref().take(N / 2).collect();
            to_freer
                .send(FreerJob::Round(first, it.collect(), half_freed))
                .unwrap();
            // The freer has freed the first half into our full pages: exit now, with those
            // frees on our delayed stack and the second half being freed meanwhile.
            hf.wait();
        });
        owner.join().unwrap();
        done.recv().unwrap();
    }
    // The freer leaves before the end is measured when it shares the owners' node: the
    // owners' segments it adopted by freeing into them are then abandoned again, and one that
    // a lost delayed free keeps in use stays so (this thread, on that node, tends the rest). On another node it adopts none of them (a
    // heap adopts only its own node's) and stays: its own leftovers would be stranded on a
    // node that nobody tends.
    let freer = if freer_node == owner_node {
        drop(to_freer);
        freer.join().unwrap();
        // The last block the freer allocated (of the channel it answered on) goes now, into
        // its segment.
        drop(done);
        nodes::collect_passes(tieralloc::stats().segments_abandoned as usize + 2);
        None
    } else {
        tend();
        Some((freer, to_freer))
    };
    let after = tieralloc::stats();
    if let Some((freer, to_freer)) = freer {
        drop(to_freer);
        freer.join().unwrap();
    }
    eprintln!(
        "delayed-free exit (owner node {owner_node}, freer node {freer_node}): committed {} -> \
         {}, segments {} -> {}, abandoned {} -> {}",
        before.bytes_committed,
        after.bytes_committed,
        before.segments,
        after.segments,
        before.segments_abandoned,
        after.segments_abandoned
    );
    assert_eq!(live_class(&after), live_class(&before), "{after}");
    // A lost delayed free keeps its page, and so its segment, in use forever: abandoned once
    // its owner exited, and never given back however often it is tended. 6 rounds of 15 MB
    // would also keep tens of MiB. What may remain: pages of this test's two threads.
    assert!(
        after.segments_abandoned <= before.segments_abandoned,
        "segments left abandoned\nbefore:\n{before}\nafter:\n{after}"
    );
    assert!(
        after.bytes_committed <= before.bytes_committed + (1 << 20),
        "committed grew from {} to {}\n{after}",
        before.bytes_committed,
        after.bytes_committed
    );
}

/// Blocks that another thread frees into its owner's full pages come back to the owner. A
/// full page sits in no queue, so the owner would never look at its list of remote frees: the
/// page is marked `USE_DELAYED` when it fills, and the first remote free then goes onto the
/// owner heap's delayed stack, which tells the owner (when it drains the stack) that the page
/// has room again. The owner's next allocations of the class reuse the freed blocks instead
/// of taking fresh pages.
#[test]
fn blocks_freed_remotely_into_full_pages_are_reused_by_their_owner() {
    let _s = serial();
    const SIZE: usize = 200;
    const N: usize = 2_000;
    let owner = thread::spawn(|| {
        // Owner and freer (which inherits the affinity) stay on one node: an owner that moved
        // (under TIERALLOC_SIMULATE_NODES, to the other CPU) would rightly allocate from its
        // new node. (If node 0's CPUs are outside our cpuset, they run where they may.)
        nodes::move_to_node(nodes::cpu_nodes()[0]);
        // The pages the line above emptied (the topology's lists, the node list) stay their
        // classes' current pages. A collection during the rounds below (one runs every quarter
        // delay, so within them under a 1 ms delay) retires them, and their runs, lower in the
        // segment and still resident, are where the owner's next page goes (the lowest
        // resident run first, `Segment::take_slices_from`), instead of the run of a page the
        // remote frees emptied, which waits out its delay free: the same memory, other
        // addresses, one page short (1427 of 2000 against the bound of 1600 in 31 of 100 runs
        // under `TIERALLOC_PURGE_DELAY_MS=1 TIERALLOC_BACKGROUND_PURGE=1`; the purger plays no
        // part). This collection, the classes idle since move_to_node's, gives those pages
        // back and purges them now (review rev44).
        tieralloc::collect();
        let first: Vec<Raw> = (0..N).map(|i| alloc_filled(SIZE, i as u8)).collect();
        let addrs: std::collections::HashSet<usize> = first.iter().map(|r| r.0 as usize).collect();
        // Every block, all pages but the last full, freed by another thread.
        thread::spawn(move || {
            for (i, r) in first.into_iter().enumerate() {
                assert!(holds(r.0, SIZE, i as u8));
                // SAFETY: a live block of this layout, freed once.
                unsafe { GLOBAL.dealloc(r.0, r.1) };
            }
        })
        .join()
        .unwrap();
        let again: Vec<Raw> = (0..N).map(|i| alloc_filled(SIZE, i as u8)).collect();
        let reused = again
            .iter()
            .filter(|r| addrs.contains(&(r.0 as usize)))
            .count();
        for r in again {
            // SAFETY: a live block of this layout, freed once.
            unsafe { GLOBAL.dealloc(r.0, r.1) };
        }
        reused
    });
    let reused = owner.join().unwrap();
    // All of them come back in practice; a page's worth of slack for the one page that was
    // not full (its remote frees wait on its own list until that page runs out).
    assert!(
        reused >= N - 400,
        "only {reused} of {N} blocks freed by another thread were reused by their owner"
    );
}
