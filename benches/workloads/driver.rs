//! The driver: checks the command line, re-executes this binary once per (workload,
//! allocator, run) in interleaved order with a timeout, collects the JSON lines, prints the
//! tables, writes the results file and hands over to the plots or the callgrind mode.
//!
//! Owns: the worker child processes (killed on timeout) and the results file. May touch: the
//! machine description (/proc, uname, rustc, git), report, plots, callgrind.

use crate::cli::Cli;
use crate::metrics::METRICS;
use crate::report::{fmt_val, metric_of, tables, Results};
use crate::{alloc_needs, ALLOCS, ENV_ALLOC, ENV_QUICK, ENV_WORKLOAD, WORKLOADS};
use crate::{callgrind, plots};
use serde_json::{json, Map, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The cargo target directory this binary was built into (…/target/<profile>/deps/exe).
pub fn target_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(t) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            return t.to_path_buf();
        }
    }
    PathBuf::from("target")
}

fn run_worker(
    exe: &Path,
    workload: &str,
    alloc: &str,
    quick: bool,
    extra: &[(&str, String)],
    timeout: Duration,
) -> Result<Value, String> {
    let mut cmd = Command::new(exe);
    cmd.env(ENV_ALLOC, alloc)
        .env(ENV_WORKLOAD, workload)
        .env(ENV_QUICK, if quick { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out_t = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err_t = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s (killed)", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        return Err(format!("worker exited with {status}: {tail}"));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("worker printed no JSON")?;
    serde_json::from_str(line).map_err(|e| format!("bad JSON from worker: {e}"))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine_info() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_gib": mem_kb as f64 / (1024.0 * 1024.0),
        "kernel": sh("uname", &["-r"]),
        "rustc": sh("rustc", &["--version"]),
        "commit": std::env::var("TIERALLOC_BENCH_COMMIT")
            .unwrap_or_else(|_| sh("git", &["rev-parse", "--short", "HEAD"])),
    })
}

fn resolve_workloads(only: &[String]) -> Vec<&'static str> {
    if only.is_empty() {
        return WORKLOADS.to_vec();
    }
    for w in only {
        if !WORKLOADS.contains(&w.as_str()) {
            eprintln!("unknown workload {w}; choose from {WORKLOADS:?}");
            std::process::exit(2);
        }
    }
    WORKLOADS
        .iter()
        .copied()
        .filter(|w| only.iter().any(|o| o == w))
        .collect()
}

pub fn driver(cli: Cli) {
    let exe = std::env::current_exe().expect("current_exe");
    let needs = alloc_needs();
    for a in &cli.allocs {
        if !ALLOCS.contains(&a.as_str()) {
            eprintln!("unknown allocator {a}; choose from {ALLOCS:?}");
            std::process::exit(2);
        }
        if let Some((_, how)) = needs.iter().find(|(n, _)| n == a) {
            eprintln!("{a} is not in this build: {how}");
            std::process::exit(2);
        }
    }
    if cli.callgrind {
        callgrind::callgrind(&cli, &exe);
        return;
    }
    if let Some(src) = &cli.plots_from {
        let doc: Value = std::fs::read_to_string(src)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| {
                eprintln!("cannot read results from {}", src.display());
                std::process::exit(2);
            });
        let dir = cli
            .plots
            .clone()
            .unwrap_or_else(|| PathBuf::from("docs/img"));
        plots::draw_all(&doc, &dir);
        return;
    }
    let workloads = resolve_workloads(&cli.only);
    let runs = cli.runs.unwrap_or(if cli.quick { 3 } else { 5 }).max(1);
    let mode = if cli.quick { "quick" } else { "full" };
    let started = Instant::now();
    let load_before = load_average();
    eprintln!(
        "workloads {:?} × allocators {:?} × {runs} runs ({mode}); load average {load_before}",
        workloads, cli.allocs
    );
    if cfg!(feature = "bench-tcmalloc") {
        // Measured: every worker of such a build starts 8.3-8.6 MiB higher (VmRSS before the
        // workload, whichever allocator it runs), so every RSS row carries it.
        eprintln!(
            "note: this build links TCMalloc (`bench-tcmalloc`), which adds about 8.5 MiB to \
             every worker's RSS whichever allocator it runs; read memory rows (spike, churn, \
             large, frag) from a build without the feature"
        );
    }
    let total = (workloads.len() * cli.allocs.len() * runs) as u64;
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:32}] {pos}/{len} runs, eta {eta}  {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let timeout = Duration::from_secs(cli.timeout);
    let mut results: Results = Map::new();
    let mut errors: Vec<String> = Vec::new();
    for &w in &workloads {
        let mut per_alloc: Map<String, Value> = Map::new();
        for a in &cli.allocs {
            per_alloc.insert(a.clone(), json!([]));
        }
        let key = METRICS
            .iter()
            .find(|m| m.workload == w)
            .map(|m| m.key)
            .unwrap_or("ops_per_s");
        for run in 0..runs {
            // The order rotates by one allocator per run, so that no allocator always runs
            // first (on a cold machine) or right after the same neighbour: over as many runs
            // as allocators, each runs once in every position.
            let n = cli.allocs.len();
            for a in (0..n).map(|k| &cli.allocs[(k + run) % n]) {
                pb.set_message(format!("{w} run {} {a}", run + 1));
                let t = Instant::now();
                match run_worker(&exe, w, a, cli.quick, &[], timeout) {
                    Ok(v) => {
                        let line = format!(
                            "  {w:10} run {} {a:10} {key} = {} ({:.1} s)",
                            run + 1,
                            fmt_val(metric_of(&v, key)),
                            t.elapsed().as_secs_f64()
                        );
                        pb.suspend(|| eprintln!("{line}"));
                        per_alloc[a].as_array_mut().expect("array").push(v);
                    }
                    Err(e) => {
                        pb.suspend(|| eprintln!("  {w:10} run {} {a:10} FAILED: {e}", run + 1));
                        errors.push(format!("{w}/{a} run {}: {e}", run + 1));
                    }
                }
                pb.inc(1);
            }
        }
        results.insert(w.to_string(), Value::Object(per_alloc));
    }
    pb.finish_and_clear();
    let load_after = load_average();

    let (mut table, summary) = tables(&results, &workloads, &cli.allocs, mode, runs);
    if !errors.is_empty() {
        table.push_str("\nFailed runs:\n");
        for e in &errors {
            table.push_str(&format!("- {e}\n"));
        }
    }
    table.push_str(&format!(
        "\n{:.0} s in all; load average before {load_before}, after {load_after}.\n",
        started.elapsed().as_secs_f64()
    ));
    println!("{table}");
    let path = cli
        .json
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-results").join("workloads.json"));
    let doc = json!({
        "machine": machine_info(),
        "mode": mode,
        "runs": runs,
        "allocators": cli.allocs,
        "workloads": workloads,
        "order": "interleaved per run: allocators in the order given, one process each",
        "elapsed_s": started.elapsed().as_secs_f64(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "summary": summary,
        "errors": errors,
        "raw": results,
    });
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).expect("serialise") + "\n",
    ) {
        Ok(()) => eprintln!(
            "wrote {} ({:.0} s in all)",
            path.display(),
            started.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    if let Some(dir) = &cli.plots {
        plots::draw_all(&doc, dir);
    }
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
