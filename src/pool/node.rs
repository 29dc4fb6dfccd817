//! Which NUMA node the calling thread runs on, for the pool's per-node shards.
//!
//! Owns: a CPU-to-node table read once from `/sys/devices/system/node/node*/cpulist`.
//! May touch: sysfs (read once, lazily) and `sched_getcpu` (a vDSO call on Linux); the table is
//! built with the global allocator. Deliberately independent of the allocator core's topology
//! code: the pool is a client of the allocator and must work on any global allocator. The one
//! exception: with simulated nodes (`TIERALLOC_SIMULATE_NODES`, `topology::sim`, which
//! allocates nothing and needs no particular global allocator) the pool has one store per
//! simulated node and a thread's node is its CPU modulo the CPU nodes, as in the heap.

use std::sync::OnceLock;

struct Table {
    /// Node of each CPU (by CPU number); CPUs not listed are node 0.
    cpu_node: Vec<u16>,
    nodes: usize,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut cpu_node = Vec::new();
        let mut nodes = 1;
        if let Ok(dir) = std::fs::read_dir("/sys/devices/system/node") {
            for e in dir.flatten() {
                let name = e.file_name();
                let Some(n) = name.to_str().and_then(|s| s.strip_prefix("node")) else {
                    continue;
                };
                let Ok(node) = n.parse::<u16>() else { continue };
                let Ok(list) = std::fs::read_to_string(e.path().join("cpulist")) else {
                    continue;
                };
                nodes = nodes.max(node as usize + 1);
                for cpu in parse_cpulist(&list) {
                    if cpu_node.len() <= cpu {
                        cpu_node.resize(cpu + 1, 0);
                    }
                    cpu_node[cpu] = node;
                }
            }
        }
        Table { cpu_node, nodes }
    })
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub(crate) fn parse_cpulist(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.trim().parse() {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// Number of NUMA nodes (at least 1).
pub(crate) fn node_count() -> usize {
    let raw = crate::topology::raw::get();
    if raw.simulated() {
        return raw.nodes.count_ones() as usize;
    }
    table().nodes
}

/// The node of the CPU the calling thread runs on now (0 if unknown).
pub(crate) fn current_node() -> usize {
    if crate::topology::raw::get().simulated() {
        return crate::sys::numa::current_node() as usize;
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
    fn cpulist() {
        assert_eq!(
            super::parse_cpulist("0-3,8,10-11\n"),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(super::parse_cpulist(""), Vec::<usize>::new());
        assert!(super::current_node() < super::node_count());
    }
}
