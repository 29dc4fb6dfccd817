//! A fork during another thread's very first allocator call (review rev29): in a fresh
//! process whose main thread has never called the allocator, a thread made with
//! `pthread_create` allocates at once (its call runs the start-up: `init::init_once`, the
//! topology's discovery, the thread key, the first heap's registration) while the main thread
//! forks. Each fork's child allocates, frees, starts a thread, joins it and exits; it must end
//! within a timeout (before the fix, a child forked while the other thread was inside one of
//! those one-time steps spun forever waiting for a thread it does not have).
//!
//! No test harness and no Rust `main` (`#![no_main]`): the C runtime calls `main` below, so
//! nothing allocates before it. The parent run starts this binary again, one fresh process per
//! attempt (`FIRST_CALL_ATTEMPT` set), since only a fresh process has a first call.
#![no_main]

use std::process::Command;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// Fresh processes tried; forks per process.
const ATTEMPTS: usize = 40;
const FORKS: usize = 6;

/// The other thread's start routine: its first act is an allocation (then a few more).
extern "C" fn first_caller(_: *mut libc::c_void) -> *mut libc::c_void {
    let mut v: Vec<Box<[u8; 100]>> = Vec::new();
    for i in 0..64 {
        v.push(Box::new([i as u8; 100]));
    }
    drop(v);
    core::ptr::null_mut()
}

/// What a fork's child does: allocate, free, start a thread that allocates, join it.
fn child_work() -> i32 {
    let v: Vec<u64> = (0..10_000).collect();
    let s: u64 = v.iter().sum();
    drop(v);
    let t = std::thread::spawn(|| {
        let v: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 64]).collect();
        v.iter().filter(|b| b.len() == 64).count()
    });
    match t.join() {
        Ok(1000) if s == 49_995_000 => 0,
        _ => 2,
    }
}

/// Waits for `pid` at most `limit`; kills it if it is still running. Its exit code, or 100 +
/// the signal that ended it, or 99 if it hung.
fn wait_or_kill(pid: libc::pid_t, limit: Duration) -> i32 {
    let start = Instant::now();
    let mut st = 0;
    loop {
        // SAFETY: pid is our child; st is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                100 + libc::WTERMSIG(st)
            };
        }
        if r != 0 || start.elapsed() > limit {
            // SAFETY: pid is our child, not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut st, 0);
            }
            return 99;
        }
        // SAFETY: a plain sleep.
        unsafe { libc::usleep(1000) };
    }
}

/// One attempt, in a fresh process: the main thread starts the first caller and forks at
/// once, `FORKS` times. Exit code 0 if every fork's child finished its work.
fn attempt() -> i32 {
    let mut t: libc::pthread_t = 0;
    // SAFETY: a default-attribute thread running an extern "C" fn without argument.
    let r = unsafe {
        libc::pthread_create(
            &mut t,
            core::ptr::null(),
            first_caller,
            core::ptr::null_mut(),
        )
    };
    if r != 0 {
        return 3;
    }
    let mut pids = [0 as libc::pid_t; FORKS];
    for p in pids.iter_mut() {
        // SAFETY: fork has no preconditions; the child runs child_work and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = child_work();
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        *p = pid;
    }
    let mut worst = 0;
    for pid in pids {
        if pid < 0 {
            worst = 4;
        } else if worst != 0 {
            // One failed already: the rest are not waited for.
            wait_or_kill(pid, Duration::ZERO);
        } else {
            worst = wait_or_kill(pid, Duration::from_secs(20));
        }
    }
    // SAFETY: the thread made above, joined once.
    unsafe { libc::pthread_join(t, core::ptr::null_mut()) };
    worst
}

#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // libc's getenv, not std's (which allocates): nothing may call the allocator first.
    // SAFETY: a NUL-terminated name; the result is only compared with null.
    if !unsafe { libc::getenv(c"FIRST_CALL_ATTEMPT".as_ptr()) }.is_null() {
        return attempt();
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    let mut failed = Vec::new();
    for k in 0..ATTEMPTS {
        let st = Command::new(&exe)
            .env("FIRST_CALL_ATTEMPT", "1")
            .status()
            .expect("start an attempt");
        if !st.success() {
            failed.push((k, st.code()));
            break; // one is enough (a hang costs the timeout)
        }
    }
    if failed.is_empty() {
        println!("fork_during_first_call: {ATTEMPTS} fresh processes, {FORKS} forks each: ok");
        0
    } else {
        eprintln!(
            "fork_during_first_call: {} of {ATTEMPTS} attempts failed (attempt, exit code; 99: \
             a fork's child hung, killed after 20 s): {failed:?}",
            failed.len()
        );
        1
    }
}
