//! Fuzz target `slot_arena`: `SlotArena<T, A>` (generational keys) against a map from key to
//! value, plus every key ever removed.
//!
//! Checked: `get`, `contains`, indexing and `remove` of a live key find its value; a stale key
//! (removed, retained away or cleared) never finds anything, even after its slot is reused;
//! `insert_with_key` passes the key it returns; `retain` keeps exactly what the predicate
//! keeps; `iter` and `iter_mut` visit exactly the live values; `len` and `stats` agree;
//! `Key::to_bits`/`from_bits` round-trip. The arena runs on `Global` or `Placed::node(0)`;
//! `Thread` runs ops with the arena moved to a new thread, which exits.

use crate::common::{in_thread, next_op, pat, thread_op, Affinity};
use allocator_api2::alloc::{Allocator, Global};
use arbitrary::{Arbitrary, Unstructured};
use std::collections::BTreeMap;
use tieralloc::{Key, Placed, SlotArena};

/// A value with heap memory of its own, so that its drop and move show in the heap.
#[derive(Debug, PartialEq)]
struct Val {
    id: u64,
    data: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        seed: u8,
        len: u8,
    },
    InsertWithKey {
        seed: u8,
        len: u8,
    },
    Remove(u16),
    RemoveStale(u16),
    Get(u16),
    GetStale(u16),
    Mutate {
        idx: u16,
        seed: u8,
    },
    /// Removes the values whose id has bit `b % 8` set.
    Retain(u8),
    Clear,
    Iter,
    Thread(u8),
    MoveCpu(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    placed: bool,
    capacity: u8,
    ops: Vec<Op>,
}

fn val(id: u64, seed: u8, len: u8) -> Val {
    Val {
        id,
        data: (0..len as usize * 3).map(|i| pat(seed, i)).collect(),
    }
}

#[derive(Default)]
struct Model {
    live: BTreeMap<u64, (u64, u8, u8)>,
    stale: Vec<Key>,
    next_id: u64,
    ops: usize,
}

impl Model {
    fn nth(&self, i: u16) -> Option<Key> {
        if self.live.is_empty() {
            return None;
        }
        let k = *self.live.keys().nth(i as usize % self.live.len()).unwrap();
        Some(Key::from_bits(k))
    }

    fn expect(&self, k: Key) -> Val {
        let (id, seed, len) = self.live[&k.to_bits()];
        val(id, seed, len)
    }

    fn run<A: Allocator + Clone + Send>(
        &mut self,
        a: &mut SlotArena<Val, A>,
        ops: &[Op],
        aff: &Affinity,
        depth: u32,
    ) {
        let mut next = 0;
        while let Some(op) = next_op(ops, &mut next, &mut self.ops, 500) {
            match *op {
                Op::Insert { seed, len } => {
                    self.next_id += 1;
                    let k = a.insert(val(self.next_id, seed, len));
                    assert_eq!(Key::from_bits(k.to_bits()), k);
                    assert!(
                        !self.stale.contains(&k),
                        "insert returned a stale key {k:?}"
                    );
                    let old = self.live.insert(k.to_bits(), (self.next_id, seed, len));
                    assert!(old.is_none(), "insert returned a live key {k:?}");
                }
                Op::InsertWithKey { seed, len } => {
                    self.next_id += 1;
                    let id = self.next_id;
                    let mut seen = None;
                    let k = a.insert_with_key(|k| {
                        seen = Some(k);
                        val(id, seed, len)
                    });
                    assert_eq!(seen, Some(k), "insert_with_key passed another key");
                    assert!(!self.stale.contains(&k) && !self.live.contains_key(&k.to_bits()));
                    self.live.insert(k.to_bits(), (id, seed, len));
                }
                Op::Remove(i) => {
                    if let Some(k) = self.nth(i) {
                        assert_eq!(a.remove(k), Some(self.expect(k)), "remove {k:?}");
                        self.live.remove(&k.to_bits());
                        self.stale.push(k);
                        assert!(
                            !a.contains(k) && a.get(k).is_none(),
                            "removed key still found"
                        );
                    }
                }
                Op::RemoveStale(i) | Op::GetStale(i) => {
                    if !self.stale.is_empty() {
                        let k = self.stale[i as usize % self.stale.len()];
                        assert!(!a.contains(k), "stale key {k:?} is contained");
                        assert!(a.get(k).is_none() && a.get_mut(k).is_none());
                        if matches!(op, Op::RemoveStale(_)) {
                            assert!(a.remove(k).is_none(), "stale key {k:?} removed a value");
                        }
                    }
                }
                Op::Get(i) => {
                    if let Some(k) = self.nth(i) {
                        let want = self.expect(k);
                        assert!(a.contains(k));
                        assert_eq!(a.get(k), Some(&want), "get {k:?}");
                        assert_eq!(a[k], want, "index {k:?}");
                    }
                }
                Op::Mutate { idx, seed } => {
                    if let Some(k) = self.nth(idx) {
                        let e = self.live.get_mut(&k.to_bits()).unwrap();
                        let v = a.get_mut(k).expect("live key");
                        assert_eq!(*v, val(e.0, e.1, e.2));
                        *v = val(e.0, seed, e.2);
                        e.1 = seed;
                    }
                }
                Op::Retain(b) => {
                    let bit = 1u64 << (b % 8);
                    a.retain(|_, v| v.id & bit == 0);
                    let gone: Vec<u64> = self
                        .live
                        .iter()
                        .filter(|(_, e)| e.0 & bit != 0)
                        .map(|(k, _)| *k)
                        .collect();
                    for k in gone {
                        self.live.remove(&k);
                        self.stale.push(Key::from_bits(k));
                    }
                }
                Op::Clear => {
                    a.clear();
                    let keys: Vec<u64> = std::mem::take(&mut self.live).into_keys().collect();
                    self.stale.extend(keys.into_iter().map(Key::from_bits));
                }
                Op::Iter => {
                    let mut seen = BTreeMap::new();
                    for (k, v) in a.iter() {
                        assert_eq!(*v, self.expect(k), "iter value of {k:?}");
                        assert!(seen.insert(k.to_bits(), ()).is_none(), "iter twice {k:?}");
                    }
                    assert_eq!(seen.len(), self.live.len(), "iter missed values");
                    let n = a.iter_mut().count();
                    assert_eq!(n, self.live.len(), "iter_mut count");
                }
                Op::Thread(n) => thread_op(ops, &mut next, n, aff, depth, |inner, aff, d| {
                    self.run(a, inner, aff, d)
                }),
                Op::MoveCpu(k) => aff.move_to(k),
            }
            assert_eq!(a.len(), self.live.len(), "len after {op:?}");
            assert_eq!(a.is_empty(), self.live.is_empty());
            assert!(a.capacity() >= a.len());
            let st = a.stats();
            assert!(st.bytes_used <= st.bytes_held && st.bytes_used <= st.high_water);
            if !self.live.is_empty() {
                assert_eq!(
                    st.bytes_used % self.live.len(),
                    0,
                    "bytes_used is len * slot size"
                );
                assert!(st.bytes_used / self.live.len() >= std::mem::size_of::<Val>());
            }
        }
    }
}

fn go<A: Allocator + Clone + Send>(input: &Input, mut a: SlotArena<Val, A>) {
    let mut m = Model::default();
    let aff = Affinity::save();
    m.run(&mut a, &input.ops, &aff, 0);
    for (&k, _) in m.live.iter() {
        let k = Key::from_bits(k);
        assert_eq!(a.get(k), Some(&m.expect(k)), "final {k:?}");
    }
}

/// Decodes `data` and runs it on a new thread; panics on a difference from the model.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    in_thread(|| {
        let cap = input.capacity as usize;
        if input.placed {
            let node = Placed::node(0).expect("node 0");
            go(&input, SlotArena::with_capacity_in(cap, node));
        } else {
            go(&input, SlotArena::with_capacity_in(cap, Global));
        }
    });
}
