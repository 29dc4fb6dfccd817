//! A heap's gate between its owner and the background purger's pass (`thread::purger`),
//! and between its owner and `fork` (`thread::fork`), kept apart from the thread heap so that
//! loom can check it with the real code (tests/loom/registry.rs: the pass's walk, and the
//! fork's pins against an owner inside its slow path).
//!
//! Owns: the gate's four values and its steps. The gate is one byte in the heap
//! (`Heap::gate`): [`FREE`], [`OWNER`] while the owner is in a gated slow path, [`PURGER`]
//! while a pass purges the heap, [`FORK`] while a thread forks. Whoever takes it
//! ([`owner_enter`], [`try_pin`], [`pin_for_fork`]) acquires what the last holder wrote to
//! the heap's segments before it let go ([`leave`], [`unpin_after_fork`]): the gate is a
//! lock, and these are its only edges (the owner takes no other lock the pass holds).
//! May touch: `sync` only.

use crate::sync::{backoff, AtomicU8, Ordering};

/// Nobody holds the gate.
pub const FREE: u8 = 0;
/// The owner holds it.
pub const OWNER: u8 = 1;
/// A pass holds it.
pub const PURGER: u8 = 2;
/// A thread that is forking holds it (from its prepare handler to its parent handler): the
/// owner is in no slow path, so the child finds none of the heap's segments or pages half
/// changed.
pub const FORK: u8 = 3;

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

/// The forking thread's prepare handler pins the gate if it is free, or finds it pinned by
/// an earlier try of its own. Returns whether the gate is pinned for the fork. Never waits:
/// an owner inside its slow path may be waiting for a lock the handler holds.
#[inline]
pub fn pin_for_fork(gate: &AtomicU8) -> bool {
    match gate.compare_exchange(FREE, FORK, Ordering::Acquire, Ordering::Relaxed) {
        Ok(_) => true,
        Err(v) => v == FORK,
    }
}

/// The parent handler lets go of a gate [`pin_for_fork`] pinned (any other value is left).
#[inline]
pub fn unpin_after_fork(gate: &AtomicU8) {
    let _ = gate.compare_exchange(FORK, FREE, Ordering::Release, Ordering::Relaxed);
}
