//! The walk over a committed fuzz corpus, for the replay tests (tests/fuzz_replay.rs and the
//! drop-in's preload/tests/fuzz_replay.rs, which includes this file with `#[path]`).

use std::path::Path;

/// Runs `f` on every file of `dir`, sorted (so a failure names the same file every time);
/// the input that fails is named on stderr. There must be at least `min` files.
pub fn replay(dir: &Path, min: usize, f: impl Fn(&[u8])) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= min,
        "{}: only {} inputs",
        dir.display(),
        files.len()
    );
    for path in files {
        let data = std::fs::read(&path).unwrap();
        // Name the input if it fails.
        struct Name<'a>(&'a Path);
        impl Drop for Name<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    eprintln!("fuzz input that failed: {}", self.0.display());
                }
            }
        }
        let _name = Name(&path);
        f(&data);
    }
}
