//! Child processes for the tests that need a process of their own (an environment variable
//! read once at start-up, a program under the drop-in, a child that may hang): start one,
//! capture its output, and kill it (with everything it forked) if it outlives a hang guard.
//!
//! Shared by several test crates with `#[path = "common/child.rs"] mod child;` (the drop-in's
//! tests: `#[path = "../../tests/common/child.rs"]`); each uses part of it.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Set in the environment of a child started by [`this_test`], to the name of its test.
pub const MARKER: &str = "TIERALLOC_TEST_CHILD";

/// Whether this process is a child started by [`this_test`].
pub fn is_child() -> bool {
    std::env::var_os(MARKER).is_some()
}

/// A command that runs this test binary again with only its test `name` (exact match, one
/// test thread, output not captured), [`MARKER`] set. The test tells the two apart with
/// [`is_child`]: in the parent it starts the child, in the child it does the work.
pub fn this_test(name: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test knows its own path"));
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(MARKER, name);
    cmd
}

/// For a test whose body runs in a child of its own: in that child, true (go on with the
/// body); in the parent, runs the test `name` in a child ([`this_test`]), requires that it
/// passed within `limit`, and returns false.
pub fn in_child(name: &str, limit: Duration) -> bool {
    if is_child() {
        return true;
    }
    run(&mut this_test(name), limit).expect_test_passed();
    false
}

/// [`this_test`] for `name` on simulated nodes: `TIERALLOC_SIMULATE_NODES=value`, and none of
/// the inherited variables that would change the topology it makes or the placement on it.
pub fn on_simulated_nodes(name: &str, value: &str) -> Command {
    let mut cmd = this_test(name);
    cmd.env("TIERALLOC_SIMULATE_NODES", value);
    for v in [
        "TIERALLOC_NODES",
        "TIERALLOC_TIERS",
        "TIERALLOC_NUMA",
        "TIERALLOC_FAR_POLICY",
        "TIERALLOC_FAR_THRESHOLD",
        "TIERALLOC_TIER_RATIO",
        "TIERALLOC_TIER_BUDGET",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// Calls `poll` every few milliseconds until it returns `Some`, or `limit` has passed (then
/// `None`). A hang guard, not a measurement: `limit` is far above what the awaited thing
/// takes on a loaded machine.
pub fn wait_for<T>(limit: Duration, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = poll() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The drop-in library of the profile this test was built with, next to the test executable
/// (where `cargo build -p tieralloc-preload --release` puts it; build it first).
pub fn preload_library() -> PathBuf {
    const LIB: &str = "libtieralloc_preload.so";
    let exe = std::env::current_exe().expect("the test knows its own path");
    let deps = exe.parent().expect("the test executable is in a directory");
    for c in [deps.join(LIB), deps.join("..").join(LIB)] {
        if c.is_file() {
            return c
                .canonicalize()
                .expect("an existing file has a canonical path");
        }
    }
    panic!("{LIB} not found next to {exe:?}; run `cargo build -p tieralloc-preload --release`");
}

/// The secure drop-in, `libtieralloc_preload_secure.so`, next to the default one (scripts/
/// test.sh builds it: `cargo build -p tieralloc-preload --release --features secure
/// --target-dir target/secure`, copied under that name into target/release/). `None` if it
/// is not built, unless `TIERALLOC_REQUIRE_SECURE=1` (CI), which makes that a failure.
pub fn secure_preload_library() -> Option<PathBuf> {
    const LIB: &str = "libtieralloc_preload_secure.so";
    let exe = std::env::current_exe().expect("the test knows its own path");
    let deps = exe.parent().expect("the test executable is in a directory");
    let lib = deps.join("..").join(LIB);
    if lib.is_file() {
        return Some(lib);
    }
    assert!(
        std::env::var_os("TIERALLOC_REQUIRE_SECURE").is_none(),
        "{} not built (scripts/test.sh builds it)",
        lib.display()
    );
    eprintln!(
        "{} not built: the secure build's run skipped",
        lib.display()
    );
    None
}

/// Compiles the C program `src` (with `-O1 -w -pthread`, the extra `flags`, and `-ldl`) into
/// a scratch directory of this process named after `name`, and returns the executable.
pub fn compile_c(src: &std::path::Path, name: &str, flags: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tieralloc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    let out = dir.join(name);
    let st = Command::new("cc")
        .args(["-O1", "-w", "-pthread"])
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(src)
        .arg("-ldl")
        .status()
        .expect("run cc (apt-get install -y build-essential)");
    assert!(st.success(), "compiling {} failed", src.display());
    out
}

/// How a child run ended.
pub struct Outcome {
    /// What the command was, for messages.
    pub what: String,
    /// Its exit status; `None` if it was killed at the hang guard.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Panics, with the command and its output, unless `ok` holds.
    #[track_caller]
    pub fn require(&self, ok: bool, why: &str) {
        assert!(ok, "{why}\n{self}");
    }

    /// Panics unless the child exited 0 and printed `marker` on stdout.
    #[track_caller]
    pub fn expect_success(&self, marker: &str) {
        self.require(
            self.success() && self.stdout.contains(marker),
            &format!("expected exit 0 and {marker:?} on stdout"),
        );
    }

    /// Panics unless the child started by [`this_test`] ran its one test, and it passed.
    #[track_caller]
    pub fn expect_test_passed(&self) {
        self.expect_success("test result: ok. 1 passed");
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => writeln!(f, "{}: {s}", self.what)?,
            None => writeln!(f, "{}: hung, killed", self.what)?,
        }
        write!(f, "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` (stdin empty, stdout and stderr captured) in a process group of its own. If
/// it has not exited after `limit` the whole group is killed, and the outcome says so; once
/// it has exited, whatever it forked and left behind is killed too.
pub fn run(cmd: &mut Command, limit: Duration) -> Outcome {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Read on threads, so that a child that writes more than a pipe holds does not block.
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let status = wait_for(limit, || child.try_wait().expect("wait for the child"));
    // SAFETY: kill has no memory preconditions; the group is the child's own (its id is the
    // child's pid, not reaped while it is running; after that, at worst nobody is left in it).
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    if status.is_none() {
        let _ = child.wait();
    }
    Outcome {
        what,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A CPU this process may run on that `TIERALLOC_SIMULATE_NODES=2` (or `2,far=N`) puts on
/// simulated node `node` (CPU c is node c % 2), if the affinity mask holds one.
pub fn cpu_of_simulated_node(node: usize) -> Option<u32> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel writes at most its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if libc::sched_getaffinity(0, core::mem::size_of_val(&set), &mut set) != 0 {
            return None;
        }
        set
    };
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: every index is below CPU_SETSIZE.
        .find(|&c| c % 2 == node && unsafe { libc::CPU_ISSET(c, &set) })
        .map(|c| c as u32)
}

/// Forks; the child runs `body` and `_exit`s with what it returns (101 if it panics), running
/// nothing of the parent's (no atexit, no destructors). The parent waits up to `limit` and
/// returns the child's exit code, or `Err` saying it died of a signal or hung (then it is
/// killed). For the fork tests, whose children must be real forks of a process with threads.
pub fn fork_and_wait(limit: Duration, body: impl FnOnce() -> i32) -> Result<i32, String> {
    // SAFETY: fork has no preconditions; the child runs `body` and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code.unwrap_or(101)) };
    }
    let mut st = 0;
    let waited = wait_for(limit, || {
        // SAFETY: pid is our child; st is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        assert!(r == pid || r == 0, "waitpid failed");
        (r == pid).then_some(st)
    });
    match waited {
        Some(st) if libc::WIFEXITED(st) => Ok(libc::WEXITSTATUS(st)),
        Some(st) => Err(format!("the child died of signal {}", libc::WTERMSIG(st))),
        None => {
            // SAFETY: pid is our child, not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut st, 0);
            }
            Err(format!(
                "the child hung (killed after {} s)",
                limit.as_secs()
            ))
        }
    }
}
