//! The example service, in-process on an ephemeral loopback port: good and bad requests,
//! /metrics, and a graceful shutdown.
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[allow(dead_code)]
#[path = "../examples/service/app.rs"]
mod app;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_good_and_bad_requests_and_shuts_down() {
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

    let (status, metrics) = request(addr, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    for name in [
        "tieralloc_bytes_live ",
        "tieralloc_bytes_committed ",
        "tieralloc_remote_frees_total ",
        "tieralloc_class_live_blocks{size=",
        "tieralloc_node_bytes_live{node=\"0\",tier=\"0\"}",
        "tieralloc_tier_bytes_committed{tier=\"0\"}",
        "service_requests_total{outcome=\"ok\"} 81",
        "service_requests_total{outcome=\"bad_json\"} 2",
        "arena_high_water_bytes ",
        "bump_cache_checkouts_total{outcome=\"hit\"}",
        "pool_hits_total{pool=\"arenas\"}",
        "pool_created_total{pool=\"buffers\"}",
        "process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    let hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pool_hits_total{pool=\"arenas\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(hits > 0, "arenas are reused");

    let (status, body) = request(addr, "GET", "/health", b"").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    stop_tx.send(()).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("graceful shutdown within 10 s");
    r.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}
