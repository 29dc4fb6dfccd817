//! The `secure` build's guard pages when `mprotect` refuses (review rev38, with the
//! `fault-injection` feature): a huge mapping reused from the thread's huge cache for an
//! object laid out differently must not keep a guard page (PROT_NONE) inside the new object
//! when making the old guard read-write again fails. Before the fix the guard was forgotten
//! (its header said "no guard") while the page stayed inaccessible, and the first write to
//! the new block there died of SIGSEGV.
//!
//! Each case runs in a forked child, so a crash is reported as such.
#![cfg(feature = "secure")]

#[path = "common/child.rs"]
mod child;

use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;
use tieralloc::fault_injection::{self as fault, Kind};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const MIB: usize = 1 << 20;

/// Allocates `first`, fills and frees it (into the huge cache), then allocates `second` with
/// the Nth `mprotect` from there failing, for every N up to `calls`; writes every byte of the
/// second block (if not null) and frees it. Each in a forked child.
fn reuse_with_mprotect_failing(first: Layout, second: Layout) {
    let mut failures = Vec::new();
    for n in 1..=4 {
        let r = child::fork_and_wait(Duration::from_secs(30), || {
            // SAFETY: non-zero sizes; each block is written within its size and freed with
            // its layout.
            unsafe {
                let p = GLOBAL.alloc(first);
                assert!(!p.is_null());
                std::ptr::write_bytes(p, 0x11, first.size());
                GLOBAL.dealloc(p, first);
                fault::fail_nth(Kind::Protect, n);
                let q = GLOBAL.alloc(second);
                let hit = fault::injected(Kind::Protect) > 0;
                fault::clear();
                if !q.is_null() {
                    std::ptr::write_bytes(q, 0x22, second.size());
                    GLOBAL.dealloc(q, second);
                }
                // The allocator works on afterwards.
                let r = GLOBAL.alloc(second);
                assert!(!r.is_null());
                std::ptr::write_bytes(r, 0x33, second.size());
                GLOBAL.dealloc(r, second);
                if hit {
                    10
                } else {
                    11
                }
            }
        });
        match r {
            Ok(10) => {}
            Ok(11) => break,
            Ok(c) => failures.push(format!("mprotect call {n} failing: exit code {c}")),
            Err(e) => failures.push(format!("mprotect call {n} failing: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The old front guard (before an object aligned to 1 MiB) lies inside the next object,
/// which starts right after the header.
#[test]
fn a_front_guard_that_cannot_be_dropped_is_not_inside_the_next_block() {
    reuse_with_mprotect_failing(
        Layout::from_size_align(3 * MIB, MIB).unwrap(),
        Layout::from_size_align(3 * MIB, 8).unwrap(),
    );
}

/// The old tail guard (the last page of a cached mapping grown inside its reservation) lies
/// inside the next, bigger object.
#[test]
fn a_tail_guard_that_cannot_be_dropped_is_not_inside_the_next_block() {
    reuse_with_mprotect_failing(
        Layout::from_size_align(3 * MIB, 8).unwrap(),
        Layout::from_size_align(3 * MIB + 3 * MIB / 4, 8).unwrap(),
    );
}
