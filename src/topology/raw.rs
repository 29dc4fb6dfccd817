//! The machine as the allocator sees it: fixed-size arrays, allocation-free.
//!
//! Owns: the model [`Raw`] (nodes, CPU masks, memory sizes, distances, HMAT figures, kernel
//! memory tiers, the derived tiers and the per-CPU home node), its limits (`MAX_NODES`, the
//! one definition the heap's per-node tables use too) and the queries on it. May touch:
//! nothing (the bottom of the topology: `sysfs`, `sim`, `tiers` and `discover` fill it;
//! `discover` holds the process-wide instance). Nothing here allocates, panics or formats.

use core::ptr;

/// Node ids tieralloc handles (0..MAX_NODES); the heap's pools are sized the same.
pub(crate) const MAX_NODES: usize = 64;
/// CPU ids tieralloc handles.
pub(crate) const MAX_CPUS: usize = 1024;
/// u64 words in a CPU mask.
pub(crate) const MASK_WORDS: usize = MAX_CPUS / 64;
/// Tiers tieralloc distinguishes.
pub(crate) const MAX_TIERS: usize = 8;
/// "No node" in a u8 node table.
pub(crate) const NO_NODE: u8 = u8::MAX;
/// "Not in a kernel memory tier".
pub(crate) const NO_TIER: u16 = u16::MAX;

/// A set of CPU ids.
pub(crate) type CpuMask = [u64; MASK_WORDS];

/// Where a [`Raw`] came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RawSource {
    /// /sys/devices/system/node.
    Sysfs,
    /// No NUMA information: one node 0 with every CPU.
    Fallback,
    /// hwloc (feature `hwloc`).
    #[allow(dead_code)]
    Hwloc,
    /// TIERALLOC_SIMULATE_NODES (`topology::sim`).
    Simulated,
}

/// How the tiers were derived.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RawTierSource {
    /// TIERALLOC_TIERS.
    Env,
    /// HMAT (or hwloc memory attributes) latency and bandwidth.
    Hmat,
    /// The kernel's memory_tiering groups.
    MemoryTiering,
    /// CPU-less nodes and distances.
    Distances,
}

/// Access performance of a target node from an initiator node (0 = unknown). Latencies in
/// nanoseconds, bandwidths in MiB/s (the units of Linux's sysfs and of hwloc).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct Perf {
    pub read_latency: u32,
    pub write_latency: u32,
    pub read_bandwidth: u32,
    pub write_bandwidth: u32,
}

impl Perf {
    const ZERO: Perf = Perf {
        read_latency: 0,
        write_latency: 0,
        read_bandwidth: 0,
        write_bandwidth: 0,
    };
    /// Whether any figure is known.
    pub fn known(&self) -> bool {
        *self != Perf::ZERO
    }
    /// Latency for ranking: read latency, else write latency (0 = unknown).
    pub fn latency(&self) -> u32 {
        if self.read_latency != 0 {
            self.read_latency
        } else {
            self.write_latency
        }
    }
    /// Bandwidth for ranking: read bandwidth, else write bandwidth (0 = unknown).
    pub fn bandwidth(&self) -> u32 {
        if self.read_bandwidth != 0 {
            self.read_bandwidth
        } else {
            self.write_bandwidth
        }
    }
}

/// The machine in fixed-size arrays.
pub(crate) struct Raw {
    pub source: RawSource,
    /// Node ids present.
    pub nodes: u64,
    /// Nodes with memory.
    pub mem_nodes: u64,
    /// CPUs of each node.
    pub cpus: [CpuMask; MAX_NODES],
    /// Nodes with CPUs past `MAX_CPUS`, which `cpus` cannot hold: CPU nodes all the same.
    pub cpus_beyond: u64,
    /// Memory of each node in bytes (0 = unknown or none).
    pub mem_bytes: [u64; MAX_NODES],
    /// Distance from node i to node j (0 = unknown).
    pub distance: [[u8; MAX_NODES]; MAX_NODES],
    /// perf[initiator][target].
    pub perf: [[Perf; MAX_NODES]; MAX_NODES],
    /// The kernel memory tier (memory_tierN) of each node.
    pub kernel_tier: [u16; MAX_NODES],
    /// Nodes the process may place memory on (Mems_allowed).
    pub mems_allowed: u64,
    /// Nodes the global allocator uses (TIERALLOC_NODES ∩ nodes with memory ∩ Mems_allowed).
    pub allowed: u64,
    /// Tiers, fastest first, as node sets.
    pub tiers: [u64; MAX_TIERS],
    pub n_tiers: usize,
    pub tier_source: RawTierSource,
    /// TIERALLOC_IGNORE_HMAT: derive tiers without the HMAT figures (they stay in the model).
    pub ignore_hmat: bool,
    /// Home node of each CPU (NO_NODE for CPUs in no node).
    pub cpu_home: [u8; MAX_CPUS],
    /// Simulated CPU nodes (TIERALLOC_SIMULATE_NODES; 0: the machine is real). Nodes
    /// 0..sim_nodes are CPU nodes, and `sys::numa` skips the kernel's binding calls.
    pub sim_nodes: u8,
    /// The simulated far (memory-only) nodes.
    pub sim_far: u64,
}

impl Raw {
    /// An empty machine.
    pub const EMPTY: Raw = Raw {
        source: RawSource::Fallback,
        nodes: 0,
        mem_nodes: 0,
        cpus: [[0; MASK_WORDS]; MAX_NODES],
        cpus_beyond: 0,
        mem_bytes: [0; MAX_NODES],
        distance: [[0; MAX_NODES]; MAX_NODES],
        perf: [[Perf::ZERO; MAX_NODES]; MAX_NODES],
        kernel_tier: [NO_TIER; MAX_NODES],
        mems_allowed: 0,
        allowed: 0,
        tiers: [0; MAX_TIERS],
        n_tiers: 0,
        tier_source: RawTierSource::Distances,
        ignore_hmat: false,
        cpu_home: [NO_NODE; MAX_CPUS],
        sim_nodes: 0,
        sim_far: 0,
    };

    /// Makes the zeroed memory at `p` [`Raw::EMPTY`] by writing only the fields whose empty
    /// value is not zero bytes, and returns it. The discovered machine lives in zeroed static
    /// memory (`.bss`) set up this way, so that the pages of its 80 KiB (mostly the `perf`
    /// table) that discovery never writes are never resident: written whole, or kept as an
    /// initialised static in `.data`, every page of it counted in each process's RSS.
    ///
    /// # Safety
    /// `p` is valid for writes of a `Raw`, aligned, and every byte of it is zero; nothing
    /// else reads or writes it while the returned reference lives.
    pub(crate) unsafe fn empty_in_zeroed<'a>(p: *mut Raw) -> &'a mut Raw {
        // SAFETY: p is valid, aligned and zeroed (contract); zero bytes are valid for every
        // field but the two enums, which are written (with the non-zero empty fields) first.
        unsafe {
            ptr::addr_of_mut!((*p).source).write(RawSource::Fallback);
            ptr::addr_of_mut!((*p).tier_source).write(RawTierSource::Distances);
            ptr::addr_of_mut!((*p).kernel_tier).write([NO_TIER; MAX_NODES]);
            ptr::addr_of_mut!((*p).cpu_home).write([NO_NODE; MAX_CPUS]);
            &mut *p
        }
    }

    /// Whether the nodes are simulated (TIERALLOC_SIMULATE_NODES).
    #[inline]
    pub fn simulated(&self) -> bool {
        self.sim_nodes != 0
    }

    /// Whether node `n` has CPUs (in `cpus`, or past `MAX_CPUS`).
    pub fn has_cpus(&self, n: usize) -> bool {
        self.cpus[n].iter().any(|w| *w != 0) || self.cpus_beyond & (1 << n) != 0
    }

    /// Nodes with CPUs (simulated: the simulated CPU nodes, even one that no CPU of the
    /// machine maps to).
    pub fn cpu_nodes(&self) -> u64 {
        if self.simulated() {
            return (1u64 << self.sim_nodes) - 1;
        }
        let mut m = 0;
        for n in iter(self.nodes) {
            if self.has_cpus(n) {
                m |= 1 << n;
            }
        }
        m
    }

    /// Distance i→j, with the kernel's defaults where unknown (10 local, 20 remote).
    pub fn dist(&self, i: usize, j: usize) -> u32 {
        match self.distance[i][j] {
            0 if i == j => 10,
            0 => 20,
            d => d as u32,
        }
    }

    /// The node of `set` nearest to `from` (ties: the lowest id). None if `set` is empty.
    pub fn nearest_in(&self, set: u64, from: usize) -> Option<u32> {
        let mut best: Option<(u32, usize)> = None;
        for n in iter(set) {
            let d = if from < MAX_NODES {
                self.dist(from, n)
            } else {
                0
            };
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, n));
            }
        }
        best.map(|(_, n)| n as u32)
    }

    /// The first node the global allocator may use (0 if none is known).
    pub fn first_allowed(&self) -> u32 {
        if self.allowed == 0 {
            0
        } else {
            self.allowed.trailing_zeros()
        }
    }

    /// The allowed node a thread running on `node` draws from.
    pub fn home_of_node(&self, node: u32) -> u32 {
        let n = node as usize;
        if n < MAX_NODES && self.allowed & (1 << n) != 0 {
            return node;
        }
        if n >= MAX_NODES {
            return self.first_allowed();
        }
        self.nearest_in(self.allowed, n)
            .unwrap_or_else(|| self.first_allowed())
    }

    /// The tier index of node `n`, if it is in one.
    pub fn tier_of(&self, n: usize) -> Option<usize> {
        (0..self.n_tiers).find(|&t| self.tiers[t] & (1 << n) != 0)
    }
}

/// The ids in a 64-bit node set, ascending.
pub(crate) fn iter(set: u64) -> impl Iterator<Item = usize> {
    let mut s = set;
    core::iter::from_fn(move || {
        if s == 0 {
            None
        } else {
            let n = s.trailing_zeros() as usize;
            s &= s - 1;
            Some(n)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// The process-wide instance is made from zero bytes: it must be `Raw::EMPTY` in every
    /// field, or discovery starts from another machine than a fixture's `Raw::EMPTY`.
    #[test]
    fn empty_in_zeroed_memory_is_empty() {
        let layout = Layout::new::<Raw>();
        // SAFETY: Raw has a non-zero size; the memory is zeroed, aligned for Raw, and freed
        // below with the same layout after the last use of the reference.
        unsafe {
            let p = alloc_zeroed(layout).cast::<Raw>();
            assert!(!p.is_null());
            let r = Raw::empty_in_zeroed(p);
            let e = Raw::EMPTY;
            assert_eq!(r.source, e.source);
            assert_eq!(r.tier_source, e.tier_source);
            assert_eq!((r.nodes, r.mem_nodes), (e.nodes, e.mem_nodes));
            assert_eq!(r.cpus, e.cpus);
            assert_eq!(r.cpus_beyond, e.cpus_beyond);
            assert_eq!(r.mem_bytes, e.mem_bytes);
            assert_eq!(r.distance, e.distance);
            assert_eq!(r.perf, e.perf);
            assert_eq!(r.kernel_tier, e.kernel_tier);
            assert_eq!((r.mems_allowed, r.allowed), (e.mems_allowed, e.allowed));
            assert_eq!((r.tiers, r.n_tiers), (e.tiers, e.n_tiers));
            assert_eq!(r.ignore_hmat, e.ignore_hmat);
            assert_eq!(r.cpu_home, e.cpu_home);
            assert_eq!((r.sim_nodes, r.sim_far), (e.sim_nodes, e.sim_far));
            dealloc(p.cast(), layout);
        }
    }
}
