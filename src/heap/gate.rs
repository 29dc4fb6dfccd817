//! A heap's gate between its owner and the background purger's pass (`thread::purger`),
//! kept apart from the thread heap so that loom can check it with the real code
//! (tests/loom/registry.rs: the pass's walk, and a fork child's reading of a copied gate).
//!
//! Owns: the gate's three values and its steps. The gate is one byte in the heap
//! (`Heap::gate`): [`FREE`], [`OWNER`] while the owner is in a gated slow path, [`PURGER`]
//! while a pass purges the heap. Whoever takes it ([`owner_enter`], [`try_pin`]) acquires what
//! the last holder wrote to the heap's segments before it let go ([`leave`]): the gate is a
//! lock, and these are its only edges (the owner takes no other lock the pass holds).
//!
//! `fork` does not take it (review rev51: holding up the owners until the parent handler hung
//! programs whose owners held a lock that something after the heap's prepare handler takes).
//! A fork child reads the copied gates of the threads that died with the fork instead: one
//! reading `OWNER` was stopped inside a slow path, and its heap's segments are quarantined
//! (`thread::fork`). The owner's store of `OWNER` comes before its first change to the heap's
//! segments in its own program order, so a copy that holds a change holds the `OWNER` too.
//! May touch: `sync` only.

use crate::sync::{backoff, AtomicU8, Ordering};

/// Nobody holds the gate.
pub const FREE: u8 = 0;
/// The owner holds it.
pub const OWNER: u8 = 1;
/// A pass holds it.
pub const PURGER: u8 = 2;
/// The owner takes the gate, waiting for a pass to leave.
#[inline]
pub fn owner_enter(gate: &AtomicU8) {
    if gate
        .compare_exchange(FREE, OWNER, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        take_for_owner(gate);
    }
}

/// Takes a heap's gate for its owner, waiting for the purger to leave: a bounded spin, then
/// `sched_yield` (`sync::backoff`), so that on a busy CPU the owner does not keep the purger
/// (which holds the gate for one heap's walk and `madvise`) from finishing.
#[cold]
fn take_for_owner(gate: &AtomicU8) {
    let mut spins = 0u32;
    while gate
        .compare_exchange_weak(FREE, OWNER, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        backoff(&mut spins);
    }
}

/// A pass takes the gate if it is free right now. Returns whether it did.
#[inline]
pub fn try_pin(gate: &AtomicU8) -> bool {
    gate.compare_exchange(FREE, PURGER, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// The holder (owner or pass) lets go of the gate.
#[inline]
pub fn leave(gate: &AtomicU8) {
    gate.store(FREE, Ordering::Release);
}
