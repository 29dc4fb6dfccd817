//! The worker side: one process runs one workload under the allocator the environment names,
//! adds the memory metrics every workload shares and prints one JSON line on stdout.
//!
//! Owns: the worker process's output. May touch: the workloads, the measurement helpers, the
//! dispatcher's choice (to name the allocator) and tieralloc's statistics.

use crate::measure::{current_rss, light_idle, peak_rss};
use crate::{churn, falseshare, frag, large, larson, pairs, prodcons, spike};
use crate::{ENV_QUICK, GLOBAL, MIB};
use serde_json::json;

/// What every workload is told: quick mode (smaller sizes) or full.
pub struct Params {
    pub quick: bool,
}

/// Runs `workload` and exits (never returns to the driver's code).
pub fn worker(workload: &str) -> ! {
    let p = Params {
        quick: std::env::var(ENV_QUICK).is_ok_and(|v| v == "1"),
    };
    let rss_start = current_rss();
    let mut metrics = match workload {
        "pairs" => pairs::run(&p),
        "prodcons" => prodcons::run(&p),
        "larson" => larson::run(&p),
        "frag" => frag::run(&p),
        "spike" => spike::run(&p),
        "falseshare" => falseshare::run(&p),
        "churn" => churn::run(&p),
        "large" => large::run(&p),
        other => {
            eprintln!("unknown workload {other}");
            std::process::exit(2);
        }
    };
    // Memory metrics common to all workloads.
    let hwm = peak_rss() as f64 / MIB;
    metrics["rss_start_mib"] = json!(rss_start as f64 / MIB);
    metrics["peak_rss_mib"] = json!(hwm);
    // Under 1 MiB of live data the ratio would only measure the process's own baseline.
    if let Some(live) = metrics["peak_live_mib"].as_f64() {
        if live >= 1.0 {
            metrics["rss_over_live"] = json!(hwm / live);
        }
    }
    if metrics.get("rss_idle_mib").is_none() {
        // Everything is freed; idle with light traffic, then read the RSS.
        let ms = if p.quick { 200 } else { 500 };
        metrics["rss_freed_mib"] = json!(current_rss() as f64 / MIB);
        light_idle(ms);
        metrics["rss_idle_mib"] = json!(current_rss() as f64 / MIB);
        metrics["idle_ms"] = json!(ms);
    }
    let alloc = GLOBAL.choice().name();
    let mut out = json!({ "workload": workload, "alloc": alloc, "metrics": metrics });
    if alloc == "tieralloc" {
        let s = tieralloc::stats();
        out["tieralloc_stats"] = json!({
            "bytes_committed": s.bytes_committed,
            "bytes_reserved": s.bytes_reserved,
            "segments": s.segments,
            "segments_pooled": s.segments_pooled,
            "segments_abandoned": s.segments_abandoned,
            "remote_frees": s.remote_frees,
            "pages_abandoned": s.pages_abandoned,
            "pages_adopted": s.pages_adopted,
            "purges": s.purges,
            "purged_bytes": s.purged_bytes,
        });
    }
    println!("{out}");
    std::process::exit(0);
}
