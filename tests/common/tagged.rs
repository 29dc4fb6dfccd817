//! Tagged objects for the tests that churn memory across threads and check every object at
//! its free: each holds its size and a tag made from its address in its first two words, and
//! the tag's low byte at its end, so an object handed to two owners, or overwritten, is caught
//! when it is freed. Also one thread's part of a recreate-style round (local slots, some
//! swapped into an array shared with the next round's threads).
//!
//! Shared by several test crates with `#[path = "common/tagged.rs"] mod tagged;` next to
//! `#[path = "common/rng.rs"] mod rng;`; each uses part of it.
#![allow(dead_code)]

use super::rng::Rng;
use std::alloc::{alloc, dealloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A new tagged object of `size` bytes (at least 24), as an address.
pub fn make_tagged(size: usize) -> usize {
    assert!(size >= 24);
    let l = Layout::from_size_align(size, 8).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { alloc(l) } as *mut u64;
    assert!(!p.is_null());
    // SAFETY: p holds `size` >= 24 bytes, 8-aligned.
    unsafe {
        p.write(size as u64);
        p.add(1).write(p as u64 ^ 0x5A5A);
        (p as *mut u8).add(size - 1).write(p as u8 ^ 0x5A);
    }
    p as usize
}

/// The size of the live tagged object `p`.
pub fn size_of_tagged(p: usize) -> usize {
    // SAFETY: p is a live object made by `make_tagged` (caller's word).
    unsafe { (p as *const u64).read() as usize }
}

/// Checks the live tagged object `p` (0: none) and frees it.
pub fn drop_tagged(p: usize) {
    if p == 0 {
        return;
    }
    let q = p as *mut u64;
    // SAFETY: p is a live object made by `make_tagged`.
    unsafe {
        let size = q.read() as usize;
        assert_eq!(
            q.add(1).read(),
            p as u64 ^ 0x5A5A,
            "object {p:#x} overwritten"
        );
        assert_eq!((q as *mut u8).add(size - 1).read(), p as u8 ^ 0x5A);
        dealloc(q as *mut u8, Layout::from_size_align(size, 8).unwrap());
    }
}

/// One thread's part of a round: 256 local slots; `steps` times, `at_step(step)`, then one
/// slot's object freed and a new one made by `make`, swapped into a random slot of `shared`
/// one time in three (so objects outlive the thread that made them); at the end its local
/// objects freed.
pub fn churn_slots(
    shared: &[AtomicUsize],
    seed: u64,
    steps: usize,
    mut make: impl FnMut(&mut Rng) -> usize,
    mut at_step: impl FnMut(usize),
) {
    let mut s = Rng(seed);
    let mut local = vec![0usize; 256];
    for step in 0..steps {
        at_step(step);
        let r = s.next();
        let k = r as usize % local.len();
        drop_tagged(local[k]);
        local[k] = make(&mut s);
        if (r >> 32) % 3 == 0 {
            let j = (r >> 40) as usize % shared.len();
            local[k] = shared[j].swap(local[k], Ordering::AcqRel);
        }
    }
    for p in local {
        drop_tagged(p);
    }
}
