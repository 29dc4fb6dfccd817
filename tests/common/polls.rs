//! A test future for the placement adaptors (`placed`, `placed_labeled`): [`Allocating`]
//! allocates one block on each of its two polls (waking itself between them) and returns the
//! blocks, so a test can poll it on two threads and ask where, or to which label, each poll's
//! allocations went; [`noop_waker`] polls it by hand.
//!
//! Shared by tests/scope.rs and tests/scope_labels.rs with `#[path = "common/polls.rs"] mod
//! polls;`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// A waker that does nothing (the test polls by hand).
pub fn noop_waker() -> Waker {
    Waker::from(Arc::new(Noop))
}

/// The future: `blocks` is where the polls put their blocks, made by the caller (its
/// capacity decides whether the polls grow it, inside the future's scope).
/// The boxes are the blocks whose placement is checked (hence a `Vec` of `Box`es).
#[allow(clippy::vec_box)]
pub struct Allocating {
    polls: usize,
    blocks: Vec<Box<[u8; 100]>>,
}

impl Allocating {
    /// A future that has not been polled yet.
    #[allow(clippy::vec_box)]
    pub fn new(blocks: Vec<Box<[u8; 100]>>) -> Allocating {
        Allocating { polls: 0, blocks }
    }
}

impl Future for Allocating {
    type Output = Vec<Box<[u8; 100]>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let b = Box::new([7u8; 100]);
        self.blocks.push(b);
        self.polls += 1;
        if self.polls < 2 {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(std::mem::take(&mut self.blocks))
        }
    }
}
