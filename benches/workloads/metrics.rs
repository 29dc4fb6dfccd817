//! Which metrics the reports show and how each is judged: the targets table (PASS/FAIL against
//! mimalloc or an absolute goal) and the common metrics every workload reports.
//!
//! Owns: [`METRICS`] and [`COMMON`] (constants only). May touch: nothing.

/// How a metric is judged.
#[derive(Clone, Copy)]
pub enum Target {
    /// tieralloc's median ≤ factor × mimalloc's median.
    VsMimalloc(f64),
    /// tieralloc's median ≤ the median of this metric of tieralloc's own runs.
    Absolute(&'static str),
    /// Shown for information only.
    Info,
}

pub struct MetricSpec {
    pub workload: &'static str,
    pub key: &'static str,
    pub label: &'static str,
    pub target: Target,
    pub show_min: bool,
}

const fn spec(
    workload: &'static str,
    key: &'static str,
    label: &'static str,
    target: Target,
    show_min: bool,
) -> MetricSpec {
    MetricSpec {
        workload,
        key,
        label,
        target,
        show_min,
    }
}

/// The targets table: the issue-2 targets and each new workload's own metric.
pub const METRICS: &[MetricSpec] = &[
    spec(
        "pairs",
        "ns_per_pair",
        "wall ns per alloc+free pair",
        Target::VsMimalloc(0.9),
        true,
    ),
    spec(
        "pairs",
        "cpu_ns_per_pair",
        "thread-CPU ns per pair",
        Target::VsMimalloc(0.9),
        true,
    ),
    spec(
        "prodcons",
        "ns_per_obj",
        "wall ns per object (2 threads)",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec(
        "prodcons",
        "cpu_ns_per_obj",
        "process-CPU ns per object",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec(
        "larson",
        "ns_per_op",
        "wall ns per op per thread",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec(
        "larson",
        "cpu_ns_per_op",
        "process-CPU ns per op",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec(
        "larson",
        "peak_rss_mib",
        "peak RSS MiB",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec(
        "frag",
        "rss_over_live",
        "peak RSS / peak live",
        Target::VsMimalloc(1.0),
        false,
    ),
    spec("frag", "peak_rss_mib", "peak RSS MiB", Target::Info, false),
    spec(
        "spike",
        "rss_1s_mib",
        "RSS MiB 1 s after spike",
        Target::Absolute("target_mib"),
        false,
    ),
    spec(
        "spike",
        "rss_2s_mib",
        "RSS MiB 2 s after spike",
        Target::Absolute("target_mib"),
        false,
    ),
    spec(
        "spike",
        "rss_3s_mib",
        "RSS MiB 3 s after spike",
        Target::Absolute("target_mib"),
        false,
    ),
    spec(
        "spike",
        "rss_spike_mib",
        "RSS MiB at spike peak",
        Target::Info,
        false,
    ),
    spec(
        "falseshare",
        "wall_ms",
        "wall ms (2 threads)",
        Target::Info,
        false,
    ),
    spec(
        "churn",
        "us_per_thread",
        "wall µs per short thread",
        Target::Info,
        false,
    ),
    spec(
        "churn",
        "rss_end_mib",
        "RSS MiB at the end",
        Target::Info,
        false,
    ),
    spec(
        "large",
        "us_per_step",
        "wall µs per step",
        Target::Info,
        false,
    ),
    spec("large", "peak_rss_mib", "peak RSS MiB", Target::Info, false),
];

/// The metrics every workload reports (second table, ratios against mimalloc).
pub const COMMON: &[(&str, &str, f64)] = &[
    ("ops_per_s", "throughput, M ops/s", 1e-6),
    ("lat_p50_ns", "latency p50, ns", 1.0),
    ("lat_p99_ns", "latency p99, ns", 1.0),
    ("lat_p999_ns", "latency p99.9, ns", 1.0),
    ("lat_max_ns", "latency max, µs", 1e-3),
    ("peak_rss_mib", "peak RSS, MiB", 1.0),
    ("peak_live_mib", "peak live, MiB", 1.0),
    ("rss_over_live", "peak RSS / peak live", 1.0),
    ("rss_idle_mib", "RSS after idle, MiB", 1.0),
];
