//! The background purger (opt-in: `TIERALLOC_BACKGROUND_PURGE=1`): a thread that gives idle
//! memory back to the OS for a program that has stopped calling the allocator, and the gate
//! that lets it touch a live thread's heap safely.
//!
//! Owns: [`BACKGROUND_PURGE`], the purger thread (started from a slow path the first time a
//! heap is `waiting` or `holding` something to purge, never before), its pass, its sleep and the
//! wake-up ([`notify`], the futex word `WAKE`), its fork handlers, the per-heap gate
//! protocol ([`enter`], `Heap::gate`, its steps in `heap::gate`), and the same pass run by a
//! thread's collection ([`help`], the default configuration's purging of other threads' idle
//! heaps). May touch:
//! the `Heap` fields `gate`, `gate_depth`, `waiting`, `holding`, `due_ms`, `collected_ms` (read), `idle_bytes`,
//! `segments`, `huge_cache`, `state`, `shared` (`super`), `registry` (the heap list: walked
//! and pinned under its lock, through `heap::heaps::HeapList::for_each_pinned`), `tick`
//! (`WAIT_BYTES`, `book_left`), `slices` (the segment list's purge walk, `purge_segments`), `heap::{segment,
//! huge}` (pool unmapping, the huge cache's expiry), `heap::wake` (the sleep and wake-up
//! handshake), `sync`, `sys::os`, `init` (the purge delay).
//!
//! The gate: a heap's segments (slice bitmaps, purge state, list) and its huge cache belong
//! to its owner thread, and only its slow paths change them; the fast paths touch only the
//! free lists of pages in use, which the purger never touches (it purges free slices only).
//! So every owner slow path that may change them ([`enter`]: the refill, the generic
//! allocation, the local and remote free slow paths, resizing, `collect`, thread exit) holds
//! the gate (`OWNER`), and the purger visits a heap only if it can take the gate (`PURGER`)
//! at once; it never waits for one. An owner that finds the purger in its heap waits until
//! it leaves (a bounded spin, then `sched_yield`): the purger holds one heap at a time, for
//! a walk of its segment list and the `madvise` of what is due, without the registry lock
//! (see [`pass`]). The gate is always taken, purger or not (a compare-exchange and a store
//! on the owner's own line per slow path, nothing on the fast paths), because the pass also
//! runs without the purger:
//!
//! **Helping** (the default configuration, [`help`]): a thread's collection, once it has
//! purged its own heap, runs the same pass over the other heaps (at most one pass per
//! quarter of the purge delay in the whole process), so that a thread that freed a spike and
//! then stopped calling the allocator (a worker waiting for its next job) has it purged by
//! whichever thread allocates next, not kept until its own next call. It visits only heaps
//! whose owner has not collected for a whole delay (a busy owner purges for itself and never
//! finds a helper at its gate) and that hold anything to purge (`holding`, not only
//! `waiting`: each quiet thread's slack would add up); the calling heap is passed over (its slow path holds its
//! gate). It runs with every signal blocked and leaves errno as it found it.
//!
//! The thread runs a pass every quarter of the purge delay while anything waits (a heap is
//! `waiting`, or `holding` with a step due or its due time not known, a pool holds a
//! segment), and otherwise sleeps on a futex until [`notify`] (a heap turning `waiting` or
//! `holding`, a heap's due time going back to "not known", a thread exit) wakes it, or until
//! the first later step of a holding heap is due (a refused purge's retry: up to a minute
//! away): an idle program has no timer firing but those. It visits heaps that are
//! `waiting`, and quiet ones that are `holding` with a step due.
//!
//! The thread never allocates through tieralloc (it has no heap: it sleeps, reads the clock,
//! takes spin locks and calls `madvise`/`munmap`/`futex`), so it cannot recurse into the
//! allocator; only once it ends the process, past its last pass, may the creation of the
//! thread that calls `exit` give it a heap. Across `fork`, the prepare handler takes `PASS`
//! (no pass is in progress while the allocator's locks are taken), and the child, where the
//! thread does not exist, marks it not started: the child's first slow path that finds memory
//! waiting starts its own.

use super::quiet::{collect_full, has_delayed};
use super::registry::REGISTRY;
use super::slices::purge_segments;
use super::tick::{book_left, WAIT_BYTES};
use super::Heap;
use crate::heap::gate;
use crate::heap::segment::{Segment, ABANDONED, ABANDONED_FULL, MAX_NODES, POOLS};
use crate::heap::wake::{Idle, Sleep};
use crate::init;
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering, SpinLock};
use crate::sys::os;
use core::ptr::{addr_of, addr_of_mut};

/// `TIERALLOC_BACKGROUND_PURGE`: whether the purger may run (set once, at start-up).
pub(crate) static BACKGROUND_PURGE: AtomicBool = AtomicBool::new(false);

/// The gate's values, for the tests that take a heap's gate as a pass does.
#[cfg(test)]
pub(super) use crate::heap::gate::{FREE, PURGER};

const OFF: u8 = 0;
const STARTING: u8 = 1;
const RUNNING: u8 = 2;
/// `pthread_create` refused (thread limit, seccomp, memory): not tried again in this process
/// (a fork child tries once more), so a waiting heap does not call it on every slow path.
const FAILED: u8 = 3;
/// Running, but asleep until [`notify`] wakes it: nothing waited at its last look.
const ASLEEP: u8 = 4;
/// Whether the purger thread exists.
static THREAD: AtomicU8 = AtomicU8::new(OFF);
/// The futex word the sleeping purger waits on: [`notify`] bumps it when it wakes it.
static WAKE: AtomicU32 = AtomicU32::new(0);
/// When the purger's sleep ends by itself (ms; `Sleep::until`).
static UNTIL: AtomicU64 = AtomicU64::new(0);
/// The purger's sleep and its wake-ups, on [`THREAD`] and [`WAKE`].
static SLEEP: Sleep<'static> = Sleep {
    state: &THREAD,
    word: &WAKE,
    asleep: ASLEEP,
    running: RUNNING,
    until: &UNTIL,
};
/// The program's signal mask, as 64-bit words: that of the thread that started the purger,
/// then, once the main thread is ending, that of the last thread whose heap let go (the
/// thread whose end would have ended the process but for the purger, [`note_thread_exit`]):
/// the thread that ends the process for the purger, as its last thread would, puts it on
/// ([`exit_as_last_thread`]). The start's is written before `pthread_create`, which orders it
/// before the purger's reads; a noting thread's, before its end, which the purger waits for.
/// Review rev47: the start's alone was the mask of a signal handler's allocation when the
/// purger started there, the handler's signal blocked.
static EXIT_MASK: [AtomicU64; MASK_WORDS] = [const { AtomicU64::new(0) }; MASK_WORDS];
const MASK_WORDS: usize = core::mem::size_of::<libc::sigset_t>() / 8;
const _: () = assert!(core::mem::size_of::<libc::sigset_t>() == MASK_WORDS * 8);
/// Held by the purger for a pass, and by `fork`'s prepare handler.
static PASS: SpinLock = SpinLock::new();
/// Heaps a pass (the purger's, or a collection's [`help`]) found waiting, pinned and purged
/// for their owner (for `stats`).
pub(crate) static PASS_PURGES: AtomicU64 = AtomicU64::new(0);
/// When a collection last ran the pass for other heaps ([`help`]), in ms: at most one such
/// pass a quarter delay in the whole process.
static HELPED_AT: AtomicU64 = AtomicU64::new(0);

/// The owner's hold on its heap's gate (released when dropped); empty on the unset heap.
pub(super) struct Gate(*mut Heap);

/// Takes `h`'s gate for its owner (nested holds only count). `h` is the calling thread's heap
/// or the unset placeholder (then nothing is taken: it owns no segment).
#[inline]
pub(super) fn enter(h: *mut Heap) -> Gate {
    if super::tls::is_unset(h) {
        return Gate(core::ptr::null_mut());
    }
    // SAFETY: h is the calling thread's heap (contract); `gate_depth` is the owner's alone,
    // and `gate` is atomic.
    unsafe {
        if (*h).gate_depth == 0 {
            gate::owner_enter(&*addr_of!((*h).gate));
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
                gate::leave(&*addr_of!((*h).gate));
            }
        }
    }
}

/// Starts the purger thread if it is on, not running, and `h` has memory waiting. Called
/// from `heap_tick`, at a point where the owner may allocate again (`pthread_create` may
/// call `malloc`): not inside a walk over its blocks.
///
/// The thread starts with every signal blocked (the creating thread's mask is put back after),
/// so no process-directed signal is handled on it by a handler that might
/// allocate (it has no heap, and must never get one while it passes over the others' heaps;
/// the thread it makes to end the process may give it one, past its last pass).
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
    let old = block_all_signals();
    save_mask(&old);
    // errno is kept: a refused `clone` or stack mapping sets it, and the caller may be a
    // `free` (review rev47: EAGAIN under a seccomp filter that refuses threads).
    // A small stack: the purger's own calls are shallow, and a default one (RLIMIT_STACK,
    // 8 MiB) kept it from starting under an address-space cap with less room (review rev47);
    // the program's atexit handlers, which may be as deep as on any thread, run on a thread
    // of their own (`exit_as_last_thread`).
    let ok = os::keeping_errno(|| {
        let made = spawn_detached(run, STACK);
        // SAFETY: the mask saved above, a valid sigset_t.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut()) };
        made
    });
    if ok {
        // Unless the new thread has already gone to sleep (ASLEEP must stay, or no
        // `notify` would wake it).
        let _ = THREAD.compare_exchange(STARTING, RUNNING, Ordering::AcqRel, Ordering::Relaxed);
    } else {
        THREAD.store(FAILED, Ordering::Release);
    }
}

/// Starts a detached thread running `start` (with a null argument) on a stack of `stack`
/// bytes (0: the default, RLIMIT_STACK's). Returns whether it was made.
fn spawn_detached(
    start: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    stack: usize,
) -> bool {
    // SAFETY: plain pthread calls on a zeroed attribute object, destroyed after use; `start`
    // has the start routine's signature and is given no argument.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        if stack != 0 {
            libc::pthread_attr_setstacksize(&mut attr, stack);
        }
        let mut t: libc::pthread_t = 0;
        let r = libc::pthread_create(&mut t, &attr, start, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        r == 0
    }
}

/// Stores `mask` in [`EXIT_MASK`].
fn save_mask(mask: &libc::sigset_t) {
    // SAFETY: `sigset_t` is plain data of `MASK_WORDS` words (asserted above); read as such.
    let words: [u64; MASK_WORDS] = unsafe { core::mem::transmute_copy(mask) };
    for (w, v) in EXIT_MASK.iter().zip(words) {
        w.store(v, Ordering::Relaxed);
    }
}

/// The purger thread's stack size.
const STACK: usize = 128 << 10;

/// Blocks every signal on the calling thread; returns the mask it had, for the caller to put
/// back (`pthread_sigmask(SIG_SETMASK, ...)`).
fn block_all_signals() -> libc::sigset_t {
    // SAFETY: signal sets we initialise before use; the calling thread's own mask.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        old
    }
}

/// Whether the purger should be started now (on, not started).
#[inline]
pub(super) fn wanted() -> bool {
    BACKGROUND_PURGE.load(Ordering::Relaxed) && THREAD.load(Ordering::Relaxed) == OFF
}

/// A thread's collection helps the purge of the other heaps: unless the purger thread runs
/// (or is being started), at most once a quarter of the purge delay (at least 5 ms) in the
/// whole process, the purger's pass: the pools' expired segments, and every thread heap that
/// is `holding` anything to purge (not only `waiting`: a quiet thread's slack below
/// `WAIT_BYTES` would stay, and many quiet threads' slack adds up), whose owner has not
/// collected for a whole delay (it has gone quiet: an owner that collects purges for itself)
/// and whose gate is free has its due purge steps run, its medium pages' uncarved tails given
/// back when due, and its huge cache expired. The caller's own heap is passed over (its slow path holds its
/// gate, and it has just collected); a heap whose owner is in a slow path too. Bounded by
/// what is due: the same work the owners' own collections would do. The pass runs with every
/// signal blocked, and errno is left as it was.
///
/// # Safety
/// Called from a thread heap's collection (`heap_tick`), holding its gate, no lock, outside a
/// walk over its blocks.
#[cold]
pub(super) unsafe fn help(now: u64, delay: u64) {
    // Not while the purger thread runs or starts; until it is started (nothing turned
    // `holding` yet, which is what starts it: a quiet heap's delayed frees do not), the
    // collections' passes are all there is (review rev16: with the purger on but never
    // started, a quiet producer's full pages were never taken in).
    if BACKGROUND_PURGE.load(Ordering::Relaxed)
        && !matches!(THREAD.load(Ordering::Relaxed), OFF | FAILED)
    {
        return;
    }
    let last = HELPED_AT.load(Ordering::Relaxed);
    if now < last.saturating_add((delay / 4).max(5))
        || HELPED_AT
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    // Every signal blocked for the pass (as the purger thread runs): a handler that stopped
    // this thread inside it (a stop-the-world handler waiting for another thread) would keep
    // another heap's gate, so its owner's next slow path would wait for the handler, which may
    // be waiting for that owner (tests/help_signals.rs: 8 of 8 runs deadlocked without the
    // mask); nor can a handler's own allocation, or `fork` (whose prepare handler takes
    // `PASS`), meet the pass's locks on this thread. Two system calls a pass, at most one
    // pass a quarter delay in the process.
    // The old mask is put back below.
    let old = block_all_signals();
    // The pass's system calls (`madvise`, `munmap`) may set errno: the caller's `free` or
    // `malloc` must not change it for another thread's memory.
    // SAFETY: the calling thread's errno location, always valid.
    let errno = unsafe { *libc::__errno_location() };
    if let Some(_g) = PASS.try_lock() {
        // SAFETY: we hold PASS; the caller holds no lock and its heap's gate, so the pass
        // passes its heap over (the gate is not free) and waits for no gate.
        unsafe { pass(now, delay, true) };
    }
    // SAFETY: the mask saved above; the errno location as above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        *libc::__errno_location() = errno;
    }
}

/// The purger thread: a pass every quarter of the purge delay (at least 5 ms) while anything
/// waits to be purged; asleep from a pass after which nothing waits until [`notify`] wakes it
/// or a holding heap's next step is due (no timer if none).
extern "C" fn run(_: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: a NUL-terminated name of at most 15 bytes, for the calling thread.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"tieralloc-purge".as_ptr()) };
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
            unsafe { pass(os::now_ms(), delay, false) };
        }
        sleep_while_nothing_waits();
        if alone_in_process() {
            exit_as_last_thread();
        }
    }
}

/// What glibc's last thread does at its end (`start_thread`, `pthread_exit`): it would have
/// been the last but for us (review rev40). `exit` runs the program's atexit handlers and
/// destructors, which may be as deep as on any thread and expect the program's signal mask:
/// so it runs on a new thread with the default attributes ([`exit_thread`]), which puts on
/// the program's mask ([`EXIT_MASK`]), and the purger waits (every signal
/// blocked) for the process to end, or for that thread to end without ending it (review of
/// rev43's exit: on the purger's own 128 KiB stack and mask, a 1 MiB frame faulted and SIGTERM
/// was blocked). If that thread cannot be made (a
/// thread limit, an address-space cap), `exit` runs here, with the program's mask.
fn exit_as_last_thread() -> ! {
    // The new thread's creation may allocate (its TLS), which gives this thread a heap: it
    // is past its last pass, and the process is ending.
    let made = spawn_detached(exit_thread, 0);
    if made {
        // That thread ends the process. Should it end without doing so (an atexit handler
        // that calls `pthread_exit`), glibc's last thread would have ended with it, and the
        // process with status 0, nothing more run: so does it here (review rev47: the purger
        // waited for good).
        loop {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: (EXIT_WAIT_MS * 1_000_000) as libc::c_long,
            };
            // SAFETY: a valid timespec; an interrupted sleep only makes the look earlier.
            unsafe { libc::nanosleep(&ts, core::ptr::null_mut()) };
            if alone_in_process() {
                // SAFETY: `_exit` has no preconditions.
                unsafe { libc::_exit(0) };
            }
        }
    }
    put_on_exit_mask();
    // SAFETY: exit has no memory preconditions; the program's threads are all gone.
    unsafe { libc::exit(0) }
}

/// How often the purger looks whether the thread it made to end the process has ended
/// without doing so.
const EXIT_WAIT_MS: u64 = 100;

/// The thread that ends the process for [`exit_as_last_thread`]: the program's mask
/// ([`EXIT_MASK`]), then `exit(0)`.
extern "C" fn exit_thread(_: *mut libc::c_void) -> *mut libc::c_void {
    put_on_exit_mask();
    // SAFETY: as in `exit_as_last_thread`.
    unsafe { libc::exit(0) }
}

/// Puts the program's signal mask ([`EXIT_MASK`]) on the calling thread.
fn put_on_exit_mask() {
    let words: [u64; MASK_WORDS] = core::array::from_fn(|i| EXIT_MASK[i].load(Ordering::Relaxed));
    // SAFETY: `sigset_t` is plain data of `MASK_WORDS` words, these a mask `maybe_start` or
    // `note_thread_exit` read from `pthread_sigmask`.
    unsafe {
        let mask: libc::sigset_t = core::mem::transmute_copy(&words);
        libc::pthread_sigmask(libc::SIG_SETMASK, &mask, core::ptr::null_mut());
    }
}

/// The longest the purger sleeps with nothing to do, before it looks whether it is the
/// process's last thread ([`alone_in_process`]).
const ALONE_CHECK_MS: u64 = 1000;

/// Whether the purger is the process's one live thread: the main thread has ended with
/// `pthread_exit` (its task a zombie until the process ends, still counted) and every other
/// thread has ended. glibc ends the process (`exit(0)`) when its last thread ends, but it
/// counts the purger, which never ends: without this look, a program whose main thread ends
/// that way ran on for good once the purger had started (review rev40, `preload/tests/
/// ld_preload.rs`: a C program's `pthread_exit` from `main`; fork_traffic.c's children).
/// Reads `/proc/self/stat` (the main thread's state and the process's thread count) into a
/// buffer on the stack; false if it cannot.
fn alone_in_process() -> bool {
    read_stat(stat_says_alone)
}

/// Whether the main thread has ended (`pthread_exit`; a zombie until the process ends).
fn main_thread_ended() -> bool {
    read_stat(|s| stat_field(s, 3) == Some(&b"Z"[..]))
}

/// `f` of `/proc/self/stat`'s line, read into a buffer on the stack; false if it cannot be
/// read.
fn read_stat(f: impl FnOnce(&[u8]) -> bool) -> bool {
    let mut buf = [0u8; 1024];
    // SAFETY: a NUL-terminated path; the descriptor is ours until we close it, and read
    // writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/stat".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        let n = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return false;
    }
    f(&buf[..n as usize])
}

/// Field `k` (from 3: the fields after the command name) of a `/proc/<pid>/stat` line,
/// counted from the last `)`, as the command name (field 2) may hold spaces and `)`.
fn stat_field(stat: &[u8], k: usize) -> Option<&[u8]> {
    let r = stat.iter().rposition(|&c| c == b')')?;
    stat[r + 1..]
        .split(|&c| c == b' ' || c == b'\n')
        .filter(|f| !f.is_empty())
        .nth(k.checked_sub(3)?)
}

/// [`alone_in_process`]'s reading of a `/proc/<pid>/stat` line: the state (field 3) is `Z`
/// and the thread count (field 20) is 2 (the zombie main thread and the caller).
pub(super) fn stat_says_alone(stat: &[u8]) -> bool {
    stat_field(stat, 3) == Some(&b"Z"[..])
        && stat_field(stat, 20).and_then(crate::sys::env::parse_u64) == Some(2)
}

/// Whether anything waits for the purger: a pool's segment (unmapped once expired) or a
/// thread heap that is `waiting`, or `holding` with something due now or not known
/// (`due_ms`) and an owner quiet for a delay, or with frees on its delayed stack and an
/// owner quiet for a delay (`quiet`). A busy owner's heap holds something most of the time,
/// and the pass would pass it over: it counts from the time its owner would be quiet, if it
/// stopped collecting now (the purger sleeps until then, and looks again: a heap that goes
/// quiet sends no wake-up of its own). A heap holding only what is due later (a
/// refused purge's retry, backing off to a minute) has the purger sleep until then
/// ([`Idle::For`]), not wake every quarter delay (review rev12: 40 wake-ups in 2 s for ~1 MiB
/// of locked free slices); a heap whose `due_ms` goes back to 0 wakes it (`tick::note_idle`).
fn anything_waits() -> Idle {
    if POOLS
        .iter()
        .take(MAX_NODES)
        .any(|p| p.count.load(Ordering::Relaxed) > 0)
    {
        return Idle::Work;
    }
    let now = os::now_ms();
    let delay = init::PURGE_DELAY_MS.load(Ordering::Relaxed);
    let mut any = false;
    let mut next = u64::MAX;
    // Abandoned segments with free slices booked for purging (see `purge_abandoned`); a
    // list busy right now counts as work (the next pass looks again).
    for list in ABANDONED.iter().chain(ABANDONED_FULL.iter()) {
        // SAFETY: listed segments are valid headers, their purge fields stable under the
        // list's lock.
        any |= !list.try_for_each(|seg| unsafe {
            let at = (*seg).purge_at;
            if at != 0 {
                if at <= now {
                    any = true;
                } else {
                    next = next.min(at);
                }
            }
        });
    }
    if any {
        return Idle::Work;
    }
    let _g = REGISTRY.lock.lock();
    // SAFETY: we hold the registry lock, so the listed heaps are valid; `shared` never
    // changes after registration, and `waiting`, `holding` and `due_ms` are atomic.
    unsafe {
        REGISTRY.heaps.for_each(|h| {
            if (*h).shared {
                return;
            }
            let quiet_at = quiet_at(h, delay);
            if has_delayed(h) {
                // Frees into its full pages: taken in once the owner has been quiet for a
                // delay (`quiet`), if it has not taken them in itself by then.
                if now >= quiet_at {
                    any = true;
                } else {
                    next = next.min(quiet_at);
                }
            }
            if (*addr_of!((*h).waiting)).load(Ordering::Relaxed) {
                any = true;
            } else if (*addr_of!((*h).holding)).load(Ordering::Relaxed) {
                // The pass visits a heap that is only holding once its owner has been quiet
                // for a delay and a step of it is due: not before (a busy owner's own
                // collections purge it, review rev16: 81 wake-ups in 2 s for one busy heap).
                let due = (*addr_of!((*h).due_ms)).load(Ordering::Relaxed);
                let at = if step_due(due, quiet_at) {
                    quiet_at
                } else {
                    due
                };
                if now >= at {
                    any = true;
                } else {
                    next = next.min(at);
                }
            }
        })
    };
    if any {
        Idle::Work
    } else if next != u64::MAX {
        Idle::For { at: next }
    } else {
        Idle::Forever
    }
}

/// Sleeps on [`WAKE`] until [`notify`] says something waits, or until the first step a
/// holding heap has due later, unless something waits now ([`SLEEP`]'s handshake:
/// `heap::wake`, which tests/loom/wake.rs checks).
fn sleep_while_nothing_waits() {
    // While the program's last thread may be ending, not for long: `run` looks after each
    // sleep whether the purger is the last thread left. That is so while the main thread has
    // ended (a zombie: every `ALONE_CHECK_MS`), and for a while after any thread's heap let go
    // (`EXIT_LOOKS` looks `EXIT_LOOK_MS` apart, first: the thread is still there when it
    // tells us).
    // Otherwise asleep until woken, as before (tests/idle.rs: no wake-up with nothing to do).
    let cap = if EXIT_LOOKS_LEFT
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        EXIT_LOOK_MS
    } else if MAIN_ENDING.load(Ordering::Relaxed) || main_thread_ended() {
        // A zombie main thread that never noted (it had no heap): the next ends look too.
        MAIN_ENDING.store(true, Ordering::Relaxed);
        // Ending (its heap let go: it may still be in other destructors, review rev43) or a
        // zombie: nothing tells us when it is a zombie, or when the last other thread is gone.
        ALONE_CHECK_MS
    } else {
        u64::MAX
    };
    SLEEP.sleep_unless_for(|| match (anything_waits(), cap) {
        (idle, u64::MAX) => idle,
        (Idle::Forever, cap) => Idle::For {
            at: os::now_ms().saturating_add(cap),
        },
        (Idle::For { at }, cap) => Idle::For {
            at: at.min(os::now_ms().saturating_add(cap)),
        },
        (Idle::Work, _) => Idle::Work,
    });
}

/// How many short sleeps the purger takes after a thread's heap let go, and how long each.
const EXIT_LOOKS: u32 = 100;
const EXIT_LOOK_MS: u64 = 10;
/// The short sleeps left (see [`sleep_while_nothing_waits`]); set by [`note_thread_exit`].
static EXIT_LOOKS_LEFT: AtomicU32 = AtomicU32::new(0);

/// Whether the main thread's heap has let go (it is ending, `pthread_exit`): from then on the
/// purger looks every [`ALONE_CHECK_MS`] at the least, as it does once the main thread is a
/// zombie. Without it, a main thread whose other thread-specific data destructors ran longer
/// than the purger's [`EXIT_LOOKS`] after tieralloc's became a zombie unseen, and the purger
/// slept until woken, which nothing did (review rev43, preload's
/// `main_thread_pthread_exit_with_a_slow_destructor_ends_the_process`).
static MAIN_ENDING: AtomicBool = AtomicBool::new(false);

/// A thread's heap has let go (its thread is ending): the purger, if it runs, looks a while
/// whether it is the last thread left ([`alone_in_process`]), and, once the main thread is
/// ending, keeps this thread's signal mask for the process's end ([`EXIT_MASK`]). One
/// relaxed load when the purger is off.
pub(super) fn note_thread_exit() {
    if BACKGROUND_PURGE.load(Ordering::Relaxed) {
        // SAFETY: gettid and getpid have no preconditions.
        if unsafe { libc::gettid() == libc::getpid() } {
            MAIN_ENDING.store(true, Ordering::Relaxed);
        }
        // Only then can this thread be the program's last: while the main thread runs, the
        // purger is woken once (the heap's segments went to a pool), as before review rev40,
        // not kept looking 100 times a program that starts and ends threads all the time
        // (tests/purger_wakeups.rs: 138 wake-ups for 20 thread ends, review rev43).
        if MAIN_ENDING.load(Ordering::Relaxed) {
            EXIT_LOOKS_LEFT.store(EXIT_LOOKS, Ordering::Relaxed);
            // This thread may be the program's last: its mask is the one glibc's `exit(0)`
            // would have run with (`EXIT_MASK`). Threads ending at once may mix their
            // masks' words; Linux's signals are all in the first.
            // SAFETY: a signal set we initialise; the calling thread's own mask, not changed.
            let mask = unsafe {
                let mut mask: libc::sigset_t = core::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, core::ptr::null(), &mut mask);
                mask
            };
            save_mask(&mask);
        }
        wake();
    }
}

/// Wakes the purger if it sleeps: to be called after a heap became `waiting`, or a segment
/// went to a pool, with the flag (or push) already stored. One relaxed load when the purger
/// is off (the default).
#[inline]
pub(super) fn notify() {
    if BACKGROUND_PURGE.load(Ordering::Relaxed) {
        wake();
    }
}

/// [`notify`] for a heap whose owner has just made it `holding`, or its due time unknown, or
/// had a free delayed: a pass visits such a heap once its owner has been quiet for a delay,
/// not before `at` (`collected_ms` + the delay), so a purger asleep until then or sooner is
/// left asleep (its next look sees the heap). Without this, a busy owner woke it at every
/// page it gave back: 137 wake-ups in 2 s (`tests/purger_wakeups.rs`).
#[inline]
pub(super) fn notify_by(at: u64) {
    if BACKGROUND_PURGE.load(Ordering::Relaxed) {
        wake_by(at);
    }
}

/// [`notify`]'s side of the handshake (see [`sleep_while_nothing_waits`]).
#[cold]
fn wake() {
    SLEEP.wake();
}

/// [`notify_by`]'s side of the handshake.
#[cold]
fn wake_by(at: u64) {
    let _ = SLEEP.wake_unless_due_by(at);
}

/// One pass: unmap the pools' expired segments, then, for every registered thread heap that
/// is `waiting` (the purger thread), or `holding` with an owner quiet for a whole delay
/// (either), and whose gate is free, run its due purge steps and tail steps, pool its empty
/// segments whose time has come, and expire its huge cache ([`purge_heap`]).
///
/// The registry lock is held only to walk the list and pin a heap, never across a purge: a
/// heap is pinned by taking its gate (`PURGER`) with the lock held while it is listed. Its
/// owner takes the gate before anything else on thread exit (`heap_done`) and keeps it until
/// the heap is off the list, so a pinned heap stays listed, and its memory (the thread's
/// TLS) valid, until the purger lets go of the gate; the purger reads the next heap with the
/// lock held again before it does. While the purger holds a gate it waits for the registry
/// lock, which no holder keeps while it waits for a gate: nothing under the registry lock
/// allocates or takes a gate (`register`, `heap_done`'s unlinking, the statistics walk, the
/// fork handlers, which first wait for `PASS`). tests/loom/registry.rs models this walk
/// (`HeapList::for_each_pinned`) against a thread that exits.
///
/// # Safety
/// Called holding `PASS`, by the purger thread or by [`help`] (a thread heap's collection
/// that holds its own gate and no lock), which sets `quiet_only`: then only heaps whose
/// owner has not collected for a whole delay are visited (`Heap::collected_ms`), so that an
/// owner busy with its own collections never finds a helper at its gate.
unsafe fn pass(now: u64, delay: u64, quiet_only: bool) {
    for pool in POOLS.iter().take(MAX_NODES) {
        if pool.count.load(Ordering::Relaxed) > 0 {
            pool.unmap_expired(now);
        }
    }
    if !quiet_only {
        purge_abandoned(now);
    }
    // The registry lock is not held by this thread here.
    // SAFETY: `pin` runs under the registry lock, so its heap is valid; a pinned heap (gate
    // taken) stays listed until unpinned; the purger touches only atomics (`waiting`, `gate`)
    // or, holding the gate, segment state no fast path touches.
    unsafe {
        REGISTRY.heaps.for_each_pinned(
            &REGISTRY.lock,
            |h| {
                // A quiet owner's heap that holds anything; the purger also visits a busy
                // owner's that holds more than `WAIT_BYTES`.
                let quiet = || now >= quiet_at(h, delay);
                !(*h).shared
                    && if (*addr_of!((*h).waiting)).load(Ordering::Relaxed) {
                        !quiet_only || quiet()
                    } else {
                        // Once something is due: a quiet heap whose next step is not yet
                        // due has nothing for the pass (0: not known, visit). A quiet heap
                        // with frees into its full pages waiting (`quiet`) is visited too.
                        ((*addr_of!((*h).holding)).load(Ordering::Relaxed)
                            && step_due((*addr_of!((*h).due_ms)).load(Ordering::Relaxed), now)
                            || has_delayed(h))
                            && quiet()
                    }
                    && gate::try_pin(&*addr_of!((*h).gate))
            },
            |h| {
                if (*h).state == super::ACTIVE {
                    // A quiet owner's full pages: what others freed into them (`quiet`).
                    if now >= quiet_at(h, delay) && has_delayed(h) {
                        collect_full(h, now, delay);
                    }
                    purge_heap(h, now, delay);
                    PASS_PURGES.fetch_add(1, Ordering::Relaxed);
                }
            },
            |h| gate::leave(&*addr_of!((*h).gate)),
        );
    }
}

/// When the owner of `h` will have been quiet for `delay` ms, if it does not collect again:
/// its last collection (`collected_ms`) + `delay`. A pass visits a heap that is only holding,
/// or has frees on its delayed stack, no sooner.
///
/// # Safety
/// `h` is a heap valid for the call (`collected_ms` is atomic).
#[inline]
pub(super) unsafe fn quiet_at(h: *const Heap, delay: u64) -> u64 {
    // SAFETY: h is valid (contract); the field is atomic.
    unsafe { (*addr_of!((*h).collected_ms)).load(Ordering::Relaxed) }.saturating_add(delay)
}

/// Whether a holding heap whose `due_ms` is `due` has a step due by `now` (0: not known
/// since memory was given back, so due).
#[inline]
fn step_due(due: u64, now: u64) -> bool {
    due == 0 || now >= due
}

/// The purger thread's share of abandoned segments (review rev15): the free slices booked
/// for purging (at their owner's exit or give-up, `slices::book_free_slices`) of every
/// abandoned segment whose step is due go back to the OS, if its list's lock is free right
/// now. Collections tend abandoned segments one at a time and collect their pages; without a
/// collection (a program that makes no allocator call) nobody else would, and an exited
/// worker's free slices stayed resident for good. Refusals are dropped: the next owner books
/// the slices again.
///
/// A visit of the list (`LockedList::try_visit`, review rev36): the lock is held to walk the
/// list and read `purge_at`, and released around each due segment's `purge_free` (its
/// `madvise` calls), so that a remote free's claim, a tending's or an exit's push and a
/// refill's pop of the list's other segments do not wait for them. Meanwhile the segment is
/// marked busy on its list, which keeps it ours, as the lock did: it stays listed and
/// unowned, and nobody takes it. A claim (the free that adopts it, the free that brings its
/// live hint to 0 and gives it back) waits for this segment's purge alone and then takes it
/// as before, so no adopter carves pages in slices being purged and no give-back unmaps or
/// pools it under the purge; a pop (tending, adoption for room) takes another; the pool's
/// and the fork handlers' walks never see it (the pools are other lists; `fork`'s prepare
/// handler waits for `PASS` first). Nothing else writes an unowned segment's slice bitmaps
/// or purge fields: a remote free only pushes onto a used page's own list (atomics), which
/// the purge (free slices only) does not touch.
pub(super) fn purge_abandoned(now: u64) {
    for list in ABANDONED.iter().chain(ABANDONED_FULL.iter()) {
        list.try_visit(
            // SAFETY: called with the list's lock held: a listed segment's purge fields are
            // stable.
            |seg| unsafe {
                let at = (*seg).purge_at;
                at != 0 && now >= at
            },
            // SAFETY: busy on its list (`try_visit`): taken by nobody until we are done, so
            // its slice bitmaps and purge fields are ours (`purge_free`'s contract).
            |seg| unsafe {
                #[cfg(test)]
                BEFORE_ABANDONED_PURGE.with(|f| {
                    if let Some(f) = f.get() {
                        f(seg)
                    }
                });
                let _ = Segment::purge_free(seg);
            },
        );
    }
}

#[cfg(test)]
std::thread_local! {
    /// Runs inside [`purge_abandoned`] on the calling thread, for each due abandoned segment,
    /// right before its purge: a test parks the purging thread there (purger_tests.rs).
    pub(super) static BEFORE_ABANDONED_PURGE: core::cell::Cell<Option<fn(*mut Segment)>> =
        const { core::cell::Cell::new(None) };
}

/// What the owner's collection would purge of `h`: its segments' due purge steps and empty
/// segments whose time has come ([`purge_segments`], the owner's own walk), and the huge
/// cache's expired mappings; then whether it still waits.
///
/// # Safety
/// The purger holds `h`'s gate, and `h` is a registered, active thread heap.
unsafe fn purge_heap(h: *mut Heap, now: u64, delay: u64) {
    // With the gate held, the owner runs no slow path, so its segment list, their bitmaps
    // and its huge cache are ours for now; only their fields are touched, through raw places
    // (no reference to the whole heap, whose fast-path fields the owner uses). An empty
    // segment has no page in use, so none of the owner's fast-path pointers (its bins' pages)
    // points into it.
    // SAFETY: the gate is held (contract), which makes those ours (above).
    unsafe {
        let segs = purge_segments(addr_of_mut!((*h).segments), now, delay);
        let cache = &mut *addr_of_mut!((*h).huge_cache);
        cache.expire(now, delay);
        let left = book_left(
            &*addr_of!((*h).holding),
            &*addr_of!((*h).due_ms),
            segs,
            cache,
            delay,
            quiet_at(h, delay),
        );
        *addr_of_mut!((*h).idle_bytes) = left;
        (*addr_of!((*h).waiting)).store(left > WAIT_BYTES, Ordering::Relaxed);
    }
}

/// Whether the purger's fork handlers are registered (`sync::register_once`).
static HANDLERS: AtomicU8 = AtomicU8::new(crate::sync::NOT_REGISTERED);

extern "C" fn fork_prepare() {
    // Registered, as this runs (see `sync::register_once`).
    HANDLERS.store(crate::sync::REGISTERED, Ordering::Relaxed);
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
    // The forking thread is this process's main thread, and it runs.
    MAIN_ENDING.store(false, Ordering::Relaxed);
    EXIT_LOOKS_LEFT.store(0, Ordering::Relaxed);
}

/// Registers the purger's fork handlers (after the heap's, so that its prepare runs first:
/// it waits out a pass, the purger's or a collection's [`help`], which takes the registry
/// lock, before the heap's handler takes every allocator lock).
pub(crate) fn register_purger_fork_handlers() {
    crate::sync::register_once(&HANDLERS, fork_prepare, fork_parent, fork_child);
}
