//! Tests of the purger's pass over the abandoned segments (`purger::purge_abandoned`) against
//! the threads that take segments off the same list or put them back meanwhile (a remote
//! free's `claim`, a thread exit's or a tending's `push_abandoned_back`). May touch everything
//! of `heap::thread` (a child module).

use super::purger::{purge_abandoned, BEFORE_ABANDONED_PURGE};
use crate::heap::segment::SEGMENT_SIZE;
use crate::heap::segment::{map_remove, Segment, ABANDONED, MAX_NODES, NO_TAG, SEGMENTS};
use crate::sync::Ordering;
use crate::sys::os;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The segment whose purge [`park`] holds up.
static TARGET: AtomicUsize = AtomicUsize::new(0);
/// (the purging thread is parked, it is released)
static STATE: Mutex<(bool, bool)> = Mutex::new((false, false));
static CHANGED: Condvar = Condvar::new();

/// The hook: parks the purging thread at [`TARGET`]'s purge until the test releases it.
fn park(seg: *mut Segment) {
    if seg as usize != TARGET.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let mut s = STATE.lock().unwrap();
    s.0 = true;
    CHANGED.notify_all();
    while !s.1 {
        s = CHANGED.wait(s).unwrap();
    }
}

/// A claim of one abandoned segment (a remote free adopting it, or the free that empties it
/// giving it back) and a push at the back of the same list (a thread exit, a tending) must
/// not wait for the purge of another segment of that list: the purger holds a segment's
/// `madvise` calls, not the list, against them. The purging thread is parked in the purge of
/// segment `a`; another thread claims `b` and pushes `c` on the same list. Each must finish
/// while the purge is parked (within 10 s: a hang shows as no signal), after which the purge
/// is released either way.
#[test]
fn a_claim_and_a_push_back_do_not_wait_for_the_purge_of_another_segment() {
    // A list no other test uses (the lib's tests run on node 0).
    let node = MAX_NODES - 1;
    let list = &ABANDONED[node];
    let segs: Vec<*mut Segment> = (0..3)
        .map(|_| Segment::map_normal(node as u32, false))
        .collect();
    assert!(segs.iter().all(|s| !s.is_null()));
    let (a, b, c) = (segs[0] as usize, segs[1] as usize, segs[2] as usize);
    // SAFETY: fresh segments of ours, on no list; `a` is due for a purge (nothing to
    // decommit: its free slices were never touched).
    unsafe {
        (*(a as *mut Segment)).purge_at = 1;
        list.push_abandoned(b as *mut Segment);
        list.push_abandoned(a as *mut Segment);
    }
    TARGET.store(a, std::sync::atomic::Ordering::SeqCst);
    let purger = std::thread::spawn(|| {
        BEFORE_ABANDONED_PURGE.with(|f| f.set(Some(park)));
        purge_abandoned(os::now_ms());
    });
    {
        let mut s = STATE.lock().unwrap();
        while !s.0 {
            s = CHANGED.wait(s).unwrap();
        }
    }
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let claimer = std::thread::spawn(move || {
        // SAFETY: b stays mapped until the end of the test.
        let ok = unsafe { ABANDONED[node].claim(b as *mut Segment, 1, NO_TAG) };
        tx.send(("claim", ok)).unwrap();
    });
    let pusher = std::thread::spawn(move || {
        // SAFETY: c is ours and on no list.
        unsafe { ABANDONED[node].push_abandoned_back(c as *mut Segment) };
        tx2.send(("push_abandoned_back", true)).unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut done = Vec::new();
    while done.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(d) => done.push(d),
            Err(_) => break,
        }
    }
    {
        let mut s = STATE.lock().unwrap();
        s.1 = true;
        CHANGED.notify_all();
    }
    purger.join().unwrap();
    claimer.join().unwrap();
    pusher.join().unwrap();
    // Off the list again (claimed for nobody's heap) and unmapped.
    // SAFETY: a and c are on the list, b was claimed; none holds a block.
    unsafe {
        let _ = list.claim(a as *mut Segment, 1, NO_TAG);
        let _ = list.claim(c as *mut Segment, 1, NO_TAG);
        for s in [a, b, c] {
            map_remove(s as *mut Segment);
            os::unmap(s as *mut u8, SEGMENT_SIZE);
            SEGMENTS.fetch_sub(1, Ordering::Relaxed);
        }
    }
    assert_eq!(
        done.len(),
        2,
        "with the purge of another segment of the list parked, only {done:?} finished in 10 s"
    );
    assert!(
        done.iter().all(|&(_, ok)| ok),
        "the claim of a listed segment failed: {done:?}"
    );
}

/// Review rev40: the purger ends the process only when the main thread is a zombie (ended
/// with `pthread_exit`) and the purger is the one other thread; a command name with spaces
/// and parentheses does not shift the fields.
#[test]
fn the_purger_is_alone_only_beside_a_zombie_main_thread() {
    use super::purger::stat_says_alone;
    let line = |state: &str, threads: u32| {
        format!(
            "4725 (a) b (c)) {state} 1 4725 4725 0 -1 4194560 100 0 0 0 1 0 0 0 20 0 {threads} 0 \
             12345 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
        )
    };
    assert!(stat_says_alone(line("Z", 2).as_bytes()));
    assert!(!stat_says_alone(line("Z", 3).as_bytes()));
    assert!(!stat_says_alone(line("S", 2).as_bytes()));
    assert!(!stat_says_alone(line("R", 1).as_bytes()));
    // Review rev43: a main thread stopped, traced, in a disk wait or dead-but-not-zombie is
    // not one that ended.
    for state in ["T", "t", "D", "X", "R"] {
        assert!(!stat_says_alone(line(state, 2).as_bytes()), "{state}");
    }
    assert!(!stat_says_alone(b"garbage"));
    assert!(!stat_says_alone(b""));
    // This process: its main thread runs the harness.
    let own = std::fs::read("/proc/self/stat").unwrap();
    assert!(!stat_says_alone(&own));
}
