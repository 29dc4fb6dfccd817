//! fork with tieralloc as the global allocator: threads alive in the parent, threads in the
//! child that free the dead threads' blocks (Rust's dealloc, which tells its own blocks by the
//! segment owner's address, where the drop-in's free uses the tag), allocate, hand blocks to
//! each other and read `stats()` while all are alive; and fork while the automatic demoter
//! runs. Each child reports through its exit code; a child that does not finish within a
//! minute is killed and the test fails.

use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

/// Forks; the child runs `body` (see `child::fork_and_wait`); a child that hangs is killed
/// after 60 s.
fn in_child(body: impl FnOnce() -> i32) -> Result<i32, String> {
    child::fork_and_wait(Duration::from_secs(60), body)
}

/// A block's contents: its first 8 bytes hold its seed (if it has 8), byte `i` of the rest
/// is a function of the seed and `i / 4096`.
fn pattern(seed: usize, len: usize) -> Box<[u8]> {
    let mut b = vec![0u8; len].into_boxed_slice();
    for (k, chunk) in b.chunks_mut(4096).enumerate() {
        chunk.fill(byte(seed, k * 4096));
    }
    if len >= 8 {
        b[..8].copy_from_slice(&(seed as u64).to_le_bytes());
    }
    b
}

fn byte(seed: usize, i: usize) -> u8 {
    seed.wrapping_mul(31).wrapping_add(i / 4096) as u8
}

fn intact(seed: usize, b: &[u8]) -> bool {
    let head = b.len().min(8);
    (b.len() < 8 || b[..8] == (seed as u64).to_le_bytes())
        && (head..b.len())
            .step_by(97)
            .chain(b.len().checked_sub(1).filter(|&l| l >= head))
            .all(|i| b[i] == byte(seed, i))
}

fn size(seed: usize) -> usize {
    match seed % 50 {
        0 => 3 << 20,                  // huge
        1..=3 => 70_000 + seed * 11,   // large
        4..=10 => 2_000 + seed % 9000, // medium
        _ => 1 + seed % 700,           // small
    }
}

/// A block handed between threads as its address and length (raw, so that it can cross the
/// fork: the child frees it without the parent's copy of the Box knowing).
#[derive(Clone, Copy)]
struct Raw(usize, usize, usize);

impl Raw {
    fn new(seed: usize) -> Raw {
        let b = pattern(seed, size(seed));
        let len = b.len();
        Raw(Box::into_raw(b) as *mut u8 as usize, len, seed)
    }
    /// Checks and frees the block.
    ///
    /// # Safety
    /// A live block from [`Raw::new`], freed once.
    unsafe fn free(self) -> bool {
        // SAFETY: per the contract.
        let b = unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.0 as *mut u8,
                self.1,
            ))
        };
        intact(self.2, &b)
    }
}

const THREADS: usize = 4;
const PER_THREAD: usize = 200;

/// Threads of the child: each frees a share of the dead threads' blocks, allocates blocks
/// for the next thread and frees the ones the previous thread made, and reads the statistics
/// while every thread of the child is alive. Returns 0 or the first failure's code.
fn child_threads(dead: Vec<Raw>) -> i32 {
    let dead = Arc::new(dead);
    let barrier = Arc::new(Barrier::new(THREADS));
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel::<Vec<Raw>>()).unzip();
    let mut rxs: Vec<Option<mpsc::Receiver<Vec<Raw>>>> = rxs.into_iter().map(Some).collect();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (dead, barrier) = (dead.clone(), barrier.clone());
            let tx = txs[(t + 1) % THREADS].clone();
            let rx = rxs[t].take().unwrap();
            std::thread::spawn(move || -> i32 {
                for r in dead.iter().skip(t).step_by(THREADS) {
                    // SAFETY: a live block of a dead thread, freed once (each index by one
                    // thread of the child).
                    if !unsafe { r.free() } {
                        return 2;
                    }
                }
                for round in 0..3 {
                    let mine: Vec<Raw> = (0..200)
                        .map(|i| Raw::new(10_000 * (t + 1) + 1000 * round + i))
                        .collect();
                    tx.send(mine).unwrap();
                    for r in rx.recv().unwrap() {
                        // SAFETY: made by the previous thread, handed to us, freed once.
                        if !unsafe { r.free() } {
                            return 3;
                        }
                    }
                }
                barrier.wait();
                let s = tieralloc::stats();
                if s.bytes_live > s.bytes_committed || s.segments == 0 {
                    return 4;
                }
                barrier.wait();
                0
            })
        })
        .collect();
    let codes: Vec<i32> = handles.into_iter().map(|h| h.join().unwrap_or(5)).collect();
    codes.into_iter().find(|&c| c != 0).unwrap_or(0)
}

#[test]
fn fork_with_live_threads_then_threads_in_the_child() {
    let alive = Arc::new(Barrier::new(THREADS + 1));
    let (tx, rx) = mpsc::channel::<Vec<Raw>>();
    let parents: Vec<_> = (0..THREADS)
        .map(|t| {
            let (alive, tx) = (alive.clone(), tx.clone());
            std::thread::spawn(move || {
                // Churn first, so that pages fill, empty and park as full.
                for i in 0..2000 {
                    drop(pattern(i, size(i + t)));
                }
                let mine: Vec<Raw> = (0..PER_THREAD)
                    .map(|i| Raw::new(t * PER_THREAD + i))
                    .collect();
                tx.send(mine).unwrap();
                alive.wait(); // alive across the forks
            })
        })
        .collect();
    let blocks: Vec<Raw> = (0..THREADS).flat_map(|_| rx.recv().unwrap()).collect();
    for round in 0..3 {
        let dead = blocks.clone();
        let child = in_child(move || {
            let code = child_threads(dead);
            if code != 0 {
                return code;
            }
            // Threads of a second generation, on the stacks the first left behind.
            let code = child_threads(Vec::new());
            if code != 0 {
                return 10 + code;
            }
            let s = tieralloc::stats();
            if s.bytes_live > s.bytes_committed {
                return 20;
            }
            0
        });
        assert_eq!(
            child,
            Ok(0),
            "fork {round}: 2: a dead thread's block corrupt, 3: a handed block corrupt, \
             4: statistics wrong, 5: a thread panicked (+10: second generation)"
        );
    }
    alive.wait();
    for p in parents {
        p.join().unwrap();
    }
    for r in blocks {
        // SAFETY: the parent's blocks, still live here, freed once.
        assert!(unsafe { r.free() });
    }
}

/// fork while the automatic demoter moves huge blocks to the far tier, holding each one's
/// registry claim for the whole move: before every fork the parent brings its 24 blocks back
/// to the near tier, so the demoter (woken every millisecond) is busy moving them when the
/// fork comes. Every child frees every block (contents checked: a claim left over from the
/// demoter, which does not exist in the child, would make the free wait forever), allocates
/// and frees new ones, and ends. Then the demoter must have moved the blocks: it put every
/// one back on the far tier after the last promotion, and counted at least 24 moves.
///
/// Needs a second tier. On a machine with one the test runs itself again in a child process
/// under `TIERALLOC_SIMULATE_NODES=2,far=1` (a simulated far node), so it runs everywhere.
#[test]
fn fork_while_auto_demotion_runs() {
    use tieralloc::tiers;
    let demoter = match tiers::start_auto_demotion(Duration::ZERO, Duration::ZERO) {
        Ok(d) => d,
        Err(tiers::TierError::NoSuchTier { .. }) if !child::is_child() => {
            let mut cmd = child::this_test("fork_while_auto_demotion_runs");
            cmd.env("TIERALLOC_SIMULATE_NODES", "2,far=1");
            for v in ["TIERALLOC_NUMA", "TIERALLOC_NODES", "TIERALLOC_TIERS"] {
                cmd.env_remove(v);
            }
            child::run(&mut cmd, Duration::from_secs(600)).expect_test_passed();
            return;
        }
        Err(e) => panic!("start_auto_demotion: {e:?}"),
    };
    let blocks: Vec<Raw> = (0..24)
        .map(|i| {
            let b = pattern(i, (3 << 20) + i * 4096);
            let len = b.len();
            Raw(Box::into_raw(b) as *mut u8 as usize, len, i)
        })
        .collect();
    let total: usize = blocks.iter().map(|r| r.1).sum();
    for round in 0..40 {
        for r in &blocks {
            // SAFETY: a live block of ours, not freed or resized while it moves (the
            // demoter's moves of it wait for the claim this takes).
            unsafe { tiers::promote(r.0 as *mut u8, r.1) }.expect("promote a huge block");
        }
        let mine = blocks.clone();
        let child = in_child(move || {
            for r in mine {
                // SAFETY: live blocks of the parent, each freed once here.
                if !unsafe { r.free() } {
                    return 2;
                }
            }
            for i in 0..8 {
                let r = Raw::new(50 * i); // huge (size(0 mod 50))
                                          // SAFETY: made just now, freed once.
                if !unsafe { r.free() } {
                    return 3;
                }
            }
            0
        });
        assert_eq!(
            child,
            Ok(0),
            "fork {round}: (exit 2 or 3: a huge block corrupt)"
        );
    }
    // The demoter takes every block back to the far tier, whose committed bytes then hold
    // them all (a move books a huge block's mapping on its new node). A hang guard, not a
    // timing: the demoter looks every millisecond.
    let far = tiers::stats().len() - 1;
    let on_far = child::wait_for(Duration::from_secs(120), || {
        (tiers::stats()[far].committed_bytes >= total as u64).then_some(())
    });
    let report = demoter.stop();
    assert!(
        on_far.is_some(),
        "the demoter did not take the blocks ({total} bytes) back to the far tier: {:?}, {report:?}",
        tiers::stats()[far]
    );
    assert!(
        report.blocks >= 24,
        "the demoter moved too little: {report:?}"
    );
    for r in blocks {
        // SAFETY: live, freed once.
        assert!(unsafe { r.free() });
    }
}

/// Small blocks' sizes only (bin pages, which fill and take remote frees into full pages).
fn small(seed: usize) -> Raw {
    let len = 16 + (seed * 37) % 500;
    let b = pattern(seed, len);
    Raw(Box::into_raw(b) as *mut u8 as usize, len, seed)
}

/// Forks while a ring of threads hands small blocks on, each freeing the previous thread's
/// (remote frees into full pages: delayed frees, drains, pages on refilled lists, passes)
/// and keeping a share live for a while, so that full pages keep live blocks. The child
/// frees, checked, blocks the ring's threads gave the forking thread (theirs are dead
/// heaps' blocks now), then runs threads of its own (review rev22).
#[test]
fn fork_while_remote_frees_refill_full_pages() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    const RING: usize = 3;
    let stop = Arc::new(AtomicBool::new(false));
    let given: Arc<Mutex<Vec<Raw>>> = Arc::new(Mutex::new(Vec::new()));
    let bad = Arc::new(AtomicUsize::new(0));
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..RING).map(|_| mpsc::channel::<Vec<Raw>>()).unzip();
    let mut rxs: Vec<Option<mpsc::Receiver<Vec<Raw>>>> = rxs.into_iter().map(Some).collect();
    let ring: Vec<_> = (0..RING)
        .map(|t| {
            let (stop, given, bad) = (stop.clone(), given.clone(), bad.clone());
            let tx = txs[(t + 1) % RING].clone();
            let rx = rxs[t].take().unwrap();
            std::thread::spawn(move || {
                let mut held: Vec<Raw> = Vec::new();
                let mut round = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let made: Vec<Raw> = (0..300)
                        .map(|i| small(1_000_000 * (t + 1) + 1000 * (round % 997) + i))
                        .collect();
                    // Every 5th stays with us a while; every 50th goes to the forking thread.
                    let (mut send, mut keep) = (Vec::new(), Vec::new());
                    for (i, r) in made.into_iter().enumerate() {
                        if i % 50 == 0 {
                            given.lock().unwrap().push(r);
                        } else if i % 5 == 0 {
                            keep.push(r);
                        } else {
                            send.push(r);
                        }
                    }
                    held.extend(keep);
                    if held.len() > 2000 {
                        let old: Vec<Raw> = held.drain(..1000).collect();
                        send.extend(old);
                    }
                    if tx.send(send).is_err() {
                        break;
                    }
                    while let Ok(v) = rx.try_recv() {
                        for r in v {
                            // SAFETY: made by the previous thread, handed to us, freed once.
                            if !unsafe { r.free() } {
                                bad.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                for r in held {
                    // SAFETY: ours, freed once.
                    unsafe { r.free() };
                }
                // The rest the previous thread sent is dropped by the receiver's end (leaked).
                drop(rx);
            })
        })
        .collect();
    drop(txs);
    for k in 0..20 {
        std::thread::sleep(Duration::from_millis(20));
        let mine: Vec<Raw> = std::mem::take(&mut *given.lock().unwrap());
        let child = in_child(|| {
            for r in &mine {
                // SAFETY: a live block the ring gave us, freed once (in the child's copy).
                if !unsafe { r.free() } {
                    return 2;
                }
            }
            let mut live: Vec<Raw> = (0..3000).map(|i| small(7_000_000 + i)).collect();
            for r in live.drain(..).step_by(2) {
                // SAFETY: ours, freed once.
                if !unsafe { r.free() } {
                    return 3;
                }
            }
            child_threads(Vec::new())
        });
        assert_eq!(
            child,
            Ok(0),
            "fork {k}: 2: a given block overwritten; 3: own blocks"
        );
        for r in mine {
            // SAFETY: as in the child, for the parent's copy.
            assert!(
                unsafe { r.free() },
                "a given block overwritten in the parent"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in ring {
        h.join().unwrap();
    }
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "blocks overwritten in the ring"
    );
}

/// The automatic demoter's handle in a fork child (review rev29): the demoter thread is not
/// in the child, so stopping (or dropping) the child's copy of the handle must not join it;
/// before, `stop` joined a thread the child does not have, and the child panicked inside it
/// (std's "threads should not terminate unexpectedly": a drop of the handle while unwinding
/// aborts). The parent's demoter goes on and stops as usual.
#[test]
fn a_demoter_handle_stops_in_a_fork_child() {
    use tieralloc::tiers;
    let demoter = match tiers::start_auto_demotion(Duration::ZERO, Duration::from_millis(1)) {
        Ok(d) => d,
        Err(tiers::TierError::NoSuchTier { .. }) if !child::is_child() => {
            let mut cmd = child::this_test("a_demoter_handle_stops_in_a_fork_child");
            cmd.env("TIERALLOC_SIMULATE_NODES", "2,far=1");
            for v in ["TIERALLOC_NUMA", "TIERALLOC_NODES", "TIERALLOC_TIERS"] {
                cmd.env_remove(v);
            }
            child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
            return;
        }
        Err(e) => panic!("start_auto_demotion: {e:?}"),
    };
    // Let it run a pass or two first (a hang guard, not a timing).
    let ran = child::wait_for(Duration::from_secs(60), || {
        (demoter.report().passes > 0).then_some(())
    });
    assert!(ran.is_some(), "the demoter never ran a pass");
    let handle = &demoter;
    let child = in_child(move || {
        // SAFETY: the child's own copy of the parent's handle, used once (the parent's copy
        // is untouched: the child ends with _exit).
        let mine = unsafe { std::ptr::read(handle) };
        let report = mine.stop();
        i32::from(report.passes == 0) * 2
    });
    let report = demoter.stop();
    assert!(report.passes > 0);
    assert_eq!(
        child,
        Ok(0),
        "stopping the demoter's handle in a fork child (2: it reported no pass)"
    );
}
