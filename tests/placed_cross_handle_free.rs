//! `Placed` blocks freed through a handle of another kind. The docs let a `preferred()` or
//! `bound()` block be freed through any handle made by `preferred` or `bound` (since review
//! rev27, any `Placed` block through any handle), but those methods return a handle that is
//! not one node (`local()`, an interleave) as it is: so `Placed::local()?.preferred()`, still
//! a local handle, may be handed the block of `Placed::node(0)?.preferred()`, a mapping of its
//! own, and the other way round; and so may an interleave handle and a node one. Such a free
//! must give back exactly the block: the mapping unmapped, the heap block returned to its heap
//! (its page left mapped).
//!
//! In a child process (a wrong free may crash it or unmap heap memory under the test harness).

use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::time::Duration;
use tieralloc::Placed;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

const PAGE: usize = 4096;

/// Whether the page holding `p` is mapped (msync fails with ENOMEM on an unmapped one).
fn mapped(p: *const u8) -> bool {
    let page = (p as usize) & !(PAGE - 1);
    // SAFETY: msync only asks the kernel about the range; it reads or writes no memory of
    // ours (MS_ASYNC on private anonymous memory does nothing).
    unsafe { libc::msync(page as *mut libc::c_void, PAGE, libc::MS_ASYNC) == 0 }
}

/// A block of `h` with layout `l`, filled with `v`.
fn filled(h: Placed, l: Layout, v: u8) -> NonNull<u8> {
    let b = h.allocate(l).expect("allocates");
    let p = b.as_ptr() as *mut u8;
    // SAFETY: a fresh block of at least l.size() bytes.
    unsafe { p.write_bytes(v, l.size()) };
    NonNull::new(p).unwrap()
}

#[test]
fn inner_a_made_handle_frees_a_block_of_another_made_handle() {
    if !child::is_child() {
        return;
    }
    let node0 = Placed::node(0).unwrap();
    let local = Placed::local().unwrap();
    assert_eq!(
        local.preferred(),
        local,
        "preferred() leaves a local handle as it is"
    );
    assert_eq!(
        local.bound(),
        local,
        "bound() leaves a local handle as it is"
    );
    let interleave = Placed::interleave(&[0]).unwrap();
    for (own_map, other) in [
        (node0.preferred(), local.preferred()),
        (node0.bound(), local.bound()),
        (interleave, node0),
    ] {
        let l = Layout::from_size_align(PAGE + 5, 8).unwrap();

        // The mapped block, freed through the local handle made by the same method.
        let p = filled(own_map, l, 3);
        assert!(!tieralloc::owns(p.as_ptr()), "a mapping of its own");
        // SAFETY: a live block of `own_map`'s with layout `l`, handed to a handle that the
        // docs let free it.
        unsafe { other.deallocate(p, l) };
        assert!(
            !mapped(p.as_ptr()),
            "{own_map:?}'s block freed: its mapping is gone"
        );

        // A heap block of the local handle, freed through the mapped one.
        let q = filled(other, l, 4);
        assert!(tieralloc::owns(q.as_ptr()), "a heap block");
        // SAFETY: as above, the other way round.
        unsafe { own_map.deallocate(q, l) };
        assert!(
            mapped(q.as_ptr()),
            "{other:?}'s heap block freed through {own_map:?}: its heap's page was unmapped"
        );
        // The heap still serves, and its memory is all there.
        let v: Vec<u8> = (0..100_000).map(|i| i as u8).collect();
        assert!(v.iter().enumerate().all(|(i, &b)| b == i as u8));
    }
}

#[test]
fn a_made_handle_frees_a_block_of_another_made_handle() {
    if child::is_child() {
        return;
    }
    let mut cmd = child::this_test("inner_a_made_handle_frees_a_block_of_another_made_handle");
    child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
}
