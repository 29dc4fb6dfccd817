//! fork under the drop-in: C programs and python3 that fork while other threads are alive and
//! busy, whose children then start threads of their own that allocate, free each other's
//! blocks and the blocks of the threads that died with the fork, and ask for statistics.
//! Every child must finish with the right output; every run has a timeout, and a run that
//! does not finish in time is a failure (its whole process group is killed, so no hung
//! child outlives the test).
//!
//! Needs the library built first (`cargo build -p tieralloc-preload --release`; it is found
//! next to this test executable), `cc` and `python3`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[path = "../../tests/common/child.rs"]
mod child;

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("tieralloc-fork-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("create a scratch directory");
        Scratch(d)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|c| c.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found; install it with `apt-get install -y {package}`")
        })
}

/// Compiles tests/c/<name>.c into `dir`.
fn compile(dir: &Scratch, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let out = dir.path(name);
    let st = Command::new(tool("cc", "build-essential"))
        .args(["-O1", "-w", "-fno-builtin", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(st.success(), "compiling {} failed", src.display());
    out
}

/// Runs `cmd` (in a process group of its own) with or without the library; after `timeout`
/// the whole group (forked children included) is killed and the test fails.
fn run(mut cmd: Command, preload: bool, timeout: Duration) -> child::Outcome {
    let tag = if preload { "tieralloc" } else { "glibc" };
    cmd.env_remove("LD_PRELOAD");
    if preload {
        cmd.env("LD_PRELOAD", child::preload_library());
    }
    let r = child::run(&mut cmd, timeout);
    if r.status.is_none() {
        let tail: Vec<&str> = r.stderr.lines().rev().take(20).collect();
        panic!(
            "{} ({tag}) hung: killed after {timeout:?}\nlast stderr lines:\n{}",
            r.what,
            tail.join("\n")
        );
    }
    r
}

/// Runs tests/c/<name>.c under the library; it must exit 0 and print "<name> ok".
fn c_test(name: &str, env: &[(&str, &str)]) -> child::Outcome {
    let dir = Scratch::new(name);
    let exe = compile(&dir, name);
    let mut cmd = Command::new(&exe);
    cmd.env_remove("TIERALLOC_SHOW_STATS");
    cmd.envs(env.iter().copied());
    let r = run(cmd, true, Duration::from_secs(120));
    r.expect_success(&format!("{name} ok"));
    r
}

/// Threads alive in the parent at fork; in the child, new threads (on the dead threads'
/// stacks) free the dead threads' blocks, allocate, free each other's blocks and call
/// malloc_stats and mallinfo2 while all are alive; the statistics exit hook runs in every
/// child and in the parent. Before the child's reset of the heap registry this hung at the
/// first statistics call (the registry had become a cycle).
#[test]
fn fork_with_live_threads_then_threads_in_the_child() {
    let r = c_test("fork_threads", &[("TIERALLOC_SHOW_STATS", "1")]);
    // 3 children, each: 2 generations of 4 threads printing once, its main thread once, and
    // the exit hook; then the parent's exit hook.
    let printed = r.stderr.matches("tieralloc statistics").count();
    assert_eq!(
        printed,
        3 * (2 * 4 + 1 + 1) + 1,
        "statistics printed:\n{}",
        r.stderr
    );
}

/// fork, 30 times, from a thread that takes part in a ring of threads passing blocks
/// (small to huge, each with a cookie checked on free) to each other; each child frees the
/// blocks that were in flight, runs a ring of its own, checks mallinfo2 while its threads
/// are alive, and ends with the forking thread's exit.
#[test]
fn fork_during_heavy_cross_thread_free_traffic() {
    c_test("fork_traffic", &[]);
}

/// fork 100 times from the main thread while three threads malloc, realloc, memalign and free
/// in a loop (small to huge blocks, swapped through a shared exchange, so remote and delayed
/// frees are in flight at every fork); each child frees the exchange's blocks (the dead
/// threads'), churns, starts and joins a thread that churns, and ends with `exit` (review
/// rev29). Four runs, one after the other (they compile into one scratch directory): plain,
/// on two simulated nodes (node heaps, per-node pools and abandoned lists in play at the
/// fork), and both with the background purger on and a 2 ms delay (its passes and the
/// collections' helping passes run all the time, and every fork waits one out). Passed on its
/// first runs: nothing of this traffic found a lock or state the handlers miss.
#[test]
fn fork_in_a_loop_while_threads_churn() {
    for nodes in [None, Some("2")] {
        for purger in [false, true] {
            let mut env = Vec::new();
            if let Some(n) = nodes {
                env.push(("TIERALLOC_SIMULATE_NODES", n));
            }
            if purger {
                env.push(("TIERALLOC_BACKGROUND_PURGE", "1"));
                env.push(("TIERALLOC_PURGE_DELAY_MS", "2"));
            }
            c_test("fork_loop", &env);
        }
    }
}

/// fork for 8 s from the main thread while eight threads spend most of their time in the
/// allocator's slow paths (64 KiB to 1 MiB blocks, a third freed by another thread), on two
/// simulated nodes with the background purger at a 2 ms delay; each child allocates in the
/// dead threads' segments, then checks and frees every block they held (review rev50).
/// Before the prepare handler pinned the other heaps' gates (ded2978), 2 of 5 runs had a
/// child crash ("double free" of a live block, SIGSEGV) in about 110 forks each; since review
/// rev51 the child quarantines the segments of a thread caught inside a slow path instead.
#[test]
fn fork_while_threads_are_inside_slow_paths() {
    c_test(
        "fork_slowpaths",
        &[
            ("TIERALLOC_SIMULATE_NODES", "2"),
            ("TIERALLOC_BACKGROUND_PURGE", "1"),
            ("TIERALLOC_PURGE_DELAY_MS", "2"),
        ],
    );
}

/// fork for 5 s while two threads getline a 600 KiB line (glibc reallocs it under the
/// stream's lock) and a third calls fflush(NULL) (glibc's stream list lock, then each
/// stream's): glibc's fork takes the list lock after the prepare handlers, so a prepare
/// handler that holds up the other threads' slow paths must take it first (review rev50: the
/// gate pins alone hung 3 runs of 3, the reader waiting for its gate, the flusher for the
/// reader's stream, the fork for the flusher).
#[test]
fn fork_while_threads_use_stdio() {
    c_test("fork_stdio", &[]);
}

/// fork (5 times) while a thread holding a stream's lock (`flockfile`, as `getline` holds it
/// while it reallocs) frees a block a thread left at its exit (the free adopts its segment:
/// a claim, under the abandoned lists' lock), and a thread in fflush(NULL) (glibc's stream
/// list lock) waits for that stream: glibc's fork takes the list lock after the prepare
/// handlers, so tieralloc's, which holds the allocator's locks until the parent handler,
/// must take the list lock first (review rev52: without it, as rev51 left it, 3 runs of 3
/// hung, SIGALRM at 30 s: the fork waiting for the flusher, the flusher for the stream, the
/// freer for the abandoned list's lock).
#[test]
fn fork_while_a_stream_holder_frees_into_an_abandoned_segment() {
    c_test("fork_stdio_free", &[]);
}

const PY_MULTIPROCESSING: &str = r#"
import concurrent.futures as cf
import ctypes
import hashlib
import multiprocessing as mp
import threading
import warnings

# Python 3.12+ warns that fork with threads alive may deadlock: that is what is tested here.
warnings.simplefilter("ignore", DeprecationWarning)


def work(seed):
    d = {}
    acc = []
    x = seed
    for i in range(20000):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        k = "k%d" % (x % 3000)
        d[k] = d.get(k, "") + chr(97 + x % 26)
        if len(d[k]) > 30:
            acc.append(d.pop(k))
        if i % 2000 == 0:
            acc = [s[::-1] for s in acc if len(s) % 3 != 0]
    h = hashlib.sha256()
    for k in sorted(d):
        h.update(k.encode())
        h.update(d[k].encode())
    for s in acc:
        h.update(s.encode())
    return h.hexdigest()[:16]


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


LIBC = ctypes.CDLL(None)
LIBC.mallinfo2.restype = MallInfo2


def work_and_stats(seed):
    r = work(seed)
    # The allocator's statistics while the pool's threads are alive (stderr, not compared).
    LIBC.malloc_stats()
    mi = LIBC.mallinfo2()
    assert 0 < mi.uordblks <= mi.arena, (mi.uordblks, mi.arena)
    return r


def in_child(seed):
    # Threads in the child: a pool of its own.
    with cf.ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(work_and_stats, [seed, seed + 100, seed + 200]))
    blobs = [bytes([seed % 256]) * (1000 * (i + 1)) for i in range(50)]
    return hashlib.sha256("".join(parts).encode() + b"".join(blobs)).hexdigest()[:16]


def main():
    # A thread pool runs first and stays alive (idle) across the forks below.
    pool = cf.ThreadPoolExecutor(4)
    first = list(pool.map(work, range(8)))
    # And one thread keeps allocating and freeing while the children are forked.
    stop = threading.Event()

    def churn():
        keep = []
        while not stop.is_set():
            keep.append(["x" * (len(keep) % 300)] * 3)
            if len(keep) > 2000:
                keep = []

    t = threading.Thread(target=churn)
    t.start()
    ctx = mp.get_context("fork")
    with ctx.Pool(3) as procs:
        out = procs.map(in_child, range(12))

    # Plain fork children too, each forked by a thread of the pool. (Such a child's exit
    # code is 1 on Python 3.11 whatever the allocator: it compares like the rest.)
    def fork_one(i):
        q = ctx.Queue()
        p = ctx.Process(target=lambda: q.put(in_child(1000 + i)))
        p.start()
        r = q.get(timeout=60)
        p.join()
        return (r, p.exitcode)

    forked = list(pool.map(fork_one, range(4)))
    stop.set()
    t.join()
    second = list(pool.map(work, range(8, 12)))
    pool.shutdown()
    print(first)
    print(out)
    print(forked)
    print(second)


if __name__ == "__main__":
    main()
"#;

/// python3's multiprocessing with the fork start method, after a thread pool has run (its
/// threads still alive) and while another thread allocates; the children run thread pools
/// of their own and read the allocator's statistics. The same output as on glibc's malloc.
#[test]
fn python3_multiprocessing_fork_after_a_thread_pool() {
    let dir = Scratch::new("python-mp");
    let py = tool("python3", "python3");
    let script = dir.path("mp.py");
    fs::write(&script, PY_MULTIPROCESSING).expect("write the script");
    let make = || {
        let mut c = Command::new(&py);
        // Every Python object through malloc, not pymalloc's arenas.
        c.env("PYTHONMALLOC", "malloc")
            .env_remove("TIERALLOC_SHOW_STATS")
            .arg(&script);
        c
    };
    let base = run(make(), false, Duration::from_secs(120));
    base.require(base.success(), "without tieralloc");
    let ours = run(make(), true, Duration::from_secs(120));
    ours.require(ours.success(), "under tieralloc");
    assert_eq!(ours.stdout, base.stdout, "output differs under tieralloc");
    assert_eq!(ours.stdout.lines().count(), 4, "{}", ours.stdout);
    // The children's statistics came from tieralloc: 12 pool children and 4 forked ones,
    // 3 threads each.
    assert_eq!(
        ours.stderr.matches("tieralloc statistics").count(),
        16 * 3,
        "{}",
        ours.stderr
    );
}
