//! The example HTTP service: JSON work requests answered with per-request arenas and pooled
//! buffers, a report built on the far tier, and `/metrics` from tieralloc's Prometheus
//! collector (feature `prometheus`). See `service/app.rs` for the API.
//!
//! Owns: the process: global allocator choice, runtime, listener, graceful shutdown.
//! May touch: loopback networking only.
//!
//! ```text
//! cargo run --release --features prometheus --example service -- --port 0
//! TIERALLOC_SERVICE_ALLOC=mimalloc cargo run --release --features prometheus,bench-peers --example service
//! ```
//!
//! The global allocator is chosen by `TIERALLOC_SERVICE_ALLOC` (`tieralloc`, the default,
//! `mimalloc` (builds with the `bench-peers` feature only) or `system`; any other value is
//! refused at start-up with exit status 2), read once on the first allocation with
//! `libc::getenv`, which does not allocate (the dispatcher is benches/support/dispatch.rs,
//! shared with the benchmarks).
//! The first line on stdout is `listening on 127.0.0.1:PORT`. SIGTERM or Ctrl-C shut it down
//! gracefully.

use std::io::Write as _;

#[path = "service/app.rs"]
mod app;
#[path = "../benches/support/dispatch.rs"]
mod dispatch;

use dispatch::{Choice, Dispatch};

/// Forwards to the allocator named by `TIERALLOC_SERVICE_ALLOC` (tieralloc when unset; `main`
/// refuses a name that is not served).
#[global_allocator]
static GLOBAL: Dispatch = Dispatch::new(
    c"TIERALLOC_SERVICE_ALLOC",
    Choice::TierAlloc,
    &[Choice::TierAlloc, Choice::Mimalloc, Choice::System],
);

fn allocator_name() -> &'static str {
    GLOBAL.choice().name()
}

fn parse_args() -> (u16, usize) {
    let mut port = 8080u16;
    let mut workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|v| v.parse().ok()).expect("--port N"),
            "--workers" => {
                workers = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--workers N")
            }
            "-h" | "--help" => {
                println!("service [--port N (0 = ephemeral)] [--workers N]");
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    (port, workers)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Exits with status 2 if `TIERALLOC_SERVICE_ALLOC` names an allocator this build does not
/// serve (the dispatcher would have served tieralloc instead, silently).
fn check_allocator_choice() {
    if let Some(asked) = GLOBAL.refused() {
        eprintln!(
            "TIERALLOC_SERVICE_ALLOC={asked}: not served by this build; choose tieralloc, \
             system or (built with --features bench-peers) mimalloc"
        );
        std::process::exit(2);
    }
}

fn main() {
    check_allocator_choice();
    let (port, workers) = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}");
            let _ = writeln!(out, "allocator {}", allocator_name());
            let _ = out.flush();
        }
        let state = app::AppState::new(allocator_name());
        axum::serve(listener, app::router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .expect("serve");
    });
}
