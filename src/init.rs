//! Process start-up: the settings read from the environment, once, without allocating, and
//! everything the allocator sets up on its first use.
//!
//! Owns: the process-wide settings and the start-up sequence ([`init_once`]): it reads the
//! environment (the table below, and the tier policy into `heap::route`), registers the heap's
//! fork handlers and, with `TIERALLOC_SHOW_STATS`, the exit-time printer of `stats`.
//! May touch: `sys` (env, numa, os), `topology` (the machine, for the verbose line), `heap`
//! (fork handlers, the routing state) and `stats` (the printer). It is part of the heap's
//! layer, not above it: the heap runs it from its first registration of a thread heap (there
//! is no `main` to run it from), and the layers above call it before reading a setting.
//! A malformed value produces one warning on stderr that names the variable, and the default
//! stays in force; nothing here panics.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `TIERALLOC_PURGE_DELAY_MS` | how long empty memory waits before it goes back to the OS | 100 |
//! | `TIERALLOC_BACKGROUND_PURGE` | `1`: a thread purges idle memory even when no allocator call comes (started when memory first waits to be purged) | off |
//! | `TIERALLOC_SHOW_STATS` | `1`: print statistics to stderr at exit | off |
//! | `TIERALLOC_VERBOSE` | `1`: report configuration and notable events on stderr | off |
//! | `TIERALLOC_FILL_FREED` | `1` or `0`: the `secure` build fills freed small blocks with `0xdf` past their link word (docs/security.md); ignored otherwise | 0 |
//! | `TIERALLOC_ON_ERROR` | `abort`, `warn` or `ignore`: what a free proven wrong does (docs/security.md) | abort |
//! | `TIERALLOC_NUMA` | `off`: do not bind memory to nodes | on |
//! | `TIERALLOC_FAR_POLICY` | `bind`: far tiers' memory bound strictly (MPOL_BIND); `preferred`: with MPOL_PREFERRED, so the kernel may move it (docs/tiers.md) | bind |
//! | `TIERALLOC_FAR_THRESHOLD`, `TIERALLOC_TIER_RATIO`, `TIERALLOC_TIER_BUDGET` | the tier policy (docs/tiers.md) | off |
//!
//! The topology's variables (`TIERALLOC_NODES`, `TIERALLOC_TIERS`, `TIERALLOC_IGNORE_HMAT`,
//! `TIERALLOC_SIMULATE_NODES`) are read by `topology::discover` when it discovers the machine.

use crate::heap::route;
use crate::sync::{
    once_begin, AtomicBool, AtomicU64, AtomicUsize, OnceStep, Ordering, ONCE_DONE, ONCE_UNINIT,
};
use crate::sys::env::{
    getenv, parse_bool, parse_choice, parse_far_policy, parse_ratio, parse_size, parse_u64,
    warn_bad,
};
use crate::sys::os;
use crate::topology::raw::MAX_TIERS;

/// Purge delay in milliseconds.
pub(crate) static PURGE_DELAY_MS: AtomicU64 = AtomicU64::new(100);
/// Print statistics at exit.
pub(crate) static SHOW_STATS: AtomicBool = AtomicBool::new(false);
/// Say what we do.
pub(crate) static VERBOSE: AtomicBool = AtomicBool::new(false);

/// `sync::once_begin`'s state word for [`init_once`].
static STATE: AtomicUsize = AtomicUsize::new(ONCE_UNINIT);
static INIT_THREAD: AtomicUsize = AtomicUsize::new(0);
/// Whether the exit-time printer of `stats` is registered (once, also when a fork child runs
/// the start-up again).
static PRINTER: AtomicBool = AtomicBool::new(false);

fn current_thread() -> usize {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

/// Reads the environment once. Safe to call from any thread at any time; a thread that
/// re-enters while it is itself initialising returns at once (and sees defaults). A fork child
/// whose parent was in the middle of it (another thread's first allocator call) runs it again
/// (`sync::once_begin`): what it does is all idempotent, the fork handlers' registration and
/// the printer's included.
pub(crate) fn init_once() {
    if STATE.load(Ordering::Acquire) == ONCE_DONE {
        return;
    }
    let step = once_begin(&STATE, || {
        INIT_THREAD.load(Ordering::Relaxed) == current_thread()
    });
    if let OnceStep::Run { .. } = step {
        INIT_THREAD.store(current_thread(), Ordering::Relaxed);
        read_all();
        crate::heap::thread::register_fork_handlers();
        // After the heap's: its prepare handler runs first (see `purger`). Whether the
        // purger is on or not: collections run its pass too (`purger::help`).
        crate::heap::thread::register_purger_fork_handlers();
        STATE.store(ONCE_DONE, Ordering::Release);
    }
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
    read_bool(
        b"TIERALLOC_BACKGROUND_PURGE\0",
        &crate::heap::thread::BACKGROUND_PURGE,
    );
    #[cfg(feature = "secure")]
    read_bool(b"TIERALLOC_FILL_FREED\0", &crate::heap::secure::FILL_FREED);
    if let Some(v) = getenv(b"TIERALLOC_ON_ERROR\0") {
        use crate::heap::error::{ABORT, IGNORE, ON_ERROR, WARN};
        let mode = match parse_choice(v, &[b"abort", b"warn", b"ignore"]) {
            Some(0) => ABORT,
            Some(1) => WARN,
            Some(_) => IGNORE,
            None => {
                warn_bad(b"TIERALLOC_ON_ERROR\0", v, "abort, warn or ignore");
                ABORT
            }
        };
        ON_ERROR.store(mode, Ordering::Relaxed);
    }
    if let Some(v) = getenv(b"TIERALLOC_NUMA\0") {
        match parse_bool(v) {
            Some(b) => crate::sys::numa::BIND_ENABLED.store(b, Ordering::Relaxed),
            None => warn_bad(b"TIERALLOC_NUMA\0", v, "on or off"),
        }
    }
    read_far_policy();
    read_tier_policy();
    if SHOW_STATS.load(Ordering::Relaxed) && !PRINTER.swap(true, Ordering::Relaxed) {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe {
            libc::atexit(crate::stats::print_at_exit);
        }
    }
    if VERBOSE.load(Ordering::Relaxed) {
        use core::fmt::Write;
        let mut b = os::StackBuf::<200>::new();
        let t = crate::topology::discover::get();
        let _ = write!(
            b,
            "tieralloc: purge delay {} ms, numa binding {}, far policy {}",
            PURGE_DELAY_MS.load(Ordering::Relaxed),
            if crate::sys::numa::BIND_ENABLED.load(Ordering::Relaxed) {
                "on"
            } else {
                "off"
            },
            if crate::sys::numa::far_preferred() {
                "preferred"
            } else {
                "bind"
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

/// TIERALLOC_FAR_POLICY: with `preferred`, the nodes of every tier but the fastest are bound
/// with MPOL_PREFERRED, and fresh far segments and huge blocks are faulted in there and then
/// left on the default policy (`sys::numa::set_far_policy`, `let_kernel_promote`).
fn read_far_policy() {
    const NAME: &[u8] = b"TIERALLOC_FAR_POLICY\0";
    if let Some(v) = getenv(NAME) {
        match parse_far_policy(v) {
            Some(true) => {
                let t = crate::topology::discover::get();
                let far = t.tiers.iter().take(t.n_tiers).skip(1).fold(0, |m, s| m | s);
                crate::sys::numa::set_far_policy(true, far);
            }
            Some(false) => {}
            None => warn_bad(NAME, v, "bind or preferred"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tier policy's variables (allocation-free parsing; `tier::policy` documents them).

/// Parsed budgets: near, far, by index (`route::NONE`: no budget).
pub(crate) type Budgets = (u64, u64, [u64; MAX_TIERS]);

/// "near:2G,far:8G" or "0:2G,1:8G" (any mix, at least one entry).
pub(crate) fn parse_budgets(v: &[u8]) -> Option<Budgets> {
    use crate::sys::env::trim;
    let none = route::NONE;
    let v = trim(v);
    if v.is_empty() {
        return None;
    }
    let (mut near, mut far, mut tiers) = (none, none, [none; MAX_TIERS]);
    // Which keys were given (bit 0 near, bit 1 far, bit 2 + t tier t): a key given twice is
    // ambiguous, and refused (review rev24: the last one won, silently).
    let mut seen = 0u32;
    for item in v.split(|&c| c == b',') {
        let item = trim(item);
        let i = item.iter().position(|&c| c == b':')?;
        let (key, val) = (trim(&item[..i]), parse_size(&item[i + 1..])?);
        let bit = if key.eq_ignore_ascii_case(b"near") {
            near = val;
            1
        } else if key.eq_ignore_ascii_case(b"far") {
            far = val;
            2
        } else {
            let t = parse_u64(key)? as usize;
            if t >= MAX_TIERS {
                return None;
            }
            tiers[t] = val;
            4 << t
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    Some((near, far, tiers))
}

/// Reads the three tier-policy variables into the routing state; a malformed one gives one
/// warning and stays off.
fn read_tier_policy() {
    let none = route::NONE;
    let mut threshold = 0usize;
    if let Some(v) = getenv(b"TIERALLOC_FAR_THRESHOLD\0") {
        match parse_size(v) {
            Some(n) if n >= 1 && n <= isize::MAX as u64 => threshold = n as usize,
            _ => warn_bad(
                b"TIERALLOC_FAR_THRESHOLD\0",
                v,
                "a size in bytes of at least 1, such as 1048576 or 1M",
            ),
        }
    }
    let mut ratio = (0, 0);
    if let Some(v) = getenv(b"TIERALLOC_TIER_RATIO\0") {
        match parse_ratio(v) {
            Some(r) => ratio = r,
            None => warn_bad(
                b"TIERALLOC_TIER_RATIO\0",
                v,
                "near:far weights such as 1:4, far at least 1",
            ),
        }
    }
    let (mut near, mut far, mut tiers) = (none, none, [none; MAX_TIERS]);
    if let Some(v) = getenv(b"TIERALLOC_TIER_BUDGET\0") {
        match parse_budgets(v) {
            // Tiers this machine lacks (read only when the value names tiers by index, so a
            // plain near/far value does not discover the machine here).
            Some((_, _, t))
                if t.iter().any(|&b| b != none)
                    && t.iter()
                        .skip(crate::topology::discover::get().n_tiers)
                        .any(|&b| b != none) =>
            {
                warn_bad(
                    b"TIERALLOC_TIER_BUDGET\0",
                    v,
                    "budgets for this machine's tiers only, see tieralloc::topology()",
                )
            }
            Some(b) => (near, far, tiers) = b,
            None => warn_bad(
                b"TIERALLOC_TIER_BUDGET\0",
                v,
                "tier:size pairs such as near:2G,far:8G or 0:2G,1:8G",
            ),
        }
    }
    route::apply(threshold, ratio, near, far, &tiers);
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Random values of `TIERALLOC_TIER_BUDGET`, mostly from its own alphabet: the parser
        /// (run in the allocator's first call) never panics (review rev25's random inputs).
        #[test]
        fn random_budget_values_never_panic(v in proptest::collection::vec(
            proptest::prop_oneof![
                8 => proptest::sample::select(b"0123456789,:nearfTGMKkiB ".to_vec()),
                1 => proptest::prelude::any::<u8>(),
            ],
            0..40,
        )) {
            let _ = parse_budgets(&v);
        }
    }

    #[test]
    fn budgets_parse() {
        let none = route::NONE;
        let (n, f, t) = parse_budgets(b"near:2G,far:8G").unwrap();
        assert_eq!((n, f), (2 << 30, 8 << 30));
        assert!(t.iter().all(|b| *b == none));
        let (n, _, t) = parse_budgets(b"0:1M, 1:3M").unwrap();
        assert_eq!((n, t[0], t[1]), (none, 1 << 20, 3 << 20));
        assert!(parse_budgets(b"mid:1G").is_none());
        assert!(parse_budgets(b"9:1G").is_none());
        assert!(parse_budgets(b"").is_none());
    }

    /// Review rev24: the values the rule (a clear error for bad input) names, and a
    /// tier given two budgets (`near:1G,near:8G`: which one was meant?), are each refused
    /// whole, so that `read_tier_policy` warns about them.
    #[test]
    fn malformed_tier_policy_values_are_refused() {
        use crate::sys::env::{parse_ratio, parse_size};
        for r in [
            &b"0:0"[..],
            b"1:",
            b":4",
            b"1:4:1",
            b"-1:4",
            b"1:0",
            b"1:1000001",
            b"",
        ] {
            assert_eq!(parse_ratio(r), None, "{:?}", core::str::from_utf8(r));
        }
        assert_eq!(parse_ratio(b" 1 : 4 "), Some((1, 4)));
        for v in [
            &b"near:2X"[..],
            b"near:2GiBs",
            b"near:1.5G",
            b"near:",
            b"near:2G,",
            b"near:2G,,far:1G",
            b"near:16777216T",
            b"near:99999999999999999999",
            b"mid:1G",
            b"8:1G",
            b"near:1G,near:8G",
            b"far:1G,FAR:2G",
            b"1:1G,1:2G",
        ] {
            assert!(parse_budgets(v).is_none(), "{:?}", core::str::from_utf8(v));
        }
        assert_eq!(parse_size(b"0x10"), None);
        assert_eq!(parse_size(b"2gib"), Some(2 << 30));
    }
}
