//! The lock-free pieces of cross-thread freeing, kept apart from the rest of the heap so that
//! loom can check them on their own (tests/loom/).
//!
//! Owns: [`RemoteFree`], a page's list of blocks freed by other threads, with a two-bit
//! delayed-free state in its low bits and the length of the list in its top 16 bits; and
//! [`BlockStack`], a heap's list of "delayed" blocks.
//! Touches only the first word of the blocks pushed onto them (the intrusive link), encoded
//! in the `secure` build (`link_key`, whose secret comes from `libc::getrandom`).
//!
//! Protocol (after mimalloc's delayed free, written anew):
//! - `NORMAL`: a remote free is one CAS that pushes the block onto the page's list; the owner
//!   takes the whole list with one swap when it runs out of blocks.
//! - `USE_DELAYED`: the page is full and sits in no queue, so the owner would never look at its
//!   list. The first remote free flips the state to `DELAYED_FREEING` instead of pushing, puts
//!   the block on the owner heap's [`BlockStack`], then sets the state back to `NORMAL`. The
//!   owner learns the page has room again when it drains that stack.
//! - `DELAYED_FREEING`: a remote thread is between those two steps. The owner does not free
//!   the page, nor hand the heap away at thread exit, until it is over.
//! - `NEVER_DELAYED`: the page's owner is leaving or gone (abandoned); every free pushes.
//!
//! The list keeps its own length (each push adds one to the count in the word's top bits), so
//! the owner that takes it knows how many blocks came back without walking it: the walk was
//! one cache miss per block on a line the freeing thread had just written, most of a
//! producer's time in a producer/consumer hand-off. A page holds at most 8192 blocks and a
//! block is on the list at most once, so 16 bits never overflow; blocks lie below 2^47
//! (segments are only mapped there), so the pointer bits never reach the count.

use crate::sync::{spin_hint, AtomicPtr, AtomicUsize, Ordering, UnsafeCell};
use core::ptr;

/// A free block: only its first word, the link, has meaning.
///
/// The link is plain memory that one thread writes and another reads after an atomic hands
/// the block over, so it sits in a [`crate::sync::UnsafeCell`]: one word here, a cell whose
/// every access loom checks under `--cfg loom`. It is reached through [`Block::next`] and
/// [`Block::set_next`] only.
#[repr(C)]
pub struct Block {
    next: UnsafeCell<*mut Block>,
}

impl Block {
    /// A block on no list. The allocator never makes one (its blocks are page memory seen as a
    /// `Block`); tests and models do.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Block {
            next: UnsafeCell::new(ptr::null_mut()),
        }
    }
    /// A block on no list (see above).
    #[cfg(loom)]
    pub fn new() -> Self {
        Block {
            next: UnsafeCell::new(ptr::null_mut()),
        }
    }

    /// The block after `b` on its list.
    ///
    /// # Safety
    /// `b` is a block the caller may read: one it owns, or one it took from a list after the
    /// atomic operation that published it (the link was written before that).
    #[cfg(not(all(feature = "secure", not(loom))))]
    #[inline(always)]
    pub unsafe fn next(b: *const Block) -> *mut Block {
        // SAFETY: b is valid to read (contract); the cell is the block's first word.
        unsafe { (*b).next.with(|p| *p) }
    }

    /// The block after `b` on its list, decoded (the `secure` build: [`link_key`]).
    ///
    /// # Safety
    /// As the default build's `next`.
    #[cfg(all(feature = "secure", not(loom)))]
    #[inline(always)]
    pub unsafe fn next(b: *const Block) -> *mut Block {
        // SAFETY: b is valid to read (contract); the cell is the block's first word.
        link_key::decode(b, unsafe { (*b).next.with(|p| *p) })
    }

    /// [`Block::next`] with the secret given: the owner's pop, which has the page's copy of
    /// it at hand (`heap::secure::PageKeys`).
    ///
    /// # Safety
    /// As `next`; `k` is the secret (`link_key::get`).
    #[cfg(all(feature = "secure", not(loom)))]
    #[inline(always)]
    pub unsafe fn next_keyed(b: *const Block, k: usize) -> *mut Block {
        // SAFETY: b is valid to read (contract); the cell is the block's first word.
        link_key::encode_with(b, unsafe { (*b).next.with(|p| *p) }, k)
    }

    /// [`Block::set_next`] with `b`'s key given (`link_key::key_with`): the owner's free,
    /// which computes it once for the link and the freed marker (`heap::secure`).
    ///
    /// # Safety
    /// As `set_next`; `key` is `b`'s key.
    #[cfg(all(feature = "secure", not(loom)))]
    #[inline(always)]
    pub unsafe fn set_next_with_key(b: *mut Block, next: *mut Block, key: usize) {
        let next = link_key::with_key(next, key);
        // SAFETY: b is ours alone (contract).
        unsafe { (*b).next.with_mut(|p| *p = next) }
    }

    /// Sets the block after `b`.
    ///
    /// # Safety
    /// The caller owns `b` (no other thread reads or writes it until the caller publishes it).
    #[inline(always)]
    pub unsafe fn set_next(b: *mut Block, next: *mut Block) {
        #[cfg(all(feature = "secure", not(loom)))]
        let next = link_key::encode(b, next);
        // SAFETY: b is ours alone (contract).
        unsafe { (*b).next.with_mut(|p| *p = next) }
    }
}

/// The `secure` build's encoding of free-list links (docs/security.md): a block's first word
/// holds its successor XORed with a key derived from the block's own address and a
/// per-process secret (read once, with `getrandom`, before the first link is written: `ensure`), so a
/// link overwritten after the free (a use after free, an overflow from the block before)
/// decodes to an address outside the page, which the owner's pop checks
/// (`Page::link_ok`) instead of following. The end of a list stays 0 (an overwrite with
/// zeros cuts a list short: its blocks leak, none is handed out twice). Every list that
/// links blocks (a page's `free`, `local_free` and remote list, a heap's delayed stack, the
/// fork's walk) goes through [`Block::next`] and [`Block::set_next`], so all are encoded.
#[cfg(all(feature = "secure", not(loom)))]
pub(crate) mod link_key {
    use super::Block;
    use core::sync::atomic::{AtomicUsize, Ordering};

    /// The per-process secret; 0 until the first link is encoded.
    static SECRET: AtomicUsize = AtomicUsize::new(0);

    /// The secret. One load, no test: [`ensure`] has made it before the first link is
    /// written (a block is on a list only after its page was set up, `heap::secure::
    /// init_page`, which calls it). The thread that set a page up, or any thread that frees
    /// one of its blocks after the block was handed to it, sees the value made then: the
    /// secret is written once.
    #[inline(always)]
    fn secret() -> usize {
        SECRET.load(Ordering::Relaxed)
    }

    /// Makes the secret if it is not made yet: before a page's first block is carved, and
    /// by tests that link blocks of their own.
    #[inline]
    pub fn ensure() {
        if SECRET.load(Ordering::Relaxed) == 0 {
            make_secret();
        }
    }

    /// Reads the secret from the kernel once; the first thread's value wins a race.
    #[cold]
    #[inline(never)]
    fn make_secret() -> usize {
        let mut k: usize = 0;
        // SAFETY: getrandom writes at most the 8 bytes of `k`, a local it may write.
        let n = unsafe {
            libc::getrandom(
                (&mut k as *mut usize).cast(),
                core::mem::size_of::<usize>(),
                0,
            )
        };
        if n != core::mem::size_of::<usize>() as isize {
            // No getrandom (a very old kernel): the stack's address and the clock, which
            // at least differ from run to run.
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes the timespec it is given.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            k = (&k as *const usize as usize) ^ (ts.tv_nsec as usize).rotate_left(32);
        }
        k |= 1;
        match SECRET.compare_exchange(0, k, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => k,
            Err(won) => won,
        }
    }

    /// The key of the link stored in block `b`, for secret `k`: the block's address mixed
    /// with the secret (XORed, then multiplied by the secret, which is odd), so that each
    /// block's key differs. Three instructions past the secret's load (hot paths use the
    /// copy a page keeps, `heap::secure::PageKeys`, and save the load through the GOT).
    #[inline(always)]
    pub fn key_with(b: *const Block, k: usize) -> usize {
        ((b as usize) ^ k).wrapping_mul(k)
    }

    /// The secret, for a page's copy of it.
    #[inline]
    pub fn get() -> usize {
        secret()
    }

    /// The word stored in `b` for link `next` (the end of a list, null, is stored as the
    /// block's key: [`with_key`]).
    #[inline(always)]
    pub fn encode(b: *const Block, next: *mut Block) -> *mut Block {
        encode_with(b, next, secret())
    }

    /// [`encode`] with the secret given (see [`key_with`]); also the decode.
    #[inline(always)]
    pub fn encode_with(b: *const Block, next: *mut Block, k: usize) -> *mut Block {
        with_key(next, key_with(b, k))
    }

    /// Link `next` XORed with a block's `key` (its encoding and its decoding). The end of a
    /// list too: it is stored as the key itself, not as 0, so that neither the encode nor
    /// the decode tests for null (two branches per alloc+free pair, about 7 instructions
    /// on `pairs`). A word of 0 in a block on a list (never written by `set_next`) decodes
    /// to the key, which the owner's check (`Page::link_ok`) finds is no block of the page.
    #[inline(always)]
    pub fn with_key(next: *mut Block, key: usize) -> *mut Block {
        ((next as usize) ^ key) as *mut Block
    }

    /// The link held by word `raw` of block `b`.
    #[inline(always)]
    pub fn decode(b: *const Block, raw: *mut Block) -> *mut Block {
        encode(b, raw)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_link_is_stored_encoded_and_read_back() {
            ensure();
            let mut blocks = [Block::new(), Block::new()];
            let b: *mut Block = &mut blocks[0];
            let next: *mut Block = &mut blocks[1];
            // SAFETY: both blocks are ours.
            unsafe {
                Block::set_next(b, next);
                let raw = (*b).next.with(|p| *p);
                assert_ne!(raw, next, "stored in the clear");
                assert_eq!(Block::next(b), next);
                // The end of a list is stored as the key, not 0, and read back as null; a
                // forged word (0 among them) decodes to another address.
                Block::set_next(b, core::ptr::null_mut());
                assert!(!(*b).next.with(|p| *p).is_null());
                assert!(Block::next(b).is_null());
                (*b).next.with_mut(|p| *p = next);
                assert_ne!(Block::next(b), next);
                (*b).next.with_mut(|p| *p = core::ptr::null_mut());
                assert!(!Block::next(b).is_null());
            }
            // Another block's key differs: the same link is stored differently.
            assert_ne!(encode(next, b), encode(b, b));
        }
    }
}

impl Default for Block {
    fn default() -> Self {
        Self::new()
    }
}

/// The page's delayed-free state (the low two bits of [`RemoteFree`]).
pub type DelayState = usize;
/// Remote frees push onto the page's own list.
pub const NORMAL: DelayState = 0;
/// The page is full: the next remote free goes to the owner heap's delayed stack.
pub const USE_DELAYED: DelayState = 1;
/// A remote thread is pushing onto the owner heap's delayed stack right now.
pub const DELAYED_FREEING: DelayState = 2;
/// The owner is gone or going: always push onto the page's list.
pub const NEVER_DELAYED: DelayState = 3;
const STATE_MASK: usize = 3;
/// The count's lowest bit.
const COUNT_SHIFT: u32 = 48;
/// One more block on the list.
const COUNT_ONE: usize = 1 << COUNT_SHIFT;
/// The list head's bits.
const PTR_MASK: usize = (COUNT_ONE - 1) & !STATE_MASK;

/// A page's list of blocks freed by threads other than its owner.
pub struct RemoteFree {
    word: AtomicUsize,
}

/// What [`RemoteFree::push`] did with the block.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// The block is on the page's list; the caller is done and must not touch the page again.
    OnPage,
    /// The state was `USE_DELAYED` and is now `DELAYED_FREEING`; the block was not pushed.
    /// The caller must put it on the owner's delayed stack and then call
    /// [`RemoteFree::finish_delayed`].
    Delayed,
}

impl RemoteFree {
    /// An empty list in state `NORMAL`.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RemoteFree {
            word: AtomicUsize::new(0),
        }
    }
    /// An empty list in state `NORMAL`.
    #[cfg(loom)]
    pub fn new() -> Self {
        RemoteFree {
            word: AtomicUsize::new(0),
        }
    }

    /// Frees `block` from a thread that does not own the page.
    ///
    /// # Safety
    /// `block` must be a block of this page that the caller owns and that is on no list; it
    /// must be at least 8-byte aligned.
    pub unsafe fn push(&self, block: *mut Block) -> Pushed {
        let mut old = self.word.load(Ordering::Relaxed);
        loop {
            let (new, result) = if old & STATE_MASK == USE_DELAYED {
                ((old & !STATE_MASK) | DELAYED_FREEING, Pushed::Delayed)
            } else {
                debug_assert!(block as usize & !PTR_MASK == 0);
                // SAFETY: the caller owns `block`; writing its link before publishing it with
                // the release CAS below is what makes the list readable by the owner.
                unsafe { Block::set_next(block, (old & PTR_MASK) as *mut Block) };
                let count = (old & !(PTR_MASK | STATE_MASK)).wrapping_add(COUNT_ONE);
                (
                    (block as usize) | count | (old & STATE_MASK),
                    Pushed::OnPage,
                )
            };
            match self
                .word
                .compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return result,
                Err(cur) => old = cur,
            }
        }
    }

    /// Ends a `Pushed::Delayed` free: `DELAYED_FREEING` becomes `NORMAL`, keeping the list.
    pub fn finish_delayed(&self) {
        let mut old = self.word.load(Ordering::Relaxed);
        loop {
            debug_assert_eq!(old & STATE_MASK, DELAYED_FREEING);
            let new = old & !STATE_MASK; // NORMAL
            match self
                .word
                .compare_exchange_weak(old, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(cur) => old = cur,
            }
        }
    }

    /// Takes every block pushed so far (owner only), leaving the state as it is. Returns the
    /// head of the taken list (null if none).
    #[inline]
    #[cfg_attr(not(loom), allow(dead_code))] // the allocator takes counted; tests/loom/ this
    pub fn take_all(&self) -> *mut Block {
        self.take_counted().0
    }

    /// [`take_all`](Self::take_all), with the number of blocks on the taken list.
    #[inline]
    pub fn take_counted(&self) -> (*mut Block, u32) {
        let mut old = self.word.load(Ordering::Relaxed);
        loop {
            if old & PTR_MASK == 0 {
                return (ptr::null_mut(), 0);
            }
            match self.word.compare_exchange_weak(
                old,
                old & STATE_MASK,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return ((old & PTR_MASK) as *mut Block, (old >> COUNT_SHIFT) as u32),
                Err(cur) => old = cur,
            }
        }
    }

    /// Whether any block is waiting (a cheap relaxed peek for the owner).
    #[inline]
    pub fn has_blocks(&self) -> bool {
        self.word.load(Ordering::Relaxed) & PTR_MASK != 0
    }

    /// How many blocks are waiting (a relaxed look: a push may land right after).
    #[inline]
    pub fn pending(&self) -> u32 {
        (self.word.load(Ordering::Relaxed) >> COUNT_SHIFT) as u32
    }

    /// The current state.
    pub fn state(&self) -> DelayState {
        self.word.load(Ordering::Acquire) & STATE_MASK
    }

    /// Owner only: moves to `to` unless a delayed free is in flight. Returns false (changing
    /// nothing) if the state is `DELAYED_FREEING`, or if it is `NEVER_DELAYED` and
    /// `override_never` is false.
    pub fn try_set_state(&self, to: DelayState, override_never: bool) -> bool {
        let mut old = self.word.load(Ordering::Relaxed);
        loop {
            let cur = old & STATE_MASK;
            if cur == DELAYED_FREEING || (cur == NEVER_DELAYED && !override_never) {
                return false;
            }
            if cur == to {
                return true;
            }
            match self.word.compare_exchange_weak(
                old,
                (old & !STATE_MASK) | to,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(c) => old = c,
            }
        }
    }

    /// Owner only, when leaving: waits out any delayed free in flight, then sets
    /// `NEVER_DELAYED`. Afterwards no thread will touch the owner heap's delayed stack on this
    /// page's behalf.
    pub fn set_never_delayed(&self) {
        loop {
            if self.try_set_state(NEVER_DELAYED, true) {
                return;
            }
            spin_hint();
        }
    }

    /// For the loom models of fork: the state, list head and count as a fork would copy
    /// them. A read-modify-write that changes nothing, so it reads the latest value (a plain
    /// load could return an older one) and orders the list's links before the caller's reads
    /// of them, as the copy a fork makes does.
    #[cfg(loom)]
    pub fn fork_copy(&self) -> (DelayState, *mut Block, u32) {
        let w = self.word.fetch_add(0, Ordering::SeqCst);
        (
            w & STATE_MASK,
            (w & PTR_MASK) as *mut Block,
            (w >> COUNT_SHIFT) as u32,
        )
    }

    /// Owner only, when adopting or reinitialising a page that no thread can be freeing into
    /// with a delayed free: forces the state, keeping the list.
    pub fn force_state(&self, to: DelayState) {
        let mut old = self.word.load(Ordering::Relaxed);
        loop {
            match self.word.compare_exchange_weak(
                old,
                (old & !STATE_MASK) | to,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(c) => old = c,
            }
        }
    }
}

impl Default for RemoteFree {
    fn default() -> Self {
        Self::new()
    }
}

/// A multi-producer stack of blocks, drained whole by one consumer (a heap's delayed frees).
/// Push is a CAS loop; the consumer takes everything with one swap, so there is no ABA.
pub struct BlockStack {
    head: AtomicPtr<Block>,
}

impl BlockStack {
    /// An empty stack.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        BlockStack {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }
    /// An empty stack.
    #[cfg(loom)]
    pub fn new() -> Self {
        BlockStack {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Pushes `block`.
    ///
    /// # Safety
    /// The caller owns `block`, which is on no other list.
    pub unsafe fn push(&self, block: *mut Block) {
        let mut old = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: we own `block`; its link is published by the release CAS.
            unsafe { Block::set_next(block, old) };
            match self
                .head
                .compare_exchange_weak(old, block, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(cur) => old = cur,
            }
        }
    }

    /// Whether the stack looks empty (a relaxed look: a push may land right after).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Relaxed).is_null()
    }

    /// For the loom models of fork: the head as a fork would copy it (see
    /// [`RemoteFree::fork_copy`]: a compare-exchange that changes nothing).
    #[cfg(loom)]
    pub fn fork_copy(&self) -> *mut Block {
        loop {
            let h = self.head.load(Ordering::Relaxed);
            if self
                .head
                .compare_exchange(h, h, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                return h;
            }
        }
    }

    /// Takes every block (consumer only).
    #[inline]
    pub fn take_all(&self) -> *mut Block {
        if self.head.load(Ordering::Relaxed).is_null() {
            return ptr::null_mut();
        }
        self.head.swap(ptr::null_mut(), Ordering::Acquire)
    }
}

impl Default for BlockStack {
    fn default() -> Self {
        Self::new()
    }
}
