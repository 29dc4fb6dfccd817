//! The parts of the fork handlers (`heap::thread::fork`) that loom can check with the real
//! code (tests/loom/): the order the handlers take and drop the allocator's locks in, and
//! the child's resets of the lock-free words that a thread gone with the fork may have left
//! half-changed.
//!
//! Owns: [`prepare`], [`parent`], [`child`] (the locks), [`unstick`] and [`abandon`] (a page's
//! delayed-free state) and [`return_delayed`] (a dead heap's delayed stack). May touch: `sync`, and
//! `heap::remote` and `heap::list` (the words and lists it resets or locks).
//!
//! Lock order, everywhere in the allocator: a node (or label) heap's lock, then the
//! registry's, then the segment lists'. `prepare` takes them in that order, so no thread holds
//! one across the fork and no thread waits for one `prepare` holds while holding one `prepare`
//! waits for. (The label heaps' `CREATE` lock comes before all of them: `heap::thread::fork`
//! takes it around these.)

use super::list::{ListNode, LockedList};
use super::remote::{
    Block, BlockStack, Pushed, RemoteFree, DELAYED_FREEING, NEVER_DELAYED, NORMAL, USE_DELAYED,
};
use crate::sync::SpinLock;

/// Before `fork`: takes every node heap's lock, then the registry's, then every segment
/// list's, and keeps them.
pub fn prepare<'a, N: ListNode + 'a>(
    node_heaps: impl Iterator<Item = &'a SpinLock>,
    registry: &SpinLock,
    lists: impl Iterator<Item = &'a LockedList<N>>,
) {
    for l in node_heaps {
        l.lock_raw();
    }
    registry.lock_raw();
    for l in lists {
        l.lock_for_fork();
    }
}

/// After `fork`, in the parent: lets go of what [`prepare`] took.
pub fn parent<'a, N: ListNode + 'a>(
    node_heaps: impl Iterator<Item = &'a SpinLock>,
    registry: &SpinLock,
    lists: impl Iterator<Item = &'a LockedList<N>>,
) {
    for l in lists {
        l.unlock_after_fork();
    }
    registry.unlock_raw();
    for l in node_heaps {
        l.unlock_raw();
    }
}

/// After `fork`, in the child: lets go of the segment lists' and the node heaps' locks (the
/// reset pushes segments), and keeps the registry's (the reset rewrites the registry; the
/// caller drops it after).
pub fn child<'a, N: ListNode + 'a>(
    node_heaps: impl Iterator<Item = &'a SpinLock>,
    lists: impl Iterator<Item = &'a LockedList<N>>,
) {
    for l in lists {
        l.forget_visit_in_child();
        l.unlock_after_fork();
    }
    for l in node_heaps {
        l.unlock_raw();
    }
}

/// In a fork child, on a page of a heap that lives on: a page a dead thread left in
/// `DELAYED_FREEING` goes back to the state that thread found it in, `USE_DELAYED` if the
/// page is still `full`, else `NORMAL` (where its delayed free would have ended). The block
/// it was freeing stays counted as used (lost, as a block freed by nobody).
///
/// Single-threaded child: nobody else touches the word.
#[inline]
pub fn unstick(tf: &RemoteFree, full: bool) {
    if tf.state() == DELAYED_FREEING {
        tf.force_state(if full { USE_DELAYED } else { NORMAL });
    }
}

/// In a fork child, on a page of a heap that died with the fork, as that heap's exit would
/// have: remote frees go onto the page's own list from now on, for whoever adopts it.
///
/// Single-threaded child: nobody else touches the word.
#[inline]
pub fn abandon(tf: &RemoteFree) {
    tf.force_state(NEVER_DELAYED);
}

/// In a fork child, for a heap that died with the fork: every block on its delayed stack
/// `stack` goes onto its page's remote list (`page_of`
/// names it: its pages are `NEVER_DELAYED` by then, so the push is a plain one); should a page
/// still ask for a delayed free, `free_delayed` ends it the way any remote free ends.
///
/// # Safety
/// Single-threaded child; every block on `stack` is a live block of the page `page_of` names,
/// on no other list.
#[inline]
pub unsafe fn return_delayed<'a, P: Copy>(
    stack: &BlockStack,
    mut page_of: impl FnMut(*mut Block) -> (P, &'a RemoteFree),
    mut free_delayed: impl FnMut(*mut Block, P),
) {
    let mut b = stack.take_all();
    while !b.is_null() {
        // SAFETY: b is on the taken list, ours (contract); read its link before the push
        // rewrites it.
        let next = unsafe { Block::next(b) };
        let (page, tf) = page_of(b);
        // SAFETY: b is a live block of that page, on no list now (contract).
        if let Pushed::Delayed = unsafe { tf.push(b) } {
            free_delayed(b, page);
        }
        b = next;
    }
}
