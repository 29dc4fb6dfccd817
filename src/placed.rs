//! Explicit placement: [`Placed`], an allocator-api2 `Allocator` whose memory lands on a chosen
//! NUMA node, on the caller's node, on a memory tier, or interleaved page by page over nodes.
//!
//! Owns: the handle, its validation and its error type. May touch: `heap::thread` (node_alloc
//! and free: per-node heaps whose segments are bound to their node), `sys::os` (its own
//! mappings for interleave), `sys::numa` (mbind) and `topology` (which nodes exist, have
//! memory, are allowed). Never places memory silently elsewhere and never panics: a request
//! that cannot be honoured is an `Err` at construction or an `AllocError` at allocation.

use crate::sys::{numa, os};
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
/// Blocks from `node`, `local`, `tier` and `far` handles come from per-node heaps and may be
/// freed through any handle of those kinds, from any thread. Interleaved blocks are whole
/// mappings of their own and must be freed through an interleave handle.
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
        }
    }
}

impl std::error::Error for PlacementError {}

fn check_node(node: u32) -> Result<(), PlacementError> {
    crate::config::init_once();
    let t = topo::get();
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
        check_node(numa::home_node())?;
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

    /// Memory on tier `n` (0 is the fastest; see `tieralloc::topology().tiers`): the node of
    /// that tier nearest to the calling thread's node, chosen now.
    ///
    /// # Errors
    /// The tier does not exist, or its nearest node is refused as by [`Placed::node`].
    pub fn tier(n: usize) -> Result<Placed, PlacementError> {
        crate::config::init_once();
        let t = topo::get();
        if n >= t.n_tiers {
            return Err(PlacementError::NoSuchTier {
                tier: n,
                tiers: t.n_tiers,
            });
        }
        let here = numa::current_node() as usize;
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
        let n = topo::get().n_tiers;
        Placed::tier(n.saturating_sub(1))
    }

    /// The node this handle places on, if it is a single fixed node.
    pub fn node_id(&self) -> Option<u32> {
        match self.kind {
            Kind::Node(n) => Some(n),
            _ => None,
        }
    }

    /// The nodes an interleave handle spreads over (empty for other kinds).
    pub fn interleave_nodes(&self) -> Vec<u32> {
        match self.kind {
            Kind::Interleave(m) => topo::iter(m).map(|n| n as u32).collect(),
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
            Kind::Node(n) => (node_alloc(n, size, layout.align(), zero), size),
            Kind::Local => (
                node_alloc(numa::home_node(), size, layout.align(), zero),
                size,
            ),
            Kind::Interleave(set) => {
                let len = map_len(layout).ok_or(AllocError)?;
                let p = os::map_aligned(len, layout.align().max(os::OS_PAGE), None);
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

/// Memory on `node` from the heap's per-node heaps (null on failure).
fn node_alloc(node: u32, size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: `align` comes from a Layout, so it is a power of two.
    unsafe { crate::heap::thread::node_alloc(node, size, align, zero) }
}

// SAFETY: blocks stay valid until deallocated (they come from the heap's per-node heaps,
// which never reuse a block before it is freed, or from a private mapping); a handle and its
// copies all free through the same path (node kinds through the heap's `free`, which takes
// any of its blocks from any thread; interleave handles by unmapping their own mapping, whose
// length the layout gives back), so a block from one copy may be freed through another.
unsafe impl Allocator for Placed {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.alloc(layout, false)
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.alloc(layout, true)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        match self.kind {
            Kind::Interleave(_) => {
                if let Some(len) = map_len(layout) {
                    // SAFETY: the caller hands back a block this handle allocated with this
                    // layout: a whole mapping of ours of `len` bytes.
                    unsafe { os::unmap(ptr.as_ptr(), len) };
                }
            }
            // SAFETY: the caller hands back a live block from node_alloc, which the heap's
            // free takes from any thread.
            _ => unsafe { crate::heap::thread::free(ptr.as_ptr()) },
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
}
