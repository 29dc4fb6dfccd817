//! Loom model checks of the heap's concurrent cores, run on the real code: `tieralloc::remote` (a
//! page's remote-free list and delayed-free state, a heap's delayed stack), `tieralloc::delayed`
//! (the two ends of a delayed free), `tieralloc::list` (the locked segment pools and abandoned
//! lists, with `claim`), `tieralloc::claim` (the huge registry's slots), `tieralloc::heaps` (the
//! registry of live heaps), `tieralloc::atfork` (the fork handlers' lock order and the child's
//! resets) and `tieralloc::wake` (the background purger's sleep and wake-up). One module per
//! part: `remote`, `segments`, `huge`, `registry`, `fork`, `wake`; the helpers
//! shared by them are here. Under `--cfg loom` the crate builds only these, with atomics and
//! `UnsafeCell` from loom, so loom sees every access to shared memory, free-list links included.
//! Run with (scripts/test.sh):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --profile loom --test loom
//! ```
//!
//! The `loom` profile keeps debug assertions on. docs/correctness/loom.md lists which
//! ordering each model needs (weakened to relaxed, a model fails).
#![cfg(loom)]

mod fork;
mod huge;
mod pool_fork_flag;
mod registry;
mod remote;
mod segments;
mod wake;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use std::collections::HashMap;
use tieralloc::claim::ClaimSlot;
use tieralloc::delayed;
use tieralloc::list::{Links, ListNode, LockedList};
use tieralloc::remote::{
    Block, BlockStack, Pushed, RemoteFree, DELAYED_FREEING, NEVER_DELAYED, NORMAL, USE_DELAYED,
};

/// The two links of a model's list node (a heap of the registry, a segment), as loom cells:
/// only the holder of the node's list touches them, and loom checks that.
pub(crate) struct Link<T> {
    next: UnsafeCell<*mut T>,
    prev: UnsafeCell<*mut T>,
}

impl<T> Link<T> {
    pub(crate) fn new() -> Link<T> {
        Link {
            next: UnsafeCell::new(std::ptr::null_mut()),
            prev: UnsafeCell::new(std::ptr::null_mut()),
        }
    }
}

/// `impl Links for $node` through its `link: Link<$node>` field (one implementation for
/// every model's nodes; a foreign trait cannot be implemented for all of them at once).
macro_rules! links_through_field {
    ($node:ty) => {
        impl Links for $node {
            unsafe fn next(n: *mut Self) -> *mut Self {
                // SAFETY: n is a live node (the model keeps them all until it ends).
                unsafe { (*n).link.next.with(|p| *p) }
            }
            unsafe fn set_next(n: *mut Self, next: *mut Self) {
                // SAFETY: as above.
                unsafe { (*n).link.next.with_mut(|p| *p = next) }
            }
            unsafe fn prev(n: *mut Self) -> *mut Self {
                // SAFETY: as above.
                unsafe { (*n).link.prev.with(|p| *p) }
            }
            unsafe fn set_prev(n: *mut Self, prev: *mut Self) {
                // SAFETY: as above.
                unsafe { (*n).link.prev.with_mut(|p| *p = prev) }
            }
        }
    };
}
use links_through_field;

/// A block the test owns, passed between threads as an address (8-byte aligned: the low bits
/// of the list word carry the page state).
fn new_block() -> usize {
    Box::into_raw(Box::new(Block::new())) as usize
}

fn free_block(b: usize) {
    // SAFETY: made by new_block and freed once, after every list let go of it.
    drop(unsafe { Box::from_raw(b as *mut Block) });
}

/// The addresses on a list taken with `take_all`, in list order.
fn walk(mut b: *mut Block) -> Vec<usize> {
    let mut v = Vec::new();
    while !b.is_null() {
        v.push(b as usize);
        // SAFETY: b is one of our blocks, taken from a list after it was published.
        b = unsafe { Block::next(b) };
        assert!(v.len() <= 16, "cycle in a block list");
    }
    v
}

/// Takes a page's remote list, checking that its count is its length.
fn take_page_list(page: &RemoteFree) -> Vec<usize> {
    let (head, n) = page.take_counted();
    let v = walk(head);
    assert_eq!(v.len(), n as usize, "a remote list's count is its length");
    v
}

/// Every block in `blocks` seen exactly once in `seen`, and nothing else.
fn exactly_once(blocks: &[usize], seen: &[usize]) {
    let mut count: HashMap<usize, usize> = HashMap::new();
    for &b in seen {
        *count.entry(b).or_default() += 1;
    }
    for &b in blocks {
        assert_eq!(count.remove(&b), Some(1), "block {b:#x} seen {seen:x?}");
    }
    assert!(count.is_empty(), "unknown blocks {count:x?}");
}

/// Checks `model` with loom, bounded to `preemptions` preemptions unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise, twice: once as written, once with the model's main
/// thread yielding before its first step against the threads it spawned (`model(true)`).
///
/// Both are needed. Under a preemption bound loom does not get every schedule: without the
/// yield it never ran a spawned thread before the main thread's first step of the first
/// model below (its take always found the list empty); with it, the main thread's loads after
/// the yield no longer return values older than the yield (loom's rule to make spinning
/// progress), which hides the stale reads that a missing release or acquire allows.
fn check(preemptions: usize, model: fn(bool)) {
    for yield_first in [false, true] {
        let mut b = loom::model::Builder::new();
        if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
            b.preemption_bound = Some(preemptions);
        }
        b.check(move || model(yield_first));
    }
}
