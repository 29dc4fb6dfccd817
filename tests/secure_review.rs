//! Review of the `secure` build's canaries and guard pages (issue 18, rev4): blocks handed out
//! by the paths that do not see the request the way the global allocator's inline paths do
//! (placement and labelled scopes, a thread whose heap is gone, a fork child, aligned and
//! resized blocks written up to their usable size) free without a report, and a wrong free
//! of a pointer into a guard page is reported, not a fault. Each case that must not report
//! runs in this process under the default error mode (a false report aborts the test
//! binary); the wrong free runs in a child under `TIERALLOC_ON_ERROR=warn`. And a double free
//! caught by the freed marker on a far page leaves the far node's live bytes exact (a child on
//! simulated nodes).

#![cfg(feature = "secure")]

#[path = "common/child.rs"]
mod child;

use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;
use tieralloc::{place, place_labeled, Placed, TierAlloc};

#[global_allocator]
static GLOBAL: TierAlloc = TierAlloc::new();

/// Request sizes across the small and medium classes, their boundaries and a large one.
const SIZES: [usize; 14] = [
    0, 1, 8, 9, 24, 100, 1000, 1016, 1024, 4088, 8192, 30000, 65528, 70000,
];

/// Allocates `n` bytes at `align`, writes every usable byte, reallocates it to `m`
/// (writing every usable byte again) and returns it with its layout.
fn churn_one(n: usize, m: usize, align: usize, v: u8) -> (*mut u8, Layout) {
    let l = Layout::from_size_align(n, align).unwrap();
    // SAFETY: GlobalAlloc's contract (a zero size is served by this allocator).
    let p = unsafe { GLOBAL.alloc(l) };
    assert!(!p.is_null());
    assert_eq!(p as usize % align, 0);
    // SAFETY: p is live; writing up to its usable size is the program's right.
    let u = unsafe { tieralloc::usable_size(p) };
    assert!(u >= n, "usable {u} < {n}");
    // SAFETY: inside the usable size.
    unsafe { std::ptr::write_bytes(p, v, u) };
    // SAFETY: p is live with layout l; m is non-zero or served.
    let q = unsafe { GLOBAL.realloc(p, l, m) };
    assert!(!q.is_null());
    // SAFETY: q is live.
    let u2 = unsafe { tieralloc::usable_size(q) };
    assert!(u2 >= m);
    for i in 0..n.min(m) {
        // SAFETY: inside both sizes.
        assert_eq!(unsafe { *q.add(i) }, v, "byte {i} of {n} -> {m}");
    }
    // SAFETY: inside the usable size.
    unsafe { std::ptr::write_bytes(q, v ^ 0xff, u2) };
    (q, Layout::from_size_align(m, align).unwrap())
}

/// Every size, resized up and down, at alignments 8 to 4096: freed on this thread (half)
/// and on another (half).
fn churn_all() {
    let mut keep = vec![];
    for (k, &n) in SIZES.iter().enumerate() {
        for &m in &[n + 1, n / 2 + 1, n + 300, 2 * n + 17] {
            for align in [8, 16, 32, 64, 256, 4096] {
                let (p, l) = churn_one(n, m, align, k as u8);
                if keep.len() % 2 == 0 {
                    keep.push((p as usize, l));
                } else {
                    // SAFETY: live with its layout.
                    unsafe { GLOBAL.dealloc(p, l) };
                    keep.push((0, l));
                }
            }
        }
    }
    std::thread::spawn(move || {
        for (p, l) in keep {
            if p != 0 {
                // SAFETY: live with its layout, handed over.
                unsafe { GLOBAL.dealloc(p as *mut u8, l) };
            }
        }
    })
    .join()
    .unwrap();
}

#[test]
fn blocks_of_the_thread_heap_written_to_their_usable_size_free_cleanly() {
    churn_all();
}

#[test]
fn blocks_of_a_placement_scope_written_to_their_usable_size_free_cleanly() {
    let _g = place(Placed::node(0).unwrap());
    churn_all();
}

#[test]
fn blocks_of_a_labelled_scope_written_to_their_usable_size_free_cleanly() {
    let _g = place_labeled(Placed::node(0).unwrap(), "review-secure");
    churn_all();
}

/// A pthread key destructor created after tieralloc's runs after the thread's heap is
/// gone: its allocations are served by the node's heap (`dead_alloc`).
#[test]
fn blocks_allocated_after_the_heap_is_gone_free_cleanly() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RAN: AtomicUsize = AtomicUsize::new(0);
    unsafe extern "C" fn late(_: *mut libc::c_void) {
        let b = Box::new([5u8; 100]);
        // SAFETY: a live block of ours.
        if !unsafe { tieralloc::probe::owned_by_caller(&*b as *const u8) } {
            // Served by the node's heap: the heap is gone, as the test means.
            RAN.fetch_add(1, Ordering::SeqCst);
        }
        churn_all_no_thread();
        RAN.fetch_add(1, Ordering::SeqCst);
    }
    // tieralloc's own key exists once this thread's heap is set up (it is by now).
    drop(vec![1u8; 10]);
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: a fresh key with a destructor that needs no value.
    assert_eq!(unsafe { libc::pthread_key_create(&mut key, Some(late)) }, 0);
    std::thread::spawn(move || {
        drop(vec![1u8; 10]);
        // SAFETY: the key is live; a non-null value makes the destructor run.
        unsafe { libc::pthread_setspecific(key, std::ptr::dangling::<libc::c_void>()) };
    })
    .join()
    .unwrap();
    assert_eq!(RAN.load(Ordering::SeqCst), 2, "ran, on a dead heap");
}

/// [`churn_all`] without a helper thread (a thread exiting cannot spawn): all freed here.
fn churn_all_no_thread() {
    for (k, &n) in SIZES.iter().enumerate() {
        for &m in &[n + 1, n / 2 + 1, 2 * n + 17] {
            for align in [8, 16, 64, 4096] {
                let (p, l) = churn_one(n, m, align, k as u8);
                // SAFETY: live with its layout.
                unsafe { GLOBAL.dealloc(p, l) };
            }
        }
    }
}

/// A fork child frees the parent's blocks and churns its own.
#[test]
fn a_fork_child_frees_the_parents_blocks_cleanly() {
    let blocks: Vec<(usize, Layout)> = SIZES
        .iter()
        .map(|&n| {
            let (p, l) = churn_one(n, n + 5, 16, 7);
            (p as usize, l)
        })
        .collect();
    // SAFETY: the child only allocates, frees and exits (this allocator is fork-safe).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        for &(p, l) in &blocks {
            // SAFETY: live in the child's copy.
            unsafe { GLOBAL.dealloc(p as *mut u8, l) };
        }
        churn_all_no_thread();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    for (p, l) in blocks {
        // SAFETY: live with its layout.
        unsafe { GLOBAL.dealloc(p as *mut u8, l) };
    }
}

/// A free of a pointer into a guard page (16 bytes into the page between a segment's header
/// and its first block, and into the segment's last slice), by the owner and by another
/// thread: reported as a wrong free (and, under `warn`, the program goes on), not a SIGSEGV
/// inside `free` (review rev4: the canary's and the freed marker's reads faulted).
#[test]
fn a_free_into_a_guard_page_is_reported() {
    let mut cmd = child::this_test("child_a_free_into_a_guard_page_is_reported");
    cmd.env("TIERALLOC_ON_ERROR", "warn");
    let out = child::run(&mut cmd, Duration::from_secs(60));
    out.expect_test_passed();
    let reports = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("tieralloc: error: "))
        .count();
    out.require(reports == 4, "expected four reports");
}

#[test]
fn child_a_free_into_a_guard_page_is_reported() {
    if !child::is_child() {
        return;
    }
    let l = Layout::from_size_align(48, 16).unwrap();
    // A fresh thread: its first small block lies in slice 0 of its first segment.
    let (_, guards) = std::thread::spawn(move || {
        let p = Box::into_raw(Box::new([0u8; 48]));
        let seg = p as usize & !((4 << 20) - 1);
        assert!(p as usize - seg < 64 << 10, "a block of slice 0");
        // 16 bytes into the header's guard page (before BLOCKS_START, 16 KiB) and into the
        // end guard (the segment's last slice).
        let guards = [
            seg + (16 << 10) - 4096 + 16,
            seg + (4 << 20) - (64 << 10) + 16,
        ];
        for g in guards {
            // SAFETY: the test's point: a wrong pointer, reported under warn.
            unsafe { GLOBAL.dealloc(g as *mut u8, l) };
            eprintln!("owner free returned");
        }
        // p stays live, so that the segment stays the thread's.
        (p as usize, guards)
    })
    .join()
    .unwrap();
    for g in guards {
        // SAFETY: as above, from another thread.
        unsafe { GLOBAL.dealloc(g as *mut u8, l) };
        eprintln!("remote free returned");
    }
}

/// A second free of a block whose OS page a trim gave back (parked: its freed marker and
/// trailer zero now) is a double free, reported as one, not as an overflow (review rev4: the
/// canary's check came first and called it a write past the request).
#[test]
fn a_double_free_of_a_parked_block_is_reported_as_one() {
    expect_one_double_free("child_a_double_free_of_a_parked_block_is_reported_as_one");
}

#[test]
fn child_a_double_free_of_a_parked_block_is_reported_as_one() {
    if child::is_child() {
        free_a_parked_block_twice(false);
    }
}

/// The same second free of a parked block, made by another thread: a double free too, not
/// an overflow (the remote free checks the canary first, whose trailer reads zero once the
/// trim gave the block's OS page back; its report now asks whether the block is parked).
#[test]
fn a_remote_double_free_of_a_parked_block_is_reported_as_one() {
    expect_one_double_free("child_a_remote_double_free_of_a_parked_block_is_reported_as_one");
}

#[test]
fn child_a_remote_double_free_of_a_parked_block_is_reported_as_one() {
    if child::is_child() {
        free_a_parked_block_twice(true);
    }
}

/// The children of the two parked-block tests: a sparse class whose OS pages a trim gives
/// back, then one of its free blocks freed again, by this thread or (`remote`) another one.
fn free_a_parked_block_twice(remote: bool) {
    std::thread::spawn(move || {
        let small = Layout::from_size_align(48, 8).unwrap();
        let big = Layout::from_size_align(3000, 8).unwrap();
        // SAFETY: GlobalAlloc's contract throughout; each block freed once, but the one the
        // test frees twice.
        unsafe {
            let mut blocks: Vec<usize> =
                (0..40_000).map(|_| GLOBAL.alloc(small) as usize).collect();
            blocks.sort_unstable();
            // One live block in 128 by address: most OS pages of the pages all free.
            let mut live = vec![];
            for (i, &b) in blocks.iter().enumerate() {
                if i % 128 == 0 {
                    live.push(b);
                } else {
                    GLOBAL.dealloc(b as *mut u8, small);
                }
            }
            // New segments, twice over: the heap looks at its sparse pages before each (the
            // first look notes them, the next trims).
            let more: Vec<usize> = (0..4_000).map(|_| GLOBAL.alloc(big) as usize).collect();
            let twice = blocks[64];
            if remote {
                std::thread::spawn(move || {
                    // SAFETY: as above: the test's one wrong free.
                    GLOBAL.dealloc(twice as *mut u8, small);
                })
                .join()
                .unwrap();
            } else {
                GLOBAL.dealloc(twice as *mut u8, small);
            }
            eprintln!("freed {twice:#x} twice (remote: {remote})");
            for b in more {
                GLOBAL.dealloc(b as *mut u8, big);
            }
            for b in live {
                GLOBAL.dealloc(b as *mut u8, small);
            }
        }
    })
    .join()
    .unwrap();
}

/// Runs the child test `name` with errors reported as warnings, and checks that it passed and
/// reported exactly one error, a double free.
fn expect_one_double_free(name: &str) {
    expect_one_double_free_in(child::this_test(name));
}

/// [`expect_one_double_free`] for the child `cmd`.
fn expect_one_double_free_in(mut cmd: std::process::Command) {
    cmd.env("TIERALLOC_ON_ERROR", "warn");
    let out = child::run(&mut cmd, Duration::from_secs(120));
    out.expect_test_passed();
    let reports: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("tieralloc: error: "))
        .collect();
    out.require(reports.len() == 1, "expected one report");
    out.require(
        reports[0].starts_with("tieralloc: error: double free"),
        &format!("expected a double free, got {:?}", reports[0]),
    );
}

/// A double free caught by its freed marker (`free::free_marked`, under `warn`) on a bin page
/// of another node than its heap's (a tier policy's far segment), while other threads' frees
/// wait on that page's remote list: the confirmation walk collects them, and they are booked
/// as every collection books them (`counters::note_far_collected`). Before, the collected
/// count was dropped, and the far node's live bytes ended short by those blocks (they left
/// the page's count, and their freer had booked them off the node too).
#[test]
fn a_double_free_found_by_its_marker_keeps_the_far_node_booking_exact() {
    let mut cmd = child::on_simulated_nodes(
        "child_a_double_free_found_by_its_marker_keeps_the_far_node_booking_exact",
        "2,far=1",
    );
    cmd.env("TIERALLOC_ON_ERROR", "warn");
    expect_one_double_free_in(cmd);
}

/// Blocks freed remotely into the far page before the double free.
const REMOTE: usize = 4;

#[test]
fn child_a_double_free_found_by_its_marker_keeps_the_far_node_booking_exact() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tieralloc::tiers::{set_policy, Policy};
    static TO_FREE: [AtomicUsize; REMOTE] = [const { AtomicUsize::new(0) }; REMOTE];
    static GO: AtomicBool = AtomicBool::new(false);
    static DONE: AtomicBool = AtomicBool::new(false);
    const SIZE: usize = 1000;
    const ROUND: usize = 4000;
    const ROUNDS: usize = 16;
    if !child::is_child() {
        return;
    }
    let l = Layout::from_size_align(SIZE, 8).unwrap();
    let pin = |node: u32| {
        tieralloc::numa::pin_current_thread_to_node(node).expect("pin to a simulated node");
        tieralloc::collect();
        assert_eq!(tieralloc::probe::heap_node(), node);
    };
    let far_live = || {
        tieralloc::collect();
        tieralloc::stats()
            .nodes
            .iter()
            .find(|n| n.node == 2)
            .expect("stats() shows node 2")
            .bytes_live
    };
    pin(0);
    // The remote freer, on node 1, made before the policy (its own blocks stay near); it
    // allocates nothing once it waits.
    let freer = std::thread::spawn(move || {
        pin(1);
        while !GO.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        for a in &TO_FREE {
            // SAFETY: live blocks of layout `l` handed over by their owner, each freed once.
            unsafe { GLOBAL.dealloc(a.load(Ordering::Relaxed) as *mut u8, l) };
        }
        DONE.store(true, Ordering::Release);
    });
    // Far blocks of a page this heap still owns: it gives up segments that fill up when it
    // takes new ones (a free into those is a remote free). Allocated in rounds until the
    // policy's last far segment has six blocks in one 64 KiB slice (so of one page): the one
    // freed twice and those the freer frees.
    let window = |p: usize| p >> 16;
    let mut blocks: Vec<usize> = Vec::with_capacity(ROUND * ROUNDS);
    set_policy(&Policy {
        ratio: Some((1, 4)),
        ..Policy::default()
    })
    .unwrap();
    let mut found = None;
    for _ in 0..ROUNDS {
        for _ in 0..ROUND {
            // SAFETY: a non-zero size.
            let p = unsafe { GLOBAL.alloc(l) };
            assert!(!p.is_null());
            blocks.push(p as usize);
        }
        let far: Vec<usize> = blocks
            .iter()
            .copied()
            // SAFETY (the probes): live blocks of this thread's.
            .filter(|&p| unsafe {
                tieralloc::probe::block_node(p as *const u8) == 2
                    && tieralloc::probe::owned_by_caller(p as *const u8)
            })
            .collect();
        found = far
            .windows(REMOTE + 1)
            .find(|w| w.iter().all(|&q| window(q) == window(w[0])))
            .map(|w| w.to_vec());
        if found.is_some() {
            break;
        }
    }
    set_policy(&Policy::default()).unwrap();
    let found = found.expect("six far blocks on one page of this heap");
    let (twice, remote) = (found[0], &found[1..]);
    // One block's bytes on the far node, as booked: a far block of another page freed.
    let spare = *blocks
        .iter()
        .find(|&&p| {
            // SAFETY (block_node): live blocks of this thread's.
            window(p) != window(twice)
                && unsafe { tieralloc::probe::block_node(p as *const u8) } == 2
        })
        .expect("far blocks on another page");
    let before = far_live();
    // SAFETY: a live block of layout `l`, freed once.
    unsafe { GLOBAL.dealloc(spare as *mut u8, l) };
    let block = before - far_live();
    assert!(block >= SIZE as i64, "one far block books {block} B");
    // SAFETY: the first free of `twice`, a live block of ours.
    unsafe { GLOBAL.dealloc(twice as *mut u8, l) };
    let base = far_live();
    for (a, &q) in TO_FREE.iter().zip(remote) {
        a.store(q, Ordering::Relaxed);
    }
    GO.store(true, Ordering::Release);
    while !DONE.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    // The remote frees wait on the page's list; no collection of this heap has run since.
    // SAFETY: none: the test's one wrong free (reported, then left alone under `warn`).
    unsafe { GLOBAL.dealloc(twice as *mut u8, l) };
    freer.join().unwrap();
    assert_eq!(
        far_live(),
        base - REMOTE as i64 * block,
        "node 2's live bytes after {REMOTE} remote frees ({block} B each) and a double free"
    );
    for p in blocks {
        if p != twice && p != spare && !remote.contains(&p) {
            // SAFETY: the rest of the blocks, live, each freed once.
            unsafe { GLOBAL.dealloc(p as *mut u8, l) };
        }
    }
}
