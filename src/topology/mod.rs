//! The machine's NUMA topology and memory tiers, as an owned, serialisable model.
//!
//! Owns: the public model ([`Topology`] and its parts), built on request from the
//! allocation-free model in `raw` (which the global allocator uses): the running machine's
//! (`discover`), a sysfs tree's (`sysfs`) or hwloc's (`hwloc`, feature `hwloc`). Layers
//! inside, from the bottom: `raw` (the fixed-size model), `sysfs` and `sim` (fill it),
//! `tiers` (groups nodes into tiers), `discover` (the process-wide instance), `home` (the
//! calling thread's node, pinning), then this file and `hwloc`. May touch: `sys` (numa,
//! env) and `sync`, nothing above. Discovery of the running machine runs once per process;
//! the public functions here allocate freely (they are never called by the allocator).
//!
//! docs/tiers.md describes what is read and how tiers are derived.

pub(crate) mod discover;
pub(crate) mod home;
#[cfg(feature = "hwloc")]
mod hwloc;
#[cfg(test)]
mod input_tests;
pub(crate) mod raw;
pub(crate) mod sim;
pub(crate) mod sysfs;
pub(crate) mod tiers;

#[cfg(feature = "hwloc")]
pub use hwloc::HwlocError;

use raw::{iter, Raw, RawSource, RawTierSource, MAX_CPUS, MAX_NODES};
use serde::Serialize;

/// Where a [`Topology`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopologySource {
    /// Linux's /sys/devices/system/node (and memory_tiering).
    Sysfs,
    /// No NUMA information (no /sys/devices/system/node, or not Linux): one node 0 with every
    /// CPU.
    SingleNode,
    /// hwloc (the `hwloc` feature): the running machine, a synthetic description or XML.
    Hwloc,
    /// Simulated nodes (`TIERALLOC_SIMULATE_NODES`): CPU `c` is on node `c % N`, far nodes
    /// have memory and no CPUs, and the kernel's binding calls are skipped.
    Simulated,
}

/// How [`Topology::tiers`] were derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TierSource {
    /// The `TIERALLOC_TIERS` override.
    Env,
    /// HMAT latency and bandwidth (hwloc memory attributes).
    Hmat,
    /// The kernel's memory tiers (/sys/devices/virtual/memory_tiering).
    MemoryTiering,
    /// CPU-less nodes and the distance matrix.
    Distances,
}

/// A NUMA node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The node id (as the kernel numbers it).
    pub id: u32,
    /// The CPUs of the node below 1024, ascending (empty for a memory-only node, and for a
    /// node whose CPUs are all past 1023: `memory_only` tells them apart).
    pub cpus: Vec<u32>,
    /// Memory of the node in bytes (MemTotal; 0 if unknown or none).
    pub memory_bytes: u64,
    /// Whether the node has memory.
    pub has_memory: bool,
    /// Whether the node has memory but no CPU (a CXL expander, for example).
    pub memory_only: bool,
    /// How fast the node's memory is from initiator nodes, where the firmware (HMAT) or hwloc
    /// says. Linux's sysfs gives the figures from the node's best initiators only.
    pub access: Vec<Access>,
}

/// Performance of a node's memory as seen from one initiator node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Access {
    /// The initiator (CPU) node.
    pub initiator: u32,
    /// Read latency in nanoseconds.
    pub read_latency_ns: Option<u32>,
    /// Write latency in nanoseconds.
    pub write_latency_ns: Option<u32>,
    /// Read bandwidth in MiB/s.
    pub read_bandwidth_mibps: Option<u32>,
    /// Write bandwidth in MiB/s.
    pub write_bandwidth_mibps: Option<u32>,
}

/// One of the kernel's memory tiers (memory_tierN: a lower N is faster).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelTier {
    /// N in memory_tierN.
    pub id: u32,
    /// The nodes in it.
    pub nodes: Vec<u32>,
}

/// A memory tier: nodes of similar speed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tier {
    /// 0 is the fastest.
    pub index: usize,
    /// The nodes of the tier, nearest to the viewing node first.
    pub nodes: Vec<u32>,
    /// Their memory in bytes.
    pub capacity_bytes: u64,
    /// Latency (ns) from the viewing node to the tier's nearest node, where known.
    pub latency_ns: Option<u32>,
    /// Bandwidth (MiB/s) from the viewing node to the tier's nearest node, where known.
    pub bandwidth_mibps: Option<u32>,
}

/// The machine: NUMA nodes, distances, memory-only nodes, HMAT figures and memory tiers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// Where the model came from.
    pub source: TopologySource,
    /// The nodes, by ascending id.
    pub nodes: Vec<Node>,
    /// The distance matrix: `distances[i][j]` is the distance from `nodes[i]` to `nodes[j]`
    /// (10 is local).
    pub distances: Vec<Vec<u32>>,
    /// Nodes with memory and no CPU.
    pub memory_only: Vec<u32>,
    /// The nodes the global allocator uses (nodes with memory, within the process's
    /// Mems_allowed and TIERALLOC_NODES).
    pub allowed_nodes: Vec<u32>,
    /// The kernel's memory tiers, by ascending id (empty where the kernel has none).
    pub kernel_tiers: Vec<KernelTier>,
    /// Tiers, fastest first, as seen from `tiers_seen_from`.
    pub tiers: Vec<Tier>,
    /// How the tiers were derived.
    pub tier_source: TierSource,
    /// The CPU node the tiers' order, latency and bandwidth are seen from.
    pub tiers_seen_from: Option<u32>,
}

/// The running machine, discovered once per process (sysfs on Linux; one node elsewhere).
/// Tiers are seen from the node the calling thread runs on.
pub fn topology() -> Topology {
    let r = discover::get();
    let viewer = home::current_cpu_and_node().map(|(_, n)| n);
    Topology::from_raw(r, viewer)
}

fn opt(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

impl Topology {
    /// Builds the owned model from the fixed-size one, with tiers seen from `viewer` (a CPU
    /// node; the lowest CPU node if None or not a CPU node).
    pub(crate) fn from_raw(r: &Raw, viewer: Option<u32>) -> Topology {
        let ids: Vec<usize> = iter(r.nodes).collect();
        let nodes: Vec<Node> = ids
            .iter()
            .map(|&n| {
                let cpus = (0..MAX_CPUS)
                    .filter(|c| r.cpus[n][c / 64] & (1 << (c % 64)) != 0)
                    .map(|c| c as u32)
                    .collect::<Vec<_>>();
                let has_memory = r.mem_nodes & (1 << n) != 0;
                let cpu_node = r.cpu_nodes() & (1 << n) != 0;
                let access = iter(r.nodes)
                    .filter(|&i| r.perf[i][n].known())
                    .map(|i| {
                        let p = r.perf[i][n];
                        Access {
                            initiator: i as u32,
                            read_latency_ns: opt(p.read_latency),
                            write_latency_ns: opt(p.write_latency),
                            read_bandwidth_mibps: opt(p.read_bandwidth),
                            write_bandwidth_mibps: opt(p.write_bandwidth),
                        }
                    })
                    .collect();
                Node {
                    id: n as u32,
                    memory_only: has_memory && !cpu_node,
                    cpus,
                    memory_bytes: r.mem_bytes[n],
                    has_memory,
                    access,
                }
            })
            .collect();
        let distances = ids
            .iter()
            .map(|&i| ids.iter().map(|&j| r.dist(i, j)).collect())
            .collect();
        let mut kernel_tiers: Vec<KernelTier> = Vec::new();
        for &n in &ids {
            let id = r.kernel_tier[n];
            if id == raw::NO_TIER {
                continue;
            }
            match kernel_tiers.iter_mut().find(|t| t.id == id as u32) {
                Some(t) => t.nodes.push(n as u32),
                None => kernel_tiers.push(KernelTier {
                    id: id as u32,
                    nodes: vec![n as u32],
                }),
            }
        }
        kernel_tiers.sort_by_key(|t| t.id);
        let mut t = Topology {
            source: match r.source {
                RawSource::Sysfs => TopologySource::Sysfs,
                RawSource::Fallback => TopologySource::SingleNode,
                RawSource::Hwloc => TopologySource::Hwloc,
                RawSource::Simulated => TopologySource::Simulated,
            },
            memory_only: nodes
                .iter()
                .filter(|n| n.memory_only)
                .map(|n| n.id)
                .collect(),
            nodes,
            distances,
            allowed_nodes: iter(r.allowed).map(|n| n as u32).collect(),
            kernel_tiers,
            tiers: Vec::new(),
            tier_source: match r.tier_source {
                RawTierSource::Env => TierSource::Env,
                RawTierSource::Hmat => TierSource::Hmat,
                RawTierSource::MemoryTiering => TierSource::MemoryTiering,
                RawTierSource::Distances => TierSource::Distances,
            },
            tiers_seen_from: None,
        };
        let groups: Vec<Vec<u32>> = r.tiers[..r.n_tiers]
            .iter()
            .map(|&m| iter(m).map(|n| n as u32).collect())
            .collect();
        let cpu_nodes = r.cpu_nodes();
        let viewer = match viewer {
            Some(v) if (v as usize) < MAX_NODES && cpu_nodes & (1 << v) != 0 => Some(v),
            _ if cpu_nodes != 0 => Some(cpu_nodes.trailing_zeros()),
            _ => None,
        };
        t.tiers_seen_from = viewer;
        t.tiers = t.tiers_of(&groups, viewer);
        t
    }

    fn tiers_of(&self, groups: &[Vec<u32>], viewer: Option<u32>) -> Vec<Tier> {
        groups
            .iter()
            .enumerate()
            .map(|(index, g)| {
                let mut nodes = g.clone();
                if let Some(v) = viewer {
                    nodes.sort_by_key(|&n| (self.distance(v, n).unwrap_or(u32::MAX), n));
                }
                let capacity_bytes = nodes
                    .iter()
                    .filter_map(|&n| self.node(n))
                    .map(|n| n.memory_bytes)
                    .fold(0u64, u64::saturating_add);
                let (latency_ns, bandwidth_mibps) = nodes
                    .first()
                    .map_or((None, None), |&n| self.access_from(viewer, n));
                Tier {
                    index,
                    nodes,
                    capacity_bytes,
                    latency_ns,
                    bandwidth_mibps,
                }
            })
            .collect()
    }

    /// Latency and bandwidth of `target` from `viewer`; where that pair is unknown, the
    /// target's best known figures.
    fn access_from(&self, viewer: Option<u32>, target: u32) -> (Option<u32>, Option<u32>) {
        let Some(node) = self.node(target) else {
            return (None, None);
        };
        let lat = |a: &Access| a.read_latency_ns.or(a.write_latency_ns);
        let bw = |a: &Access| a.read_bandwidth_mibps.or(a.write_bandwidth_mibps);
        if let Some(a) = node.access.iter().find(|a| Some(a.initiator) == viewer) {
            return (lat(a), bw(a));
        }
        (
            node.access.iter().filter_map(lat).min(),
            node.access.iter().filter_map(bw).max(),
        )
    }

    /// The node with id `id`.
    pub fn node(&self, id: u32) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The distance from node `from` to node `to` (10 is local).
    pub fn distance(&self, from: u32, to: u32) -> Option<u32> {
        let i = self.nodes.iter().position(|n| n.id == from)?;
        let j = self.nodes.iter().position(|n| n.id == to)?;
        Some(self.distances[i][j])
    }

    /// The index of the tier that holds node `id`.
    pub fn tier_of(&self, id: u32) -> Option<usize> {
        self.tiers.iter().position(|t| t.nodes.contains(&id))
    }

    /// The same tiers as seen from CPU node `viewer`: each tier's nodes nearest to `viewer`
    /// first, and the latency and bandwidth from `viewer`.
    pub fn tiers_from(&self, viewer: u32) -> Vec<Tier> {
        let groups: Vec<Vec<u32>> = self.tiers.iter().map(|t| t.nodes.clone()).collect();
        self.tiers_of(&groups, Some(viewer))
    }

    /// The model of a sysfs tree rooted at `root` (a directory laid out like /sys), for tests
    /// with fixture trees. Environment overrides are not read; see
    /// [`Topology::from_sysfs_root_env`].
    #[doc(hidden)]
    pub fn from_sysfs_root(root: &std::path::Path) -> Topology {
        Self::from_sysfs_root_env(root, None, None)
    }

    /// Like [`Topology::from_sysfs_root`], with values for TIERALLOC_NODES (`nodes`) and
    /// TIERALLOC_TIERS (`tiers`) as if they were set in the environment.
    #[doc(hidden)]
    pub fn from_sysfs_root_env(
        root: &std::path::Path,
        nodes: Option<&str>,
        tiers: Option<&str>,
    ) -> Topology {
        use std::os::unix::ffi::OsStrExt;
        let mut r = Box::new(Raw::EMPTY);
        sysfs::discover(root.as_os_str().as_bytes(), false, &mut r);
        r.finish(nodes.map(str::as_bytes), tiers.map(str::as_bytes));
        Topology::from_raw(&r, None)
    }
}

/// Parses a Linux CPU or node list ("0-3,8,10-11"; empty is the empty list) into ascending
/// ids below 1024. None if malformed.
pub fn parse_list(s: &str) -> Option<Vec<u32>> {
    let mut m = [0u64; MAX_CPUS / 64];
    if !sysfs::parse_list(s.as_bytes(), &mut m) {
        return None;
    }
    Some(
        (0..MAX_CPUS)
            .filter(|i| m[i / 64] & (1 << (i % 64)) != 0)
            .map(|i| i as u32)
            .collect(),
    )
}
