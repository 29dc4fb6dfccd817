//! The example HTTP service: JSON work requests answered with per-request arenas and pooled
//! buffers, and `/metrics` in Prometheus text format. See `service/app.rs` for the API.
//!
//! Owns: the process: global allocator choice, runtime, listener, graceful shutdown.
//! May touch: loopback networking only.
//!
//! ```text
//! cargo run --release --example service -- --port 0
//! TIERALLOC_SERVICE_ALLOC=mimalloc cargo run --release --example service
//! ```
//!
//! The global allocator is chosen by `TIERALLOC_SERVICE_ALLOC` (`tieralloc`, the default,
//! `mimalloc` or `system`), read once on the first allocation with `libc::getenv`, which does
//! not allocate. The first line on stdout is `listening on 127.0.0.1:PORT`. SIGTERM or Ctrl-C
//! shut it down gracefully.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};

#[path = "service/app.rs"]
mod app;

/// Forwards to the allocator named by the environment, chosen once.
struct Dispatch;

const UNSET: u8 = 0;
const TIER: u8 = 1;
const MI: u8 = 2;
const SYS: u8 = 3;

static CHOICE: AtomicU8 = AtomicU8::new(UNSET);
static TIERALLOC: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[inline(always)]
fn choice() -> u8 {
    let c = CHOICE.load(Ordering::Relaxed);
    if c != UNSET {
        return c;
    }
    choose()
}

#[cold]
fn choose() -> u8 {
    // SAFETY: a NUL-terminated literal; getenv returns null or a NUL-terminated string owned
    // by the environment, read at start-up before any setenv, and it allocates nothing, so
    // calling it from inside the allocator cannot recurse.
    let v = unsafe { libc::getenv(c"TIERALLOC_SERVICE_ALLOC".as_ptr()) };
    let c = if v.is_null() {
        TIER
    } else {
        // SAFETY: non-null result of getenv: a valid C string.
        match unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes() {
            b"mimalloc" => MI,
            b"system" => SYS,
            _ => TIER,
        }
    };
    // Every thread computes the same value from the same environment, so a race here is benign.
    CHOICE.store(c, Ordering::Relaxed);
    c
}

fn allocator_name() -> &'static str {
    match choice() {
        MI => "mimalloc",
        SYS => "system",
        _ => "tieralloc",
    }
}

// SAFETY: each call forwards to one of three GlobalAlloc implementations; the choice never
// changes after it is made, so memory is always freed by the allocator that returned it.
unsafe impl GlobalAlloc for Dispatch {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match choice() {
                MI => MIMALLOC.alloc(l),
                SYS => System.alloc(l),
                _ => TIERALLOC.alloc(l),
            }
        }
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract; `p` came from the same allocator (fixed choice).
        unsafe {
            match choice() {
                MI => MIMALLOC.dealloc(p, l),
                SYS => System.dealloc(p, l),
                _ => TIERALLOC.dealloc(p, l),
            }
        }
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match choice() {
                MI => MIMALLOC.alloc_zeroed(l),
                SYS => System.alloc_zeroed(l),
                _ => TIERALLOC.alloc_zeroed(l),
            }
        }
    }
    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded contract; `p` came from the same allocator (fixed choice).
        unsafe {
            match choice() {
                MI => MIMALLOC.realloc(p, l, new),
                SYS => System.realloc(p, l, new),
                _ => TIERALLOC.realloc(p, l, new),
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

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

fn main() {
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
