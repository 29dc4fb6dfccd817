//! What memory holds, on every path (review rev30): `alloc_zeroed` is zero over the request
//! after the same memory held a pattern (small, medium, large and huge, reused pages,
//! slices, cached, split, grown and assembled huge mappings, other threads' frees, purges);
//! `realloc` keeps the first min(old, new) bytes and the layout's alignment on every route
//! (in place, moved, huge grown, huge shrunk into a class); writing up to `usable_size` is
//! safe and is kept by a `realloc` of that size.

#[path = "common/rng.rs"]
mod rng;

use rng::Rng;
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Sizes around the classes' edges: bins, the medium bound, the large bound, huge.
fn edge_sizes() -> Vec<usize> {
    let mut v = Vec::new();
    for base in [
        8,
        16,
        64,
        128,
        KIB,
        4 * KIB,
        16 * KIB,
        64 * KIB,
        128 * KIB,
        256 * KIB,
        512 * KIB,
        MIB,
        2 * MIB,
        4 * MIB,
        8 * MIB,
    ] {
        for d in [-17isize, -1, 0, 1, 17] {
            let s = base as isize + d;
            if s > 0 {
                v.push(s as usize);
            }
        }
    }
    v
}

fn fill(p: *mut u8, len: usize, byte: u8) {
    // SAFETY: the caller hands a live block of at least len bytes.
    unsafe { std::ptr::write_bytes(p, byte, len) };
}

/// The first non-zero byte of `[p, p+len)`, if any.
fn first_nonzero(p: *const u8, len: usize) -> Option<usize> {
    // SAFETY: the caller hands a live block of at least len bytes.
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    s.iter().position(|&b| b != 0)
}

fn pattern(i: usize, seed: u8) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(seed) | 1
}

fn write_pattern(p: *mut u8, len: usize, seed: u8) {
    // SAFETY: the caller hands a live block of at least len bytes.
    let s = unsafe { std::slice::from_raw_parts_mut(p, len) };
    for (i, b) in s.iter_mut().enumerate() {
        *b = pattern(i, seed);
    }
}

/// The first byte of `[p, p+len)` that does not hold `write_pattern`'s value.
fn pattern_breaks(p: *const u8, len: usize, seed: u8) -> Option<usize> {
    // SAFETY: the caller hands a live block of at least len bytes.
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    s.iter()
        .enumerate()
        .position(|(i, &b)| b != pattern(i, seed))
}

/// For each size and alignment: blocks filled with a pattern up to their usable size are
/// freed, then as many zeroed blocks of the same layout are asked for (they reuse that
/// memory): each is zero over the request, aligned, and writable to its usable size.
#[test]
fn zeroed_blocks_are_zero_after_the_memory_held_a_pattern() {
    for align in (0..=21).map(|k| 1usize << k) {
        for size in edge_sizes() {
            let l = Layout::from_size_align(size, align).unwrap();
            let n = if size <= 64 * KIB { 64 } else { 4 };
            let mut held = Vec::new();
            for _ in 0..n {
                // SAFETY: non-zero size.
                let p = unsafe { GLOBAL.alloc(l) };
                assert!(!p.is_null());
                // SAFETY: a live block of ours.
                let u = unsafe { tieralloc::usable_size(p) };
                assert!(u >= size, "usable {u} < size {size} (align {align})");
                fill(p, u, 0xA5);
                held.push(p);
            }
            for p in held.drain(..) {
                // SAFETY: live, this layout, freed once.
                unsafe { GLOBAL.dealloc(p, l) };
            }
            for _ in 0..n {
                // SAFETY: non-zero size.
                let p = unsafe { GLOBAL.alloc_zeroed(l) };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                if let Some(i) = first_nonzero(p, size) {
                    panic!("alloc_zeroed({size}, align {align}): byte {i} not zero");
                }
                // SAFETY: a live block of ours.
                let u = unsafe { tieralloc::usable_size(p) };
                fill(p, u, 0x5A);
                held.push(p);
            }
            for p in held.drain(..) {
                // SAFETY: live, this layout, freed once.
                unsafe { GLOBAL.dealloc(p, l) };
            }
        }
    }
}

/// The same, with the frees made by another thread (remote lists) and with a purge delay
/// passed in between, in a random mix of sizes.
#[test]
fn zeroed_blocks_are_zero_after_remote_frees_and_mixed_sizes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let sizes = edge_sizes();
    for round in 0..6 {
        let mut blocks: Vec<(usize, usize, usize)> = Vec::new();
        for _ in 0..400 {
            let size = sizes[rng.below(sizes.len() as u64) as usize].min(3 * MIB);
            let align = 1usize << rng.below(12);
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { GLOBAL.alloc(l) };
            assert!(!p.is_null());
            // SAFETY: a live block of ours.
            let u = unsafe { tieralloc::usable_size(p) };
            fill(p, u, 0xC3);
            blocks.push((p as usize, size, align));
        }
        let remote = round % 2 == 0;
        let freeing = std::mem::take(&mut blocks);
        let free_all = move || {
            for (p, size, align) in freeing {
                let l = Layout::from_size_align(size, align).unwrap();
                // SAFETY: live blocks of ours with these layouts, freed once.
                unsafe { GLOBAL.dealloc(p as *mut u8, l) };
            }
        };
        if remote {
            std::thread::spawn(free_all).join().unwrap();
        } else {
            free_all();
        }
        if round % 3 == 2 {
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        for _ in 0..400 {
            let size = sizes[rng.below(sizes.len() as u64) as usize].min(3 * MIB);
            let align = 1usize << rng.below(12);
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { GLOBAL.alloc_zeroed(l) };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            if let Some(i) = first_nonzero(p, size) {
                panic!("round {round}: alloc_zeroed({size}, align {align}): byte {i} not zero");
            }
            // SAFETY: a live block of ours.
            let u = unsafe { tieralloc::usable_size(p) };
            fill(p, u, 0x3C);
            blocks.push((p as usize, size, align));
        }
        for (p, size, align) in blocks {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: live blocks of ours with these layouts, freed once.
            unsafe { GLOBAL.dealloc(p as *mut u8, l) };
        }
    }
}

/// Huge mappings through the cache: a big one freed and reused for a smaller (split), a
/// bigger (grown inside its reservation) and an assembled request, each zeroed.
#[test]
fn zeroed_huge_blocks_from_the_cache_are_zero() {
    for (first, then) in [
        (vec![20 * MIB], vec![5 * MIB, 9 * MIB]),
        (vec![5 * MIB], vec![7 * MIB]),
        (vec![9 * MIB, 9 * MIB, 9 * MIB], vec![24 * MIB]),
        (vec![6 * MIB], vec![3 * MIB, 2 * MIB + 1]),
        (vec![12 * MIB + 3], vec![12 * MIB + 4096]),
    ] {
        for align in [16usize, 4 * KIB, 2 * MIB] {
            let mut held = Vec::new();
            for &s in &first {
                let l = Layout::from_size_align(s, align).unwrap();
                // SAFETY: non-zero size.
                let p = unsafe { GLOBAL.alloc(l) };
                assert!(!p.is_null());
                // SAFETY: a live block of ours.
                let u = unsafe { tieralloc::usable_size(p) };
                fill(p, u, 0xEE);
                held.push((p, l));
            }
            for (p, l) in held.drain(..) {
                // SAFETY: live, freed once.
                unsafe { GLOBAL.dealloc(p, l) };
            }
            for &s in &then {
                let l = Layout::from_size_align(s, align).unwrap();
                // SAFETY: non-zero size.
                let p = unsafe { GLOBAL.alloc_zeroed(l) };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                if let Some(i) = first_nonzero(p, s) {
                    panic!("huge alloc_zeroed({s}, align {align}) after {first:?}: byte {i}");
                }
                held.push((p, l));
            }
            for (p, l) in held.drain(..) {
                // SAFETY: live, freed once.
                unsafe { GLOBAL.dealloc(p, l) };
            }
        }
    }
}

/// `realloc` keeps the first min(old, new) bytes and the alignment on random chains of
/// sizes across every class, for alignments from 1 to 2 MiB; each block is written to its
/// usable size first (the bytes a program may use).
#[test]
fn realloc_keeps_contents_and_alignment_on_every_route() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let sizes = edge_sizes();
    for chain in 0..300 {
        let align = 1usize << rng.below(22);
        let mut size = sizes[rng.below(sizes.len() as u64) as usize];
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size.
        let mut p = unsafe { GLOBAL.alloc(l) };
        assert!(!p.is_null());
        let mut seed = chain as u8;
        // SAFETY: a live block of ours.
        let mut kept = unsafe { tieralloc::usable_size(p) };
        write_pattern(p, kept, seed);
        for step in 0..6 {
            let new = match rng.below(4) {
                0 => sizes[rng.below(sizes.len() as u64) as usize],
                1 => size + 1 + rng.below(size as u64) as usize,
                2 => (size / 2).max(1),
                // Exactly the usable size: realloc keeps every byte the program could use.
                _ => kept,
            }
            .min(24 * MIB);
            let l = Layout::from_size_align(size, align).unwrap();
            // The copy of a moved block covers `size` (the layout's); in place, all of it
            // stays. Contract: the first min(size, new) bytes.
            let must = size.min(new);
            // SAFETY: p is live with layout l; new is non-zero and small.
            let q = unsafe { GLOBAL.realloc(p, l, new) };
            assert!(!q.is_null());
            assert_eq!(
                q as usize % align,
                0,
                "chain {chain} step {step}: {size} -> {new} at align {align} misaligned"
            );
            if let Some(i) = pattern_breaks(q, must.min(kept), seed) {
                panic!(
                    "chain {chain} step {step}: realloc {size} -> {new} (align {align}, \
                     {p:?} -> {q:?}) lost byte {i}"
                );
            }
            p = q;
            size = new;
            seed = seed.wrapping_add(7);
            // SAFETY: a live block of ours.
            kept = unsafe { tieralloc::usable_size(p) };
            assert!(kept >= size);
            write_pattern(p, kept, seed);
        }
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: live with layout l, freed once.
        unsafe { GLOBAL.dealloc(p, l) };
    }
}

#[path = "common/child.rs"]
mod child;

/// Large and huge blocks filled with a pattern, some demoted to the far node and some of
/// those promoted back, all freed; then zeroed blocks of the same sizes (over the same
/// slices and mappings) are zero. Simulated nodes `2,far=1`, a thread pinned to node 0.
#[test]
fn zeroed_blocks_over_moved_memory_are_zero() {
    if !child::is_child() {
        let out = child::run(
            child::on_simulated_nodes("zeroed_blocks_over_moved_memory_are_zero", "2,far=1")
                .env("TIERALLOC_PURGE_DELAY_MS", "1"),
            std::time::Duration::from_secs(300),
        );
        out.expect_test_passed();
        return;
    }
    let Some(c0) = child::cpu_of_simulated_node(0) else {
        println!("skipped: no CPU of simulated node 0");
        return;
    };
    std::thread::spawn(move || {
        tieralloc::numa::pin_current_thread_to_cpu(c0).unwrap();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let sizes = [
            64 * KIB,
            100 * KIB,
            256 * KIB,
            MIB,
            2 * MIB - 5,
            3 * MIB,
            5 * MIB,
        ];
        for round in 0..40 {
            let mut held = Vec::new();
            for &s in &sizes {
                let l = Layout::from_size_align(s, 16).unwrap();
                // SAFETY: non-zero size.
                let p = unsafe { GLOBAL.alloc(l) };
                assert!(!p.is_null());
                // SAFETY: a live block of ours.
                let u = unsafe { tieralloc::usable_size(p) };
                fill(p, u, 0xB7);
                match rng.below(3) {
                    0 => {}
                    k => {
                        // SAFETY: our own block, not freed or resized while it moves.
                        let _ = unsafe { tieralloc::tiers::demote(p, s) };
                        if k == 2 {
                            // SAFETY: as above.
                            let _ = unsafe { tieralloc::tiers::promote(p, s) };
                        }
                    }
                }
                held.push((p, l));
            }
            for (p, l) in held.drain(..) {
                // SAFETY: live, freed once.
                unsafe { GLOBAL.dealloc(p, l) };
            }
            if round % 4 == 3 {
                std::thread::sleep(std::time::Duration::from_millis(5));
                tieralloc::collect();
            }
            for &s in sizes.iter().rev() {
                let l = Layout::from_size_align(s, 16).unwrap();
                // SAFETY: non-zero size.
                let p = unsafe { GLOBAL.alloc_zeroed(l) };
                assert!(!p.is_null());
                if let Some(i) = first_nonzero(p, s) {
                    panic!("round {round}: alloc_zeroed({s}) over moved memory: byte {i}");
                }
                held.push((p, l));
            }
            for (p, l) in held.drain(..) {
                // SAFETY: live, freed once.
                unsafe { GLOBAL.dealloc(p, l) };
            }
        }
    })
    .join()
    .unwrap();
}

/// Under `mlockall` every purge is refused: memory freed with a pattern stays resident and
/// must not be taken for zero. Blocks of every class are filled, freed, left past the purge
/// delay (the purges are tried and refused), and asked for again zeroed.
#[test]
fn zeroed_blocks_under_mlockall_are_zero() {
    if !child::is_child() {
        let out = child::run(
            child::this_test("zeroed_blocks_under_mlockall_are_zero")
                .env("TIERALLOC_PURGE_DELAY_MS", "1"),
            std::time::Duration::from_secs(300),
        );
        out.expect_test_passed();
        return;
    }
    // SAFETY: a plain system call.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        println!("skipped: mlockall refused");
        return;
    }
    let sizes = [
        24usize,
        200,
        3000,
        20 * KIB,
        70 * KIB,
        300 * KIB,
        600 * KIB,
        MIB,
        5 * MIB,
    ];
    for round in 0..20 {
        let mut held = Vec::new();
        for &s in &sizes {
            for _ in 0..(if s < 64 * KIB { 200 } else { 3 }) {
                let l = Layout::from_size_align(s, 16).unwrap();
                // SAFETY: non-zero size.
                let p = unsafe { GLOBAL.alloc(l) };
                assert!(!p.is_null());
                // SAFETY: a live block of ours.
                let u = unsafe { tieralloc::usable_size(p) };
                fill(p, u, 0xD1);
                held.push((p, l));
            }
        }
        for (p, l) in held.drain(..) {
            // SAFETY: live, freed once.
            unsafe { GLOBAL.dealloc(p, l) };
        }
        std::thread::sleep(std::time::Duration::from_millis(3));
        tieralloc::collect();
        for &s in sizes.iter().rev() {
            for _ in 0..(if s < 64 * KIB { 200 } else { 3 }) {
                let l = Layout::from_size_align(s, 16).unwrap();
                // SAFETY: non-zero size.
                let p = unsafe { GLOBAL.alloc_zeroed(l) };
                assert!(!p.is_null());
                if let Some(i) = first_nonzero(p, s) {
                    panic!("round {round}: alloc_zeroed({s}) under mlockall: byte {i}");
                }
                held.push((p, l));
            }
        }
        for (p, l) in held.drain(..) {
            // SAFETY: live, freed once.
            unsafe { GLOBAL.dealloc(p, l) };
        }
    }
}

/// Sizes of every class for the hand-over checks below.
const CLASS_SIZES: [usize; 9] = [
    24,
    200,
    3000,
    20 * KIB,
    70 * KIB,
    300 * KIB,
    600 * KIB,
    MIB,
    5 * MIB,
];

/// Fills blocks of every class with `byte` to their usable size and frees them all.
fn fill_and_free(byte: u8) {
    let mut held = Vec::new();
    for &s in &CLASS_SIZES {
        for _ in 0..(if s < 64 * KIB { 300 } else { 3 }) {
            let l = Layout::from_size_align(s, 16).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { GLOBAL.alloc(l) };
            assert!(!p.is_null());
            // SAFETY: a live block of ours.
            fill(p, unsafe { tieralloc::usable_size(p) }, byte);
            held.push((p as usize, l));
        }
    }
    for (p, l) in held {
        // SAFETY: live, freed once.
        unsafe { GLOBAL.dealloc(p as *mut u8, l) };
    }
}

/// Asks for zeroed blocks of every class (as many as `fill_and_free` made) and checks them.
fn zeroed_everywhere(what: &str) {
    let mut held = Vec::new();
    for &s in CLASS_SIZES.iter().rev() {
        for _ in 0..(if s < 64 * KIB { 300 } else { 3 }) {
            let l = Layout::from_size_align(s, 16).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { GLOBAL.alloc_zeroed(l) };
            assert!(!p.is_null());
            if let Some(i) = first_nonzero(p, s) {
                panic!("{what}: alloc_zeroed({s}): byte {i} not zero");
            }
            held.push((p, l));
        }
    }
    for (p, l) in held {
        // SAFETY: live, freed once.
        unsafe { GLOBAL.dealloc(p, l) };
    }
}

/// Memory a thread filled and freed before it exited (its segments abandoned, then adopted
/// or pooled), and memory a forked child inherited, is zero when asked for zeroed.
#[test]
fn zeroed_blocks_after_thread_exit_and_fork_are_zero() {
    for _ in 0..4 {
        std::thread::spawn(|| fill_and_free(0x6B)).join().unwrap();
        std::thread::spawn(|| zeroed_everywhere("after a thread's exit"))
            .join()
            .unwrap();
    }
    fill_and_free(0x4D);
    // SAFETY: the child only allocates, checks and exits (the allocator is fork-safe).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = std::panic::catch_unwind(|| {
            zeroed_everywhere("in a forked child");
            fill_and_free(0x2F);
            zeroed_everywhere("in a forked child, again");
        })
        .is_ok();
        // SAFETY: leaving the child at once.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child: {status}"
    );
    zeroed_everywhere("in the parent after the fork");
}

/// One worker of [`mixed_traffic_keeps_the_contract`]: random blocks (1 byte to 6 MiB,
/// alignments 1 to 2 MiB), zeroed or filled, reallocated, moved between tiers, allocated in
/// far and node scopes, handed to the next worker through `out`, the thread moving between
/// the two simulated nodes. Every block's contents are checked at each step.
fn traffic(
    seed: u64,
    cpus: [Option<u32>; 2],
    inbox: Vec<(usize, usize, usize, u8)>,
) -> Vec<(usize, usize, usize, u8)> {
    let mut rng = Rng(seed);
    let mut live = inbox;
    // (address, size, align, seed of its pattern)
    let check = |&(p, size, _, s): &(usize, usize, usize, u8)| {
        if let Some(i) = pattern_breaks(p as *const u8, size, s) {
            panic!("block {p:#x} of {size} lost byte {i}");
        }
    };
    for &b in &live {
        check(&b);
    }
    for step in 0..600u32 {
        if step % 100 == 0 {
            if let Some(c) = cpus[rng.below(2) as usize] {
                let _ = tieralloc::numa::pin_current_thread_to_cpu(c);
            }
        }
        let size = match rng.below(10) {
            0..=4 => 1 + rng.below(2048) as usize,
            5..=7 => 1 + rng.below(600 * KIB as u64) as usize,
            _ => 1 + rng.below(6 * MIB as u64) as usize,
        };
        let align = 1usize << rng.below(22);
        let l = Layout::from_size_align(size, align).unwrap();
        let scope = rng.below(4);
        let zero = rng.below(2) == 0;
        let alloc = || {
            // SAFETY: non-zero size.
            unsafe {
                if zero {
                    GLOBAL.alloc_zeroed(l)
                } else {
                    GLOBAL.alloc(l)
                }
            }
        };
        let p = match scope {
            0 => tieralloc::with_placement(tieralloc::Placed::cold(), alloc),
            1 => tieralloc::with_placement(tieralloc::Placed::node(1).unwrap(), alloc),
            _ => alloc(),
        };
        assert!(!p.is_null(), "alloc({size}, {align})");
        assert_eq!(p as usize % align, 0);
        if zero {
            if let Some(i) = first_nonzero(p, size) {
                panic!("step {step}: alloc_zeroed({size}, align {align}, scope {scope}): byte {i}");
            }
        }
        let s = rng.next() as u8;
        write_pattern(p, size, s);
        live.push((p as usize, size, align, s));
        match rng.below(6) {
            0 if !live.is_empty() => {
                let k = rng.below(live.len() as u64) as usize;
                let (p, size, align, s) = live.swap_remove(k);
                check(&(p, size, align, s));
                // SAFETY: live with this layout, freed once.
                unsafe {
                    GLOBAL.dealloc(p as *mut u8, Layout::from_size_align(size, align).unwrap())
                };
            }
            1 | 2 if !live.is_empty() => {
                let k = rng.below(live.len() as u64) as usize;
                let (p, size, align, s) = live[k];
                let new = match rng.below(3) {
                    0 => (size / 2).max(1),
                    1 => size + 1 + rng.below(size as u64 + 1) as usize,
                    _ => 1 + rng.below(6 * MIB as u64) as usize,
                };
                let l = Layout::from_size_align(size, align).unwrap();
                let r = || {
                    // SAFETY: live with layout l; new is non-zero.
                    unsafe { GLOBAL.realloc(p as *mut u8, l, new) }
                };
                let q = if rng.below(3) == 0 {
                    tieralloc::with_placement(tieralloc::Placed::cold(), r)
                } else {
                    r()
                };
                assert!(!q.is_null());
                assert_eq!(
                    q as usize % align,
                    0,
                    "realloc {size} -> {new} align {align}"
                );
                if let Some(i) = pattern_breaks(q, size.min(new), s) {
                    panic!("realloc {size} -> {new} (align {align}) lost byte {i}");
                }
                write_pattern(q, new, s);
                live[k] = (q as usize, new, align, s);
            }
            3 if !live.is_empty() => {
                let k = rng.below(live.len() as u64) as usize;
                let (p, size, _, _) = live[k];
                // SAFETY: our own block, not freed or resized while it moves.
                unsafe {
                    if rng.below(2) == 0 {
                        let _ = tieralloc::tiers::demote(p as *mut u8, size);
                    } else {
                        let _ = tieralloc::tiers::promote(p as *mut u8, size);
                    }
                }
                check(&live[k]);
            }
            _ => {}
        }
        while live.len() > 40 {
            let (p, size, align, s) = live.swap_remove(0);
            check(&(p, size, align, s));
            // SAFETY: live with this layout, freed once.
            unsafe { GLOBAL.dealloc(p as *mut u8, Layout::from_size_align(size, align).unwrap()) };
        }
    }
    for b in &live {
        check(b);
    }
    live
}

/// Random traffic of every kind on simulated nodes `2,far=1` with a far threshold, a near
/// budget, a 1 ms purge delay and the background purger: three generations of three
/// threads, each handing its live blocks to the next after it exits.
#[test]
fn mixed_traffic_keeps_the_contract() {
    if !child::is_child() {
        let out = child::run(
            child::on_simulated_nodes("mixed_traffic_keeps_the_contract", "2,far=1")
                .env("TIERALLOC_PURGE_DELAY_MS", "1")
                .env("TIERALLOC_BACKGROUND_PURGE", "1")
                .env("TIERALLOC_FAR_THRESHOLD", "300000")
                .env("TIERALLOC_TIER_BUDGET", "near:48M"),
            std::time::Duration::from_secs(600),
        );
        out.expect_test_passed();
        return;
    }
    let cpus = [
        child::cpu_of_simulated_node(0),
        child::cpu_of_simulated_node(1),
    ];
    let mut handed: Vec<Vec<(usize, usize, usize, u8)>> = vec![Vec::new(); 3];
    for generation in 0..3u64 {
        let workers: Vec<_> = handed
            .drain(..)
            .enumerate()
            .map(|(i, inbox)| {
                std::thread::spawn(move || traffic(generation * 10 + i as u64 + 1, cpus, inbox))
            })
            .collect();
        handed = workers.into_iter().map(|w| w.join().unwrap()).collect();
        handed.rotate_left(1);
    }
    for v in handed {
        for (p, size, align, _) in v {
            // SAFETY: live with this layout, freed once.
            unsafe { GLOBAL.dealloc(p as *mut u8, Layout::from_size_align(size, align).unwrap()) };
        }
    }
}
