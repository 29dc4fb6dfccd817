//! Allocator comparison: tieralloc vs mimalloc vs jemalloc vs numalloc vs the system allocator,
//! one process per run.
//!
//! One binary is both the driver and the worker. The driver (what `cargo bench --bench
//! workloads` starts) re-executes its own binary (`std::env::current_exe()`) once per
//! (workload, allocator, run), with `TIERALLOC_BENCH_ALLOC` and `TIERALLOC_BENCH_WORKLOAD` set;
//! the worker runs one workload under the selected allocator and prints one JSON line on
//! stdout. Allocators are interleaved (A B C A B C ...) so that drifts of a noisy, shared
//! machine hit all of them alike, and the driver reports medians (and, for `pairs`, minima).
//!
//! The worker's `#[global_allocator]` is `Dispatch` (benches/support/dispatch.rs, shared with
//! examples/service.rs): it reads the selection once, on its first call, with `libc::getenv`
//! (which does not allocate), caches it in an atomic, and then forwards every call to
//! `TierAlloc`, `mimalloc::MiMalloc`, `tikv_jemallocator::Jemalloc`, `numalloc::NumaAlloc`,
//! `std::alloc::System` or, in a build with the `bench-tcmalloc` feature, TCMalloc
//! (`tcmalloc_better::TCMalloc`, Google's TCMalloc compiled from source; off by default
//! because it takes minutes to build; such a build starts every worker, whatever allocator it
//! runs, about 8.5 MiB higher in RSS, so its memory rows are not comparable with a build
//! without it, and the driver says so). Every call of every allocator therefore pays the
//! same extra cost: one relaxed load and one compare-and-branch whose outcome never changes
//! within a process (perfectly predicted).
//!
//! Every workload reports throughput, per-operation latency percentiles (a sample of the
//! operations, every 16th or every one for the slow ones, timed with `Instant` = vDSO
//! `clock_gettime(CLOCK_MONOTONIC)` and recorded in an HdrHistogram created before the timed
//! phase), peak RSS (VmHWM), peak live bytes (requested sizes plus the workload's own arrays)
//! and their ratio, and the RSS after everything was freed and the process idled with light
//! traffic. The driver prints markdown tables (medians, ratios against mimalloc), writes JSON,
//! and with `--plots DIR` draws SVG charts.
//!
//! Usage: `cargo bench --features bench-peers --bench workloads -- [--quick] [--runs N]
//! [--only pairs,larson] [--allocs tieralloc,mimalloc] [--json PATH] [--plots [DIR]]
//! [--callgrind]`. Without `bench-peers` only `--allocs tieralloc,system` runs (the peers'
//! names are refused with the feature that builds them).
//!
//! This file owns the process: the global allocator, the names shared by driver and worker
//! (environment variables, allocators, workloads) and `main`, which runs the worker when
//! `TIERALLOC_BENCH_WORKLOAD` is set, else the driver. The files:
//!
//! - driver side: `cli.rs` (flags), `driver.rs` (runs, scheduling, results file),
//!   `metrics.rs` (what is judged and how), `report.rs` (medians, tables), `plots.rs` (SVG
//!   charts), `callgrind.rs` (`--callgrind` mode);
//! - worker side: `worker.rs` (one workload, one JSON line), one file per workload
//!   (`pairs.rs`, `prodcons.rs`, `larson.rs`, `frag.rs`, `spike.rs`, `falseshare.rs`,
//!   `churn.rs`, `large.rs`), `objects.rs` (sizes, alloc/free, packing, touching) and
//!   `measure.rs` (RSS, CPU time, latency samples, common metrics);
//! - shared with other targets: `../support/dispatch.rs` (the dispatching allocator, also in
//!   examples/service.rs) and `../support/rng.rs` (xorshift64*, also in tests/stress.rs).

use clap::Parser;

#[path = "../support/dispatch.rs"]
mod dispatch;
#[path = "../support/rng.rs"]
mod rng;

mod callgrind;
mod churn;
mod cli;
mod driver;
mod falseshare;
mod frag;
mod large;
mod larson;
mod measure;
mod metrics;
mod objects;
mod pairs;
mod plots;
mod prodcons;
mod report;
mod spike;
mod worker;

use dispatch::{Choice, Dispatch};

const ENV_ALLOC: &str = "TIERALLOC_BENCH_ALLOC";
const ENV_WORKLOAD: &str = "TIERALLOC_BENCH_WORKLOAD";
const ENV_QUICK: &str = "TIERALLOC_BENCH_QUICK";
const ENV_ITERS: &str = "TIERALLOC_BENCH_ITERS";
const ENV_WARMUP: &str = "TIERALLOC_BENCH_WARMUP";
const ENV_FIXED: &str = "TIERALLOC_BENCH_FIXED_SIZE";

/// Forwards to the allocator named by `TIERALLOC_BENCH_ALLOC` (system when unset: the driver).
#[global_allocator]
static GLOBAL: Dispatch = Dispatch::new(
    c"TIERALLOC_BENCH_ALLOC",
    Choice::System,
    &[
        Choice::TierAlloc,
        Choice::Mimalloc,
        Choice::Jemalloc,
        Choice::Numalloc,
        Choice::System,
        Choice::Tcmalloc,
    ],
);

/// The allocators `--allocs` may name; `tcmalloc` only in a build with the `bench-tcmalloc`
/// feature, the peers only with `bench-peers` (see [`alloc_needs`]).
const ALLOCS: [&str; 6] = [
    "tieralloc",
    "mimalloc",
    "jemalloc",
    "numalloc",
    "system",
    "tcmalloc",
];
/// Allocators this build cannot run, with what it takes to run them (the peers' C and C++
/// sources are built only with their features).
fn alloc_needs() -> Vec<(&'static str, &'static str)> {
    let mut needs = Vec::new();
    if !cfg!(feature = "bench-peers") {
        for a in ["mimalloc", "jemalloc", "numalloc"] {
            needs.push((
                a,
                "build with `cargo bench --features bench-peers --bench workloads` \
                 (scripts/compare.sh does)",
            ));
        }
    }
    if !cfg!(feature = "bench-tcmalloc") {
        needs.push((
            "tcmalloc",
            "build with `cargo bench --features bench-peers,bench-tcmalloc --bench workloads`",
        ));
    }
    needs
}
const WORKLOADS: [&str; 8] = [
    "pairs",
    "prodcons",
    "larson",
    "frag",
    "spike",
    "falseshare",
    "churn",
    "large",
];
const MIB: f64 = (1u64 << 20) as f64;

fn main() {
    if let Ok(w) = std::env::var(ENV_WORKLOAD) {
        worker::worker(&w);
    }
    driver::driver(cli::Cli::parse());
}
