//! A shadow model of the bin pages' life across threads: random steps of a few threads
//! (allocations of sizes whose pages hold many or few blocks, own and remote frees, runs of
//! frees that empty pages into spares, trims, collections, refills with no new segment, thread
//! exits and the adoptions that follow, passes over a waiting thread's heap and, on several
//! nodes, a heap's moves to another node) against a shadow of the live blocks, their owners and
//! the pattern written into each. Checked at every step: no block is handed out while a live
//! one overlaps it, every live block keeps its pattern, and each heap's queues, direct table,
//! trim cursor and segment list agree with its pages; at the end of each sequence, with
//! everything freed and every thread gone, every segment is back in the pool and the
//! committed bytes are those of the pooled segments.
//!
//! May touch everything of `heap::thread` (a child module). The threads are std threads
//! driven one step at a time through channels, so a sequence runs the same way each time
//! (collections come only from the steps: no heap collects on the clock) and proptest can
//! shrink it. The end checks read process-wide counters, so the test runs in a process of
//! its own (`tests/common/child.rs`), and each case in a process forked from it: every case
//! starts with no segment, and one that failed (or crashed) leaves nothing for the next ones
//! that shrinking runs. Unit tests use the system allocator, so only the steps' own calls
//! reach tieralloc. `SHADOW_CASES` sets the number of cases (256); `SHADOW_NO_HEAP_CHECK`
//! leaves the checks to the shadow alone (to see what a broken allocator gets past it).

use super::alloc::alloc_bin;
use super::bins::{direct_bin, DIRECT_SLOTS};
use super::free::free;
use super::registry::heap_init;
use super::slices::{for_each_used_page, segment_counts, NO_NEW_SEGMENT};
use super::tick::{collect_now, heap_collect};
use super::tls::own;
use super::trim::{trim_sparse, TRIM_VISITS_TEST};
use super::{empty_page, HeapRef};
use crate::heap::segment::{Page, PageKind, Segment, PAGE_IN_FULL, SEGMENT_SIZE};
use crate::heap::size_class::{bin_of, bin_size, NBINS};
use crate::sync::Ordering;
use crate::sys::os;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

#[path = "../../../tests/common/child.rs"]
mod child;

/// Request sizes: pages of 1024, 256 and 64 blocks (one slice), 42 (two slices), 32 (four
/// slices), 12 and 8 (medium, eight slices; 3 and 2 on the two-slice pages of a class the
/// heap has handed out fewer than 16 blocks of).
const SIZES: [usize; 7] = [64, 256, 1024, 3 << 10, 8 << 10, 40 << 10, 64 << 10];
/// Thread slots: a slot whose thread exits gets a new thread.
const THREADS: usize = 3;
/// Live bytes the model stops allocating at (a few segments per thread).
const LIVE_MAX: usize = 40 << 20;

#[derive(Clone, Debug)]
enum Op {
    /// Thread `t` allocates `n` blocks of size `SIZES[s]`.
    Alloc { t: usize, s: usize, n: usize },
    /// Thread `t` allocates a segment's worth (4 MiB) of blocks of size `SIZES[s]` (one of
    /// the larger ones): its segment fills, and the next page needs another (`abandon_full`
    /// gives up the full one, an abandoned one is adopted).
    Fill { t: usize, s: usize },
    /// Thread `t` allocates `n` blocks of size `SIZES[s]` with no new segment to be had
    /// (`NO_NEW_SEGMENT`: the refill's fallbacks, `abandon_full`'s pages out of the queue).
    AllocNoNew { t: usize, s: usize, n: usize },
    /// Thread `t` frees the `k`-th (mod their number) of the blocks it allocated.
    FreeOwn { t: usize, k: usize },
    /// Thread `t` frees the `k`-th of the blocks it did not allocate (another live thread's,
    /// or an exited one's: into an abandoned segment, or one adopted since).
    FreeRemote { t: usize, k: usize },
    /// Thread `t` frees `len` blocks of size `SIZES[s]` in address order from the `k`-th:
    /// its own only, or anyone's (`any`). Empties pages (spares, retired pages).
    FreeRun {
        t: usize,
        s: usize,
        k: usize,
        len: usize,
        any: bool,
    },
    /// Thread `t` frees the blocks of size `SIZES[s]` (its own only, or anyone's) but every
    /// `keep`-th in address order: pages left sparse, for trims.
    Thin {
        t: usize,
        s: usize,
        keep: usize,
        any: bool,
    },
    /// Thread `t` trims its sparse pages (`trim_sparse`, as before a new segment), twice: the
    /// first look at a page notes its count, the second trims it. From now on each of its
    /// trims looks at `visits` pages (0: as many as it would), so that the trim cursor is left
    /// inside a queue.
    Trim { t: usize, visits: usize },
    /// Thread `t` collects as its clock would (`heap_collect`, delay 100 ms: a bin that
    /// allocated keeps its current page).
    Collect { t: usize },
    /// Thread `t` forces a collection (`collect_now`: every empty page retired).
    CollectNow { t: usize },
    /// Thread `t` exits (its heap lets go of its segments); a new thread takes the slot.
    Exit { t: usize },
    /// Thread `t`'s heap moves to the next node (`rehome`, as a thread that moved: its
    /// segments are let go to that node's abandoned lists, adopted or reclaimed later; its
    /// ticks move it back to the node it runs on). Nothing on one node.
    Move { t: usize },
    /// Another thread's pass over thread `t`'s heap while `t` waits for its next step: it
    /// holds `t`'s gate as the purger does and takes in the frees into its full pages
    /// (`quiet::collect_full`).
    Pass { t: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..THREADS;
    let s = 0..SIZES.len();
    prop_oneof![
        6 => (t.clone(), s.clone(), prop_oneof![3 => 1usize..=8, 1 => 9usize..=96])
            .prop_map(|(t, s, n)| Op::Alloc { t, s, n }),
        1 => (t.clone(), 3..SIZES.len()).prop_map(|(t, s)| Op::Fill { t, s }),
        1 => (t.clone(), s.clone(), 1usize..=16).prop_map(|(t, s, n)| Op::AllocNoNew { t, s, n }),
        3 => (t.clone(), any::<usize>()).prop_map(|(t, k)| Op::FreeOwn { t, k }),
        3 => (t.clone(), any::<usize>()).prop_map(|(t, k)| Op::FreeRemote { t, k }),
        3 => (t.clone(), s, any::<usize>(), 1usize..=96, any::<bool>())
            .prop_map(|(t, s, k, len, any)| Op::FreeRun { t, s, k, len, any }),
        1 => (t.clone(), 0..SIZES.len(), 2usize..=16, any::<bool>())
            .prop_map(|(t, s, keep, any)| Op::Thin { t, s, keep, any }),
        1 => (t.clone(), 0usize..4).prop_map(|(t, visits)| Op::Trim { t, visits }),
        1 => t.clone().prop_map(|t| Op::Collect { t }),
        1 => t.clone().prop_map(|t| Op::CollectNow { t }),
        1 => t.clone().prop_map(|t| Op::Exit { t }),
        1 => t.clone().prop_map(|t| Op::Move { t }),
        2 => t.prop_map(|t| Op::Pass { t }),
    ]
}

/// What a worker thread is asked to do.
enum Cmd {
    Alloc(usize, usize, bool),
    Free(Vec<usize>),
    Trim(usize),
    Collect,
    CollectNow,
    Move,
    /// Answers with the address of the worker's heap.
    Heap,
}

/// The pattern byte at offset `i` of a block tagged `tag`.
fn pat(tag: u32, i: usize) -> u8 {
    (tag as u8) ^ (tag >> 8) as u8 ^ (i >> 3) as u8 ^ (i as u8).wrapping_mul(7)
}

/// The offsets of a block of `size` bytes the model writes: its first and last bytes of the
/// first half (the secure build's canary lies at its end) and one in every OS page between
/// (a trim that gave back a live block's OS page reads back zero there).
fn probes(size: usize) -> impl Iterator<Item = usize> {
    let half = size / 2;
    (0..half.min(24))
        .chain((os::OS_PAGE..half).step_by(os::OS_PAGE))
        .chain(half.saturating_sub(8).max(24)..half)
}

/// Each step's self-check of the calling thread's heap: its queues are well linked (each
/// page's `prev` is the page before it, `tails` the last), hold pages of their bin that are
/// not full, of segments on its list that it owns; every bin page in use of those segments
/// is in its queue exactly when not full; the refilled lists hold full pages of their bin
/// with live blocks and free (or parked) ones, and a full page on none has null links; the
/// direct table equals `pages`; the trim cursors are null or a page of their bin's queue
/// (`trim_at`) or refilled list (`refilled_trim_at`);
/// every tail bit of its segments names the start of a bin page in use.
///
/// # Safety
/// `h` is the calling thread's heap, between two of its allocator calls.
unsafe fn check_heap(h: HeapRef) -> Result<(), String> {
    // SAFETY: the heap's segments and queued pages are ours, between calls (contract).
    unsafe {
        let mut segs = HashSet::new();
        let mut s = h.segments;
        while !s.is_null() {
            if (*s).owner.load(Ordering::Relaxed) != h.addr() {
                return Err(format!("segment {s:p} on the list is not the heap's"));
            }
            if !segs.insert(s as usize) || segs.len() > 4096 {
                return Err("the segment list loops".into());
            }
            s = (*s).next;
        }
        let mut queued = HashSet::new();
        let mut cursor_seen = h.trim_at.is_null();
        for bin in 0..NBINS {
            let mut prev: *mut Page = core::ptr::null_mut();
            let mut p = h.pages[bin];
            if p == empty_page() {
                p = core::ptr::null_mut();
            }
            while !p.is_null() {
                if (*p).prev != prev {
                    return Err(format!(
                        "bin {bin}: page {p:p}'s prev is not the page before"
                    ));
                }
                if (*p).kind != PageKind::Bin as u8 || (*p).bin as usize != bin {
                    return Err(format!("bin {bin}: page {p:p} is not a page of the bin"));
                }
                if (*p).flags & PAGE_IN_FULL != 0 {
                    return Err(format!("bin {bin}: full page {p:p} in the queue"));
                }
                if !segs.contains(&((*p).segment() as usize)) {
                    return Err(format!("bin {bin}: page {p:p} of a segment not ours"));
                }
                if !queued.insert(p as usize) {
                    return Err(format!("bin {bin}: page {p:p} queued twice"));
                }
                if p == h.trim_at && bin == h.trim_bin as usize {
                    cursor_seen = true;
                }
                prev = p;
                p = (*p).next;
            }
            if h.tails[bin] != prev {
                return Err(format!("bin {bin}: the tail is not the last page"));
            }
        }
        // The refilled lists (`refilled`): well linked, of full bin pages of their bin with a
        // live block and a free (or parked: `refilled::trim`) one, ours, on no other list;
        // every other full page unlinked.
        let mut listed = HashSet::new();
        let mut refilled_cursor_seen = h.refilled_trim_at.is_null();
        for bin in 0..NBINS {
            let mut prev: *mut Page = core::ptr::null_mut();
            let mut p = h.refilled[bin];
            while !p.is_null() {
                if (*p).prev != prev {
                    return Err(format!(
                        "refilled {bin}: page {p:p}'s prev is not the page before"
                    ));
                }
                if (*p).kind != PageKind::Bin as u8
                    || (*p).bin as usize != bin
                    || (*p).flags & PAGE_IN_FULL == 0
                    || (*p).used == 0
                    || ((*p).free.is_null() && (*p).local_free.is_null() && (*p).parked == 0)
                {
                    return Err(format!(
                        "refilled {bin}: page {p:p} (flags {:#x}, used {}) is not a full page \
                         of the bin with live and free or parked blocks",
                        (*p).flags,
                        (*p).used
                    ));
                }
                if !segs.contains(&((*p).segment() as usize)) {
                    return Err(format!("refilled {bin}: page {p:p} of a segment not ours"));
                }
                if !listed.insert(p as usize) || queued.contains(&(p as usize)) {
                    return Err(format!("refilled {bin}: page {p:p} listed twice"));
                }
                if p == h.refilled_trim_at && bin == h.refilled_trim_bin as usize {
                    refilled_cursor_seen = true;
                }
                prev = p;
                p = (*p).next;
            }
            if h.refilled_tail[bin] != prev {
                return Err(format!("refilled {bin}: the tail is not the last page"));
            }
        }
        if !refilled_cursor_seen {
            return Err(format!(
                "the refilled trim cursor {:p} is on no list of its bin",
                h.refilled_trim_at
            ));
        }
        if !cursor_seen {
            return Err(format!(
                "the trim cursor {:p} is in no queue of its bin",
                h.trim_at
            ));
        }
        for w in 0..DIRECT_SLOTS {
            if h.direct[w] != h.pages[direct_bin(w)] {
                return Err(format!("direct slot {w} is not its bin's current page"));
            }
        }
        // Every tail bit names the first slice of a bin page in use (invariant 25), and the
        // bits booked since the last step are among them.
        for &s in &segs {
            let seg = s as *mut Segment;
            if (*seg).tails_new & !(*seg).tails != 0 {
                return Err(format!("segment {seg:p}: tails_new outside tails"));
            }
            let mut todo = (*seg).tails;
            while todo != 0 {
                let i = todo.trailing_zeros() as usize;
                todo &= todo - 1;
                if !Segment::starts_bin_page(seg, i) {
                    return Err(format!(
                        "segment {seg:p}: tail bit {i} is not the start of a bin page in use"
                    ));
                }
            }
        }
        let mut wrong = None;
        for &s in &segs {
            for_each_used_page(s as *mut Segment, |p| {
                let full = (*p).flags & PAGE_IN_FULL != 0;
                if (*p).kind == PageKind::Bin as u8
                    && (full == queued.contains(&(p as usize))
                        || full
                            && !listed.contains(&(p as usize))
                            && !((*p).next.is_null() && (*p).prev.is_null()))
                {
                    wrong = Some(p);
                }
            });
        }
        if let Some(p) = wrong {
            return Err(format!(
                "page {p:p} (flags {:#x}) is in its queue when full or out of it when not",
                (*p).flags
            ));
        }
        Ok(())
    }
}

std::thread_local! {
    /// Whether the worker checks its heap after each step (`SHADOW_NO_HEAP_CHECK` unset: the
    /// variable, which also makes the allocator's reports of wrong frees return, lets a run
    /// see what the shadow alone catches).
    static HEAP_CHECK: core::cell::Cell<bool> = const { core::cell::Cell::new(true) };
}

/// A worker thread: runs each command on its own heap, answers with the blocks it got (0 for
/// none) or what its heap check found wrong. Returns (and its heap lets go, at the thread's
/// exit) when the driver drops its end of the channel.
fn worker(rx: Receiver<Cmd>, tx: Sender<Result<Vec<usize>, String>>) {
    HEAP_CHECK.with(|c| c.set(std::env::var_os("SHADOW_NO_HEAP_CHECK").is_none()));
    let mut h = own();
    heap_init(h);
    // No collection on the clock: only the steps collect.
    h.next_purge_ms = u64::MAX;
    for cmd in rx {
        let mut out = vec![];
        // SAFETY: this thread's heap, used by this thread only; the driver frees each block
        // once, and only blocks it was handed.
        unsafe {
            match cmd {
                Cmd::Alloc(bin, n, no_new) => {
                    NO_NEW_SEGMENT.with(|c| c.set(no_new));
                    out.extend((0..n).map(|_| alloc_bin(bin) as usize));
                    NO_NEW_SEGMENT.with(|c| c.set(false));
                }
                Cmd::Free(v) => v.into_iter().for_each(|p| free(p as *mut u8)),
                Cmd::Trim(visits) => {
                    TRIM_VISITS_TEST.with(|c| c.set(visits));
                    trim_sparse(own());
                    trim_sparse(own());
                }
                Cmd::Collect => heap_collect(own(), os::now_ms(), 100),
                Cmd::CollectNow => collect_now(),
                Cmd::Move => {
                    let nodes = crate::topology().nodes.len() as u32;
                    let h = own();
                    let _gate = super::purger::enter(h.as_ptr());
                    if nodes > 1 {
                        super::registry::rehome_when_safe(h, (h.node + 1) % nodes);
                    }
                }
                Cmd::Heap => out.push(own().as_ptr() as usize),
            }
            let r = if HEAP_CHECK.with(|c| c.get()) {
                check_heap(own()).map(|()| out)
            } else {
                Ok(out)
            };
            if tx.send(r).is_err() {
                return;
            }
        }
    }
}

struct Slot {
    tx: Sender<Cmd>,
    rx: Receiver<Result<Vec<usize>, String>>,
    join: JoinHandle<()>,
    /// Which thread of the slot this is (the blocks' owner ids).
    id: u32,
}

impl Slot {
    fn start(id: u32) -> Slot {
        let (tx, crx) = channel();
        let (ctx, rx) = channel();
        let join = std::thread::spawn(move || worker(crx, ctx));
        Slot { tx, rx, join, id }
    }

    /// Runs `cmd` on the slot's thread and waits for its answer.
    fn run(&self, cmd: Cmd) -> Result<Vec<usize>, String> {
        self.tx
            .send(cmd)
            .map_err(|_| "the worker is gone".to_string())?;
        self.rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|e| format!("the worker did not answer: {e}"))?
    }

    /// Ends the thread (its heap lets go of its segments) and waits until it is gone.
    fn stop(self) {
        drop(self.tx);
        let _ = self.join.join();
    }
}

struct Block {
    size: usize,
    owner: u32,
    tag: u32,
}

/// The threads and the shadow of the live blocks (by address).
struct World {
    slots: Vec<Option<Slot>>,
    live: BTreeMap<usize, Block>,
    live_bytes: usize,
    next_id: u32,
    next_tag: u32,
}

impl World {
    fn new() -> World {
        let slots = (0..THREADS as u32)
            .map(|id| Some(Slot::start(id)))
            .collect();
        World {
            slots,
            live: BTreeMap::new(),
            live_bytes: 0,
            next_id: THREADS as u32,
            next_tag: 1,
        }
    }

    fn slot(&self, t: usize) -> &Slot {
        self.slots[t].as_ref().expect("every slot has a thread")
    }

    /// Records blocks of `size` bytes thread `t` got, checking that none overlaps a live one,
    /// and writes each one's pattern.
    fn got(
        &mut self,
        t: usize,
        size: usize,
        blocks: Vec<usize>,
        may_fail: bool,
    ) -> Result<(), String> {
        let owner = self.slot(t).id;
        for p in blocks {
            if p == 0 {
                if may_fail {
                    continue;
                }
                return Err(format!("thread {t}: no block of {size} bytes"));
            }
            if p % 16 != 0 {
                return Err(format!("block {p:#x} not 16-byte aligned"));
            }
            if let Some((&q, b)) = self.live.range(..p + size).next_back() {
                if q + b.size > p {
                    return Err(format!(
                        "thread {t} got {p:#x} ({size} B) while {q:#x} ({} B, thread id {}) is live",
                        b.size, b.owner
                    ));
                }
            }
            let tag = self.next_tag;
            self.next_tag += 1;
            for i in probes(size) {
                // SAFETY: a block of `size` bytes just handed out, ours to write.
                unsafe { *(p as *mut u8).add(i) = pat(tag, i) };
            }
            self.live.insert(p, Block { size, owner, tag });
            self.live_bytes += size;
        }
        Ok(())
    }

    /// Checks every live block's pattern.
    fn check_all(&self) -> Result<(), String> {
        for (&p, b) in &self.live {
            for i in probes(b.size) {
                // SAFETY: a live block of `b.size` bytes (the model frees it only once).
                let v = unsafe { *(p as *const u8).add(i) };
                if v != pat(b.tag, i) {
                    return Err(format!(
                        "live block {p:#x} ({} B, thread id {}) overwritten at byte {i}",
                        b.size, b.owner
                    ));
                }
            }
        }
        Ok(())
    }

    /// Thread `t` frees `blocks` (live ones, each once).
    /// The live blocks of `SIZES[s]`'s bin, in address order: thread `t`'s own, or anyone's.
    fn blocks_of(&self, t: usize, s: usize, any: bool) -> Vec<usize> {
        let id = self.slot(t).id;
        let size = bin_size(bin_of(SIZES[s]));
        self.live
            .iter()
            .filter(|(_, b)| b.size == size && (any || b.owner == id))
            .map(|(&p, _)| p)
            .collect()
    }

    fn free(&mut self, t: usize, blocks: Vec<usize>) -> Result<(), String> {
        for p in &blocks {
            let b = self
                .live
                .remove(p)
                .expect("the model frees live blocks only");
            self.live_bytes -= b.size;
        }
        self.slot(t).run(Cmd::Free(blocks)).map(drop)
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Alloc { t, s, .. } | Op::Fill { t, s } => {
                let size = bin_size(bin_of(SIZES[s]));
                let n = match *op {
                    Op::Alloc { n, .. } => n.min((4 << 20) / size),
                    _ => (4 << 20) / size,
                };
                if self.live_bytes + n * size > LIVE_MAX {
                    return Ok(());
                }
                let v = self.slot(t).run(Cmd::Alloc(bin_of(SIZES[s]), n, false))?;
                self.got(t, size, v, false)?;
            }
            Op::AllocNoNew { t, s, n } => {
                let size = bin_size(bin_of(SIZES[s]));
                let v = self.slot(t).run(Cmd::Alloc(bin_of(SIZES[s]), n, true))?;
                self.got(t, size, v, true)?;
            }
            Op::FreeOwn { t, k } | Op::FreeRemote { t, k } => {
                let id = self.slot(t).id;
                let own = matches!(op, Op::FreeOwn { .. });
                let v: Vec<usize> = self
                    .live
                    .iter()
                    .filter(|(_, b)| (b.owner == id) == own)
                    .map(|(&p, _)| p)
                    .collect();
                if !v.is_empty() {
                    self.free(t, vec![v[k % v.len()]])?;
                }
            }
            Op::FreeRun { t, s, k, len, any } => {
                let v = self.blocks_of(t, s, any);
                if !v.is_empty() {
                    let from = k % v.len();
                    let run = v[from..(from + len).min(v.len())].to_vec();
                    self.free(t, run)?;
                }
            }
            Op::Thin { t, s, keep, any } => {
                let v: Vec<usize> = self
                    .blocks_of(t, s, any)
                    .into_iter()
                    .enumerate()
                    .filter(|&(i, _)| i % keep != 0)
                    .map(|(_, p)| p)
                    .collect();
                if !v.is_empty() {
                    self.free(t, v)?;
                }
            }
            Op::Trim { t, visits } => drop(self.slot(t).run(Cmd::Trim(visits))?),
            Op::Collect { t } => drop(self.slot(t).run(Cmd::Collect)?),
            Op::CollectNow { t } => drop(self.slot(t).run(Cmd::CollectNow)?),
            Op::Move { t } => drop(self.slot(t).run(Cmd::Move)?),
            Op::Pass { t } => {
                let h = self.slot(t).run(Cmd::Heap)?[0] as *mut super::Heap;
                // SAFETY: the heap of a live worker that waits for its next command (it makes
                // no allocator call meanwhile); held as a pass holds it.
                unsafe {
                    let gate = &*core::ptr::addr_of!((*h).gate);
                    if gate
                        .compare_exchange(
                            super::purger::FREE,
                            super::purger::PURGER,
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        if (*h).state == super::ACTIVE {
                            super::quiet::collect_full(h, os::now_ms(), 100);
                        }
                        gate.store(super::purger::FREE, Ordering::Release);
                    }
                }
                // The heap check after the pass.
                drop(self.slot(t).run(Cmd::Free(vec![]))?);
            }
            Op::Exit { t } => {
                let id = self.next_id;
                self.next_id += 1;
                if let Some(old) = self.slots[t].take() {
                    old.stop();
                }
                self.slots[t] = Some(Slot::start(id));
            }
        }
        self.check_all()
    }

    /// Frees every live block (by its thread if that one is still running, else by another
    /// in turn) and ends every thread.
    fn finish(&mut self) -> Result<(), String> {
        let ids: Vec<u32> = self
            .slots
            .iter()
            .map(|s| s.as_ref().map_or(u32::MAX, |s| s.id))
            .collect();
        let mut by: Vec<Vec<usize>> = vec![vec![]; THREADS];
        for (n, (&p, b)) in self.live.iter().enumerate() {
            let t = ids
                .iter()
                .position(|&id| id == b.owner)
                .unwrap_or(n % THREADS);
            by[t].push(p);
        }
        for (t, v) in by.into_iter().enumerate() {
            self.free(t, v)?;
        }
        for s in &mut self.slots {
            if let Some(s) = s.take() {
                s.stop();
            }
        }
        Ok(())
    }
}

/// Runs `ops` and checks where the segments are at the end. In a process forked from one
/// that has not used tieralloc (see [`run_forked`]): every case starts with no segment.
fn run_case(ops: &[Op]) -> Result<(), String> {
    let mut w = World::new();
    for (i, op) in ops.iter().enumerate() {
        w.step(op).map_err(|e| format!("step {i} ({op:?}): {e}"))?;
    }
    w.finish()?;
    // Everything in the pool, nothing abandoned, and the bytes committed those of the pooled
    // segments (at most their size each).
    let (segments, pooled, abandoned) = segment_counts();
    let committed = os::COMMITTED.load(Ordering::Relaxed);
    if abandoned != 0 || segments != pooled || committed > pooled * SEGMENT_SIZE {
        return Err(format!(
            "everything freed, every thread gone: {segments} segments, {pooled} pooled, \
             {abandoned} abandoned, {committed} bytes committed"
        ));
    }
    Ok(())
}

/// [`run_case`] in a forked process, whose result comes back through a pipe: each case
/// starts from the same state (a case that failed leaves nothing behind for the next ones,
/// which shrinking runs), and one that crashes (an abort on a heap error, a fault) is a
/// failure like any other.
fn run_forked(ops: &[Op]) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
    // SAFETY: the child only runs the case and leaves with `_exit`; this process has not
    // used tieralloc, whose fork handlers take its locks anyway.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        if std::env::var_os("SHADOW_NO_HEAP_CHECK").is_some() {
            // Only the shadow's checks: the allocator's own reports of a wrong free return.
            let ignore = crate::heap::error::IGNORE;
            crate::heap::error::ON_ERROR.store(ignore, Ordering::Relaxed);
        }
        let r = std::panic::catch_unwind(|| run_case(ops));
        let msg = match r {
            Ok(Ok(())) => String::new(),
            Ok(Err(e)) => e,
            Err(_) => "the case panicked".into(),
        };
        // SAFETY: the write end, ours alone in this process.
        let mut out = unsafe { std::fs::File::from_raw_fd(fds[1]) };
        let _ = out.write_all(msg.as_bytes());
        // SAFETY: ends this process at once (no exit handlers of the parent's state).
        unsafe { libc::_exit(msg.is_empty() as i32 ^ 1) };
    }
    // SAFETY: the write end is the child's now; the read end is ours alone.
    unsafe { libc::close(fds[1]) };
    // SAFETY: as above.
    let mut input = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut msg = String::new();
    let _ = input.read_to_string(&mut msg);
    let mut status = 0;
    // SAFETY: pid is our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if !msg.is_empty() {
        Err(msg)
    } else {
        Err(format!(
            "the case's process ended with wait status {status:#x}"
        ))
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SHADOW_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    /// Invariants 2, 4 and 23 under thread exits: random steps of three threads against a
    /// shadow of the live blocks (see the module's comment). In a process of its own.
    #[test]
    fn spares_and_thread_exits_hand_no_block_to_two_owners(
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        if !child::is_child() {
            return Ok(());
        }
        if let Err(e) = run_forked(&ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// The name [`child::this_test`] runs [`spares_and_thread_exits_hand_no_block_to_two_owners`]
/// by.
fn model_name() -> &'static str {
    let name = concat!(
        module_path!(),
        "::spares_and_thread_exits_hand_no_block_to_two_owners"
    );
    name.split_once("::").map_or(name, |(_, rest)| rest)
}

/// Runs [`spares_and_thread_exits_hand_no_block_to_two_owners`] in a child process.
#[test]
fn spares_and_thread_exits_in_a_process_of_their_own() {
    if child::is_child() {
        return;
    }
    let out = child::run(
        &mut child::this_test(model_name()),
        Duration::from_secs(600),
    );
    out.expect_test_passed();
}

/// The model on two simulated nodes, where its `Move` steps move a heap (`rehome`: every
/// segment let go to its node's abandoned lists, refilled lists and queues emptied, the heap
/// back on its thread's node within 16 slow paths), between the exits, passes and trims
/// (review rev23).
#[test]
fn spares_exits_and_node_moves_on_two_simulated_nodes() {
    if child::is_child() {
        return;
    }
    let out = child::run(
        &mut child::on_simulated_nodes(model_name(), "2"),
        Duration::from_secs(600),
    );
    out.expect_test_passed();
}
