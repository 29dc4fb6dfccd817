//! A refused `munmap` of the over-allocation `map_aligned` trims off an aligned mapping
//! (review rev38, with the `fault-injection` feature). The kernel refuses it when the split
//! would pass `vm.max_map_count` (ENOMEM). Before the fix the untrimmed piece stayed mapped
//! for good: no unmap ever reached it (the allocator's unmap covers the aligned part only) and
//! `stats()`'s reserved bytes never counted it, so each refusal leaked up to the alignment in
//! address space, unseen. And a refused `munmap` of a whole mapping (a freed block of its
//! own): it stays mapped, but was subtracted from the reserved bytes as if gone.
//!
//! Each case runs in a forked child (one thread: its address space changes only by what it
//! does).

#[path = "common/child.rs"]
mod child;

use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::time::Duration;
use tieralloc::fault_injection::{self as fault, Kind};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

fn vm_size() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// The handle and layout of the tests' mapping of its own (`Placed::node(0).bound()`, 8 MiB
/// aligned to 2 MiB), after one such mapping was made and freed (the thread's heap, the
/// statistics and the status file's reading warmed up).
fn warmed_up() -> (tieralloc::Placed, Layout) {
    let placed = tieralloc::Placed::node(0).unwrap().bound();
    let layout = Layout::from_size_align(8 << 20, 2 << 20).unwrap();
    let p = placed.allocate(layout).expect("an 8 MiB mapping");
    // SAFETY: a block of `placed` with this layout.
    unsafe { placed.deallocate(p.cast(), layout) };
    let _ = (vm_size(), tieralloc::stats());
    (placed, layout)
}

/// A mapping of its own (`Placed::node(0).bound()`, 8 MiB aligned to 2 MiB: a head and a
/// tail to trim) made with the Nth munmap failing, then freed: the address space and the
/// reserved bytes are back where they were.
#[test]
fn a_refused_trim_leaves_no_mapping_behind() {
    let (placed, layout) = warmed_up();
    let mut failures = Vec::new();
    for n in 1..=3u64 {
        let r = child::fork_and_wait(Duration::from_secs(30), || {
            let (v0, r0) = (vm_size(), tieralloc::stats().bytes_reserved);
            fault::fail_nth(Kind::Unmap, n);
            let p = placed.allocate(layout);
            fault::clear();
            if let Ok(p) = p {
                // SAFETY: a block of `placed` with this layout, written within it, then freed.
                unsafe {
                    std::ptr::write_bytes(p.as_ptr() as *mut u8, 1, layout.size());
                    placed.deallocate(p.cast(), layout);
                }
            }
            let (v1, r1) = (vm_size(), tieralloc::stats().bytes_reserved);
            if v1 != v0 || r1 != r0 {
                eprintln!(
                    "munmap {n} failing: address space {v0} -> {v1}, reserved {r0} -> {r1} \
                     after the block was freed"
                );
                return 1;
            }
            0
        });
        match r {
            Ok(0) => {}
            Ok(c) => failures.push(format!("munmap call {n} failing: exit code {c} (stderr)")),
            Err(e) => failures.push(format!("munmap call {n} failing: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same mapping freed with its `munmap` refused: it stays mapped, and so it stays counted
/// in `stats()`'s reserved bytes (it was subtracted as if gone).
#[test]
fn a_refused_unmap_stays_counted_as_reserved() {
    let (placed, layout) = warmed_up();
    let r = child::fork_and_wait(Duration::from_secs(30), || {
        let (v0, r0) = (vm_size(), tieralloc::stats().bytes_reserved);
        let p = placed.allocate(layout).expect("an 8 MiB mapping");
        fault::fail_nth(Kind::Unmap, 1);
        // SAFETY: a block of `placed` with this layout.
        unsafe { placed.deallocate(p.cast(), layout) };
        fault::clear();
        let (v1, r1) = (vm_size(), tieralloc::stats().bytes_reserved);
        if v1 - v0 != r1 - r0 {
            eprintln!(
                "munmap of the free refused: address space {v0} -> {v1}, reserved {r0} -> {r1}"
            );
            return 1;
        }
        0
    });
    assert_eq!(
        r,
        Ok(0),
        "the address space and the reserved bytes differ (stderr)"
    );
}
