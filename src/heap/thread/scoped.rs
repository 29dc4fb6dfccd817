//! Scoped placement, the heap's side: what a thread's scope asks for (a [`Scope`]), setting it
//! on the calling thread's heap, and the diverted allocation that serves every request of the
//! global allocator while a scope is active.
//!
//! Owns: the `Scope` type, the heap's `scope`, `scope_label` and `fast_gate` fields (the owner
//! thread alone writes them, through [`set_scope`]), [`alloc_in_scope`]. May touch: the `Heap`
//! fields (`super`), `tls` (the calling thread's heap), `node` (`node_alloc`), `labels`
//! (`label_alloc`: a labelled scope's allocations), `registry`
//! (`heap_init`: a scope's node may be the thread's own; `current_home`: a local scope's node), `large` (`admit_making_room`: the
//! tier budget, after the thread's huge cache made way), `heap::route` (the gates).
//! Nothing here allocates, panics or formats.
//!
//! The cost when no scope is active: one load on the fast path. Its size gate reads the limit
//! through the heap's `fast_gate` instead of from the static directly (callgrind: 136.2
//! instead of 135.1 instructions per alloc+free pair of mixed sizes, 164.9 and 165.0 for 64
//! bytes), which points at `route::FAST_MAX` normally and at `route::SCOPED_GATE` (0) while a
//! scope that diverts is active, so that every request falls to `alloc_generic`, which calls
//! [`alloc_in_scope`] first.

use super::labels::label_alloc;
use super::node::node_alloc;
use super::registry::{current_home, heap_init};
use super::tls::own;
use super::{HeapRef, ACTIVE};
use crate::heap::route;
use crate::sync::Ordering;

/// Where a scope puts the allocations it sees. Small (it is copied on every scope entry and
/// exit, which a placed future makes on every poll).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// No scope: the thread's heap and the tier policies decide.
    None,
    /// Every allocation on this node (its node heap).
    Node(u32),
    /// On the thread's home node, decided at each allocation.
    Local,
    /// Allocations spread evenly over a set of nodes, by bytes.
    Even {
        /// The nodes (bit n: node n).
        set: u64,
        /// Quanta placed so far in this scope (see [`SPREAD_QUANTUM`]).
        cursor: u64,
    },
    /// Allocations spread over nodes in proportion to their weights, by bytes.
    Weighted(Spread),
}

impl Scope {
    /// This scope, with the rotation of `now` (the heap's scope, which its allocations have
    /// advanced) when `now` is the same spread: what to put back in force when `now` is
    /// suspended by a nested scope and resumed after it, so that the spread goes on where it
    /// stopped rather than at its first node (review rev27).
    pub(crate) fn progressed(self, now: Scope) -> Scope {
        match (self, now) {
            (Scope::Even { set, .. }, Scope::Even { set: s, .. }) if set == s => now,
            (Scope::Weighted(a), Scope::Weighted(b))
                if a.n == b.n && a.nodes == b.nodes && a.weights == b.weights =>
            {
                now
            }
            _ => self,
        }
    }
}

/// The nodes and weights of a weighted spreading scope, and how far it has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spread {
    /// The nodes, `n` of them.
    pub(crate) nodes: [u8; MAX_SPREAD],
    /// Their weights (1 to 255).
    pub(crate) weights: [u8; MAX_SPREAD],
    /// How many nodes.
    pub(crate) n: u8,
    /// Quanta placed so far in this scope (see [`SPREAD_QUANTUM`]).
    pub(crate) cursor: u64,
}

/// Most nodes of a weighted spread (as of a weighted interleave handle).
pub(crate) const MAX_SPREAD: usize = 8;

/// The unit of a spreading scope's rotation: the next allocation goes to the node that quantum
/// `cursor` falls on (in runs of `weight` quanta per node for a weighted one, as pages of a
/// weighted interleave), and advances `cursor` by its size in quanta (rounded up).
pub(crate) const SPREAD_QUANTUM: usize = 4096;

impl Spread {
    /// The node quantum `cursor` falls on.
    fn node(&self) -> u32 {
        let n = (self.n as usize).min(MAX_SPREAD);
        let period: u64 = self.weights[..n].iter().map(|&w| w as u64).sum();
        let mut k = self.cursor % period.max(1);
        for i in 0..n {
            let w = self.weights[i] as u64;
            if k < w {
                return self.nodes[i] as u32;
            }
            k -= w;
        }
        self.nodes[0] as u32
    }
}

/// The node quantum `cursor` falls on in an even spread over `set` (not empty).
fn even_node(set: u64, cursor: u64) -> u32 {
    let mut k = cursor % (set.count_ones().max(1) as u64);
    let mut m = set;
    while k > 0 && m != 0 {
        m &= m - 1;
        k -= 1;
    }
    m.trailing_zeros().min(63)
}

/// Quanta an allocation of `size` bytes takes from a spreading scope's rotation.
fn quanta(size: usize) -> u64 {
    size.div_ceil(SPREAD_QUANTUM).max(1) as u64
}

/// Makes `scope`, labelled `label` (a label id, 0 for none: see `labels`), the calling
/// thread's scope: from now on every allocation of the global allocator on this thread
/// follows it (`Scope::None` with no label: the inline paths serve again).
pub(crate) fn set_scope(scope: Scope, label: u8) {
    let mut h = own();
    h.scope = scope;
    h.scope_label = label;
    // A local scope with no tier policy asks for what the inline paths do anyway (the
    // thread's heap is on its node): they stay open, so `Placed::local()` scopes, and
    // `hot()`/`cold()` ones on a one-tier machine, cost nothing. (A policy set while such a
    // scope is active reaches its small allocations until the scope is entered again.) A
    // labelled scope diverts every allocation to its label's heaps.
    let open = label == 0
        && match scope {
            Scope::None => true,
            Scope::Local => !route::ACTIVE.load(Ordering::Relaxed),
            _ => false,
        };
    h.fast_gate = if open {
        &route::FAST_MAX
    } else {
        &route::SCOPED_GATE
    };
}

/// The calling thread's scope.
pub(crate) fn scope() -> Scope {
    own().scope
}

/// The label id of the calling thread's scope (0: none).
pub(crate) fn scope_label() -> u8 {
    own().scope_label
}

/// An allocation while `h`'s scope is active: on the scope's node (from its label's heap
/// there when the scope is labelled), or null to let the caller
/// serve it as if no scope were active — the scope is for the calling thread's own heap's
/// node and no tier policy could have put that heap's memory elsewhere, or the node's tier
/// budget is spent, or the node has no memory left (a scope never makes the global allocator
/// fail where it would have succeeded).
///
/// # Safety
/// `h` is the calling thread's own heap (not a node heap) and its scope is not `None`;
/// `align` is a power of two.
#[cold]
#[inline(never)]
pub(super) unsafe fn alloc_in_scope(
    mut h: HeapRef,
    size: usize,
    align: usize,
    zero: bool,
) -> *mut u8 {
    let label = h.scope_label;
    let node = match h.scope {
        Scope::None | Scope::Local => {
            if h.scope == Scope::None && label == 0 {
                return core::ptr::null_mut();
            }
            if h.state != ACTIVE && !heap_init(h) {
                return core::ptr::null_mut();
            }
            if label == 0 && !route::ACTIVE.load(Ordering::Relaxed) {
                // The thread's own heap is on its node.
                return core::ptr::null_mut();
            }
            // The node the thread runs on now, not the heap's: a scope's allocations never
            // reach the heap's ticks, so after a move `h.node` would stay the old node for as
            // long as the thread allocates only in the scope (review rev19).
            current_home()
        }
        Scope::Node(n) => n,
        Scope::Even {
            set,
            ref mut cursor,
        } => {
            let node = even_node(set, *cursor);
            *cursor = cursor.wrapping_add(quanta(size));
            node
        }
        Scope::Weighted(ref mut s) => {
            let node = s.node();
            s.cursor = s.cursor.wrapping_add(quanta(size));
            node
        }
    };
    // Held until the block is allocated (dropped on return).
    let Some(_room) = super::large::admit_making_room(node, size) else {
        return core::ptr::null_mut();
    };
    if label != 0 {
        // SAFETY: forwarded contract (align a power of two); the label heap is not `h`.
        return unsafe { label_alloc(label, node, size, align, zero) };
    }
    // SAFETY: forwarded contract (align a power of two); the node heap is not `h`.
    unsafe { node_alloc(node, size, align, zero) }
}
