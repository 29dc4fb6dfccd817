//! The service's router, handlers and Prometheus metrics, shared by `examples/service.rs` (the
//! binary) and `tests/service.rs` (which runs the router in-process).
//!
//! Owns: the HTTP API of the example service and the rendering of its metrics.
//! May touch: tieralloc's public API (stats, Arena, BumpCache, Pool) and its own state.
//!
//! API:
//! - `POST /work` with `{"items": [{"id": 1, "name": "a", "values": [1.0, 2.5]}, ...]}`:
//!   answers per-item statistics (sum, mean, median, min, max, an upper-cased label) and
//!   totals. Malformed JSON gets 400 with a message, bodies over [`BODY_LIMIT`] get 413.
//! - `GET /metrics`: Prometheus text format: allocator, node/tier, arena, bump-cache and pool
//!   statistics, and the process's RSS.
//! - `GET /health`: `ok`.
//!
//! Per request: the results are built in a typed [`Arena`] taken from a pool of arenas (reset,
//! chunks kept, on return), scratch vectors for the medians live in a bump from a
//! [`BumpCache`], and the response is serialised into a pooled `Vec<u8>`. In the steady state a
//! request thus allocates little beyond what serde_json's parser needs.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use tieralloc::{Arena, BumpCache, Pool};

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 256 * 1024;
/// Most items in one request.
pub const MAX_ITEMS: usize = 4096;
/// Byte limit of each per-request arena.
pub const ARENA_LIMIT: usize = 4 << 20;

#[derive(Deserialize)]
struct WorkRequest<'a> {
    #[serde(borrow)]
    items: Vec<Item<'a>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    id: u64,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    values: Vec<f64>,
}

/// The result for one item; lives in the per-request arena (its `label` is dropped by the
/// arena's reset: a `Drop` type, which a bumpalo arena would leak).
#[derive(Serialize)]
pub struct Summary {
    id: u64,
    label: String,
    n: usize,
    sum: f64,
    mean: f64,
    median: f64,
    min: f64,
    max: f64,
}

#[derive(Serialize)]
struct WorkResponse<'a> {
    count: usize,
    total: f64,
    results: &'a [&'a Summary],
}

/// Service-wide counters.
#[derive(Default)]
pub struct Counters {
    /// Requests to `/work` answered with 200.
    pub ok: AtomicU64,
    /// Requests to `/work` rejected as malformed.
    pub bad_json: AtomicU64,
    /// Requests to `/work` rejected for too many items or an arena limit.
    pub too_large: AtomicU64,
    /// Items processed.
    pub items: AtomicU64,
    /// Sum of the per-request arena bytes used.
    pub arena_bytes_used: AtomicU64,
    /// Largest per-request arena bytes used.
    pub arena_high_water: AtomicU64,
}

/// Everything the handlers share.
pub struct AppState {
    /// Name of the global allocator in use (a label in `/metrics`).
    pub allocator: &'static str,
    /// Per-request typed arenas, reset on return.
    pub arenas: Pool<Arena<Summary>>,
    /// Response buffers, cleared on return.
    pub buffers: Pool<Vec<u8>>,
    /// Per-worker bumps for scratch data.
    pub bumps: BumpCache,
    /// Counters.
    pub counters: Counters,
}

impl AppState {
    /// The state with default bounds.
    pub fn new(allocator: &'static str) -> Arc<Self> {
        Arc::new(AppState {
            allocator,
            arenas: Pool::builder(|| Arena::with_limit(ARENA_LIMIT))
                .reset(|a: &mut Arena<Summary>| a.reset())
                .max_idle(256)
                .build(),
            buffers: Pool::builder(|| Vec::with_capacity(16 << 10))
                .reset(|v: &mut Vec<u8>| {
                    v.clear();
                    // Do not keep a buffer that one huge answer blew up.
                    if v.capacity() > (1 << 20) {
                        *v = Vec::with_capacity(16 << 10);
                    }
                })
                .max_idle(256)
                .build(),
            bumps: BumpCache::new(),
            counters: Counters::default(),
        })
    }
}

/// The router: `/work`, `/metrics`, `/health`, with the body limit.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/work", post(work))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": msg.to_string() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn work(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    // Everything below is synchronous: the bump's references are not Send, so they must not
    // live across an await (there is none).
    let req: WorkRequest<'_> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            st.counters.bad_json.fetch_add(1, Relaxed);
            return error(StatusCode::BAD_REQUEST, format_args!("invalid JSON: {e}"));
        }
    };
    if req.items.len() > MAX_ITEMS {
        st.counters.too_large.fetch_add(1, Relaxed);
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format_args!("too many items: {} (at most {MAX_ITEMS})", req.items.len()),
        );
    }
    let arena = st.arenas.get();
    let bump = st.bumps.checkout();
    let mut results: allocator_api2::vec::Vec<&Summary, &bumpalo::Bump> =
        allocator_api2::vec::Vec::with_capacity_in(req.items.len(), &*bump);
    let mut total = 0.0;
    for item in &req.items {
        let mut sorted = allocator_api2::vec::Vec::with_capacity_in(item.values.len(), &*bump);
        sorted.extend_from_slice(&item.values);
        sorted.sort_unstable_by(f64::total_cmp);
        let n = sorted.len();
        let sum = sorted.iter().fold(0.0, |a, b| a + b);
        let median = match n {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        let summary = Summary {
            id: item.id,
            label: item.name.to_uppercase(),
            n,
            sum,
            mean: if n == 0 { 0.0 } else { sum / n as f64 },
            median,
            min: sorted.first().copied().unwrap_or(0.0),
            max: sorted.last().copied().unwrap_or(0.0),
        };
        total += sum;
        match arena.try_alloc(summary) {
            Ok(s) => results.push(&*s),
            Err(e) => {
                st.counters.too_large.fetch_add(1, Relaxed);
                return error(StatusCode::PAYLOAD_TOO_LARGE, e);
            }
        }
    }
    let used = arena.stats().bytes_used as u64;
    st.counters.arena_bytes_used.fetch_add(used, Relaxed);
    st.counters.arena_high_water.fetch_max(used, Relaxed);
    st.counters.items.fetch_add(req.items.len() as u64, Relaxed);
    let resp = WorkResponse {
        count: results.len(),
        total,
        results: &results[..],
    };
    let mut buf = st.buffers.get();
    if let Err(e) = serde_json::to_writer(&mut *buf, &resp) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    buf.push(b'\n');
    let body = Bytes::copy_from_slice(&buf);
    st.counters.ok.fetch_add(1, Relaxed);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&st),
    )
        .into_response()
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// All metrics, in Prometheus text format.
pub fn render_metrics(st: &AppState) -> String {
    let mut out = String::with_capacity(8192);
    let s = tieralloc::stats();
    metric(
        &mut out,
        "tieralloc_info",
        "gauge",
        "Global allocator in use.",
    );
    let _ = writeln!(out, "tieralloc_info{{allocator=\"{}\"}} 1", st.allocator);
    for (name, help, v) in [
        (
            "tieralloc_bytes_live",
            "Bytes in live blocks.",
            s.bytes_live,
        ),
        (
            "tieralloc_bytes_committed",
            "Bytes committed.",
            s.bytes_committed,
        ),
        (
            "tieralloc_bytes_reserved",
            "Bytes of address space mapped.",
            s.bytes_reserved,
        ),
        ("tieralloc_segments", "Segments mapped.", s.segments),
        (
            "tieralloc_segments_pooled",
            "Empty segments pooled.",
            s.segments_pooled,
        ),
        (
            "tieralloc_large_bytes_live",
            "Bytes of live large objects.",
            s.large_bytes_live,
        ),
        (
            "tieralloc_huge_bytes_live",
            "Bytes of live huge objects.",
            s.huge_bytes_live,
        ),
    ] {
        metric(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {v}");
    }
    for (name, help, v) in [
        (
            "tieralloc_remote_frees_total",
            "Frees of blocks another thread owned.",
            s.remote_frees,
        ),
        ("tieralloc_purges_total", "Purges of idle memory.", s.purges),
        (
            "tieralloc_purged_bytes_total",
            "Bytes purged.",
            s.purged_bytes,
        ),
        (
            "tieralloc_large_allocs_total",
            "Large objects allocated.",
            s.large_allocs,
        ),
        (
            "tieralloc_huge_allocs_total",
            "Huge objects allocated.",
            s.huge_allocs,
        ),
        (
            "tieralloc_map_failures_total",
            "mmap calls refused.",
            s.map_failures,
        ),
    ] {
        metric(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }
    metric(
        &mut out,
        "tieralloc_class_allocs_total",
        "counter",
        "Allocations per size class.",
    );
    for c in &s.classes {
        let _ = writeln!(
            out,
            "tieralloc_class_allocs_total{{size=\"{}\"}} {}",
            c.block_size, c.allocs
        );
    }
    metric(
        &mut out,
        "tieralloc_class_live_blocks",
        "gauge",
        "Live blocks per size class.",
    );
    for c in &s.classes {
        let _ = writeln!(
            out,
            "tieralloc_class_live_blocks{{size=\"{}\"}} {}",
            c.block_size, c.live
        );
    }
    render_node_metrics(&mut out, &s);
    render_arena_pool_metrics(&mut out, st);
    render_process_metrics(&mut out);
    out
}

/// Node and tier section. The one place that knows how nodes and tiers are reported: each
/// node is labelled with its memory tier from `tieralloc::topology()` (0 = fastest), followed
/// by the per-tier totals of `tieralloc::tiers::stats()`; a process with no per-node data
/// (another global allocator) reports node 0 with the totals.
pub fn render_node_metrics(out: &mut String, s: &tieralloc::Stats) {
    let topo = tieralloc::topology();
    let tier_of = |node: u32| {
        topo.tier_of(node)
            .map_or_else(|| "unknown".to_string(), |t| t.to_string())
    };
    metric(
        out,
        "tieralloc_node_bytes_live",
        "gauge",
        "Live bytes per NUMA node.",
    );
    let nodes: Vec<(u32, i64, u64, u64)> = if s.nodes.is_empty() {
        vec![(0, s.bytes_live as i64, s.bytes_committed, 0)]
    } else {
        s.nodes
            .iter()
            .map(|n| (n.node, n.bytes_live, n.bytes_committed, n.cross_node_frees))
            .collect()
    };
    for (node, live, _, _) in &nodes {
        let tier = tier_of(*node);
        let _ = writeln!(
            out,
            "tieralloc_node_bytes_live{{node=\"{node}\",tier=\"{tier}\"}} {live}"
        );
    }
    metric(
        out,
        "tieralloc_node_bytes_committed",
        "gauge",
        "Committed bytes per NUMA node.",
    );
    for (node, _, committed, _) in &nodes {
        let tier = tier_of(*node);
        let _ = writeln!(
            out,
            "tieralloc_node_bytes_committed{{node=\"{node}\",tier=\"{tier}\"}} {committed}"
        );
    }
    metric(
        out,
        "tieralloc_node_cross_frees_total",
        "counter",
        "Frees from another node.",
    );
    for (node, _, _, cross) in &nodes {
        let _ = writeln!(
            out,
            "tieralloc_node_cross_frees_total{{node=\"{node}\"}} {cross}"
        );
    }
    let tiers = tieralloc::tiers::stats();
    for (name, help, kind) in [
        (
            "tieralloc_tier_bytes_live",
            "Live bytes per memory tier.",
            "gauge",
        ),
        (
            "tieralloc_tier_bytes_committed",
            "Committed bytes per memory tier.",
            "gauge",
        ),
        (
            "tieralloc_tier_spills_total",
            "Allocations that spilled past the tier's budget.",
            "counter",
        ),
        (
            "tieralloc_tier_demoted_bytes_total",
            "Bytes demoted into the tier.",
            "counter",
        ),
        (
            "tieralloc_tier_promoted_bytes_total",
            "Bytes promoted into the tier.",
            "counter",
        ),
    ] {
        metric(out, name, kind, help);
        for t in &tiers {
            let v = match name {
                "tieralloc_tier_bytes_live" => t.live_bytes,
                "tieralloc_tier_bytes_committed" => t.committed_bytes as i64,
                "tieralloc_tier_spills_total" => t.spills as i64,
                "tieralloc_tier_demoted_bytes_total" => t.demoted_bytes as i64,
                _ => t.promoted_bytes as i64,
            };
            let _ = writeln!(out, "{name}{{tier=\"{}\"}} {v}", t.index);
        }
    }
}

fn render_arena_pool_metrics(out: &mut String, st: &AppState) {
    let c = &st.counters;
    metric(
        out,
        "service_requests_total",
        "counter",
        "Requests to /work by outcome.",
    );
    let _ = writeln!(
        out,
        "service_requests_total{{outcome=\"ok\"}} {}",
        c.ok.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "service_requests_total{{outcome=\"bad_json\"}} {}",
        c.bad_json.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "service_requests_total{{outcome=\"too_large\"}} {}",
        c.too_large.load(Relaxed)
    );
    metric(out, "service_items_total", "counter", "Items processed.");
    let _ = writeln!(out, "service_items_total {}", c.items.load(Relaxed));
    metric(
        out,
        "arena_bytes_used_total",
        "counter",
        "Per-request arena bytes used, summed.",
    );
    let _ = writeln!(
        out,
        "arena_bytes_used_total {}",
        c.arena_bytes_used.load(Relaxed)
    );
    metric(
        out,
        "arena_high_water_bytes",
        "gauge",
        "Largest per-request arena use.",
    );
    let _ = writeln!(
        out,
        "arena_high_water_bytes {}",
        c.arena_high_water.load(Relaxed)
    );
    let b = st.bumps.stats();
    metric(
        out,
        "bump_cache_checkouts_total",
        "counter",
        "Bump checkouts by outcome.",
    );
    let _ = writeln!(
        out,
        "bump_cache_checkouts_total{{outcome=\"hit\"}} {}",
        b.hits
    );
    let _ = writeln!(
        out,
        "bump_cache_checkouts_total{{outcome=\"miss\"}} {}",
        b.misses
    );
    metric(out, "bump_cache_idle", "gauge", "Idle bumps cached.");
    let _ = writeln!(out, "bump_cache_idle {}", b.idle);
    metric(
        out,
        "bump_cache_idle_bytes",
        "gauge",
        "Chunk bytes held by idle bumps.",
    );
    let _ = writeln!(out, "bump_cache_idle_bytes {}", b.idle_bytes);
    let pools = [
        ("arenas", st.arenas.stats()),
        ("buffers", st.buffers.stats()),
    ];
    for (field, help) in [
        ("hits", "Gets served by an idle object."),
        ("misses", "Gets that made a new object."),
        ("created", "Objects made."),
        ("dropped", "Objects dropped on return."),
    ] {
        let name = format!("pool_{field}_total");
        metric(out, &name, "counter", help);
        for (pool, p) in &pools {
            let v = match field {
                "hits" => p.hits,
                "misses" => p.misses,
                "created" => p.created,
                _ => p.dropped,
            };
            let _ = writeln!(out, "{name}{{pool=\"{pool}\"}} {v}");
        }
    }
    metric(out, "pool_idle", "gauge", "Idle objects.");
    for (pool, p) in &pools {
        let _ = writeln!(out, "pool_idle{{pool=\"{pool}\"}} {}", p.idle);
    }
    metric(out, "pool_out", "gauge", "Objects out now.");
    for (pool, p) in &pools {
        let _ = writeln!(out, "pool_out{{pool=\"{pool}\"}} {}", p.out);
    }
}

/// Resident set size now and its peak, from /proc/self/status (Linux).
fn render_process_metrics(out: &mut String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for (key, name, help) in [
        (
            "VmRSS:",
            "process_resident_memory_bytes",
            "Resident set size.",
        ),
        (
            "VmHWM:",
            "process_resident_memory_peak_bytes",
            "Peak resident set size.",
        ),
    ] {
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            metric(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {}", kb * 1024);
        }
    }
}
