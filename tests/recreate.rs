//! Cross-thread churn with thread recreation (issue 16, item 2): rounds of short-lived threads
//! allocate random sizes (a few large ones among them), swap many objects into a shared array
//! that outlives them, and exit; between rounds the main thread frees half of the shared
//! slots, so most frees land in segments whose owner has exited. Memory freed that way must
//! be reused by the next rounds' threads, not pinned by the thread that freed it (which then
//! allocates nothing) while new threads map new segments.
//!
//! Counts, not timing: the normal segments mapped, at their peak over the rounds.

use std::alloc::{alloc, dealloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const SHARED: usize = 1000;
const THREADS: usize = 4;
const ROUNDS: usize = 30;
const STEPS: usize = 3000;

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// An object: its size and a tag in its first two words, the tag's low byte at its end.
fn make(s: &mut u64) -> (usize, usize) {
    let r = next(s);
    let size = if r % 400 == 0 {
        (64 << 10) + (r >> 20) as usize % (960 << 10)
    } else {
        24 + (r >> 20) as usize % if r & 3 == 0 { 1000 } else { 120 }
    };
    let l = Layout::from_size_align(size, 8).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { alloc(l) } as *mut u64;
    assert!(!p.is_null());
    // SAFETY: p holds `size` >= 24 bytes, 8-aligned.
    unsafe {
        p.write(size as u64);
        p.add(1).write(p as u64 ^ 0x5A5A);
        (p as *mut u8).add(size - 1).write(p as u8 ^ 0x5A);
    }
    (p as usize, size)
}

fn drop_obj(p: usize) {
    if p == 0 {
        return;
    }
    let q = p as *mut u64;
    // SAFETY: p is a live object made by `make`.
    unsafe {
        let size = q.read() as usize;
        assert_eq!(
            q.add(1).read(),
            p as u64 ^ 0x5A5A,
            "object {p:#x} overwritten"
        );
        assert_eq!((q as *mut u8).add(size - 1).read(), p as u8 ^ 0x5A);
        dealloc(q as *mut u8, Layout::from_size_align(size, 8).unwrap());
    }
}

// Fails on main (about 107 segments at the peak): the change that passes it (a heap takes a
// segment left at exit on free only when it has no room of its own, branch `i16mem`) left
// fully freed segments abandoned until tended and broke tests/churn.rs's bounds in 3 runs of
// 8, so it was not merged. Run with `cargo test --release --test recreate -- --ignored`.
#[test]
#[ignore = "issue 16 item 2 not met yet: recreated threads map new segments (see the comment)"]
fn recreated_threads_reuse_what_their_predecessors_left() {
    let shared: Arc<Vec<AtomicUsize>> =
        Arc::new((0..SHARED).map(|_| AtomicUsize::new(0)).collect());
    let mut peak = 0u64;
    let mut s = 42u64;
    for round in 0..ROUNDS {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let mut s = 0x2545_F491_4F6C_DD1D ^ ((round * THREADS + t + 1) as u64) << 8;
                    let mut local = vec![0usize; 256];
                    for _ in 0..STEPS {
                        let r = next(&mut s);
                        let k = r as usize % local.len();
                        drop_obj(local[k]);
                        local[k] = make(&mut s).0;
                        if (r >> 32) % 3 == 0 {
                            let j = (r >> 40) as usize % SHARED;
                            local[k] = shared[j].swap(local[k], Ordering::AcqRel);
                        }
                    }
                    for p in local {
                        drop_obj(p);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // The main thread frees half of what the exited threads left in the shared slots.
        for slot in shared.iter() {
            if next(&mut s) % 2 == 0 {
                drop_obj(slot.swap(0, Ordering::AcqRel));
            }
        }
        peak = peak.max(tieralloc::stats().segments);
    }
    for slot in shared.iter() {
        drop_obj(slot.swap(0, Ordering::AcqRel));
    }
    let st = tieralloc::stats();
    println!("peak segments {peak}\n{st}");
    // Live at any time: the shared slots (1000 objects, a few of them up to 1 MiB) and four
    // threads' 256 slots; about 8 MiB at most. Four threads each need a segment or two.
    assert!(peak <= 12, "{peak} segments mapped at the peak\n{st}");
}
