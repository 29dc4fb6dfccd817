//! The background purger (opt-in: `TIERALLOC_BACKGROUND_PURGE=1`): a thread that gives idle
//! memory back to the OS for a program that has stopped calling the allocator, and the gate
//! that lets it touch a live thread's heap safely.
//!
//! Owns: [`BACKGROUND_PURGE`], the purger thread (started from a slow path the first time a
//! heap is `waiting` with something to purge, never before), its pass, its fork handlers,
//! and the per-heap gate protocol ([`enter`], `Heap::gate`). May touch: the `Heap` fields
//! `gate`, `gate_depth`, `waiting`, `idle_bytes`, `segments`, `huge_cache`, `state`,
//! `shared` (`super`), `registry` (the heap list, under its lock), `tick` (`WAIT_BYTES`),
//! `heap::{segment, huge}` (purge steps, pool unmapping, the huge cache's expiry), `sync`,
//! `sys::os`, `init` (the purge delay).
//!
//! The gate: a heap's segments (slice bitmaps, purge state, list) and its huge cache belong
//! to its owner thread, and only its slow paths change them; the fast paths touch only the
//! free lists of pages in use, which the purger never touches (it purges free slices only).
//! So every owner slow path that may change them ([`enter`]: the refill, the generic
//! allocation, the local and remote free slow paths, resizing, `collect`, thread exit) holds
//! the gate (`OWNER`), and the purger visits a heap only if it can take the gate (`PURGER`)
//! at once; it never waits for one. An owner that finds the purger in its heap spins until
//! it leaves: the purger holds one heap at a time, for a walk of its segment list and the
//! `madvise` of what is due. With the purger off (the default) the gate costs one relaxed
//! load per slow path and nothing on the fast paths.
//!
//! The thread never allocates through tieralloc (it has no heap: it sleeps, reads the clock,
//! takes spin locks and calls `madvise`/`munmap`), so it cannot recurse into the allocator.
//! Across `fork`, the prepare handler takes `PASS` (no pass is in progress while the
//! allocator's locks are taken), and the child, where the thread does not exist, marks it not
//! started: the child's first slow path that finds memory waiting starts its own.

use super::registry::REGISTRY;
use super::tick::WAIT_BYTES;
use super::Heap;
use crate::heap::segment::{Segment, MAX_NODES, POOLS};
use crate::init;
use crate::sync::{AtomicBool, AtomicU8, Ordering, SpinLock};
use crate::sys::os;
use core::ptr::{addr_of, addr_of_mut};

/// `TIERALLOC_BACKGROUND_PURGE`: whether the purger may run (set once, at start-up).
pub(crate) static BACKGROUND_PURGE: AtomicBool = AtomicBool::new(false);

const FREE: u8 = 0;
const OWNER: u8 = 1;
const PURGER: u8 = 2;

const OFF: u8 = 0;
const STARTING: u8 = 1;
const RUNNING: u8 = 2;
/// `pthread_create` refused (thread limit, seccomp, memory): not tried again in this process
/// (a fork child tries once more), so a waiting heap does not call it on every slow path.
const FAILED: u8 = 3;
/// Whether the purger thread exists.
static THREAD: AtomicU8 = AtomicU8::new(OFF);
/// Held by the purger for a pass, and by `fork`'s prepare handler.
static PASS: SpinLock = SpinLock::new();
/// Passes completed (for tests, through `stats`).
pub(crate) static PASSES: crate::sync::AtomicUsize = crate::sync::AtomicUsize::new(0);

/// The owner's hold on its heap's gate (released when dropped); empty when the purger is off.
pub(super) struct Gate(*mut Heap);

/// Takes `h`'s gate for its owner (nested holds only count). `h` is the calling thread's heap
/// or the unset placeholder (then nothing is taken: it owns no segment).
#[inline]
pub(super) fn enter(h: *mut Heap) -> Gate {
    if !BACKGROUND_PURGE.load(Ordering::Relaxed) {
        return Gate(core::ptr::null_mut());
    }
    if super::tls::is_unset(h) {
        return Gate(core::ptr::null_mut());
    }
    // SAFETY: h is the calling thread's heap (contract); `gate_depth` is the owner's alone,
    // and `gate` is atomic.
    unsafe {
        if (*h).gate_depth == 0 {
            let gate = &*addr_of!((*h).gate);
            while gate
                .compare_exchange_weak(FREE, OWNER, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                crate::sync::spin_hint();
            }
        }
        (*h).gate_depth += 1;
    }
    Gate(h)
}

impl Drop for Gate {
    #[inline]
    fn drop(&mut self) {
        let h = self.0;
        if h.is_null() {
            return;
        }
        // SAFETY: we hold h's gate as its owner (enter).
        unsafe {
            (*h).gate_depth -= 1;
            if (*h).gate_depth == 0 {
                (*addr_of!((*h).gate)).store(FREE, Ordering::Release);
            }
        }
    }
}

/// Starts the purger thread if it is on, not running, and `h` has memory waiting. Called
/// from `heap_tick`, at a point where the owner may allocate again (`pthread_create` may
/// call `malloc`): not inside a walk over its blocks.
///
/// The thread starts with every signal blocked (the creating thread's mask is put back after),
/// so no process-directed signal is handled on its small stack by a handler that might
/// allocate (it has no heap, and must never get one).
///
/// # Safety
/// Called from a slow path of the calling thread's active heap that uses nothing of it looked
/// up before (as for `heap_tick`).
#[cold]
pub(super) unsafe fn maybe_start() {
    if THREAD
        .compare_exchange(OFF, STARTING, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    // SAFETY: plain pthread calls on a zeroed attribute object and signal sets we initialise
    // first; `run` matches the start routine's signature and uses no argument.
    let ok = unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, 128 << 10);
        let mut t: libc::pthread_t = 0;
        let r = libc::pthread_create(&mut t, &attr, run, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        r == 0
    };
    THREAD.store(if ok { RUNNING } else { FAILED }, Ordering::Release);
}

/// Whether the purger should be started now (on, not started).
#[inline]
pub(super) fn wanted() -> bool {
    BACKGROUND_PURGE.load(Ordering::Relaxed) && THREAD.load(Ordering::Relaxed) == OFF
}

/// The purger thread: a pass every quarter of the purge delay (at least 5 ms), forever.
extern "C" fn run(_: *mut libc::c_void) -> *mut libc::c_void {
    loop {
        let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
        let ms = (delay / 4).clamp(5, 1000);
        let ts = libc::timespec {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
        };
        // SAFETY: a valid timespec; an interrupted sleep only makes the pass earlier.
        unsafe { libc::nanosleep(&ts, core::ptr::null_mut()) };
        if let Some(_g) = PASS.try_lock() {
            // SAFETY: we hold PASS; pass touches only what the gate and the locks give us.
            unsafe { pass(os::now_ms(), delay) };
            PASSES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One pass: unmap the pools' expired segments, then, for every registered thread heap that
/// is `waiting` and whose gate is free, run its due purge steps and expire its huge cache.
///
/// # Safety
/// Called by the purger thread holding `PASS`.
unsafe fn pass(now: u64, delay: u64) {
    for pool in POOLS.iter().take(MAX_NODES) {
        if pool.count.load(Ordering::Relaxed) > 0 {
            pool.unmap_expired(now);
        }
    }
    // The registry lock guards the list of heaps; a listed heap stays valid while it is held
    // (a heap leaves the list under it).
    let _g = REGISTRY.lock.lock();
    // SAFETY: listed heaps are valid (lock held). The purger reads and writes only atomics
    // (`waiting`, `gate`) or, holding the gate, segment state no fast path touches.
    unsafe {
        REGISTRY.heaps.for_each(|h| {
            if (*h).shared || !(*addr_of!((*h).waiting)).load(Ordering::Relaxed) {
                return;
            }
            let gate = &*addr_of!((*h).gate);
            if gate
                .compare_exchange(FREE, PURGER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                if (*h).state == super::ACTIVE {
                    purge_heap(h, now, delay);
                }
                gate.store(FREE, Ordering::Release);
            }
        });
    }
}

/// What the owner's collection would purge of `h`: the purge steps that are due, and the
/// huge cache's expired mappings; then whether it still waits.
///
/// # Safety
/// The purger holds `h`'s gate, and `h` is a registered, active thread heap.
unsafe fn purge_heap(h: *mut Heap, now: u64, delay: u64) {
    // SAFETY: with the gate held, the owner runs no slow path, so its segment list, their
    // bitmaps and its huge cache are ours for now; only their fields are touched, through
    // raw places (no reference to the whole heap, whose fast-path fields the owner uses).
    unsafe {
        let mut left = 0usize;
        let mut seg = *addr_of!((*h).segments);
        while !seg.is_null() {
            if (*seg).purge_at != 0 && now >= (*seg).purge_at {
                if delay == 0 {
                    Segment::purge_free(seg);
                } else {
                    Segment::purge_step(seg, now, delay);
                }
            }
            left += Segment::resident_free_bytes(seg);
            seg = (*seg).next;
        }
        let cache = &mut *addr_of_mut!((*h).huge_cache);
        cache.expire(now, delay);
        left += cache.held();
        *addr_of_mut!((*h).idle_bytes) = left;
        (*addr_of!((*h).waiting)).store(left > WAIT_BYTES, Ordering::Relaxed);
    }
}

extern "C" fn fork_prepare() {
    PASS.lock_raw();
}

extern "C" fn fork_parent() {
    PASS.unlock_raw();
}

extern "C" fn fork_child() {
    // The purger thread does not exist here: the next slow path that finds memory waiting
    // starts one.
    PASS.unlock_raw();
    THREAD.store(OFF, Ordering::Relaxed);
}

/// Registers the purger's fork handlers (after the heap's, so that its prepare runs first:
/// it waits out a pass, which takes the registry lock, before the heap's handler takes every
/// allocator lock).
pub(crate) fn register_purger_fork_handlers() {
    // SAFETY: three extern "C" functions with no preconditions.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
    }
}
