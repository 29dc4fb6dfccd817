//! Full pages other threads free into (`heap::thread::refilled`, `quiet`) while their owners
//! exit, move between nodes and go quiet: generations of owner threads fill pages of several
//! sizes, hand most blocks to freer threads (remote frees into full pages: delayed frees,
//! then silent ones onto refilled pages), keep some, idle past the purge delay now and then
//! (passes take their full pages in), move to another node now and then (their segments are
//! let go and adopted), and exit with blocks still live, which their successor or a freer
//! frees after them (frees into abandoned segments, adopted on free or reclaimed). Every
//! block carries a unique tag in its first and last words, checked at its free, and a live
//! set shared by all threads fails the run if a block is handed out while live. Run in a
//! child process (the purge delay, the purger and simulated nodes are read at start-up).

#[path = "common/child.rs"]
mod child;
#[path = "common/nodes.rs"]
mod nodes;
#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

use std::alloc::{alloc, dealloc, Layout};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const SCENARIO: &str = "TIERALLOC_TEST_REFILLED_EXITS";
/// Bin sizes (16 B to 8 KiB) and a large one (64 KiB).
const SIZES: [usize; 8] = [16, 48, 112, 256, 1024, 3072, 8192, 64 << 10];
const RUN: Duration = Duration::from_secs(2);

static LIVE: Mutex<Option<HashSet<usize>>> = Mutex::new(None);
static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// A block: address, size, tag.
type Blk = (usize, usize, u64);

fn new_block(size: usize) -> Blk {
    let t = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
    // SAFETY: a non-zero size.
    let p = unsafe { alloc(layout(size)) } as usize;
    assert!(p != 0, "allocation of {size} B failed");
    let fresh = LIVE
        .lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .insert(p);
    assert!(fresh, "block {p:#x} of {size} B handed out while live");
    // SAFETY: the block is ours, at least 16 bytes, 8-aligned.
    unsafe {
        *(p as *mut u64) = t;
        *((p + size - 8) as *mut u64) = t;
    }
    (p, size, t)
}

fn free_block((p, size, t): Blk) {
    // SAFETY: a live block of `size` bytes we wrote `t` into.
    unsafe {
        let (a, b) = (*(p as *const u64), *((p + size - 8) as *const u64));
        assert!(
            a == t && b == t,
            "block {p:#x} of {size} B overwritten: {a:#x} {b:#x}, expected {t:#x}"
        );
    }
    assert!(
        LIVE.lock().unwrap().as_mut().unwrap().remove(&p),
        "block {p:#x} freed while not live"
    );
    // SAFETY: allocated with this layout, not freed yet.
    unsafe { dealloc(p as *mut u8, layout(size)) };
}

/// One owner generation: rounds of fill, hand-off, idle, local frees, node moves; exits with
/// `carry` blocks still live, which go to `next`.
/// Blocks for a freer, and whom to tell when they are freed.
type Batch = (Vec<Blk>, Option<mpsc::Sender<()>>);

fn owner(seed: u64, inherit: Vec<Blk>, to_freer: mpsc::Sender<Batch>, until: Instant) -> Vec<Blk> {
    let mut rng = Rng(seed | 1);
    let nodes = nodes::cpu_nodes();
    // The predecessor's blocks: freed by us, into segments their owner left.
    let mut inherit = inherit;
    let mut kept: Vec<Blk> = Vec::new();
    let rounds = 2 + rng.below(6);
    for _ in 0..rounds {
        if Instant::now() >= until {
            break;
        }
        let size = SIZES[rng.below(SIZES.len() as u64) as usize];
        let n = if size >= 8192 {
            40
        } else {
            300 + rng.below(900) as usize
        };
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            batch.push(new_block(size));
        }
        // Most go to the freers, in two parts: the first part's frees are the first into the
        // full pages (delayed), the second's come after we heard of them (silent).
        let mut give = Vec::new();
        for b in batch {
            if rng.below(4) == 0 {
                kept.push(b);
            } else {
                give.push(b);
            }
        }
        let cut = give.len() / 8;
        let rest = give.split_off(cut);
        // The first frees into the full pages, done before we go on: our next slow paths
        // drain them (the pages go on their refilled lists).
        let (ack, done) = mpsc::channel();
        to_freer.send((give, Some(ack))).unwrap();
        let _ = done.recv();
        let mut churn: Vec<Blk> = (0..64).map(|_| new_block(size)).collect();
        tieralloc::collect();
        // Then the rest, silently into the listed pages (or onto the delayed stack again
        // after a pass armed them), while we allocate more of the same size (taking the
        // listed pages), idle or exit.
        to_freer.send((rest, None)).unwrap();
        match rng.below(4) {
            0 => thread::sleep(Duration::from_millis(2 + rng.below(4))),
            1 => tieralloc::collect(),
            _ => {}
        }
        for _ in 0..inherit.len().min(200) {
            free_block(inherit.pop().unwrap());
        }
        // Local frees into pages that may be on refilled lists or taken in by passes.
        let k = kept.len() / 2;
        for _ in 0..k {
            let i = rng.below(kept.len() as u64) as usize;
            free_block(kept.swap_remove(i));
        }
        churn.extend((0..256).map(|_| new_block(size)));
        for b in churn {
            free_block(b);
        }
        if nodes.len() > 1 && rng.below(3) == 0 {
            let to = nodes[rng.below(nodes.len() as u64) as usize];
            if tieralloc::numa::pin_current_thread_to_node(to).is_ok() && rng.below(2) == 0 {
                tieralloc::collect();
            }
        }
        if rng.below(3) == 0 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    for b in inherit {
        free_block(b);
    }
    kept
}

#[test]
fn child_refilled_exits() {
    if std::env::var(SCENARIO).is_err() {
        return;
    }
    let until = Instant::now() + RUN;
    let (tx, rx) = mpsc::channel::<Batch>();
    let rx = std::sync::Arc::new(Mutex::new(rx));
    let freers: Vec<_> = (0..2)
        .map(|i| {
            let rx = rx.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ i);
                let mut held: Vec<Blk> = Vec::new();
                loop {
                    let batch = rx.lock().unwrap().recv();
                    let Ok((batch, ack)) = batch else { break };
                    // Some blocks wait for the next batch (frees after their owner moved on,
                    // or exited).
                    let keep = if ack.is_some() { u64::MAX } else { 5 };
                    for b in batch {
                        if rng.below(keep) == 0 {
                            held.push(b);
                        } else {
                            free_block(b);
                        }
                    }
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    if held.len() > 2000 || rng.below(8) == 0 {
                        for b in held.drain(..) {
                            free_block(b);
                        }
                    }
                }
                for b in held {
                    free_block(b);
                }
            })
        })
        .collect();
    // Three lines of owner generations; each hands its live blocks to the next.
    let lines: Vec<_> = (0..3u64)
        .map(|line| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut carry = Vec::new();
                let mut gen = 0u64;
                while Instant::now() < until {
                    gen += 1;
                    let tx = tx.clone();
                    let seed = (line << 32 | gen).wrapping_mul(0x2545_f491_4f6c_dd1d);
                    carry = thread::spawn(move || owner(seed, carry, tx, until))
                        .join()
                        .unwrap();
                }
                let half = carry.split_off(carry.len() / 2);
                tx.send((half, None)).unwrap();
                for b in carry {
                    free_block(b);
                }
                gen
            })
        })
        .collect();
    drop(tx);
    let gens: u64 = lines.into_iter().map(|l| l.join().unwrap()).sum();
    for f in freers {
        f.join().unwrap();
    }
    let left = LIVE.lock().unwrap().as_ref().map_or(0, |s| s.len());
    let s = tieralloc::stats();
    eprintln!(
        "generations {gens}; full pages taken in {}; passes for others {}",
        s.full_pages_taken_in, s.purges_for_others
    );
    assert_eq!(left, 0, "blocks still live");
    assert!(s.purges_for_others > 0, "no pass over another heap ran");
}

/// Runs this binary's test `test` in a child, with `scenario` set, the purge delay
/// `delay_ms` and, besides, only the settings of `env` (purger off, one node by default).
fn run(test: &str, scenario: &str, delay_ms: &str, env: &[(&str, &str)]) {
    let mut cmd = child::this_test(test);
    cmd.env(scenario, "1")
        .env("TIERALLOC_PURGE_DELAY_MS", delay_ms)
        .env_remove("TIERALLOC_BACKGROUND_PURGE")
        .env_remove("TIERALLOC_SIMULATE_NODES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
}

#[test]
fn refilled_pages_across_exits_keep_every_block_once() {
    run("child_refilled_exits", SCENARIO, "1", &[]);
}

#[test]
fn refilled_pages_across_exits_and_node_moves_keep_every_block_once() {
    run(
        "child_refilled_exits",
        SCENARIO,
        "1",
        &[
            ("TIERALLOC_SIMULATE_NODES", "2"),
            ("TIERALLOC_BACKGROUND_PURGE", "1"),
        ],
    );
}

#[test]
fn busy_owners_under_passes_that_never_wait_keep_every_block_once() {
    run(
        "child_refilled_busy",
        BUSY,
        "0",
        &[("TIERALLOC_BACKGROUND_PURGE", "1")],
    );
}

#[test]
fn busy_owners_moving_nodes_under_passes_keep_every_block_once() {
    run(
        "child_refilled_busy",
        BUSY,
        "0",
        &[
            ("TIERALLOC_SIMULATE_NODES", "2"),
            ("TIERALLOC_BACKGROUND_PURGE", "1"),
        ],
    );
}

const BUSY: &str = "TIERALLOC_TEST_REFILLED_BUSY";

/// Busy owners under passes that never wait for them (a purge delay of 0: every heap is
/// quiet for the passes at once): each owner allocates without pause, hands most blocks to
/// the freers (remote frees into its full pages, delayed and silent), frees the rest itself
/// from a ring (local frees into pages passes are taking in), and now and then moves node
/// or collects.
#[test]
fn child_refilled_busy() {
    if std::env::var(BUSY).is_err() {
        return;
    }
    let until = Instant::now() + RUN;
    let (tx, rx) = mpsc::channel::<Batch>();
    let rx = std::sync::Arc::new(Mutex::new(rx));
    let freers: Vec<_> = (0..2)
        .map(|_| {
            let rx = rx.clone();
            thread::spawn(move || loop {
                let batch = rx.lock().unwrap().recv();
                let Ok((batch, _)) = batch else { break };
                for b in batch {
                    free_block(b);
                }
            })
        })
        .collect();
    let owners: Vec<_> = (0..2u64)
        .map(|id| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x1234_5678_9abc_def1 ^ (id << 40));
                let nodes = nodes::cpu_nodes();
                let mut ring: std::collections::VecDeque<Blk> = Default::default();
                let mut out = Vec::new();
                let mut n = 0u64;
                while Instant::now() < until {
                    n += 1;
                    let size = SIZES[(n / 512 % 7) as usize];
                    let b = new_block(size);
                    if rng.below(4) == 0 {
                        ring.push_back(b);
                        if ring.len() > 2048 {
                            for _ in 0..1 + rng.below(4) {
                                if let Some(b) = ring.pop_front() {
                                    free_block(b);
                                }
                            }
                        }
                    } else {
                        out.push(b);
                        if out.len() >= 64 {
                            tx.send((std::mem::take(&mut out), None)).unwrap();
                        }
                    }
                    if n % 4096 == 0 {
                        match rng.below(6) {
                            0 if nodes.len() > 1 => {
                                let to = nodes[rng.below(nodes.len() as u64) as usize];
                                let _ = tieralloc::numa::pin_current_thread_to_node(to);
                            }
                            1 => tieralloc::collect(),
                            2 => thread::sleep(Duration::from_micros(200)),
                            _ => {}
                        }
                    }
                }
                tx.send((out, None)).unwrap();
                for b in ring {
                    free_block(b);
                }
            })
        })
        .collect();
    drop(tx);
    for o in owners {
        o.join().unwrap();
    }
    for f in freers {
        f.join().unwrap();
    }
    let left = LIVE.lock().unwrap().as_ref().map_or(0, |s| s.len());
    let s = tieralloc::stats();
    eprintln!(
        "full pages taken in {}; passes for others {}",
        s.full_pages_taken_in, s.purges_for_others
    );
    assert_eq!(left, 0, "blocks still live");
    assert!(s.purges_for_others > 0, "no pass over another heap ran");
}
