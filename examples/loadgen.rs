//! Load generator for the example service: starts it once per global allocator (tieralloc,
//! mimalloc, system), drives each with the same fixed number of requests over many keep-alive
//! connections on loopback, and prints throughput, p50/p99/p99.9 latency and the service's peak
//! RSS side by side as a markdown table.
//!
//! Owns: the child service processes it starts (and stops them with SIGTERM).
//! May touch: loopback networking only; bounded request count and time.
//!
//! ```text
//! cargo build --release --features prometheus --example service --example loadgen
//! target/release/examples/loadgen --quick
//! target/release/examples/loadgen --requests 200000 --connections 64
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "Drive the example service under tieralloc, mimalloc and the system allocator")]
struct Args {
    /// Requests per allocator (after the warm-up).
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Items per request.
    #[arg(long, default_value_t = 32)]
    items: usize,
    /// Values per item.
    #[arg(long, default_value_t = 16)]
    values: usize,
    /// Warm-up requests per allocator (not measured).
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// Give up on an allocator after this many seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Allocators to compare, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tieralloc,mimalloc,system"
    )]
    allocators: Vec<String>,
    /// Worker threads of the service.
    #[arg(long)]
    workers: Option<usize>,
    /// Path of the service binary (default: `service` next to this binary).
    #[arg(long)]
    service: Option<PathBuf>,
    /// A short run: 5,000 requests over 16 connections.
    #[arg(long)]
    quick: bool,
}

struct Outcome {
    allocator: String,
    requests: u64,
    errors: u64,
    secs: f64,
    hist: Histogram<u64>,
    peak_rss_kib: u64,
}

fn request_body(args: &Args, seed: u64) -> Vec<u8> {
    let mut s = String::from("{\"items\":[");
    for i in 0..args.items {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{},\"name\":\"item-{}-{i}\",\"values\":[",
            seed + i as u64,
            seed
        ));
        for v in 0..args.values {
            if v > 0 {
                s.push(',');
            }
            let x = ((seed as usize * 31 + i * 17 + v * 7) % 1000) as f64 / 10.0;
            s.push_str(&format!("{x}"));
        }
        s.push_str("]}");
    }
    s.push_str("]}");
    s.into_bytes()
}

fn start_service(path: &PathBuf, allocator: &str, workers: Option<usize>) -> (Child, SocketAddr) {
    let mut cmd = Command::new(path);
    cmd.arg("--port")
        .arg("0")
        .env("TIERALLOC_SERVICE_ALLOC", allocator)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(w) = workers {
        cmd.arg("--workers").arg(w.to_string());
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {} ({e}); build it with `cargo build --release --features prometheus --example service`",
            path.display()
        )
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the service's first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the service: {line:?}"));
    assert!(
        addr.ip().is_loopback(),
        "the service must listen on loopback"
    );
    (child, addr)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Reads one HTTP/1.1 response with a Content-Length body from `s`; returns the status.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 << 10];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `count` requests over `connections` keep-alive connections; returns the latency
/// histogram (microseconds), errors and elapsed seconds.
async fn drive(
    addr: SocketAddr,
    bodies: Arc<Vec<Vec<u8>>>,
    count: u64,
    connections: usize,
    deadline: Instant,
) -> (Histogram<u64>, u64, f64) {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, errors, bodies) = (next.clone(), errors.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut stream = None;
            let mut buf = Vec::with_capacity(64 << 10);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || Instant::now() > deadline {
                    break;
                }
                if stream.is_none() {
                    match TcpStream::connect(addr).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            stream = Some(s);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                let s = stream.as_mut().unwrap();
                let body = &bodies[(i % bodies.len() as u64) as usize];
                let head = format!(
                    "POST /work HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                );
                let t = Instant::now();
                let ok = async {
                    s.write_all(head.as_bytes()).await?;
                    s.write_all(body).await?;
                    read_response(s, &mut buf).await
                }
                .await;
                match ok {
                    Ok(200) => {
                        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        stream = None;
                    }
                }
            }
            hist
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        hist.add(t.await.unwrap()).unwrap();
    }
    (
        hist,
        errors.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    )
}

fn main() {
    let mut args = Args::parse();
    if args.quick {
        args.requests = 5_000;
        args.connections = 16;
        args.warmup = 500;
    }
    let service = args.service.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .expect("current exe")
            .with_file_name("service")
    });
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..64).map(|s| request_body(&args, s)).collect());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut outcomes = Vec::new();
    for alloc in &args.allocators {
        let (mut child, addr) = start_service(&service, alloc, args.workers);
        eprintln!("{alloc}: service pid {} on {addr}", child.id());
        let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
        let (hist, errors, secs) = rt.block_on(async {
            drive(
                addr,
                bodies.clone(),
                args.warmup,
                args.connections,
                deadline,
            )
            .await;
            drive(
                addr,
                bodies.clone(),
                args.requests,
                args.connections,
                deadline,
            )
            .await
        });
        let peak = peak_rss_kib(child.id());
        // SAFETY: sending SIGTERM to our own child, identified by its pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let waited = Instant::now();
        loop {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if waited.elapsed() > Duration::from_secs(10) {
                eprintln!("{alloc}: service did not stop on SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        outcomes.push(Outcome {
            allocator: alloc.clone(),
            requests: hist.len(),
            errors,
            secs,
            hist,
            peak_rss_kib: peak,
        });
    }
    println!(
        "\n{} requests/allocator, {} connections, {} items x {} values per request, loopback\n",
        args.requests, args.connections, args.items, args.values
    );
    println!(
        "| allocator | requests ok | errors | req/s | p50 µs | p99 µs | p99.9 µs | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for o in &outcomes {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {:.1} |",
            o.allocator,
            o.requests,
            o.errors,
            o.requests as f64 / o.secs,
            o.hist.value_at_quantile(0.50),
            o.hist.value_at_quantile(0.99),
            o.hist.value_at_quantile(0.999),
            o.peak_rss_kib as f64 / 1024.0,
        );
    }
}
