//! Fuzz target `bump_cache`: `BumpCache` checkouts, allocations in the borrowed bumps, returns
//! (on the thread that checked out or on another), `into_inner`, thread exit and CPU moves,
//! against a model of the guards, their blocks and the cache's counters.
//!
//! Checked: every block allocated in a bump keeps its contents until its guard is dropped, is
//! aligned and overlaps no other live block; on the fuzzing thread a checkout hits exactly
//! when that thread's list has a bump, and a return keeps the bump exactly when it is no
//! bigger than `max_retained_bytes` and the list has room; the counters always satisfy
//! `checkouts = hits + misses` and `returns = idle + hits + dropped`, with `checkouts` and
//! `returns` counted by the model.

use crate::common::{align_of, check, fill, in_thread, next_op, thread_op, Affinity, Ranges};
use arbitrary::{Arbitrary, Unstructured};
use std::alloc::Layout;
use tieralloc::{BumpCache, BumpGuard};

#[derive(Arbitrary, Debug)]
enum Op {
    Checkout,
    Alloc {
        guard: u8,
        size: u16,
        align: u8,
        seed: u8,
    },
    /// Drops a guard: the bump is reset and goes back to this thread's list (or is dropped).
    Return(u8),
    /// Keeps a guard's bump out of the cache for good.
    IntoInner(u8),
    Check,
    /// Runs the next `n % 32` ops on a new thread that exits at the end; guards it returns go
    /// to its list, guards it checks out come back to the fuzzing thread.
    Thread(u8),
    MoveCpu(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_idle: u8,
    max_retained: u16,
    initial: u16,
    ops: Vec<Op>,
}

struct Block {
    addr: usize,
    len: usize,
    seed: u8,
}

struct Held<'c> {
    guard: BumpGuard<'c>,
    blocks: Vec<Block>,
}

struct Model<'c> {
    cache: &'c BumpCache,
    max_idle: usize,
    max_retained: usize,
    held: Vec<Held<'c>>,
    ranges: Ranges,
    /// Length of the fuzzing thread's list (known exactly: only that thread uses it).
    main_list: usize,
    checkouts: u64,
    returns: u64,
    ops: usize,
}

impl<'c> Model<'c> {
    fn check_blocks(h: &Held<'c>) {
        for b in &h.blocks {
            // SAFETY: a live block of the guard's bump, b.len bytes.
            unsafe { check(b.addr as *const u8, 0, b.len, b.seed, "bump block") };
        }
    }

    fn give_back(&mut self, i: usize, main: bool) {
        let h = self.held.swap_remove(i);
        Self::check_blocks(&h);
        for b in &h.blocks {
            self.ranges.remove(b.addr);
        }
        let before = self.cache.stats();
        let bytes = h.guard.allocated_bytes();
        drop(h.guard);
        self.returns += 1;
        let after = self.cache.stats();
        if main {
            let keep = bytes <= self.max_retained && self.main_list < self.max_idle;
            assert_eq!(
                after.idle,
                before.idle + keep as u64,
                "return of a {bytes}-byte bump (list {}/{}, retain <= {})",
                self.main_list,
                self.max_idle,
                self.max_retained
            );
            self.main_list += keep as usize;
        }
    }

    fn run(&mut self, ops: &[Op], aff: &Affinity, depth: u32) {
        let main = depth == 0;
        let mut next = 0;
        while let Some(op) = next_op(ops, &mut next, &mut self.ops, 400) {
            match *op {
                Op::Checkout => {
                    if self.held.len() < 8 {
                        let before = self.cache.stats();
                        let guard = self.cache.checkout();
                        self.checkouts += 1;
                        let after = self.cache.stats();
                        if main {
                            let hit = self.main_list > 0;
                            assert_eq!(after.hits, before.hits + hit as u64, "hit on checkout");
                            self.main_list -= hit as usize;
                        }
                        self.held.push(Held {
                            guard,
                            blocks: Vec::new(),
                        });
                    }
                }
                Op::Alloc {
                    guard,
                    size,
                    align,
                    seed,
                } => {
                    if self.held.is_empty() {
                        continue;
                    }
                    let i = guard as usize % self.held.len();
                    let align = align_of(align % 200).min(4096);
                    let len = size as usize;
                    let l = Layout::from_size_align(len, align).unwrap();
                    let h = &mut self.held[i];
                    let p = h.guard.alloc_layout(l).as_ptr();
                    assert_eq!(p as usize % align, 0, "bump block misaligned");
                    if len > 0 {
                        self.ranges.insert(p as usize, len, "bump block");
                        // SAFETY: a fresh block of len bytes from the bump.
                        unsafe { fill(p, 0, len, seed) };
                        h.blocks.push(Block {
                            addr: p as usize,
                            len,
                            seed,
                        });
                    }
                }
                Op::Return(g) => {
                    if !self.held.is_empty() {
                        self.give_back(g as usize % self.held.len(), main);
                    }
                }
                Op::IntoInner(g) => {
                    if !self.held.is_empty() {
                        let h = self.held.swap_remove(g as usize % self.held.len());
                        Self::check_blocks(&h);
                        for b in &h.blocks {
                            self.ranges.remove(b.addr);
                        }
                        let before = self.cache.stats();
                        let bump = h.guard.into_inner();
                        drop(bump);
                        assert_eq!(self.cache.stats(), before, "into_inner touched the cache");
                    }
                }
                Op::Check => {
                    for h in &self.held {
                        Self::check_blocks(h);
                    }
                }
                Op::Thread(n) => thread_op(ops, &mut next, n, aff, depth, |inner, aff, d| {
                    self.run(inner, aff, d)
                }),
                Op::MoveCpu(k) => aff.move_to(k),
            }
            let s = self.cache.stats();
            assert_eq!(s.checkouts, self.checkouts, "checkouts");
            assert_eq!(s.hits + s.misses, s.checkouts, "hits + misses");
            assert_eq!(
                s.idle + s.hits + s.dropped,
                self.returns,
                "idle + hits + dropped"
            );
        }
    }
}

/// Decodes `data` and runs it on a new thread; panics on a difference from the model.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    in_thread(|| {
        let max_idle = input.max_idle as usize % 5;
        let max_retained = (input.max_retained as usize % 512) << 10;
        let cache =
            BumpCache::with_limits(max_idle, max_retained, input.initial as usize % (64 << 10));
        let mut m = Model {
            cache: &cache,
            max_idle,
            max_retained,
            held: Vec::new(),
            ranges: Ranges::default(),
            main_list: 0,
            checkouts: 0,
            returns: 0,
            ops: 0,
        };
        let aff = Affinity::save();
        // The first use gives this thread its slot in the cache's per-thread table (the
        // pool's id registry reuses the ids of exited threads): take it before any thread
        // of this input exits, so that its list is this thread's alone.
        m.run(&[Op::Checkout, Op::Return(0)], &aff, 0);
        m.run(&input.ops, &aff, 0);
        while !m.held.is_empty() {
            m.give_back(m.held.len() - 1, true);
        }
    });
}
