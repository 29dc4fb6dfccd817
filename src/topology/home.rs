//! Where the calling thread runs, as the topology sees it: its home node (the node its heap
//! draws from), its CPU and node, pinning it to a node or a CPU, and moving a range's pages to
//! a node (the public `tieralloc::numa` helpers that need the machine's model).
//!
//! Owns: the mapping from the running CPU to a home node and the public pinning helpers.
//! May touch: `topology::{raw, discover}` (the model), `sys::numa` (getcpu,
//! sched_setaffinity, mbind) and `sys::os` (the page size). [`home_node`] and [`current_node`] are allocation-free (the heap
//! calls `home_node` from its slow path); the pinning helpers allocate only their error
//! messages.

use super::discover;
use super::raw::{Raw, MASK_WORDS, MAX_CPUS, MAX_NODES, NO_NODE};
use crate::sys::numa;
use std::io;

/// The node whose pool the calling thread's heap should draw from: the node it runs on,
/// mapped into the set of nodes the allocator may use (TIERALLOC_NODES, nodes with memory,
/// the cpuset's Mems_allowed), else the nearest such node. Allocation-free, and cheap when
/// only one node is usable (no system call at all); otherwise one vDSO/rseq read of the CPU
/// and a table lookup. The heap calls it from its slow path.
pub(crate) fn home_node() -> u32 {
    let t = discover::get();
    if t.allowed.count_ones() <= 1 {
        return t.first_allowed();
    }
    // SAFETY: sched_getcpu has no preconditions (glibc reads it from rseq or the vDSO).
    let cpu = unsafe { libc::sched_getcpu() };
    home_of_cpu(t, cpu, numa::getcpu)
}

/// [`home_node`] for a thread on `cpu` (negative: unknown), `getcpu` asked only when the
/// table has no home for it (a CPU offline at discovery, or past `MAX_CPUS`).
fn home_of_cpu(t: &Raw, cpu: i32, getcpu: impl FnOnce() -> Option<(u32, u32)>) -> u32 {
    if cpu >= 0 && (cpu as usize) < MAX_CPUS {
        let h = t.cpu_home[cpu as usize];
        if h != NO_NODE {
            return h as u32;
        }
    }
    // Simulated: the node is the CPU modulo N whatever the tables hold (review rev25).
    let sim = t.sim_nodes as u32;
    if sim != 0 && cpu >= 0 {
        return t.home_of_node(cpu as u32 % sim);
    }
    match getcpu() {
        Some((c, _)) if sim != 0 => t.home_of_node(c % sim),
        Some((_, node)) => t.home_of_node(node),
        None => t.first_allowed(),
    }
}

/// The NUMA node the calling thread is running on (0 where the kernel cannot say; with
/// simulated nodes, its CPU modulo their number).
pub(crate) fn current_node() -> u32 {
    current_cpu_and_node().map_or(0, |(_, n)| n)
}

/// The CPU the calling thread runs on and its node, as the kernel reports them (getcpu), or
/// None. With simulated nodes (`TIERALLOC_SIMULATE_NODES=N`) the node is the CPU modulo N.
/// Allocation-free.
pub fn current_cpu_and_node() -> Option<(u32, u32)> {
    let (cpu, node) = numa::getcpu()?;
    let t = discover::get();
    if t.simulated() {
        return Some((cpu, cpu % t.sim_nodes as u32));
    }
    Some((cpu, node))
}

/// Pins the calling thread to the CPUs of NUMA node `node` (sched_setaffinity). The heap
/// follows: the thread's global-allocator memory comes from `node` within a bounded number of
/// allocations.
///
/// # Errors
/// `InvalidInput` if the node does not exist or has no CPUs (a memory-only node); the OS
/// error if sched_setaffinity refuses (for example, the CPUs are outside the cpuset).
pub fn pin_current_thread_to_node(node: u32) -> io::Result<()> {
    let t = discover::get();
    if node as usize >= MAX_NODES || t.nodes & (1 << node) == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot pin to NUMA node {node}: no such node on this machine"),
        ));
    }
    let cpus = &t.cpus[node as usize];
    if cpus.iter().all(|w| *w == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot pin to NUMA node {node}: it has no CPUs (a memory-only node)"),
        ));
    }
    numa::set_affinity(cpus)
}

/// Pins the calling thread to CPU `cpu` alone.
///
/// # Errors
/// The OS error if sched_setaffinity refuses.
pub fn pin_current_thread_to_cpu(cpu: u32) -> io::Result<()> {
    let mut m = [0u64; MASK_WORDS];
    if cpu as usize >= MAX_CPUS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot pin to CPU {cpu}: beyond the {MAX_CPUS} CPUs tieralloc knows"),
        ));
    }
    m[cpu as usize / 64] |= 1 << (cpu % 64);
    numa::set_affinity(&m)
}

/// Moves every page of `[ptr, ptr+len)` (widened to whole pages) to NUMA node `node`, keeping
/// addresses and contents, and binds the range to `node` from now on (demotion to a far tier,
/// or promotion back). Pages never touched stay untouched and land on `node` when touched.
///
/// # Safety
/// The whole widened range must be memory of this process that the caller owns: its pages'
/// placement policy is replaced, which would surprise any other owner of the same pages.
///
/// # Errors
/// The kernel's refusal (EINVAL for a node that does not exist, EPERM or EIO when pages could
/// not move).
pub unsafe fn move_to_node(ptr: *mut u8, len: usize, node: u32) -> io::Result<()> {
    // Discover the machine first: `sys::numa` skips binding calls for simulated nodes.
    discover::get();
    let page = crate::sys::os::OS_PAGE;
    let start = ptr as usize & !(page - 1);
    let end = (ptr as usize)
        .checked_add(len)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let end = end
        .checked_add(page - 1)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?
        & !(page - 1);
    numa::move_range(start as *mut u8, end - start, node).map_err(io::Error::from_raw_os_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulated nodes: CPU c is on node c % N (docs/tiers.md), also a CPU the discovered
    /// lists did not hold (offline at discovery, brought online since; or past `MAX_CPUS`).
    /// Review rev25: such a CPU's home was the real node getcpu reports (0), while
    /// `current_cpu_and_node` said c % N.
    #[test]
    fn a_simulated_cpu_missing_from_the_tables_is_on_node_c_mod_n() {
        let mut raw = Box::new(Raw::EMPTY);
        raw.nodes = 1;
        raw.mem_nodes = 1;
        raw.cpus[0][0] = 0b11; // CPUs 0 and 1 online at discovery
        super::super::sim::apply(&mut raw, super::super::sim::Spec { nodes: 2, far: 1 });
        raw.finish(None, None);
        let real = || Some((0, 0));
        assert_eq!(home_of_cpu(&raw, 1, real), 1);
        assert_eq!(home_of_cpu(&raw, 3, real), 1);
        assert_eq!(home_of_cpu(&raw, 4, real), 0);
        assert_eq!(home_of_cpu(&raw, 2049, real), 1);
        assert_eq!(home_of_cpu(&raw, -1, real), 0);
    }

    #[test]
    fn home_node_is_an_allowed_node() {
        let h = home_node();
        assert!(discover::get().allowed & (1 << h) != 0);
    }
}
