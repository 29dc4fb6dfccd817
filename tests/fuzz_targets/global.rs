//! Fuzz target `tieralloc`: sequences of alloc, alloc_zeroed, realloc, dealloc, collect,
//! thread exit and node moves on `TierAlloc` (its `GlobalAlloc` methods called directly),
//! against a shadow model of the live blocks (address, size, alignment, pattern seed).
//!
//! Checked after every step: the returned block is non-null and aligned, `owns` it, its usable
//! size covers the request, it overlaps no live block, a zeroed block is all zero, a realloc
//! kept the old contents; a freed block still held its pattern (nobody else wrote it).
//! Alignments above 2 MiB must be refused with null. A `Thread` op runs its ops on a new
//! thread, which may free or realloc the main thread's blocks (remote frees) and exits with its
//! own blocks still live (the main thread frees them later, from abandoned pages). Each input
//! runs on a thread of its own (its "main" thread), so it starts from a fresh thread heap.

use crate::common::{
    align_of, check, check_zero, in_thread, next_op, size_of, thread_op, Affinity, Live, LiveBlocks,
};
use arbitrary::{Arbitrary, Unstructured};
use std::alloc::{GlobalAlloc, Layout};
use tieralloc::TierAlloc;

static A: TierAlloc = TierAlloc::new();

/// Most live bytes at once (so that a long input does not exhaust the machine).
const MAX_LIVE_BYTES: usize = 48 << 20;
/// Most live blocks at once.
const MAX_LIVE: usize = 512;
/// Most operations run for one input.
const MAX_OPS: usize = 600;

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        kind: u8,
        raw: u32,
        align: u8,
        seed: u8,
    },
    AllocZeroed {
        kind: u8,
        raw: u32,
        align: u8,
        seed: u8,
    },
    Realloc {
        idx: u16,
        kind: u8,
        raw: u32,
        seed: u8,
    },
    Free {
        idx: u16,
    },
    /// Frees the most recent `n` blocks (LIFO), the common pattern of real programs.
    FreeLast {
        n: u8,
    },
    Collect,
    /// Runs the next `n % 32` ops on a new thread, which exits at the end.
    Thread(u8),
    /// Pins the running thread to another CPU (another simulated node).
    MoveCpu(u8),
    /// Checks every byte of every live block.
    CheckAll,
}

#[derive(Default)]
struct Model {
    /// Each block with its alignment.
    live: LiveBlocks<usize>,
    ops: usize,
}

impl Model {
    fn add(&mut self, p: *mut u8, size: usize, align: usize, seed: u8, zeroed: bool) {
        let what = "alloc";
        assert!(
            !p.is_null(),
            "{what}: null for {size} bytes aligned {align}"
        );
        assert_eq!(
            p as usize % align,
            0,
            "{what}: {p:p} not aligned to {align}"
        );
        assert!(tieralloc::owns(p), "{what}: owns({p:p}) is false");
        // SAFETY: p is a live block of ours.
        let usable = unsafe { tieralloc::usable_size(p) };
        assert!(usable >= size, "{what}: usable size {usable} < {size}");
        if zeroed {
            // SAFETY: the block has `size` bytes.
            unsafe { check_zero(p, size, "alloc_zeroed") };
        }
        // SAFETY: the block has `size` bytes and is ours alone until it is freed.
        unsafe { self.live.add(p, size, seed, align, what) };
    }

    fn take(&mut self, i: usize) -> Live<usize> {
        self.live.take(i, "free")
    }

    fn free(&mut self, i: usize) {
        let b = self.take(i);
        // SAFETY: a live block allocated with this layout, freed once.
        unsafe { A.dealloc(b.addr as *mut u8, layout(b.size, b.extra)) };
    }

    fn alloc(&mut self, size: usize, align: usize, seed: u8, zeroed: bool) {
        let l = layout(size, align);
        if align > 2 << 20 {
            // SAFETY: a valid layout.
            let p = unsafe {
                if zeroed {
                    A.alloc_zeroed(l)
                } else {
                    A.alloc(l)
                }
            };
            assert!(p.is_null(), "alignment {align} > 2 MiB served at {p:p}");
            return;
        }
        if self.live.bytes() + size > MAX_LIVE_BYTES || self.live.len() >= MAX_LIVE {
            return;
        }
        // SAFETY: a valid layout (size 0 is served as 1 byte by tieralloc).
        let p = unsafe {
            if zeroed {
                A.alloc_zeroed(l)
            } else {
                A.alloc(l)
            }
        };
        self.add(p, size, align, seed, zeroed);
    }

    fn run(&mut self, ops: &[Op], aff: &Affinity, depth: u32) {
        let mut next = 0;
        while let Some(op) = next_op(ops, &mut next, &mut self.ops, MAX_OPS) {
            match *op {
                Op::Alloc {
                    kind,
                    raw,
                    align,
                    seed,
                } => self.alloc(size_of(kind, raw, usize::MAX), align_of(align), seed, false),
                Op::AllocZeroed {
                    kind,
                    raw,
                    align,
                    seed,
                } => self.alloc(size_of(kind, raw, usize::MAX), align_of(align), seed, true),
                Op::Realloc {
                    idx,
                    kind,
                    raw,
                    seed,
                } => {
                    if self.live.is_empty() {
                        continue;
                    }
                    let i = idx as usize % self.live.len();
                    let new = size_of(kind, raw, usize::MAX).max(1);
                    if self.live.bytes() + new > MAX_LIVE_BYTES {
                        continue;
                    }
                    let b = self.take(i);
                    // SAFETY: a live block with this layout; new > 0 and far below isize::MAX.
                    let q = unsafe { A.realloc(b.addr as *mut u8, layout(b.size, b.extra), new) };
                    assert!(!q.is_null(), "realloc {} -> {new} failed", b.size);
                    let keep = b.size.min(new);
                    // SAFETY: q has at least `new` >= keep bytes.
                    unsafe { check(q, 0, keep, b.seed, "realloc kept") };
                    // Re-pattern with the new seed below (add fills all of it).
                    self.add(q, new, b.extra, seed, false);
                }
                Op::Free { idx } => {
                    if !self.live.is_empty() {
                        self.free(idx as usize % self.live.len());
                    }
                }
                Op::FreeLast { n } => {
                    for _ in 0..n % 16 {
                        if self.live.is_empty() {
                            break;
                        }
                        self.free(self.live.len() - 1);
                    }
                }
                Op::Collect => tieralloc::collect(),
                Op::Thread(n) => thread_op(ops, &mut next, n, aff, depth, |inner, aff, d| {
                    self.run(inner, aff, d)
                }),
                Op::MoveCpu(k) => aff.move_to(k),
                Op::CheckAll => {
                    for b in &self.live {
                        // SAFETY: a live block of b.size bytes.
                        unsafe { check(b.addr as *const u8, 0, b.size, b.seed, "check") };
                    }
                }
            }
        }
    }
}

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).expect("sizes and alignments here form valid layouts")
}

/// Decodes `data` into operations and runs them against the model on a new thread (so that
/// every input starts from a fresh thread heap and a failure reproduces from its input alone);
/// panics on a difference.
pub fn run(data: &[u8]) {
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    in_thread(|| {
        let aff = Affinity::save();
        let mut m = Model::default();
        m.run(&ops, &aff, 0);
        while !m.live.is_empty() {
            m.free(m.live.len() - 1);
        }
        assert_eq!(m.live.ranges(), 0);
    });
}
