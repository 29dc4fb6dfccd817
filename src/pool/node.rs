//! Which NUMA node the calling thread runs on, for the pool's per-node shards.
//!
//! Owns: a CPU-to-node table built once from the topology's model of the machine.
//! May touch: `topology` (the model, discovered allocation-free and shared with the rest of
//! the crate; it reads sysfs, so this module does not) and `sched_getcpu` (a vDSO call on
//! Linux); the table is built with the global allocator. Nothing in the allocator core: the
//! pool is a client of the allocator and works on any global allocator (the topology's
//! discovery allocates nothing and needs no particular one). With simulated nodes
//! (`TIERALLOC_SIMULATE_NODES`) the pool has one store per simulated node and a thread's node
//! is its CPU modulo the CPU nodes, as in the heap.

use crate::topology::discover;
use crate::topology::raw::{iter, MAX_CPUS};
use std::sync::OnceLock;

struct Table {
    /// Node of each CPU (by CPU number); CPUs not listed are node 0.
    cpu_node: Vec<u16>,
    nodes: usize,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let raw = discover::get();
        let mut cpu_node = Vec::new();
        let mut nodes = 1;
        // Every node counts, memory-only ones too (their CPU list is empty).
        for node in iter(raw.nodes) {
            nodes = nodes.max(node + 1);
            for cpu in (0..MAX_CPUS).filter(|c| raw.cpus[node][c / 64] & (1 << (c % 64)) != 0) {
                if cpu_node.len() <= cpu {
                    cpu_node.resize(cpu + 1, 0);
                }
                cpu_node[cpu] = node as u16;
            }
        }
        Table { cpu_node, nodes }
    })
}

/// Number of NUMA nodes (at least 1).
pub(crate) fn node_count() -> usize {
    let raw = discover::get();
    if raw.simulated() {
        return raw.nodes.count_ones() as usize;
    }
    table().nodes
}

/// The node of the CPU the calling thread runs on now (0 if unknown).
pub(crate) fn current_node() -> usize {
    if discover::get().simulated() {
        return crate::topology::home::current_node() as usize;
    }
    let t = table();
    if t.nodes == 1 {
        return 0;
    }
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on error.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        return 0;
    }
    t.cpu_node.get(cpu as usize).map_or(0, |&n| n as usize)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_cpu_of_the_machine_maps_to_its_node() {
        let raw = super::discover::get();
        let t = super::table();
        for node in super::iter(raw.nodes) {
            for cpu in 0..super::MAX_CPUS {
                if raw.cpus[node][cpu / 64] & (1 << (cpu % 64)) != 0 {
                    assert_eq!(t.cpu_node[cpu] as usize, node, "cpu {cpu}");
                }
            }
        }
        assert!(super::current_node() < super::node_count());
    }
}
