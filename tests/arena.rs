//! Arenas: drop counting, reset reuse, limits, iteration, allocators, bump cache, slot keys.
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use allocator_api2::alloc::{AllocError, Allocator, Global, Layout};
use tieralloc::{Arena, ArenaError, BumpCache, Key, SlotArena};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// Counts drops; panics in drop if `panic` is set.
struct Counted {
    id: usize,
    drops: Rc<Vec<Cell<u32>>>,
    panic: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops[self.id].set(self.drops[self.id].get() + 1);
        if self.panic {
            panic!("drop of {} panics", self.id);
        }
    }
}

fn counters(n: usize) -> Rc<Vec<Cell<u32>>> {
    Rc::new((0..n).map(|_| Cell::new(0)).collect())
}

fn all_once(d: &[Cell<u32>]) -> bool {
    d.iter().all(|c| c.get() == 1)
}

#[test]
fn every_value_dropped_once_on_drop() {
    let d = counters(10_000);
    {
        let a = Arena::new();
        for id in 0..10_000 {
            let v = a.alloc(Counted {
                id,
                drops: d.clone(),
                panic: false,
            });
            assert_eq!(v.id, id);
        }
        assert_eq!(a.len(), 10_000);
        assert!(d.iter().all(|c| c.get() == 0));
    }
    assert!(all_once(&d));
}

#[test]
fn every_value_dropped_once_across_resets() {
    let d = counters(3 * 5000);
    let mut a = Arena::new();
    for round in 0..3 {
        for i in 0..5000 {
            a.alloc(Counted {
                id: round * 5000 + i,
                drops: d.clone(),
                panic: false,
            });
        }
        a.reset();
        assert!(a.is_empty());
        assert!(d[..(round + 1) * 5000].iter().all(|c| c.get() == 1));
        assert!(d[(round + 1) * 5000..].iter().all(|c| c.get() == 0));
    }
    drop(a);
    assert!(all_once(&d));
}

#[test]
fn panicking_drop_does_not_leak_the_others() {
    let d = counters(1000);
    let mut a = Arena::new();
    for id in 0..1000 {
        a.alloc(Counted {
            id,
            drops: d.clone(),
            panic: id == 10 || id == 700,
        });
    }
    let r = catch_unwind(AssertUnwindSafe(|| a.reset()));
    assert!(r.is_err(), "the first panic is resumed");
    assert!(all_once(&d), "every value dropped exactly once");
    assert!(a.is_empty());
    // The arena is still usable, and drops nothing twice later.
    let d2 = counters(10);
    for id in 0..10 {
        a.alloc(Counted {
            id,
            drops: d2.clone(),
            panic: false,
        });
    }
    drop(a);
    assert!(all_once(&d) && all_once(&d2));

    // Same when the arena itself is dropped.
    let d = counters(100);
    let a = Arena::new();
    for id in 0..100 {
        a.alloc(Counted {
            id,
            drops: d.clone(),
            panic: id == 0,
        });
    }
    assert!(catch_unwind(AssertUnwindSafe(|| drop(a))).is_err());
    assert!(all_once(&d));
}

#[test]
fn reset_reuses_chunks_without_growing() {
    let mut a: Arena<[u64; 4]> = Arena::new();
    let mut held = None;
    for cycle in 0..1000 {
        for i in 0..3000u64 {
            a.alloc([i; 4]);
        }
        let s = a.stats();
        assert_eq!(s.bytes_used, 3000 * 32);
        match held {
            None => held = Some(s.bytes_held),
            Some(h) => assert_eq!(s.bytes_held, h, "cycle {cycle} grew the arena"),
        }
        a.reset();
    }
    let s = a.stats();
    assert_eq!(s.bytes_used, 0);
    assert_eq!(s.high_water, 3000 * 32);
    assert_eq!(s.resets, 1000);
}

/// An allocator that counts its calls, to prove reset makes none.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

// SAFETY: forwards to Global unchanged.
unsafe impl Allocator for Counting {
    fn allocate(&self, layout: Layout) -> Result<std::ptr::NonNull<[u8]>, AllocError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Global.allocate(layout)
    }
    unsafe fn deallocate(&self, ptr: std::ptr::NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { Global.deallocate(ptr, layout) }
    }
}

#[test]
fn chunks_come_from_the_given_allocator_and_reset_allocates_nothing() {
    let c = Counting::default();
    let mut a = Arena::new_in(c.clone());
    for i in 0..10_000u32 {
        a.alloc(i);
    }
    let after_first = c.0.load(Ordering::Relaxed);
    assert!(after_first > 0);
    for _ in 0..100 {
        a.reset();
        for i in 0..10_000u32 {
            a.alloc(i);
        }
    }
    assert_eq!(c.0.load(Ordering::Relaxed), after_first);
    assert_eq!(a.allocator().0.load(Ordering::Relaxed), after_first);
}

#[test]
fn stable_addresses_and_iteration() {
    let mut a = Arena::with_capacity(4);
    let mut ptrs = Vec::new();
    for i in 0..1000u64 {
        let r = a.alloc(i);
        ptrs.push(r as *const u64 as usize);
    }
    // SAFETY (test): the arena is alive and its chunks never move.
    for (i, &p) in ptrs.iter().enumerate() {
        assert_eq!(unsafe { *(p as *const u64) }, i as u64);
    }
    for v in a.iter_mut() {
        *v *= 2;
    }
    let got: Vec<u64> = a.iter_mut().map(|v| *v).collect();
    assert_eq!(got, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
    assert_eq!(a.iter_mut().len(), 1000);
    let v = a.drain_to_vec();
    assert_eq!(v.len(), 1000);
    assert!(a.is_empty());
}

#[test]
fn refs_are_independent() {
    let a = Arena::new();
    let x = a.alloc(String::from("x"));
    let y = a.alloc(String::from("y"));
    x.push('1');
    y.push('2');
    assert_eq!((x.as_str(), y.as_str()), ("x1", "y2"));
}

#[test]
fn limit_gives_a_clear_error() {
    let a: Arena<[u8; 100]> = Arena::with_limit(1000);
    let mut n = 0;
    loop {
        match a.try_alloc([n as u8; 100]) {
            Ok(_) => n += 1,
            Err(e) => {
                assert_eq!(e.value[0], n as u8, "the value is handed back");
                assert_eq!(
                    e.error,
                    ArenaError::LimitExceeded {
                        limit: 1000,
                        held: 1000,
                        requested: 100
                    }
                );
                let msg = e.to_string();
                assert!(msg.contains("limit of 1000 bytes"), "{msg}");
                assert!(msg.contains("request of 100 bytes"), "{msg}");
                let _: &dyn std::error::Error = &e;
                break;
            }
        }
    }
    assert_eq!(n, 10, "the whole limit is usable");
    assert!(a.stats().bytes_held <= 1000);
    let r = catch_unwind(AssertUnwindSafe(|| {
        a.alloc([0; 100]);
    }));
    assert!(r.is_err(), "alloc panics past the limit");
    assert!(a.try_alloc_with(|| unreachable!("not built")).is_err());
}

#[test]
fn zero_sized_values() {
    struct Z;
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    impl Drop for Z {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut a = Arena::new();
    for _ in 0..100 {
        a.alloc(Z);
    }
    assert_eq!(a.len(), 100);
    assert_eq!(a.iter_mut().count(), 100);
    a.reset();
    assert_eq!(DROPS.load(Ordering::Relaxed), 100);
    a.alloc(Z);
    drop(a);
    assert_eq!(DROPS.load(Ordering::Relaxed), 101);
}

#[test]
fn arena_is_send() {
    fn send<T: Send>(_: &T) {}
    let a: Arena<String> = Arena::new();
    send(&a);
    let h = std::thread::spawn(move || {
        a.alloc("moved".to_string());
        a.len()
    });
    assert_eq!(h.join().unwrap(), 1);
}

#[test]
fn bump_cache_reuses_and_resets() {
    let cache = BumpCache::new();
    let first_chunk;
    {
        let bump = cache.checkout();
        let mut v = allocator_api2::vec::Vec::new_in(&*bump);
        v.extend(0..1000u32);
        let mut s = bumpalo::collections::String::new_in(&bump);
        s.push_str("hello");
        assert_eq!(v.iter().sum::<u32>(), 499_500);
        first_chunk = bump.allocated_bytes();
    }
    for _ in 0..100 {
        let bump = cache.checkout();
        let mut v = bumpalo::collections::Vec::new_in(&bump);
        v.extend(0..1000u32);
        assert!(
            bump.allocated_bytes() <= first_chunk,
            "reset kept the chunk"
        );
    }
    let s = cache.stats();
    assert_eq!(s.checkouts, 101);
    assert_eq!(s.hits, 100);
    assert_eq!(s.misses, 1);
    assert_eq!(s.idle, 1);

    // Bounded per thread.
    let cache = BumpCache::with_limits(2, 1 << 20, 1024);
    let guards: Vec<_> = (0..5).map(|_| cache.checkout()).collect();
    drop(guards);
    assert_eq!(cache.stats().idle, 2);
    assert_eq!(cache.stats().dropped, 3);
    // Too large: dropped, not kept.
    {
        let b = cache.checkout();
        b.alloc_slice_fill_copy(2 << 20, 0u8);
    }
    assert_eq!(cache.stats().dropped, 4);
}

/// Review rev14: a checkout hands out a bump in the state `Bump::with_capacity` makes, so an
/// allocation limit one request set (`Bump::set_allocation_limit` takes `&self`) does not stay
/// on the bump for the next request of that worker, which never asked for one.
#[test]
fn a_checked_out_bump_carries_no_allocation_limit_of_its_last_user() {
    let cache = BumpCache::new();
    {
        let b = cache.checkout();
        b.set_allocation_limit(Some(0));
    }
    let b = cache.checkout();
    assert_eq!(cache.stats().hits, 1, "the same bump came back");
    assert_eq!(
        b.allocation_limit(),
        None,
        "the last user's limit stayed on the bump"
    );
    let big = std::alloc::Layout::from_size_align(1 << 20, 8).unwrap();
    assert!(
        b.try_alloc_layout(big).is_ok(),
        "a 1 MiB allocation in a fresh checkout failed"
    );
}

#[test]
fn bump_guard_is_send() {
    fn send<T: Send>(_: &T) {}
    let cache = BumpCache::new();
    let g = cache.checkout();
    send(&g);
}

#[test]
fn slot_keys_go_stale() {
    let mut s = SlotArena::new();
    let a = s.insert("a".to_string());
    let b = s.insert("b".to_string());
    assert_eq!(s[a], "a");
    assert_eq!(s.remove(a).as_deref(), Some("a"));
    assert_eq!(s.get(a), None);
    assert_eq!(s.remove(a), None);
    let c = s.insert("c".to_string());
    assert_eq!(c.index(), a.index(), "the slot is reused");
    assert_ne!(c, a);
    assert_eq!(s.get(a), None, "a stale key never reaches the new value");
    assert!(s.get_mut(a).is_none());
    assert_eq!(s.get(c).map(String::as_str), Some("c"));
    assert_eq!(s.get(b).map(String::as_str), Some("b"));
    assert_eq!(s.len(), 2);
    s.clear();
    assert!(s.get(b).is_none() && s.get(c).is_none());
    assert!(s.get(Key::null()).is_none());
    let d = s.insert("d".into());
    assert_eq!(Key::from_bits(d.to_bits()), d);
    assert_eq!(s.iter().count(), 1);
}

#[test]
fn slot_keys_cross_threads_and_tasks() {
    fn assert_key<K: Copy + Send + Sync + 'static>() {}
    assert_key::<Key>();
    assert_eq!(std::mem::size_of::<Key>(), 8);
    let mut s = SlotArena::new();
    let keys: Vec<Key> = (0..100).map(|i| s.insert(i)).collect();
    let shared = Arc::new(std::sync::Mutex::new(s));
    let h = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut s = shared.lock().unwrap();
            for k in keys.iter().step_by(2) {
                s.remove(*k);
            }
            keys
        })
    };
    let keys = h.join().unwrap();
    let s = shared.lock().unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(s.get(*k).is_some(), i % 2 == 1);
    }
}

#[test]
fn slot_arena_reuses_slots_and_uses_its_allocator() {
    let c = Counting::default();
    let mut s = SlotArena::with_capacity_in(16, c.clone());
    for round in 0..1000 {
        let ks: Vec<Key> = (0..16).map(|i| s.insert(round * 16 + i)).collect();
        for k in ks {
            assert!(s.remove(k).is_some());
        }
    }
    assert_eq!(s.capacity(), 16);
    assert_eq!(
        c.0.load(Ordering::Relaxed),
        1,
        "one allocation for the slot vector"
    );
    assert!(s.is_empty());
    assert_eq!(s.stats().bytes_used, 0);
}

// ---------------------------------------------------------------------------------------------
// Placement: arenas take their chunks from a `Placed` handle.

/// Node of the page holding `p`, from move_pages (None where the kernel has no NUMA support).
fn node_of(p: *const u8) -> Option<i32> {
    tieralloc::numa::pages_on_nodes(p, 1)
        .ok()
        .and_then(|v| v.first().copied())
}

#[test]
fn arenas_place_their_chunks_with_placed() {
    let local = tieralloc::Placed::local().expect("the local node is usable");
    let node = tieralloc::numa::current_cpu_and_node().map_or(0, |(_, n)| n);
    let placed = tieralloc::Placed::node(node).expect("the node this thread runs on");

    let arena: Arena<[u64; 4], _> = Arena::new_in(placed);
    let first = arena.alloc([7; 4]) as *mut [u64; 4];
    for i in 0..10_000u64 {
        let v = arena.alloc([i; 4]);
        assert_eq!(v[3], i);
    }
    // SAFETY: `first` points into the arena, which is alive and has not been reset.
    assert_eq!(unsafe { (*first)[0] }, 7);
    assert!(arena.stats().bytes_held >= 10_000 * 32);
    // With simulated nodes (TIERALLOC_SIMULATE_NODES) nothing is bound and move_pages reports
    // the real node, so the page's node says nothing about the placement.
    let simulated = tieralloc::topology().source == tieralloc::topology::TopologySource::Simulated;
    if let Some(n) = node_of(first as *const u8).filter(|_| !simulated) {
        assert_eq!(
            n, node as i32,
            "arena chunk memory must be on the placed node"
        );
    }

    let mut slots: SlotArena<String, _> = SlotArena::new_in(local);
    let k = slots.insert("placed".to_string());
    assert_eq!(slots.get(k).map(String::as_str), Some("placed"));
    assert_eq!(slots.remove(k).as_deref(), Some("placed"));
    assert!(slots.get(k).is_none());

    let err = tieralloc::Placed::node(999).expect_err("node 999 does not exist");
    assert!(
        err.to_string().contains("999"),
        "the error names the node: {err}"
    );
}

/// The arenas' sizes, statistics and reports say exactly what was done. Each check here kills
/// a mutant that the other arena tests and the fuzz corpus let live (docs/correctness/mutants.md).
#[test]
fn arena_capacity_statistics_and_move_reports_are_exact() {
    // with_capacity takes its chunk at once: room for n values before any allocation.
    let a: Arena<u64> = Arena::with_capacity(1000);
    assert_eq!(a.stats().chunks, 1, "{:?}", a.stats());
    assert!(a.capacity() >= 1000, "capacity {}", a.capacity());
    assert!(a.stats().bytes_held >= 8000, "{:?}", a.stats());
    assert_eq!(a.limit(), None);
    assert_eq!(Arena::<u64>::with_limit(4096).limit(), Some(4096));
    assert_eq!(Arena::<u64>::new().capacity(), 0);
    // Nothing to hold: no chunk.
    assert_eq!(Arena::<u64>::with_capacity(0).stats().chunks, 0);
    assert_eq!(Arena::<()>::with_capacity(10).stats().chunks, 0);

    // drain_to_vec and clear_and_shrink keep the high-water mark of the values they took.
    let mut a: Arena<u64> = Arena::new();
    assert!(a.is_empty());
    for i in 0..1000 {
        a.alloc(i);
    }
    assert!(!a.is_empty());
    assert_eq!(a.drain_to_vec().len(), 1000);
    assert_eq!(a.stats().high_water, 8000, "{:?}", a.stats());
    let mut a: Arena<u64> = Arena::new();
    for i in 0..1000 {
        a.alloc(i);
    }
    a.clear_and_shrink();
    let s = a.stats();
    assert_eq!((s.bytes_used, s.chunks, s.bytes_held), (0, 0, 0), "{s:?}");
    assert_eq!(s.high_water, 8000, "{s:?}");

    // move_to_tier counts every chunk once, as moved (over 64 KiB) or skipped.
    let mut a: Arena<u64> = Arena::new();
    for i in 0..100_000 {
        a.alloc(i);
    }
    let s = a.stats();
    let r = a.move_to_tier(0).expect("tier 0 exists");
    assert_eq!(r.chunks_moved + r.chunks_skipped, s.chunks, "{r:?} {s:?}");
    assert_eq!(r.bytes_moved + r.bytes_skipped, s.bytes_held, "{r:?} {s:?}");
    assert!(r.chunks_moved >= 1 && r.chunks_skipped >= 1, "{r:?}");
    assert!(r.bytes_moved > 64 << 10 && r.bytes_skipped > 0, "{r:?}");
    assert_eq!(r.pages_failed, 0, "{r:?}");
    assert!(a.iter_mut().map(|v| *v).eq(0..100_000));
    let p = a.promote().expect("tier 0 exists");
    assert_eq!(p.chunks_moved + p.chunks_skipped, s.chunks, "{p:?} {s:?}");
    assert!(p.chunks_moved >= 1, "{p:?}");

    // SlotArena: with_capacity reserves the slots; stats count values and slots.
    let mut s: SlotArena<u64> = SlotArena::with_capacity(100);
    let st = s.stats();
    assert_eq!((st.chunks, st.bytes_used), (1, 0), "{st:?}");
    assert!(st.bytes_held >= 100 * 8, "{st:?}");
    assert_eq!(SlotArena::<u64>::new().stats().chunks, 0);
    assert!(s.is_empty());
    let k = s.insert(1);
    assert!(!s.is_empty());
    assert_eq!(k.index(), 0);
    let one = s.stats().bytes_used;
    assert!(one > 0, "{:?}", s.stats());
    let k3 = s.insert(3);
    let st = s.stats();
    assert_eq!((st.bytes_used, st.high_water), (2 * one, 2 * one), "{st:?}");
    s.remove(k3);
    s.remove(k);
    let st = s.stats();
    assert_eq!((st.bytes_used, st.high_water), (0, 2 * one), "{st:?}");
    let k2 = s.insert(2);
    assert_eq!(k3.index(), 1);
    assert_eq!(k2.index(), k.index());
    assert_ne!(k2.generation(), k.generation());
    assert_eq!(Key::from_bits(k2.to_bits()), k2);
}

/// Review rev26: `move_to_tier` moved every chunk over 64 KiB that lay in a tieralloc block,
/// with the whole block: an arena on a `&bumpalo::Bump` (whose chunks are pieces of the bump's
/// one 3 MiB block) moved that block, with the bump's other data, once for each of its 3 big
/// chunks, although the docs say chunks whose pages the arena does not own are skipped (and
/// `tiers::move_to_tier`'s contract wants the caller to own what moves: over a `Sync`
/// allocator of pieces, two threads' arenas could each move, and rebook, one huge block).
#[test]
fn an_arena_on_pieces_of_a_block_moves_none_of_them() {
    let bump = bumpalo::Bump::with_capacity(3 << 20);
    let neighbour: &mut [u8] = bump.alloc_slice_fill_copy(1024, 9u8);
    let mut a: Arena<[u8; 4096], &bumpalo::Bump> = Arena::new_in(&bump);
    for i in 0..200 {
        a.alloc([i as u8; 4096]);
    }
    let s = a.stats();
    assert!(s.chunks >= 3 && s.bytes_held > 512 << 10, "{s:?}");
    let r = a.move_to_tier(0).expect("tier 0 exists");
    assert_eq!((r.chunks_moved, r.bytes_moved), (0, 0), "{r:?}");
    assert_eq!(
        (r.chunks_skipped, r.bytes_skipped),
        (s.chunks, s.bytes_held),
        "{r:?}"
    );
    assert!(a
        .iter_mut()
        .enumerate()
        .all(|(i, v)| v.iter().all(|b| *b == i as u8)));
    assert!(neighbour.iter().all(|b| *b == 9));
}
