//! Simulated NUMA nodes (`TIERALLOC_SIMULATE_NODES`): a one-node machine presented to the
//! allocator as N CPU nodes, plus M memory-only far nodes forming a slower tier, so that every
//! multi-node path (per-node pools and node heaps, home-node changes, cross-node frees, tier
//! policies, demotion bookkeeping) runs on any machine.
//!
//! Owns: the variable's syntax and the simulated [`Raw`]. May touch: `topology::raw` (rewrites
//! it before its derived fields are filled) and `sys::env` (number parsing). Allocation-free:
//! it runs inside the allocator's first call.
//!
//! What is simulated and what is real:
//! - CPU `c` belongs to node `c % N`, so a thread's home node is the CPU it runs on modulo N
//!   and a thread the scheduler moves (or that is pinned with `sched_setaffinity`) changes
//!   node. A node with no CPU of the machine (N above the CPU count) still counts as a CPU
//!   node (tier 0); nobody is ever at home there.
//! - The far nodes N..N+M have memory and no CPUs, at distance 30 from every other node
//!   (CPU nodes are 20 apart), so the distance rule puts them in one slower tier.
//! - The machine's memory is split evenly over the N+M nodes.
//! - `sys::numa` skips the kernel's binding calls (mbind, and move_pages when it moves) and
//!   reports them successful; move_pages as a query still reports the real node.

use super::raw::{iter, Raw, RawSource, MAX_CPUS, MAX_NODES};
use crate::sys::env::{parse_u64, trim};

/// The most CPU nodes that can be simulated.
pub(crate) const MAX_SIM_NODES: u32 = 8;

/// A parsed `TIERALLOC_SIMULATE_NODES`: `nodes` CPU nodes and `far` far nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    pub nodes: u32,
    pub far: u32,
}

/// What a well-formed value looks like (for the warning).
pub(crate) const EXPECTED: &str =
    "N or N,far=M: 2 to 8 CPU nodes, optionally M >= 1 far nodes, at most 64 nodes in all";

/// Parses `N` or `N,far=M` (spaces around the parts allowed). None if malformed or out of
/// range: N from 2 to 8, M at least 1, N + M at most `MAX_NODES`.
pub(crate) fn parse(v: &[u8]) -> Option<Spec> {
    let v = trim(v);
    let (n, far) = match v.iter().position(|&c| c == b',') {
        Some(i) => {
            let rest = trim(&v[i + 1..]);
            let m = rest.strip_prefix(b"far")?;
            let m = trim(m).strip_prefix(b"=")?;
            let m = parse_u64(m)?;
            if m == 0 {
                return None;
            }
            (parse_u64(&v[..i])?, m)
        }
        None => (parse_u64(v)?, 0),
    };
    // `far` is checked on its own first: `n + far` must not wrap (review rev25).
    if !(2..=MAX_SIM_NODES as u64).contains(&n)
        || far > MAX_NODES as u64
        || n + far > MAX_NODES as u64
    {
        return None;
    }
    Some(Spec {
        nodes: n as u32,
        far: far as u32,
    })
}

/// Replaces the discovered machine in `raw` by the simulated one: same CPUs and total memory,
/// `spec.nodes` CPU nodes and `spec.far` far nodes, every node allowed. The caller then runs
/// `Raw::finish` (TIERALLOC_NODES and TIERALLOC_TIERS apply to the simulated nodes).
pub(crate) fn apply(raw: &mut Raw, spec: Spec) {
    let mut cpus = [0u64; MAX_CPUS / 64];
    let mut mem = 0u64;
    for n in iter(raw.nodes) {
        for (d, s) in cpus.iter_mut().zip(&raw.cpus[n]) {
            *d |= *s;
        }
        mem = mem.saturating_add(raw.mem_bytes[n]);
    }
    if cpus.iter().all(|w| *w == 0) {
        cpus[0] = 1;
    }
    let ignore_hmat = raw.ignore_hmat;
    *raw = Raw::EMPTY;
    raw.ignore_hmat = ignore_hmat;
    raw.source = RawSource::Simulated;
    raw.sim_nodes = spec.nodes as u8;
    let (n, total) = (spec.nodes as usize, (spec.nodes + spec.far) as usize);
    let all = if total == 64 {
        u64::MAX
    } else {
        (1u64 << total) - 1
    };
    raw.nodes = all;
    raw.mem_nodes = all;
    raw.mems_allowed = all;
    raw.sim_far = all & !((1u64 << n) - 1);
    for cpu in 0..MAX_CPUS {
        if cpus[cpu / 64] & (1 << (cpu % 64)) != 0 {
            raw.cpus[cpu % n][cpu / 64] |= 1 << (cpu % 64);
        }
    }
    for i in 0..total {
        raw.mem_bytes[i] = mem / total as u64;
        for j in 0..total {
            raw.distance[i][j] = if i == j {
                10
            } else if i < n && j < n {
                20
            } else {
                30
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse() {
        let s = |nodes, far| Some(Spec { nodes, far });
        assert_eq!(parse(b"2"), s(2, 0));
        assert_eq!(parse(b" 8 "), s(8, 0));
        assert_eq!(parse(b"2,far=1"), s(2, 1));
        assert_eq!(parse(b"4, far = 3"), s(4, 3));
        assert_eq!(parse(b"8,far=56"), s(8, 56));
        for bad in [
            &b""[..],
            b"1",
            b"9",
            b"0",
            b"abc",
            b"2,far=x",
            b"2,far=0",
            b"2,far=",
            b"2,near=1",
            b"2,",
            b",far=1",
            b"8,far=57",
            b"2far=1",
            b"-2",
        ] {
            assert_eq!(parse(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    /// Review rev25: `N + M` was summed unchecked, so a far count near `u64::MAX` wrapped
    /// past the 64-node bound (a panic with overflow checks; without, `2,far=18446744073709551614`
    /// was taken as a machine of 0 nodes, with no warning).
    #[test]
    fn far_counts_that_overflow_are_refused() {
        for bad in [
            &b"2,far=18446744073709551614"[..],
            b"2,far=18446744073709551615",
            b"8,far=18446744073709551608",
            b"2,far=4294967294",
            b"2,far=4294967295",
            b"2,far=63",
        ] {
            assert_eq!(parse(bad), None, "{:?}", core::str::from_utf8(bad));
        }
        assert_eq!(parse(b"2,far=62"), Some(Spec { nodes: 2, far: 62 }));
    }

    #[test]
    fn the_simulated_machine_has_cpu_nodes_and_a_far_tier() {
        let mut raw = Box::new(Raw::EMPTY);
        raw.nodes = 1;
        raw.mem_nodes = 1;
        raw.cpus[0][0] = 0b1111; // CPUs 0-3
        raw.mem_bytes[0] = 3 << 30;
        apply(&mut raw, Spec { nodes: 2, far: 1 });
        raw.finish(None, None);
        assert_eq!(raw.nodes, 0b111);
        assert_eq!(raw.cpus[0][0], 0b0101);
        assert_eq!(raw.cpus[1][0], 0b1010);
        assert_eq!(raw.cpus[2][0], 0);
        assert_eq!(raw.cpu_nodes(), 0b011);
        assert_eq!(&raw.cpu_home[..4], &[0, 1, 0, 1]);
        assert_eq!((raw.n_tiers, raw.tiers[0], raw.tiers[1]), (2, 0b011, 0b100));
        assert_eq!(raw.mem_bytes[2], 1 << 30);
        assert_eq!(raw.allowed, 0b111);
    }

    /// The largest machine the variable allows: 8 CPU nodes and 56 far ones, all 64 ids.
    #[test]
    fn sixty_four_simulated_nodes_fill_every_id() {
        let mut raw = Box::new(Raw::EMPTY);
        raw.nodes = 1;
        raw.mem_nodes = 1;
        raw.cpus[0] = [u64::MAX; MAX_CPUS / 64];
        raw.mem_bytes[0] = 64 << 30;
        apply(&mut raw, parse(b"8,far=56").unwrap());
        raw.finish(None, None);
        assert_eq!(
            (raw.nodes, raw.mem_nodes, raw.allowed),
            (u64::MAX, u64::MAX, u64::MAX)
        );
        assert_eq!(raw.sim_far, u64::MAX << 8);
        assert_eq!(raw.cpu_nodes(), 0xff);
        assert_eq!(
            (raw.n_tiers, raw.tiers[0], raw.tiers[1]),
            (2, 0xff, u64::MAX << 8)
        );
        assert_eq!(raw.cpu_home[1023], 7);
        assert_eq!(raw.mem_bytes[63], 1 << 30);
        assert_eq!(raw.nearest_in(raw.tiers[1], 3), Some(8));
    }

    #[test]
    fn more_nodes_than_cpus_still_makes_cpu_nodes() {
        let mut raw = Box::new(Raw::EMPTY);
        raw.nodes = 1;
        raw.mem_nodes = 1;
        raw.cpus[0][0] = 0b11;
        apply(&mut raw, Spec { nodes: 4, far: 0 });
        raw.finish(None, None);
        assert_eq!(
            raw.cpu_nodes(),
            0b1111,
            "nodes 2 and 3 have no CPU, still tier 0"
        );
        assert_eq!((raw.n_tiers, raw.tiers[0]), (1, 0b1111));
    }
}
