//! Loom model checks of the lock-free lists behind cross-thread frees (`tieralloc::remote`,
//! which is all the crate builds under `--cfg loom`). Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom
//! ```
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use std::collections::HashMap;
use tieralloc::remote::{
    Block, BlockStack, Pushed, RemoteFree, DELAYED_FREEING, NEVER_DELAYED, USE_DELAYED,
};

/// A block the test owns: two words of heap memory, 8-byte aligned (the low bits of the
/// list word carry the page state). Passed between threads as an address.
fn new_block() -> usize {
    Box::into_raw(Box::new([0usize; 2])) as usize
}

fn free_block(b: usize) {
    // SAFETY: made by new_block and freed once, after every list let go of it.
    drop(unsafe { Box::from_raw(b as *mut [usize; 2]) });
}

/// The addresses on a list taken with `take_all`, in list order.
fn walk(mut b: *mut Block) -> Vec<usize> {
    let mut v = Vec::new();
    while !b.is_null() {
        v.push(b as usize);
        // SAFETY: b is one of our blocks, linked by push before it was published.
        b = unsafe { (*b).next };
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

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b
}

/// (a) Two threads push blocks onto a page's RemoteFree while the owner takes the list
/// concurrently: every block is collected exactly once, each take's count is the length of
/// its list, and the state bits are untouched.
#[test]
fn remote_free_pushes_race_with_take_all() {
    builder().check(|| {
        let rf = Arc::new(RemoteFree::new());
        let blocks: Vec<usize> = (0..3).map(|_| new_block()).collect();
        let pushers: Vec<_> = [vec![blocks[0], blocks[1]], vec![blocks[2]]]
            .into_iter()
            .map(|mine| {
                let rf = rf.clone();
                thread::spawn(move || {
                    for b in mine {
                        // SAFETY: we own b; it is on no list and 8-byte aligned.
                        let r = unsafe { rf.push(b as *mut Block) };
                        assert_eq!(r, Pushed::OnPage, "state NORMAL always pushes");
                    }
                })
            })
            .collect();
        // Each take's count is the length of the list it took.
        let (first, n1) = rf.take_counted();
        let mut seen = walk(first);
        assert_eq!(seen.len(), n1 as usize, "count of the first take");
        for p in pushers {
            p.join().unwrap();
        }
        let (rest, n2) = rf.take_counted();
        let rest = walk(rest);
        assert_eq!(rest.len(), n2 as usize, "count of the second take");
        seen.extend(rest);
        exactly_once(&blocks, &seen);
        assert!(rf.take_all().is_null());
        assert!(!rf.has_blocks());
        assert_eq!(rf.state(), tieralloc::remote::NORMAL);
        for b in blocks {
            free_block(b);
        }
    });
}

/// (b) The delayed-free protocol against an owner that is leaving. The page is full
/// (USE_DELAYED); a remote thread frees a block: if its push says Delayed it puts the block on
/// the owner heap's BlockStack and calls finish_delayed. Meanwhile the owner calls
/// set_never_delayed (which must wait out DELAYED_FREEING), then drains its stack and the
/// page's list. Whatever the interleaving: the block is found exactly once, no block reaches
/// the owner's stack after set_never_delayed returned and the stack was drained, and the
/// final state is NEVER_DELAYED.
#[test]
fn delayed_free_races_with_owner_leaving() {
    builder().check(|| {
        let page = Arc::new(RemoteFree::new());
        let stack = Arc::new(BlockStack::new());
        page.force_state(USE_DELAYED);
        let block = new_block();
        let remote = {
            let (page, stack) = (page.clone(), stack.clone());
            thread::spawn(move || {
                // SAFETY: we own the block, which is on no list.
                match unsafe { page.push(block as *mut Block) } {
                    Pushed::OnPage => false,
                    Pushed::Delayed => {
                        assert_eq!(page.state(), DELAYED_FREEING);
                        // SAFETY: as above; the owner cannot leave until finish_delayed.
                        unsafe { stack.push(block as *mut Block) };
                        page.finish_delayed();
                        true
                    }
                }
            })
        };
        // The owner leaves.
        page.set_never_delayed();
        assert_eq!(page.state(), NEVER_DELAYED);
        let mut seen = walk(stack.take_all());
        seen.extend(take_page_list(&page));
        let delayed = remote.join().unwrap();
        // After the owner drained its stack, nothing may arrive there any more.
        assert!(
            stack.take_all().is_null(),
            "a delayed free reached the stack of an owner that had left"
        );
        // A free that came after the owner left is on the page list (for the adopter).
        seen.extend(take_page_list(&page));
        exactly_once(&[block], &seen);
        if delayed {
            // A delayed free can only have happened before the owner's state change.
            assert!(!seen.is_empty());
        }
        assert_eq!(page.state(), NEVER_DELAYED);
        free_block(block);
    });
}

/// (b') Two remote frees on a full page: the first goes the delayed way, the second (seeing
/// DELAYED_FREEING or NORMAL) pushes onto the page. The owner, still active, drains its stack
/// in a loop as it does on its slow paths; at the end both blocks are found exactly once and
/// the state is back to NORMAL.
#[test]
fn two_remote_frees_on_a_full_page() {
    builder().check(|| {
        let page = Arc::new(RemoteFree::new());
        let stack = Arc::new(BlockStack::new());
        page.force_state(USE_DELAYED);
        let blocks = [new_block(), new_block()];
        let remotes: Vec<_> = blocks
            .iter()
            .map(|&b| {
                let (page, stack) = (page.clone(), stack.clone());
                thread::spawn(move || {
                    // SAFETY: we own b.
                    if unsafe { page.push(b as *mut Block) } == Pushed::Delayed {
                        // SAFETY: as above.
                        unsafe { stack.push(b as *mut Block) };
                        page.finish_delayed();
                        1
                    } else {
                        0
                    }
                })
            })
            .collect();
        let mut seen = walk(stack.take_all());
        seen.extend(take_page_list(&page));
        let delayed: usize = remotes.into_iter().map(|r| r.join().unwrap()).sum();
        assert_eq!(delayed, 1, "exactly one free sees USE_DELAYED");
        seen.extend(walk(stack.take_all()));
        seen.extend(take_page_list(&page));
        exactly_once(&blocks, &seen);
        assert_eq!(page.state(), tieralloc::remote::NORMAL);
        for b in blocks {
            free_block(b);
        }
    });
}

/// (c) BlockStack: two pushers, one consumer taking everything in a loop until it has seen
/// every block: nothing lost, nothing duplicated.
#[test]
fn block_stack_two_pushers_one_consumer() {
    builder().check(|| {
        let stack = Arc::new(BlockStack::new());
        let blocks: Vec<usize> = (0..4).map(|_| new_block()).collect();
        let pushers: Vec<_> = blocks
            .chunks(2)
            .map(|mine| {
                let mine = mine.to_vec();
                let stack = stack.clone();
                thread::spawn(move || {
                    for b in mine {
                        // SAFETY: we own b.
                        unsafe { stack.push(b as *mut Block) };
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        while seen.len() < blocks.len() {
            let got = walk(stack.take_all());
            if got.is_empty() {
                thread::yield_now();
            }
            seen.extend(got);
        }
        for p in pushers {
            p.join().unwrap();
        }
        assert!(stack.take_all().is_null());
        exactly_once(&blocks, &seen);
        for b in blocks {
            free_block(b);
        }
    });
}
