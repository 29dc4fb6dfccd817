//! Pool, bump cache and fork: the per-thread caches are found through per-thread ids handed
//! out by a registry behind a lock. Review rev34: the ids came from the `thread_local` crate,
//! whose registry is a private std `Mutex`, taken at a thread's first lookup (the id's
//! allocation) and at its exit (the id's release); a fork while another thread held it left
//! the child's threads waiting forever at their first pool-cache or bump-cache lookup.
//!
//! Two threads keep creating threads that do one pool `get` and one bump `checkout` each and
//! exit (each a first lookup and a release), while the main thread forks; each child starts
//! a thread that does a `get` and a `checkout` (a first lookup) and joins it. A child that does
//! not finish within 20 s is killed and the test fails.
//!
//! The child's thread is a bare pthread: std's `thread::spawn` takes a std `Mutex` of its own
//! at every thread's start and exit (its stack-overflow handler's thread table), which the
//! spawning threads hold now and then at the fork too; a child spawning through std hangs there
//! as well (seen under gdb), whatever the pool does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tieralloc::{BumpCache, Pool};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;

const FORKS: usize = 5000;

/// Forks; the child runs `body` (see `child::fork_and_wait`); a child that hangs is killed
/// after 20 s.
fn in_child(body: impl FnOnce() -> i32) -> Result<i32, String> {
    child::fork_and_wait(Duration::from_secs(20), body)
}

type Both<'a> = (&'a Pool<Vec<u8>>, &'a BumpCache);

/// A child's thread: one `get` and one `checkout`; returns 0 if both work, 1 if not, 102 if
/// either panicked.
extern "C" fn first_use(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `arg` points to a `Both` that outlives this thread (its creator joins it).
    let (pool, bumps) = unsafe { *(arg as *const Both) };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let g = pool.get();
        let b = bumps.checkout();
        usize::from(g.len() != 64 || b.allocated_bytes() == 0)
    }));
    r.unwrap_or(102) as *mut libc::c_void
}

#[test]
fn a_fork_while_threads_start_and_exit_leaves_the_childs_threads_their_caches() {
    let pool = Arc::new(Pool::new(|| vec![0u8; 64]));
    let bumps = Arc::new(BumpCache::new());
    let stop = Arc::new(AtomicBool::new(false));
    let spawners: Vec<_> = (0..2)
        .map(|_| {
            let (pool, bumps, stop) = (pool.clone(), bumps.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (pool, bumps) = (pool.clone(), bumps.clone());
                    std::thread::spawn(move || {
                        drop(pool.get());
                        drop(bumps.checkout());
                    })
                    .join()
                    .unwrap();
                }
            })
        })
        .collect();
    let mut failed = None;
    for i in 0..FORKS {
        let r = in_child(|| {
            let both = (&*pool, &*bumps);
            let mut t: libc::pthread_t = 0;
            // SAFETY: `both` outlives the thread (joined below); `first_use` takes that type.
            let rc = unsafe {
                libc::pthread_create(
                    &mut t,
                    core::ptr::null(),
                    first_use,
                    &both as *const Both as *mut libc::c_void,
                )
            };
            if rc != 0 {
                return 103;
            }
            let mut ret: *mut libc::c_void = core::ptr::null_mut();
            // SAFETY: `t` was created above and is joined once.
            unsafe { libc::pthread_join(t, &mut ret) };
            ret as usize as i32
        });
        if r != Ok(0) {
            failed = Some((i, r));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in spawners {
        s.join().unwrap();
    }
    if let Some((i, r)) = failed {
        panic!("fork {} of {FORKS}: {r:?}", i + 1);
    }
}
