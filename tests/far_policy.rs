//! The far policy (`TIERALLOC_FAR_POLICY=bind|preferred`, issue 17 item 4) and its per-handle
//! form (`Placed::preferred`, `Placed::bound`), under `TIERALLOC_SIMULATE_NODES=2,far=1` (CPU
//! nodes 0 and 1, far node 2). Each check runs in a child process (the variable is read once,
//! at start-up). With simulated nodes the kernel's binding calls are skipped, so what is checked
//! here is the option as parsed and announced (the start-up line), its warning for a bad value,
//! and that memory lands on the far node under either policy as `stats()` counts it. The mode
//! that reaches mbind is checked by the unit tests of `sys::numa` and `placed` (get_mempolicy on
//! real mappings); that the kernel moves `preferred` memory and not `bind` memory needs a
//! machine with a far node (the VM).

use allocator_api2::vec::Vec as AVec;
use std::time::Duration;
use tieralloc::Placed;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[path = "common/child.rs"]
mod child;
#[path = "common/live.rs"]
mod live;

/// Runs the inner check in a child with `TIERALLOC_FAR_POLICY=policy` (unset for None);
/// returns its stderr.
fn run_child(policy: Option<&str>) -> String {
    let mut cmd = child::on_simulated_nodes("inner_far_memory_lands_on_the_far_node", "2,far=1");
    cmd.env("TIERALLOC_VERBOSE", "1");
    if let Some(p) = policy {
        cmd.env("TIERALLOC_FAR_POLICY", p);
    }
    let out = child::run(&mut cmd, Duration::from_secs(120));
    out.expect_test_passed();
    out.stderr
}

#[test]
fn inner_far_memory_lands_on_the_far_node() {
    if !child::is_child() {
        return;
    }
    let far = Placed::far().unwrap();
    assert_eq!(far.node_id(), Some(2));
    // Through the far node's heap (a scope): counted on node 2.
    let before = live::node_live(2);
    let v: Vec<u64> = tieralloc::with_placement(far, || (0..131_072).collect());
    let grew = live::node_live(2) - before;
    assert!(
        (1 << 20..(1 << 20) + 65536).contains(&grew),
        "1 MiB on node 2: {grew}"
    );
    assert_eq!(v.iter().sum::<u64>(), 131_071 * 131_072 / 2);
    // Handles with their own policy: whole mappings, on node 2, usable.
    for h in [far.preferred(), far.bound()] {
        assert_eq!(h.node_id(), Some(2));
        let mut b: AVec<u8, _> = AVec::with_capacity_in(1 << 20, h);
        b.resize(1 << 20, 3);
        assert!(b.iter().all(|&x| x == 3));
    }
    assert!(far.preferred().is_preferred() && !far.bound().is_preferred());
}

#[test]
fn the_far_policy_is_read_announced_and_places_far() {
    if child::is_child() {
        return;
    }
    for (value, announced) in [
        (None, "far policy bind"),
        (Some("bind"), "far policy bind"),
        (Some("preferred"), "far policy preferred"),
        (Some(" PREFERRED "), "far policy preferred"),
    ] {
        let err = run_child(value);
        assert!(err.contains(announced), "{value:?}: {err}");
        assert!(!err.contains("warning"), "{value:?}: {err}");
    }
}

#[test]
fn a_bad_far_policy_warns_and_keeps_bind() {
    if child::is_child() {
        return;
    }
    let err = run_child(Some("sometimes"));
    assert!(
        err.contains("TIERALLOC_FAR_POLICY=\"sometimes\" (expected bind or preferred)"),
        "{err}"
    );
    assert!(err.contains("far policy bind"), "{err}");
}
