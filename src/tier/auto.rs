//! Automatic demotion: a background thread that moves huge allocations that have lived longer
//! than a configured age to the far tier.
//!
//! Owns: the demoter thread and its handle. May touch: `heap::huge` (the registry of live huge
//! objects, visited one claimed object at a time), `tier::migrate` (the move itself),
//! `topology` (which tier is far), `sys::os` (the clock), `init` (start-up) and `sync`. It is started only by an explicit call, never from inside
//! the allocator (spawning a thread there would allocate through it); it is off by default.
//!
//! What "untouched" means here: Linux tells a process which of its pages were accessed only
//! through idle page tracking (root only, `CONFIG_IDLE_PAGE_TRACKING`), so the demoter uses
//! age since allocation instead: a huge block allocated more than `after` ago moves to far
//! memory. A block reused from the allocator's cache counts as new. Blocks of 2 MiB or less
//! live in segments shared with other blocks and are not moved (see `TierError::SharedSegment`);
//! allocate those with `Placed::far` when they are known to be cold.

use super::migrate::{move_to_node_claimed, TierError};
use crate::heap::huge;
use crate::sync::{AtomicBool, AtomicU64, Ordering};
use crate::topology::discover;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What an automatic demoter did, from [`AutoDemotion::stop`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoDemotionReport {
    /// Passes over the live huge blocks.
    pub passes: u64,
    /// Blocks moved to the far tier.
    pub blocks: u64,
    /// Bytes of those blocks.
    pub bytes: u64,
    /// Moves the kernel refused in part or whole.
    pub failures: u64,
}

/// A running automatic demoter; stops (and joins its thread) when dropped or on [`stop`].
///
/// Its thread is not in a fork child: there the handle's copy demotes nothing, and stopping or
/// dropping it joins nothing (its report counts what the thread did before the fork). A child
/// that wants automatic demotion starts its own.
///
/// [`stop`]: AutoDemotion::stop
#[derive(Debug)]
pub struct AutoDemotion {
    stop: Arc<AtomicBool>,
    counters: Arc<[AtomicU64; 4]>,
    thread: Option<JoinHandle<()>>,
    /// The process the thread runs in (a fork child's copy of the handle has none).
    pid: libc::pid_t,
}

/// Starts a thread that, every `period`, moves every huge allocation (over 2 MiB) older than
/// `after` to the slowest tier, nearest the node it is on. Off unless started.
///
/// ```no_run
/// use std::time::Duration;
/// let demoter = tieralloc::tiers::start_auto_demotion(
///     Duration::from_secs(30),
///     Duration::from_secs(1),
/// );
/// // ... later, or when `demoter` is dropped:
/// # if let Ok(d) = demoter {
/// let report = d.stop();
/// println!("{} blocks, {} bytes moved to far memory", report.blocks, report.bytes);
/// # }
/// ```
///
/// # Errors
/// `TierError::NoSuchTier` when the machine has a single tier: there is nowhere to demote to.
pub fn start_auto_demotion(after: Duration, period: Duration) -> Result<AutoDemotion, TierError> {
    crate::init::init_once();
    let t = discover::get();
    if t.n_tiers < 2 {
        return Err(TierError::NoSuchTier {
            tier: 1,
            tiers: t.n_tiers,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let (s, c) = (stop.clone(), counters.clone());
    let after_ms = after.as_millis().min(u64::MAX as u128) as u64;
    let period = period.max(Duration::from_millis(1));
    let thread = std::thread::Builder::new()
        .name("tieralloc-demoter".into())
        .spawn(move || run(&s, &c, after_ms, period))
        .map_err(|e| TierError::Os(e.raw_os_error().unwrap_or(libc::EAGAIN)))?;
    Ok(AutoDemotion {
        stop,
        counters,
        thread: Some(thread),
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() },
    })
}

impl AutoDemotion {
    /// Stops the demoter, waits for its thread, and says what it did.
    pub fn stop(mut self) -> AutoDemotionReport {
        self.halt();
        self.report()
    }

    /// What it has done so far.
    pub fn report(&self) -> AutoDemotionReport {
        let c = &self.counters;
        AutoDemotionReport {
            passes: c[0].load(Ordering::Relaxed),
            blocks: c[1].load(Ordering::Relaxed),
            bytes: c[2].load(Ordering::Relaxed),
            failures: c[3].load(Ordering::Relaxed),
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            // SAFETY: getpid has no preconditions.
            if self.pid != unsafe { libc::getpid() } {
                // A fork child's copy: the thread is not in this process, so there is
                // nothing to wake or join (std's join panicked here, review rev29).
                core::mem::forget(t);
                return;
            }
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for AutoDemotion {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(stop: &AtomicBool, c: &[AtomicU64; 4], after_ms: u64, period: Duration) {
    let t = discover::get();
    let far = t.n_tiers - 1;
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(period);
        if stop.load(Ordering::Acquire) {
            break;
        }
        let now = crate::sys::os::now_ms();
        huge::for_each_claimed(|seg| {
            // SAFETY: the registry has this object claimed: its header is valid and it is not
            // freed until we return (its free waits for the claim), and nobody else moves it.
            let (born, node, obj, len) = unsafe {
                (
                    (*seg).huge_born_ms,
                    (*seg).node as usize,
                    huge::object(seg),
                    (*seg).huge_size,
                )
            };
            if now.saturating_sub(born) < after_ms || t.tier_of(node).is_some_and(|x| x >= far) {
                return;
            }
            let Some(target) = t.nearest_in(t.tiers[far], node) else {
                return;
            };
            // SAFETY: a live huge block held still by the claim (see above); the move keeps
            // its address and contents.
            match unsafe { move_to_node_claimed(obj, len, target) } {
                Ok(r) => {
                    c[1].fetch_add(1, Ordering::Relaxed);
                    c[2].fetch_add(len as u64, Ordering::Relaxed);
                    if r.failed > 0 {
                        c[3].fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The far tier's budget is spent: the block stays (not a failure).
                Err(TierError::OverBudget { .. }) => {}
                Err(_) => {
                    c[3].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        c[0].fetch_add(1, Ordering::Relaxed);
    }
}
