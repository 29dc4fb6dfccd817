//! Quiet threads and the traffic of the others, for the tests of what a quiet heap gives
//! back (tests/medium_tails.rs: the uncarved tails of medium pages; tests/quiet_passes.rs:
//! other threads' passes over quiet heaps and the background purger): a thread that does its
//! work and then makes no allocator call ([`Quiet`], [`quiet_worker`]), this thread's slow
//! paths until something is given back ([`slow_traffic_until`]), resident free slices, the
//! tail of a medium page and its residency (`mincore`).
//!
//! Shared with `#[path = "common/quiet.rs"] mod quiet;`, next to `mod rss;` and `mod child;`
//! (its blocks are `rss`'s, filled with a byte and checked when freed).

use crate::rss::{drop_block, new_block};
use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(5);
pub const SLICE: usize = 64 << 10;
/// A request of the 4 KiB class in both builds (the `secure` build's trailer fits).
pub const SMALL: usize = 4096 - 64;
/// One request per medium class (10, 12, 14, 16, 20, ... 64 KiB), 64 bytes short of it.
pub const MEDIUM: [usize; 12] = [10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64];

/// Resident 4 KiB pages in `[p, p + len)` (`p` page-aligned).
pub fn resident_pages(p: usize, len: usize) -> usize {
    let mut v = vec![0u8; len / 4096];
    // SAFETY: the range is mapped (it lies inside one of tieralloc's segments) and `v` has a
    // byte per page.
    let r = unsafe { libc::mincore(p as *mut libc::c_void, len, v.as_mut_ptr()) };
    assert_eq!(r, 0);
    v.iter().filter(|&&b| b & 1 != 0).count()
}

/// Slices of a medium class's pages while the heap has handed out fewer than 16 of its
/// blocks (`SPARSE_MEDIUM_SLICES`).
pub const SPARSE_SLICES: usize = 2;

/// The uncarved part of the page of `slices` slices that a block `p` of `s` bytes starts,
/// past its first slice and past the block: `(from, len)`.
pub fn tail_of(p: usize, s: usize, slices: usize) -> (usize, usize) {
    let from = ((p + s + 4095) & !4095).max(p + SLICE);
    (from, p + slices * SLICE - from)
}

/// This thread's slow paths (4 KiB blocks allocated and freed a page at a time, so its
/// collections run, and with them the passes over other heaps), with short sleeps, until
/// `left()` is 0 or `limit` has passed. Returns the last `left()` and the time taken.
pub fn slow_traffic_until(limit: Duration, mut left: impl FnMut() -> usize) -> (usize, Duration) {
    let start = Instant::now();
    let mut rest = left();
    while rest > 0 && start.elapsed() < limit {
        let ps: Vec<usize> = (0..64).map(|_| new_block(4096, 7)).collect();
        for q in ps {
            drop_block(q, 4096, 7);
        }
        std::thread::sleep(Duration::from_millis(5));
        rest = left();
    }
    (rest, start.elapsed())
}

/// `n` blocks of `SMALL` bytes written and freed but for the first: their slices go back to
/// the segment still resident, and the one left live keeps the segment from the pool.
/// Returns the live block.
pub fn resident_free_slices(n: usize) -> usize {
    let blocks: Vec<usize> = (0..n).map(|i| new_block(SMALL, i as u8)).collect();
    for (i, &p) in blocks.iter().enumerate().skip(1) {
        drop_block(p, SMALL, i as u8);
    }
    blocks[0]
}

/// A thread that has done its work and now makes no allocator call until [`Quiet::finish`],
/// which runs what it left to undo (its frees) and ends it.
pub struct Quiet {
    thread: JoinHandle<()>,
    stop: Sender<()>,
}

impl Quiet {
    /// Starts a thread that runs `work`, hands its result back, then waits quietly; `work`
    /// also returns what the thread does when told to finish.
    pub fn start<R: Send + 'static>(
        work: impl FnOnce() -> (R, Box<dyn FnOnce() + Send>) + Send + 'static,
    ) -> (Quiet, R) {
        let (to_main, from_worker) = channel();
        let (stop, wait) = channel::<()>();
        let thread = std::thread::spawn(move || {
            let (r, undo) = work();
            to_main.send(r).unwrap();
            wait.recv().unwrap();
            undo();
        });
        let r = from_worker.recv().unwrap();
        (Quiet { thread, stop }, r)
    }

    /// Lets the thread undo its work and end.
    pub fn finish(self) {
        self.stop.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

/// A thread that frees a 12 MiB spike of 4 KiB blocks (every 256th kept, so no segment
/// empties), makes one block of each medium class (each its class's first page, on the
/// spike's resident slices: a booked tail), keeps 4 MiB of 4 KiB blocks live (taking
/// resident slices too, so that what its heap holds to purge falls below 4 MiB: not
/// `waiting`), then goes quiet. Returns it, its medium blocks (address, size) and the bytes
/// it keeps live.
pub fn quiet_worker() -> (Quiet, (Vec<(usize, usize)>, usize)) {
    Quiet::start(|| {
        let blocks: Vec<usize> = (0..3072).map(|i| new_block(SMALL, i as u8)).collect();
        let mut kept = Vec::new();
        for (i, p) in blocks.into_iter().enumerate() {
            if i % 256 == 255 {
                kept.push((p, i as u8));
            } else {
                drop_block(p, SMALL, i as u8);
            }
        }
        let m: Vec<(usize, usize)> = MEDIUM
            .iter()
            .enumerate()
            .map(|(i, &k)| (new_block((k << 10) - 64, 0xC0 + i as u8), (k << 10) - 64))
            .collect();
        let live: Vec<usize> = (0..1024).map(|_| new_block(SMALL, 0x5A)).collect();
        let bytes = m.iter().map(|b| b.1).sum::<usize>() + (1024 + kept.len()) * SMALL;
        let medium = m.clone();
        let undo = move || {
            for (i, (p, s)) in m.into_iter().enumerate() {
                drop_block(p, s, 0xC0 + i as u8);
            }
            for q in live {
                drop_block(q, SMALL, 0x5A);
            }
            for (q, b) in kept {
                drop_block(q, SMALL, b);
            }
        };
        ((medium, bytes), Box::new(undo) as Box<dyn FnOnce() + Send>)
    })
}
