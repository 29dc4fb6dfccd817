//! The verdict rows of docs/benchmarks.md, computed from what criterion measured in this run
//! (its median estimates, read back from its output directory), so that no PASS mark is
//! written by hand. Shared by benches/arena.rs and benches/pool.rs.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where criterion writes its results: `$CRITERION_HOME`, else `<target>/criterion` of the
/// target directory this bench executable was built in (`<target>/<profile>/deps/<bench>`).
pub fn output_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return h.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(|t| t.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// Criterion's file-name-safe form of a group or benchmark id.
fn safe(s: &str) -> String {
    s.replace(
        &['?', '"', '/', '\\', '*', '<', '>', ':', '|', '^'][..],
        "_",
    )
}

/// The results of this run, read from `dir`.
pub struct Results {
    dir: PathBuf,
    since: SystemTime,
}

impl Results {
    /// Results written into `dir` from now on.
    pub fn new(dir: &Path) -> Results {
        Results {
            dir: dir.to_path_buf(),
            since: SystemTime::now(),
        }
    }

    /// The median time in ns criterion measured for `group`/`id` in this run (None if it did
    /// not run here, e.g. filtered out, or `--test` mode).
    pub fn median_ns(&self, group: &str, id: &str) -> Option<f64> {
        let f = self
            .dir
            .join(safe(group))
            .join(safe(id))
            .join("new")
            .join("estimates.json");
        let m = std::fs::metadata(&f).ok()?.modified().ok()?;
        if m < self.since {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).ok()?).ok()?;
        v["median"]["point_estimate"].as_f64()
    }
}

/// Formats nanoseconds as the docs do.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

/// `ratio` = ours / theirs with PASS or FAIL against `ok(ratio)`.
#[allow(dead_code)] // used by arena.rs, not pool.rs
pub fn verdict(ours: f64, theirs: f64, ok: impl Fn(f64) -> bool) -> String {
    let r = ours / theirs;
    format!("{r:.2} {}", if ok(r) { "PASS" } else { "FAIL" })
}
