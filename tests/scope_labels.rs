//! Scope labels (`tieralloc::place_labeled`, `with_placement_labeled`,
//! `PlacedFutureExt::placed_labeled`) and their live bytes in `stats().labels`.
//!
//! On this machine: the blocks of a labelled scope (small, large and huge) add exactly their
//! usable sizes to the label's live bytes, and to its node; freed on another thread after the
//! scope ended they take exactly that off again; nested scopes count to the innermost label,
//! an unlabelled scope inside a labelled one and code outside any scope count to no label; two
//! `&'static str`s with the same contents are one label; a labelled future polled on two
//! threads counts every poll's allocations to its label; a labelled huge block grown by
//! `realloc` (outside the scope, on another thread) counts its grown bytes. In a child process
//! of its own (the label table and the abandoned segments are process-wide): past the table's
//! size, labels count to the shared `"other"`; a label heap adopts no abandoned segment and
//! abandons none of its own.
//!
//! Under `TIERALLOC_SIMULATE_NODES=2,far=1` (a child pinned to node 0): a labelled far scope's
//! blocks count on node 2 for the label, node 2's live bytes and tier 1's move by exactly as
//! much, and a labelled interleaving scope splits its label's bytes over nodes 0 and 1 exactly
//! as the blocks lie.

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;
use tieralloc::{place, place_labeled, with_placement_labeled, Placed, PlacedFutureExt};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;
#[path = "common/live.rs"]
mod live;
#[path = "common/nodes.rs"]
mod nodes;
#[path = "common/polls.rs"]
mod polls;

use polls::{noop_waker, Allocating};

/// The bytes of the live block at `p`, as a label counts them (block sizes): its usable
/// size, but in the `secure` build a bin block's usable size is the size asked for, and its
/// block that plus the canary's 8-byte trailer, rounded up to its class.
fn usable<T: ?Sized>(p: *const T) -> i64 {
    // SAFETY: callers pass live blocks of the global allocator.
    let u = unsafe { tieralloc::usable_size(p as *const u8) };
    #[cfg(feature = "secure")]
    if u + 8 <= 64 << 10 {
        let class = tieralloc::stats()
            .classes
            .iter()
            .map(|c| c.block_size)
            .filter(|&b| b >= u + 8)
            .min();
        return class.expect("a class holds every bin block") as i64;
    }
    u as i64
}

/// Whether the calling thread's own heap serves the live block at `p`.
fn own<T: ?Sized>(p: *const T) -> bool {
    // SAFETY: callers pass live blocks that no other thread frees meanwhile.
    unsafe { tieralloc::probe::owned_by_caller(p as *const u8) }
}

/// The node `stats()` books the live block at `p` on.
fn node_of<T: ?Sized>(p: *const T) -> u32 {
    // SAFETY: as in `own`.
    unsafe { tieralloc::probe::block_node(p as *const u8) }
}

/// The label's live bytes per node (nodes with a nonzero count only).
fn label_nodes(label: &str) -> Vec<(u32, i64)> {
    let s = tieralloc::stats();
    let Some(l) = s.labels.iter().find(|l| l.label == label) else {
        return Vec::new();
    };
    let sum: i64 = l.nodes.iter().map(|n| n.bytes_live).sum();
    assert_eq!(sum, l.bytes_live, "a label's total is the sum of its nodes");
    l.nodes
        .iter()
        .filter(|n| n.bytes_live != 0)
        .map(|n| (n.node, n.bytes_live))
        .collect()
}

fn node0() -> Placed {
    Placed::node(0).expect("node 0 exists")
}

/// Blocks of every kind: small, medium, large (own page) and huge (own mapping).
type Blocks = (Box<[u8; 100]>, Vec<u64>, Vec<u8>, Vec<u8>);

fn blocks() -> Blocks {
    (
        Box::new([3u8; 100]),
        vec![1u64; 1000],
        vec![0u8; 200 << 10],
        vec![5u8; 5 << 20],
    )
}

fn bytes_of(b: &Blocks) -> i64 {
    usable(&*b.0) + usable(b.1.as_ptr()) + usable(b.2.as_ptr()) + usable(b.3.as_ptr())
}

#[test]
fn a_labelled_scope_counts_exactly_its_blocks_until_they_are_freed_anywhere() {
    assert_eq!(live::label_live("t-exact"), 0);
    let b = {
        let _g = place_labeled(node0(), "t-exact");
        blocks()
    };
    assert!(
        !own(&*b.0),
        "a labelled scope's block comes from its label's heap"
    );
    let want = bytes_of(&b);
    assert_eq!(live::label_live("t-exact"), want);
    assert_eq!(label_nodes("t-exact"), vec![(0, want)]);
    // Still counted after more allocations outside the scope.
    let outside = vec![7u8; 3000];
    assert_eq!(live::label_live("t-exact"), want);
    // Freed on another thread, after the scope ended: back to exactly nothing.
    std::thread::spawn(move || drop(b)).join().unwrap();
    assert_eq!(live::label_live("t-exact"), 0);
    assert_eq!(label_nodes("t-exact"), vec![]);
    drop(outside);
}

#[test]
fn a_labelled_local_scope_diverts_to_its_label() {
    let local = Placed::local().expect("local placement");
    let v = with_placement_labeled(local, "t-local", || vec![9u8; 500]);
    assert!(!own(v.as_ptr()), "a labelled local scope diverts");
    // On the thread's node (where the block is: the label's per-node count agrees).
    assert_eq!(
        label_nodes("t-local"),
        vec![(node_of(v.as_ptr()), usable(v.as_ptr()))]
    );
    assert_eq!(live::label_live("t-local"), usable(v.as_ptr()));
    drop(v);
    assert_eq!(live::label_live("t-local"), 0);
}

#[test]
fn nested_scopes_count_to_the_innermost_label_and_unlabelled_ones_to_none() {
    let outer = place_labeled(node0(), "t-outer");
    let a = Box::new([1u8; 100]);
    let (b, c, d);
    {
        let _inner = place_labeled(node0(), "t-inner");
        b = vec![2u8; 2000];
        {
            let _plain = place(node0());
            c = vec![3u8; 4000];
            assert!(!own(c.as_ptr()), "an unlabelled node scope still diverts");
        }
        d = vec![4u8; 300];
    }
    let e = vec![5u8; 700];
    drop(outer);
    let f = vec![6u8; 900];
    assert!(own(f.as_ptr()), "no scope: the thread's heap");
    assert_eq!(
        live::label_live("t-outer"),
        usable(&*a) + usable(e.as_ptr())
    );
    assert_eq!(
        live::label_live("t-inner"),
        usable(b.as_ptr()) + usable(d.as_ptr())
    );
    drop((a, e));
    assert_eq!(live::label_live("t-outer"), 0);
    assert_eq!(
        live::label_live("t-inner"),
        usable(b.as_ptr()) + usable(d.as_ptr())
    );
    drop((b, c, d, f));
    assert_eq!(live::label_live("t-inner"), 0);
}

#[test]
fn equal_names_are_one_label() {
    let leaked: &'static str = Box::leak(String::from("t-same").into_boxed_str());
    let a = with_placement_labeled(node0(), "t-same", || vec![1u8; 1000]);
    let b = with_placement_labeled(node0(), leaked, || vec![2u8; 1000]);
    let s = tieralloc::stats();
    assert_eq!(s.labels.iter().filter(|l| l.label == "t-same").count(), 1);
    assert_eq!(
        live::label_live("t-same"),
        usable(a.as_ptr()) + usable(b.as_ptr())
    );
}

#[test]
fn a_labelled_future_counts_every_poll_to_its_label_whichever_thread_polls_it() {
    let waker = noop_waker();
    let mut fut = Box::pin(Allocating::new(Vec::new()).placed_labeled(node0(), "t-future"));
    assert_eq!(fut.label(), Some("t-future"));
    let mut cx = Context::from_waker(&waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    let blocks = std::thread::spawn(move || {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let Poll::Ready(blocks) = fut.as_mut().poll(&mut cx) else {
            panic!("ready on the second poll")
        };
        blocks
    })
    .join()
    .unwrap();
    // Two boxes, and the Vec that holds them (grown inside the polls).
    let want = blocks.iter().map(|b| usable(&**b)).sum::<i64>() + usable(blocks.as_ptr());
    assert_eq!(live::label_live("t-future"), want);
    drop(blocks);
    assert_eq!(live::label_live("t-future"), 0);
}

// ---------------------------------------------------------------------------------------------
// Child processes.

fn run_child(inner: &str, simulate: Option<&str>) {
    let mut cmd = match simulate {
        Some(v) => child::on_simulated_nodes(inner, v),
        None => child::this_test(inner),
    };
    child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
}

#[test]
fn inner_labels_past_the_table_count_to_other() {
    if !child::is_child() {
        return;
    }
    // Nothing outside a labelled scope counts to any label (this process runs one thread).
    let v = vec![1u8; 5000];
    let w = tieralloc::with_placement(node0(), || vec![2u8; 5000]);
    assert!(tieralloc::stats().labels.is_empty(), "no label used yet");
    let mut kept = Vec::new();
    let mut want_other = 0i64;
    for i in 0..40 {
        let name: &'static str = Box::leak(format!("t-many-{i:02}").into_boxed_str());
        let b = with_placement_labeled(node0(), name, || vec![i as u8; 1000 + i]);
        // 31 slots besides "other": labels 0 to 30 get one each, the rest share "other".
        if i >= 31 {
            want_other += usable(b.as_ptr());
        } else {
            assert_eq!(live::label_live(name), usable(b.as_ptr()), "label {name}");
        }
        kept.push(b);
    }
    let s = tieralloc::stats();
    assert_eq!(s.labels.len(), 32, "31 labels and other");
    for i in 31..40 {
        let name = format!("t-many-{i:02}");
        assert!(
            s.labels.iter().all(|l| l.label != name),
            "{name} has no slot"
        );
    }
    assert_eq!(live::label_live("other"), want_other);
    // An explicit "other" is the shared slot too.
    let o = with_placement_labeled(node0(), "other", || vec![0u8; 100]);
    assert_eq!(live::label_live("other"), want_other + usable(o.as_ptr()));
    drop((kept, o));
    assert!(tieralloc::stats().labels.iter().all(|l| l.bytes_live == 0));
    drop((v, w));
}

#[test]
fn labels_past_the_table_count_to_other() {
    if child::is_child() {
        return;
    }
    run_child("inner_labels_past_the_table_count_to_other", None);
}

fn live(node: u32) -> i64 {
    tieralloc::stats()
        .nodes
        .iter()
        .find(|n| n.node == node)
        .unwrap_or_else(|| panic!("stats() shows no node {node}"))
        .bytes_live
}

#[test]
fn inner_labelled_far_scope_on_simulated_nodes() {
    if !child::is_child() {
        return;
    }
    // Pinned: the interleaving check compares with where the blocks are, and the local ones
    // with node 0.
    tieralloc::numa::pin_current_thread_to_node(0).expect("pin to simulated node 0");
    tieralloc::collect();
    let far = Placed::far().unwrap();
    assert_eq!(far.node_id(), Some(2));
    let (n2, t1) = (live(2), tieralloc::tiers::stats()[1].live_bytes);
    let b = {
        let _g = place_labeled(far, "t-far");
        blocks()
    };
    for p in [b.1.as_ptr() as *const u8, b.2.as_ptr(), b.3.as_ptr()] {
        assert_eq!(node_of(p), 2);
    }
    let want = bytes_of(&b);
    assert_eq!(label_nodes("t-far"), vec![(2, want)]);
    assert_eq!(
        live(2) - n2,
        want,
        "node 2's live bytes move by the label's"
    );
    assert_eq!(tieralloc::tiers::stats()[1].live_bytes - t1, want);
    // Freed on another thread (not pinned: of either node), after the scope ended.
    std::thread::spawn(move || drop(b)).join().unwrap();
    assert_eq!(live::label_live("t-far"), 0);
    assert_eq!(live(2), n2);

    // An interleaving labelled scope: its label's bytes per node are where its blocks are.
    let il = Placed::interleave(&[0, 1]).expect("interleave over nodes 0 and 1");
    let vs: Vec<Vec<u8>> = {
        let _g = place_labeled(il, "t-spread");
        (0..16).map(|i| vec![i as u8; 6000]).collect()
    };
    let mut per = [0i64; 2];
    for v in &vs {
        per[node_of(v.as_ptr()) as usize] += usable(v.as_ptr());
    }
    per[node_of(vs.as_ptr()) as usize] += usable(vs.as_ptr());
    assert!(per[0] > 0 && per[1] > 0, "spread over both nodes: {per:?}");
    assert_eq!(label_nodes("t-spread"), vec![(0, per[0]), (1, per[1])]);
    drop(vs);
    assert_eq!(live::label_live("t-spread"), 0);
}

#[test]
fn labelled_scopes_on_simulated_nodes() {
    if child::is_child() {
        return;
    }
    run_child(
        "inner_labelled_far_scope_on_simulated_nodes",
        Some("2,far=1"),
    );
}

/// A huge block of a labelled scope grown by `realloc` without copying (`large::grow_huge`:
/// its pages move to a bigger mapping, the label in its header goes with them) counts its
/// grown usable size to its label, wherever the realloc runs: outside the scope (an
/// unlabelled allocation and copy would count nothing to the label), and on another thread.
/// A realloc that fits the mapping changes nothing; the free on a third thread takes all of
/// it off. The threads that grow it run on the block's node 0 (a heap of another node does
/// not grow it: it copies it, outside the scope, into a block of no label).
#[test]
fn a_labelled_huge_block_grown_in_place_counts_its_grown_bytes() {
    assert!(nodes::move_to_node(0), "pin to node 0");
    assert_eq!(live::label_live("t-grow"), 0);
    let mut v = with_placement_labeled(node0(), "t-grow", || vec![7u8; 5 << 20]);
    // SAFETY: a live block of the global allocator.
    assert!(unsafe { tieralloc::probe::is_huge(v.as_ptr()) });
    let first = usable(v.as_ptr());
    assert_eq!(live::label_live("t-grow"), first);
    // Grown outside the scope, on this thread.
    v.reserve_exact((12 << 20) - v.len());
    let grown = usable(v.as_ptr());
    assert!(grown >= 12 << 20 && grown > first, "{grown} after {first}");
    assert_eq!(
        live::label_live("t-grow"),
        grown,
        "the grown bytes count to the block's label"
    );
    assert_eq!(label_nodes("t-grow"), vec![(0, grown)]);
    // Grown again on another thread, then resized within its mapping (no change).
    let v = std::thread::spawn(move || {
        assert!(nodes::move_to_node(0), "pin to node 0");
        v.reserve_exact((20 << 20) - v.len());
        v
    })
    .join()
    .unwrap();
    let again = usable(v.as_ptr());
    assert!(again >= 20 << 20, "{again}");
    assert_eq!(live::label_live("t-grow"), again);
    assert!(
        v.iter().all(|&x| x == 7),
        "the contents moved with the pages"
    );
    let mut v = v;
    v.shrink_to(again as usize - 4096);
    assert_eq!(
        usable(v.as_ptr()),
        again,
        "a realloc inside the mapping stays"
    );
    assert_eq!(live::label_live("t-grow"), again);
    // Freed on a third thread: nothing left.
    std::thread::spawn(move || drop(v)).join().unwrap();
    assert_eq!(live::label_live("t-grow"), 0);
    assert_eq!(label_nodes("t-grow"), vec![]);
}

/// Segments are this big and aligned (`heap::segment::SEGMENT_SIZE`).
const SEGMENT: usize = 4 << 20;

fn segment_of(p: usize) -> usize {
    p & !(SEGMENT - 1)
}

/// docs/correctness.md invariant 20: a label heap adopts no abandoned segment (its pages hold
/// its label's blocks only) and gives none of its own away. A thread exits with live blocks,
/// which leaves its segment abandoned with free slices; a labelled scope then allocates
/// blocks of every kind, several segments' worth (a label heap that gave up its full
/// segments would abandon them): none lands in the abandoned segment, and
/// the abandoned count does not move. A thread of a plain heap that then needs slices adopts
/// that segment (the check above could fail).
#[test]
fn inner_a_label_heap_adopts_no_abandoned_segment_and_abandons_none() {
    if !child::is_child() {
        return;
    }
    assert!(nodes::move_to_node(0), "pin to node 0");
    // (A move gives up the segments the thread had on another node: counted from here.)
    let start = tieralloc::stats().segments_abandoned;
    let left: Vec<usize> = std::thread::spawn(|| {
        assert!(nodes::move_to_node(0), "pin to node 0");
        (0..64)
            .map(|i| Box::into_raw(Box::new([i as u8; 100])) as usize)
            .collect()
    })
    .join()
    .unwrap();
    let abandoned = segment_of(left[0]);
    assert!(left.iter().all(|&p| segment_of(p) == abandoned));
    let before = tieralloc::stats();
    assert_eq!(
        before.segments_abandoned,
        start + 1,
        "the exited thread's segment is abandoned"
    );
    let (small, medium, large) = {
        let _g = place_labeled(node0(), "t-adopt");
        // About 7 MB of small blocks: the first segment fills up (its pages all full, no free
        // slice), which is when a thread's heap gives one up.
        let small: Vec<Box<[u8; 100]>> = (0..60_000).map(|i| Box::new([i as u8; 100])).collect();
        let medium: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; 10 << 10]).collect();
        // 40 pages of four slices: two and a half segments.
        let large: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; 200 << 10]).collect();
        (small, medium, large)
    };
    // The blocks and the three vectors' own (all allocated inside the scope).
    let mut starts: Vec<usize> = small.iter().map(|b| &**b as *const _ as usize).collect();
    starts.extend(medium.iter().chain(&large).map(|v| v.as_ptr() as usize));
    starts.extend([
        small.as_ptr() as usize,
        medium.as_ptr() as usize,
        large.as_ptr() as usize,
    ]);
    let mut want = 0;
    for &p in &starts {
        assert_ne!(
            segment_of(p),
            abandoned,
            "a label heap's block {p:#x} in the abandoned segment"
        );
        want += usable(p as *const u8);
    }
    let during = tieralloc::stats();
    assert_eq!(during.pages_adopted, before.pages_adopted, "adopted pages");
    assert_eq!(
        during.segments_abandoned, before.segments_abandoned,
        "a label heap gave up a segment, or took the abandoned one"
    );
    assert_eq!(live::label_live("t-adopt"), want);
    // A plain heap that needs slices takes the abandoned segment (before its own new one).
    let adopted = std::thread::spawn(|| {
        assert!(nodes::move_to_node(0), "pin to node 0");
        let v = vec![1u8; 200 << 10];
        let at = segment_of(v.as_ptr() as usize);
        drop(v);
        at
    })
    .join()
    .unwrap();
    assert_eq!(
        adopted, abandoned,
        "a plain heap adopts the abandoned segment"
    );
    assert!(tieralloc::stats().pages_adopted > before.pages_adopted);
    drop((small, medium, large));
    assert_eq!(live::label_live("t-adopt"), 0);
    for p in left {
        // SAFETY: the blocks the exited thread leaked above, each freed once.
        drop(unsafe { Box::from_raw(p as *mut [u8; 100]) });
    }
}

#[test]
fn a_label_heap_adopts_no_abandoned_segment_and_abandons_none() {
    if child::is_child() {
        return;
    }
    run_child(
        "inner_a_label_heap_adopts_no_abandoned_segment_and_abandons_none",
        None,
    );
}
