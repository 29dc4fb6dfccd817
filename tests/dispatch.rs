//! The benchmarks' and the example service's dispatching allocator
//! (benches/support/dispatch.rs), used here as a plain value, not as the global allocator:
//! which allocator an environment value chooses, and which values it refuses (a name that is
//! unknown, not offered, or whose feature this build lacks serves the default, and
//! `refused` says so, which the service turns into exit status 2).

#[allow(dead_code)]
#[path = "../benches/support/dispatch.rs"]
mod dispatch;

use dispatch::{Choice, Dispatch};
use std::alloc::{GlobalAlloc, Layout};

const OFFERED: &[Choice] = &[Choice::TierAlloc, Choice::Mimalloc, Choice::System];

/// A fresh dispatcher reading `var`, set to `value` (each case its own variable: the tests
/// of this file run in parallel, and a dispatcher reads its variable once).
fn with(var: &'static std::ffi::CStr, value: Option<&str>) -> Dispatch {
    let name = var.to_str().unwrap();
    match value {
        Some(v) => std::env::set_var(name, v),
        None => std::env::remove_var(name),
    }
    Dispatch::new(var, Choice::TierAlloc, OFFERED)
}

#[test]
fn unset_serves_the_default_and_refuses_nothing() {
    let d = with(c"TIERALLOC_DISPATCH_TEST_UNSET", None);
    assert_eq!(d.choice(), Choice::TierAlloc);
    assert_eq!(d.refused(), None);
}

#[test]
fn an_offered_name_is_served() {
    let d = with(c"TIERALLOC_DISPATCH_TEST_SYSTEM", Some("system"));
    assert_eq!(d.choice(), Choice::System);
    assert_eq!(d.refused(), None);
    // And calls really go there: a block it returns is one the system allocator can free.
    let l = Layout::from_size_align(48, 8).unwrap();
    // SAFETY: a non-zero size; freed once, by the same dispatcher (same fixed choice).
    unsafe {
        let p = d.alloc(l);
        assert!(!p.is_null());
        p.write_bytes(0x5a, 48);
        d.dealloc(p, l);
    }
}

#[test]
fn an_unknown_name_serves_the_default_and_is_refused() {
    let d = with(c"TIERALLOC_DISPATCH_TEST_UNKNOWN", Some("nosuch"));
    assert_eq!(d.choice(), Choice::TierAlloc);
    assert_eq!(d.refused().as_deref(), Some("nosuch"));
}

#[test]
fn a_known_name_not_offered_is_refused() {
    // jemalloc is a known name (in a build with `bench-peers`) but not in OFFERED.
    let d = with(c"TIERALLOC_DISPATCH_TEST_NOT_OFFERED", Some("jemalloc"));
    assert_eq!(d.choice(), Choice::TierAlloc);
    assert_eq!(d.refused().as_deref(), Some("jemalloc"));
}

#[test]
fn a_peer_is_served_only_with_its_feature() {
    let d = with(c"TIERALLOC_DISPATCH_TEST_PEER", Some("mimalloc"));
    if cfg!(feature = "bench-peers") {
        assert_eq!(d.choice(), Choice::Mimalloc);
        assert_eq!(d.refused(), None);
    } else {
        assert_eq!(d.choice(), Choice::TierAlloc);
        assert_eq!(d.refused().as_deref(), Some("mimalloc"));
    }
}
