//! Topology discovery from fake sysfs trees, the list parsers, TIERALLOC_NODES and
//! TIERALLOC_TIERS, `Placed` on this (one-node) machine, and with `--features hwloc` the hwloc
//! model: an 8-node CXL machine from XML, synthetic descriptions, and sysfs/hwloc agreement.

use allocator_api2::boxed::Box as PBox;
use allocator_api2::vec::Vec as PVec;
use tieralloc::topology::{parse_list, TierSource, TopologySource};
use tieralloc::{Placed, Topology};

#[path = "common/sysfs_tree.rs"]
mod sysfs_tree;
use sysfs_tree::{tier_nodes, Tree};

const N: &str = "devices/system/node/";

fn meminfo(node: u32, kib: u64) -> String {
    format!("Node {node} MemTotal:       {kib} kB\nNode {node} MemFree:        1 kB\n")
}

/// The project VM's machine: two CPU nodes and a memory-only node 2, optionally with HMAT
/// and the kernel's memory tiers.
fn cxl_tree(hmat: bool, tiering: bool) -> Tree {
    let mut f: Vec<(String, String)> = vec![
        (format!("{N}online"), "0-2\n".into()),
        (format!("{N}possible"), "0-2\n".into()),
        (format!("{N}has_memory"), "0-2\n".into()),
        (format!("{N}node0/cpulist"), "0\n".into()),
        (format!("{N}node1/cpulist"), "1\n".into()),
        (format!("{N}node2/cpulist"), "\n".into()),
        (format!("{N}node0/distance"), "10 21 30\n".into()),
        (format!("{N}node1/distance"), "21 10 30\n".into()),
        (format!("{N}node2/distance"), "30 30 10\n".into()),
    ];
    for n in 0..3 {
        f.push((format!("{N}node{n}/meminfo"), meminfo(n, 1 << 20)));
    }
    if hmat {
        for (n, lat, bw, inits) in [
            (0, 80, 20480, &[0][..]),
            (1, 80, 20480, &[1][..]),
            (2, 300, 5120, &[0, 1][..]),
        ] {
            let a = format!("{N}node{n}/access0/initiators/");
            f.push((format!("{a}read_latency"), format!("{lat}\n")));
            f.push((format!("{a}write_latency"), format!("{lat}\n")));
            f.push((format!("{a}read_bandwidth"), format!("{bw}\n")));
            f.push((format!("{a}write_bandwidth"), format!("{bw}\n")));
            for i in inits {
                f.push((format!("{a}node{i}/"), String::new()));
            }
        }
    }
    if tiering {
        let t = "devices/virtual/memory_tiering/";
        f.push((format!("{t}memory_tier4/nodelist"), "0-1\n".into()));
        f.push((format!("{t}memory_tier67/nodelist"), "2\n".into()));
    }
    Tree::new(&f)
}

#[test]
fn one_node_machine() {
    let tree = Tree::new(&[
        (&format!("{N}online"), "0\n"),
        (&format!("{N}node0/cpulist"), "0-3\n"),
        (&format!("{N}node0/meminfo"), &meminfo(0, 8 << 20)),
        (&format!("{N}node0/distance"), "10\n"),
    ]);
    let t = Topology::from_sysfs_root(tree.path());
    assert_eq!(t.source, TopologySource::Sysfs);
    assert_eq!(t.nodes.len(), 1);
    assert_eq!(t.nodes[0].cpus, [0, 1, 2, 3]);
    assert_eq!(t.nodes[0].memory_bytes, 8 << 30);
    assert_eq!(t.distances, [[10]]);
    assert!(t.memory_only.is_empty());
    assert_eq!(t.allowed_nodes, [0]);
    assert_eq!(tier_nodes(&t), [[0]]);
}

#[test]
fn cxl_machine_with_hmat() {
    let tree = cxl_tree(true, true);
    let t = Topology::from_sysfs_root(tree.path());
    let ids: Vec<u32> = t.nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids, [0, 1, 2]);
    assert_eq!(t.nodes[2].cpus, Vec::<u32>::new());
    assert_eq!(t.memory_only, [2]);
    assert_eq!(t.distance(0, 2), Some(30));
    assert_eq!(t.distance(1, 0), Some(21));
    let a2: Vec<(u32, Option<u32>, Option<u32>)> = t.nodes[2]
        .access
        .iter()
        .map(|a| (a.initiator, a.read_latency_ns, a.read_bandwidth_mibps))
        .collect();
    assert_eq!(a2, [(0, Some(300), Some(5120)), (1, Some(300), Some(5120))]);
    assert_eq!(t.kernel_tiers.len(), 2);
    assert_eq!(t.kernel_tiers[1].nodes, [2]);
    assert_eq!(t.tier_source, TierSource::Hmat);
    assert_eq!(tier_nodes(&t), [vec![0, 1], vec![2]]);
    assert_eq!(t.tiers[1].latency_ns, Some(300));
    assert_eq!(t.tiers[1].capacity_bytes, 1 << 30);
    assert_eq!(t.tier_of(2), Some(1));
    // Seen from node 1, its own node comes first in the near tier.
    assert_eq!(t.tiers_from(1)[0].nodes, [1, 0]);
    // Serialises.
    let json = serde_json::to_string(&t).unwrap();
    assert!(json.contains("\"memory_only\":[2]"), "{json}");
}

#[test]
fn cxl_machine_with_memory_tiering_only() {
    let tree = cxl_tree(false, true);
    let t = Topology::from_sysfs_root(tree.path());
    assert_eq!(t.tier_source, TierSource::MemoryTiering);
    assert_eq!(tier_nodes(&t), [vec![0, 1], vec![2]]);
    assert!(t.nodes.iter().all(|n| n.access.is_empty()));
}

#[test]
fn cxl_machine_with_neither() {
    let tree = cxl_tree(false, false);
    let t = Topology::from_sysfs_root(tree.path());
    assert_eq!(t.tier_source, TierSource::Distances);
    assert_eq!(tier_nodes(&t), [vec![0, 1], vec![2]]);
    assert!(t.kernel_tiers.is_empty());
}

#[test]
fn machine_without_numa_is_one_node_with_every_cpu() {
    let tree = Tree::new(&[("devices/system/cpu/possible", "0-7\n")]);
    let t = Topology::from_sysfs_root(tree.path());
    assert_eq!(t.source, TopologySource::SingleNode);
    assert_eq!(t.nodes.len(), 1);
    assert_eq!(t.nodes[0].cpus, (0..8).collect::<Vec<u32>>());
    assert_eq!(t.allowed_nodes, [0]);
    let empty = Tree::new(&[("nothing", "")]);
    let t = Topology::from_sysfs_root(empty.path());
    assert_eq!(t.nodes[0].cpus, [0]);
}

#[test]
fn list_parser_edge_cases() {
    assert_eq!(parse_list("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
    assert_eq!(parse_list(" 5 \n"), Some(vec![5]));
    assert_eq!(parse_list(""), Some(vec![]));
    assert_eq!(parse_list("\n"), Some(vec![]));
    assert_eq!(parse_list("0-0"), Some(vec![0]));
    assert_eq!(parse_list("1023"), Some(vec![1023]));
    for bad in [
        "1024", "3-1", "1,,2", ",", "a", "1-", "-1", "0x1", "1;2", "1 2",
    ] {
        assert_eq!(parse_list(bad), None, "{bad:?} must be refused");
    }
}

#[test]
fn tieralloc_nodes_restricts_and_bad_values_keep_the_default() {
    let tree = cxl_tree(true, true);
    let with = |v: &str| Topology::from_sysfs_root_env(tree.path(), Some(v), None).allowed_nodes;
    assert_eq!(with("1"), [1]);
    assert_eq!(with("0-1"), [0, 1]);
    assert_eq!(with("0,2"), [0, 2]);
    // Malformed or naming no node of this machine: a warning, and every node.
    for bad in ["bogus", "5", "0-9", "", "1-0"] {
        assert_eq!(with(bad), [0, 1, 2], "TIERALLOC_NODES={bad:?}");
    }
}

#[test]
fn tieralloc_tiers_overrides_the_grouping() {
    let tree = cxl_tree(true, true);
    let t = Topology::from_sysfs_root_env(tree.path(), None, Some("0;1,2"));
    assert_eq!(t.tier_source, TierSource::Env);
    assert_eq!(tier_nodes(&t), [vec![0], vec![1, 2]]);
    let t = Topology::from_sysfs_root_env(tree.path(), None, Some("0;0"));
    assert_eq!(t.tier_source, TierSource::Hmat, "a bad override is ignored");
}

#[test]
fn this_machine() {
    let t = tieralloc::topology();
    assert!(!t.nodes.is_empty());
    assert!(t.nodes.iter().any(|n| !n.cpus.is_empty()));
    assert!(!t.allowed_nodes.is_empty());
    assert!(!t.tiers.is_empty());
}

#[test]
fn placed_refuses_missing_nodes_by_number() {
    let e = Placed::node(99).unwrap_err();
    assert!(e.to_string().contains("node 99"), "{e}");
    let e = Placed::interleave(&[0, 99]).unwrap_err();
    assert!(e.to_string().contains("node 99"), "{e}");
    assert!(Placed::interleave(&[]).is_err());
    let e = Placed::tier(9).unwrap_err();
    assert!(e.to_string().contains("tier 9"), "{e}");
}

#[test]
fn placed_works_with_vec_box_and_hashmap() {
    let n0 = Placed::node(0).unwrap();
    let mut v: PVec<u64, Placed> = PVec::new_in(n0);
    for i in 0..100_000 {
        v.push(i);
    }
    assert_eq!(v.iter().sum::<u64>(), 99_999 * 100_000 / 2);
    let nodes = tieralloc::numa::pages_on_nodes(v.as_ptr() as *const u8, v.len() * 8).unwrap();
    assert!(nodes.iter().all(|n| *n == 0), "{nodes:?}");

    let b = PBox::new_in([7u8; 1000], Placed::local().unwrap());
    assert_eq!(b[999], 7);

    let mut m = hashbrown::HashMap::new_in(Placed::far().unwrap());
    for i in 0..10_000u32 {
        m.insert(i, i * 2);
    }
    assert_eq!(m[&4321], 8642);

    let il = Placed::interleave(&[0]).unwrap();
    let mut big: PVec<u8, Placed> = PVec::with_capacity_in(1 << 20, il);
    big.resize(1 << 20, 1);
    assert_eq!(big.iter().map(|b| *b as usize).sum::<usize>(), 1 << 20);
    // Blocks move between threads and are freed there.
    let moved = std::thread::spawn(move || {
        drop(b);
        v.len()
    })
    .join()
    .unwrap();
    assert_eq!(moved, 100_000);
}

#[cfg(feature = "hwloc")]
mod hwloc {
    use super::*;

    #[test]
    fn eight_node_cxl_machine_from_xml_has_two_tiers() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cxl-8node.xml");
        let t = Topology::from_hwloc_xml(&path).unwrap();
        assert_eq!(t.source, TopologySource::Hwloc);
        assert_eq!(t.nodes.len(), 8);
        assert_eq!(t.memory_only, [1, 3, 5, 7]);
        assert_eq!(t.nodes[2].cpus, [2, 3]);
        assert_eq!(t.distance(0, 1), Some(20));
        assert_eq!(t.distance(0, 2), Some(21));
        assert_eq!(t.tier_source, TierSource::Hmat);
        assert_eq!(tier_nodes(&t), [vec![0, 2, 4, 6], vec![1, 3, 5, 7]]);
        assert_eq!(t.tiers[0].capacity_bytes, 4 * 16_000_000_000);
        assert_eq!(t.tiers[1].capacity_bytes, 4 * 64_000_000_000);
        // From package 1 (node 2): its own DRAM and its own CXL node come first.
        let from2 = t.tiers_from(2);
        assert_eq!(from2[0].nodes[0], 2);
        assert_eq!(from2[1].nodes[0], 3);
        assert_eq!(
            (from2[0].latency_ns, from2[1].latency_ns),
            (Some(80), Some(250))
        );
        assert_eq!(from2[1].bandwidth_mibps, Some(8192));
    }

    #[test]
    fn synthetic_descriptions() {
        let t = Topology::from_hwloc_synthetic("pack:2 [numa] [numa] core:2 pu:1").unwrap();
        assert_eq!(t.nodes.len(), 4);
        assert_eq!(t.memory_only, [1, 3]);
        assert_eq!(t.nodes[0].cpus, [0, 1]);
        // No memory attributes and no distances: CPU-less nodes form the slower tier.
        assert_eq!(tier_nodes(&t), [vec![0, 2], vec![1, 3]]);
        let e = Topology::from_hwloc_synthetic("not a topology").unwrap_err();
        assert!(e.to_string().contains("synthetic"), "{e}");
    }

    #[test]
    fn sysfs_and_hwloc_agree_on_this_machine() {
        let s = tieralloc::topology();
        let h = Topology::from_hwloc().unwrap();
        let ids = |t: &Topology| t.nodes.iter().map(|n| n.id).collect::<Vec<_>>();
        assert_eq!(ids(&s), ids(&h));
        for (a, b) in s.nodes.iter().zip(&h.nodes) {
            assert_eq!(a.cpus, b.cpus, "CPUs of node {}", a.id);
            let (x, y) = (a.memory_bytes as f64, b.memory_bytes as f64);
            assert!(
                (x - y).abs() <= 0.02 * x.max(y),
                "memory of node {}: sysfs {x} hwloc {y}",
                a.id
            );
        }
        if s.nodes.len() > 1 {
            assert_eq!(s.distances, h.distances);
        }
    }
}
