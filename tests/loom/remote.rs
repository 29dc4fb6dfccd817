//! Remote frees and delayed frees (`heap::remote`, `heap::delayed`).

use super::*;

/// Two threads push blocks onto a page's RemoteFree while the owner takes the list
/// concurrently: every block is collected exactly once, each take's count is the length of
/// its list, the links the owner walks are the ones the pushers wrote (loom checks the
/// release of `push` against the acquire of `take_counted`), and the state bits are
/// untouched.
#[test]
fn remote_free_pushes_race_with_take_all() {
    check(3, |yield_first| {
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
        if yield_first {
            thread::yield_now();
        }
        let mut seen = take_page_list(&rf);
        for p in pushers {
            p.join().unwrap();
        }
        seen.extend(take_page_list(&rf));
        exactly_once(&blocks, &seen);
        assert!(rf.take_all().is_null());
        assert!(!rf.has_blocks());
        assert_eq!(rf.state(), NORMAL);
        for b in blocks {
            free_block(b);
        }
    });
}

/// A remote free in the real order: push, and if that says Delayed, `delayed::finish` onto
/// the owner's stack. Returns whether it went the delayed way.
pub(super) fn remote_free(page: &RemoteFree, owner_stack: &BlockStack, b: usize) -> bool {
    // SAFETY: we own b, which is on no list.
    match unsafe { page.push(b as *mut Block) } {
        Pushed::OnPage => false,
        Pushed::Delayed => {
            assert_eq!(page.state(), DELAYED_FREEING);
            // SAFETY: push said Delayed; the owner cannot leave until finish returns.
            unsafe { delayed::finish(owner_stack, page, b as *mut Block) };
            true
        }
    }
}

/// The owner's drain, with the page's owner-side free list as a loom cell: `delayed::drain`
/// hands each block to the closure, which frees it into the page.
pub(super) fn drain_into(stack: &BlockStack, page: &RemoteFree, local: &UnsafeCell<Vec<usize>>) {
    // SAFETY: the caller owns the heap of `stack` and the page; every block is the page's.
    unsafe {
        delayed::drain(
            stack,
            |_| ((), page),
            |b, ()| {
                // Freeing may retire the page (free_local): never while a remote thread is
                // still between its push and finish_delayed on it.
                assert_ne!(
                    page.state(),
                    DELAYED_FREEING,
                    "drained under a delayed free"
                );
                // SAFETY: the page's local list is the owner's (the caller).
                local.with_mut(|l| (*l).push(b as usize))
            },
        )
    };
}

/// The delayed-free protocol against an owner that is leaving (thread exit). The page is
/// full (USE_DELAYED); a remote thread frees a block (push, then `delayed::finish` if
/// Delayed). Meanwhile the owner calls set_never_delayed (which must wait out
/// DELAYED_FREEING), then drains its stack with `delayed::drain` and takes the page's list.
/// Whatever the interleaving: the block is found exactly once, no block reaches the owner's
/// stack after it left, and the final state is NEVER_DELAYED.
#[test]
fn delayed_free_races_with_owner_leaving() {
    check(3, |yield_first| {
        let page = Arc::new(RemoteFree::new());
        let stack = Arc::new(BlockStack::new());
        let local = UnsafeCell::new(Vec::new());
        page.force_state(USE_DELAYED);
        let block = new_block();
        let remote = {
            let (page, stack) = (page.clone(), stack.clone());
            thread::spawn(move || remote_free(&page, &stack, block))
        };
        if yield_first {
            thread::yield_now();
        }
        // The owner leaves.
        page.set_never_delayed();
        assert_eq!(page.state(), NEVER_DELAYED);
        drain_into(&stack, &page, &local);
        // SAFETY: every other thread of the model has been joined: nothing else reaches the cell now.
        let mut seen = local.with(|l| unsafe { (*l).clone() });
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
            // SAFETY: every other thread of the model has been joined: nothing else reaches the cell now.
            assert!(local.with(|l| unsafe { (*l).len() }) == 1);
        }
        assert_eq!(page.state(), NEVER_DELAYED);
        free_block(block);
    });
}

/// Two remote frees on a full page: the first goes the delayed way, the second (seeing
/// DELAYED_FREEING or NORMAL) pushes onto the page. The owner, still active, drains its stack
/// as it does on its slow paths (`delayed::drain` puts back a block whose pusher has not
/// finished); at the end both blocks are found exactly once and the state is back to NORMAL.
#[test]
fn two_remote_frees_on_a_full_page() {
    check(3, |yield_first| {
        let page = Arc::new(RemoteFree::new());
        let stack = Arc::new(BlockStack::new());
        let local = UnsafeCell::new(Vec::new());
        page.force_state(USE_DELAYED);
        let blocks = [new_block(), new_block()];
        let remotes: Vec<_> = blocks
            .iter()
            .map(|&b| {
                let (page, stack) = (page.clone(), stack.clone());
                thread::spawn(move || remote_free(&page, &stack, b) as usize)
            })
            .collect();
        if yield_first {
            thread::yield_now();
        }
        drain_into(&stack, &page, &local);
        let mut seen = take_page_list(&page);
        let delayed: usize = remotes.into_iter().map(|r| r.join().unwrap()).sum();
        assert_eq!(delayed, 1, "exactly one free sees USE_DELAYED");
        drain_into(&stack, &page, &local);
        seen.extend(take_page_list(&page));
        // SAFETY: the remote threads are joined: the owner's list is read by its only user.
        seen.extend(local.with(|l| unsafe { (*l).clone() }));
        exactly_once(&blocks, &seen);
        assert_eq!(page.state(), NORMAL);
        for b in blocks {
            free_block(b);
        }
    });
}

/// BlockStack: two pushers, one consumer taking everything in a loop until it has seen
/// every block: nothing lost, nothing duplicated, every link read after it was written.
#[test]
fn block_stack_two_pushers_one_consumer() {
    check(3, |yield_first| {
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
        if yield_first {
            thread::yield_now();
        }
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
