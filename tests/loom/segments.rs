//! Segments: ownership, the abandoned lists, the pools (`heap::list`), with the delayed
//! frees.

use super::remote::drain_into;
use super::*;

/// A segment with one page, as the models need it: an owner word, the list tag and links
/// (`ListNode`), the page's remote-free word, and the page's owner-side free list and a
/// payload as loom cells (only the segment's owner, or the holder of its list's lock,
/// touches them).
pub(super) struct Seg {
    owner: AtomicUsize,
    tag: AtomicU8,
    link: Link<Seg>,
    page: RemoteFree,
    local: UnsafeCell<Vec<usize>>,
    data: UnsafeCell<u32>,
}

// SAFETY: the raw links are only followed under a list's lock (ListNode's contract).
unsafe impl Send for Seg {}
// SAFETY: as above; every other field is an atomic or a loom cell.
unsafe impl Sync for Seg {}

impl Seg {
    pub(super) fn new(owner: usize) -> Seg {
        Seg {
            owner: AtomicUsize::new(owner),
            tag: AtomicU8::new(0),
            link: Link::new(),
            page: RemoteFree::new(),
            local: UnsafeCell::new(Vec::new()),
            data: UnsafeCell::new(0),
        }
    }
    pub(super) fn ptr(&self) -> *mut Seg {
        self as *const Seg as *mut Seg
    }
}

links_through_field!(Seg);

impl ListNode for Seg {
    unsafe fn list_tag(n: *mut Self) -> u8 {
        // SAFETY: n is a live Seg (the Arcs outlive the model's threads).
        unsafe { (*n).tag.load(Ordering::Relaxed) }
    }
    unsafe fn set_list_tag(n: *mut Self, tag: u8) {
        // SAFETY: as above.
        unsafe { (*n).tag.store(tag, Ordering::Relaxed) }
    }
    unsafe fn owner(n: *mut Self) -> usize {
        // SAFETY: as above.
        unsafe { (*n).owner.load(Ordering::Relaxed) }
    }
    unsafe fn set_owner(n: *mut Self, owner: usize, _tag: u16) {
        // As segment::set_owner: a release store.
        // SAFETY: as above.
        unsafe { (*n).owner.store(owner, Ordering::Release) }
    }
}

/// A purger's visit of `list` (`LockedList::try_visit`, as `purger::purge_abandoned`): every
/// segment `due` says yes to is "purged" (its payload incremented) with the list's lock
/// released. Returns whether the visit ran and how many segments it purged.
fn visit_purging(list: &LockedList<Seg>, due: impl FnMut(*mut Seg) -> bool) -> (bool, u32) {
    let mut purged = 0u32;
    let ran = list.try_visit(due, |n| {
        purged += 1;
        // SAFETY: busy on the list: ours until the visit is done with it.
        unsafe { (*n).data.with_mut(|d| *d += 1) };
    });
    (ran, purged)
}

/// The segments on `list`, front to back.
fn listed(list: &LockedList<Seg>) -> Vec<*mut Seg> {
    let mut on_list = Vec::new();
    list.for_each(|s| on_list.push(s));
    on_list
}

/// `list` holds exactly `want`, in that order, and its count is their number.
fn assert_listed(list: &LockedList<Seg>, want: &[*mut Seg]) {
    assert_eq!(listed(list), want);
    assert_eq!(list.count.load(Ordering::Relaxed), want.len());
}

/// A thread with heap id `me` frees block `b` of `seg`'s page, as `free_other` and
/// `free_other_slow` do: if the segment is abandoned and `same_node`, it tries to claim it
/// from `list` and, having adopted it, frees locally; else it pushes (and finishes a delayed
/// free onto the owner's stack in `stacks`). Returns whether it adopted the segment.
fn free_into(
    seg: &Seg,
    list: &LockedList<Seg>,
    stacks: &[BlockStack],
    me: usize,
    same_node: bool,
    b: usize,
) -> bool {
    let owner = seg.owner.load(Ordering::Acquire);
    // SAFETY: our live block keeps the segment alive.
    if owner == 0 && same_node && unsafe { list.claim(seg.ptr(), me, me as u16) } {
        // Adopted (adopt_segment): no delayed free is in flight on its pages, so the state
        // can be forced; take in the remote frees; then free our block locally.
        seg.page.force_state(NORMAL);
        let got = take_page_list(&seg.page);
        // SAFETY: the segment is ours now; its page's free list is ours.
        seg.local.with_mut(|l| unsafe {
            (*l).extend(got);
            (*l).push(b);
        });
        return true;
    }
    // SAFETY: we own b.
    if let Pushed::Delayed = unsafe { seg.page.push(b as *mut Block) } {
        // free_delayed: the owner cannot have left while the page is DELAYED_FREEING.
        let o = seg.owner.load(Ordering::Acquire);
        assert_ne!(o, 0, "a delayed free found no owner");
        // SAFETY: push said Delayed.
        unsafe { delayed::finish(&stacks[o], &seg.page, b as *mut Block) };
    }
    false
}

/// The drain of the delayed stack against abandonment and claim on free. Heap 1 owns a
/// segment whose page is full (USE_DELAYED) and gives it up (abandon_segment / thread exit:
/// set_never_delayed, `delayed::drain`, take in the page's remote frees, push it on the
/// abandoned list). Heaps 2 and 3 each free a block of that page meanwhile: through the
/// delayed path, onto the page, or (heap 2, of the segment's node), finding it abandoned, by
/// claiming and adopting it. (Heap 3 is of another node and never claims: loom's scheduler
/// cannot get through three threads spinning on one lock.)
/// Whatever the interleaving: each block is freed exactly once (into the page's free list by
/// whoever owned it, or left on the page's remote list), at most one heap adopts, nothing is
/// left on a delayed stack (above all not on heap 1's after it left), and the page's free
/// list is only written by its owner of the moment (loom checks each owner's writes happen
/// before the next one's).
#[test]
fn drain_races_with_abandon_and_claim_on_free() {
    check(2, |yield_first| {
        let seg = Arc::new(Seg::new(1));
        seg.page.force_state(USE_DELAYED);
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        let stacks: Arc<[BlockStack; 4]> = Arc::new(Default::default());
        let blocks = [new_block(), new_block()];
        let freers: Vec<_> = [(2, true), (3, false)]
            .into_iter()
            .zip(blocks)
            .map(|((me, same_node), b)| {
                let (seg, list, stacks) = (seg.clone(), list.clone(), stacks.clone());
                thread::spawn(move || free_into(&seg, &list, &stacks[..], me, same_node, b))
            })
            .collect();
        if yield_first {
            thread::yield_now();
        }
        // Heap 1 abandons the segment.
        seg.page.set_never_delayed();
        drain_into(&stacks[1], &seg.page, &seg.local);
        let got = take_page_list(&seg.page);
        // SAFETY: still ours.
        seg.local.with_mut(|l| unsafe { (*l).extend(got) });
        // SAFETY: ours, on no list.
        unsafe { list.push_abandoned(seg.ptr()) };
        let adopted: usize = freers.into_iter().map(|t| t.join().unwrap() as usize).sum();
        assert!(adopted <= 1, "two heaps adopted one segment");
        for (i, s) in stacks.iter().enumerate() {
            assert!(
                s.take_all().is_null(),
                "a block left on heap {i}'s delayed stack"
            );
        }
        let owner = seg.owner.load(Ordering::Relaxed);
        let mut on_list = 0;
        list.for_each(|s| {
            assert_eq!(s, seg.ptr());
            on_list += 1;
        });
        assert_eq!(on_list, list.count.load(Ordering::Relaxed));
        if adopted == 1 {
            assert_eq!(owner, 2);
            assert_eq!(on_list, 0, "an adopted segment is off the list");
        } else {
            assert_eq!(owner, 0);
            assert_eq!(on_list, 1);
        }
        // SAFETY: both threads are joined: the segment's owner-side list has no other reader or writer.
        let mut seen = seg.local.with(|l| unsafe { (*l).clone() });
        seen.extend(take_page_list(&seg.page));
        exactly_once(&blocks, &seen);
        for b in blocks {
            free_block(b);
        }
    });
}

/// The abandoned lists, abandonment against claim on free: heap 1 writes its segment and
/// abandons it (`push_abandoned` onto the list of segments with room) while heap 2, holding a
/// block of it, tries to claim it as `free_other_slow` does, from the full list first, then
/// from the other, and writes it if it got it. The segment's contents pass from one to the
/// other only through the list (loom checks heap 1's write happens before heap 2's); a claim
/// on the list the segment is not on fails and leaves both lists whole; each list's count is
/// its length; at the end the segment is either on its list, unowned, or heap 2's.
#[test]
fn abandoned_list_abandon_against_claim() {
    check(3, |yield_first| {
        let seg = Arc::new(Seg::new(1));
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        let full = LockedList::<Seg>::tagged(2);
        let owner = {
            let (seg, list) = (seg.clone(), list.clone());
            thread::spawn(move || {
                // SAFETY: the segment is heap 1's until it lets go of it.
                seg.data.with_mut(|d| unsafe { *d = 1 });
                // SAFETY: ours, on no list.
                unsafe { list.push_abandoned(seg.ptr()) };
            })
        };
        if yield_first {
            thread::yield_now();
        }
        // SAFETY: the model's Arc keeps the segment alive.
        let claimed = unsafe { full.claim(seg.ptr(), 2, 2) || list.claim(seg.ptr(), 2, 2) };
        if claimed {
            // SAFETY: claimed: ours.
            seg.data.with_mut(|d| unsafe { *d += 100 });
        }
        owner.join().unwrap();
        let mut len = 0;
        list.for_each(|_| len += 1);
        assert_eq!(len, list.count.load(Ordering::Relaxed), "count is length");
        let mut full_len = 0;
        full.for_each(|_| full_len += 1);
        assert_eq!((full_len, full.count.load(Ordering::Relaxed)), (0, 0));
        // SAFETY: the threads that wrote the data are joined: this read races with nothing.
        let data = seg.data.with(|d| unsafe { *d });
        assert_eq!(data, 1 + 100 * claimed as u32);
        let state = (seg.owner.load(Ordering::Relaxed), len);
        assert_eq!(state, if claimed { (2, 0) } else { (0, 1) });
    });
}

/// The abandoned list, a visit against claim on free: a thread tending abandoned segments
/// pops one, writes it and puts it back at the end (heap_collect / tend_abandoned), while a
/// freeing thread claims it and writes it. At most one holds it at a time (loom checks each
/// write happens before the other's access); a claim fails while the visitor holds it (it
/// is on no list then); the list's count is its length; the segment ends on the list
/// (unowned) or with the claimer.
#[test]
fn abandoned_list_visit_against_claim() {
    check(3, |yield_first| {
        let seg = Arc::new(Seg::new(1));
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        // SAFETY: heap 1's; it abandons it before the others start.
        unsafe { list.push_abandoned(seg.ptr()) };
        let tender = {
            let list = list.clone();
            thread::spawn(move || {
                let s = list.pop(3, 3);
                if s.is_null() {
                    return false;
                }
                // SAFETY: popped: ours until we push it back.
                unsafe {
                    assert_eq!((*s).owner.load(Ordering::Relaxed), 3);
                    (*s).data.with_mut(|d| *d += 10);
                    list.push_abandoned_back(s);
                }
                true
            })
        };
        if yield_first {
            thread::yield_now();
        }
        // SAFETY: the model's Arc keeps the segment alive.
        let claimed = unsafe { list.claim(seg.ptr(), 2, 2) };
        if claimed {
            // SAFETY: claimed: ours.
            seg.data.with_mut(|d| unsafe { *d += 100 });
        }
        let tended = tender.join().unwrap();
        let mut len = 0;
        list.for_each(|_| len += 1);
        assert_eq!(len, list.count.load(Ordering::Relaxed), "count is length");
        // SAFETY: the threads that wrote the data are joined: this read races with nothing.
        let data = seg.data.with(|d| unsafe { *d });
        assert_eq!(data, 10 * tended as u32 + 100 * claimed as u32);
        assert!(tended || claimed, "one of them got it");
        let state = (seg.owner.load(Ordering::Relaxed), len);
        assert_eq!(state, if claimed { (2, 0) } else { (0, 1) });
    });
}

/// A pool: two segments pushed by one thread, one popped by another, while a third unmaps
/// the expired ones (`remove_if`, the core of `unmap_expired`, which gives up if the lock is
/// busy). Each segment ends up exactly once: popped, unmapped, or still pooled; the unmapper
/// and the popper never get the same one (the "unmap" writes the segment, which loom checks
/// against the popper's write); count is length.
#[test]
fn pool_push_pop_and_expiry() {
    check(2, |yield_first| {
        let segs = [Arc::new(Seg::new(0)), Arc::new(Seg::new(0))];
        let pool = Arc::new(LockedList::<Seg>::new());
        let pusher = {
            let (segs, pool) = (segs.clone(), pool.clone());
            thread::spawn(move || {
                for s in &segs {
                    // SAFETY: unowned, on no list.
                    unsafe { pool.push(s.ptr()) };
                }
            })
        };
        let popper = {
            let pool = pool.clone();
            thread::spawn(move || {
                let s = pool.pop(7, 7);
                if !s.is_null() {
                    // SAFETY: popped: ours.
                    unsafe { (*s).data.with_mut(|d| *d += 1) };
                }
                s as usize
            })
        };
        if yield_first {
            thread::yield_now();
        }
        let mut gone = Vec::new();
        pool.remove_if(
            |_| true,
            |s| {
                // SAFETY: off the list: ours to unmap.
                unsafe { (*s).data.with_mut(|d| *d += 100) };
                gone.push(s as usize);
            },
        );
        pusher.join().unwrap();
        let popped = popper.join().unwrap();
        let mut pooled = Vec::new();
        pool.for_each(|s| pooled.push(s as usize));
        assert_eq!(pooled.len(), pool.count.load(Ordering::Relaxed));
        let mut seen = gone.clone();
        seen.extend(pooled);
        if popped != 0 {
            seen.push(popped);
        }
        let all: Vec<usize> = segs.iter().map(|s| s.ptr() as usize).collect();
        exactly_once(&all, &seen);
        for s in &segs {
            // SAFETY: the pusher and popper are joined: nothing else reads or writes the data.
            let d = s.data.with(|d| unsafe { *d });
            assert!(
                d == 0 || d == 1 || d == 100,
                "a segment popped and unmapped: {d}"
            );
        }
    });
}

/// A delayed free after an adoption reaches the adopter, not the heap that left: heap 1 gives
/// its segment up (`set_never_delayed`, `push_abandoned`), heap 2 pops it off the abandoned
/// list and adopts it as `adopt_segment` does (`force_state(NORMAL)`, the remote frees taken
/// in, then, the page being full, `try_set_state(USE_DELAYED)`), while heap 3 (of another
/// node: it never claims) frees a block of the page. If its push goes the delayed way, the
/// owner it reads next (`free_delayed`'s load) must be heap 2: the `USE_DELAYED` it found was
/// stored by heap 2 after its owner store, and only the push's acquire (with
/// `try_set_state`'s release) orders that owner store before heap 3's load; without it the
/// load may still return heap 1, read before (loom finds it: the block lands on heap 1's
/// stack, which nobody drains once heap 1 has left). Each block is freed once: on the page's
/// list, in heap 2's page list, or on heap 2's delayed stack.
#[test]
fn a_delayed_free_after_an_adoption_reaches_the_adopter() {
    check(2, |yield_first| {
        let seg = Arc::new(Seg::new(1));
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        let stacks: Arc<[BlockStack; 4]> = Arc::new(Default::default());
        let b = new_block();
        let freer = {
            let (seg, list, stacks) = (seg.clone(), list.clone(), stacks.clone());
            thread::spawn(move || free_into(&seg, &list, &stacks[..], 3, false, b))
        };
        if yield_first {
            thread::yield_now();
        }
        // Heap 1 leaves (abandon_segment): no delayed free after this aims at it.
        seg.page.set_never_delayed();
        // SAFETY: heap 1's, on no list.
        unsafe { list.push_abandoned(seg.ptr()) };
        // Heap 2 pops it (take_slices' pop off the abandoned list) and adopts it.
        let s = list.pop(2, 2);
        assert_eq!(s, seg.ptr());
        seg.page.force_state(NORMAL);
        let got = take_page_list(&seg.page);
        // SAFETY: heap 2 owns the segment and so its page's free list.
        seg.local.with_mut(|l| unsafe { (*l).extend(got) });
        // The page is full: a remote free must announce its room (adopt_segment).
        assert!(seg.page.try_set_state(USE_DELAYED, false));
        assert!(!freer.join().unwrap(), "heap 3 never claims");
        for i in [0, 1, 3] {
            assert!(
                stacks[i].take_all().is_null(),
                "a delayed free reached heap {i}, not the page's owner"
            );
        }
        drain_into(&stacks[2], &seg.page, &seg.local);
        // SAFETY: the freer is joined: heap 2's list races with nothing.
        let mut seen = seg.local.with(|l| unsafe { (*l).clone() });
        seen.extend(take_page_list(&seg.page));
        exactly_once(&[b], &seen);
        free_block(b);
    });
}

/// A claim waits for the list's lock: heap 2, freeing into segment A that heap 1 has left on
/// the abandoned list, claims it (`free_other_slow`) while heap 3 abandons segment B onto the
/// same list, holding its lock. The claim gets A whatever heap 3 is doing: a claim that gave
/// up on a busy lock (`try_lock`) would leave A abandoned though its freer was there to adopt
/// it, which no other model sees (both ends are allowed outcomes of a race with the
/// abandoner; this one has no race on A). The list holds B alone at the end.
#[test]
fn a_claim_waits_for_a_lock_held_by_another_abandon() {
    check(2, |yield_first| {
        let a = Arc::new(Seg::new(1));
        let b = Arc::new(Seg::new(3));
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        // SAFETY: heap 1's, on no list.
        unsafe { list.push_abandoned(a.ptr()) };
        let other = {
            let (b, list) = (b.clone(), list.clone());
            // SAFETY: heap 3's, on no list.
            thread::spawn(move || unsafe { list.push_abandoned(b.ptr()) })
        };
        if yield_first {
            thread::yield_now();
        }
        // SAFETY: the model's Arc keeps A alive.
        let claimed = unsafe { list.claim(a.ptr(), 2, 2) };
        other.join().unwrap();
        assert!(claimed, "a claim of a listed segment gave up");
        assert_listed(&list, &[b.ptr()]);
        assert_eq!(a.owner.load(Ordering::Relaxed), 2);
    });
}

/// A purge's visit against a claim of the same segment (review rev36): the background
/// purger visits the abandoned list (`LockedList::try_visit`, `purger::purge_abandoned`) and
/// purges the due segment A with the list's lock released, writing it (its slice bitmaps,
/// its `madvise`); meanwhile a freeing thread claims A (the free that adopts it, or the one
/// that brings its live hint to 0 and gives it back) and writes it as its new owner. The
/// claim never gives up on A (it waits for A's visit, then takes it) and never overlaps the
/// purge (loom checks the purge's write happens before the claimer's access, or the other
/// way round); the other segment B stays listed and unvisited (not due); count is length.
#[test]
fn a_claim_never_overlaps_the_purge_of_its_segment() {
    check(2, |yield_first| {
        let a = Arc::new(Seg::new(1));
        let b = Arc::new(Seg::new(1));
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        // SAFETY: heap 1's, on no list; it abandons them before the others start.
        unsafe {
            list.push_abandoned(b.ptr());
            list.push_abandoned(a.ptr());
        }
        let purger = {
            let (list, a) = (list.clone(), a.clone());
            thread::spawn(move || visit_purging(&list, |n| n == a.ptr()))
        };
        if yield_first {
            thread::yield_now();
        }
        // SAFETY: the model's Arc keeps A alive.
        let claimed = unsafe { list.claim(a.ptr(), 2, 2) };
        assert!(claimed, "a claim of a listed segment gave up");
        // SAFETY: claimed: ours.
        a.data.with_mut(|d| unsafe { *d += 100 });
        let (ran, visited) = purger.join().unwrap();
        // SAFETY: the threads that wrote the data are joined.
        let data = a.data.with(|d| unsafe { *d });
        assert_eq!(data, 100 + visited);
        assert!(visited <= 1 && (ran || visited == 0));
        assert_listed(&list, &[b.ptr()]);
        assert_eq!(a.owner.load(Ordering::Relaxed), 2);
        // SAFETY: as above.
        assert_eq!(b.data.with(|d| unsafe { *d }), 0, "B was not due");
    });
}

/// A purge's visit against a tending's pop and an exit's push on the same list (review
/// rev36): the purger visits the list, purging each segment (every one is due) with the
/// lock released, while another thread pops a segment, writes it and puts it back at the
/// end (a tending), then abandons segment C at the back (an exit). The pop never takes the
/// segment being purged (loom checks the writes are ordered), the walk goes on past a
/// segment whose neighbours changed meanwhile, and every segment ends on the list once
/// (count is length). (Two threads: loom's scheduler cannot get through three spinning on
/// one lock.)
#[test]
fn a_pop_and_a_push_back_never_overlap_a_purge() {
    check(2, |yield_first| {
        let a = Arc::new(Seg::new(1));
        let c = Arc::new(Seg::new(4));
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        // SAFETY: heap 1's, on no list.
        unsafe { list.push_abandoned(a.ptr()) };
        let purger = {
            let list = list.clone();
            thread::spawn(move || visit_purging(&list, |_| true))
        };
        if yield_first {
            thread::yield_now();
        }
        let s = list.pop(3, 3);
        if !s.is_null() {
            // SAFETY: popped: ours until we push it back.
            unsafe {
                (*s).data.with_mut(|d| *d += 100);
                list.push_abandoned_back(s);
            }
        }
        // SAFETY: heap 4's, on no list.
        unsafe { list.push_abandoned_back(c.ptr()) };
        purger.join().unwrap();
        let mut on_list = listed(&list);
        on_list.sort();
        let mut want = vec![a.ptr(), c.ptr()];
        want.sort();
        assert_eq!(on_list, want, "each segment listed once");
        assert_eq!(list.count.load(Ordering::Relaxed), 2);
        assert_eq!(
            (
                a.owner.load(Ordering::Relaxed),
                c.owner.load(Ordering::Relaxed)
            ),
            (0, 0)
        );
    });
}

/// Two visits of one list at once (review rev37: what keeps two visitors apart; the
/// purger's pass holds `PASS`, but `try_visit` must not rely on it): both visit every
/// segment (both due). A visit that starts while the other has a segment busy returns at
/// once having done nothing; one that starts while the other walks with the lock held waits
/// for nothing (`try_lock` fails: it returns at once too); otherwise they run one after the
/// other. No segment is ever worked on by both at once (loom checks the writes are
/// ordered), each visit that ran worked on both segments, and both stay listed.
#[test]
fn a_second_visit_never_overlaps_the_first() {
    check(2, |yield_first| {
        let a = Arc::new(Seg::new(1));
        let b = Arc::new(Seg::new(1));
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        // SAFETY: heap 1's, on no list.
        unsafe {
            list.push_abandoned(b.ptr());
            list.push_abandoned(a.ptr());
        }
        let other = {
            let list = list.clone();
            thread::spawn(move || visit_purging(&list, |_| true))
        };
        if yield_first {
            thread::yield_now();
        }
        let (ran1, w1) = visit_purging(&list, |_| true);
        let (ran2, w2) = other.join().unwrap();
        assert!(ran1 || ran2, "neither visit ran");
        assert_eq!(w1, if ran1 { 2 } else { 0 }, "a refused visit did nothing");
        assert_eq!(w2, if ran2 { 2 } else { 0 }, "a refused visit did nothing");
        let runs = ran1 as u32 + ran2 as u32;
        // SAFETY: the visiting threads are joined.
        unsafe {
            assert_eq!(a.data.with(|d| *d), runs);
            assert_eq!(b.data.with(|d| *d), runs);
        }
        assert_listed(&list, &[a.ptr(), b.ptr()]);
    });
}

/// A visit's walk goes on from the busy segment's successor as it is when the visit takes
/// the lock again (review rev37): the purger visits A (list A, B, C, all due) while a
/// freeing thread claims B, A's successor at the mark, and writes it as its owner. The walk
/// must not follow a stale link to B (claimed: its fields are its owner's now; loom checks
/// a purge of B and the owner's write are ordered, and the assertion that B is purged only
/// before its claim); it goes on to C, which it purges exactly once (unless the visit was
/// refused: the claim held the lock at its `try_lock`).
#[test]
fn the_walk_goes_on_past_a_successor_claimed_meanwhile() {
    check(2, |yield_first| {
        let a = Arc::new(Seg::new(1));
        let b = Arc::new(Seg::new(1));
        let c = Arc::new(Seg::new(1));
        let list = Arc::new(LockedList::<Seg>::tagged(1));
        // SAFETY: heap 1's, on no list.
        unsafe {
            list.push_abandoned(c.ptr());
            list.push_abandoned(b.ptr());
            list.push_abandoned(a.ptr());
        }
        let purger = {
            let list = list.clone();
            thread::spawn(move || visit_purging(&list, |_| true).0)
        };
        if yield_first {
            thread::yield_now();
        }
        // SAFETY: the model's Arc keeps B alive.
        let claimed = unsafe { list.claim(b.ptr(), 2, 2) };
        assert!(claimed, "a claim of a listed segment gave up");
        // SAFETY: claimed: ours.
        let purged_before = b.data.with_mut(|d| unsafe {
            let was = *d;
            *d += 100;
            was
        });
        // Refused (0 visits) if the claim held the lock at its try.
        let ran = purger.join().unwrap() as u32;
        // SAFETY: the threads that wrote the data are joined.
        unsafe {
            assert_eq!(a.data.with(|d| *d), ran);
            assert_eq!(
                b.data.with(|d| *d),
                100 + purged_before,
                "B purged after its claim"
            );
            assert!(purged_before <= ran);
            assert_eq!(c.data.with(|d| *d), ran, "C purged once");
        }
        assert_listed(&list, &[a.ptr(), c.ptr()]);
        assert_eq!(b.owner.load(Ordering::Relaxed), 2);
    });
}
