//! Statistics: snapshots merged from the per-thread counters and the process-wide ones.
//!
//! Owns: the public [`Stats`] snapshot (with its per-label part, [`LabelStats`]) and its table
//! form, and the exit-time printer.
//! May touch: `heap::thread` (to read every heap's counters under the registry lock),
//! `heap::{segment, size_class}` and `sys::os` (process-wide counters), `topology` (which
//! nodes to show) and `sync`. Counting costs the fast path one plain add to a thread-local
//! counter; all merging happens here, on read. Part of the heap's layer (it reads nothing
//! above the heap), so that start-up (`init`) can register its printer.

use crate::heap::segment::{
    BYTES_QUARANTINED, COMMITTED_BY_NODE, FREES_QUARANTINED, PAGES_ABANDONED, PAGES_ADOPTED,
    SEGMENTS_QUARANTINED,
};
use crate::heap::size_class::{bin_size, NBINS};
use crate::heap::thread::{self, HeapStats, LARGE_BIN};
use crate::sync::Ordering;
use crate::sys::os;
use crate::topology::raw::MAX_NODES;
use serde::{Deserialize, Serialize};

/// One size class in a [`Stats`] snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassStats {
    /// Block size of the class in bytes.
    pub block_size: usize,
    /// Blocks allocated since the start.
    pub allocs: u64,
    /// Blocks freed since the start.
    pub frees: u64,
    /// Blocks live now.
    pub live: u64,
}

/// One NUMA node in a [`Stats`] snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// The node's number.
    pub node: u32,
    /// Bytes in live blocks whose memory is on this node.
    pub bytes_live: i64,
    /// Bytes committed on this node.
    pub bytes_committed: u64,
    /// Frees of this node's blocks by threads running on another node.
    pub cross_node_frees: u64,
}

/// One scope label in a [`Stats`] snapshot (see [`place_labeled`](crate::place_labeled)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelStats {
    /// The label (`"other"`: the labels past the table's size).
    pub label: String,
    /// Bytes in live blocks allocated in scopes with this label (block sizes, as
    /// [`Stats::bytes_live`]), wherever and whenever they were freed.
    pub bytes_live: i64,
    /// The same per NUMA node the label's scopes placed them on (nodes it used).
    pub nodes: Vec<LabelNodeStats>,
}

/// One node of a [`LabelStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelNodeStats {
    /// The node's number.
    pub node: u32,
    /// Bytes in live blocks of the label on this node.
    pub bytes_live: i64,
}

/// A snapshot of the allocator's state, from [`stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes in live blocks (block sizes, so including in-class rounding).
    pub bytes_live: u64,
    /// Bytes handed to pages and spans and not purged since: an upper bound on resident.
    pub bytes_committed: u64,
    /// Bytes of address space mapped.
    pub bytes_reserved: u64,
    /// Normal (4 MiB) segments mapped.
    pub segments: u64,
    /// Of those, empty ones waiting in the node pools.
    pub segments_pooled: u64,
    /// Of those, ones left behind by exited threads and not yet adopted.
    pub segments_abandoned: u64,
    /// Of those, ones a fork child quarantined: held by a thread the fork stopped inside a
    /// slow path, so possibly torn; never reused nor unmapped, frees into them dropped.
    #[serde(default)]
    pub segments_quarantined: u64,
    /// Bytes those quarantined segments keep mapped.
    #[serde(default)]
    pub bytes_quarantined: u64,
    /// Frees into quarantined segments (dropped: their blocks are never handed out again).
    #[serde(default)]
    pub frees_quarantined: u64,
    /// Per size class, smallest first (only classes ever used).
    pub classes: Vec<ClassStats>,
    /// Large objects (own page inside a segment) allocated, freed, and their live bytes.
    pub large_allocs: u64,
    /// Large objects freed.
    pub large_frees: u64,
    /// Bytes of live large objects.
    pub large_bytes_live: u64,
    /// Huge objects (own mapping) allocated.
    pub huge_allocs: u64,
    /// Huge objects freed.
    pub huge_frees: u64,
    /// Bytes of live huge objects.
    pub huge_bytes_live: u64,
    /// Frees of blocks that another thread owned.
    pub remote_frees: u64,
    /// Pages left behind by exiting threads.
    pub pages_abandoned: u64,
    /// Pages taken over again by live threads.
    pub pages_adopted: u64,
    /// Purges (madvise or unmap of idle memory).
    pub purges: u64,
    /// Bytes those purges returned.
    pub purged_bytes: u64,
    /// Purges of a thread heap's due memory done on its owner's behalf (between its slow
    /// paths) by the background purger, or by another thread's collection (the default
    /// configuration): a thread that frees memory and then waits does not keep it.
    pub purges_for_others: u64,
    /// Full pages of a quiet thread (one that has not collected for a purge delay) that such
    /// a pass gave back to their segment, having taken in the frees other threads made into
    /// them: results a waiting worker handed out and another thread freed.
    pub full_pages_taken_in: u64,
    /// mmap calls the kernel refused.
    pub map_failures: u64,
    /// Per NUMA node (nodes that ever held memory).
    pub nodes: Vec<NodeStats>,
    /// Per scope label (labels that ever allocated), in the order they were first used.
    /// Their blocks count in `bytes_live` and `nodes` too.
    #[serde(default)]
    pub labels: Vec<LabelStats>,
}

/// Sums kept on the stack, so the exit printer needs no allocation.
struct Totals {
    allocs: [u64; NBINS + 1],
    frees: [u64; NBINS + 1],
    large_alloc_bytes: u64,
    large_free_bytes: u64,
    huge_allocs: u64,
    huge_frees: u64,
    huge_alloc_bytes: u64,
    huge_free_bytes: u64,
    remote_frees: u64,
    node_net: [i64; MAX_NODES],
}

fn totals() -> Totals {
    let mut t = Totals {
        allocs: [0; NBINS + 1],
        frees: [0; NBINS + 1],
        large_alloc_bytes: 0,
        large_free_bytes: 0,
        huge_allocs: 0,
        huge_frees: 0,
        huge_alloc_bytes: 0,
        huge_free_bytes: 0,
        remote_frees: 0,
        node_net: [0; MAX_NODES],
    };
    // Nothing in this closure allocates: the registry lock is held.
    thread::for_each_stats(|s: &HeapStats, node| {
        if node.is_none() {
            // The retired totals (called last, still under the registry lock): a heap's
            // exit or move (`retire_counters`) folds its net into them under that lock, so
            // read here they hold exactly the heaps the walk did not see. Read after the
            // lock is let go, a fold in between counted that heap's net twice (review rev35:
            // 2 MiB below zero for a thread that had freed 2 MiB of another's blocks).
            for (d, r) in t.node_net.iter_mut().zip(&thread::RETIRED_NET_BY_NODE) {
                *d = d.wrapping_add(r.load(Ordering::Relaxed));
            }
        }
        if let Some(n) = node {
            let n = (n as usize).min(MAX_NODES - 1);
            let (net, far) = s.net_and_far();
            t.node_net[n] = t.node_net[n].wrapping_add(net);
            // Its far pages' blocks, on their own nodes (the same read of `far_net`).
            for (d, f) in t.node_net.iter_mut().zip(far) {
                *d = d.wrapping_add(f);
            }
        }
        for (d, a) in t.allocs.iter_mut().zip(s.alloc_counts()) {
            *d = d.wrapping_add(a);
        }
        for (d, f) in t.frees.iter_mut().zip(&s.frees) {
            *d = d.wrapping_add(f.load(Ordering::Relaxed));
        }
        let add = |d: &mut u64, c: &crate::sync::AtomicU64| {
            *d = d.wrapping_add(c.load(Ordering::Relaxed))
        };
        add(&mut t.large_alloc_bytes, &s.large_alloc_bytes);
        add(&mut t.large_free_bytes, &s.large_free_bytes);
        add(&mut t.huge_allocs, &s.huge_allocs);
        add(&mut t.huge_frees, &s.huge_frees);
        add(&mut t.huge_alloc_bytes, &s.huge_alloc_bytes);
        add(&mut t.huge_free_bytes, &s.huge_free_bytes);
        add(&mut t.remote_frees, &s.remote_frees);
    });
    t
}

/// Takes a snapshot. Counters of different threads are read one after the other, so a
/// snapshot taken while other threads allocate is consistent only to within their activity.
pub fn stats() -> Stats {
    // Frees of a node's blocks by threads of other nodes, read before the heaps' counters:
    // a free counted here came after its block's allocation, which the walk then sees. Read
    // after it, a reader held up between the two counted frees of blocks allocated since the
    // walk (review rev35: hundreds of MB below zero); now such a lag can only over-state.
    let cross_freed: [u64; MAX_NODES] =
        core::array::from_fn(|n| thread::CROSS_FREED_BYTES[n].load(Ordering::Acquire));
    let t = totals();
    // The live bytes moved between nodes, read with the totals, before anything here
    // allocates: an allocation of this thread's (the classes' and nodes' vectors below) can
    // take a slow path whose collection gives back a moved large page, which books its bytes
    // back from the node it moved to (review rev48: read node by node between the pushes,
    // the nodes' live bytes came out a large page above the total, 192 to 448 KiB).
    let moved: [i64; MAX_NODES] = core::array::from_fn(|n| {
        crate::heap::segment::MOVED_LIVE_BY_NODE[n].load(Ordering::Relaxed)
    });
    let (segments, pooled, abandoned) = thread::segment_counts();
    let mut s = Stats {
        bytes_committed: os::COMMITTED.load(Ordering::Relaxed) as u64,
        bytes_reserved: os::RESERVED.load(Ordering::Relaxed) as u64,
        segments: segments as u64,
        segments_pooled: pooled as u64,
        segments_abandoned: abandoned as u64,
        segments_quarantined: SEGMENTS_QUARANTINED.load(Ordering::Relaxed) as u64,
        bytes_quarantined: BYTES_QUARANTINED.load(Ordering::Relaxed) as u64,
        frees_quarantined: FREES_QUARANTINED.load(Ordering::Relaxed) as u64,
        large_allocs: t.allocs[LARGE_BIN],
        large_frees: t.frees[LARGE_BIN],
        large_bytes_live: t.large_alloc_bytes.saturating_sub(t.large_free_bytes),
        huge_allocs: t.huge_allocs,
        huge_frees: t.huge_frees,
        huge_bytes_live: t.huge_alloc_bytes.saturating_sub(t.huge_free_bytes),
        remote_frees: t.remote_frees,
        pages_abandoned: PAGES_ABANDONED.load(Ordering::Relaxed) as u64,
        pages_adopted: PAGES_ADOPTED.load(Ordering::Relaxed) as u64,
        purges: os::PURGES.load(Ordering::Relaxed),
        purged_bytes: os::PURGED_BYTES.load(Ordering::Relaxed),
        purges_for_others: thread::PASS_PURGES.load(Ordering::Relaxed),
        full_pages_taken_in: thread::FULL_TAKEN_IN.load(Ordering::Relaxed),
        map_failures: os::MAP_FAILURES.load(Ordering::Relaxed),
        ..Default::default()
    };
    let mut live = s.large_bytes_live + s.huge_bytes_live;
    for bin in 0..NBINS {
        if t.allocs[bin] == 0 && t.frees[bin] == 0 {
            continue;
        }
        let n = t.allocs[bin].saturating_sub(t.frees[bin]);
        live += n * bin_size(bin) as u64;
        s.classes.push(ClassStats {
            block_size: bin_size(bin),
            allocs: t.allocs[bin],
            frees: t.frees[bin],
            live: n,
        });
    }
    s.bytes_live = live;
    // Simulated nodes (TIERALLOC_SIMULATE_NODES) are all shown, used or not.
    let topo = crate::topology::discover::get();
    let always = if topo.simulated() { topo.nodes } else { 1 };
    // `node_net` holds the live heaps' and the retired totals' nets, read under one lock.
    for (n, own_net) in t.node_net.iter().enumerate() {
        let committed = COMMITTED_BY_NODE[n].load(Ordering::Relaxed) as u64;
        let net = own_net + moved[n] - cross_freed[n] as i64;
        let cross = thread::CROSS_FREES[n].load(Ordering::Relaxed);
        if always & (1 << n) != 0 || committed != 0 || net != 0 || cross != 0 {
            s.nodes.push(NodeStats {
                node: n as u32,
                bytes_live: net,
                bytes_committed: committed,
                cross_node_frees: cross,
            });
        }
    }
    s.labels = labels();
    s
}

/// The live bytes of every scope label, per node (each label heap locked and collected in
/// turn: see `heap::thread::labels`).
fn labels() -> Vec<LabelStats> {
    let mut out: Vec<LabelStats> = Vec::new();
    let mut at = [usize::MAX; thread::MAX_LABELS];
    thread::for_each_label_live(|slot, node, bytes| {
        let i = if at[slot] == usize::MAX {
            at[slot] = out.len();
            out.push(LabelStats {
                label: thread::label_name(slot).unwrap_or("").to_string(),
                ..Default::default()
            });
            out.len() - 1
        } else {
            at[slot]
        };
        out[i].bytes_live += bytes;
        out[i].nodes.push(LabelNodeStats {
            node,
            bytes_live: bytes,
        });
    });
    out
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn write_table(w: &mut dyn core::fmt::Write, s: &Stats) -> core::fmt::Result {
    writeln!(w, "tieralloc statistics")?;
    writeln!(
        w,
        "  live        {:>12} B  ({:.1} MiB)",
        s.bytes_live,
        mib(s.bytes_live)
    )?;
    writeln!(
        w,
        "  committed   {:>12} B  ({:.1} MiB)",
        s.bytes_committed,
        mib(s.bytes_committed)
    )?;
    writeln!(
        w,
        "  reserved    {:>12} B  ({:.1} MiB)",
        s.bytes_reserved,
        mib(s.bytes_reserved)
    )?;
    writeln!(
        w,
        "  segments    {:>12}  ({} pooled, {} abandoned)",
        s.segments, s.segments_pooled, s.segments_abandoned
    )?;
    if s.segments_quarantined != 0 {
        writeln!(
            w,
            "  quarantined {:>12} segments ({:.1} MiB) since a fork, {} frees into them dropped",
            s.segments_quarantined,
            mib(s.bytes_quarantined),
            s.frees_quarantined
        )?;
    }
    writeln!(
        w,
        "  large       {:>12} allocs {:>12} frees {:>12} B live",
        s.large_allocs, s.large_frees, s.large_bytes_live
    )?;
    writeln!(
        w,
        "  huge        {:>12} allocs {:>12} frees {:>12} B live",
        s.huge_allocs, s.huge_frees, s.huge_bytes_live
    )?;
    writeln!(w, "  remote frees {:>11}", s.remote_frees)?;
    writeln!(
        w,
        "  pages       {:>12} abandoned {:>9} adopted {:>9} full taken in for quiet threads",
        s.pages_abandoned, s.pages_adopted, s.full_pages_taken_in
    )?;
    writeln!(
        w,
        "  purges      {:>12} ({:.1} MiB)   mmap failures {}",
        s.purges,
        mib(s.purged_bytes),
        s.map_failures
    )?;
    for n in &s.nodes {
        writeln!(
            w,
            "  node {:>3}    live {:>12} B  committed {:>12} B  cross-node frees {}",
            n.node, n.bytes_live, n.bytes_committed, n.cross_node_frees
        )?;
    }
    for l in &s.labels {
        writeln!(w, "  scope {:<16} live {:>12} B", l.label, l.bytes_live)?;
    }
    writeln!(
        w,
        "  {:>10} {:>14} {:>14} {:>12}",
        "class", "allocs", "frees", "live"
    )?;
    for c in &s.classes {
        writeln!(
            w,
            "  {:>10} {:>14} {:>14} {:>12}",
            c.block_size, c.allocs, c.frees, c.live
        )?;
    }
    Ok(())
}

impl core::fmt::Display for Stats {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write_table(f, self)
    }
}

/// The `atexit` hook behind `TIERALLOC_SHOW_STATS=1`.
pub(crate) extern "C" fn print_at_exit() {
    // Building the snapshot allocates a small Vec; at exit that is fine (the allocator is
    // fully working), and the text itself goes through a stack buffer.
    let s = stats();
    let mut buf = os::StackBuf::<16384>::new();
    let _ = write_table(&mut buf, &s);
    os::write_stderr(buf.as_bytes());
}
