//! Every operating-system call failing (review rev38): for each kind of system call the
//! allocator makes (mmap, munmap, madvise's purge and its other advice, mprotect, mbind,
//! move_pages, mremap, the purger's futex wait), a sweep makes the 1st, then the 2nd, 3rd, ...
//! call of that kind made by a mixed workload fail (`tieralloc::fault_injection`, feature
//! `fault-injection`), until the workload runs through without reaching the Nth; then once
//! more with every call of the kind failing. After each: no panic or crash; every allocation
//! either returned a writable block whose contents survive or null; no block was handed out
//! twice (a shadow list of the live ranges); every live block's pattern is intact; errno is
//! the same after every free as before it (C's `free` must keep it); and once the failures
//! stop, the allocator serves every class again and `stats()`'s live bytes are back where a
//! run without failures leaves them (a step whose live bytes alone are off runs once more:
//! see `sweep`).
//!
//! The workload: small, medium, large and huge blocks, some over-aligned; reallocs that grow
//! and shrink across the classes, a huge block grown in place (mremap); blocks freed by
//! another thread; a thread that exits with blocks still live (the main thread frees them);
//! purges (`TIERALLOC_PURGE_DELAY_MS=0`, `collect`); placement on the far tier, and for the
//! NUMA kinds moves between tiers (`tiers::demote`, `promote`), on simulated nodes
//! (`2,far=1`: the NUMA calls are then made by the allocator, and the injected failure
//! reaches them).
//!
//! Each kind's sweep runs in a child process of its own (this binary again, with the
//! environment the allocator reads at start-up), which forks one grandchild per N, so a crash
//! is reported per kind and N.

#[path = "common/child.rs"]
mod child;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tieralloc::fault_injection::{self as fault, Kind};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// The kind a child sweeps (its `Debug` name).
const KIND_ENV: &str = "TIERALLOC_TEST_FAULT_KIND";
/// Sweep steps past which a kind's sweep stops even if the workload still reaches the Nth
/// call (a hang guard for a workload that makes calls of a kind without end).
const MAX_N: u64 = 400;

fn kind_named(name: &str) -> Kind {
    *fault::KINDS
        .iter()
        .find(|k| format!("{k:?}") == name)
        .expect("a kind's name")
}

/// A live block of the workload: its range and the seed of its pattern.
#[derive(Clone, Copy)]
struct Block {
    p: usize,
    size: usize,
    align: usize,
    seed: u64,
}

/// The pattern's words of a block of `size` bytes: every word of a block up to 64 KiB, one
/// word per 4 KiB page and the last one for a bigger one (cheap on huge blocks).
fn words(size: usize) -> impl Iterator<Item = usize> {
    let step = if size <= 64 << 10 { 8 } else { 4096 };
    let n = size / 8;
    (0..n)
        .step_by(step / 8)
        .chain(std::iter::once(n - 1))
        .map(|w| w * 8)
}

fn fill(b: &Block) {
    for off in words(b.size) {
        // SAFETY: off + 8 <= size, inside the block, which is the workload's and aligned to 8.
        unsafe { *((b.p + off) as *mut u64) = b.seed ^ off as u64 };
    }
}

/// Whether the pattern of `b` is intact in its first `upto` bytes.
fn intact(b: &Block, upto: usize) -> bool {
    words(b.size).filter(|&off| off + 8 <= upto).all(|off| {
        // SAFETY: as in fill.
        unsafe { *((b.p + off) as *const u64) == b.seed ^ off as u64 }
    })
}

fn errno() -> i32 {
    // SAFETY: the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: i32) {
    // SAFETY: the calling thread's errno slot.
    unsafe { *libc::__errno_location() = v };
}

/// The workload's live blocks, in a list whose room is reserved before any failure is
/// injected (a push never allocates, so the list never meets the failure).
struct Shadow {
    live: Vec<Block>,
    nulls: usize,
    seed: u64,
}

impl Shadow {
    fn new() -> Shadow {
        Shadow {
            live: Vec::with_capacity(4096),
            nulls: 0,
            seed: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn next_seed(&mut self) -> u64 {
        self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        self.seed
    }

    /// Takes in a block handed out at `p`: aligned, overlapping no live block; filled.
    fn add(&mut self, p: *mut u8, size: usize, align: usize) {
        let p = p as usize;
        assert_eq!(
            p % align,
            0,
            "a block of {size} B at {p:#x} not aligned to {align}"
        );
        for b in &self.live {
            assert!(
                p + size <= b.p || b.p + b.size <= p,
                "block [{p:#x}, +{size}) handed out while [{:#x}, +{}) is live",
                b.p,
                b.size
            );
        }
        assert!(self.live.len() < self.live.capacity(), "shadow list full");
        let b = Block {
            p,
            size,
            align,
            seed: self.next_seed(),
        };
        fill(&b);
        self.live.push(b);
    }

    fn alloc(&mut self, size: usize, align: usize) {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { GLOBAL.alloc(layout) };
        if p.is_null() {
            self.nulls += 1;
        } else {
            self.add(p, size, align);
        }
    }

    fn check_all(&self) {
        for b in &self.live {
            assert!(
                intact(b, b.size),
                "the pattern of [{:#x}, +{}) is broken",
                b.p,
                b.size
            );
        }
    }

    /// Frees live block `i` (errno must survive the free).
    fn free(&mut self, i: usize) {
        let b = self.live.swap_remove(i);
        assert!(
            intact(&b, b.size),
            "the pattern of [{:#x}, +{}) is broken",
            b.p,
            b.size
        );
        set_errno(4242);
        // SAFETY: a live block of ours with this layout.
        unsafe {
            GLOBAL.dealloc(
                b.p as *mut u8,
                Layout::from_size_align(b.size, b.align).unwrap(),
            )
        };
        assert_eq!(errno(), 4242, "free of {} B changed errno", b.size);
    }

    /// Reallocates live block `i` to `new` bytes: on null it is unchanged and live; else its
    /// contents up to the smaller size moved with it.
    fn realloc(&mut self, i: usize, new: usize) {
        let b = self.live[i];
        let layout = Layout::from_size_align(b.size, b.align).unwrap();
        // SAFETY: a live block of ours with this layout; a non-zero new size.
        let q = unsafe { GLOBAL.realloc(b.p as *mut u8, layout, new) };
        if q.is_null() {
            self.nulls += 1;
            assert!(intact(&b, b.size), "a failed realloc broke its block");
            return;
        }
        self.live.swap_remove(i);
        let moved = Block { p: q as usize, ..b };
        assert!(
            intact(&moved, b.size.min(new)),
            "realloc {} -> {new} B lost contents",
            b.size
        );
        self.add(q, new, b.align);
    }

    /// The index of the live block at `p`.
    fn find(&self, p: usize) -> Option<usize> {
        self.live.iter().position(|b| b.p == p)
    }
}

/// Blocks handed to the freeing thread (address, size) and those the exiting thread made.
static HANDED: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];
static MADE: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];
/// A page shared with the forked runs (MAP_SHARED): [0] whether the injected failure was
/// hit (written as soon as the failures stop, so also by a run that panics later), [1] the
/// live bytes a run left over its baseline, [2] what a run without failures left.
static SHARED: std::sync::atomic::AtomicPtr<i64> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

fn shared(i: usize) -> &'static std::sync::atomic::AtomicI64 {
    let p = SHARED.load(Ordering::Relaxed);
    assert!(!p.is_null());
    // SAFETY: a page of ours shared with the children, mapped for good; atomics of i64 are
    // laid out as i64s.
    unsafe { &*(p.add(i) as *const std::sync::atomic::AtomicI64) }
}

static GO_FREE: AtomicBool = AtomicBool::new(false);
static GO_MAKE: AtomicBool = AtomicBool::new(false);
const MADE_SIZES: [usize; 4] = [48, 3000, 40 << 10, 300 << 10];

/// Whether the workload moves blocks between tiers (`tiers::demote`, `promote`): only for
/// the kinds those moves call (mbind, move_pages, madvise's huge-page split). Runs with moves
/// left `stats()`'s live bytes off by a multiple of 128 KiB more often than others, without
/// any failure injected (docs/correctness.md, review rev38's entry; the cause, found by
/// review rev42: `collect()` tended one abandoned segment per list, and a large block freed
/// into another one stayed counted live; fixed, `tests/collect_abandoned_large.rs`), so the
/// other kinds' sweeps do without them.
fn moves(kind: Kind) -> bool {
    matches!(kind, Kind::Bind | Kind::MovePages | Kind::Advise)
}

/// `stats()`'s live bytes. (Not compared per node: which node the few bytes of this
/// thread's own bookkeeping land on follows the CPU it runs on.)
fn live() -> i64 {
    tieralloc::stats().bytes_live as i64
}

/// Lets every heap take in the frees made into it from elsewhere (other threads, other
/// nodes): a collection on a thread of each simulated node, then on this one.
fn settle() {
    for node in 0..2 {
        if let Some(c) = child::cpu_of_simulated_node(node) {
            std::thread::spawn(move || {
                let _ = tieralloc::numa::pin_current_thread_to_cpu(c);
                tieralloc::collect();
            })
            .join()
            .unwrap();
        }
    }
    tieralloc::collect();
}

/// The workload, with the failure armed by `arm` just before it starts (after every
/// allocation of the test's own: the shadow list, the threads). Returns whether a failure
/// was injected.
fn workload(kind: Kind, arm: impl FnOnce()) -> bool {
    let far = tieralloc::Placed::far().ok();
    let mut s = Shadow::new();
    let before = fault::injected(kind);
    GO_FREE.store(false, Ordering::Relaxed);
    GO_MAKE.store(false, Ordering::Relaxed);
    for a in HANDED.iter().chain(MADE.iter()) {
        a.store(0, Ordering::Relaxed);
    }
    settle();
    let baseline = live();

    // The freeing thread frees what it is handed; the making thread allocates small to large
    // blocks and exits with them live.
    let freer = std::thread::spawn(|| {
        while !GO_FREE.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        for pair in HANDED.chunks(2) {
            let (p, size) = (
                pair[0].load(Ordering::Acquire),
                pair[1].load(Ordering::Acquire),
            );
            if p != 0 {
                set_errno(77);
                // SAFETY: a block the main thread handed over, with this layout.
                unsafe { GLOBAL.dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
                assert_eq!(errno(), 77, "a cross-thread free of {size} B changed errno");
            }
        }
    });
    let maker = std::thread::spawn(|| {
        while !GO_MAKE.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        for (i, slot) in MADE.iter().enumerate() {
            let size = MADE_SIZES[i % MADE_SIZES.len()];
            // SAFETY: a non-zero size.
            let p = unsafe { GLOBAL.alloc(Layout::from_size_align(size, 8).unwrap()) };
            slot.store(p as usize, Ordering::Release);
        }
    });

    arm();

    // Every class, some over-aligned.
    for &(size, align) in &[
        (16, 8),
        (120, 8),
        (1000, 8),
        (4096, 4096),
        (6000, 8),
        (20 << 10, 8),
        (60 << 10, 8),
        (100 << 10, 8),
        (600 << 10, 8),
        (1 << 20, 1 << 20),
        (3 << 20, 8),
        (5 << 20, 8),
        (1000, 1 << 20),
    ] {
        for _ in 0..3 {
            s.alloc(size, align);
        }
    }
    for _ in 0..200 {
        s.alloc(64, 8);
    }
    s.check_all();

    // Reallocs across the classes, up and down, and a huge block grown in place.
    s.alloc(24, 8);
    if let Some(mut i) = s.live.len().checked_sub(1) {
        for new in [
            2000,
            20 << 10,
            200 << 10,
            3 << 20,
            8 << 20,
            20 << 20,
            1 << 20,
            100 << 10,
            40,
        ] {
            let p = s.live[i].p;
            s.realloc(i, new);
            // Where the block is now (moved or not).
            match s.find(p).or_else(|| s.live.len().checked_sub(1)) {
                Some(j) => i = j,
                None => break,
            }
        }
    }
    s.check_all();

    // Cross-thread frees: every third small-to-large block goes to the freeing thread.
    let mut k = 0;
    let mut i = 0;
    while i < s.live.len() && k + 1 < HANDED.len() {
        let b = s.live[i];
        if b.align == 8 && b.size <= 600 << 10 && i % 3 == 0 {
            assert!(intact(&b, b.size));
            s.live.swap_remove(i);
            HANDED[k].store(b.p, Ordering::Relaxed);
            HANDED[k + 1].store(b.size, Ordering::Release);
            k += 2;
        } else {
            i += 1;
        }
    }
    GO_FREE.store(true, Ordering::Release);
    GO_MAKE.store(true, Ordering::Release);
    freer.join().expect("the freeing thread");
    maker.join().expect("the making thread");
    for (i, slot) in MADE.iter().enumerate() {
        let p = slot.load(Ordering::Acquire);
        if p == 0 {
            s.nulls += 1;
        } else {
            s.add(p as *mut u8, MADE_SIZES[i % MADE_SIZES.len()], 8);
        }
    }
    s.check_all();

    // Far placement and moves between tiers (simulated nodes).
    if let Some(far) = far {
        for size in [100, 50 << 10, 300 << 10, 3 << 20] {
            tieralloc::with_placement(far, || s.alloc(size, 8));
        }
        for i in 0..s.live.len() {
            if !moves(kind) {
                break;
            }
            let b = s.live[i];
            if b.size >= 300 << 10 {
                // SAFETY: a live block of ours; a move keeps its contents.
                unsafe {
                    let _ = tieralloc::tiers::demote(b.p as *mut u8, b.size);
                    let _ = tieralloc::tiers::promote(b.p as *mut u8, b.size / 2);
                }
            }
        }
        s.check_all();
    }

    // Purges: half of everything freed, then the rest of the heap's idle memory given back.
    let mut i = 0;
    while i < s.live.len() {
        if i % 2 == 0 {
            s.free(i);
        } else {
            i += 1;
        }
    }
    tieralloc::collect();
    s.check_all();
    for _ in 0..100 {
        s.alloc(64, 8);
    }
    s.alloc(200 << 10, 8);
    s.alloc(6 << 20, 8);
    s.check_all();

    // The failures stop: everything freed, the allocator serves every class again, and the
    // live bytes are back at the baseline.
    fault::clear();
    let hit = fault::injected(kind) > before;
    shared(0).store(hit as i64, Ordering::SeqCst);
    while !s.live.is_empty() {
        s.free(s.live.len() - 1);
    }
    tieralloc::collect();
    for &(size, align) in &[
        (64, 8),
        (6000, 8),
        (40 << 10, 8),
        (500 << 10, 8),
        (5 << 20, 8),
    ] {
        let had = s.live.len();
        s.alloc(size, align);
        assert_eq!(
            s.live.len(),
            had + 1,
            "after the failures, {size} B returns null"
        );
    }
    s.check_all();
    while !s.live.is_empty() {
        s.free(s.live.len() - 1);
    }
    settle();
    // (A read that finds other than the control's number is made again after another
    // settling: stats() can read a large block's bytes out of step once in a while.)
    let expected = shared(2).load(Ordering::SeqCst);
    let mut after = live();
    for _ in 0..5 {
        if expected == i64::MIN || after.wrapping_sub(baseline) == expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        settle();
        after = live();
    }
    let delta = after.wrapping_sub(baseline);
    shared(1).store(delta, Ordering::SeqCst);
    hit
}

/// The sweep of one kind, in this child (started with the allocator's environment): the
/// workload with the Nth call failing for N = 1, 2, ... until it runs without reaching it,
/// each in a forked grandchild; then once with every call failing.
fn sweep(kind: Kind) {
    // Warm up what the workload's first run would do once per process (start-up, topology,
    // the far placement's lookup, the first thread spawn, stats' first call).
    if let Ok(far) = tieralloc::Placed::far() {
        // (A thread's first placement keeps a few bytes for its scopes.)
        tieralloc::with_placement(far, || drop(vec![1u8; 100]));
    }
    std::thread::spawn(|| {}).join().unwrap();
    settle();
    let _ = tieralloc::stats();
    // The workload once without a failure, here: what it leaves allocated for good (the
    // threads' and the placements' first use) is then in every run's baseline.
    // SAFETY: a fresh shared anonymous page; checked below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    SHARED.store(page as *mut i64, Ordering::Relaxed);
    shared(2).store(i64::MIN, Ordering::SeqCst);
    let c0 = fault::calls(kind);
    workload(kind, || {});
    let calls = fault::calls(kind) - c0;
    // Let this process's purger finish with what the run freed before the first fork: a
    // child forked during its pass reads live bytes off by a multiple of 128 KiB (see below).
    std::thread::sleep(Duration::from_millis(200));
    settle();
    // Each run: whether the failure was hit, and what went wrong, if anything.
    let run = |arm: &dyn Fn()| -> (bool, Result<i64, String>) {
        shared(0).store(0, Ordering::SeqCst);
        shared(1).store(i64::MIN, Ordering::SeqCst);
        let r = child::fork_and_wait(Duration::from_secs(30), || {
            workload(kind, arm);
            0
        });
        let hit = shared(0).load(Ordering::SeqCst) != 0;
        let r = match r {
            Ok(0) => Ok(shared(1).load(Ordering::SeqCst)),
            Ok(c) => Err(format!("exit code {c} (101: a panic, see stderr)")),
            Err(e) => Err(e),
        };
        (hit, r)
    };
    let mut failures = Vec::new();
    // The control: the workload with no failure passes, and leaves this many live bytes over
    // its baseline (what its threads leave behind). A run in a hundred or so left
    // `stats()`'s live bytes off by a multiple of 128 KiB without any failure (docs/
    // correctness.md, review rev38's entry; fixed by review rev42, the reruns kept as a
    // guard): the control is the number two runs agree on, and
    // a run whose live bytes alone are off runs again, the difference counted only if the
    // second run has it too.
    let mut seen: Vec<i64> = Vec::new();
    let control = loop {
        let (_, r) = run(&|| {});
        let d = r.unwrap_or_else(|e| panic!("the workload fails with no failure injected: {e}"));
        if seen.contains(&d) {
            break d;
        }
        seen.push(d);
        assert!(
            seen.len() < 5,
            "no two runs without failures agree: {seen:?}"
        );
    };
    shared(2).store(control, Ordering::SeqCst);
    let mut retried = 0;
    let mut run_checked = |what: String, arm: &dyn Fn()| -> bool {
        let mut again = true;
        loop {
            let (hit, r) = run(arm);
            match r {
                Ok(d) if d == control => {}
                Ok(_) if again => {
                    again = false;
                    retried += 1;
                    continue;
                }
                Ok(d) => failures.push(format!(
                    "{what}: live bytes {d} over the baseline after everything was freed, \
                     {control} without the failure (twice)"
                )),
                Err(e) => failures.push(format!("{what}: {e}")),
            }
            return hit;
        }
    };
    let mut n = 1;
    loop {
        let hit = run_checked(format!("{kind:?} call {n} failing"), &|| {
            fault::fail_nth(kind, n)
        });
        // Done once a run no longer reaches the Nth call (and N is past the calls a run
        // without failures made: the number of calls varies a little from run to run).
        if !hit && n >= calls {
            break;
        }
        n += 1;
        if n > MAX_N {
            break;
        }
    }
    run_checked(format!("every {kind:?} call failing"), &|| {
        fault::fail_from(kind, 1)
    });
    println!(
        "SWEPT {kind:?}: {n} steps, {calls} calls of the kind in a run without failures, \
         {retried} runs again for their live bytes"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Starts `kind`'s sweep in a child with the allocator's environment and checks it passed.
fn sweep_in_child(kind: Kind, test: &str) {
    let mut cmd = child::on_simulated_nodes(test, "2,far=1");
    cmd.env(KIND_ENV, format!("{kind:?}"))
        .env("TIERALLOC_PURGE_DELAY_MS", "0")
        .env("TIERALLOC_BACKGROUND_PURGE", "1");
    let out = child::run(&mut cmd, Duration::from_secs(600));
    for l in out.stdout.lines().filter_map(|l| l.split_once("SWEPT")) {
        println!("swept{}", l.1);
    }
    out.expect_test_passed();
}

macro_rules! sweeps {
    ($($name:ident: $kind:ident,)*) => {$(
        #[test]
        fn $name() {
            if child::is_child() {
                sweep(kind_named(&std::env::var(KIND_ENV).unwrap()));
            } else {
                sweep_in_child(Kind::$kind, stringify!($name));
            }
        }
    )*};
}

sweeps! {
    each_mmap_failing: Map,
    each_munmap_failing: Unmap,
    each_purge_failing: Decommit,
    each_madvise_hint_failing: Advise,
    each_mprotect_failing: Protect,
    each_mbind_failing: Bind,
    each_move_pages_failing: MovePages,
    each_mremap_failing: Remap,
    each_futex_wait_failing: Futex,
}
