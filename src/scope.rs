//! Placement scopes: the program decides where the global allocator's memory goes, for a
//! stretch of a thread's code ([`place`], [`with_placement`]) or of an async task's
//! ([`PlacedFutureExt::placed`]), and may label it so that the statistics say what went where
//! ([`place_labeled`], [`with_placement_labeled`], [`PlacedFutureExt::placed_labeled`]).
//!
//! Owns: the calling thread's stack of scopes (a thread-local `Vec`, never touched by the
//! allocator's paths), the guard, the closure form and the future adaptor. May touch:
//! `placed` (a handle's `Scope`), `heap::thread` (`set_scope`, `scope`, `scope_label`: the
//! heap's side, which diverts the allocations; `label_id`: a label's slot). In the `placed`
//! layer: it sits on the handles and the heap.
//!
//! The scope in force on a thread is always that of the most recently entered scope that is
//! still alive. Guards normally drop in reverse order of entry (the borrow checker sees to it
//! for `let` bindings in nested blocks); a guard dropped out of order (kept in a struct, moved
//! into a `Vec`, dropped with `drop`) ends its own scope only: if it was the innermost, the
//! next live one below it takes over; if not, nothing changes until the scopes above it end.
//! So the state never depends on drop order beyond that rule, and can never be corrupted.

use crate::heap::thread::{self, Scope};
use crate::placed::Placed;
use core::cell::RefCell;
use core::future::Future;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::pin::Pin;
use core::task::{Context, Poll};

/// One entered scope: what it asks, its label id (0: none), and whether its guard is still
/// alive.
#[derive(Clone, Copy)]
struct Entry {
    scope: Scope,
    label: u8,
    alive: bool,
}

thread_local! {
    /// The calling thread's scopes, outermost first. Dead entries stay until every entry
    /// above them is dead too.
    static STACK: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// The guard of a placement scope, from [`place`]: while it lives, every allocation of the
/// global [`TierAlloc`](crate::TierAlloc) on this thread goes to its placement (unless a
/// scope entered later, still alive, says otherwise); dropping it ends the scope.
///
/// It is `!Send` and `!Sync`: a scope belongs to the thread that entered it.
///
/// ```compile_fail
/// fn needs_send<T: Send>(_: T) {}
/// needs_send(tieralloc::place(tieralloc::Placed::cold()));
/// ```
///
/// ```compile_fail
/// let g = tieralloc::place(tieralloc::Placed::cold());
/// std::thread::spawn(move || drop(g));
/// ```
#[must_use = "the scope ends when the guard is dropped: bind it with `let _g = ...`"]
#[derive(Debug)]
pub struct PlacementGuard {
    /// The guard's entry in the thread's stack.
    index: Slot,
    /// `!Send`, `!Sync`.
    _thread: PhantomData<*const ()>,
}

/// Where a guard's scope is recorded.
#[derive(Debug)]
enum Slot {
    /// Entry `n` of the thread's stack.
    Stacked(usize),
    /// Nowhere (the stack was gone): the scope and label to restore.
    Unstacked(Scope, u8),
}

/// Enters a placement scope on the calling thread: until the returned guard is dropped, every
/// allocation the global [`TierAlloc`](crate::TierAlloc) serves on this thread goes to
/// `placement` — `Vec`s, `String`s, `HashMap`s, third-party types, anything that allocates
/// through the global allocator. Frees and reallocations work as always, from any thread;
/// a reallocation that moves its block inside the scope places the new block by the scope
/// (one that can grow or shrink in place keeps its block, and its node; a huge block grown
/// inside a scope that would place it elsewhere is moved there). After the scope, a block
/// built in it that a reallocation moves is placed as any allocation outside the scope.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
/// # fn main() -> Result<(), tieralloc::PlacementError> {
/// use std::collections::HashMap;
/// use tieralloc::Placed;
///
/// let cache: HashMap<String, Vec<u8>> = {
///     let _g = tieralloc::place(Placed::far()?);
///     (0..100).map(|i| (i.to_string(), vec![0u8; 1000])).collect()
/// }; // the scope ends here: the map, its keys and values are on the far tier
/// let scratch = vec![1u8; 1000]; // local again
/// # assert_eq!(cache.len(), 100); assert_eq!(scratch.len(), 1000);
/// # Ok(()) }
/// ```
///
/// What each kind of handle does in a scope: `node`, `tier`, `far` and `cold`/`hot` (when they
/// name a node) put every allocation on that node, through the node's shared heap (each
/// allocation takes that heap's lock: a scope is for building data, not for a hot loop);
/// `local` (and `cold`/`hot` on a one-tier machine) keeps allocations on the thread's node
/// (with no tier policy set, exactly as without a scope, at no cost);
/// `interleave` and `interleave_weighted` spread allocations (each whole on one node) over
/// their nodes in proportion to their weights, by bytes.
///
/// A scope never makes the global allocator fail where it would have succeeded: an allocation
/// that the scope's node cannot take (its tier budget spent, the node out of memory) is served
/// as if no scope were active (a spent budget counts in the tier's `refused`). Scopes apply
/// to the Rust global allocator only, not to the drop-in's C `malloc`; under another global
/// allocator they do nothing.
///
/// Scopes nest: the innermost live one is in force, and when it ends the one around it is
/// again (a spreading one going on where it stopped). See the module notes for guards dropped out of order. A guard forgotten with
/// `mem::forget` leaves its scope in force (below any later one) until the thread ends.
pub fn place(placement: Placed) -> PlacementGuard {
    enter(placement.scope(), 0)
}

/// Enters a labelled placement scope: as [`place`], and the scope's allocations count to
/// `label` in [`stats()`](crate::stats())`.labels` (and in the `prometheus` collector's
/// `scope` label), wherever and whenever they are freed, so that an operator can see what
/// went where and why. Live bytes count to the innermost scope's label: a scope with no label
/// inside a labelled one counts to none.
///
/// Labels are `&'static str`s, compared by pointer, then by contents (two scopes with equal
/// names share a label). The process keeps up to 31 of them; past that, a new name counts to
/// the shared label `"other"` (never an error). A labelled scope serves its allocations from
/// heaps of its own, one per label and node, each behind a lock: like a node scope, it is for
/// building data, not for a hot loop (a labelled `Placed::local()` scope diverts too, to its
/// label's heap on the thread's node).
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
/// use tieralloc::Placed;
/// let cache: Vec<String> = {
///     let _g = tieralloc::place_labeled(Placed::cold(), "cache");
///     (0..100).map(|i| i.to_string()).collect()
/// };
/// let s = tieralloc::stats();
/// let label = s.labels.iter().find(|l| l.label == "cache").unwrap();
/// assert!(label.bytes_live >= 100 * 16);
/// # drop(cache);
/// ```
pub fn place_labeled(placement: Placed, label: &'static str) -> PlacementGuard {
    enter(placement.scope(), thread::label_id(label))
}

/// Enters `scope` labelled `label` (an id, 0 for none) on the calling thread.
fn enter(scope: Scope, label: u8) -> PlacementGuard {
    // At thread exit, once the stack is gone (a thread-local destructor that allocates), the
    // guard restores what it found instead (strictly nested use only, as there).
    let index = STACK
        .try_with(|s| {
            let mut s = s.borrow_mut();
            // The scope in force (the top entry) is suspended: keep how far its spread got.
            if let Some(top) = s.last_mut() {
                top.scope = top.scope.progressed(thread::scope());
            }
            s.push(Entry {
                scope,
                label,
                alive: true,
            });
            Slot::Stacked(s.len() - 1)
        })
        .unwrap_or_else(|_| Slot::Unstacked(thread::scope(), thread::scope_label()));
    thread::set_scope(scope, label);
    PlacementGuard {
        index,
        _thread: PhantomData,
    }
}

/// Runs `f` inside a placement scope on `placement` (see [`place`]) and returns what it
/// returns; the scope ends when `f` returns or unwinds.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
/// # fn main() -> Result<(), tieralloc::PlacementError> {
/// use tieralloc::Placed;
/// let table: Vec<String> =
///     tieralloc::with_placement(Placed::node(0)?, || (0..10).map(|i| i.to_string()).collect());
/// # assert_eq!(table.len(), 10);
/// # Ok(()) }
/// ```
pub fn with_placement<R>(placement: Placed, f: impl FnOnce() -> R) -> R {
    let _g = place(placement);
    f()
}

/// Runs `f` inside a placement scope on `placement` labelled `label` (see [`place_labeled`])
/// and returns what it returns.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
/// use tieralloc::Placed;
/// let index: Vec<u64> = tieralloc::with_placement_labeled(Placed::cold(), "index", || {
///     (0..1000).collect()
/// });
/// # assert_eq!(index.len(), 1000);
/// ```
pub fn with_placement_labeled<R>(
    placement: Placed,
    label: &'static str,
    f: impl FnOnce() -> R,
) -> R {
    let _g = place_labeled(placement, label);
    f()
}

impl Drop for PlacementGuard {
    fn drop(&mut self) {
        let index = match self.index {
            Slot::Stacked(i) => i,
            Slot::Unstacked(prev, label) => return thread::set_scope(prev, label),
        };
        // At thread exit the stack may be gone by now: then no scope is in force any more.
        let done = STACK.try_with(|s| {
            let mut s = s.borrow_mut();
            let len = s.len();
            if let Some(e) = s.get_mut(index) {
                e.alive = false;
            }
            while s.last().is_some_and(|e| !e.alive) {
                s.pop();
            }
            if s.len() == len {
                // Not the innermost: the scope in force stays as it is, its spread's rotation
                // too (review rev27: it was set again as entered, its rotation started over).
                return;
            }
            let (top, label) = s.last().map_or((Scope::None, 0), |e| (e.scope, e.label));
            if thread::scope() != top || thread::scope_label() != label {
                thread::set_scope(top, label);
            }
        });
        if done.is_err() {
            thread::set_scope(Scope::None, 0);
        }
    }
}

/// A future that runs inside a placement scope each time it is polled: see
/// [`PlacedFutureExt::placed`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct PlacedFuture<F> {
    /// Dropped by `PlacedFuture`'s own `Drop`, inside the scope, in place (pinned).
    inner: ManuallyDrop<F>,
    placement: Placed,
    /// The scope each poll enters: the placement's, with a spread's rotation as far as the
    /// polls so far have advanced it (so that the next poll goes on from there).
    scope: Scope,
    /// The label and its id (looked up once, not at each poll).
    label: Option<(&'static str, u8)>,
}

/// Placement for async code: [`placed`](PlacedFutureExt::placed) wraps a future so that
/// each `poll` runs inside a placement scope (entered before the inner future is polled,
/// ended before `poll` returns), in the spirit of `tracing::Instrument`. A task's allocations
/// then follow its placement whichever worker thread polls it, and other tasks on the same
/// workers are not affected. A spreading placement goes on from poll to poll where the last
/// one left it. Dropping a `PlacedFuture` (a cancelled task) drops the inner future inside the
/// scope too, as `tracing::Instrumented` enters its span; having a `Drop` of its own, it
/// needs what the inner future borrows to outlive it (declared before it):
///
/// ```compile_fail,E0597
/// use tieralloc::{Placed, PlacedFutureExt};
/// let (fut, s);
/// s = String::from("declared after the future, dropped before it");
/// fut = async { s.len() }.placed(Placed::cold());
/// # let _ = &fut;
/// ```
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
/// use tieralloc::{Placed, PlacedFutureExt};
/// async fn build_report() -> String { "x".repeat(1000) }
/// let fut = build_report().placed(Placed::cold());
/// # let _ = fut;
/// ```
pub trait PlacedFutureExt: Future + Sized {
    /// This future, polled inside a scope on `placement` (see [`place`]).
    fn placed(self, placement: Placed) -> PlacedFuture<Self> {
        PlacedFuture {
            inner: ManuallyDrop::new(self),
            placement,
            scope: placement.scope(),
            label: None,
        }
    }

    /// This future, polled inside a scope on `placement` labelled `label` (see
    /// [`place_labeled`]): its allocations count to `label`, whichever thread polls it.
    ///
    /// ```
    /// # #[global_allocator]
    /// # static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
    /// use tieralloc::{Placed, PlacedFutureExt};
    /// async fn build_report() -> String { "x".repeat(1000) }
    /// let fut = build_report().placed_labeled(Placed::cold(), "report");
    /// assert_eq!(fut.label(), Some("report"));
    /// ```
    fn placed_labeled(self, placement: Placed, label: &'static str) -> PlacedFuture<Self> {
        PlacedFuture {
            inner: ManuallyDrop::new(self),
            placement,
            scope: placement.scope(),
            label: Some((label, thread::label_id(label))),
        }
    }
}

impl<F: Future> PlacedFutureExt for F {}

impl<F> PlacedFuture<F> {
    /// The placement each poll runs in.
    pub fn placement(&self) -> Placed {
        self.placement
    }

    /// The label each poll's scope carries, if any.
    pub fn label(&self) -> Option<&'static str> {
        self.label.map(|(l, _)| l)
    }

    /// The inner future.
    pub fn into_inner(self) -> F {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped (so neither is `inner` by our `Drop`) and never used
        // again, so `inner` is moved out exactly once; the other fields are `Copy`. Taking
        // `self` by value means it is not pinned.
        unsafe { ManuallyDrop::take(&mut this.inner) }
    }
}

impl<F> Drop for PlacedFuture<F> {
    fn drop(&mut self) {
        let _g = enter(self.scope, self.label.map_or(0, |(_, id)| id));
        // SAFETY: `inner` is dropped here once, in place (so a pinned inner future is never
        // moved), and `self` is not used after; `into_inner` forgets `self` instead.
        unsafe { ManuallyDrop::drop(&mut self.inner) }
    }
}

impl<F: Future> Future for PlacedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: structural pinning of `inner`: it is never moved out of a pinned
        // PlacedFuture (`into_inner` takes the future by value, so only when unpinned; our
        // `Drop` drops it in place), and there is no Unpin impl that would not hold for F.
        let this = unsafe { self.get_unchecked_mut() };
        let _g = enter(this.scope, this.label.map_or(0, |(_, id)| id));
        // SAFETY: as above; `inner` is not dropped before `self` is.
        let r = unsafe { Pin::new_unchecked(&mut *this.inner) }.poll(cx);
        // Keep how far a spread got for the next poll (the thread's scope is ours again unless
        // the poll left a scope of its own in force, which `progressed` passes over).
        this.scope = this.scope.progressed(thread::scope());
        r
    }
}
