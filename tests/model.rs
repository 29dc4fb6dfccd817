//! Model-based test: random sequences of alloc / alloc_zeroed / realloc / dealloc, driven
//! through the `GlobalAlloc` trait of a `TierAlloc` value, checked against a shadow model of
//! the live blocks (pointer, layout, fill byte). After every step: the touched block's
//! contents, alignment and usable size, that no two live blocks overlap, and a sample of every
//! live block's contents; at the end of a case every byte of every live block.
//!
//! tieralloc is also this binary's global allocator, so proptest's own allocations interleave
//! with the model's in the same heaps.

use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout};
use tieralloc::TierAlloc;

#[global_allocator]
static GLOBAL: TierAlloc = TierAlloc::new();

static A: TierAlloc = TierAlloc::new();

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align: usize,
    },
    AllocZeroed {
        size: usize,
        align: usize,
    },
    /// Index into the live set (taken modulo its length).
    Realloc {
        idx: usize,
        new_size: usize,
    },
    Dealloc {
        idx: usize,
    },
}

/// Sizes skewed small: mostly up to 256 B, then up to 64 KiB and 300 KiB, now and then
/// multi-MiB (huge segments). 0 is included: tieralloc serves it as a 1-byte request.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        10 => 0usize..=256,
        5 => 257usize..=(64 << 10),
        3 => (64usize << 10)..=(300 << 10),
        1 => (1usize << 20)..=(6 << 20),
    ]
}

fn align() -> impl Strategy<Value = usize> {
    prop_oneof![
        20 => (0u32..=12).prop_map(|s| 1usize << s),
        1 => (13u32..=21).prop_map(|s| 1usize << s),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (size(), align()).prop_map(|(size, align)| Op::Alloc { size, align }),
        2 => (size(), align()).prop_map(|(size, align)| Op::AllocZeroed { size, align }),
        3 => (any::<usize>(), size()).prop_map(|(idx, new_size)| Op::Realloc { idx, new_size }),
        4 => any::<usize>().prop_map(|idx| Op::Dealloc { idx }),
    ]
}

struct Live {
    p: *mut u8,
    layout: Layout,
    fill: u8,
}

/// Byte `i` of a block with fill byte `f`: varies along the block, so a copy to the wrong
/// offset shows.
#[inline]
fn pat(f: u8, i: usize) -> u8 {
    f ^ (i % 251) as u8
}

fn write_pat(p: *mut u8, from: usize, to: usize, f: u8) {
    // SAFETY: the caller passes a live block of at least `to` bytes.
    let s = unsafe { std::slice::from_raw_parts_mut(p, to) };
    for (i, b) in s.iter_mut().enumerate().skip(from) {
        *b = pat(f, i);
    }
}

fn check_range(b: &Live, from: usize, to: usize, step: usize) -> Result<(), TestCaseError> {
    let len = b.layout.size();
    // SAFETY: b is live with len bytes.
    let s = unsafe { std::slice::from_raw_parts(b.p, len) };
    let mut i = from;
    while i < to.min(len) {
        prop_assert_eq!(
            s[i],
            pat(b.fill, i),
            "block {:p} {:?} byte {}",
            b.p,
            b.layout,
            i
        );
        i += step;
    }
    Ok(())
}

fn check_full(b: &Live) -> Result<(), TestCaseError> {
    check_range(b, 0, b.layout.size(), 1)
}

/// Both ends fully, the middle every 509 bytes.
fn check_sampled(b: &Live) -> Result<(), TestCaseError> {
    let len = b.layout.size();
    check_range(b, 0, len.min(256), 1)?;
    check_range(b, len.saturating_sub(256), len, 1)?;
    check_range(b, 0, len, 509)
}

fn check_block_shape(b: &Live) -> Result<(), TestCaseError> {
    prop_assert!(!b.p.is_null());
    prop_assert_eq!(
        b.p as usize % b.layout.align(),
        0,
        "{:?} at {:p}",
        b.layout,
        b.p
    );
    // SAFETY: b.p is live.
    let usable = unsafe { tieralloc::usable_size(b.p) };
    prop_assert!(
        usable >= b.layout.size(),
        "{:?}: usable {}",
        b.layout,
        usable
    );
    Ok(())
}

fn check_no_overlap(live: &[Live]) -> Result<(), TestCaseError> {
    // Zero-size requests still get a block of their own, so count them as one byte.
    let mut spans: Vec<(usize, usize)> = live
        .iter()
        .map(|b| (b.p as usize, b.p as usize + b.layout.size().max(1)))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        prop_assert!(w[0].1 <= w[1].0, "live blocks overlap: {:x?}", w);
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut live: Vec<Live> = Vec::new();
    let mut next_fill: u8 = 1;
    let result = (|| {
        for op in ops {
            next_fill = next_fill.wrapping_add(37);
            match op {
                Op::Alloc { size, align } | Op::AllocZeroed { size, align } => {
                    let zeroed = matches!(op, Op::AllocZeroed { .. });
                    let layout = Layout::from_size_align(size, align).unwrap();
                    // SAFETY: a valid layout (size 0 is served as a 1-byte request).
                    let p = unsafe {
                        if zeroed {
                            A.alloc_zeroed(layout)
                        } else {
                            A.alloc(layout)
                        }
                    };
                    prop_assert!(!p.is_null(), "{:?} returned null", layout);
                    if zeroed {
                        // SAFETY: p holds size bytes.
                        let s = unsafe { std::slice::from_raw_parts(p, size) };
                        let bad = s.iter().position(|&b| b != 0);
                        prop_assert!(bad.is_none(), "alloc_zeroed {:?}: byte {:?}", layout, bad);
                    }
                    write_pat(p, 0, size, next_fill);
                    live.push(Live {
                        p,
                        layout,
                        fill: next_fill,
                    });
                    check_block_shape(live.last().unwrap())?;
                }
                Op::Realloc { idx, new_size } => {
                    if live.is_empty() {
                        continue;
                    }
                    let i = idx % live.len();
                    let old = &live[i];
                    check_full(old)?;
                    let old_size = old.layout.size();
                    // SAFETY: old.p is live with old.layout; new_size rounded up to the
                    // alignment is far below isize::MAX.
                    let q = unsafe { A.realloc(old.p, old.layout, new_size) };
                    prop_assert!(!q.is_null(), "realloc to {} returned null", new_size);
                    let b = &mut live[i];
                    b.p = q;
                    b.layout = Layout::from_size_align(new_size, b.layout.align()).unwrap();
                    // The common prefix moved with the block; the rest gets the pattern.
                    check_range(b, 0, old_size.min(new_size), 1)?;
                    write_pat(q, old_size.min(new_size), new_size, b.fill);
                    check_block_shape(b)?;
                }
                Op::Dealloc { idx } => {
                    if live.is_empty() {
                        continue;
                    }
                    let b = live.swap_remove(idx % live.len());
                    check_full(&b)?;
                    // SAFETY: b.p is live with b.layout.
                    unsafe { A.dealloc(b.p, b.layout) };
                }
            }
            check_no_overlap(&live)?;
            for b in &live {
                check_sampled(b)?;
            }
        }
        for b in &live {
            check_full(b)?;
        }
        Ok(())
    })();
    // Free whatever is left, also when a check failed, so shrinking starts clean.
    for b in live {
        // SAFETY: b.p is live with b.layout.
        unsafe { A.dealloc(b.p, b.layout) };
    }
    result
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_match_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops)?;
    }
}

/// Long sequences of small blocks only: many pages fill up, go full and come back.
#[test]
fn long_small_only_sequences_match_the_model() {
    let small = prop_oneof![
        6 => (0usize..=512, (0u32..=6).prop_map(|s| 1usize << s))
            .prop_map(|(size, align)| Op::Alloc { size, align }),
        2 => (any::<usize>(), 0usize..=512).prop_map(|(idx, new_size)| Op::Realloc { idx, new_size }),
        4 => any::<usize>().prop_map(|idx| Op::Dealloc { idx }),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(small, 500..3000), run)
        .unwrap();
}
