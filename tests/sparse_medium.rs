//! Medium blocks across the switch from sparse pages (2 slices while the heap has handed out
//! fewer than 16 blocks of the class) to busy ones (8 slices): allocations, frees by the
//! owner and by another thread, reallocs between classes and in place, and collections,
//! with pages of both sizes of one class live at once (in one segment too). After every
//! step each live block still holds what was written into it, no two live blocks overlap,
//! and each lies inside its page's run of slices (review rev54).

use std::alloc::{alloc, dealloc, realloc, Layout};
use std::collections::{BTreeMap, BTreeSet};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const SLICE: usize = 64 << 10;
/// One request of each of three medium classes, 64 bytes short of it (the `secure` build's
/// trailer fits): 12, 3 and 2 blocks on a sparse page, 50, 12 and 8 (7 at slice 0) on a busy one.
const SIZES: [usize; 3] = [(10 << 10) - 64, (40 << 10) - 64, (64 << 10) - 64];

/// A live block: its address, the size it was asked with, and the seed of its contents.
#[derive(Clone, Copy)]
struct Live {
    p: usize,
    size: usize,
    seed: u8,
}

fn fill(b: &Live) {
    // SAFETY: `b.p` is a live block of at least `b.size` bytes, ours.
    let s = unsafe { std::slice::from_raw_parts_mut(b.p as *mut u8, b.size) };
    for (k, x) in s.iter_mut().enumerate() {
        *x = b.seed ^ (k / 61) as u8;
    }
}

fn intact(b: &Live, len: usize) -> bool {
    // SAFETY: `b.p` is a live block of at least `len <= b.size` bytes.
    let s = unsafe { std::slice::from_raw_parts(b.p as *const u8, len) };
    s.iter()
        .enumerate()
        .all(|(k, &x)| x == b.seed ^ (k / 61) as u8)
}

fn new_block(size: usize, seed: u8) -> Live {
    // SAFETY: a nonzero size.
    let p = unsafe { alloc(Layout::from_size_align(size, 8).unwrap()) } as usize;
    assert_ne!(p, 0);
    let b = Live { p, size, seed };
    fill(&b);
    b
}

fn free_block(b: Live) {
    // SAFETY: allocated with this layout, freed once.
    unsafe { dealloc(b.p as *mut u8, Layout::from_size_align(b.size, 8).unwrap()) }
}

/// Checks every live block (contents, no overlap, inside its page) and returns, per request
/// size, the page sizes (in slices) its live blocks sit on, and per (size, segment) the page
/// sizes found in that segment.
#[allow(clippy::type_complexity)]
fn check(
    live: &[Live],
) -> (
    BTreeMap<usize, BTreeSet<usize>>,
    BTreeMap<(usize, usize), BTreeSet<usize>>,
) {
    let mut ranges = Vec::new();
    let mut by_size: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let mut by_seg: BTreeMap<(usize, usize), BTreeSet<usize>> = BTreeMap::new();
    for b in live {
        assert!(
            intact(b, b.size),
            "block {:#x} of {} B changed",
            b.p,
            b.size
        );
        // SAFETY: a live block of ours.
        let (place, usable) = unsafe {
            (
                tieralloc::block_place(b.p as *const u8),
                tieralloc::usable_size(b.p as *const u8),
            )
        };
        assert!(usable >= b.size);
        assert!(!place.huge);
        let lo = place.segment + place.slice * SLICE;
        let hi = place.segment + (place.slice + place.slices) * SLICE;
        assert!(
            b.p >= lo && b.p + usable <= hi,
            "block {:#x}+{usable} outside its page [{lo:#x}, {hi:#x}) of {} slices",
            b.p,
            place.slices
        );
        by_size.entry(b.size).or_default().insert(place.slices);
        by_seg
            .entry((b.size, place.segment))
            .or_default()
            .insert(place.slices);
        ranges.push((b.p, b.p + usable));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "blocks {:#x?} and {:#x?} overlap",
            w[0],
            w[1]
        );
    }
    (by_size, by_seg)
}

#[test]
fn medium_blocks_across_the_switch_to_busy_pages_keep_their_contents_and_bounds() {
    std::thread::spawn(|| {
        let mut live: Vec<Live> = Vec::new();
        let mut seed = 1u8;
        let mut next_seed = || {
            seed = seed.wrapping_add(37) | 1;
            seed
        };
        // Page sizes seen per request size, and (size, segment) pairs seen with both sizes.
        let mut seen: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        let mut mixed_segments = 0usize;
        let mut rounds_mixed = 0usize;
        for round in 0..8 {
            // Five blocks of each class a round: the first 16 of each on sparse pages.
            for _ in 0..5 {
                for &s in &SIZES {
                    live.push(new_block(s, next_seed()));
                }
            }
            let (by_size, by_seg) = check(&live);
            for (s, set) in by_size {
                seen.entry(s).or_default().extend(set.iter().copied());
                if set.len() == 2 {
                    rounds_mixed += 1;
                }
            }
            mixed_segments += by_seg.values().filter(|v| v.len() == 2).count();
            // The owner frees every fourth block.
            let mut k = 0;
            live.retain(|b| {
                k += 1;
                if k % 4 == round % 4 {
                    free_block(*b);
                    false
                } else {
                    true
                }
            });
            // Another thread checks and frees every fifth.
            let mut remote = Vec::new();
            let mut k = 0;
            live.retain(|b| {
                k += 1;
                if k % 5 == 1 {
                    remote.push(*b);
                    false
                } else {
                    true
                }
            });
            std::thread::spawn(move || {
                for b in remote {
                    assert!(
                        intact(&b, b.size),
                        "block {:#x} changed before its remote free",
                        b.p
                    );
                    free_block(b);
                }
            })
            .join()
            .unwrap();
            check(&live);
            // Reallocs: the smallest class to the largest and back, and a shrink within
            // the class (in place).
            for (i, b) in live
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| i % 3 == round % 3)
            {
                let to = match b.size {
                    s if s == SIZES[0] => SIZES[2],
                    s if s == SIZES[2] => SIZES[0],
                    s => s - 512 - 8 * (i % 8),
                };
                let keep = b.size.min(to);
                // SAFETY: allocated with this layout; `to` nonzero.
                let q = unsafe {
                    realloc(
                        b.p as *mut u8,
                        Layout::from_size_align(b.size, 8).unwrap(),
                        to,
                    )
                } as usize;
                assert_ne!(q, 0);
                let moved = Live {
                    p: q,
                    size: to,
                    seed: b.seed,
                };
                assert!(
                    intact(&moved, keep),
                    "realloc {:#x} -> {q:#x} lost contents",
                    b.p
                );
                *b = moved;
                fill(b);
            }
            // Shrunk ones back to their class's request size on the next realloc: only the
            // three request sizes and the shrinks of the middle one stay live.
            check(&live);
            tieralloc::collect();
            check(&live);
        }
        for &s in &SIZES[1..] {
            let set = seen.get(&s).cloned().unwrap_or_default();
            assert_eq!(set, BTreeSet::from([2, 8]), "page sizes of {s}-byte blocks");
        }
        assert!(
            rounds_mixed > 0,
            "no class had live blocks on both page sizes at once"
        );
        assert!(
            mixed_segments > 0,
            "no segment held both page sizes of one class"
        );
        for b in live {
            free_block(b);
        }
    })
    .join()
    .unwrap();
    // A new thread's first pages of every medium class, on the slices the exited thread
    // left resident (pooled or adopted): each sparse page books its uncarved tail, which a
    // collection gives back; that must end at the page's own end, not the next pages'.
    std::thread::spawn(|| {
        let mut live = Vec::new();
        for round in 0..3u8 {
            for (i, &s) in ALL_MEDIUM.iter().enumerate() {
                live.push(new_block(s, round * 16 + i as u8 + 1));
            }
        }
        let (by_size, _) = check(&live);
        for s in ALL_MEDIUM {
            assert_eq!(
                by_size[&s],
                BTreeSet::from([2]),
                "a sparse class's pages ({s} B)"
            );
        }
        tieralloc::collect();
        check(&live);
        for b in live {
            free_block(b);
        }
    })
    .join()
    .unwrap();
}

/// One request per medium class (10, 12, 14, 16, 20, ... 64 KiB), 64 bytes short of it.
const ALL_MEDIUM: [usize; 12] = {
    let k = [10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64];
    let mut s = [0; 12];
    let mut i = 0;
    while i < 12 {
        s[i] = (k[i] << 10) - 64;
        i += 1;
    }
    s
};
