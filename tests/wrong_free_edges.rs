//! Wrong frees at the edges of what the checks look at (found by a review): a pointer in the
//! last bytes of a segment, in a slice no page was ever made of (the default build sent it
//! down the fast path, which pushed it on the free slice's empty descriptor; the secure build
//! read its freed marker past the segment's end and crashed); and a second free of a block
//! whose OS page a trim gave back (a parked block: the first free's marker is gone with the
//! page, and the fast path took it). Both are reported at the wrong free, in both builds.
//! And a write after its free into such a block over two OS pages is reported when the
//! block comes back (review rev46).

#[path = "common/child.rs"]
mod child;

use std::alloc::{alloc, dealloc, GlobalAlloc, Layout};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use tieralloc::TierAlloc;

#[global_allocator]
static GLOBAL: TierAlloc = TierAlloc::new();

const SEGMENT_SIZE: usize = 4 << 20;
const MIB: usize = 1 << 20;

fn unmapped(p: usize) -> bool {
    // SAFETY: msync of one page-aligned page: ENOMEM when nothing is mapped there.
    unsafe { libc::msync(p as *mut libc::c_void, 4096, libc::MS_ASYNC) != 0 }
}

fn resident(p: usize) -> bool {
    let mut v = 0u8;
    // SAFETY: one page-aligned page of a mapping of ours, one byte of result.
    let r = unsafe { libc::mincore((p & !4095) as *mut libc::c_void, 4096, &mut v) };
    assert_eq!(r, 0);
    v & 1 != 0
}

#[test]
fn wrong_free_at_the_end_of_a_segment_is_reported_not_a_crash() {
    let out = child::run(
        &mut child::this_test("child_wrong_free_at_segment_end"),
        Duration::from_secs(60),
    );
    let sig = out.status.and_then(|s| s.signal());
    assert!(
        sig == Some(libc::SIGABRT) && out.stderr.contains("tieralloc: error: "),
        "expected a report and SIGABRT, got {sig:?}\n{out}"
    );
}

#[test]
fn child_wrong_free_at_segment_end() {
    if !child::is_child() {
        return;
    }
    let l = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { GLOBAL.alloc(l) } as usize;
    let end = (p & !(SEGMENT_SIZE - 1)) + SEGMENT_SIZE;
    // Whether anything is mapped past the segment decides only whether the secure build's
    // unguarded read would crash; the free must be reported either way.
    eprintln!("mapped after the segment: {}", !unmapped(end));
    eprintln!("freeing {:#x}", end - 8);
    // SAFETY: none: a wrong free on purpose, in a child.
    unsafe { GLOBAL.dealloc((end - 8) as *mut u8, l) };
    eprintln!("returned");
}

#[test]
fn double_free_of_a_parked_block_is_caught_at_the_second_free() {
    expect_reported(
        "child_double_free_of_a_parked_block",
        "returned from the second free",
        "not caught at the second free",
    );
}

/// Runs the test `child_test` in a child; unless it skipped, requires that it ended with the
/// allocator's report (SIGABRT) before it printed `past` (what it prints once past the point
/// where the report must come), else fails with `what`.
fn expect_reported(child_test: &str, past: &str, what: &str) {
    let out = child::run(&mut child::this_test(child_test), Duration::from_secs(120));
    if out.stderr.contains("SKIP") {
        eprintln!("skipped: {out}");
        return;
    }
    let sig = out.status.and_then(|s| s.signal());
    assert!(
        sig == Some(libc::SIGABRT) && !out.stderr.contains(past),
        "{what}: {sig:?}\n{out}"
    );
}

#[test]
fn child_double_free_of_a_parked_block() {
    if !child::is_child() {
        return;
    }
    let l = Layout::from_size_align(512, 8).unwrap();
    let mut objs: Vec<usize> = (0..(32 * MIB / 512))
        // SAFETY: a non-zero size.
        .map(|_| unsafe { alloc(l) } as usize)
        .collect();
    for &p in &objs {
        // SAFETY: live blocks of 512 bytes.
        unsafe { (p as *mut u8).write_bytes(1, 512) };
    }
    let mut kept = vec![];
    let mut freed = vec![];
    for (i, p) in objs.drain(..).enumerate() {
        if i % 10 == 0 {
            kept.push(p);
        } else {
            // SAFETY: allocated above with l.
            unsafe { dealloc(p as *mut u8, l) };
            freed.push(p);
        }
    }
    let big = Layout::from_size_align(8 << 10, 8).unwrap();
    let fresh: Vec<usize> = (0..(16 * MIB / big.size()))
        .map(|_| {
            // SAFETY: a non-zero size.
            let p = unsafe { alloc(big) };
            // SAFETY: fresh.
            unsafe { p.write_bytes(2, big.size()) };
            p as usize
        })
        .collect();
    let Some(&p) = freed.iter().find(|&&p| !resident(p)) else {
        eprintln!("SKIP: no freed block's page was given back");
        return;
    };
    eprintln!("wrong free of {p:#018x} (its OS page given back)");
    // SAFETY: none: a double free on purpose, in a child.
    unsafe { dealloc(p as *mut u8, l) };
    eprintln!("returned from the second free");
    // What follows: allocate the class until `p` has been handed out twice while live.
    let mut got = vec![];
    let mut seen = 0;
    for _ in 0..(40 * MIB / 512) {
        // SAFETY: a non-zero size.
        let q = unsafe { alloc(l) } as usize;
        if q == p {
            seen += 1;
            if seen == 2 {
                eprintln!("block {p:#x} handed out twice, both live");
                break;
            }
        }
        got.push(q);
    }
    std::hint::black_box((kept, fresh, got));
}

/// Review rev46: a use after free of an 8 KiB block (two OS pages) whose memory a trim gave
/// back, writing its first word, is reported when its page brings the block back (the first
/// word lies in the block's first OS page, which comes back before its second: the unpark
/// checked only blocks starting in the OS page it brought back, and handed this one out).
#[test]
fn a_write_into_a_parked_block_over_two_os_pages_is_caught_when_it_comes_back() {
    expect_reported(
        "child_write_into_a_parked_block_over_two_os_pages",
        "handed out again",
        "not caught when it came back",
    );
}

#[test]
fn child_write_into_a_parked_block_over_two_os_pages() {
    if !child::is_child() {
        return;
    }
    let l = Layout::from_size_align(8 << 10, 8).unwrap();
    // SAFETY (each alloc): a non-zero size.
    let objs: Vec<usize> = (0..(32 * MIB / l.size()))
        .map(|_| unsafe { alloc(l) } as usize)
        .collect();
    let mut kept = vec![];
    let mut freed = vec![];
    for (i, p) in objs.into_iter().enumerate() {
        // SAFETY: a live block of 8 KiB.
        unsafe { (p as *mut u8).write_bytes(1, l.size()) };
        if i % 10 == 0 {
            kept.push(p);
        } else {
            // SAFETY: allocated above with l.
            unsafe { dealloc(p as *mut u8, l) };
            freed.push(p);
        }
    }
    // New segments (16 KiB blocks: pages of another size): the trims before them.
    let big = Layout::from_size_align(16 << 10, 8).unwrap();
    // SAFETY (each alloc): a non-zero size.
    let fresh: Vec<usize> = (0..(16 * MIB / big.size()))
        .map(|_| unsafe { alloc(big) } as usize)
        .collect();
    let Some(&p) = freed.iter().find(|&&p| !resident(p) && !resident(p + 4096)) else {
        eprintln!("SKIP: no freed block's OS pages were given back");
        return;
    };
    eprintln!("use after free of {p:#018x} (its OS pages given back)");
    // SAFETY: none: a use after free on purpose, in a child.
    unsafe { (p as *mut u64).write_volatile(0x7777) };
    let mut got = vec![];
    for _ in 0..freed.len() + 1024 {
        // SAFETY: a non-zero size.
        let q = unsafe { alloc(l) } as usize;
        if q == p {
            eprintln!("block {p:#x} handed out again");
            break;
        }
        got.push(q);
    }
    std::hint::black_box((kept, fresh, got));
}
