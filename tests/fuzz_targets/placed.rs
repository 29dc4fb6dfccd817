//! Fuzz target `placed`: `Placed` handles (`node(0)`, `local()`, `tier(0)`, `far()`,
//! `node(1)`, plain and weighted interleave, `preferred()` and `bound()`) used as
//! allocator-api2 allocators: allocate, allocate_zeroed, grow, grow_zeroed, shrink (through
//! any handle of the same family), deallocate (through any handle, on any thread), thread exit
//! and CPU moves, against a shadow model of the live blocks.
//!
//! Checked: every block is aligned, at least as long as asked, overlaps no live block, is zero
//! when asked, keeps its contents through grow and shrink (a grown zeroed tail is zero) and
//! until it is freed; alignments above 2 MiB are refused by the node kinds (null, not a
//! misaligned block). Handles that this machine cannot make (a second node on one node) are
//! skipped.

use crate::common::{
    align_of, check, check_zero, in_thread, next_op, size_of, thread_op, Affinity, Live, LiveBlocks,
};
use allocator_api2::alloc::Allocator;
use arbitrary::{Arbitrary, Unstructured};
use std::alloc::Layout;
use std::ptr::NonNull;
use tieralloc::Placed;

const MAX_LIVE_BYTES: usize = 48 << 20;

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        handle: u8,
        kind: u8,
        raw: u32,
        align: u8,
        seed: u8,
        zeroed: bool,
    },
    Grow {
        idx: u16,
        kind: u8,
        raw: u32,
        seed: u8,
        zeroed: bool,
    },
    Shrink {
        idx: u16,
        raw: u32,
        seed: u8,
    },
    Free {
        idx: u16,
        via: u8,
    },
    CheckAll,
    Collect,
    Thread(u8),
    MoveCpu(u8),
}

/// What a block needs to be freed: its alignment, and whether its handle was one of the
/// node kinds (else a mapping of its own: interleave, `preferred()`, `bound()`).
struct Kind {
    align: usize,
    node_kind: bool,
}

struct Model {
    /// (handle, is a node kind)
    handles: Vec<(Placed, bool)>,
    live: LiveBlocks<Kind>,
    ops: usize,
}

impl Model {
    fn handle(&self, k: u8, node_kind: bool) -> Placed {
        let same: Vec<&(Placed, bool)> = self.handles.iter().filter(|h| h.1 == node_kind).collect();
        same[k as usize % same.len()].0
    }

    fn add(&mut self, p: NonNull<[u8]>, size: usize, align: usize, seed: u8, node_kind: bool) {
        let a = p.as_ptr() as *mut u8;
        assert!(p.len() >= size, "block of {} bytes for {size}", p.len());
        assert_eq!(a as usize % align, 0, "{a:p} not aligned to {align}");
        let kind = Kind { align, node_kind };
        // SAFETY: a block of at least `size` bytes, ours alone until it is freed.
        unsafe { self.live.add(a, size, seed, kind, "placed block") };
    }

    fn take(&mut self, i: usize) -> Live<Kind> {
        self.live.take(i, "placed free")
    }

    fn run(&mut self, ops: &[Op], aff: &Affinity, depth: u32) {
        let mut next = 0;
        while let Some(op) = next_op(ops, &mut next, &mut self.ops, 400) {
            match *op {
                Op::Alloc {
                    handle,
                    kind,
                    raw,
                    align,
                    seed,
                    zeroed,
                } => {
                    let (h, node_kind) = self.handles[handle as usize % self.handles.len()];
                    let size = size_of(kind, raw, 8 << 20);
                    let align = align_of(align);
                    if self.live.bytes() + size > MAX_LIVE_BYTES || self.live.len() > 300 {
                        continue;
                    }
                    let l = Layout::from_size_align(size, align).unwrap();
                    let r = if zeroed {
                        h.allocate_zeroed(l)
                    } else {
                        h.allocate(l)
                    };
                    match r {
                        Ok(p) => {
                            if zeroed {
                                // SAFETY: a fresh block of at least `size` bytes.
                                unsafe { check_zero(p.as_ptr() as *const u8, size, "zeroed") };
                            }
                            self.add(p, size, align, seed, node_kind);
                        }
                        Err(_) => assert!(
                            align > 2 << 20 && node_kind,
                            "{h:?} refused {size} bytes aligned {align}"
                        ),
                    }
                }
                Op::Grow {
                    idx,
                    kind,
                    raw,
                    seed,
                    zeroed,
                } => {
                    if self.live.is_empty() {
                        continue;
                    }
                    let i = idx as usize % self.live.len();
                    let add = size_of(kind, raw, 4 << 20);
                    if self.live.bytes() + add > MAX_LIVE_BYTES {
                        continue;
                    }
                    let b = self.take(i);
                    let h = self.handle(seed, b.extra.node_kind);
                    let old = Layout::from_size_align(b.size, b.extra.align).unwrap();
                    let new = Layout::from_size_align(b.size + add, b.extra.align).unwrap();
                    let p = NonNull::new(b.addr as *mut u8).unwrap();
                    // SAFETY: a live block of this handle's kind with layout `old`; new >= old.
                    let r = unsafe {
                        if zeroed {
                            h.grow_zeroed(p, old, new)
                        } else {
                            h.grow(p, old, new)
                        }
                    };
                    let Ok(q) = r else {
                        // Only a node kind may refuse, and only an alignment above 2 MiB (a
                        // zero-sized block had one); the old block stays as it was.
                        assert!(
                            b.extra.node_kind && b.extra.align > 2 << 20,
                            "{h:?}: grow refused"
                        );
                        let old = NonNull::slice_from_raw_parts(p, b.size);
                        self.add(old, b.size, b.extra.align, b.seed, true);
                        continue;
                    };
                    let a = q.as_ptr() as *mut u8;
                    // SAFETY: q holds at least new.size() bytes.
                    unsafe {
                        check(a, 0, b.size, b.seed, "grow kept");
                        if zeroed {
                            check_zero(a.add(b.size), add, "grow_zeroed tail");
                        }
                    }
                    self.add(q, new.size(), b.extra.align, seed, b.extra.node_kind);
                }
                Op::Shrink { idx, raw, seed } => {
                    if self.live.is_empty() {
                        continue;
                    }
                    let i = idx as usize % self.live.len();
                    let b = self.take(i);
                    let h = self.handle(seed, b.extra.node_kind);
                    let size = if b.size == 0 {
                        0
                    } else {
                        raw as usize % (b.size + 1)
                    };
                    let old = Layout::from_size_align(b.size, b.extra.align).unwrap();
                    let new = Layout::from_size_align(size, b.extra.align).unwrap();
                    let p = NonNull::new(b.addr as *mut u8).unwrap();
                    // SAFETY: a live block of this handle's kind with layout `old`; new <= old.
                    let q = unsafe { h.shrink(p, old, new) }.expect("shrink");
                    // SAFETY: q holds at least `size` bytes.
                    unsafe { check(q.as_ptr() as *const u8, 0, size, b.seed, "shrink kept") };
                    self.add(q, size, b.extra.align, seed, b.extra.node_kind);
                }
                Op::Free { idx, via } => {
                    if !self.live.is_empty() {
                        let b = self.take(idx as usize % self.live.len());
                        // Any handle frees any block (review rev27).
                        let h = self.handles[via as usize % self.handles.len()].0;
                        let l = Layout::from_size_align(b.size, b.extra.align).unwrap();
                        // SAFETY: a live `Placed` block with this layout.
                        unsafe { h.deallocate(NonNull::new(b.addr as *mut u8).unwrap(), l) };
                    }
                }
                Op::CheckAll => {
                    for b in &self.live {
                        // SAFETY: a live block of b.size bytes.
                        unsafe { check(b.addr as *const u8, 0, b.size, b.seed, "check") };
                    }
                }
                Op::Collect => tieralloc::collect(),
                Op::Thread(n) => thread_op(ops, &mut next, n, aff, depth, |inner, aff, d| {
                    self.run(inner, aff, d)
                }),
                Op::MoveCpu(k) => aff.move_to(k),
            }
        }
    }
}

/// Decodes `data` and runs it on a new thread; panics on a difference from the model.
pub fn run(data: &[u8]) {
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    in_thread(|| {
        let mut handles = Vec::new();
        let node = [
            Placed::node(0),
            Placed::local(),
            Placed::tier(0),
            Placed::far(),
            Placed::node(1),
        ];
        handles.extend(node.into_iter().flatten().map(|h| (h, true)));
        let maps = [
            Placed::interleave(&[0]),
            Placed::interleave(&[0, 1]),
            Placed::interleave_weighted(&[(0, 2)]),
            Placed::node(0).map(Placed::preferred),
            Placed::node(0).map(Placed::bound),
        ];
        handles.extend(maps.into_iter().flatten().map(|h| (h, false)));
        assert!(handles.iter().any(|h| h.1) && handles.iter().any(|h| !h.1));
        let mut m = Model {
            handles,
            // A zero-size block may be a dangling pointer shared with others.
            live: LiveBlocks::sharing_empty(),
            ops: 0,
        };
        let aff = Affinity::save();
        m.run(&ops, &aff, 0);
        while !m.live.is_empty() {
            let b = m.take(m.live.len() - 1);
            let h = m.handle(0, b.extra.node_kind);
            let l = Layout::from_size_align(b.size, b.extra.align).unwrap();
            // SAFETY: a live block of this handle's kind with this layout.
            unsafe { h.deallocate(NonNull::new(b.addr as *mut u8).unwrap(), l) };
        }
    });
}
