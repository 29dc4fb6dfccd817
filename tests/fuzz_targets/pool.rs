//! Fuzz target `pool`: `Pool<T>` gets (borrowed and owned guards, waiting and `try_get`),
//! returns on the getting thread or another, `into_inner`, thread exit and CPU moves, with and
//! without a reset hook and with `max_idle`, `max_live` and `thread_cache` drawn from the
//! input, against a model of every object the pool made.
//!
//! Checked: an object handed out is either new (made just now: `created` went up by one) or
//! one that was returned earlier and not destroyed since; it is never out twice; it comes back
//! reset (with a hook) or exactly as it was returned (without one); `try_get` fails exactly
//! when `max_live` objects are out; the counters agree with the model (`created`, `out`,
//! `idle <= max_idle`); an object the pool drops is one that was idle (returned).

use crate::common::{in_thread, next_op, pat, thread_op, Affinity};
use arbitrary::{Arbitrary, Unstructured};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tieralloc::{OwnedPoolGuard, Pool, PoolError, PoolGuard};

type Log = Arc<Mutex<Vec<u64>>>;

struct Obj {
    id: u64,
    data: Vec<u8>,
    log: Log,
}

impl Drop for Obj {
    fn drop(&mut self) {
        self.log.lock().unwrap().push(self.id);
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Get,
    TryGet,
    GetOwned,
    /// Drops a guard: the object goes back to the pool.
    Return(u8),
    IntoInner(u8),
    Write {
        guard: u8,
        seed: u8,
        len: u8,
    },
    Check,
    Thread(u8),
    MoveCpu(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    reset: bool,
    max_idle: u8,
    max_live: u8,
    thread_cache: u8,
    ops: Vec<Op>,
}

/// What an object holds: its data's seed and length.
type Content = (u8, u8);

enum Guard<'p> {
    Borrowed(PoolGuard<'p, Obj>),
    Owned(OwnedPoolGuard<Obj>),
}

impl Guard<'_> {
    fn obj(&mut self) -> &mut Obj {
        match self {
            Guard::Borrowed(g) => g,
            Guard::Owned(g) => g,
        }
    }
}

struct Model<'p> {
    pool: &'p Arc<Pool<Obj>>,
    made: &'p AtomicU64,
    log: Log,
    reset: bool,
    max_live: Option<usize>,
    max_idle: usize,
    out: Vec<(u64, Guard<'p>)>,
    /// Contents of each object out, and of each object returned (idle or since dropped).
    content: BTreeMap<u64, Content>,
    idle: BTreeSet<u64>,
    destroyed: BTreeSet<u64>,
    /// Objects taken out of the pool for good.
    kept: u64,
    ops: usize,
}

fn data(c: Content) -> Vec<u8> {
    (0..c.1 as usize).map(|i| pat(c.0, i)).collect()
}

impl<'p> Model<'p> {
    fn destroyed_now(&mut self) {
        for id in std::mem::take(&mut *self.log.lock().unwrap()) {
            assert!(
                self.idle.remove(&id),
                "the pool dropped object {id}, which was not idle"
            );
            assert!(self.destroyed.insert(id));
        }
    }

    fn got(&mut self, mut g: Guard<'p>, made_before: u64) {
        let id = g.obj().id;
        let made = self.made.load(Relaxed);
        assert!(
            !self.out.iter().any(|(o, _)| *o == id),
            "object {id} handed out twice"
        );
        assert!(
            !self.destroyed.contains(&id),
            "object {id} handed out after its drop"
        );
        if made == made_before + 1 {
            assert_eq!(id, made, "a new object was made but another was handed out");
            assert!(g.obj().data.is_empty());
            self.content.insert(id, (0, 0));
        } else {
            assert_eq!(made, made_before, "more than one object made for one get");
            assert!(self.idle.remove(&id), "object {id} handed out but not idle");
            let c = self.content[&id];
            if self.reset {
                assert!(g.obj().data.is_empty(), "object {id} not reset");
                self.content.insert(id, (0, 0));
            } else {
                assert_eq!(g.obj().data, data(c), "object {id} changed while idle");
            }
        }
        self.out.push((id, g));
    }

    fn give_back(&mut self, i: usize) {
        let (id, mut g) = self.out.swap_remove(i);
        assert_eq!(
            g.obj().data,
            data(self.content[&id]),
            "object {id} changed while out"
        );
        if self.reset {
            self.content.insert(id, (0, 0));
        }
        self.idle.insert(id);
        drop(g);
        self.destroyed_now();
    }

    fn run(&mut self, ops: &[Op], aff: &Affinity, depth: u32) {
        let mut next = 0;
        while let Some(op) = next_op(ops, &mut next, &mut self.ops, 400) {
            match *op {
                Op::Get | Op::GetOwned | Op::TryGet => {
                    let full = self.max_live.is_some_and(|m| self.out.len() >= m);
                    if full && !matches!(op, Op::TryGet) {
                        continue; // `get` would wait for a return that never comes
                    }
                    if self.out.len() >= 64 {
                        continue;
                    }
                    let before = self.made.load(Relaxed);
                    let g = match op {
                        Op::Get => Guard::Borrowed(self.pool.get()),
                        Op::GetOwned => Guard::Owned(self.pool.get_owned()),
                        _ => match self.pool.try_get() {
                            Ok(g) => {
                                assert!(!full, "try_get succeeded with max_live objects out");
                                Guard::Borrowed(g)
                            }
                            Err(PoolError::Exhausted { max_live }) => {
                                assert!(full, "try_get refused with {} out", self.out.len());
                                assert_eq!(Some(max_live), self.max_live);
                                continue;
                            }
                        },
                    };
                    self.got(g, before);
                }
                Op::Return(i) => {
                    if !self.out.is_empty() {
                        self.give_back(i as usize % self.out.len());
                    }
                }
                Op::IntoInner(i) => {
                    if !self.out.is_empty() {
                        let (id, g) = self.out.swap_remove(i as usize % self.out.len());
                        let obj = match g {
                            Guard::Borrowed(g) => g.into_inner(),
                            Guard::Owned(g) => g.into_inner(),
                        };
                        assert_eq!(obj.id, id);
                        assert_eq!(obj.data, data(self.content[&id]));
                        self.kept += 1;
                        self.idle.insert(id); // its drop below is expected
                        drop(obj);
                        self.destroyed_now();
                    }
                }
                Op::Write { guard, seed, len } => {
                    if !self.out.is_empty() {
                        let i = guard as usize % self.out.len();
                        let (id, g) = &mut self.out[i];
                        g.obj().data = data((seed, len));
                        self.content.insert(*id, (seed, len));
                    }
                }
                Op::Check => {
                    for (id, g) in &mut self.out {
                        assert_eq!(g.obj().data, data(self.content[id]), "object {id}");
                    }
                }
                Op::Thread(n) => thread_op(ops, &mut next, n, aff, depth, |inner, aff, d| {
                    self.run(inner, aff, d)
                }),
                Op::MoveCpu(k) => aff.move_to(k),
            }
            let s = self.pool.stats();
            assert_eq!(s.created, self.made.load(Relaxed), "created");
            assert_eq!(s.misses, s.created);
            assert_eq!(s.out, self.out.len() as u64, "out ({s:?})");
            assert!(s.idle <= self.max_idle as u64, "idle {} > max_idle", s.idle);
            assert_eq!(s.idle, self.idle.len() as u64, "idle ({s:?})");
            assert_eq!(
                s.dropped,
                self.destroyed.len() as u64,
                "dropped ({s:?}, kept {})",
                self.kept
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
        let made = Arc::new(AtomicU64::new(0));
        let log: Log = Arc::default();
        let (m2, l2) = (made.clone(), log.clone());
        let mut b = Pool::builder(move || Obj {
            id: m2.fetch_add(1, Relaxed) + 1,
            data: Vec::new(),
            log: l2.clone(),
        });
        if input.reset {
            b = b.reset(|o: &mut Obj| o.data.clear());
        }
        let max_idle = input.max_idle as usize % 40;
        b = b.max_idle(max_idle);
        let max_live = (input.max_live % 4 != 0).then_some(input.max_live as usize % 20 + 1);
        if let Some(n) = max_live {
            b = b.max_live(n);
        }
        if input.thread_cache % 3 != 0 {
            b = b.thread_cache(input.thread_cache as usize % 10);
        }
        let pool = Arc::new(b.build());
        let mut m = Model {
            pool: &pool,
            made: &made,
            log,
            reset: input.reset,
            max_live,
            max_idle,
            out: Vec::new(),
            content: BTreeMap::new(),
            idle: BTreeSet::new(),
            destroyed: BTreeSet::new(),
            kept: 0,
            ops: 0,
        };
        let aff = Affinity::save();
        m.run(&input.ops, &aff, 0);
        while !m.out.is_empty() {
            m.give_back(m.out.len() - 1);
        }
    });
}
