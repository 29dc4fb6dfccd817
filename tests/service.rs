//! The example service, in-process on an ephemeral loopback port: good and bad requests,
//! /metrics, a graceful shutdown, and the report built on the far tier (in a child with
//! simulated nodes and a far tier). Needs the `prometheus` feature:
//! `cargo test --release --features prometheus --test service`.
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[allow(dead_code)]
#[path = "../examples/service/app.rs"]
mod app;

#[path = "common/child.rs"]
mod child;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) before reading a large body: ignore a failed write.
    let _ = s.write_all(body).await;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The value of the sample whose name and labels are `series` in a scrape.
fn value(metrics: &str, series: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"))
}

type Server = tokio::task::JoinHandle<std::io::Result<()>>;

/// Starts the service on an ephemeral loopback port; returns its address, the sender that
/// stops it and its task.
async fn start() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    Server,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    assert!(addr.ip().is_loopback());
    let state = app::AppState::new("tieralloc");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app::router(state))
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    (addr, stop_tx, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_good_and_bad_requests_and_shuts_down() {
    let (addr, stop_tx, server) = start().await;

    let good = br#"{"items":[{"id":7,"name":"alpha","values":[4,1,3,2]},{"id":8,"name":"b","values":[10]}]}"#;
    let (status, body) = request(addr, "POST", "/work", good).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v["count"], 2);
    assert_eq!(v["total"], 20.0);
    assert_eq!(v["results"][0]["id"], 7);
    assert_eq!(v["results"][0]["label"], "ALPHA");
    assert_eq!(v["results"][0]["median"], 2.5);
    assert_eq!(v["results"][0]["max"], 4.0);
    assert_eq!(v["results"][1]["mean"], 10.0);

    // Malformed JSON: 400 with a message.
    let (status, body) = request(addr, "POST", "/work", b"{\"items\": [1, 2").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid JSON"), "{body}");
    // Wrong shape: also 400.
    let (status, body) = request(addr, "POST", "/work", br#"{"items":[{"id":"x"}]}"#).await;
    assert_eq!(status, 400, "{body}");
    // Oversized body: 413.
    let big = vec![b' '; app::BODY_LIMIT + 1024];
    let (status, body) = request(addr, "POST", "/work", &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("length limit"), "{body}");

    // Still serving, and many requests reuse the pooled arenas and buffers.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let (status, _) = request(addr, "POST", "/work", good).await;
                assert_eq!(status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // The far report works on any machine (`Placed::cold()` is the local node without a far
    // tier): valid JSON with the allocator's statistics.
    let (status, body) = request(addr, "GET", "/report/far", b"").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v["requests"]["ok"], 81, "{body}");
    assert!(v["allocator"]["bytes_live"].as_u64().unwrap() > 0, "{body}");

    let (status, metrics) = request(addr, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    for name in [
        "service_reports_total 1",
        "tieralloc_live_bytes ",
        "tieralloc_committed_bytes ",
        "tieralloc_remote_frees_total ",
        "tieralloc_class_live_blocks{class=",
        "tieralloc_node_live_bytes{node=\"0\",tier=\"0\"}",
        "tieralloc_tier_committed_bytes{tier=\"0\"}",
        "service_allocator_info{allocator=\"tieralloc\"} 1",
        "service_requests_total{outcome=\"ok\"} 81",
        "service_requests_total{outcome=\"bad_json\"} 2",
        "service_arena_high_water_bytes ",
        "tieralloc_bump_cache_checkouts_total{cache=\"scratch\",outcome=\"hit\"}",
        "tieralloc_pool_hits_total{pool=\"arenas\"}",
        "tieralloc_pool_created_total{pool=\"buffers\"}",
        "process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    let hits = value(&metrics, "tieralloc_pool_hits_total{pool=\"arenas\"}");
    assert!(hits > 0, "arenas are reused");
    // Each /work request used its arena: 2 summaries each, 81 requests.
    let used = value(&metrics, "service_arena_used_bytes_total");
    let one = value(&metrics, "service_arena_high_water_bytes");
    assert!(one > 0 && used == 81 * one, "{used} {one}");

    let (status, body) = request(addr, "GET", "/health", b"").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    stop_tx.send(()).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("graceful shutdown within 10 s");
    r.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

/// `/report/far` builds its report inside `.placed(Placed::cold())`: with a far tier
/// (`TIERALLOC_SIMULATE_NODES=2,far=1`: nodes 0 and 1 near, node 2 far), the kept reports'
/// bytes show in /metrics on the far tier and its node, and nothing else of the request
/// stays there.
#[test]
fn the_far_report_moves_the_far_tiers_bytes_in_metrics() {
    const NAME: &str = "the_far_report_moves_the_far_tiers_bytes_in_metrics";
    if !child::is_child() {
        let mut cmd = child::on_simulated_nodes(NAME, "2,far=1");
        child::run(&mut cmd, Duration::from_secs(300)).expect_test_passed();
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (addr, stop_tx, server) = start().await;
        let far = "tieralloc_tier_live_bytes{tier=\"1\"}";
        let far_node = "tieralloc_node_live_bytes{node=\"2\",tier=\"1\"}";
        let (status, before) = request(addr, "GET", "/metrics", b"").await;
        assert_eq!(status, 200);
        let far0 = value(&before, far);
        assert_eq!(value(&before, far_node), far0);
        // Fewer than the reports kept, so none is dropped.
        const CALLS: usize = 16;
        let mut kept = 0;
        for _ in 0..CALLS {
            let (status, body) = request(addr, "GET", "/report/far", b"").await;
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
            assert!(v["allocator"]["bytes_live"].as_u64().unwrap() > 0, "{body}");
            assert_eq!(v["tiers"][1]["nodes"], serde_json::json!([2]), "{body}");
            kept += body.trim_end().len() as i64;
        }
        let (_, after) = request(addr, "GET", "/metrics", b"").await;
        assert_eq!(value(&after, "service_reports_total"), CALLS as i64);
        let moved = value(&after, far) - far0;
        eprintln!("far tier: +{moved} bytes live for {kept} bytes of reports kept");
        assert_eq!(value(&after, far_node) - far0, moved);
        // The kept reports, each in a block of its size class (at most a quarter larger),
        // and the queue that holds them; the responses and the serialiser's buffers were
        // freed.
        assert!(
            (kept..kept + kept / 4 + (4 << 10)).contains(&moved),
            "the far tier's live bytes moved by {moved}; the reports kept are {kept} bytes"
        );
        // All of it was allocated in the route's scope, labelled "report": its series carry
        // exactly what the far tier gained, all on the far node.
        assert_eq!(
            value(&after, "tieralloc_scope_live_bytes{scope=\"report\"}"),
            moved,
            "{after}"
        );
        assert_eq!(
            value(
                &after,
                "tieralloc_scope_node_live_bytes{scope=\"report\",node=\"2\",tier=\"1\"}"
            ),
            moved
        );
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("graceful shutdown within 10 s")
            .unwrap()
            .unwrap();
    });
}
