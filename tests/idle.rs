//! Idle memory (issue 16, item 6): after a spike is freed, resident memory falls to the live
//! set + 10 % + 8 MiB within a few seconds in the default configuration (100 ms purge delay),
//! whatever the light traffic, including one size allocated and freed over and over while
//! its page holds live blocks (which never reaches a slow path by itself).
//!
//! Each scenario runs in a child process (this binary re-executed), so no other test
//! disturbs its RSS. Not a timing test: the child polls RSS for a bounded number of light
//! operations, spaced by sleeps, and asserts the bound; the sleeps only give the purge delay
//! time to pass, and a loaded machine only makes them longer.

#[path = "common/child.rs"]
mod child;

use std::alloc::{alloc, dealloc, Layout};
use std::time::Duration;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const CHILD_ENV: &str = "TIERALLOC_TEST_IDLE_CHILD";
const MIB: usize = 1 << 20;

fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

/// RSS read without allocating (for the scenarios that must make no allocator call).
fn rss_raw() -> usize {
    let mut buf = [0u8; 128];
    // SAFETY: a NUL-terminated path and a buffer of buf.len() bytes.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
        assert!(fd >= 0);
        let n = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
        libc::close(fd);
        n
    };
    assert!(n > 0);
    let mut fields = buf[..n as usize].split(|&c| c == b' ');
    fields.next();
    let pages = fields
        .next()
        .unwrap()
        .iter()
        .fold(0usize, |a, &c| a * 10 + (c - b'0') as usize);
    pages * 4096
}

/// Sleeps 10 ms at a time, without calling the allocator, until RSS is at most `bound` or
/// `max_sleeps` have passed; returns the last RSS.
fn idle_until(bound: usize, max_sleeps: usize) -> usize {
    let mut r = rss_raw();
    for _ in 0..max_sleeps {
        if r <= bound {
            break;
        }
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        // SAFETY: a valid timespec.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
        r = rss_raw();
    }
    r
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn new_block(size: usize, byte: u8) -> usize {
    // SAFETY: non-zero size.
    let p = unsafe { alloc(layout(size)) };
    assert!(!p.is_null());
    // SAFETY: p holds size bytes; every byte written, so every page is resident.
    unsafe { std::ptr::write_bytes(p, byte, size) };
    p as usize
}

fn drop_block(p: usize, size: usize, byte: u8) {
    let q = p as *mut u8;
    // SAFETY: q is a live block of `size` bytes allocated with align 8.
    unsafe {
        assert_eq!(*q, byte);
        assert_eq!(*q.add(size - 1), byte);
        dealloc(q, layout(size));
    }
}

/// A 16 MiB live set of 64-byte, 4 KiB, 200 KiB and 3 MiB objects, then a ~256 MiB spike of
/// the same sizes interleaved, freed but for its last sixteen 64-byte blocks: those keep the
/// 64-byte bin's current page in use, with about a thousand free blocks, so that a loop that
/// allocates and frees one 64-byte block neither empties nor fills it (and so, by itself,
/// never reaches a slow path). Returns the live blocks and their bytes.
fn spike_with_live_set() -> (Vec<(usize, usize)>, usize) {
    let mut live = Vec::new();
    let mut spike = Vec::new();
    for (target, out) in [(16 * MIB, &mut live), (256 * MIB, &mut spike)] {
        let (mut total, mut round) = (0usize, 0usize);
        while total < target {
            round += 1;
            let size = match round % 64 {
                0 => 3 * MIB,
                1..=8 => 200 << 10,
                9..=40 => 4096,
                _ => 64,
            };
            for _ in 0..if size == 64 { 64 } else { 1 } {
                out.push((new_block(size, 0xA5), size));
                total += size;
            }
        }
    }
    let last64: Vec<usize> = (0..spike.len())
        .rev()
        .filter(|&i| spike[i].1 == 64)
        .take(16)
        .collect();
    for &i in &last64 {
        live.push(spike[i]);
    }
    for (i, &(p, size)) in spike.iter().enumerate() {
        if !last64.contains(&i) {
            drop_block(p, size, 0xA5);
        }
    }
    let bytes = live.iter().map(|&(_, s)| s).sum();
    (live, bytes)
}

fn bound(baseline: usize, live: usize) -> usize {
    baseline + live + live / 10 + 8 * MIB
}

fn child(scenario: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == scenario)
}

fn report(what: &str, r: usize, b: usize, live: usize) {
    assert!(
        r <= b,
        "{what}: RSS stayed at {:.1} MiB; bound {:.1} MiB (live {:.1} MiB)\n{}",
        r as f64 / MIB as f64,
        b as f64 / MIB as f64,
        live as f64 / MIB as f64,
        tieralloc::stats()
    );
    println!(
        "{what}: RSS {:.1} MiB <= bound {:.1} MiB",
        r as f64 / MIB as f64,
        b as f64 / MIB as f64
    );
}

/// The program: after the spike, one 64-byte allocation and free every 5 ms, from a
/// page that holds live blocks (so neither the allocation nor the free ever finds its page
/// empty or full). At most 800 of them (4 s of sleeps).
#[test]
fn child_one_size_loop() {
    if !child("one-size") {
        return;
    }
    let baseline = rss();
    let (live, live_bytes) = spike_with_live_set();
    let b = bound(baseline, live_bytes);
    let l = layout(64);
    let mut r = rss();
    assert!(r > b, "the spike left nothing to purge: {r} <= {b}");
    let mut ops = 0;
    let start = std::time::Instant::now();
    for _ in 0..800 {
        ops += 1;
        // SAFETY: non-zero size; freed right away.
        unsafe {
            let p = alloc(l);
            assert!(!p.is_null());
            p.write(1);
            dealloc(p, l);
        }
        r = rss();
        if r <= b {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("{ops} operations, {:?}", start.elapsed());
    report("one 64-byte alloc/free every 5 ms", r, b, live_bytes);
    for (p, size) in live {
        drop_block(p, size, 0xA5);
    }
}

/// With `TIERALLOC_BACKGROUND_PURGE=1`: after the spike the program makes no allocator call
/// at all, and RSS still falls (the purger purges the thread's free slices and huge cache).
#[test]
fn child_no_calls() {
    if !child("no-calls") {
        return;
    }
    let baseline = rss();
    let (live, live_bytes) = spike_with_live_set();
    let b = bound(baseline, live_bytes);
    // No allocator call from here to the assertion (at most 4 s of sleeps).
    let start = std::time::Instant::now();
    let r = idle_until(b, 400);
    println!("fell in {:?}", start.elapsed());
    report("no allocator call, background purger", r, b, live_bytes);
    // The purger runs with every signal blocked (a handler that allocates must never run on
    // it): exactly one thread of this process blocks SIGINT and SIGCHLD (no other thread of
    // the test blocks any).
    let blocking = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let status = std::fs::read_to_string(t.as_ref().unwrap().path().join("status"))
                .unwrap_or_default();
            let blk = status
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap_or(0);
            blk & (1 << (libc::SIGINT - 1)) != 0 && blk & (1 << (libc::SIGCHLD - 1)) != 0
        })
        .count();
    assert_eq!(
        blocking, 1,
        "threads blocking SIGINT and SIGCHLD (the purger: 1)"
    );
    for (p, size) in live {
        drop_block(p, size, 0xA5);
    }
}

/// With the purger on, a fork keeps it in the parent and gives the child its own: both
/// spike, go idle, and see RSS fall; neither hangs.
#[test]
fn child_fork_with_purger() {
    if !child("fork") {
        return;
    }
    let baseline = rss();
    let (live, live_bytes) = spike_with_live_set();
    let b = bound(baseline, live_bytes);
    // SAFETY: fork; the child only allocates, frees and calls libc, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // The child: its parent's memory is its own now; a spike of its own, then idle.
        let (_more, more_bytes) = spike_with_live_set();
        let cb = b + more_bytes + more_bytes / 10;
        let r = idle_until(cb, 400);
        // SAFETY: _exit ends the child without running the parent's atexit or test code.
        unsafe { libc::_exit(if r <= cb { 0 } else { 3 }) };
    }
    let r = idle_until(b, 400);
    let mut status = 0;
    let mut waited = 0;
    // SAFETY: waitpid on our child, without blocking.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
        waited += 1;
        if waited > 1000 {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's RSS did not fall (status {status:#x})"
    );
    report("parent after fork, background purger", r, b, live_bytes);
    for (p, size) in live {
        drop_block(p, size, 0xA5);
    }
}

/// Runs this binary's test `test` in a child with `CHILD_ENV=scenario` and `env` (the purge
/// settings are read once at start-up), killed if it outlives a hang guard far above its run.
fn run_child(test: &str, scenario: &str, env: &[(&str, &str)]) {
    let mut cmd = child::this_test(test);
    cmd.env(CHILD_ENV, scenario)
        .env_remove("TIERALLOC_PURGE_DELAY_MS")
        .env_remove("TIERALLOC_BACKGROUND_PURGE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
}

#[test]
fn rss_falls_under_a_one_size_alloc_free_loop() {
    run_child("child_one_size_loop", "one-size", &[]);
}

#[test]
fn background_purger_purges_without_calls() {
    run_child(
        "child_no_calls",
        "no-calls",
        &[("TIERALLOC_BACKGROUND_PURGE", "1")],
    );
}

#[test]
fn background_purger_survives_fork() {
    run_child(
        "child_fork_with_purger",
        "fork",
        &[("TIERALLOC_BACKGROUND_PURGE", "1")],
    );
}
