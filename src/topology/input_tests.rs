//! Random input into every parser that runs inside the allocator's first call (the sysfs list
//! and number readers, the environment's values) and into whole discovery from fixture trees
//! of random file contents: nothing panics (these tests run with overflow checks), and the
//! list parser agrees exactly with a plain model on well-formed lists (review rev25). The tier
//! budgets' parser, in `init` (a layer above), has its own such test there.

use super::raw::{Raw, MAX_CPUS, MAX_NODES};
use super::{sim, sysfs, tiers};
use crate::sys::env;
use proptest::prelude::*;

/// Bytes drawn mostly from the lists' and values' own alphabet, so that near-valid input is
/// common, with any byte now and then.
fn text() -> impl Strategy<Value = Vec<u8>> {
    let alphabet = prop_oneof![
        8 => prop::sample::select(b"0123456789-,; \n\t:=farnGMKkiB".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(alphabet, 0..40)
}

/// A well-formed list's items: single ids and ranges, in any order, overlapping or not.
fn items(max: usize) -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec(
        (0..max, 0usize..70).prop_map(move |(a, len)| (a, (a + len).min(max - 1))),
        0..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_parser_panics_on_any_input(v in text()) {
        let mut cpus = [0u64; MAX_CPUS / 64];
        if sysfs::parse_list(&v, &mut cpus) {
            // Nothing past the mask (it cannot hold more), and an empty list only for blank input.
            prop_assert!(cpus.iter().any(|w| *w != 0) || env::trim(&v).is_empty());
        }
        let mut nodes = [0u64; 1];
        let _ = sysfs::parse_list(&v, &mut nodes);
        let _ = tiers::parse_tiers(&v, u64::MAX);
        let _ = tiers::parse_tiers(&v, 0b101);
        if let Some(s) = sim::parse(&v) {
            prop_assert!((2..=8).contains(&s.nodes) && s.far as usize + s.nodes as usize <= MAX_NODES);
        }
        let _ = env::parse_u64(&v);
        let _ = env::parse_bool(&v);
        let _ = env::parse_size(&v);
        let _ = env::parse_ratio(&v);
        let _ = env::parse_far_policy(&v);
    }

    #[test]
    fn well_formed_lists_parse_exactly(items in items(MAX_CPUS), sep in 0usize..3) {
        let mut text = String::new();
        let mut want = [0u64; MAX_CPUS / 64];
        for (i, &(a, b)) in items.iter().enumerate() {
            if i > 0 {
                text.push_str([",", ", ", " ,"][sep]);
            }
            if a == b {
                text.push_str(&a.to_string());
            } else {
                text.push_str(&format!("{a}-{b}"));
            }
            for c in a..=b {
                want[c / 64] |= 1 << (c % 64);
            }
        }
        text.push('\n');
        let mut got = [u64::MAX; MAX_CPUS / 64];
        prop_assert!(sysfs::parse_list(text.as_bytes(), &mut got), "{text:?}");
        prop_assert_eq!(got, want, "{:?}", text);
        // The same list as a node list: refused exactly when it names an id past 63.
        let mut nodes = [0u64; 1];
        let fits = items.iter().all(|&(_, b)| b < 64);
        prop_assert_eq!(sysfs::parse_list(text.as_bytes(), &mut nodes), fits, "{:?}", text);
        if fits {
            prop_assert_eq!(nodes[0], want[0]);
        }
    }
}

/// The files discovery reads for each node, and the machine-wide ones.
const NODE_FILES: [&str; 7] = [
    "cpulist",
    "meminfo",
    "distance",
    "access0/initiators/read_latency",
    "access0/initiators/read_bandwidth",
    "access0/initiators/write_latency",
    "access0/initiators/write_bandwidth",
];

/// Content for a sysfs file: random text, or a plausible figure or list.
fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => text(),
        1 => (0u64..u64::MAX).prop_map(|n| format!("{n}\n").into_bytes()),
        2 => (0u64..100_000).prop_map(|n| format!("{n}\n").into_bytes()),
        1 => (0u32..5000).prop_map(|n| format!("Node 0 MemTotal: {n} kB\n").into_bytes()),
        1 => prop::collection::vec(0u32..300, 0..6).prop_map(|v| {
            let s: Vec<String> = v.iter().map(|d| d.to_string()).collect();
            format!("{}\n", s.join(" ")).into_bytes()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whole discovery over a fixture tree of up to three nodes with random files: no panic,
    /// and the derived model keeps its own invariants (allowed nodes exist, tiers are disjoint
    /// sets of existing nodes, every CPU's home is an allowed node).
    #[test]
    fn discovery_of_random_trees_keeps_the_model_whole(
        online in text(),
        has_memory in prop::option::of(text()),
        files in prop::collection::vec((0usize..3, 0usize..NODE_FILES.len(), content()), 0..16),
        tiering in prop::option::of((0u16..100, text())),
        initiators in prop::collection::vec((0usize..3, 0usize..70), 0..4),
        env_nodes in prop::option::of(text()),
        env_tiers in prop::option::of(text()),
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "tieralloc-random-sysfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let nd = root.join("devices/system/node");
        for n in 0..3 {
            std::fs::create_dir_all(nd.join(format!("node{n}/access0/initiators"))).unwrap();
        }
        std::fs::write(nd.join("online"), &online).unwrap();
        if let Some(h) = &has_memory {
            std::fs::write(nd.join("has_memory"), h).unwrap();
        }
        for (n, which, c) in &files {
            std::fs::write(nd.join(format!("node{n}/{}", NODE_FILES[*which])), c).unwrap();
        }
        for (n, i) in &initiators {
            std::fs::create_dir_all(nd.join(format!("node{n}/access0/initiators/node{i}"))).unwrap();
        }
        if let Some((k, list)) = &tiering {
            let d = root.join(format!("devices/virtual/memory_tiering/memory_tier{k}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("nodelist"), list).unwrap();
        }
        let mut raw = Box::new(Raw::EMPTY);
        use std::os::unix::ffi::OsStrExt;
        sysfs::discover(root.as_os_str().as_bytes(), false, &mut raw);
        raw.finish(env_nodes.as_deref(), env_tiers.as_deref());
        let _ = std::fs::remove_dir_all(&root);

        prop_assert!(raw.nodes != 0);
        prop_assert!(raw.allowed != 0 && raw.allowed & !raw.nodes == 0, "allowed {:#x} nodes {:#x}", raw.allowed, raw.nodes);
        prop_assert!(raw.mem_nodes != 0 && raw.mem_nodes & !raw.nodes == 0);
        prop_assert!(raw.n_tiers >= 1 && raw.n_tiers <= super::raw::MAX_TIERS);
        let mut seen = 0u64;
        for t in &raw.tiers[..raw.n_tiers] {
            prop_assert!(*t != 0 && t & seen == 0 && t & !raw.mem_nodes == 0);
            seen |= t;
        }
        prop_assert_eq!(seen, raw.mem_nodes);
        for h in raw.cpu_home.iter().filter(|h| **h != super::raw::NO_NODE) {
            prop_assert!(raw.allowed & (1 << h) != 0);
        }
    }
}
