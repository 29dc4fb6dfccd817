//! `PlacedFuture` since it keeps its own scope and drops its inner future inside it (review
//! rev41's look at 4c2147e): its auto traits and `Debug` are those of the inner future (the
//! `ManuallyDrop` and the `Scope` field change none of them), a panic in the inner future's
//! `Drop` ends the scope (and leaves a scope around it in force), placed futures nested in one
//! another run each poll and each drop in the innermost one's scope and give the outer one
//! back after it, labelled ones count to their own label when nested, and one dropped in a
//! fork child drops its inner future there inside its scope.
//!
//! On any machine: `Placed::node(0)` diverts (the node's shared heap serves, not the thread's
//! own: `probe::owned_by_caller`), `Placed::local()` does not.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tieralloc::{place, Placed, PlacedFuture, PlacedFutureExt};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

/// Whether the calling thread's own heap serves the live block at `p`.
fn own<T: ?Sized>(p: *const T) -> bool {
    // SAFETY: callers pass live blocks of the global allocator that no other thread frees.
    unsafe { tieralloc::probe::owned_by_caller(p as *const u8) }
}

/// Whether a fresh small block comes from the thread's own heap (no diverting scope).
fn fresh_is_own() -> bool {
    let b = Box::new([7u8; 100]);
    own(&*b)
}

fn node0() -> Placed {
    Placed::node(0).expect("node 0 exists")
}

fn local() -> Placed {
    Placed::local().expect("local exists")
}

// Auto traits, asked of concrete types: the inherent method exists only when the bound holds,
// and is then chosen over the trait's (which answers `false`).
struct Probe<T>(std::marker::PhantomData<T>);
trait Fallback {
    fn send(&self) -> bool {
        false
    }
    fn sync(&self) -> bool {
        false
    }
    fn unpin(&self) -> bool {
        false
    }
}
impl<T> Fallback for Probe<T> {}
struct ProbeSend<T>(std::marker::PhantomData<T>);
struct ProbeSync<T>(std::marker::PhantomData<T>);
struct ProbeUnpin<T>(std::marker::PhantomData<T>);
impl<T> Fallback for ProbeSend<T> {}
impl<T> Fallback for ProbeSync<T> {}
impl<T> Fallback for ProbeUnpin<T> {}
impl<T: Send> ProbeSend<T> {
    fn send(&self) -> bool {
        true
    }
}
impl<T: Sync> ProbeSync<T> {
    fn sync(&self) -> bool {
        true
    }
}
impl<T: Unpin> ProbeUnpin<T> {
    fn unpin(&self) -> bool {
        true
    }
}

macro_rules! traits {
    ($t:ty) => {
        (
            ProbeSend::<$t>(std::marker::PhantomData).send(),
            ProbeSync::<$t>(std::marker::PhantomData).sync(),
            ProbeUnpin::<$t>(std::marker::PhantomData).unpin(),
        )
    };
}

/// A future that is `!Unpin`.
struct Pinned(std::marker::PhantomPinned);
impl Future for Pinned {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

#[test]
fn a_placed_futures_auto_traits_are_its_inner_futures() {
    let _ = Probe::<u8>(std::marker::PhantomData).send();
    type R<T> = std::future::Ready<T>;
    assert_eq!(traits!(R<u8>), (true, true, true));
    assert_eq!(traits!(PlacedFuture<R<u8>>), traits!(R<u8>));
    assert_eq!(traits!(R<Rc<u8>>), (false, false, true));
    assert_eq!(traits!(PlacedFuture<R<Rc<u8>>>), traits!(R<Rc<u8>>));
    assert_eq!(traits!(R<Cell<u8>>), (true, false, true));
    assert_eq!(traits!(PlacedFuture<R<Cell<u8>>>), traits!(R<Cell<u8>>));
    assert_eq!(traits!(Pinned), (true, true, false));
    assert_eq!(traits!(PlacedFuture<Pinned>), traits!(Pinned));
}

#[test]
fn a_placed_futures_debug_shows_its_inner_future_and_label() {
    let f = std::future::ready(4242u32).placed_labeled(node0(), "debug-label");
    let s = format!("{f:?}");
    assert!(s.contains("4242") && s.contains("debug-label"), "{s}");
}

/// A future that never completes; its `Drop` allocates, records whether the thread's own heap
/// served it, and panics.
struct PanicsInDrop(Arc<Mutex<Option<bool>>>);
impl Future for PanicsInDrop {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}
impl Drop for PanicsInDrop {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(fresh_is_own());
        panic!("inside a placed future's drop");
    }
}

#[test]
fn a_panic_in_the_inner_futures_drop_ends_its_scope_and_leaves_the_one_around_it() {
    let waker = std::task::Waker::noop().clone();
    let mut cx = Context::from_waker(&waker);
    for around in [None, Some(node0())] {
        let outer = around.map(place);
        let seen = Arc::new(Mutex::new(None));
        // Inside: `local` (not diverted) around, `node0` (diverted) in the future, and back.
        let mut fut = Box::pin(PanicsInDrop(seen.clone()).placed(node0()));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(fut)));
        assert!(r.is_err());
        assert_eq!(
            *seen.lock().unwrap(),
            Some(false),
            "the drop ran in the scope"
        );
        assert_eq!(fresh_is_own(), around.is_none(), "around {around:?}");
        // The thread's scopes still nest and restore.
        {
            let _l = place(local());
            assert!(fresh_is_own());
            {
                let _n = place(node0());
                assert!(!fresh_is_own());
            }
            assert!(fresh_is_own());
        }
        assert_eq!(fresh_is_own(), around.is_none());
        drop(outer);
        assert!(fresh_is_own());
    }
}

/// What a [`Nest`] saw: (who, when, whether the thread's own heap served a fresh block).
type Log = Arc<Mutex<Vec<(&'static str, &'static str, bool)>>>;

/// A future that never completes, logging where its allocations go before and after it polls
/// (and drops) the future it holds.
struct Nest {
    name: &'static str,
    log: Log,
    child: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}
impl Future for Nest {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let name = self.name;
        self.log
            .lock()
            .unwrap()
            .push((name, "poll before", fresh_is_own()));
        if let Some(c) = self.child.as_mut() {
            assert!(c.as_mut().poll(cx).is_pending());
        }
        self.log
            .lock()
            .unwrap()
            .push((name, "poll after", fresh_is_own()));
        Poll::Pending
    }
}
impl Drop for Nest {
    fn drop(&mut self) {
        let name = self.name;
        self.log
            .lock()
            .unwrap()
            .push((name, "drop before", fresh_is_own()));
        drop(self.child.take());
        self.log
            .lock()
            .unwrap()
            .push((name, "drop after", fresh_is_own()));
    }
}

fn nested(outer: Placed, inner: Placed, log: &Log) -> Pin<Box<PlacedFuture<Nest>>> {
    let inner = Nest {
        name: "inner",
        log: log.clone(),
        child: None,
    }
    .placed(inner);
    Box::pin(
        Nest {
            name: "outer",
            log: log.clone(),
            child: Some(Box::pin(inner)),
        }
        .placed(outer),
    )
}

#[test]
fn nested_placed_futures_poll_and_drop_each_in_its_own_scope() {
    let waker = std::task::Waker::noop().clone();
    let mut cx = Context::from_waker(&waker);
    for (outer, inner, o, i) in [
        (node0(), local(), false, true),
        (local(), node0(), true, false),
    ] {
        let log: Log = Arc::new(Mutex::new(Vec::with_capacity(64)));
        let mut fut = nested(outer, inner, &log);
        for _ in 0..2 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        // The second poll on another thread.
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut cx = Context::from_waker(&waker);
                assert!(fut.as_mut().poll(&mut cx).is_pending());
                assert!(fresh_is_own());
            });
        });
        assert!(fresh_is_own());
        drop(fut);
        assert!(fresh_is_own());
        let poll = [
            ("outer", "poll before", o),
            ("inner", "poll before", i),
            ("inner", "poll after", i),
            ("outer", "poll after", o),
        ];
        let mut want: Vec<_> = poll.iter().cycle().take(12).copied().collect();
        want.extend([
            ("outer", "drop before", o),
            ("inner", "drop before", i),
            ("inner", "drop after", i),
            ("outer", "drop after", o),
        ]);
        assert_eq!(
            *log.lock().unwrap(),
            want,
            "outer {outer:?}, inner {inner:?}"
        );
    }
}

/// Allocates a 64 KiB block at each poll and keeps it; never completes.
struct Keeps(Vec<Vec<u8>>);
impl Future for Keeps {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        self.0.push(vec![3u8; 64 << 10]);
        Poll::Pending
    }
}

/// A future that polls `inner`, then allocates a 64 KiB block and keeps it.
struct Around<F>(Pin<Box<F>>, Vec<Vec<u8>>);
impl<F: Future> Future for Around<F> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        assert!(self.0.as_mut().poll(cx).is_pending());
        self.1.push(vec![4u8; 64 << 10]);
        Poll::Pending
    }
}

fn label_live(label: &str) -> i64 {
    tieralloc::stats()
        .labels
        .iter()
        .find(|l| l.label == label)
        .map_or(0, |l| l.bytes_live)
}

#[test]
fn nested_labelled_placed_futures_count_each_to_its_own_label() {
    let waker = std::task::Waker::noop().clone();
    let mut cx = Context::from_waker(&waker);
    let inner = Keeps(Vec::with_capacity(8)).placed_labeled(local(), "rev41-inner");
    let mut fut = Box::pin(
        Around(Box::pin(inner), Vec::with_capacity(8)).placed_labeled(node0(), "rev41-outer"),
    );
    for _ in 0..4 {
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    let (i, o) = (label_live("rev41-inner"), label_live("rev41-outer"));
    // Four blocks of 64 KiB each (and nothing of the other's: less than one block more).
    assert!((4 << 16..5 << 16).contains(&i), "inner {i}");
    assert!((4 << 16..5 << 16).contains(&o), "outer {o}");
    drop(fut);
    assert!(label_live("rev41-inner") < 1 << 16);
    assert!(label_live("rev41-outer") < 1 << 16);
}

#[test]
fn inner_a_placed_future_dropped_in_a_fork_child_drops_its_inner_future_in_its_scope() {
    if !child::is_child() {
        return;
    }
    let waker = std::task::Waker::noop().clone();
    let mut cx = Context::from_waker(&waker);
    let seen = Arc::new(Mutex::new(None));
    let mut fut = Box::pin(PanicsInDrop(seen.clone()).placed(node0()));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    // SAFETY: this process has one thread (the child runs the test alone, on the main thread
    // of a fresh process), so the child may go on as usual.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(fut)));
        let ok = r.is_err() && *seen.lock().unwrap() == Some(false) && fresh_is_own();
        // SAFETY: ends the child at once (no test harness output, no atexit handlers).
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }
    let mut status = 0;
    // SAFETY: `pid` is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status}"
    );
    std::mem::forget(fut);
}

#[test]
fn a_placed_future_dropped_in_a_fork_child() {
    if child::is_child() {
        return;
    }
    let mut cmd = child::this_test(
        "inner_a_placed_future_dropped_in_a_fork_child_drops_its_inner_future_in_its_scope",
    );
    child::run(&mut cmd, Duration::from_secs(120)).expect_test_passed();
}
