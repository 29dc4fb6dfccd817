//! Blocks that change threads: a realloc by a thread that does not own the block's segment,
//! and a thread that exits while another thread's frees into its full pages (delayed frees)
//! are still arriving.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

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
/// a thread has tended what was left, the memory is back (committed bytes and segments near
/// where they were, nothing abandoned), and the per-class live count is back too.
#[test]
fn a_thread_exits_while_its_delayed_frees_arrive() {
    let _g = serial();
    const N: usize = 12_000; // 12 000 x 1200 B (class 1280, unused by the harness): 15 MB of full pages
    const SIZE: usize = 1200;
    const ROUNDS: usize = 6;
    let tend = || {
        tieralloc::collect();
        thread::spawn(|| {
            let v = vec![1u8; 100];
            for _ in 0..8 {
                tieralloc::collect();
            }
            drop(v);
        })
        .join()
        .unwrap();
        tieralloc::collect();
    };
    tend();
    let before = tieralloc::stats();
    let live_class = |s: &tieralloc::Stats| {
        s.classes
            .iter()
            .find(|c| c.block_size == 1280)
            .map_or(0, |c| c.live)
    };
    for round in 0..ROUNDS {
        let (tx, rx) = mpsc::channel::<Vec<Raw>>();
        let half_freed = Arc::new(Barrier::new(2));
        let hf = half_freed.clone();
        let a = thread::spawn(move || {
            let blocks: Vec<Raw> = (0..N)
                .map(|k| alloc_filled(SIZE, (k % 251) as u8))
                .collect();
            let mut it = blocks.into_iter();
            tx.send(it.by_ref().take(N / 2).collect()).unwrap();
            tx.send(it.collect()).unwrap();
            // B has freed the first half into our full pages: exit now, with those frees on
            // our delayed stack and B freeing the second half meanwhile.
            hf.wait();
        });
        let b = thread::spawn(move || {
            let first = rx.recv().unwrap();
            let second = rx.recv().unwrap();
            for (k, r) in first.iter().enumerate() {
                assert!(holds(r.0, SIZE, (k % 251) as u8), "round {round} block {k}");
                // SAFETY: live with its layout.
                unsafe { GLOBAL.dealloc(r.0, r.1) };
            }
            half_freed.wait();
            for (k, r) in second.iter().enumerate() {
                let k = k + N / 2;
                assert!(holds(r.0, SIZE, (k % 251) as u8), "round {round} block {k}");
                // SAFETY: live with its layout.
                unsafe { GLOBAL.dealloc(r.0, r.1) };
            }
        });
        a.join().unwrap();
        b.join().unwrap();
    }
    tend();
    let after = tieralloc::stats();
    eprintln!(
        "delayed-free exit: committed {} -> {}, segments {} -> {}, abandoned {} -> {}",
        before.bytes_committed,
        after.bytes_committed,
        before.segments,
        after.segments,
        before.segments_abandoned,
        after.segments_abandoned
    );
    assert_eq!(live_class(&after), live_class(&before), "{after}");
    // A lost delayed free keeps its page, and so its segment, in use forever: 6 rounds of
    // 15 MB would keep tens of MiB. What may remain: pages of the test's own threads.
    assert!(
        after.segments_abandoned <= before.segments_abandoned,
        "segments left abandoned\nbefore:\n{before}\nafter:\n{after}"
    );
    assert!(
        after.bytes_committed <= before.bytes_committed + (4 << 20),
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
