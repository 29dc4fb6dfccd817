//! The `--callgrind` mode: instructions per alloc+free pair of the `pairs` worker under
//! valgrind's callgrind, N pairs minus a 0-pair baseline, per allocator, mixed and fixed sizes.
//!
//! Owns: the valgrind child processes (each runs this binary as a `pairs` worker) and their
//! profiles in `<target>/bench-results/callgrind/`, and `callgrind.json`. May touch: the
//! parsed command line; nothing else.

use crate::cli::Cli;
use crate::driver::target_dir;
use crate::{ENV_ALLOC, ENV_FIXED, ENV_ITERS, ENV_WARMUP, ENV_WORKLOAD};
use serde_json::json;
use std::path::Path;
use std::process::Command;

/// Total instructions (`Ir`) from a callgrind output file.
fn callgrind_total(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn callgrind(cli: &Cli, exe: &Path) {
    let dir = target_dir().join("bench-results").join("callgrind");
    let _ = std::fs::create_dir_all(&dir);
    let n = cli.callgrind_pairs;
    let warmup = 200_000usize;
    let mut rows = Vec::new();
    let mut table = String::from(
        "\n## Instructions per alloc+free pair (callgrind, `pairs` worker, N pairs minus 0 pairs)\n\n\
         | allocator | sizes | Ir (N pairs) | Ir (0 pairs) | N | instructions / pair |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    for (label, fixed) in [("mixed 8 B–4 KiB", 0usize), ("fixed 64 B", 64)] {
        for a in &cli.allocs {
            let mut totals = [0u64; 2];
            for (slot, iters) in [n, 0].into_iter().enumerate() {
                let out = dir.join(format!("{a}-{fixed}-{iters}.out"));
                let status = Command::new("valgrind")
                    .arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={}", out.display()))
                    .arg(exe)
                    .env(ENV_ALLOC, a)
                    .env(ENV_WORKLOAD, "pairs")
                    .env(ENV_ITERS, iters.to_string())
                    .env(ENV_WARMUP, warmup.to_string())
                    .env(ENV_FIXED, fixed.to_string())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                match status {
                    Ok(s) if s.success() => {}
                    other => {
                        eprintln!("valgrind failed for {a}: {other:?} (is valgrind installed?)");
                        std::process::exit(1);
                    }
                }
                totals[slot] = callgrind_total(&out).unwrap_or(0);
            }
            let per = (totals[0] as f64 - totals[1] as f64) / n as f64;
            eprintln!("  {a:10} {label}: {per:.1} instructions/pair");
            table.push_str(&format!(
                "| {a} | {label} | {} | {} | {n} | {per:.1} |\n",
                totals[0], totals[1]
            ));
            rows.push(json!({
                "allocator": a, "sizes": label, "ir_n": totals[0], "ir_0": totals[1],
                "pairs": n, "warmup": warmup, "instructions_per_pair": per,
            }));
        }
    }
    table.push_str(&format!(
        "\nThe per-pair count includes the benchmark loop's own work (ring index, size table \
         load, one byte written, the dispatch branch): the same for every allocator. \
         Profiles: {}\n",
        dir.display()
    ));
    println!("{table}");
    let path = cli
        .json
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-results").join("callgrind.json"));
    let _ = std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({ "callgrind": rows })).expect("serialise") + "\n",
    );
    eprintln!("wrote {}", path.display());
}
