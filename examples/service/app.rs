//! The service's router, handlers and metrics, shared by `examples/service.rs` (the binary)
//! and `tests/service.rs` (which runs the router in-process).
//!
//! Owns: the HTTP API of the example service, its own counters and its metrics registry.
//! May touch: tieralloc's public API (stats, placement, Arena, BumpCache, Pool, and the
//! `metrics` collector of the `prometheus` feature) and its own state.
//!
//! API:
//! - `POST /work` with `{"items": [{"id": 1, "name": "a", "values": [1.0, 2.5]}, ...]}`:
//!   answers per-item statistics (sum, mean, median, min, max, an upper-cased label) and
//!   totals. Malformed JSON gets 400 with a message, bodies over [`BODY_LIMIT`] get 413.
//! - `GET /report/far`: a JSON report of the service's counters and the allocator's
//!   statistics, built on the far tier (`Placed::cold()`: the local node on a machine without
//!   one) by wrapping the handler's work in `.placed_labeled(.., "report")`; the latest
//!   [`REPORTS_KEPT`] reports are kept there, as cold data, so `/metrics` shows the far tier's
//!   bytes grow, and the `report` scope label's bytes with them.
//! - `GET /metrics`: the registry in the OpenMetrics text format of `prometheus-client`:
//!   tieralloc's collector (allocator, node, tier, size class, scope label, and the service's
//!   arenas, bump cache and pools), the service's counters, and the process's RSS.
//! - `GET /health`: `ok`.
//!
//! Per request: the results are built in a typed [`Arena`] taken from a pool of arenas (reset,
//! chunks kept, on return), scratch vectors for the medians live in a bump from a
//! [`BumpCache`], and the response is serialised into a pooled `Vec<u8>`. In the steady state a
//! request thus allocates little beyond what serde_json's parser needs.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use tieralloc::{Arena, BumpCache, Placed, PlacedFutureExt, Pool};

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

/// Outcome label of `service_requests_total`.
type Outcome = [(&'static str, &'static str); 1];

/// Service-wide counters, registered in [`AppState::registry`].
#[derive(Default)]
pub struct Counters {
    /// Requests to `/work` by outcome: `ok` (200), `bad_json` (malformed), `too_large` (too
    /// many items or an arena limit).
    pub requests: Family<Outcome, Counter>,
    /// Items processed.
    pub items: Counter,
    /// Sum of the per-request arena bytes used.
    pub arena_bytes_used: Counter,
    /// Largest per-request arena bytes used.
    pub arena_high_water: Gauge,
    /// Reports built by `/report/far`.
    pub reports: Counter,
}

impl Counters {
    fn outcome(&self, outcome: &'static str) {
        self.requests.get_or_create(&[("outcome", outcome)]).inc();
    }
}

/// How many `/report/far` reports the service keeps.
pub const REPORTS_KEPT: usize = 64;

/// Everything the handlers share.
pub struct AppState {
    /// Per-request typed arenas, reset on return.
    pub arenas: Arc<Pool<Arena<Summary>>>,
    /// Response buffers, cleared on return.
    pub buffers: Arc<Pool<Vec<u8>>>,
    /// Per-worker bumps for scratch data.
    pub bumps: Arc<BumpCache>,
    /// Counters.
    pub counters: Counters,
    /// The latest reports of `/report/far`, oldest first: cold data, on the far tier.
    pub reports: Mutex<VecDeque<Box<str>>>,
    /// What `/metrics` serves.
    pub registry: Registry,
}

impl AppState {
    /// The state with default bounds; `allocator` (the global allocator's name) is the label
    /// of `service_allocator_info`.
    pub fn new(allocator: &'static str) -> Arc<Self> {
        let arenas = Arc::new(
            Pool::builder(|| Arena::with_limit(ARENA_LIMIT))
                .reset(|a: &mut Arena<Summary>| a.reset())
                .max_idle(256)
                .build(),
        );
        let buffers = Arc::new(
            Pool::builder(|| Vec::with_capacity(16 << 10))
                .reset(|v: &mut Vec<u8>| {
                    v.clear();
                    // Do not keep a buffer that one huge answer blew up.
                    if v.capacity() > (1 << 20) {
                        *v = Vec::with_capacity(16 << 10);
                    }
                })
                .max_idle(256)
                .build(),
        );
        let bumps = Arc::new(BumpCache::new());
        let counters = Counters::default();
        let mut registry = Registry::default();
        // tieralloc's statistics, and the service's pools and bump cache, read at each scrape.
        let (a, b, c) = (arenas.clone(), buffers.clone(), bumps.clone());
        registry.register_collector(Box::new(
            tieralloc::metrics::Collector::new()
                .pool("arenas", move || a.stats())
                .pool("buffers", move || b.stats())
                .bump_cache("scratch", move || c.stats()),
        ));
        registry.register_collector(Box::new(ProcessCollector));
        registry.register(
            "service_allocator",
            "Global allocator in use.",
            Info::new([("allocator", allocator)]),
        );
        registry.register(
            "service_requests",
            "Requests to /work by outcome.",
            counters.requests.clone(),
        );
        registry.register("service_items", "Items processed.", counters.items.clone());
        registry.register(
            "service_reports",
            "Reports built on the far tier by /report/far.",
            counters.reports.clone(),
        );
        registry.register_with_unit(
            "service_arena_used",
            "Per-request arena bytes used, summed.",
            Unit::Bytes,
            counters.arena_bytes_used.clone(),
        );
        registry.register_with_unit(
            "service_arena_high_water",
            "Largest per-request arena use.",
            Unit::Bytes,
            counters.arena_high_water.clone(),
        );
        Arc::new(AppState {
            arenas,
            buffers,
            bumps,
            counters,
            reports: Mutex::new(VecDeque::new()),
            registry,
        })
    }
}

/// The router: `/work`, `/report/far`, `/metrics`, `/health`, with the body limit.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/work", post(work))
        .route("/report/far", get(report_far))
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
            st.counters.outcome("bad_json");
            return error(StatusCode::BAD_REQUEST, format_args!("invalid JSON: {e}"));
        }
    };
    if req.items.len() > MAX_ITEMS {
        st.counters.outcome("too_large");
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
                st.counters.outcome("too_large");
                return error(StatusCode::PAYLOAD_TOO_LARGE, e);
            }
        }
    }
    let used = arena.stats().bytes_used as u64;
    st.counters.arena_bytes_used.inc_by(used);
    st.counters
        .arena_high_water
        .inner()
        .fetch_max(used as i64, Relaxed);
    st.counters.items.inc_by(req.items.len() as u64);
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
    st.counters.outcome("ok");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// `/report/far`: the report is built inside a placement scope on the far tier, entered on
/// each poll of the wrapped future (whichever worker thread polls it) and left before the
/// poll returns; so are the kept copy and the response body. The scope is labelled
/// `report`, so /metrics shows its live bytes as `tieralloc_scope_live_bytes{scope="report"}`
/// (and per node). `Placed::cold()` never fails:
/// without a far tier it is the local node.
async fn report_far(State(st): State<Arc<AppState>>) -> Response {
    async move { far_report(&st) }
        .placed_labeled(Placed::cold(), "report")
        .await
}

fn far_report(st: &AppState) -> Response {
    let c = &st.counters;
    let outcome = |o| c.requests.get_or_create(&[("outcome", o)]).get();
    let report = serde_json::json!({
        "requests": {
            "ok": outcome("ok"),
            "bad_json": outcome("bad_json"),
            "too_large": outcome("too_large"),
        },
        "items": c.items.get(),
        "arena_high_water_bytes": c.arena_high_water.get(),
        "allocator": tieralloc::stats(),
        "tiers": tieralloc::tiers::stats().iter().map(|t| serde_json::json!({
            "tier": t.index,
            "nodes": t.nodes,
            "live_bytes": t.live_bytes,
            "committed_bytes": t.committed_bytes,
        })).collect::<Vec<_>>(),
    })
    .to_string();
    c.reports.inc();
    let mut body = String::with_capacity(report.len() + 1);
    body.push_str(&report);
    body.push('\n');
    {
        let mut kept = st.reports.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() == REPORTS_KEPT {
            kept.pop_front();
        }
        // A copy of its exact length: the serialiser's buffer grew by doubling, and a
        // shrinking realloc keeps its block.
        kept.push_back(Box::from(report.as_str()));
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut text = String::with_capacity(16 << 10);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &st.registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The process's resident set size now and its peak, from /proc/self/status (Linux), as
/// `process_resident_memory_bytes` and `process_resident_memory_peak_bytes`.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        for (key, name, help) in [
            ("VmRSS:", "process_resident_memory", "Resident set size."),
            (
                "VmHWM:",
                "process_resident_memory_peak",
                "Peak resident set size.",
            ),
        ] {
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok());
            if let Some(kib) = kib {
                let g = ConstGauge::new(kib * 1024);
                g.encode(enc.encode_descriptor(
                    name,
                    help,
                    Some(&Unit::Bytes),
                    g.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}
