//! The drop-in's initialisation allocating through itself (issue 14, item 4): glibc's
//! `pthread_atfork` mallocs when its table of handlers grows, and tieralloc registers its fork
//! handlers from inside its first allocation. That inner allocation used to register the
//! calling thread's heap a second time (a loop in the registry): `malloc_stats` and every
//! later thread start or exit spun forever. See tests/c/init_atfork.c.
//!
//! The library is found next to this test executable, where
//! `cargo build -p tieralloc-preload --release` puts it (build it first). Needs `cc`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIB: &str = "libtieralloc_preload.so";

fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps.join(LIB), deps.join("..").join(LIB)]
        .into_iter()
        .find(|c| c.is_file())
        .unwrap_or_else(|| panic!("{LIB} not found; `cargo build -p tieralloc-preload --release`"))
}

#[test]
fn an_allocation_made_by_the_initialisation_registers_the_heap_once() {
    let dir = std::env::temp_dir().join(format!("tieralloc-init-reentry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("init_atfork");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/init_atfork.c");
    let st = Command::new("cc")
        .args(["-O1", "-w", "-fno-builtin", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("run cc (apt-get install -y build-essential)");
    assert!(st.success(), "compiling {} failed", src.display());
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(&exe)
        .env("LD_PRELOAD", library())
        .env_remove("TIERALLOC_SHOW_STATS")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // A hang guard, not a measurement: the program takes milliseconds.
    let limit = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&out).unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.unwrap_or_else(|| {
        panic!("the program hung (a heap registered twice loops the registry)\n{stderr}")
    });
    assert!(
        status.success() && stdout.contains("init_atfork ok 1"),
        "{status}\nstdout: {stdout}\nstderr: {stderr}"
    );
    // malloc_stats printed the table once, with the class of the 100-byte block.
    assert_eq!(stderr.matches("class").count(), 1, "stderr: {stderr}");
}
