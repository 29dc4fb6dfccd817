//! Thread churn: 10 000 short-lived threads, in batches, each allocating a handful of objects,
//! leaving some behind for later threads and freeing some that earlier (now exited) threads
//! left. Their segments are abandoned at exit and adopted by later threads. The process must
//! not accumulate memory: segments stay flat from the 1 000th thread to the 10 000th, and once
//! everything is freed and collected, the committed bytes are back under a small bound.
//!
//! The checks read process-wide counters, so each test runs in a process of its own, one at a
//! time (`SERIAL`).

use std::alloc::{alloc, dealloc, Layout};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[path = "common/child.rs"]
mod child;

#[path = "common/nodes.rs"]
mod nodes;
use nodes::cpu_nodes;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const THREADS: usize = 10_000;
const BATCH: usize = 16;
/// Objects left behind for later threads, at most.
const SHARED: usize = 256;

struct Obj {
    p: *mut u8,
    layout: Layout,
    id: u64,
}
// SAFETY: a plain heap block, handed between threads whole.
unsafe impl Send for Obj {}

fn pat(id: u64, i: usize) -> u8 {
    (id as u8).wrapping_mul(13) ^ (i as u8) ^ ((i >> 9) as u8)
}

impl Obj {
    fn new(size: usize, id: u64) -> Obj {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: size > 0.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        // Pattern at both ends and every 4 KiB: enough to see a block handed out twice,
        // without making the 10 000 threads memory-bound.
        for i in Self::probes(size) {
            // SAFETY: i < size.
            unsafe { *p.add(i) = pat(id, i) };
        }
        Obj { p, layout, id }
    }
    fn probes(size: usize) -> impl Iterator<Item = usize> {
        (0..size.min(64))
            .chain(size.saturating_sub(64)..size)
            .chain((0..size).step_by(4096))
    }
    fn free(self) {
        for i in Self::probes(self.layout.size()) {
            // SAFETY: i < size; the block is live.
            let b = unsafe { *self.p.add(i) };
            assert_eq!(b, pat(self.id, i), "object {} byte {i} corrupted", self.id);
        }
        // SAFETY: allocated with this layout, freed once.
        unsafe { dealloc(self.p, self.layout) };
    }
}

fn size_for(k: u64) -> usize {
    let r = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    match r % 100 {
        0..=69 => 1 + (r as usize >> 8) % 512,
        70..=94 => 513 + (r as usize >> 8) % (64 << 10),
        95..=98 => (64 << 10) + (r as usize >> 8) % (1 << 20),
        // Now and then a huge object (own mapping, and the thread's huge cache).
        _ => (2 << 20) + 4096 + (r as usize >> 8) % (2 << 20),
    }
}

fn worker(t: usize, shared: &Mutex<Vec<Obj>>) {
    let base = (t as u64) << 16;
    let mut mine: Vec<Obj> = (0..6)
        .map(|k| Obj::new(size_for(base + k), base + k))
        .collect();
    // Free up to three objects left by earlier threads (usually exited ones).
    let theirs: Vec<Obj> = {
        let mut s = shared.lock().unwrap();
        let n = s.len().min(3);
        let at = s.len() - n;
        s.split_off(at)
    };
    for o in theirs {
        o.free();
    }
    // Leave up to three of ours behind; free the rest ourselves.
    let keep = if t % 5 == 0 { 0 } else { 3 };
    let left: Vec<Obj> = mine.drain(..keep).collect();
    for o in mine {
        o.free();
    }
    let mut s = shared.lock().unwrap();
    for o in left {
        if s.len() < SHARED {
            s.push(o);
        } else {
            o.free();
        }
    }
}

/// After the main thread collected: pooled segments are unmapped (a forced collection does
/// not wait for their time, and covers every node's pool), so what is left is live data,
/// abandoned segments, and segments of threads still running.
fn settled_segments() -> u64 {
    tieralloc::collect();
    tieralloc::stats().segments
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs test `name` in a process of its own and returns true, unless this is that process
/// (then false: do the work). The checks read process-wide counters: in one process a test
/// saw what the test before it left (its exited threads' segments and blocks, a panicked
/// test's objects), and one failure made the next fail too (seen under load: 1.3 MB of large
/// pages and 13 segments the earlier tests left).
fn in_own_process(name: &str) -> bool {
    if child::is_child() {
        return false;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    child::run(&mut child::this_test(name), Duration::from_secs(600)).expect_test_passed();
    true
}

#[test]
fn ten_thousand_threads_do_not_accumulate_memory() {
    if in_own_process("ten_thousand_threads_do_not_accumulate_memory") {
        return;
    }
    churn(false);
}

/// The same churn; afterwards the live-byte counters of large and huge objects are back to 0.
#[test]
fn ten_thousand_threads_leave_no_live_bytes_counted() {
    if in_own_process("ten_thousand_threads_leave_no_live_bytes_counted") {
        return;
    }
    churn(true);
}

fn churn(check_live_counters: bool) {
    let shared = Arc::new(Mutex::new(Vec::<Obj>::new()));
    let before = tieralloc::stats();
    let mut at_1000 = None;
    let mut peak_first_1000 = 0;
    let mut t = 0;
    while t < THREADS {
        let handles: Vec<_> = (t..t + BATCH)
            .map(|k| {
                let shared = shared.clone();
                thread::spawn(move || worker(k, &shared))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        t += BATCH;
        if std::env::var_os("CHURN_TRACE").is_some() && t % 1000 < BATCH {
            let s = tieralloc::stats();
            eprintln!(
                "{t}: segments {} pooled {} abandoned {} committed {}",
                s.segments, s.segments_pooled, s.segments_abandoned, s.bytes_committed
            );
        }
        if t <= 1000 {
            peak_first_1000 = peak_first_1000.max(tieralloc::stats().segments);
        }
        if t >= 1000 && at_1000.is_none() {
            at_1000 = Some(settled_segments());
        }
    }
    let at_1000 = at_1000.unwrap();
    let at_end = settled_segments();
    let mid = tieralloc::stats();
    eprintln!("segments: peak over the first 1000 threads {peak_first_1000}, after 1000 threads {at_1000}, after {THREADS} {at_end}");
    // The shared structure holds at most SHARED objects at every point, and each batch of 16
    // threads needs a segment or two each; collected, what stays is live data and the
    // segments holding this thread's current pages. Measured on the 2-core CI machine (20
    // runs, 10 of them with a CPU hog on the other core, docs/correctness/testgaps.md): 3 to
    // 5 segments after 1 000 threads, and after 10 000 the same number or one fewer; later
    // (2026-12-07, two runs at once, 60 each of this and of the build of a day before): up to
    // 2 more after 10 000 (1 in 60), and 3 more once in a CI run. Bounds: 8 after 1 000, and
    // 4 more after 10 000 than after 1 000 (a leak of one segment per 1 000 threads would add
    // 9).
    // On several nodes (TIERALLOC_SIMULATE_NODES=2, 2,far=1) the churned threads leave
    // segments on each node, and only threads of that node adopt them; but a segment freed
    // empty goes to its node's pool with the last free, and a collection (this thread's)
    // unmaps every node's pooled segments: 3 to 6 after 1 000 threads, and after 10 000 at
    // most 2 more than after 1 000 (32 runs; before both, 6 to 18 and +10 once, with the
    // other node's pool counted). Bounds 12 and +4 there (a leak of a segment per 1 000
    // threads still adds 9).
    let multi = cpu_nodes().len() > 1;
    let (bound_1000, bound_growth) = if multi { (12, 4) } else { (8, 4) };
    assert!(
        at_1000 <= bound_1000,
        "{at_1000} segments after 1000 threads (measured 3 to 5 on one node, 3 to 6 on two)\n{mid}"
    );
    assert!(
        at_end <= at_1000 + bound_growth,
        "segments grew with the number of threads: {at_1000} after 1000 threads, \
         {at_end} after {THREADS}\n{mid}"
    );
    assert!(
        mid.pages_abandoned > before.pages_abandoned,
        "no page was ever abandoned\n{mid}"
    );
    assert!(
        mid.pages_adopted > before.pages_adopted,
        "no page was ever adopted\n{mid}"
    );
    // Adoption keeps up: pages are not abandoned by the thousand and left there.
    assert!(
        mid.segments_abandoned <= SHARED as u64,
        "{} segments stranded\n{mid}",
        mid.segments_abandoned
    );

    // From here on this thread stays on one node. Unpinned, it could move to another node
    // (under TIERALLOC_SIMULATE_NODES every other CPU is another node) at any point, and its
    // heap, following it, would abandon its segments, its own live blocks with them: one
    // abandoned segment more than the bound below. collect() brings the heap to that node.
    // (Not possible if node 0's CPUs are outside our cpuset: then it runs where it may.)
    let _ = tieralloc::numa::pin_current_thread_to_node(cpu_nodes()[0]);
    tieralloc::collect();
    // Free everything; the main thread's frees claim the abandoned segments of its node.
    for o in std::mem::take(&mut *shared.lock().unwrap()) {
        o.free();
    }
    nodes::collect_passes(4);
    // A fresh thread, once its heap exists, tends what is still stranded: collects the frees
    // made into it and gives back what emptied. A heap tends only its own node's abandoned
    // segments, so one such thread runs on each node with CPUs (several under
    // TIERALLOC_SIMULATE_NODES, where the churned threads ran on every node).
    for node in cpu_nodes() {
        nodes::tend_from_fresh_thread(Some(node));
    }
    nodes::collect_passes(4);
    let end = tieralloc::stats();
    eprintln!("{end}");
    eprintln!(
        "churn end: committed {} abandoned {} (check_live_counters {check_live_counters})",
        end.bytes_committed, end.segments_abandoned
    );
    // The bound: with nothing of the test live, what may stay committed is the current page of
    // each size class in the heaps of the threads still alive (this test's thread and the
    // harness's main thread) plus the harness's own small live data. Measured (20 runs, 10
    // with a CPU hog): 2.86 to 4.42 MB, 3.6 MB or less in 19 of them. 6 MiB leaves 40 % over
    // the highest; a leak across 10 000 threads would keep far more (one 64 KiB page per
    // thread is 625 MiB; the threads allocated about 60 MiB of huge objects alone).
    const BOUND: u64 = 6 << 20;
    assert!(
        end.bytes_committed <= BOUND,
        "{} bytes still committed after everything was freed\n{end}",
        end.bytes_committed
    );
    // What stays abandoned holds live blocks of exited threads (the harness's own: thread
    // handles, result packets, of this test's and earlier tests' threads) and nothing else:
    // tending gave back every emptied segment. Up to 2 such segments per node: only a thread
    // of a segment's node adopts it, and those blocks lie on every node the exited threads
    // ran on (under TIERALLOC_SIMULATE_NODES, both).
    let bound = 2 * cpu_nodes().len() as u64;
    assert!(end.segments_abandoned <= bound, "{end}");
    if check_live_counters {
        assert_eq!(end.huge_bytes_live, 0, "{end}");
        assert_eq!(end.large_bytes_live, 0, "{end}");
    }
}

/// A thread that mostly frees (here: the one that joins the others and frees what each round
/// of exited threads left behind) takes their abandoned segments over when it frees into them,
/// but must not sit on them: with no collection of its own, committed memory stays near what
/// is live instead of growing by a segment per exited thread.
#[test]
fn a_thread_that_frees_what_exited_threads_left_does_not_hoard() {
    if in_own_process("a_thread_that_frees_what_exited_threads_left_does_not_hoard") {
        return;
    }
    const ROUNDS: usize = 300;
    const PER_ROUND: usize = 4;
    const OBJS: usize = 1000;
    let mut held: Vec<Vec<Obj>> = Vec::new();
    let mut peak_committed = 0u64;
    for round in 0..ROUNDS {
        let handles: Vec<_> = (0..PER_ROUND)
            .map(|t| {
                thread::spawn(move || {
                    let base = ((round * PER_ROUND + t) as u64) << 20;
                    let mut kept = Vec::with_capacity(OBJS / 4);
                    for k in 0..OBJS as u64 {
                        let o = Obj::new(16 + (size_for(base + k) % 1009), base + k);
                        if k % 4 == 0 {
                            kept.push(o);
                        } else {
                            o.free();
                        }
                    }
                    kept
                })
            })
            .collect();
        // Free what the previous round's threads (exited by now) left.
        for kept in held.drain(..) {
            for o in kept {
                o.free();
            }
        }
        for h in handles {
            held.push(h.join().unwrap());
        }
        if round % 10 == 9 {
            peak_committed = peak_committed.max(tieralloc::stats().bytes_committed);
        }
    }
    let s = tieralloc::stats();
    eprintln!("hoard: peak committed {peak_committed}");
    // Live at any time: two rounds of kept objects, 2 x 4 x 250 x 525 B on average, about
    // 1 MiB. Each running thread needs a few pages per size class. Measured (20 runs, 10 with
    // a CPU hog on the other core): a peak of 6.4 to 10.0 MB. 14 MiB leaves 40 % over the
    // highest, and is far below the 4 MiB per exited thread (1 200 of them) that hoarding
    // adopted segments would keep.
    assert!(
        peak_committed <= 14 << 20,
        "committed reached {peak_committed} bytes\n{s}"
    );
    for kept in held {
        for o in kept {
            o.free();
        }
    }
}

/// Memory that one thread filled is reused by another while the first one lives: a thread
/// builds a data set and hands it to a worker, which frees every block and allocates the same
/// volume again while the first thread only waits for it. Without handing the filled
/// segments over, every freed block would stay with the waiting thread, uncollected, and the
/// worker would need as much memory again.
#[test]
fn a_waiting_thread_does_not_keep_the_blocks_a_worker_freed() {
    if in_own_process("a_waiting_thread_does_not_keep_the_blocks_a_worker_freed") {
        return;
    }
    // Both threads on one node (the worker inherits the affinity): a thread of another node
    // rightly allocates from its own node and cannot reuse these blocks (that is what happens
    // under TIERALLOC_SIMULATE_NODES, or on a NUMA machine, if they run apart).
    thread::spawn(|| {
        // (Not possible if node 0's CPUs are outside our cpuset: then they run where they may.)
        let _ = tieralloc::numa::pin_current_thread_to_node(0);
        // This thread's heap was made when it started, on the node it started on; a
        // collection brings it to node 0 now rather than 16 slow paths into the fill.
        tieralloc::collect();
        waiting_thread_and_worker();
    })
    .join()
    .unwrap();
}

fn waiting_thread_and_worker() {
    const N: usize = 40_000; // 40 000 x 400 B: 16 MB, four segments and more
    let c0 = tieralloc::stats().bytes_committed;
    let filled: Vec<Obj> = (0..N as u64).map(|k| Obj::new(400, k)).collect();
    let c1 = tieralloc::stats().bytes_committed;
    let (refilled, c2) = thread::spawn(move || {
        let mut again = Vec::with_capacity(N);
        for (k, o) in filled.into_iter().enumerate() {
            o.free();
            again.push(Obj::new(400, (N + k) as u64));
        }
        (again, tieralloc::stats().bytes_committed)
    })
    .join()
    .unwrap();
    let fill = c1.saturating_sub(c0);
    let after = c2.saturating_sub(c0);
    // Reusing the freed blocks, the worker needs little beyond the fill; keeping them apart
    // it would need twice the fill.
    assert!(
        after * 2 <= fill * 3,
        "committed grew by {fill} bytes for the fill and by {after} once the worker refilled"
    );
    for o in refilled {
        o.free();
    }
}
