//! Configuration from the environment, read once, without allocating.
//!
//! Owns: the process-wide settings and their parsing. May touch: `sys` (getenv, stderr).
//! A malformed value produces one warning on stderr that names the variable, and the default
//! stays in force; nothing here panics.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `TIERALLOC_PURGE_DELAY_MS` | how long empty memory waits before it goes back to the OS | 100 |
//! | `TIERALLOC_SHOW_STATS` | `1`: print statistics to stderr at exit | off |
//! | `TIERALLOC_VERBOSE` | `1`: report configuration and notable events on stderr | off |
//! | `TIERALLOC_NUMA` | `off`: do not bind memory to nodes | on |
//!
//! The topology's variables (`TIERALLOC_NODES`, `TIERALLOC_TIERS`, `TIERALLOC_IGNORE_HMAT`,
//! `TIERALLOC_SIMULATE_NODES`) are read by `topology::raw` when it discovers the machine,
//! and the tier policies' by `tier::policy`.

use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::sys::os;

/// Purge delay in milliseconds.
pub(crate) static PURGE_DELAY_MS: AtomicU64 = AtomicU64::new(100);
/// Print statistics at exit.
pub(crate) static SHOW_STATS: AtomicBool = AtomicBool::new(false);
/// Say what we do.
pub(crate) static VERBOSE: AtomicBool = AtomicBool::new(false);

const UNINIT: usize = 0;
const RUNNING: usize = 1;
const DONE: usize = 2;
static STATE: AtomicUsize = AtomicUsize::new(UNINIT);
static INIT_THREAD: AtomicUsize = AtomicUsize::new(0);

fn current_thread() -> usize {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

/// Reads the environment once. Safe to call from any thread at any time; a thread that
/// re-enters while it is itself initialising returns at once (and sees defaults).
pub(crate) fn init_once() {
    if STATE.load(Ordering::Acquire) == DONE {
        return;
    }
    match STATE.compare_exchange(UNINIT, RUNNING, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            INIT_THREAD.store(current_thread(), Ordering::Relaxed);
            read_all();
            crate::heap::thread::register_fork_handlers();
            STATE.store(DONE, Ordering::Release);
        }
        Err(_) => {
            if INIT_THREAD.load(Ordering::Relaxed) == current_thread() {
                return; // re-entered from our own initialisation
            }
            while STATE.load(Ordering::Acquire) != DONE {
                crate::sync::spin_hint();
            }
        }
    }
}

/// The raw value of an environment variable (a NUL-terminated name), without allocating.
pub(crate) fn getenv(name: &'static [u8]) -> Option<&'static [u8]> {
    debug_assert_eq!(name.last(), Some(&0));
    // SAFETY: `name` is NUL-terminated; getenv returns a pointer into the environment block,
    // which lives as long as nobody calls setenv on that name (a documented caveat of reading
    // the environment from an allocator).
    unsafe {
        let p = libc::getenv(name.as_ptr() as *const libc::c_char);
        if p.is_null() {
            return None;
        }
        let len = libc::strlen(p);
        Some(core::slice::from_raw_parts(p as *const u8, len))
    }
}

/// Parses a decimal u64 (surrounding spaces allowed).
pub(crate) fn parse_u64(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in v {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(n)
}

/// Parses a boolean: 1/0, on/off, true/false, yes/no.
pub(crate) fn parse_bool(v: &[u8]) -> Option<bool> {
    let v = trim(v);
    let eq = |s: &[u8]| v.eq_ignore_ascii_case(s);
    if eq(b"1") || eq(b"on") || eq(b"true") || eq(b"yes") {
        Some(true)
    } else if eq(b"0") || eq(b"off") || eq(b"false") || eq(b"no") || v.is_empty() {
        Some(false)
    } else {
        None
    }
}

/// `v` without leading and trailing ASCII whitespace (for environment values and sysfs text).
pub(crate) fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &v[s..e]
}

/// Writes "tieralloc: warning: ignoring NAME=VALUE (expected WHAT); using the default".
pub(crate) fn warn_bad(name: &[u8], value: &[u8], expected: &str) {
    let name = name.strip_suffix(b"\0").unwrap_or(name);
    os::write_stderr(b"tieralloc: warning: ignoring malformed ");
    os::write_stderr(name);
    os::write_stderr(b"=\"");
    os::write_stderr(&value[..value.len().min(64)]);
    os::write_stderr(b"\" (expected ");
    os::write_stderr(expected.as_bytes());
    os::write_stderr(b"); using the default\n");
}

fn read_u64(name: &'static [u8], dst: &AtomicU64, max: u64) {
    if let Some(v) = getenv(name) {
        match parse_u64(v) {
            Some(n) if n <= max => dst.store(n, Ordering::Relaxed),
            _ => warn_bad(name, v, "a whole number of milliseconds up to 1 hour"),
        }
    }
}

fn read_bool(name: &'static [u8], dst: &AtomicBool) {
    if let Some(v) = getenv(name) {
        match parse_bool(v) {
            Some(b) => dst.store(b, Ordering::Relaxed),
            None => warn_bad(name, v, "1 or 0, on or off"),
        }
    }
}

fn read_all() {
    read_u64(b"TIERALLOC_PURGE_DELAY_MS\0", &PURGE_DELAY_MS, 3_600_000);
    read_bool(b"TIERALLOC_SHOW_STATS\0", &SHOW_STATS);
    read_bool(b"TIERALLOC_VERBOSE\0", &VERBOSE);
    if let Some(v) = getenv(b"TIERALLOC_NUMA\0") {
        match parse_bool(v) {
            Some(b) => crate::sys::numa::BIND_ENABLED.store(b, Ordering::Relaxed),
            None => warn_bad(b"TIERALLOC_NUMA\0", v, "on or off"),
        }
    }
    crate::tier::init();
    if SHOW_STATS.load(Ordering::Relaxed) {
        // SAFETY: registering a plain extern "C" function with no captured state. The only
        // upward edge of this layer: the hook lives in `stats`, which formats the snapshot.
        unsafe {
            libc::atexit(crate::stats::print_at_exit);
        }
    }
    if VERBOSE.load(Ordering::Relaxed) {
        use core::fmt::Write;
        let mut b = os::StackBuf::<200>::new();
        let t = crate::topology::raw::get();
        let _ = write!(
            b,
            "tieralloc: purge delay {} ms, numa binding {}",
            PURGE_DELAY_MS.load(Ordering::Relaxed),
            if crate::sys::numa::BIND_ENABLED.load(Ordering::Relaxed) {
                "on"
            } else {
                "off"
            }
        );
        if t.simulated() {
            let _ = write!(
                b,
                ", simulated nodes: {} CPU nodes, {} far (binding calls skipped)",
                t.sim_nodes,
                t.sim_far.count_ones()
            );
        }
        let _ = writeln!(b);
        os::write_stderr(b.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_and_garbage_does_not() {
        assert_eq!(parse_u64(b"250"), Some(250));
        assert_eq!(parse_u64(b" 7 "), Some(7));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12ms"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }

    #[test]
    fn booleans_parse() {
        assert_eq!(parse_bool(b"1"), Some(true));
        assert_eq!(parse_bool(b"OFF"), Some(false));
        assert_eq!(parse_bool(b"maybe"), None);
    }
}
