//! Multi-threaded stress: tieralloc is this binary's global allocator, and many threads
//! allocate, hand over, reallocate and free objects of every size class (1 B to several MiB),
//! at every alignment up to 2 MiB. Every object carries a pattern derived from its id, and the
//! pattern is checked when the object is freed (or resized), so a block handed out twice, a
//! block overwritten by allocator metadata, or a realloc that loses data fails the test.

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// xorshift64*, seeded, so failures can be replayed by seed (shared with the benchmarks).
#[path = "../benches/support/rng.rs"]
mod rng;
use rng::Rng;

fn threads() -> usize {
    let cores = thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).max(4)
}

/// Word `w` of object `id`'s pattern. Depends on both, so a block swapped with another, or
/// shifted by a bad copy, is caught. Byte `i` of the object is byte `i % 8` (little endian) of
/// word `i / 8`; working a word at a time keeps multi-MiB objects cheap to fill and check.
#[inline]
fn word(id: u64, w: usize) -> u64 {
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (w as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93))
        .rotate_left(17)
        ^ w as u64
}

#[inline]
fn pat(id: u64, i: usize) -> u8 {
    word(id, i / 8).to_le_bytes()[i % 8]
}

/// Writes the pattern of `id` into bytes `from..to` of the block at `p`.
fn fill(p: *mut u8, from: usize, to: usize, id: u64) {
    // SAFETY: callers pass a live block of at least `to` bytes.
    let s = unsafe { std::slice::from_raw_parts_mut(p, to) };
    let mut i = from;
    while i < to && i % 8 != 0 {
        s[i] = pat(id, i);
        i += 1;
    }
    let whole = (to - i) / 8 * 8;
    for (k, c) in s[i..i + whole].chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&word(id, i / 8 + k).to_le_bytes());
    }
    for (j, b) in s.iter_mut().enumerate().skip(i + whole) {
        *b = pat(id, j);
    }
}

/// Checks bytes `0..len` of the block at `p` against the pattern of `id`.
fn check(p: *const u8, len: usize, id: u64, what: &str) {
    // SAFETY: callers pass a live block of at least `len` bytes.
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    let whole = len / 8 * 8;
    let words_ok = s[..whole]
        .chunks_exact(8)
        .enumerate()
        .all(|(w, c)| u64::from_le_bytes(c.try_into().unwrap()) == word(id, w));
    let tail_ok = (whole..len).all(|i| s[i] == pat(id, i));
    if !(words_ok && tail_ok) {
        let i = (0..len).find(|&i| s[i] != pat(id, i)).unwrap();
        panic!(
            "{what}: object {id} at {p:p} (len {len}) corrupted at byte {i}: {:#x} != {:#x}",
            s[i],
            pat(id, i)
        );
    }
}

/// An object owned by the test: pointer, layout, id, and the worker that allocated it.
struct Obj {
    p: *mut u8,
    layout: Layout,
    id: u64,
    owner: usize,
}
// SAFETY: an Obj is a plain heap block; it is handed between threads whole.
unsafe impl Send for Obj {}

impl Obj {
    fn new(size: usize, align: usize, id: u64, owner: usize) -> Obj {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: size > 0.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null(), "alloc({size}, {align}) returned null");
        assert_eq!(p as usize % align, 0, "alloc({size}, {align}) misaligned");
        fill(p, 0, size, id);
        Obj {
            p,
            layout,
            id,
            owner,
        }
    }
    fn free(self, what: &str) {
        check(self.p, self.layout.size(), self.id, what);
        // SAFETY: allocated with this layout and not freed yet.
        unsafe { dealloc(self.p, self.layout) };
    }
}

/// Sizes skewed to small: most under 256 B, some medium, few large, very few huge.
fn random_size(r: &mut Rng) -> usize {
    match r.below(1000) {
        0..=699 => r.range(1, 256),
        700..=899 => r.range(257, 8 << 10),
        900..=979 => r.range((8 << 10) + 1, 64 << 10),
        980..=997 => r.range((64 << 10) + 1, 2 << 20),
        _ => r.range((2 << 20) + 1, 6 << 20),
    }
}

fn random_align(r: &mut Rng) -> usize {
    match r.below(100) {
        0..=89 => 1 << r.below(5),      // 1..=16: the plain fast path
        90..=98 => 1 << r.range(5, 12), // 32..=4096: aligned bins and large pages
        _ => 1 << r.range(13, 21),      // up to 2 MiB: large pages and huge segments
    }
}

/// Threads in rounds hand objects to each other through shared slots: every object placed in
/// a slot is later freed by whichever thread next picks that slot, usually not its allocator,
/// often after its allocator has exited.
#[test]
fn cross_thread_handoff_in_rounds() {
    const SLOTS: usize = 4096;
    const ROUNDS: usize = 4;
    const OPS: usize = 12_000;
    let n = threads();
    let slots: Arc<Vec<Mutex<Option<Obj>>>> =
        Arc::new((0..SLOTS).map(|_| Mutex::new(None)).collect());
    let next_id = Arc::new(AtomicUsize::new(1));
    let foreign_frees = Arc::new(AtomicUsize::new(0));
    let total_allocs = Arc::new(AtomicUsize::new(0));

    for round in 0..ROUNDS {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let worker = round * n + t + 1;
                let slots = slots.clone();
                let next_id = next_id.clone();
                let foreign = foreign_frees.clone();
                let total = total_allocs.clone();
                thread::spawn(move || {
                    let mut r = Rng::new(worker as u64 * 7919);
                    // A few objects each thread keeps to itself for a while.
                    let mut mine: Vec<Obj> = Vec::new();
                    for _ in 0..OPS {
                        let id = next_id.fetch_add(1, Ordering::Relaxed) as u64;
                        let obj = Obj::new(random_size(&mut r), random_align(&mut r), id, worker);
                        total.fetch_add(1, Ordering::Relaxed);
                        if r.below(8) == 0 {
                            mine.push(obj);
                            if mine.len() > 64 {
                                let i = r.below(mine.len() as u64) as usize;
                                mine.swap_remove(i).free("local free");
                            }
                            continue;
                        }
                        let i = r.below(SLOTS as u64) as usize;
                        let old = slots[i].lock().unwrap().replace(obj);
                        if let Some(old) = old {
                            if old.owner != worker {
                                foreign.fetch_add(1, Ordering::Relaxed);
                            }
                            old.free("handoff free");
                        }
                    }
                    // Half of our private objects go to the slots and outlive us.
                    for (k, obj) in mine.into_iter().enumerate() {
                        if k % 2 == 0 {
                            obj.free("exit free");
                        } else {
                            let i = r.below(SLOTS as u64) as usize;
                            if let Some(old) = slots[i].lock().unwrap().replace(obj) {
                                old.free("exit handoff free");
                            }
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Between rounds every object in the slots belongs to a thread that has exited.
        let live = slots.iter().filter(|s| s.lock().unwrap().is_some()).count();
        assert!(live > SLOTS / 2, "round {round}: only {live} objects live");
    }
    // The main thread frees the leftovers of exited threads.
    for s in slots.iter() {
        if let Some(obj) = s.lock().unwrap().take() {
            obj.free("final free");
        }
    }
    let total = total_allocs.load(Ordering::Relaxed);
    let foreign = foreign_frees.load(Ordering::Relaxed);
    assert!(total >= 100_000, "only {total} objects");
    assert!(
        foreign * 2 > total,
        "only {foreign} of {total} objects were freed by a thread other than their allocator"
    );
    let s = tieralloc::stats();
    assert!(s.remote_frees > 0, "{s}");
    assert!(s.pages_abandoned > 0, "{s}");
}

/// Realloc growing and shrinking through every size range, on several threads at once,
/// with contents checked after every step and alignment kept.
#[test]
fn realloc_grows_and_shrinks_keeping_contents() {
    let n = threads();
    let handles: Vec<_> = (0..n)
        .map(|t| {
            thread::spawn(move || {
                let mut r = Rng::new(1000 + t as u64);
                for k in 0..200u64 {
                    let id = (t as u64) << 32 | k;
                    let align = match r.below(10) {
                        0..=5 => 1 << r.below(5),
                        6..=8 => 1 << r.range(5, 12),
                        _ => 1 << r.range(13, 21),
                    };
                    let mut size = random_size(&mut r);
                    let mut layout = Layout::from_size_align(size, align).unwrap();
                    // SAFETY: size > 0.
                    let mut p = unsafe { alloc(layout) };
                    assert!(!p.is_null());
                    fill(p, 0, size, id);
                    for _ in 0..12 {
                        let new_size = match r.below(6) {
                            0 => (size / r.range(2, 16)).max(1),      // shrink a lot
                            1 => (size - size / 8).max(1),            // shrink a little
                            2 => size + r.range(1, 64),               // grow a little
                            3 => size.saturating_mul(2).min(8 << 20), // double
                            4 => r.range(1, 64 << 10),
                            _ => r.range(1, 4 << 20),
                        };
                        // SAFETY: p is live with `layout`; new_size > 0 and, rounded up to
                        // align, below isize::MAX.
                        let q = unsafe { realloc(p, layout, new_size) };
                        assert!(!q.is_null(), "realloc {size} -> {new_size} failed");
                        assert_eq!(q as usize % align, 0, "realloc lost alignment {align}");
                        check(q, size.min(new_size), id, "realloc");
                        if new_size > size {
                            fill(q, size, new_size, id);
                        }
                        p = q;
                        size = new_size;
                        layout = Layout::from_size_align(size, align).unwrap();
                    }
                    check(p, size, id, "before dealloc");
                    // SAFETY: p is live with `layout`.
                    unsafe { dealloc(p, layout) };
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Every power-of-two alignment from 1 B to 2 MiB, several sizes each, all live at once.
#[test]
fn every_alignment_up_to_2mib() {
    let handles: Vec<_> = (0..2)
        .map(|t| {
            thread::spawn(move || {
                let mut live = Vec::new();
                let mut id = (t as u64) << 40;
                for shift in 0..=21 {
                    let align = 1usize << shift;
                    let sizes = [
                        1,
                        7,
                        align / 2 + 1,
                        align,
                        align + 1,
                        (3 * align).saturating_sub(5),
                        100,
                        5000,
                        70_000,
                    ];
                    for &size in &sizes {
                        for _ in 0..3 {
                            id += 1;
                            live.push(Obj::new(size.max(1), align, id, t));
                        }
                    }
                }
                for o in &live {
                    assert_eq!(o.p as usize % o.layout.align(), 0);
                    // SAFETY: o.p is a live block of ours.
                    let usable = unsafe { tieralloc::usable_size(o.p) };
                    assert!(usable >= o.layout.size(), "{:?}: usable {usable}", o.layout);
                }
                // Contents of every block intact with all of them live: no two overlap.
                for o in &live {
                    check(o.p, o.layout.size(), o.id, "aligned");
                }
                let mut spans: Vec<(usize, usize)> = live
                    .iter()
                    .map(|o| (o.p as usize, o.p as usize + o.layout.size()))
                    .collect();
                spans.sort_unstable();
                for w in spans.windows(2) {
                    assert!(w[0].1 <= w[1].0, "blocks overlap: {w:x?}");
                }
                for o in live {
                    o.free("aligned free");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

fn dirty_then_zeroed(sizes: &[(usize, usize)], rounds: usize) {
    for _ in 0..rounds {
        // Dirty: allocate, scribble, free; the next allocations reuse these blocks.
        let mut dirty = Vec::new();
        for &(size, align) in sizes {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: size > 0.
            let p = unsafe { alloc(l) };
            assert!(!p.is_null());
            // SAFETY: p holds `size` bytes.
            unsafe { std::ptr::write_bytes(p, 0xAB, size) };
            dirty.push((p, l));
        }
        for (p, l) in dirty {
            // SAFETY: allocated above with l.
            unsafe { dealloc(p, l) };
        }
        let mut zeroed = Vec::new();
        for &(size, align) in sizes {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: size > 0.
            let p = unsafe { alloc_zeroed(l) };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            // SAFETY: p holds `size` bytes.
            let s = unsafe { std::slice::from_raw_parts(p, size) };
            if let Some(i) = s.iter().position(|&b| b != 0) {
                panic!(
                    "alloc_zeroed({size}, align {align}) at {p:p}: byte {i} is {:#x}",
                    s[i]
                );
            }
            zeroed.push((p, l));
        }
        // Dirty the zeroed blocks too, so the next round reuses written memory.
        for (p, l) in zeroed {
            // SAFETY: p holds l.size() bytes; allocated with l.
            unsafe {
                std::ptr::write_bytes(p, 0xAB, l.size());
                dealloc(p, l);
            }
        }
    }
}

/// alloc_zeroed returns zeroed memory even when it reuses blocks just dirtied and freed:
/// free-list reuse, fresh carving, large pages, huge mappings (and their cache), aligned bins.
#[test]
fn alloc_zeroed_is_zero_after_reuse() {
    let mut sizes = Vec::new();
    for &s in &[
        1usize,
        8,
        9,
        16,
        24,
        100,
        128,
        129,
        1000,
        4096,
        8000,
        8193,
        30_000,
        65_536,
        65_537,
        200_000,
        1 << 20,
        (2 << 20) + 1,
        5 << 20,
    ] {
        for &a in &[1usize, 16, 64, 4096] {
            sizes.push((s, a));
        }
    }
    sizes.push((100, 1 << 16));
    sizes.push((100, 1 << 21));
    sizes.push((3 << 20, 1 << 21));
    // Many of the small ones, so whole pages are dirtied and reused.
    for k in 0..2000 {
        sizes.push((1 + k % 300, 8));
    }
    dirty_then_zeroed(&sizes, 20);
    // The same from a second thread at once, which also exercises fresh heaps.
    let s2 = sizes.clone();
    let h = thread::spawn(move || dirty_then_zeroed(&s2, 10));
    dirty_then_zeroed(&sizes, 10);
    h.join().unwrap();
}

/// Calling the GlobalAlloc trait on a `TierAlloc` value is the same allocator as the global
/// one: a block from either may be freed by the other.
#[test]
fn tieralloc_value_and_global_agree() {
    let a = tieralloc::TierAlloc::new();
    let l = Layout::from_size_align(4000, 64).unwrap();
    // SAFETY: non-zero size; each block freed once.
    unsafe {
        let p = a.alloc(l);
        assert!(!p.is_null());
        fill(p, 0, 4000, 99);
        check(p, 4000, 99, "trait");
        dealloc(p, l);
        let q = alloc(l);
        assert!(!q.is_null());
        a.dealloc(q, l);
    }
}
