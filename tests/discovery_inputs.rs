//! Topology discovery fed odd sysfs trees and odd override values: nodes with gaps, rows and
//! files too short, too long or not numbers, HMAT figures for some nodes only, memory
//! information missing, ids past the tables. Each case checks the model exactly (review
//! rev25); the well-formed machines are tests/topology.rs's.

use tieralloc::topology::{TierSource, TopologySource};
use tieralloc::Topology;

#[path = "common/sysfs_tree.rs"]
mod sysfs_tree;
use sysfs_tree::{tier_nodes, Tree};

/// Discovery of the tree's machine, and with the two overrides.
trait Discover {
    fn topology(&self) -> Topology;
    fn with_env(&self, nodes: Option<&str>, tiers: Option<&str>) -> Topology;
}

impl Discover for Tree {
    fn topology(&self) -> Topology {
        Topology::from_sysfs_root(self.path())
    }
    fn with_env(&self, nodes: Option<&str>, tiers: Option<&str>) -> Topology {
        Topology::from_sysfs_root_env(self.path(), nodes, tiers)
    }
}

const N: &str = "devices/system/node/";

fn f(path: impl Into<String>, content: impl Into<String>) -> (String, String) {
    (path.into(), content.into())
}

fn meminfo(node: u32, kib: u64) -> String {
    format!("Node {node} MemTotal:       {kib} kB\nNode {node} MemFree:        1 kB\n")
}

/// A node's files: cpulist, meminfo (KiB, none if `None`) and distance row.
fn node(n: u32, cpus: &str, kib: Option<u64>, distance: &str) -> Vec<(String, String)> {
    let mut v = vec![
        f(format!("{N}node{n}/cpulist"), format!("{cpus}\n")),
        f(format!("{N}node{n}/distance"), format!("{distance}\n")),
    ];
    if let Some(k) = kib {
        v.push(f(format!("{N}node{n}/meminfo"), meminfo(n, k)));
    }
    v
}

/// HMAT figures for node `n` from `initiators`.
fn hmat(n: u32, lat: &str, bw: &str, initiators: &[u32]) -> Vec<(String, String)> {
    let a = format!("{N}node{n}/access0/initiators/");
    let mut v = vec![
        f(format!("{a}read_latency"), format!("{lat}\n")),
        f(format!("{a}write_latency"), format!("{lat}\n")),
        f(format!("{a}read_bandwidth"), format!("{bw}\n")),
        f(format!("{a}write_bandwidth"), format!("{bw}\n")),
    ];
    for i in initiators {
        v.push(f(format!("{a}node{i}/"), ""));
    }
    v
}

fn ids(t: &Topology) -> Vec<u32> {
    t.nodes.iter().map(|n| n.id).collect()
}

/// Two CPU nodes with HMAT figures and two memory-only nodes the firmware gave none (a
/// hot-plugged expander): both figure-less nodes count as the slowest, so they share the last
/// tier. Review rev25: their score `u64::MAX / 2` times 10 wrapped (a panic with overflow
/// checks), and each opened a tier of its own.
#[test]
fn memory_only_nodes_without_hmat_figures_share_the_slowest_tier() {
    let mut files = vec![
        f(format!("{N}online"), "0-3"),
        f(format!("{N}has_memory"), "0-3"),
    ];
    files.extend(node(0, "0", Some(1 << 20), "10 21 30 30"));
    files.extend(node(1, "1", Some(1 << 20), "21 10 30 30"));
    files.extend(node(2, "", Some(1 << 20), "30 30 10 30"));
    files.extend(node(3, "", Some(1 << 20), "30 30 30 10"));
    files.extend(hmat(0, "80", "20480", &[0]));
    files.extend(hmat(1, "80", "20480", &[1]));
    let t = Tree::new(&files).topology();
    assert_eq!(t.tier_source, TierSource::Hmat);
    assert_eq!(tier_nodes(&t), [vec![0, 1], vec![2, 3]]);
}

/// `online` with a gap (0,2): each distance row is in `online` order, so its second figure is
/// node 2's; the missing node 1 exists nowhere in the model.
#[test]
fn online_nodes_with_a_gap_read_their_distances_in_online_order() {
    let mut files = vec![f(format!("{N}online"), "0,2\n")];
    files.extend(node(0, "0-1", Some(1 << 20), "10 31"));
    files.extend(node(2, "", Some(2 << 20), "31 10"));
    let t = Tree::new(&files).topology();
    assert_eq!(t.source, TopologySource::Sysfs);
    assert_eq!(ids(&t), [0, 2]);
    assert_eq!(t.distance(0, 2), Some(31));
    assert_eq!(t.distance(2, 0), Some(31));
    assert_eq!(t.distance(2, 2), Some(10));
    assert_eq!(t.memory_only, [2]);
    assert_eq!(t.allowed_nodes, [0, 2]);
    assert_eq!(tier_nodes(&t), [vec![0], vec![2]]);
    assert_eq!(t.tiers[1].capacity_bytes, 2 << 30);
}

/// Distance rows shorter than the node count (the rest unknown: 10 local, 20 remote), longer
/// (the extra figures ignored), with a word that is no number (its column unknown), a figure
/// over 255 (kept at 255).
#[test]
fn malformed_distance_rows_leave_unknown_figures() {
    let mut files = vec![f(format!("{N}online"), "0-2")];
    files.extend(node(0, "0", Some(1 << 20), "10"));
    files.extend(node(1, "1", Some(1 << 20), "21 10 30 40 50 60"));
    files.extend(node(2, "", Some(1 << 20), "x 99999 10"));
    let t = Tree::new(&files).topology();
    assert_eq!(
        t.distances,
        [[10, 20, 20], [21, 10, 30], [20, 255, 10]],
        "{:?}",
        t.distances
    );
}

/// meminfo without MemTotal and no has_memory file: that node has no memory (not a CPU-less
/// node with memory), and the override naming it is refused.
#[test]
fn a_node_whose_meminfo_lacks_memtotal_has_no_memory() {
    let mut files = vec![f(format!("{N}online"), "0-1")];
    files.extend(node(0, "0", Some(1 << 20), "10 20"));
    files.extend(node(1, "1", None, "20 10"));
    files.push(f(format!("{N}node1/meminfo"), "Node 1 MemFree: 5 kB\n"));
    let tree = Tree::new(&files);
    let t = tree.topology();
    assert_eq!(ids(&t), [0, 1]);
    assert!(!t.nodes[1].has_memory);
    assert_eq!(t.nodes[1].memory_bytes, 0);
    assert_eq!(t.allowed_nodes, [0]);
    assert_eq!(tier_nodes(&t), [vec![0]]);
}

/// Node ids past 63 in `online`: the list is refused whole, and the nodes are found by their
/// directories instead (those under 64).
#[test]
fn node_ids_past_63_fall_back_to_the_directories() {
    let mut files = vec![f(format!("{N}online"), "0,70\n")];
    files.extend(node(0, "0", Some(1 << 20), "10 20"));
    files.extend(node(70, "1", Some(1 << 20), "20 10"));
    let t = Tree::new(&files).topology();
    assert_eq!(ids(&t), [0]);
    assert_eq!(t.allowed_nodes, [0]);
}

/// A memory_tier nodelist naming a node that does not exist: that id is passed over, the
/// others keep their kernel tier.
#[test]
fn kernel_tiers_naming_unknown_nodes_keep_the_known_ones() {
    let mut files = vec![f(format!("{N}online"), "0-1")];
    files.extend(node(0, "0", Some(1 << 20), "10 20"));
    files.extend(node(1, "", Some(1 << 20), "20 10"));
    let mt = "devices/virtual/memory_tiering/";
    files.push(f(format!("{mt}memory_tier4/nodelist"), "0,5\n"));
    files.push(f(format!("{mt}memory_tier22/nodelist"), "1,9-12\n"));
    let t = Tree::new(&files).topology();
    assert_eq!(t.tier_source, TierSource::MemoryTiering);
    assert_eq!(tier_nodes(&t), [vec![0], vec![1]]);
}

/// HMAT figures of 0, and figures too long to be a u32: unknown, so the node counts as a
/// node without figures (the slowest for a memory-only node).
#[test]
fn hmat_figures_of_zero_or_out_of_range_are_unknown() {
    let mut files = vec![f(format!("{N}online"), "0-2")];
    files.extend(node(0, "0", Some(1 << 20), "10 20 30"));
    files.extend(node(1, "", Some(1 << 20), "20 10 30"));
    files.extend(node(2, "", Some(1 << 20), "30 30 10"));
    files.extend(hmat(0, "80", "20480", &[0]));
    files.extend(hmat(1, "0", "99999999999999", &[0]));
    files.extend(hmat(2, "100", "10000", &[0]));
    let t = Tree::new(&files).topology();
    assert_eq!(t.tier_source, TierSource::Hmat);
    assert!(t.nodes[1].access.is_empty(), "{:?}", t.nodes[1].access);
    // Node 2 scores (100/80 + 20480/10000) / 2 = 1.65: a tier of its own; node 1 the slowest.
    assert_eq!(tier_nodes(&t), [vec![0], vec![2], vec![1]]);
}

/// A multi-node machine whose files say nothing of memory (no has_memory, no meminfo): the
/// memory is somewhere, so every node counts as having it, as a one-node machine's does.
#[test]
fn nodes_without_any_memory_information_all_count_as_memory_nodes() {
    let mut files = vec![f(format!("{N}online"), "1-2")];
    files.extend(node(1, "0", None, "10 20"));
    files.extend(node(2, "1", None, "20 10"));
    let t = Tree::new(&files).topology();
    assert_eq!(ids(&t), [1, 2]);
    assert_eq!(t.allowed_nodes, [1, 2]);
    assert_eq!(tier_nodes(&t), [vec![1, 2]]);
}

/// TIERALLOC_NODES naming a node without memory (docs/tiers.md: malformed, a warning and the
/// default), as TIERALLOC_TIERS does.
#[test]
fn tieralloc_nodes_naming_a_node_without_memory_keeps_the_default() {
    let mut files = vec![
        f(format!("{N}online"), "0-2"),
        f(format!("{N}has_memory"), "0,2"),
    ];
    files.extend(node(0, "0", Some(1 << 20), "10 20 30"));
    files.extend(node(1, "1", None, "20 10 30"));
    files.extend(node(2, "", Some(1 << 20), "30 30 10"));
    let tree = Tree::new(&files);
    assert_eq!(tree.with_env(None, None).allowed_nodes, [0, 2]);
    assert_eq!(tree.with_env(Some("2"), None).allowed_nodes, [2]);
    assert_eq!(tree.with_env(Some("0,1"), None).allowed_nodes, [0, 2]);
    assert_eq!(tree.with_env(Some("1"), None).allowed_nodes, [0, 2]);
    let t = tree.with_env(None, Some("0;1"));
    assert_eq!(t.tier_source, TierSource::Distances);
}

/// CPUs past the 1024 tieralloc tables hold: a node's list naming some is not refused whole
/// (review rev25: node 1 lost CPUs 1000-1023 too, and nodes 1 and 2 became memory-only nodes,
/// a slower tier that `Placed::far()` and the far policies would have used); a node whose CPUs
/// are all past the tables is still a CPU node.
#[test]
fn cpus_past_1023_leave_their_nodes_cpu_nodes() {
    let mut files = vec![f(format!("{N}online"), "0-2")];
    files.extend(node(0, "0-1", Some(1 << 20), "10 20 20"));
    files.extend(node(1, "1000-1100", Some(1 << 20), "20 10 20"));
    files.extend(node(2, "1101-1200,2048", Some(1 << 20), "20 20 10"));
    let t = Tree::new(&files).topology();
    assert_eq!(t.nodes[1].cpus, (1000..1024).collect::<Vec<u32>>());
    assert!(t.nodes[2].cpus.is_empty());
    assert!(t.memory_only.is_empty(), "{:?}", t.memory_only);
    assert!(!t.nodes[2].memory_only);
    assert_eq!(t.tier_source, TierSource::Distances);
    assert_eq!(tier_nodes(&t), [vec![0, 1, 2]]);
}

/// A node repeated within one list is that node once (docs/tiers.md), in TIERALLOC_NODES and
/// in a tier of TIERALLOC_TIERS; a node in two tiers is malformed.
#[test]
fn a_node_repeated_within_a_list_counts_once() {
    let mut files = vec![f(format!("{N}online"), "0-2")];
    files.extend(node(0, "0", Some(1 << 20), "10 20 30"));
    files.extend(node(1, "1", Some(1 << 20), "20 10 30"));
    files.extend(node(2, "", Some(1 << 20), "30 30 10"));
    let tree = Tree::new(&files);
    assert_eq!(tree.with_env(Some("1,1"), None).allowed_nodes, [1]);
    assert_eq!(tree.with_env(Some("0-1,1"), None).allowed_nodes, [0, 1]);
    let t = tree.with_env(None, Some("0,0-1,1;2"));
    assert_eq!(t.tier_source, TierSource::Env);
    assert_eq!(tier_nodes(&t), [vec![0, 1], vec![2]]);
    let t = tree.with_env(None, Some("0,1;1,2"));
    assert_eq!(t.tier_source, TierSource::Distances);
}

/// A cpulist longer than discovery's 4 KiB buffer (CPUs listed one by one past 1023): the
/// read stops inside a number, and that number's first digits are no CPU of the node.
/// Review rev25: "2818" cut to "28" put CPU 28, node 1's, in node 0 as well.
#[test]
fn a_cpulist_cut_by_the_buffer_does_not_add_a_cpu() {
    let mut long = String::from("0,1");
    for c in 2000..3000 {
        long.push_str(&format!(",{c}"));
    }
    assert!(
        long.len() > 4096 && &long[4093..4096] == ",28",
        "{}",
        &long[4090..4100]
    );
    let mut files = vec![f(format!("{N}online"), "0-1")];
    files.extend(node(0, &long, Some(1 << 20), "10 20"));
    files.extend(node(1, "2-1023", Some(1 << 20), "20 10"));
    let t = Tree::new(&files).topology();
    assert_eq!(t.nodes[0].cpus, [0, 1]);
    assert_eq!(t.nodes[1].cpus, (2..1024).collect::<Vec<u32>>());
}

/// HMAT figures for the memory-only node only (the CPU nodes' DRAM has none): nothing to
/// rank the expander against, so the rule passes to the next (here the distances), which
/// makes it the slower tier. Review rev25: the CPU nodes counted as "the fastest", which
/// the expander, the only node with figures, was by definition: one tier of all three.
#[test]
fn hmat_figures_for_memory_only_nodes_alone_do_not_rank_them_with_dram() {
    let mut files = vec![f(format!("{N}online"), "0-2")];
    files.extend(node(0, "0", Some(1 << 20), "10 21 30"));
    files.extend(node(1, "1", Some(1 << 20), "21 10 30"));
    files.extend(node(2, "", Some(1 << 20), "30 30 10"));
    files.extend(hmat(2, "300", "5120", &[0, 1]));
    let t = Tree::new(&files).topology();
    assert_eq!(t.nodes[2].access.len(), 2, "the figures stay in the model");
    assert_eq!(t.tier_source, TierSource::Distances);
    assert_eq!(tier_nodes(&t), [vec![0, 1], vec![2]]);
}

/// MemTotal figures past what a u64 of bytes holds: each node's memory saturates, and so does
/// its tier's capacity. Review rev25: the capacity summed them unchecked (a panic with
/// overflow checks, `u64::MAX - 1` without).
#[test]
fn huge_memtotal_figures_saturate() {
    let mut files = vec![f(format!("{N}online"), "0-1")];
    files.extend(node(0, "0", Some(u64::MAX), "10 20"));
    files.extend(node(1, "1", Some(1 << 60), "20 10"));
    let t = Tree::new(&files).topology();
    assert_eq!(t.nodes[0].memory_bytes, u64::MAX);
    assert_eq!(t.nodes[1].memory_bytes, u64::MAX);
    assert_eq!(tier_nodes(&t), [vec![0, 1]]);
    assert_eq!(t.tiers[0].capacity_bytes, u64::MAX);
}
