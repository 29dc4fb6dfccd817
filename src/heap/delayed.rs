//! The two halves of a delayed free that run outside `heap::remote`'s atomics, kept apart
//! from the thread heap so that loom can check them with the real code (tests/loom/).
//!
//! Owns: [`finish`] (the remote thread's end of a delayed free) and [`drain`] (the owner
//! taking in its delayed stack). The protocol is described in `heap::remote`; the invariant
//! these keep: a block on a heap's delayed stack belongs to a page that heap owns, and the
//! owner frees it into its page only once the remote thread that put it there is done with
//! the page (its state is no longer `DELAYED_FREEING`).

use super::remote::{Block, BlockStack, RemoteFree, DELAYED_FREEING};

/// Ends a remote free that [`RemoteFree::push`] turned into a delayed one: `block` goes on
/// the owner heap's delayed stack `stack`, then the page's state goes back to `NORMAL`.
///
/// # Safety
/// `tf.push(block)` just returned `Pushed::Delayed` (so the page is `DELAYED_FREEING` and its
/// owner, whose delayed stack `stack` is, cannot let go of the page before this returns); the
/// caller owns `block`.
#[inline]
pub unsafe fn finish(stack: &BlockStack, tf: &RemoteFree, block: *mut Block) {
    // SAFETY: we own block (contract); the owner heap, and so its stack, stays while the
    // page is DELAYED_FREEING.
    unsafe { stack.push(block) };
    tf.finish_delayed();
}

/// The owner takes in its delayed stack: every block on `stack` goes to `free` with its page
/// (`page_of` names the page and its remote-free word), except a block whose page is still
/// `DELAYED_FREEING`: its pusher has not finished, and freeing now could retire the page
/// under it, so it goes back on the stack for the next drain.
///
/// # Safety
/// The caller owns the heap whose delayed stack `stack` is, and every page a block on it
/// belongs to; `page_of` and `free` are safe to call on those blocks.
#[inline]
pub unsafe fn drain<'a, P: Copy>(
    stack: &BlockStack,
    mut page_of: impl FnMut(*mut Block) -> (P, &'a RemoteFree),
    mut free: impl FnMut(*mut Block, P),
) {
    let mut b = stack.take_all();
    while !b.is_null() {
        // SAFETY: b came off our stack, whose acquire made its link visible; it is ours now.
        let next = unsafe { Block::next(b) };
        let (page, tf) = page_of(b);
        if tf.state() == DELAYED_FREEING {
            // SAFETY: b is ours and on no list (we just took it).
            unsafe { stack.push(b) };
        } else {
            free(b, page);
        }
        b = next;
    }
}
