//! Fuzz target `arena`: `Arena<T, A>` (typed, runs Drop) against a shadow model of the values
//! in it, in allocation order, for three element sizes and five kinds of arena (plain, with
//! capacity, with a byte limit, on `Placed::node(0)`, limited on `Placed::local()`).
//!
//! Checked: each value keeps its contents (and the heap buffer it owns) until the arena drops
//! it; values are aligned and never overlap; `len`, `stats().bytes_used` and `iter_mut` agree
//! with the model (same values, oldest first); `reset` drops exactly the live values, each once,
//! oldest first, keeps every chunk and refills from the first one; `clear_and_shrink` gives
//! every chunk back; `drain_to_vec` moves the values out without dropping them; a limited arena
//! never holds more than its limit, and `try_alloc` fails only when one more value would pass
//! it, handing the value back; tier moves keep every value in place. `Thread` runs ops with
//! the arena moved to a new thread (Arena is Send), which exits; `MoveCpu` changes the
//! thread's CPU (its node under simulated nodes).

use crate::common::{in_thread, next_op, thread_op, Affinity, Ranges};
use allocator_api2::alloc::{Allocator, Global};
use arbitrary::{Arbitrary, Unstructured};
use std::sync::{Arc, Mutex};
use tieralloc::{Arena, ArenaError, Placed};

type Log = Arc<Mutex<Vec<u64>>>;

/// A value that owns heap memory and records its drop.
struct Item<const N: usize> {
    id: u64,
    bytes: [u8; N],
    owned: Vec<u8>,
    log: Log,
}

impl<const N: usize> Drop for Item<N> {
    fn drop(&mut self) {
        self.log.lock().unwrap().push(self.id);
    }
}

fn byte(seed: u8, i: usize) -> u8 {
    crate::common::pat(seed, i)
}

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        seed: u8,
        owned: u8,
    },
    TryAllocWith {
        seed: u8,
        owned: u8,
    },
    Mutate {
        idx: u16,
        seed: u8,
    },
    Check,
    Reset,
    ClearAndShrink,
    Drain,
    Demote,
    Promote,
    MoveToTier(u8),
    /// Runs the next `n % 32` ops with the arena on a new thread, which exits at the end.
    Thread(u8),
    MoveCpu(u8),
    /// Drops the arena (and every value in it) and makes a new one of the same kind.
    Recreate,
}

#[derive(Arbitrary, Debug)]
struct Input {
    size: u8,
    kind: u8,
    param: u16,
    ops: Vec<Op>,
}

struct Live {
    addr: usize,
    id: u64,
    seed: u8,
    owned: u8,
}

struct Model<const N: usize> {
    live: Vec<Live>,
    ranges: Ranges,
    next_id: u64,
    /// Where the first value of chunk 0 went, and whether the next value must go there.
    chunk0: Option<usize>,
    refill: bool,
    limit: Option<usize>,
    log: Log,
    ops: usize,
}

impl<const N: usize> Model<N> {
    fn item(&mut self, seed: u8, owned: u8) -> Item<N> {
        self.next_id += 1;
        Item {
            id: self.next_id,
            bytes: std::array::from_fn(|i| byte(seed, i)),
            owned: (0..owned as usize * 8)
                .map(|i| byte(seed ^ 0x5a, i))
                .collect(),
            log: self.log.clone(),
        }
    }

    fn check_one(l: &Live, it: &Item<N>) {
        assert_eq!(it.id, l.id, "value at {:#x} has another id", l.addr);
        for (i, b) in it.bytes.iter().enumerate() {
            assert_eq!(*b, byte(l.seed, i), "value {} byte {i} changed", l.id);
        }
        assert_eq!(
            it.owned.len(),
            l.owned as usize * 8,
            "value {} owned length",
            l.id
        );
        for (i, b) in it.owned.iter().enumerate() {
            assert_eq!(
                *b,
                byte(l.seed ^ 0x5a, i),
                "value {} owned byte {i} changed",
                l.id
            );
        }
    }

    fn placed<A: Allocator + Clone>(&mut self, arena: &Arena<Item<N>, A>, p: *mut Item<N>) {
        let addr = p as usize;
        assert_eq!(
            addr % std::mem::align_of::<Item<N>>(),
            0,
            "value misaligned"
        );
        if self.refill {
            self.refill = false;
            if let Some(c) = self.chunk0 {
                assert_eq!(
                    addr, c,
                    "after a reset the first value is not at chunk 0's start"
                );
            }
        }
        if self.chunk0.is_none() && self.live.is_empty() && arena.stats().chunks == 1 {
            self.chunk0 = Some(addr);
        }
        self.ranges
            .insert(addr, std::mem::size_of::<Item<N>>(), "arena value");
    }

    fn drops(&self) -> Vec<u64> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    fn check_all<A: Allocator + Clone>(&self, arena: &mut Arena<Item<N>, A>) {
        assert_eq!(arena.len(), self.live.len(), "len");
        let st = arena.stats();
        assert_eq!(
            st.bytes_used,
            self.live.len() * std::mem::size_of::<Item<N>>()
        );
        if let Some(limit) = self.limit {
            assert!(
                st.bytes_held <= limit,
                "holds {} > limit {limit}",
                st.bytes_held
            );
        }
        let mut n = 0;
        for (it, l) in arena.iter_mut().zip(&self.live) {
            assert_eq!(
                it as *mut Item<N> as usize, l.addr,
                "iter_mut order or address"
            );
            Self::check_one(l, it);
            n += 1;
        }
        assert_eq!(n, self.live.len(), "iter_mut length");
    }

    fn rewound(&mut self) {
        self.live.clear();
        self.ranges = Ranges::default();
        self.refill = true;
    }

    fn run<A: Allocator + Clone + Send>(
        &mut self,
        arena: &mut Arena<Item<N>, A>,
        make: &(dyn Fn() -> Arena<Item<N>, A> + Sync),
        ops: &[Op],
        aff: &Affinity,
        depth: u32,
    ) {
        let mut next = 0;
        while let Some(op) = next_op(ops, &mut next, &mut self.ops, 400) {
            let mut expect_drops = Vec::new();
            match *op {
                Op::Alloc { seed, owned } | Op::TryAllocWith { seed, owned } => {
                    let it = self.item(seed, owned);
                    let id = it.id;
                    let held = arena.stats().bytes_held;
                    let r = if matches!(op, Op::Alloc { .. }) {
                        arena.try_alloc(it).map_err(|e| {
                            let err = e.error;
                            let v = e.into_inner();
                            assert_eq!(v.id, id, "try_alloc handed back another value");
                            drop(v);
                            err
                        })
                    } else {
                        let mut made = false;
                        let r = arena.try_alloc_with(|| {
                            made = true;
                            it
                        });
                        if r.is_err() {
                            assert!(!made, "try_alloc_with ran f although it had no room");
                        }
                        r
                    };
                    match r {
                        Ok(v) => {
                            let p = v as *mut Item<N>;
                            self.placed(arena, p);
                            self.live.push(Live {
                                addr: p as usize,
                                id,
                                seed,
                                owned,
                            });
                        }
                        Err(ArenaError::LimitExceeded {
                            limit,
                            held: h,
                            requested,
                        }) => {
                            assert_eq!(Some(limit), self.limit, "limit error without limit");
                            assert_eq!(h, held, "limit error: held");
                            assert_eq!(requested, std::mem::size_of::<Item<N>>());
                            assert!(
                                held + requested > limit,
                                "refused although {held} + {requested} <= {limit}"
                            );
                            expect_drops.push(id);
                        }
                        Err(e) => panic!("arena allocation failed: {e}"),
                    }
                }
                Op::Mutate { idx, seed } => {
                    if !self.live.is_empty() {
                        let i = idx as usize % self.live.len();
                        let l = &mut self.live[i];
                        // SAFETY: a live value of the arena; the arena does not touch it and
                        // no other reference to it exists while this one is used.
                        let it = unsafe { &mut *(l.addr as *mut Item<N>) };
                        Self::check_one(l, it);
                        it.bytes = std::array::from_fn(|i| byte(seed, i));
                        it.owned = (0..l.owned as usize * 8)
                            .map(|i| byte(seed ^ 0x5a, i))
                            .collect();
                        l.seed = seed;
                    }
                }
                Op::Check => self.check_all(arena),
                Op::Reset => {
                    let held = arena.stats();
                    expect_drops = self.live.iter().map(|l| l.id).collect();
                    arena.reset();
                    let st = arena.stats();
                    assert_eq!((st.bytes_held, st.chunks), (held.bytes_held, held.chunks));
                    assert_eq!(st.resets, held.resets + 1);
                    self.rewound();
                }
                Op::ClearAndShrink => {
                    expect_drops = self.live.iter().map(|l| l.id).collect();
                    arena.clear_and_shrink();
                    let st = arena.stats();
                    assert_eq!((st.bytes_held, st.chunks, st.bytes_used), (0, 0, 0));
                    self.rewound();
                    self.chunk0 = None;
                }
                Op::Drain => {
                    let v = arena.drain_to_vec();
                    assert!(self.drops().is_empty(), "drain_to_vec dropped values");
                    assert_eq!(v.len(), self.live.len());
                    for (it, l) in v.iter().zip(&self.live) {
                        Self::check_one(l, it);
                    }
                    expect_drops = self.live.iter().map(|l| l.id).collect();
                    drop(v);
                    self.rewound();
                }
                Op::Demote | Op::Promote | Op::MoveToTier(_) => {
                    // Only where tiers exist does anything move; values must stay put either way.
                    let _ = match *op {
                        Op::Demote => arena.demote(),
                        Op::Promote => arena.promote(),
                        Op::MoveToTier(t) => arena.move_to_tier(t as usize % 3),
                        _ => unreachable!(),
                    };
                    self.check_all(arena);
                }
                Op::Thread(n) => thread_op(ops, &mut next, n, aff, depth, |inner, aff, d| {
                    self.run(arena, make, inner, aff, d)
                }),
                Op::MoveCpu(k) => aff.move_to(k),
                Op::Recreate => {
                    expect_drops = self.live.iter().map(|l| l.id).collect();
                    // Drop order of an arena's values is not promised: compare as sets.
                    expect_drops.sort_unstable();
                    *arena = make();
                    let mut got = self.drops();
                    got.sort_unstable();
                    assert_eq!(got, expect_drops, "dropping the arena dropped other values");
                    expect_drops.clear();
                    self.rewound();
                    self.refill = false;
                    self.chunk0 = None;
                }
            }
            assert_eq!(self.drops(), expect_drops, "values dropped by {op:?}");
        }
    }
}

fn run_sized<const N: usize>(input: &Input) {
    let p = input.param as usize;
    let limit = std::mem::size_of::<Item<N>>() * (p % 300 + 1) + p % 97;
    let log: Log = Arc::default();
    match input.kind % 5 {
        0 => go::<N, Global>(input, None, &log, &|| Arena::new_in(Global)),
        1 => go::<N, Global>(input, None, &log, &|| {
            Arena::with_capacity_in(p % 500, Global)
        }),
        2 => go::<N, Global>(input, Some(limit), &log, &|| {
            Arena::with_limit_in(limit, Global)
        }),
        3 => {
            let node = Placed::node(0).expect("node 0");
            go::<N, Placed>(input, None, &log, &|| Arena::new_in(node))
        }
        _ => {
            let local = Placed::local().expect("local placement");
            go::<N, Placed>(input, Some(limit), &log, &|| {
                Arena::with_limit_in(limit, local)
            })
        }
    }
}

fn go<const N: usize, A: Allocator + Clone + Send>(
    input: &Input,
    limit: Option<usize>,
    log: &Log,
    make: &(dyn Fn() -> Arena<Item<N>, A> + Sync),
) {
    let mut m = Model::<N> {
        live: Vec::new(),
        ranges: Ranges::default(),
        next_id: 0,
        chunk0: None,
        refill: false,
        limit,
        log: log.clone(),
        ops: 0,
    };
    let mut arena = make();
    let aff = Affinity::save();
    m.run(&mut arena, make, &input.ops, &aff, 0);
    m.check_all(&mut arena);
    let mut want: Vec<u64> = m.live.iter().map(|l| l.id).collect();
    drop(arena);
    let mut got = m.drops();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "dropping the arena");
}

/// Decodes `data` and runs it on a new thread; panics on a difference from the model.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    in_thread(|| match input.size % 3 {
        0 => run_sized::<0>(&input),
        1 => run_sized::<200>(&input),
        _ => run_sized::<4000>(&input),
    });
}
