//! Alignment at and above the largest one tieralloc serves (2 MiB), with plenty of memory:
//! through `TierAlloc` (GlobalAlloc) and `Placed` (allocator-api2).
//!
//! The contract (README, "Contract"): alignments up to 2 MiB are served, larger ones return
//! null. So with memory to spare every alignment up to 2 MiB gives a block that is aligned,
//! writable end to end and keeps its alignment through realloc; every alignment above gives
//! null, never a block (a block there would come from a mapping aligned only to the 4 MiB
//! segment: misaligned for 8 MiB and up). `Placed::interleave` maps each block on its own and
//! serves any alignment: aligned, writable, and still aligned after growing.

use allocator_api2::alloc::Allocator;
use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const MIB: usize = 1 << 20;

/// Alignments above 2 MiB: 4 MiB (the segment size) up to 128 MiB.
const OVER: [usize; 6] = [4 * MIB, 8 * MIB, 16 * MIB, 32 * MIB, 64 * MIB, 128 * MIB];

/// Writes a pattern over all of `[p, p+len)` and checks it back.
fn write_whole(p: *mut u8, len: usize, seed: u8) {
    // SAFETY: the caller hands a live block of at least len bytes.
    let s = unsafe { std::slice::from_raw_parts_mut(p, len) };
    for (i, b) in s.iter_mut().enumerate().step_by(4096) {
        *b = seed.wrapping_add((i >> 12) as u8);
    }
    s[len - 1] = seed ^ 0xFF;
    assert!(s
        .iter()
        .enumerate()
        .step_by(4096)
        .all(|(i, b)| *b == seed.wrapping_add((i >> 12) as u8)));
    assert_eq!(s[len - 1], seed ^ 0xFF);
}

/// Checks the pattern of `write_whole` over the first `len` bytes (without its last byte).
fn still_there(p: *const u8, len: usize, seed: u8) -> bool {
    // SAFETY: the caller hands a live block of at least len bytes.
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    s.iter()
        .enumerate()
        .step_by(4096)
        .all(|(i, b)| *b == seed.wrapping_add((i >> 12) as u8))
}

#[test]
fn global_alloc_serves_up_to_2_mib_alignment_and_refuses_beyond() {
    // Served: aligned, usable, and realloc (grow past the huge threshold, then shrink) keeps
    // the alignment and the contents.
    for align in [64 << 10, 128 << 10, 512 << 10, MIB, 2 * MIB] {
        for size in [64, 100 << 10, 3 * MIB, 9 * MIB] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { GLOBAL.alloc(l) };
            assert!(!p.is_null(), "alloc({size}, align {align}) returned null");
            assert_eq!(
                p as usize % align,
                0,
                "alloc({size}, align {align}) at {p:p}"
            );
            write_whole(p, size, 3);
            let mut cur = (p, l);
            for new_size in [size * 2 + 5 * MIB, size + 1, size] {
                // SAFETY: cur.0 is live with layout cur.1.
                let q = unsafe { GLOBAL.realloc(cur.0, cur.1, new_size) };
                assert!(!q.is_null(), "realloc to {new_size} at align {align}");
                assert_eq!(
                    q as usize % align,
                    0,
                    "realloc({size} -> {new_size}, align {align}) moved to {q:p}"
                );
                assert!(
                    still_there(q, size.min(new_size) - 1, 3),
                    "realloc to {new_size} lost the contents (align {align})"
                );
                cur = (q, Layout::from_size_align(new_size, align).unwrap());
            }
            // The whole block after the last realloc is usable too.
            write_whole(cur.0, size, 3);
            // SAFETY: live with its layout.
            unsafe { GLOBAL.dealloc(cur.0, cur.1) };
        }
    }
    // Refused: null for every alignment above 2 MiB, zeroed or not, small or big.
    for align in OVER {
        for size in [64, 5 * MIB, align + 1] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size.
            let (p, z) = unsafe { (GLOBAL.alloc(l), GLOBAL.alloc_zeroed(l)) };
            assert!(
                p.is_null() && z.is_null(),
                "alloc({size}, align {align}) returned {p:p} / zeroed {z:p} (misaligned by \
                 {:#x} / {:#x}); alignments over 2 MiB return null",
                p as usize % align,
                z as usize % align
            );
        }
    }
    // realloc of a 2 MiB-aligned block never hands back a block aligned to less.
    let l = Layout::from_size_align(3 * MIB, 2 * MIB).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { GLOBAL.alloc(l) };
    assert!(!p.is_null() && p as usize % (2 * MIB) == 0);
    // SAFETY: p is live with l.
    unsafe { GLOBAL.dealloc(p, l) };
}

#[test]
fn node_placed_serves_up_to_2_mib_alignment_and_refuses_beyond() {
    let placed = tieralloc::Placed::node(0).expect("node 0 exists");
    let local = tieralloc::Placed::local().expect("a home node");
    for a in [&placed, &local] {
        for align in [MIB, 2 * MIB] {
            for size in [64, 3 * MIB] {
                let l = Layout::from_size_align(size, align).unwrap();
                let p = a.allocate(l).expect("served").cast::<u8>();
                assert_eq!(p.as_ptr() as usize % align, 0, "{size} at align {align}");
                write_whole(p.as_ptr(), size, 5);
                // Growing (allocator-api2's grow) keeps the alignment and the contents.
                let l2 = Layout::from_size_align(size + 6 * MIB, align).unwrap();
                // SAFETY: p is live with l; l2 is not smaller.
                let q = unsafe { a.grow(p, l, l2) }.expect("grown").cast::<u8>();
                assert_eq!(q.as_ptr() as usize % align, 0, "grown, align {align}");
                assert!(still_there(q.as_ptr(), size - 1, 5));
                write_whole(q.as_ptr(), l2.size(), 6);
                // SAFETY: q is live with l2.
                unsafe { a.deallocate(q, l2) };
            }
        }
        for align in OVER {
            for size in [64, align + 1] {
                let l = Layout::from_size_align(size, align).unwrap();
                let r = a.allocate(l);
                assert!(
                    r.is_err(),
                    "Placed allocate({size}, align {align}) gave {:?} (misaligned by {:#x})",
                    r.map(|p| p.cast::<u8>()),
                    r.map_or(0, |p| p.cast::<u8>().as_ptr() as usize % align)
                );
            }
        }
    }
}

#[test]
fn interleave_placed_serves_any_alignment() {
    let placed = tieralloc::Placed::interleave(&[0]).expect("node 0 exists");
    for align in OVER {
        for size in [64, 5 * MIB] {
            let l = Layout::from_size_align(size, align).unwrap();
            let p = placed
                .allocate(l)
                .unwrap_or_else(|e| panic!("interleave allocate({size}, align {align}): {e:?}"))
                .cast::<u8>();
            assert_eq!(p.as_ptr() as usize % align, 0, "{size} at align {align}");
            write_whole(p.as_ptr(), size, 7);
            let l2 = Layout::from_size_align(size + 3 * MIB, align).unwrap();
            // SAFETY: p is live with l; l2 is not smaller.
            let q: NonNull<u8> = unsafe { placed.grow(p, l, l2) }.expect("grown").cast();
            assert_eq!(q.as_ptr() as usize % align, 0, "grown, align {align}");
            assert!(still_there(q.as_ptr(), size - 1, 7));
            write_whole(q.as_ptr(), l2.size(), 8);
            // SAFETY: q is live with l2.
            unsafe { placed.deallocate(q, l2) };
        }
    }
}

/// Whether the page at `q` is free address space: a one-page probe mapping with
/// `MAP_FIXED_NOREPLACE` lands there (and is removed again) only if nothing is mapped at `q`.
fn page_is_free(q: usize) -> bool {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; we unmap only our probe.
    unsafe {
        let m = libc::mmap(
            q as *mut libc::c_void,
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        if m == libc::MAP_FAILED {
            return false;
        }
        libc::munmap(m, 4096);
        m as usize == q
    }
}

/// A block aligned beyond 64 KiB gets a mapping of its own that is smaller than the 4 MiB one
/// segment-map entry stands for (as does an object of 2-4 MiB). The rest of those 4 MiB must
/// not be left to the kernel: another mapping there (in the fuzzer: a new thread's stack) was
/// taken for tieralloc's by `owns`, and the drop-in's `free` and `malloc_usable_size` then
/// read a segment header that was not one (an overflow panic in a debug build). Every address
/// `owns` claims must be tieralloc's, so none of it may be free address space.
#[test]
fn owns_claims_no_address_another_mapping_could_take() {
    let cases = [
        (100 << 10, 128 << 10),
        (300 << 10, 1 << 20),
        (1 << 20, 2 * MIB),
        (3 * MIB, 16),
    ];
    for (size, align) in cases {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { GLOBAL.alloc(layout) };
        assert!(!p.is_null());
        assert!(tieralloc::owns(p));
        let chunk = p as usize & !(4 * MIB - 1);
        let mut claimed_but_free = Vec::new();
        for q in (chunk..chunk + 4 * MIB).step_by(64 << 10) {
            if tieralloc::owns(q as *const u8) && page_is_free(q) {
                claimed_but_free.push(q - chunk);
            }
        }
        // SAFETY: allocated above with this layout.
        unsafe { GLOBAL.dealloc(p, layout) };
        assert!(
            claimed_but_free.is_empty(),
            "size {size} align {align}: owns() is true at {} free offsets of the block's 4 MiB, \
             first {:#x}",
            claimed_but_free.len(),
            claimed_but_free[0]
        );
    }
}
