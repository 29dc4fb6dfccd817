//! `collect()` takes in the frees made into every abandoned segment of its node (review
//! rev42). A large block freed by another thread into a segment its exited owner left
//! abandoned is counted freed at once (`large_frees`), but its bytes leave `large_bytes_live`
//! (and `bytes_live`) only when a heap takes the emptied page back: the free that brings the
//! segment's live hint to 0, an adoption, or a tending. A collection tended one segment per
//! abandoned list, so with several such segments `collect()` left all but one of their
//! freed large blocks counted live (`os_faults`' flake, review rev38's entry: `stats()`'s
//! live bytes off by a multiple of 128 KiB after everything was freed and collected).

use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const THREADS: usize = 4;
const LARGE: usize = 300 << 10;

#[test]
fn collect_takes_in_large_frees_into_every_abandoned_segment() {
    let small = Layout::from_size_align(48, 8).unwrap();
    let large = Layout::from_size_align(LARGE, 8).unwrap();
    // A block of this thread's own first, so its heap has a segment with room and does not
    // adopt the abandoned ones when it frees into them.
    // SAFETY: a non-zero size.
    let mine = unsafe { GLOBAL.alloc(small) };
    assert!(!mine.is_null());
    tieralloc::collect();
    let before = tieralloc::stats();
    // Threads that each allocate a small and a large block and exit with both live, all
    // alive together (so none adopts another's segment): each leaves a segment abandoned (the
    // small block keeps it so after the large one's free).
    let all = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let all = all.clone();
            std::thread::spawn(move || {
                // SAFETY: non-zero sizes.
                let (s, l) = unsafe { (GLOBAL.alloc(small), GLOBAL.alloc(large)) };
                assert!(!s.is_null() && !l.is_null());
                all.wait();
                (s as usize, l as usize)
            })
        })
        .collect();
    let left: Vec<(usize, usize)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for &(_, l) in &left {
        // SAFETY: a live block of this layout, whose thread has exited.
        unsafe { GLOBAL.dealloc(l as *mut u8, large) };
    }
    tieralloc::collect();
    let after = tieralloc::stats();
    let freed = after.large_frees - before.large_frees;
    let made = after.large_allocs - before.large_allocs;
    assert_eq!((made, freed), (THREADS as u64, THREADS as u64));
    assert_eq!(
        after.large_bytes_live as i64 - before.large_bytes_live as i64,
        0,
        "every large block the exited threads made was freed and collected, yet stats() \
         counts {} B of them live",
        after.large_bytes_live as i64 - before.large_bytes_live as i64
    );
    for &(s, _) in &left {
        // SAFETY: as above.
        unsafe { GLOBAL.dealloc(s as *mut u8, small) };
    }
    // SAFETY: ours, of this layout.
    unsafe { GLOBAL.dealloc(mine, small) };
}
