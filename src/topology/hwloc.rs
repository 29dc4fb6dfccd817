//! The same model from hwloc (feature `hwloc`): the running machine, an hwloc synthetic
//! description, or an hwloc XML file, so that placement and tier policies can be tested
//! against machines no test machine is (eight nodes, CXL expanders).
//!
//! Owns: the translation of an hwloc topology into a [`Raw`] (then into [`Topology`] like
//! sysfs's). May touch: `topology::{raw, discover}` (the model and its derived
//! fields), the public model in `topology` and the `hwlocality` crate. Never used by the
//! allocator itself (hwloc allocates); only on request.
//!
//! Mapping: each hwloc NUMANode is a node (its OS index is the id, below 64); each PU belongs
//! to the first NUMA node attached to its nearest ancestor that has memory children, so a NUMA
//! node no PU chose (such as a CXL node beside a package's DRAM node) is memory-only.
//! Distances come from the first NUMANode distance matrix; latency and bandwidth from the
//! memory attributes (ReadLatency/Latency, ReadBandwidth/Bandwidth, ...) with each CPU node's
//! cpuset as initiator.

use super::raw::{Perf, Raw, RawSource, MAX_CPUS, MAX_NODES};
use super::Topology;
use hwlocality::bitmap::BitmapCow;
use hwlocality::memory::attribute::{Initiator, MemoryAttribute};
use hwlocality::object::types::ObjectType;
use hwlocality::object::TopologyObject;
use std::fmt;

/// Why hwloc could not build a topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HwlocError {
    message: String,
}

impl fmt::Display for HwlocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hwloc: {}", self.message)
    }
}

impl std::error::Error for HwlocError {}

fn err(what: &str, e: impl fmt::Display) -> HwlocError {
    HwlocError {
        message: format!("{what}: {e}"),
    }
}

impl Topology {
    /// The running machine as hwloc sees it.
    ///
    /// # Errors
    /// hwloc failed to discover the machine.
    pub fn from_hwloc() -> Result<Topology, HwlocError> {
        let t = hwlocality::Topology::new().map_err(|e| err("discovering this machine", e))?;
        Self::from_hwloc_topology(&t)
    }

    /// A machine described by an hwloc synthetic string, such as
    /// `"pack:2 [numa] [numa] core:2 pu:1"` (two packages, each with a DRAM node that holds
    /// its CPUs and a memory-only node).
    ///
    /// # Errors
    /// The description is malformed.
    pub fn from_hwloc_synthetic(description: &str) -> Result<Topology, HwlocError> {
        let t = hwlocality::Topology::builder()
            .from_synthetic(description)
            .map_err(|e| err("synthetic description", e))?
            .build()
            .map_err(|e| err("building the synthetic topology", e))?;
        Self::from_hwloc_topology(&t)
    }

    /// A machine from an hwloc XML file (as written by `lstopo file.xml`), memory attributes
    /// (HMAT latency and bandwidth) included.
    ///
    /// # Errors
    /// The file cannot be read or is not hwloc XML.
    pub fn from_hwloc_xml(path: &std::path::Path) -> Result<Topology, HwlocError> {
        let t = hwlocality::Topology::builder()
            .from_xml_file(path)
            .map_err(|e| err(&format!("XML file {}", path.display()), e))?
            .build()
            .map_err(|e| err("building the XML topology", e))?;
        Self::from_hwloc_topology(&t)
    }

    /// A machine from hwloc XML text.
    ///
    /// # Errors
    /// The text is not hwloc XML.
    pub fn from_hwloc_xml_str(xml: &str) -> Result<Topology, HwlocError> {
        let t = hwlocality::Topology::builder()
            .from_xml(xml)
            .map_err(|e| err("XML text", e))?
            .build()
            .map_err(|e| err("building the XML topology", e))?;
        Self::from_hwloc_topology(&t)
    }

    /// The model of an hwloc topology.
    ///
    /// # Errors
    /// A NUMA node id of 64 or more.
    pub fn from_hwloc_topology(t: &hwlocality::Topology) -> Result<Topology, HwlocError> {
        let mut r = Box::new(Raw::EMPTY);
        r.source = RawSource::Hwloc;
        let numa: Vec<&TopologyObject> = t.objects_with_type(ObjectType::NUMANode).collect();
        let mut objs: Vec<(usize, &TopologyObject)> = Vec::new();
        for o in &numa {
            let id = o.os_index().unwrap_or(objs.len());
            if id >= MAX_NODES {
                return Err(HwlocError {
                    message: format!(
                        "NUMA node {id} is beyond the {MAX_NODES} nodes tieralloc handles"
                    ),
                });
            }
            r.nodes |= 1 << id;
            r.mem_nodes |= 1 << id;
            r.mem_bytes[id] = o.total_memory();
            objs.push((id, o));
        }
        if objs.is_empty() {
            return Err(HwlocError {
                message: "no NUMA node".into(),
            });
        }
        let id_of = |o: &TopologyObject| {
            objs.iter()
                .find(|(_, x)| x.global_persistent_index() == o.global_persistent_index())
                .map(|(id, _)| *id)
        };
        // Each PU belongs to the first NUMA node of its nearest ancestor with memory.
        for pu in t.objects_with_type(ObjectType::PU) {
            let Some(cpu) = pu.os_index() else { continue };
            let node = pu.ancestors().find_map(|a| {
                a.memory_children()
                    .find(|m| m.object_type() == ObjectType::NUMANode)
                    .and_then(id_of)
            });
            match node {
                Some(n) if cpu < MAX_CPUS => r.cpus[n][cpu / 64] |= 1 << (cpu % 64),
                // Past the tables: still a CPU node (as the sysfs reader says).
                Some(n) => r.cpus_beyond |= 1 << n,
                None => {}
            }
        }
        // Distances.
        if let Ok(all) = t.distances(None) {
            if let Some(d) = all.iter().find(|d| {
                d.objects()
                    .all(|o| o.is_some_and(|o| o.object_type() == ObjectType::NUMANode))
            }) {
                let ids: Vec<Option<usize>> = d.objects().map(|o| o.and_then(id_of)).collect();
                for ((i, j), v) in d.enumerate_distances() {
                    if let (Some(a), Some(b)) = (ids[i], ids[j]) {
                        r.distance[a][b] = v.min(255) as u8;
                    }
                }
            }
        }
        // Memory attributes, from each CPU node's cpuset.
        let value = |attr: MemoryAttribute<'_>, init: &TopologyObject, target: &TopologyObject| {
            let cpuset = init.cpuset()?;
            let initiator = Initiator::CpuSet(BitmapCow::from(cpuset));
            attr.value(Some(initiator), target)
                .ok()
                .flatten()
                .map(|v| v.min(u32::MAX as u64) as u32)
        };
        for &(i, io) in &objs {
            if !r.has_cpus(i) {
                continue;
            }
            for &(j, jo) in &objs {
                let lat = value(MemoryAttribute::latency(t), io, jo);
                let bw = value(MemoryAttribute::bandwidth(t), io, jo);
                let p = Perf {
                    read_latency: value(MemoryAttribute::read_latency(t), io, jo)
                        .or(lat)
                        .unwrap_or(0),
                    write_latency: value(MemoryAttribute::write_latency(t), io, jo)
                        .or(lat)
                        .unwrap_or(0),
                    read_bandwidth: value(MemoryAttribute::read_bandwidth(t), io, jo)
                        .or(bw)
                        .unwrap_or(0),
                    write_bandwidth: value(MemoryAttribute::write_bandwidth(t), io, jo)
                        .or(bw)
                        .unwrap_or(0),
                };
                r.perf[i][j] = p;
            }
        }
        r.mems_allowed = r.nodes;
        r.finish(None, None);
        Ok(Topology::from_raw(&r, None))
    }
}
