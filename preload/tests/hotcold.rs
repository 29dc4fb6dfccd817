//! The drop-in's hot/cold hints (preload/include/tieralloc.h): a C++ program (tests/c/
//! hotcold.cpp) allocates with every hinted `operator new` form, `__size_returning_new_hot_cold`
//! and `tieralloc_malloc_hinted`, with hint 0 (cold) and 255 (hot), and prints the allocator's
//! per-node table (`malloc_stats`) while each phase's blocks are live. Under
//! `TIERALLOC_SIMULATE_NODES=2,far=1` (CPU nodes 0 and 1, far node 2) the cold blocks must be
//! on node 2 and the hot ones on the CPU nodes; on the real one-node machine every hint works
//! and lands on node 0.
//!
//! The library is found next to this test executable, where
//! `cargo build -p tieralloc-preload --release` puts it (build it first). Needs `g++`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[path = "../../tests/common/child.rs"]
mod child;

/// Bytes the program keeps live in each hinted phase: 8 blocks of 16 KiB.
const PHASE_BYTES: i64 = 8 * 16384;

/// Compiles tests/c/hotcold.cpp into a directory of its own (`tag`: one per test), linked
/// against the library (which declares the hinted entry points).
fn compile(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tieralloc-hotcold-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("hotcold");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = child::preload_library();
    let st = Command::new("g++")
        .args(["-std=c++17", "-O1", "-w", "-fno-builtin", "-I"])
        .arg(manifest.join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(manifest.join("tests/c/hotcold.cpp"))
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.parent().unwrap().display()))
        .status()
        .expect("run g++ (apt-get install -y g++)");
    assert!(st.success(), "compiling hotcold.cpp failed");
    exe
}

/// Runs the program under the library with `env`; returns each phase's live bytes per node.
fn run(tag: &str, env: &[(&str, &str)]) -> BTreeMap<String, BTreeMap<u32, i64>> {
    let exe = compile(tag);
    let mut cmd = Command::new(&exe);
    cmd.env("LD_PRELOAD", child::preload_library());
    for v in [
        "TIERALLOC_SHOW_STATS",
        "TIERALLOC_SIMULATE_NODES",
        "TIERALLOC_FAR_POLICY",
        "TIERALLOC_FAR_THRESHOLD",
        "TIERALLOC_TIER_RATIO",
        "TIERALLOC_TIER_BUDGET",
        "TIERALLOC_NODES",
        "TIERALLOC_TIERS",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let r = child::run(&mut cmd, Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
    r.expect_success("hotcold ok");
    let mut phases = BTreeMap::new();
    let mut current: Option<(String, BTreeMap<u32, i64>)> = None;
    for line in r.stderr.lines() {
        if let Some(name) = line.strip_prefix("phase ") {
            current = Some((name.to_string(), BTreeMap::new()));
        } else if line.starts_with("end phase ") {
            let (name, nodes) = current.take().expect("a phase was open");
            phases.insert(name, nodes);
        } else if let Some((_, nodes)) = current.as_mut() {
            // "  node   2    live        131072 B  committed ..."
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() > 3 && w[0] == "node" && w[2] == "live" {
                nodes.insert(w[1].parse().unwrap(), w[3].parse().unwrap());
            }
        }
    }
    assert_eq!(phases.len(), 3, "three phases in stderr:\n{}", r.stderr);
    phases
}

/// `phase`'s live bytes on `node` minus the base phase's.
fn delta(p: &BTreeMap<String, BTreeMap<u32, i64>>, phase: &str, nodes: &[u32]) -> i64 {
    let sum = |ph: &str| -> i64 {
        nodes
            .iter()
            .map(|n| p[ph].get(n).copied().unwrap_or(0))
            .sum()
    };
    sum(phase) - sum("base")
}

fn check_simulated(tag: &str, env: &[(&str, &str)]) {
    let p = run(tag, env);
    // Cold: every hinted block is on the far node 2 (16-KiB blocks are a size class of their
    // own, so their bytes are exact; the 16-byte block of the zero-byte request adds 16).
    let cold_far = delta(&p, "cold", &[2]);
    assert_eq!(cold_far, PHASE_BYTES + 16, "cold bytes on node 2: {p:?}");
    assert!(
        delta(&p, "cold", &[0, 1]) < PHASE_BYTES,
        "the cold blocks are not on the CPU nodes: {p:?}"
    );
    // Hot: none on the far node, all on the CPU nodes (the thread's own node).
    assert_eq!(delta(&p, "hot", &[2]), 0, "hot bytes on node 2: {p:?}");
    assert!(
        delta(&p, "hot", &[0, 1]) >= PHASE_BYTES,
        "hot bytes on the CPU nodes: {p:?}"
    );
}

#[test]
fn cold_hints_land_on_the_far_node_and_hot_ones_near() {
    check_simulated("sim", &[("TIERALLOC_SIMULATE_NODES", "2,far=1")]);
}

#[test]
fn hints_place_the_same_under_the_preferred_far_policy() {
    check_simulated(
        "preferred",
        &[
            ("TIERALLOC_SIMULATE_NODES", "2,far=1"),
            ("TIERALLOC_FAR_POLICY", "preferred"),
        ],
    );
}

#[test]
fn hints_on_a_one_tier_machine_are_ordinary_blocks_on_the_local_node() {
    let p = run("real", &[]);
    if tieralloc::topology().nodes.len() != 1 {
        return; // the program ran and checked itself; the placement below is for one node
    }
    for phase in ["cold", "hot"] {
        assert!(
            p[phase].keys().all(|&n| n == 0),
            "one node on this machine: {p:?}"
        );
        assert!(delta(&p, phase, &[0]) >= PHASE_BYTES, "{phase}: {p:?}");
    }
}
