//! Trimming sparse pages (src/heap/trim.rs): a program that fills memory with small objects
//! and frees most of them at random leaves every page a few live blocks; the all-free OS
//! pages inside those pages go back to the OS before the heap takes new pages, and nothing
//! live is lost.
//!
//! RSS is per process: the test runs in a process of its own.

use std::alloc::{alloc, dealloc, Layout};
use std::time::Duration;

#[path = "common/child.rs"]
mod child;
#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const MIB: usize = 1 << 20;

/// Resident bytes of this process.
fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

fn in_own_process(name: &str) -> bool {
    if child::is_child() {
        return false;
    }
    child::run(&mut child::this_test(name), Duration::from_secs(300)).expect_test_passed();
    true
}

/// 48 MiB of 384–512 B objects (every byte written), 90 % freed at random: RSS barely moves
/// (no page empties). Then 16 MiB of 8 KiB objects, whose new segments trim the sparse pages
/// first: for these sizes about a third of the small pages' bytes lie in OS pages with no
/// live block, so RSS must fall by at least a fifth of the filled volume below what the
/// new objects add. The objects left live keep their contents.
#[test]
fn freeing_most_small_objects_at_random_gives_their_os_pages_back() {
    if in_own_process("freeing_most_small_objects_at_random_gives_their_os_pages_back") {
        return;
    }
    const FILL: usize = 48 * MIB;
    // New objects: four new segments, the first two of which look at every sparse page
    // (the first look only notes a page's count, the second trims it).
    const NEW: usize = 16 * MIB;
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let mut objs: Vec<(*mut u8, Layout)> = Vec::with_capacity(FILL / 384 + 1);
    let mut filled = 0;
    while filled < FILL {
        let size = 384 + (r.next() % 129) as usize;
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(l) };
        assert!(!p.is_null());
        // SAFETY: p is a fresh block of `size` bytes.
        unsafe { p.write_bytes(objs.len() as u8, size) };
        objs.push((p, l));
        filled += size;
    }
    let mut kept = vec![];
    for (i, (p, l)) in objs.into_iter().enumerate() {
        if r.next() % 10 == 0 {
            kept.push((i, p, l));
        } else {
            // SAFETY: allocated above with l.
            unsafe { dealloc(p, l) };
        }
    }
    let freed = rss();
    let big = Layout::from_size_align(8 << 10, 8).unwrap();
    let mut fresh = vec![];
    for _ in 0..(NEW / big.size()) {
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(big) };
        assert!(!p.is_null());
        // SAFETY: p is a fresh block of 8 KiB.
        unsafe { p.write_bytes(0x5a, big.size()) };
        fresh.push(p);
    }
    let after = rss();
    let drop = (freed + NEW).saturating_sub(after);
    eprintln!(
        "rss after the frees {} MiB, after 16 MiB of new objects {} MiB: {} MiB given back",
        freed / MIB,
        after / MIB,
        drop / MIB
    );
    assert!(
        drop >= FILL / 5,
        "only {} KiB of the sparse pages given back (want >= {} KiB)",
        drop >> 10,
        (FILL / 5) >> 10
    );
    for (i, p, l) in kept {
        // SAFETY: a live block of l.size() bytes.
        let s = unsafe { std::slice::from_raw_parts(p, l.size()) };
        assert!(
            s.iter().all(|&b| b == i as u8),
            "object {i} lost its contents"
        );
        // SAFETY: allocated above with l.
        unsafe { dealloc(p, l) };
    }
    for p in fresh {
        // SAFETY: allocated above with `big`.
        unsafe { dealloc(p, big) };
    }
}
