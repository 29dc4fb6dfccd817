//! Runs real programs under `LD_PRELOAD=libtieralloc_preload.so` and checks that they behave
//! exactly as they do on glibc's malloc: python3, sort, sqlite3, gcc and g++ from Debian's
//! packages, and C programs compiled here (the C API's semantics, fork from a multi-threaded
//! parent, thread churn with late key destructors, dlopen with dynamic TLS, foreign pointers).
//!
//! The library is built by the tests themselves (`cargo build -p tieralloc-preload`, same
//! profile and target directory as this test executable), because `cargo test -p
//! tieralloc-preload` rebuilds the test but not the cdylib: without that, a source change
//! would be tested against the old library. Cargo does not hold its build lock while tests
//! run, so the inner build does not wait on the outer one. Then the library must be newer
//! than every source file of both crates, or the test stops saying so. Set
//! `TIERALLOC_PRELOAD_NO_BUILD=1` to skip the build (the freshness check still runs).
//!
//! Every preloaded run has `TIERALLOC_VERBOSE=1` and must print tieralloc's start-up line on
//! stderr: a comparison with glibc proves nothing if the library was not in effect.
//!
//! Needs `cc`, `g++`, `python3`, `sort` and
//! `sqlite3` (`apt-get install -y build-essential python3 sqlite3`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const LIB: &str = "libtieralloc_preload.so";

/// The preload library of the profile this test was built with, built now if it is older
/// than its sources (once per test process).
fn library() -> PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(fresh_library).clone()
}

/// What tieralloc prints at start-up under `TIERALLOC_VERBOSE=1`.
const STARTUP_LINE: &str = "tieralloc: purge delay";

fn fresh_library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // <target>/[<triple>/]<profile>/deps/<test>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in <target>/<profile>/deps");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name");
    let mut target_dir = profile_dir.parent().expect("a target directory");
    let mut triple = None;
    if !target_dir.join("CACHEDIR.TAG").exists() {
        if let Some(up) = target_dir.parent() {
            if up.join("CACHEDIR.TAG").exists() {
                triple = target_dir.file_name().and_then(|n| n.to_str());
                target_dir = up;
            }
        }
    }
    if std::env::var_os("TIERALLOC_PRELOAD_NO_BUILD").is_none() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut c = Command::new(cargo);
        c.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "tieralloc-preload", "--profile"])
            .arg(if profile == "debug" { "dev" } else { profile })
            .arg("--target-dir")
            .arg(target_dir);
        if let Some(t) = triple {
            c.args(["--target", t]);
        }
        let out = c.output().expect("run cargo to build the preload library");
        assert!(
            out.status.success(),
            "building {LIB} failed: {:?}\n{}",
            c,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lib = profile_dir.join(LIB);
    assert!(
        lib.is_file(),
        "{LIB} not found at {}; build it with `cargo build -p tieralloc-preload` (same profile \
         and target dir as the test)",
        lib.display()
    );
    let built = modified(&lib);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("the preload crate sits in the workspace");
    let mut newest = (std::time::UNIX_EPOCH, PathBuf::new());
    for dir in [root.join("src"), manifest.join("src")] {
        newest_file(&dir, &mut newest);
    }
    for f in [root.join("Cargo.toml"), manifest.join("Cargo.toml")] {
        let m = modified(&f);
        if m > newest.0 {
            newest = (m, f);
        }
    }
    assert!(
        built >= newest.0,
        "{} is older than {}: a stale library would be tested. Rebuild it with \
         `cargo build -p tieralloc-preload` (same profile and target dir as the test)",
        lib.display(),
        newest.1.display()
    );
    lib.canonicalize()
        .expect("an existing file has a canonical path")
}

fn modified(p: &Path) -> std::time::SystemTime {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("no modification time for {}: {e}", p.display()))
}

/// The newest modification time of the files under `dir`, with the file's path.
fn newest_file(dir: &Path, newest: &mut (std::time::SystemTime, PathBuf)) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            newest_file(&p, newest);
        } else {
            let m = modified(&p);
            if m > newest.0 {
                *newest = (m, p);
            }
        }
    }
}

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d =
            std::env::temp_dir().join(format!("tieralloc-preload-{}-{name}", std::process::id()));
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

struct Run {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
    secs: f64,
}

/// Runs `cmd` (with or without the preload library) in `dir`, stdout and stderr to files,
/// killing it after `timeout`.
fn run(dir: &Scratch, mut cmd: Command, preload: bool, timeout: Duration) -> Run {
    let tag = if preload { "tieralloc" } else { "glibc" };
    let out = dir.path(&format!("stdout-{tag}"));
    let err = dir.path(&format!("stderr-{tag}"));
    cmd.env_remove("LD_PRELOAD")
        .env_remove("TIERALLOC_SHOW_STATS")
        .env_remove("TIERALLOC_VERBOSE")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("create stdout file"))
        .stderr(fs::File::create(&err).expect("create stderr file"));
    if preload {
        // The start-up line proves the library was in effect (checked below).
        cmd.env("LD_PRELOAD", library())
            .env("TIERALLOC_VERBOSE", "1");
    }
    let desc = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the child") {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} ({tag}) did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let r = Run {
        status,
        stdout: fs::read(&out).expect("read stdout"),
        stderr: String::from_utf8_lossy(&fs::read(&err).expect("read stderr")).into_owned(),
        secs: start.elapsed().as_secs_f64(),
    };
    assert_eq!(
        r.stderr.contains(STARTUP_LINE),
        preload,
        "{desc} ({tag}): tieralloc's start-up line is {} on stderr, so the library was {} \
         in effect:\n{}",
        if preload { "missing" } else { "present" },
        if preload { "not" } else { "" },
        r.stderr
    );
    r
}

/// Runs the command built by `make` without and with the library; both must succeed with the
/// same stdout. Returns the preloaded run.
fn same_output(dir: &Scratch, what: &str, make: impl Fn() -> Command) -> Run {
    let base = run(dir, make(), false, Duration::from_secs(300));
    assert!(
        base.status.success(),
        "{what} fails even without tieralloc: {}\n{}",
        base.status,
        base.stderr
    );
    let ours = run(dir, make(), true, Duration::from_secs(300));
    assert!(
        ours.status.success(),
        "{what} under LD_PRELOAD of tieralloc: {}\n{}",
        ours.status,
        ours.stderr
    );
    assert!(
        base.stdout == ours.stdout,
        "{what}: output differs under tieralloc ({} vs {} bytes)",
        ours.stdout.len(),
        base.stdout.len()
    );
    assert!(!ours.stdout.is_empty(), "{what} printed nothing");
    eprintln!(
        "{what}: same output ({} bytes); glibc {:.2}s, tieralloc {:.2}s",
        ours.stdout.len(),
        base.secs,
        ours.secs
    );
    ours
}

/// The path of a program, or a panic that says which package to install.
fn tool(names: &[&str], package: &str) -> PathBuf {
    for n in names {
        let p = Path::new(n);
        if p.is_absolute() && p.is_file() {
            return p.to_path_buf();
        }
        if let Ok(path) = std::env::var("PATH") {
            for d in std::env::split_paths(&path) {
                let c = d.join(n);
                if c.is_file() {
                    return c;
                }
            }
        }
    }
    panic!("none of {names:?} found; install it with `apt-get install -y {package}`");
}

/// Compiles a C (`<name>.c`) or C++ (`<name>.cpp`) file from tests/c into `dir`.
fn compile(dir: &Scratch, name: &str, extra: &[&str]) -> PathBuf {
    let c_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    let cxx = c_dir.join(format!("{name}.cpp"));
    let (src, compiler) = if cxx.exists() {
        (cxx, tool(&["g++"], "g++"))
    } else {
        (
            c_dir.join(format!("{name}.c")),
            tool(&["cc"], "build-essential"),
        )
    };
    let out = dir.path(name);
    // -fno-builtin: the compiler must not fold malloc(SIZE_MAX) == NULL and friends away.
    let st = Command::new(compiler)
        .args(["-O1", "-w", "-fno-builtin", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .args(extra)
        .status()
        .expect("run cc");
    assert!(st.success(), "compiling {} failed", src.display());
    out
}

/// Runs a compiled C test program under the library; it must exit 0 and say "<name> ok".
fn c_test(name: &str, extra: &[&str], args: impl Fn(&Scratch) -> Vec<PathBuf>) {
    c_test_with(name, extra, &[], Duration::from_secs(120), args);
}

/// [`c_test`] with the environment `env` besides, killed after `limit`.
fn c_test_with(
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
    args: impl Fn(&Scratch) -> Vec<PathBuf>,
) {
    let dir = Scratch::new(name);
    let exe = compile(&dir, name, extra);
    let mut cmd = Command::new(&exe);
    cmd.args(args(&dir)).envs(env.iter().copied());
    let r = run(&dir, cmd, true, limit);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success() && out.contains(&format!("{name} ok")),
        "{name} under tieralloc: {}\nstdout: {out}\nstderr: {}",
        r.status,
        r.stderr
    );
}

#[test]
fn c_api_semantics() {
    c_test("api", &[], |_| vec![]);
}

#[test]
fn cxx_new_and_delete_are_ours() {
    c_test("newdelete", &["-ldl"], |_| vec![]);
}

#[test]
fn fork_from_a_multithreaded_parent() {
    c_test("fork", &[], |_| vec![]);
}

#[test]
fn thread_churn_and_late_key_destructors() {
    c_test("threads", &[], |_| vec![]);
}

#[test]
fn foreign_pointers_are_left_alone() {
    c_test("foreign", &[], |_| vec![]);
}

/// Under RLIMIT_AS: NULL with ENOMEM from every C entry point, `std::bad_alloc` from `new`,
/// no crash, everything intact once the cap is lifted (tests/c/oom.cpp).
#[test]
fn out_of_memory_under_rlimit_as() {
    c_test("oom", &[], |_| vec![]);
}

/// posix_memalign/aligned_alloc/memalign blocks aligned 8 KiB to 1 MiB, freed on another
/// thread: aligned, intact, and their memory reused (tests/c/alignfree.c).
#[test]
fn aligned_blocks_freed_on_another_thread() {
    c_test("alignfree", &[], |_| vec![]);
}

/// A thread whose first allocator call frees another thread's block (`free::free_first`, only
/// reached with the drop-in's initial-exec TLS slot): the block is reused by its owner
/// (tests/c/firstfree.c; the block was lost with `free_first` doing nothing).
#[test]
fn a_threads_first_call_frees_a_block_for_good() {
    c_test("firstfree", &[], |_| vec![]);
}

/// free() leaves errno alone (glibc 2.33+, POSIX.1-2024) even when the purge it triggers is
/// refused because the freed memory is locked (tests/c/free_errno.c: EINVAL from madvise
/// reached the caller's errno before).
#[test]
fn free_keeps_errno_when_a_purge_is_refused() {
    c_test("free_errno", &[], |_| vec![]);
}

/// [`c_test`] with `TIERALLOC_BACKGROUND_PURGE=1`.
fn purger_c_test(name: &str) {
    let env = [("TIERALLOC_BACKGROUND_PURGE", "1")];
    c_test_with(name, &[], &env, Duration::from_secs(30), |_| vec![]);
}

/// free() leaves errno alone also when it is the call that tries to start the background
/// purger and `pthread_create` fails (tests/c/purger_start_errno.c: a seccomp filter refuses
/// clone; review rev47: EAGAIN reached the caller's errno).
#[test]
fn free_keeps_errno_when_the_purger_cannot_start() {
    purger_c_test("purger_start_errno");
}

/// The background purger starts in a program under RLIMIT_AS with a few MiB of room left
/// (tests/c/purger_rlimit_as.c: half a default thread stack, at least 2 MiB). Review rev47:
/// with a default-size stack for the purger's thread (8 MiB), `pthread_create` failed and the
/// purger never ran.
#[test]
fn the_purger_starts_under_rlimit_as_with_little_room() {
    purger_c_test("purger_rlimit_as");
}

/// C23's `free_sized` and `free_aligned_sized` are ours (tests/c/free_sized.c: on a glibc
/// that has them, a program's call would otherwise reach glibc's `free` with our block).
#[test]
fn c23_sized_frees_are_exported_and_free() {
    c_test("free_sized", &["-ldl"], |_| vec![]);
}

/// Runs tests/c/main_pthread_exit.c (its main thread ends with `pthread_exit` while the
/// background purger runs) with `args` and the environment `env` besides
/// `TIERALLOC_BACKGROUND_PURGE=1`, and requires that it ended with status 0, its output
/// flushed and its atexit handler run as on the program's own last thread (its signal mask,
/// a default thread's stack depth, malloc and free).
fn main_pthread_exit_ends(args: &[&str], env: &[(&str, &str)]) {
    let name = "main_pthread_exit";
    // A scratch directory of its own per argument list: the two tests run at once.
    let dir = Scratch::new(&format!("{name}-{}", args.join("-")));
    let exe = compile(&dir, name, &[]);
    let mut cmd = Command::new(&exe);
    cmd.args(args)
        .env("TIERALLOC_BACKGROUND_PURGE", "1")
        .envs(env.iter().copied());
    let r = run(&dir, cmd, true, Duration::from_secs(30));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success()
            && out.contains("main_pthread_exit ok")
            && out.contains("atexit ran, as main\n"),
        "{name} {args:?} under tieralloc: {}\nstdout: {out}\nstderr: {}",
        r.status,
        r.stderr
    );
}

/// A program whose main thread ends with `pthread_exit` ends (status 0) while the background
/// purger runs. Review rev40: the purger's thread kept the process alive for good (killed by
/// the hang guard).
#[test]
fn main_thread_pthread_exit_ends_the_process_with_the_purger_running() {
    main_pthread_exit_ends(&[], &[]);
}

/// The same with a thread-specific data destructor of the program's own that takes 3 s on the
/// main thread after tieralloc's has run: the process still ends with status 0, its atexit
/// handler run and its output flushed. Review rev43: the purger's looks after the main thread's
/// note ran out before it was a zombie, and it then slept until woken (killed by the hang
/// guard). A 1 ms delay: the purger's loop is then 5 ms + its 10 ms look, so its 100 looks end
/// well before the destructor does (with the default 100 ms, a 25 ms nap each: 3.5 s).
#[test]
fn main_thread_pthread_exit_with_a_slow_destructor_ends_the_process() {
    main_pthread_exit_ends(&["3"], &[("TIERALLOC_PURGE_DELAY_MS", "1")]);
}

/// The same when the purger was started from a signal handler (its frees, in a SIGUSR1
/// handler, are the program's first): the atexit handler still sees the program's signal mask,
/// SIGUSR1 not blocked. Review rev47: the mask put on for `exit` was that of the purger's start,
/// with the handler's signal blocked.
#[test]
fn main_thread_pthread_exit_after_a_purger_start_in_a_signal_handler() {
    main_pthread_exit_ends(&["handler"], &[]);
}

/// A program whose main thread ends with `pthread_exit` and whose atexit handler ends its own
/// thread the same way ends (status 0), as under glibc, where that thread is the last
/// (tests/c/atexit_pthread_exit.c). Review rev47: with the purger's `exit(0)` on a thread of
/// its own, the purger waited for it for good (killed by the hang guard).
#[test]
fn an_atexit_handler_that_ends_its_thread_ends_the_process() {
    purger_c_test("atexit_pthread_exit");
}

/// errno is zero when main starts (C11 7.5p3), although the drop-in initialised tieralloc
/// before it (tests/c/errno_start.c: ENOENT from topology discovery's sysfs reads before).
#[test]
fn errno_is_zero_at_program_start() {
    c_test("errno_start", &[], |_| vec![]);
}

#[test]
fn dlopen_and_dynamic_tls_from_threads() {
    c_test("dlopen", &["-ldl"], |dir| {
        let lib = dir.path("libtls.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/tlslib.c");
        let st = Command::new(tool(&["cc"], "build-essential"))
            .args(["-O1", "-w", "-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&src)
            .status()
            .expect("run cc");
        assert!(st.success(), "compiling {} failed", src.display());
        vec![lib]
    });
}

const PY_WORKLOAD: &str = r#"
import threading, hashlib
def work(seed):
    d = {}
    acc = []
    x = seed
    for i in range(60000):
        x = (x * 1103515245 + 12345) & 0x7fffffff
        k = "k%d" % (x % 5000)
        d[k] = d.get(k, "") + chr(97 + x % 26)
        if len(d[k]) > 40:
            acc.append(d.pop(k))
        if i % 1000 == 0:
            acc = [s[::-1] for s in acc if len(s) % 3 != 0]
            lst = sorted(d.items())[:50]
            acc.extend(v for _, v in lst)
    h = hashlib.sha256()
    for k in sorted(d):
        h.update(k.encode()); h.update(d[k].encode())
    for s in acc:
        h.update(s.encode())
    return h.hexdigest()
res = [None] * 4
def run(i):
    res[i] = work(i + 1)
ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
big = [bytes(range(256)) * (i % 64 + 1) for i in range(2000)]
print(res, sum(len(b) for b in big), len({str(i): [i] * (i % 7) for i in range(100000)}))
"#;

#[test]
fn python3_workload() {
    let dir = Scratch::new("python");
    let py = tool(&["/usr/bin/python3", "python3"], "python3");
    let script = dir.path("work.py");
    fs::write(&script, PY_WORKLOAD).expect("write the script");
    same_output(&dir, "python3", || {
        let mut c = Command::new(&py);
        // Every Python object through malloc, not pymalloc's arenas.
        c.env("PYTHONMALLOC", "malloc").arg(&script);
        c
    });
}

/// 200,000 deterministic pseudo-random lines.
fn lines_file(dir: &Scratch) -> PathBuf {
    let mut s = String::new();
    let mut x: u64 = 88172645463325252;
    for i in 0..200_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 60) as usize;
        s.push_str(&format!("{:016x} {i} ", x));
        for j in 0..len {
            s.push((b'a' + ((x >> (j % 58)) % 26) as u8) as char);
        }
        s.push('\n');
    }
    let p = dir.path("lines.txt");
    fs::write(&p, s).expect("write the input");
    p
}

#[test]
fn sort_a_large_file() {
    let dir = Scratch::new("sort");
    let input = lines_file(&dir);
    let sort = tool(&["sort"], "coreutils");
    // Two threads and a small buffer: sort spills runs to temporary files and merges them.
    same_output(&dir, "sort", || {
        let mut c = Command::new(&sort);
        c.env("LC_ALL", "C")
            .args(["--parallel=2", "-S", "4M", "-T"])
            .arg(&dir.0)
            .arg(&input);
        c
    });
    same_output(&dir, "sort -k3 (locale)", || {
        let mut c = Command::new(&sort);
        c.env("LC_ALL", "C.UTF-8")
            .args(["-k3,3", "-k2,2n"])
            .arg(&input);
        c
    });
}

#[test]
fn sqlite3_inserts_and_aggregates() {
    let dir = Scratch::new("sqlite");
    let sqlite = tool(&["sqlite3"], "sqlite3");
    let script = dir.path("script.sql");
    fs::write(
        &script,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, v REAL);\n\
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)\n\
         INSERT INTO t(grp, name, v) SELECT i % 97, printf('name-%d-%s', i, hex(i * 7919)), \
         (i * 37 % 1000) / 7.0 FROM n;\n\
         CREATE INDEX t_grp ON t(grp, name);\n\
         SELECT count(*), sum(v), min(name), max(name) FROM t;\n\
         SELECT grp, count(*), round(avg(v), 6), group_concat(substr(name, 6, 3), '') \
         FROM t WHERE id % 11 = 0 GROUP BY grp ORDER BY grp;\n\
         UPDATE t SET name = name || '-x' WHERE grp < 10;\n\
         DELETE FROM t WHERE grp > 80;\n\
         SELECT count(*), length(group_concat(name)) FROM t;\n\
         SELECT a.grp, count(*) FROM t a JOIN t b ON a.id = b.id + 1 GROUP BY a.grp \
         ORDER BY 2 DESC, 1 LIMIT 5;\n",
    )
    .expect("write the script");
    same_output(&dir, "sqlite3", || {
        // In-memory database: same work, no file left behind between the two runs.
        let mut c = Command::new(&sqlite);
        c.arg(":memory:").arg(format!(".read {}", script.display()));
        c
    });
}

const C_PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct node { struct node *next; char name[24]; int v; };
static int cmp(const void *a, const void *b) { return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b); }
int main(void) {
    struct node *head = NULL;
    for (int i = 0; i < 1000; i++) {
        struct node *n = malloc(sizeof *n);
        n->v = (i * 7919) % 1009; snprintf(n->name, sizeof n->name, "n%d", n->v);
        n->next = head; head = n;
    }
    int a[1000], k = 0; long sum = 0;
    for (struct node *n = head; n; n = n->next) { a[k++] = n->v; sum += strlen(n->name); }
    qsort(a, 1000, sizeof *a, cmp);
    printf("%d %d %d %ld\n", a[0], a[500], a[999], sum);
    return 0;
}
"#;

const CXX_PROGRAM: &str = r#"
#include <iostream>
#include <map>
#include <string>
#include <vector>
#include <memory>
#include <algorithm>
int main() {
    std::map<std::string, std::vector<int>> m;
    for (int i = 0; i < 20000; i++) m["k" + std::to_string(i % 997)].push_back(i);
    std::vector<std::unique_ptr<std::string>> v;
    for (auto &kv : m) v.push_back(std::make_unique<std::string>(kv.first + ":" + std::to_string(kv.second.size())));
    std::sort(v.begin(), v.end(), [](auto &a, auto &b) { return *a < *b; });
    std::cout << v.size() << " " << *v.front() << " " << *v.back() << std::endl;
}
"#;

#[test]
fn gcc_and_gxx_compile_programs() {
    let dir = Scratch::new("gcc");
    for (lang, src, compiler, pkg) in [
        ("c", C_PROGRAM, "gcc", "gcc"),
        ("cpp", CXX_PROGRAM, "g++", "g++"),
    ] {
        let cc = tool(&[compiler], pkg);
        let file = dir.path(&format!("prog.{lang}"));
        fs::write(&file, src).expect("write the source");
        let mut outputs = Vec::new();
        for preload in [false, true] {
            let exe = dir.path(&format!("prog-{lang}-{preload}"));
            let mut c = Command::new(&cc);
            c.args(["-O2", "-o"]).arg(&exe).arg(&file);
            let r = run(&dir, c, preload, Duration::from_secs(300));
            assert!(
                r.status.success(),
                "{compiler} (preload {preload}): {}\n{}",
                r.status,
                r.stderr
            );
            // The binaries themselves run without the library: compare what they print.
            let r = run(&dir, Command::new(&exe), false, Duration::from_secs(60));
            assert!(r.status.success(), "the program {compiler} built fails");
            outputs.push(r.stdout);
        }
        assert_eq!(
            outputs[0], outputs[1],
            "{compiler} under tieralloc built a program that prints something else"
        );
        // And the C++ program itself on tieralloc (libstdc++'s operator new calls malloc).
        let r = run(
            &dir,
            Command::new(dir.path(&format!("prog-{lang}-true"))),
            true,
            Duration::from_secs(60),
        );
        assert!(r.status.success() && r.stdout == outputs[0]);
    }
}

#[test]
fn tieralloc_is_really_in_use() {
    // python3 rather than a coreutils program: those close stderr in an atexit handler, before
    // tieralloc's exit hook could print there.
    let dir = Scratch::new("stats");
    let py = tool(&["/usr/bin/python3", "python3"], "python3");
    let script = "import ctypes\n\
                  libc = ctypes.CDLL(None)\n\
                  libc.malloc.restype = ctypes.c_void_p\n\
                  libc.malloc_usable_size.argtypes = [ctypes.c_void_p]\n\
                  p = libc.malloc(100)\n\
                  print(libc.malloc_usable_size(p), libc.malloc_usable_size(None))\n\
                  x = [str(i) * 3 for i in range(100000)]\n\
                  print(len(x))\n";
    let mut c = Command::new(&py);
    c.env("PYTHONMALLOC", "malloc").args(["-c", script]);
    let out = dir.path("stdout");
    let err = dir.path("stderr");
    let st = c
        .env("TIERALLOC_SHOW_STATS", "1")
        .env("LD_PRELOAD", library())
        .stdout(fs::File::create(&out).expect("create stdout file"))
        .stderr(fs::File::create(&err).expect("create stderr file"))
        .status()
        .expect("run python3");
    let stdout = fs::read_to_string(out).expect("read stdout");
    let stderr = fs::read_to_string(err).expect("read stderr");
    assert!(st.success(), "python3: {st}\n{stderr}");
    // malloc_usable_size answers from tieralloc: 100 bytes are served from a 16-byte multiple
    // size class (glibc says 104), and NULL has 0.
    let usable = |out: &str| -> Option<(u64, u64)> {
        let mut f = out
            .lines()
            .next()?
            .split(' ')
            .map(|w| w.parse::<u64>().ok());
        Some((f.next()??, f.next()??))
    };
    let (u, z) = usable(&stdout).expect("python3 printed the usable sizes");
    assert!(
        u >= 100 && u % 16 == 0 && z == 0,
        "malloc_usable_size: {u} {z}"
    );
    assert!(
        stderr.contains("tieralloc statistics"),
        "no statistics: {stderr}"
    );
    // The class table: "  <block size> <allocs> <frees> <live>", with many allocations.
    let allocs: u64 = stderr
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("class"))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            (f.len() == 4).then(|| f[1])
        })
        .sum();
    assert!(
        allocs > 100_000,
        "python3 made only {allocs} allocations on tieralloc:\n{stderr}"
    );
    // Without the library: glibc's answer and no statistics.
    let plain = run(
        &dir,
        {
            let mut c = Command::new(&py);
            c.env("PYTHONMALLOC", "malloc").args(["-c", script]);
            c
        },
        false,
        Duration::from_secs(60),
    );
    assert!(plain.status.success() && !plain.stderr.contains("tieralloc"));
    let (u, _) = usable(&String::from_utf8_lossy(&plain.stdout)).expect("usable sizes");
    assert_ne!(u % 16, 0, "glibc's usable size of malloc(100) is 104");
}

/// The sizes of the named sections of an ELF64 little-endian file (a minimal reader of the
/// section header table; no crate of the workspace reads ELF).
fn elf_section_sizes(image: &[u8], names: &[&str]) -> Vec<Option<u64>> {
    let u16_at = |o: usize| u16::from_le_bytes(image[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
    assert_eq!(&image[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(image[4], 2, "not ELF64");
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(0x28) as usize,
        u16_at(0x3a),
        u16_at(0x3c),
        u16_at(0x3e),
    );
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 24) as usize;
    let name_of = |i: usize| {
        let start = strtab + u32_at(header(i));
        let len = image[start..].iter().position(|&b| b == 0).unwrap();
        std::str::from_utf8(&image[start..start + len]).unwrap()
    };
    names
        .iter()
        .map(|want| {
            (0..shnum)
                .find(|&i| name_of(i) == *want)
                .map(|i| u64_at(header(i) + 32))
        })
        .collect()
}

/// What every process that loads the library pays before its first allocation: the
/// writable data the loader maps private (and writes when it relocates it) and the
/// relocations it reads. A static `Heap` per node set up in its initialiser once made
/// `.data` 392 KiB and `.rela.dyn` 8 101 entries (the heaps' pointers to the empty page),
/// most of a 1 MiB start-up RSS gap to glibc; the topology model made up the next 80 KiB.
/// Both are zeroed statics now, set up on first use.
#[test]
fn the_library_image_keeps_its_writable_data_and_relocations_small() {
    let image = fs::read(library()).expect("read the library");
    let sizes = elf_section_sizes(&image, &[".data", ".rela.dyn"]);
    let data = sizes[0].expect("a .data section");
    let relocs = sizes[1].expect("a .rela.dyn section") / 24;
    assert!(data <= 32 << 10, ".data is {data} bytes");
    assert!(relocs <= 1500, ".rela.dyn has {relocs} relocations");
}
