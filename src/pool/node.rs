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

use crate::sync::ForkOnceCell;
use crate::topology::discover;
use crate::topology::raw::{iter, MAX_CPUS};

struct Table {
    /// Node of each CPU (by CPU number); CPUs not listed are node 0.
    cpu_node: Vec<u16>,
    nodes: usize,
}

/// The cell the table is built in, once (also in a fork child whose parent was building it).
type TableCell = ForkOnceCell<Table>;

fn table() -> &'static Table {
    static TABLE: TableCell = TableCell::new();
    table_in(&TABLE)
}

/// Tests: a thread building a table waits in it while this is set, after setting `BUILDING`.
#[cfg(test)]
static HOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
#[cfg(test)]
static BUILDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The table in `cell`, built on first use.
fn table_in(cell: &'static TableCell) -> &'static Table {
    cell.get_or_init(|| {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::SeqCst;
            BUILDING.store(true, SeqCst);
            while HOLD.load(SeqCst) {
                std::thread::yield_now();
            }
        }
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
    /// A thread was building the table (the pool's first use in the process) when another
    /// thread forked: in the child, whose builder is gone, the first use of a pool's node must
    /// build its own, not wait forever for the builder (review rev29: std's `OnceLock` waited).
    #[test]
    fn a_fork_during_the_tables_first_build_leaves_the_child_a_table() {
        use std::sync::atomic::Ordering::SeqCst;
        static CELL: super::TableCell = super::TableCell::new();
        super::HOLD.store(true, SeqCst);
        let builder = std::thread::spawn(|| super::table_in(&CELL).nodes);
        while !super::BUILDING.load(SeqCst) {
            std::thread::yield_now();
        }
        // The child builds the table.
        let child = crate::sync::fork_and_wait(std::time::Duration::from_secs(20), || {
            super::HOLD.store(false, SeqCst);
            if super::table_in(&CELL).nodes >= 1 {
                0
            } else {
                2
            }
        });
        super::HOLD.store(false, SeqCst);
        assert!(builder.join().unwrap() >= 1);
        assert_eq!(
            child,
            Ok(0),
            "the child had no table (hung: it waited for the builder)"
        );
    }

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
