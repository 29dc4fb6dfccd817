//! Explicit placement: [`Placed`], an allocator-api2 `Allocator` whose memory lands on a chosen
//! NUMA node, on the caller's node, on a memory tier, or interleaved page by page over nodes
//! (evenly, or weighted across tiers).
//!
//! Owns: the handle, its validation and its error type, the hot/cold hints, the per-handle
//! choice of the kernel's memory policy (`preferred`, `bound`), and what a
//! placement scope on a handle asks of the heap (`Placed::scope`). May touch: `heap::thread`
//! (node_alloc and free: per-node heaps whose segments are bound to their node; the `Scope`
//! type; `admit_making_room`: the tier budgets, after the thread's huge cache made way),
//! `heap::route` (tier budgets), `init` (start-up), `sys::os` (its own mappings for interleave, madvise),
//! `sys::numa` (mbind, move_pages), `topology` (which nodes exist, have memory, are allowed;
//! the kernel's interleave weights). Never places memory silently elsewhere and
//! never panics: a request that cannot be honoured is an `Err` at construction or an
//! `AllocError` at allocation.

use crate::heap::thread::{Scope, Spread};
use crate::sys::{numa, os};
use crate::topology::discover;
use crate::topology::home::{current_node, home_node};
use crate::topology::raw::{self as topo, MAX_NODES};
use allocator_api2::alloc::{AllocError, Allocator};
use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// Every page on this node.
    Node(u32),
    /// Every page on the allocating thread's home node (decided at each allocation).
    Local,
    /// Page by page over these nodes (its own mapping per allocation).
    Interleave(u64),
    /// Page by page over nodes in proportion to weights (its own mapping per allocation).
    Weighted(Weights),
    /// Every page on this node, with this memory policy whatever the far policy (its own
    /// mapping per allocation): `preferred()`, `bound()`.
    Mapped { node: u32, preferred: bool },
}

/// Most nodes a weighted interleave spreads over.
const MAX_WEIGHTED: usize = crate::heap::thread::MAX_SPREAD;
/// Largest weight of a weighted interleave.
const MAX_WEIGHT: u32 = 255;

/// Nodes and their weights (the first `n` entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Weights {
    nodes: [u8; MAX_WEIGHTED],
    weights: [u8; MAX_WEIGHTED],
    n: u8,
}

impl Weights {
    fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (0..self.n as usize).map(|i| (self.nodes[i] as u32, self.weights[i] as u32))
    }
    fn set(&self) -> u64 {
        self.iter().fold(0, |m, (n, _)| m | (1 << n))
    }
    /// The node of page `i` of a mapping: runs of `weight` pages per node, in order.
    fn node_of_page(&self, i: usize) -> u32 {
        let period: usize = self.iter().map(|(_, w)| w as usize).sum();
        let mut k = i % period.max(1);
        for (n, w) in self.iter() {
            if k < w as usize {
                return n;
            }
            k -= w as usize;
        }
        self.nodes[0] as u32
    }
}

/// A placement: an allocator-api2 [`Allocator`] whose memory is on a known node or nodes.
///
/// ```
/// use allocator_api2::vec::Vec;
/// let near = tieralloc::Placed::node(0).expect("node 0 exists");
/// let mut v: Vec<u64, _> = Vec::new_in(near);
/// v.extend([1, 2, 3]);
/// assert_eq!(v.iter().sum::<u64>(), 6);
/// ```
///
/// Blocks from `node`, `local`, `tier` and `far` handles come from per-node heaps; interleaved
/// blocks (plain or weighted) and those of `preferred()` and `bound()` handles are whole
/// mappings of their own. A block may be freed through any `Placed` handle, from any thread,
/// with the layout it was allocated with: every handle frees by the block. Not through the
/// global allocator (`std::alloc::dealloc`), which takes its own blocks only.
///
/// With a tier budget set (`TIERALLOC_TIER_BUDGET`, `tieralloc::tiers::set_policy`), a
/// `node`, `local`, `tier` or `far` allocation that its node's tier cannot take within the
/// budget fails with `AllocError` (explicit requests never spill).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Placed {
    kind: Kind,
}

/// Why a placement cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlacementError {
    /// The node does not exist on this machine.
    NoSuchNode {
        /// The node asked for.
        node: u32,
        /// The nodes that exist (ids below 64).
        nodes: u64,
    },
    /// The node exists but has no memory (a CPU-only node).
    NoMemory {
        /// The node asked for.
        node: u32,
    },
    /// The node is outside the process's allowed nodes (its cpuset's Mems_allowed).
    NotAllowed {
        /// The node asked for.
        node: u32,
        /// The nodes the process may use.
        allowed: u64,
    },
    /// Binding is off (TIERALLOC_NUMA=off) on a machine with several nodes, so placement
    /// cannot be guaranteed.
    BindingOff {
        /// The node asked for.
        node: u32,
    },
    /// An interleave over no nodes.
    NoNodes,
    /// The tier does not exist.
    NoSuchTier {
        /// The tier asked for.
        tier: usize,
        /// How many tiers there are.
        tiers: usize,
    },
    /// A weighted interleave with a weight of 0 or over 255, a node listed twice, or more
    /// than 8 nodes.
    BadWeights {
        /// The offending node.
        node: u32,
        /// Its weight.
        weight: u32,
    },
}

struct NodeList(u64);

impl fmt::Display for NodeList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for n in topo::iter(self.0) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{n}")?;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PlacementError::NoSuchNode { node, nodes } => write!(
                f,
                "NUMA node {node} does not exist (this machine has nodes {})",
                NodeList(nodes)
            ),
            PlacementError::NoMemory { node } => {
                write!(f, "NUMA node {node} has no memory")
            }
            PlacementError::NotAllowed { node, allowed } => write!(
                f,
                "NUMA node {node} is outside this process's allowed nodes (Mems_allowed: {})",
                NodeList(allowed)
            ),
            PlacementError::BindingOff { node } => write!(
                f,
                "cannot place memory on NUMA node {node}: binding is off (TIERALLOC_NUMA=off)"
            ),
            PlacementError::NoNodes => f.write_str("cannot interleave over an empty node list"),
            PlacementError::NoSuchTier { tier, tiers } => write!(
                f,
                "memory tier {tier} does not exist (this machine has {tiers} tier{})",
                if tiers == 1 { "" } else { "s" }
            ),
            PlacementError::BadWeights { node, weight } => write!(
                f,
                "cannot interleave with weight {weight} for NUMA node {node}: weights are 1 to \
                 {MAX_WEIGHT}, each node once, at most {MAX_WEIGHTED} nodes"
            ),
        }
    }
}

impl std::error::Error for PlacementError {}

fn check_node(node: u32) -> Result<(), PlacementError> {
    crate::init::init_once();
    let t = discover::get();
    if node as usize >= MAX_NODES || t.nodes & (1 << node) == 0 {
        return Err(PlacementError::NoSuchNode {
            node,
            nodes: t.nodes,
        });
    }
    if t.mem_nodes & (1 << node) == 0 {
        return Err(PlacementError::NoMemory { node });
    }
    if t.mems_allowed & (1 << node) == 0 {
        return Err(PlacementError::NotAllowed {
            node,
            allowed: t.mems_allowed,
        });
    }
    if !numa::BIND_ENABLED.load(core::sync::atomic::Ordering::Relaxed) && t.nodes.count_ones() > 1 {
        return Err(PlacementError::BindingOff { node });
    }
    Ok(())
}

impl Placed {
    /// Memory on NUMA node `id`, every page bound to it (strictly: an allocation that the
    /// node cannot hold fails rather than spills).
    ///
    /// # Errors
    /// The node does not exist, has no memory, or is outside the process's allowed nodes;
    /// or binding is off on a multi-node machine.
    pub fn node(id: u32) -> Result<Placed, PlacementError> {
        check_node(id)?;
        Ok(Placed {
            kind: Kind::Node(id),
        })
    }

    /// Memory on the node of the thread that allocates (its home node: the node it runs on,
    /// within TIERALLOC_NODES), decided at each allocation.
    ///
    /// # Errors
    /// Binding is off on a multi-node machine.
    pub fn local() -> Result<Placed, PlacementError> {
        check_node(home_node())?;
        Ok(Placed { kind: Kind::Local })
    }

    /// Memory interleaved page by page over `ids` (MPOL_INTERLEAVE), for large
    /// bandwidth-bound buffers. Each allocation is a mapping of its own (rounded up to whole
    /// pages), so use it for big buffers only.
    ///
    /// # Errors
    /// An empty list, or any node that [`Placed::node`] would refuse.
    pub fn interleave(ids: &[u32]) -> Result<Placed, PlacementError> {
        if ids.is_empty() {
            return Err(PlacementError::NoNodes);
        }
        let mut set = 0u64;
        for &id in ids {
            check_node(id)?;
            set |= 1 << id;
        }
        Ok(Placed {
            kind: Kind::Interleave(set),
        })
    }

    /// Memory spread page by page over nodes in proportion to their weights, for
    /// bandwidth-bound buffers across tiers: `&[(0, 1), (2, 4)]` puts one page on node 0 for
    /// every four on node 2. Each allocation is a mapping of its own (whole pages).
    ///
    /// Where the kernel has MPOL_WEIGHTED_INTERLEAVE (Linux 6.9+) and its weights
    /// (/sys/kernel/mm/mempolicy/weighted_interleave/nodeN, system-wide, set by root) are in the
    /// same proportion, the kernel interleaves as pages are first touched. Otherwise tieralloc
    /// places each page itself at allocation: it touches the mapping (zero-filled, as fresh
    /// memory is) and moves every page to its node with move_pages(2), in runs of `weight`
    /// pages per node.
    ///
    /// # Errors
    /// An empty list, a weight of 0 or over 255, a node twice, more than 8 nodes, or any node
    /// that [`Placed::node`] would refuse.
    pub fn interleave_weighted(nodes: &[(u32, u32)]) -> Result<Placed, PlacementError> {
        if nodes.is_empty() {
            return Err(PlacementError::NoNodes);
        }
        let mut w = Weights {
            nodes: [0; MAX_WEIGHTED],
            weights: [0; MAX_WEIGHTED],
            n: 0,
        };
        for &(node, weight) in nodes {
            check_node(node)?;
            let bad = PlacementError::BadWeights { node, weight };
            if weight == 0 || weight > MAX_WEIGHT || w.n as usize == MAX_WEIGHTED {
                return Err(bad);
            }
            if w.set() & (1 << node) != 0 {
                return Err(bad);
            }
            w.nodes[w.n as usize] = node as u8;
            w.weights[w.n as usize] = weight as u8;
            w.n += 1;
        }
        Ok(Placed {
            kind: Kind::Weighted(w),
        })
    }

    /// [`Placed::interleave_weighted`] over tiers: `weights[k]` pages on tier k's node nearest
    /// the calling thread for each round (`&[1, 4]`: one near page for four far ones). Tiers
    /// with weight 0 are left out.
    ///
    /// # Errors
    /// A tier that does not exist, all weights 0, or as [`Placed::interleave_weighted`].
    pub fn interleave_tiers(weights: &[u32]) -> Result<Placed, PlacementError> {
        let mut list = [(0u32, 0u32); MAX_WEIGHTED];
        let mut n = 0;
        for (tier, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            let node = Placed::tier(tier)?
                .node_id()
                .ok_or(PlacementError::NoNodes)?;
            if n == MAX_WEIGHTED {
                return Err(PlacementError::BadWeights { node, weight: w });
            }
            list[n] = (node, w);
            n += 1;
        }
        Placed::interleave_weighted(&list[..n])
    }

    /// Memory on tier `n` (0 is the fastest; see `tieralloc::topology().tiers`): the node of
    /// that tier nearest to the calling thread's node, chosen now.
    ///
    /// # Errors
    /// The tier does not exist, or its nearest node is refused as by [`Placed::node`].
    pub fn tier(n: usize) -> Result<Placed, PlacementError> {
        crate::init::init_once();
        let t = discover::get();
        if n >= t.n_tiers {
            return Err(PlacementError::NoSuchTier {
                tier: n,
                tiers: t.n_tiers,
            });
        }
        let here = current_node() as usize;
        let set = t.tiers[n] & t.mems_allowed;
        let node = t
            .nearest_in(if set != 0 { set } else { t.tiers[n] }, here)
            .ok_or(PlacementError::NoSuchTier {
                tier: n,
                tiers: t.n_tiers,
            })?;
        Placed::node(node)
    }

    /// Memory on the slowest tier (far memory, such as a CXL expander): its node nearest to
    /// the calling thread's node. On a one-tier machine this is the local tier.
    ///
    /// # Errors
    /// As [`Placed::tier`].
    pub fn far() -> Result<Placed, PlacementError> {
        let n = discover::get().n_tiers;
        Placed::tier(n.saturating_sub(1))
    }

    /// Memory for data that is rarely touched: the slowest tier (far memory, such as a CXL
    /// expander), its node nearest to the calling thread, when the machine has more than one
    /// tier; the calling thread's node otherwise. Never an error, so that code written for a
    /// machine with far memory runs unchanged on one without: where the far node cannot be
    /// used (outside the allowed nodes, binding off), this is [`Placed::local`]'s placement.
    ///
    /// ```
    /// let cold = tieralloc::Placed::cold();
    /// let _g = tieralloc::place(cold);
    /// let archive: Vec<u64> = (0..1000).collect(); // on the far tier, if there is one
    /// # assert_eq!(archive.len(), 1000);
    /// ```
    pub fn cold() -> Placed {
        crate::init::init_once();
        let n = discover::get().n_tiers;
        if n > 1 {
            if let Ok(p) = Placed::tier(n - 1) {
                return p;
            }
        }
        Placed { kind: Kind::Local }
    }

    /// Memory for data that is touched often: the fastest tier's node nearest to the calling
    /// thread when the machine has tiers (on a machine whose threads all run on near nodes,
    /// the thread's own node), the calling thread's node otherwise. Never an error (see
    /// [`Placed::cold`]).
    pub fn hot() -> Placed {
        crate::init::init_once();
        let t = discover::get();
        if t.n_tiers > 1 {
            let home = home_node();
            if t.tier_of(home as usize) == Some(0) {
                return Placed { kind: Kind::Local };
            }
            if let Ok(p) = Placed::tier(0) {
                return p;
            }
        }
        Placed { kind: Kind::Local }
    }

    /// This placement with the kernel free to move its memory: every allocation is a mapping
    /// of its own (whole pages, so for big buffers only, as an interleave), faulted in at
    /// once on the handle's node under MPOL_PREFERRED (on another node when it is full,
    /// instead of failing) and then given the default policy back, pages left where they
    /// are: the kernel's own tiering (NUMA balancing in its memory-tiering mode), which
    /// promotes pages of default-policy ranges only, may move hot pages to a faster node, and
    /// `move_pages(2)` or `migratepages` may move them too (see docs/tiers.md, "Living with
    /// the kernel's tiering"). The whole allocation is resident from the start. On a machine
    /// whose memory is all on the handle's node, or with binding off, it stays a plain
    /// MPOL_PREFERRED mapping. Use it for far buffers that may spill when the far node is full
    /// or that the kernel may promote; [`Placed::bound`] is the strict form.
    ///
    /// Only single-node handles (`node`, `tier`, `far`, and `cold`/`hot` when they name a node)
    /// change; others are returned as they are (a local handle follows the thread, an
    /// interleave has its own policy). In a placement scope ([`crate::place`]) the handle acts
    /// as its node's handle: scoped allocations come from the node's heap, whose memory
    /// follows the process-wide `TIERALLOC_FAR_POLICY`. These blocks are not counted in
    /// `stats()` nor in tier budgets; like every `Placed` block they may be freed through any
    /// handle.
    ///
    /// ```
    /// use allocator_api2::vec::Vec;
    /// let far = tieralloc::Placed::far().expect("a far tier, or the local one").preferred();
    /// assert!(far.is_preferred());
    /// let mut v: Vec<u8, _> = Vec::with_capacity_in(1 << 20, far);
    /// v.resize(1 << 20, 7);
    /// ```
    #[must_use]
    pub fn preferred(self) -> Placed {
        self.mapped(true)
    }

    /// This placement bound strictly (MPOL_BIND): every allocation is a mapping of its own
    /// (whole pages), whose pages the kernel puts on the handle's node only (an allocation the
    /// node cannot back fails when touched rather than spills) and never moves on its own,
    /// whatever `TIERALLOC_FAR_POLICY` says. The counterpart of [`Placed::preferred`], with
    /// the same rules.
    #[must_use]
    pub fn bound(self) -> Placed {
        self.mapped(false)
    }

    fn mapped(self, preferred: bool) -> Placed {
        match self.kind {
            Kind::Node(node) | Kind::Mapped { node, .. } => Placed {
                kind: Kind::Mapped { node, preferred },
            },
            _ => self,
        }
    }

    /// Whether the handle is a [`Placed::preferred`] one.
    pub fn is_preferred(&self) -> bool {
        matches!(
            self.kind,
            Kind::Mapped {
                preferred: true,
                ..
            }
        )
    }

    /// What a placement scope on this handle asks of the thread's heap (see `scope`): the
    /// node for node, tier and far handles, the thread's node for local ones, a spread over
    /// the nodes in proportion to their weights (1 each for a plain interleave) otherwise.
    pub(crate) fn scope(&self) -> Scope {
        match self.kind {
            Kind::Node(n) | Kind::Mapped { node: n, .. } => Scope::Node(n),
            Kind::Local => Scope::Local,
            Kind::Interleave(m) => Scope::Even { set: m, cursor: 0 },
            Kind::Weighted(w) => Scope::Weighted(Spread {
                nodes: w.nodes,
                weights: w.weights,
                n: w.n,
                cursor: 0,
            }),
        }
    }

    /// The node this handle places on, if it is a single fixed node.
    pub fn node_id(&self) -> Option<u32> {
        match self.kind {
            Kind::Node(n) | Kind::Mapped { node: n, .. } => Some(n),
            _ => None,
        }
    }

    /// The nodes an interleave handle spreads over (empty for other kinds).
    pub fn interleave_nodes(&self) -> Vec<u32> {
        match self.kind {
            Kind::Interleave(m) => topo::iter(m).map(|n| n as u32).collect(),
            Kind::Weighted(w) => w.iter().map(|(n, _)| n).collect(),
            _ => Vec::new(),
        }
    }

    fn alloc(&self, layout: Layout, zero: bool) -> Result<NonNull<[u8]>, AllocError> {
        let size = layout.size();
        if size == 0 {
            // A dangling, aligned pointer (allocator-api2's contract for zero-sized blocks).
            let p = NonNull::new(layout.align() as *mut u8).ok_or(AllocError)?;
            return Ok(NonNull::slice_from_raw_parts(p, 0));
        }
        let (p, len) = match self.kind {
            Kind::Node(n) => {
                let Some(_room) = crate::heap::thread::admit_making_room(n, size) else {
                    return Err(AllocError);
                };
                (node_alloc(n, size, layout.align(), zero), size)
            }
            Kind::Local => {
                let n = home_node();
                let Some(_room) = crate::heap::thread::admit_making_room(n, size) else {
                    return Err(AllocError);
                };
                (node_alloc(n, size, layout.align(), zero), size)
            }
            Kind::Weighted(w) => {
                let len = map_len(layout).ok_or(AllocError)?;
                let p = map_for_handle(len, layout.align());
                if p.is_null() {
                    return Err(AllocError);
                }
                if place_weighted(p, len, &w).is_err() {
                    // SAFETY: our fresh mapping of `len` bytes, never handed out.
                    unsafe { os::unmap(p, len) };
                    return Err(AllocError);
                }
                (p, len)
            }
            Kind::Mapped { node, preferred } => {
                let len = map_len(layout).ok_or(AllocError)?;
                let p = map_for_handle(len, layout.align());
                if p.is_null() {
                    return Err(AllocError);
                }
                let policy = if preferred {
                    numa::Policy::Preferred
                } else {
                    numa::Policy::Bind
                };
                if numa::bind_with(p, len, node, policy).is_err() {
                    // SAFETY: our fresh mapping of `len` bytes, never handed out.
                    unsafe { os::unmap(p, len) };
                    return Err(AllocError);
                }
                if preferred {
                    // Faulted in on the node, then the default policy: the kernel's tiering
                    // may promote it (a refusal leaves it MPOL_PREFERRED: placed, not
                    // promotable).
                    numa::populate_then_default(p, len, node);
                }
                (p, len)
            }
            Kind::Interleave(set) => {
                let len = map_len(layout).ok_or(AllocError)?;
                let p = map_for_handle(len, layout.align());
                if p.is_null() {
                    return Err(AllocError);
                }
                if numa::interleave(p, len, set).is_err() {
                    // SAFETY: our fresh mapping of `len` bytes, never handed out.
                    unsafe { os::unmap(p, len) };
                    return Err(AllocError);
                }
                (p, len)
            }
        };
        let p = NonNull::new(p).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, len))
    }
}

/// The bytes an interleave mapping of `layout` takes: whole pages.
fn map_len(layout: Layout) -> Option<usize> {
    layout
        .size()
        .checked_add(os::OS_PAGE - 1)
        .map(|s| s & !(os::OS_PAGE - 1))
        .filter(|s| *s <= isize::MAX as usize / 2)
}

/// Whether the kernel's weighted-interleave weights for `w`'s nodes are in `w`'s proportions
/// (read from /sys/kernel/mm/mempolicy/weighted_interleave/nodeN without allocating).
fn kernel_weights_match(w: &Weights) -> bool {
    let mut first: Option<(u32, u32)> = None;
    for (node, want) in w.iter() {
        let Some(have) = crate::topology::sysfs::weighted_interleave_weight(node) else {
            return false;
        };
        match first {
            None => first = Some((want, have)),
            // want/have must be the same for every node: want * have0 == want0 * have.
            Some((w0, h0)) => {
                if want as u64 * h0 as u64 != w0 as u64 * have as u64 {
                    return false;
                }
            }
        }
    }
    true
}

/// Places the fresh mapping `[p, p+len)` over `w`'s nodes: the kernel's weighted interleave
/// where it has it with the same weights, else each page moved to its node now.
fn place_weighted(p: *mut u8, len: usize, w: &Weights) -> Result<(), i32> {
    os::no_huge_pages(p, len);
    if w.n == 1 {
        return numa::mbind(p, len, numa::Policy::Bind, &numa::mask_of(w.set()), 0);
    }
    if numa::weighted_interleave_supported() && kernel_weights_match(w) {
        return numa::mbind(
            p,
            len,
            numa::Policy::WeightedInterleave,
            &numa::mask_of(w.set()),
            0,
        );
    }
    let pages = len / os::OS_PAGE;
    let mut node_of = |i: usize| {
        let a = (p as usize + i * os::OS_PAGE) as *mut u8;
        // SAFETY: a page of our fresh mapping; writing the zero it holds faults it in
        // without changing its contents.
        unsafe { a.write_volatile(0) };
        w.node_of_page(i) as libc::c_int
    };
    numa::move_pages_batched(p as usize, pages, Some(&mut node_of), |i, s| {
        if s != w.node_of_page(i) as libc::c_int {
            return Err(libc::ENOMEM);
        }
        Ok(())
    })
}

/// A fresh mapping of `len` bytes aligned to `align` (at least a page) for an interleave or
/// mapped handle; refused (out of address space), once more after the calling thread's huge
/// cache gave its mappings back (review rev21).
fn map_for_handle(len: usize, align: usize) -> *mut u8 {
    crate::heap::thread::retry_making_room(|| os::map_aligned(len, align.max(os::OS_PAGE), None))
}

/// Memory on `node` from the heap's per-node heaps (null on failure).
fn node_alloc(node: u32, size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: `align` comes from a Layout, so it is a power of two.
    unsafe { crate::heap::thread::node_alloc(node, size, align, zero) }
}

// SAFETY: blocks stay valid until deallocated (they come from the heap's per-node heaps,
// which never reuse a block before it is freed, or from a private mapping); every handle
// frees by the block (a heap block through the heap's `free`, which takes any of its blocks
// from any thread; a mapping of its own by unmapping it, whose length the layout gives
// back), so a block from one copy may be freed through another.
unsafe impl Allocator for Placed {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.alloc(layout, false)
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.alloc(layout, true)
    }

    /// # Safety
    /// [`Allocator::deallocate`]'s contract.
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        // By the block, not the handle (review rev27): `preferred()` and `bound()` return a
        // handle that is not one node as it is, so a handle made by them, which the docs let
        // free their blocks, may be of either family. The segment map tells a heap block (in
        // a live segment) from a mapping of its own (outside every segment).
        if crate::heap::segment::contains(ptr.as_ptr()) {
            // SAFETY: the caller hands back a live block of a `Placed` handle: in a segment,
            // so from node_alloc, which the heap's free takes from any thread.
            unsafe { crate::heap::thread::free(ptr.as_ptr()) };
        } else if let Some(len) = map_len(layout) {
            // SAFETY: the caller hands back a live block of a `Placed` handle with this
            // layout: outside every segment, so a whole mapping of ours of `len` bytes.
            unsafe { os::unmap(ptr.as_ptr(), len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_nodes_are_refused_with_their_number() {
        let e = Placed::node(99).unwrap_err();
        assert!(e.to_string().contains("node 99"), "{e}");
        assert!(Placed::interleave(&[]).is_err());
        assert!(Placed::tier(40).is_err());
        assert!(Placed::interleave_weighted(&[(0, 0)]).is_err());
        assert!(Placed::interleave_weighted(&[(0, 1), (0, 2)]).is_err());
    }

    #[test]
    fn weighted_pages_follow_their_weights() {
        let w = Weights {
            nodes: [0, 2, 0, 0, 0, 0, 0, 0],
            weights: [1, 4, 0, 0, 0, 0, 0, 0],
            n: 2,
        };
        let got: Vec<u32> = (0..10).map(|i| w.node_of_page(i)).collect();
        assert_eq!(got, [0, 2, 2, 2, 2, 0, 2, 2, 2, 2]);
        let p = Placed::interleave_weighted(&[(0, 3)]).unwrap();
        let l = Layout::from_size_align(5 * os::OS_PAGE, 8).unwrap();
        let b = p.allocate_zeroed(l).unwrap();
        // SAFETY: a fresh block of l.size() bytes from p.
        unsafe {
            assert_eq!(*b.as_ptr().cast::<u8>().add(4 * os::OS_PAGE), 0);
            p.deallocate(b.cast(), l);
        }
    }

    #[test]
    fn zero_sized_and_interleaved_blocks_round_trip() {
        let p = Placed::interleave(&[0]).unwrap();
        let l = Layout::from_size_align(3 * os::OS_PAGE + 5, 64).unwrap();
        let b = p.allocate_zeroed(l).unwrap();
        assert!(b.len() >= l.size());
        // SAFETY: a fresh block of at least l.size() bytes.
        unsafe {
            assert_eq!(*b.as_ptr().cast::<u8>().add(100), 0);
            p.deallocate(b.cast(), l);
        }
        let z = Layout::from_size_align(0, 8).unwrap();
        let b = p.allocate(z).unwrap();
        // SAFETY: zero-sized block from this handle.
        unsafe { p.deallocate(b.cast(), z) };
    }

    #[test]
    fn preferred_and_bound_handles_map_with_their_policy() {
        let node = Placed::node(0).unwrap();
        assert!(!node.is_preferred());
        let pref = node.preferred();
        assert!(pref.is_preferred() && pref.node_id() == Some(0));
        assert_eq!(pref.bound(), node.bound());
        assert!(!node.bound().is_preferred());
        // Kinds that are not one node are left alone.
        let il = Placed::interleave(&[0]).unwrap();
        assert_eq!(il.preferred(), il);
        assert_eq!(
            Placed::local().unwrap().preferred(),
            Placed::local().unwrap()
        );
        let l = Layout::from_size_align(3 * os::OS_PAGE + 5, 64).unwrap();
        // (handle, the mode get_mempolicy reports: MPOL_PREFERRED 1, MPOL_BIND 2)
        for (h, mode) in [(pref, 1), (node.bound(), 2)] {
            let b = h.allocate_zeroed(l).unwrap();
            assert_eq!(b.len(), 4 * os::OS_PAGE);
            let p = b.as_ptr().cast::<u8>();
            assert_eq!(numa::policy_at(p), Ok(mode), "{h:?}");
            // SAFETY: a fresh block of b.len() bytes from h.
            unsafe {
                assert_eq!(*p.add(3 * os::OS_PAGE), 0);
                p.write_bytes(9, b.len());
            }
            let nodes = numa::pages_on_nodes(p, b.len()).unwrap();
            assert!(nodes.iter().all(|&n| n == 0), "{nodes:?}");
            // SAFETY: the block from h with layout l.
            unsafe { h.deallocate(NonNull::new(p).unwrap(), l) };
        }
    }
}
