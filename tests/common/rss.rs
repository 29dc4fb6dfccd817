//! Resident memory for the tests that check it falls after a spike (tests/idle.rs,
//! tests/purge.rs): reading RSS (with or without allocating), the bound it must fall to (the
//! live set + 10 % + 8 MiB over the baseline), the check and its report, blocks filled with
//! a byte (every page resident) and checked when freed, and each scenario's child process
//! (RSS is per process; the purge settings are read once at start-up).
//!
//! Shared with `#[path = "common/rss.rs"] mod rss;`, next to `#[path = "common/child.rs"] mod
//! child;` (it starts the children with it); each test crate uses part of it.
#![allow(dead_code)]

use crate::child;
use std::alloc::{alloc, dealloc, Layout};
use std::time::Duration;

pub const MIB: usize = 1 << 20;

/// Set in a scenario's child to the scenario's name (see [`run_scenario`]).
const SCENARIO: &str = "TIERALLOC_TEST_RSS_SCENARIO";

/// Resident bytes of this process (allocates: reads a file through std).
pub fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

/// [`rss`] read without allocating (for the scenarios that must make no allocator call).
pub fn rss_raw() -> usize {
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
pub fn idle_until(bound: usize, max_sleeps: usize) -> usize {
    let mut r = rss_raw();
    for _ in 0..max_sleeps {
        if r <= bound {
            break;
        }
        sleep_raw(10);
        r = rss_raw();
    }
    r
}

/// Sleeps `ms` milliseconds without calling the allocator.
pub fn sleep_raw(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// What RSS must fall to: the baseline, plus the live set, 10 % of it and 8 MiB (README).
pub fn bound(baseline: usize, live: usize) -> usize {
    baseline + live + live / 10 + 8 * MIB
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

/// Asserts that RSS `r` is within [`bound`]`(baseline, live)`, with the allocator's
/// statistics in the message if not, and prints it.
pub fn report(what: &str, r: usize, baseline: usize, live: usize) {
    let b = bound(baseline, live);
    assert!(
        r <= b,
        "{what}: RSS stayed at {:.1} MiB; bound {:.1} MiB (baseline {:.1} MiB, live {:.1} MiB)\n{}",
        mib(r),
        mib(b),
        mib(baseline),
        mib(live),
        tieralloc::stats()
    );
    println!("{what}: RSS {:.1} MiB <= bound {:.1} MiB", mib(r), mib(b));
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// A block of `size` bytes (align 8) with every byte set to `byte`, so every page is
/// resident. Returns its address.
pub fn new_block(size: usize, byte: u8) -> usize {
    // SAFETY: non-zero size.
    let p = unsafe { alloc(layout(size)) };
    assert!(!p.is_null());
    // SAFETY: p holds size bytes.
    unsafe { std::ptr::write_bytes(p, byte, size) };
    p as usize
}

/// Checks that a block of [`new_block`] still holds `byte` at both ends, and frees it.
pub fn drop_block(p: usize, size: usize, byte: u8) {
    let q = p as *mut u8;
    // SAFETY: q is a live block of `size` bytes allocated with align 8.
    unsafe {
        assert_eq!(*q, byte);
        assert_eq!(*q.add(size - 1), byte);
        dealloc(q, layout(size));
    }
}

/// Whether this process is the child of [`run_scenario`] for `scenario`.
pub fn is_scenario(scenario: &str) -> bool {
    std::env::var(SCENARIO).is_ok_and(|v| v == scenario)
}

/// Runs this binary's test `test` in a child with the scenario `scenario` and only the purge
/// settings of `env` (the inherited ones are removed), killed if it outlives a hang guard far
/// above its run; fails if the child's test did not pass.
pub fn run_scenario(test: &str, scenario: &str, env: &[(&str, &str)]) {
    let mut cmd = child::this_test(test);
    cmd.env(SCENARIO, scenario)
        .env_remove("TIERALLOC_PURGE_DELAY_MS")
        .env_remove("TIERALLOC_BACKGROUND_PURGE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
}

/// The path of the purger thread's (named `tieralloc-purge`) status file.
pub fn purger_status() -> std::ffi::CString {
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "tieralloc-purge" {
            let path = dir.join("status").into_os_string().into_string().unwrap();
            return std::ffi::CString::new(path).unwrap();
        }
    }
    panic!("no thread named tieralloc-purge");
}

/// The voluntary context switches (one per sleep it woke from) of the thread whose status
/// file is `status`, read without allocating (no allocator call can wake the purger).
pub fn switches(status: &std::ffi::CStr) -> u64 {
    let mut buf = [0u8; 4096];
    // SAFETY: a NUL-terminated path and a buffer of buf.len() bytes.
    let n = unsafe {
        let fd = libc::open(status.as_ptr(), libc::O_RDONLY);
        assert!(fd >= 0, "the purger thread is gone");
        let n = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
        libc::close(fd);
        n
    };
    assert!(n > 0);
    let key = b"voluntary_ctxt_switches:";
    let at = buf[..n as usize]
        .windows(key.len())
        .position(|w| w == key)
        .unwrap();
    buf[at + key.len()..n as usize]
        .iter()
        .skip_while(|c| c.is_ascii_whitespace())
        .take_while(|c| c.is_ascii_digit())
        .fold(0, |a, &c| a * 10 + (c - b'0') as u64)
}
