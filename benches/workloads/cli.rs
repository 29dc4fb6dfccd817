//! The driver's command line (clap): flags, their defaults and help text.
//!
//! Owns: [`Cli`]. May touch: nothing.

use clap::Parser;
use std::path::PathBuf;

/// tieralloc vs mimalloc vs jemalloc vs numalloc vs system, each allocator in its own process.
#[derive(Parser, Debug)]
#[command(name = "workloads", about)]
pub struct Cli {
    /// 3 runs and smaller sizes (about 3 minutes in all on 2 cores).
    #[arg(long)]
    pub quick: bool,
    /// Runs per allocator and workload (default: 3 with --quick, else 5).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Workloads to run (comma-separated): pairs, prodcons, larson, frag, spike, falseshare,
    /// churn, large.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Allocators to compare (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tieralloc,mimalloc,jemalloc,numalloc,system"
    )]
    pub allocs: Vec<String>,
    /// Where to write the full results (default: <target dir>/bench-results/workloads.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw SVG charts into this directory (default docs/img when given without a value).
    #[arg(long, num_args = 0..=1, default_missing_value = "docs/img")]
    pub plots: Option<PathBuf>,
    /// Only draw the charts from an existing JSON results file (no runs).
    #[arg(long)]
    pub plots_from: Option<PathBuf>,
    /// A worker still running after this many seconds is killed and counted as failed.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Instead of timing: count instructions per alloc+free pair of `pairs` under valgrind's
    /// callgrind (N pairs minus a 0-pair baseline).
    #[arg(long)]
    pub callgrind: bool,
    /// Pairs counted in --callgrind mode.
    #[arg(long, default_value_t = 1_000_000)]
    pub callgrind_pairs: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Filters passed by `cargo bench`; ignored.
    #[arg(hide = true)]
    filter: Vec<String>,
}
