//! Memory tiers: nodes with memory grouped by speed, fastest first (issue 4's groundwork).
//!
//! Owns: the grouping rules and the TIERALLOC_TIERS override. May touch: `topology::raw`
//! (reads the machine, writes its tier fields), `topology::sysfs` (the list parser) and
//! `sys::env` (warnings). Allocation-free.
//!
//! The rules, first that applies:
//! 1. `TIERALLOC_TIERS` ("0,1;2": tier 0 is nodes 0 and 1, tier 1 is node 2; nodes with
//!    memory it leaves out join the last tier).
//! 2. HMAT figures (or hwloc memory attributes; skipped with `TIERALLOC_IGNORE_HMAT=1`): each node's best latency and bandwidth over
//!    its initiators gives a score relative to the fastest node (the mean of latency / best
//!    latency and best bandwidth / bandwidth); sorted by score, a node more than 30 % worse
//!    than the first node of the current tier starts a new tier. A node with no figures counts
//!    as the fastest if it has CPUs, else as the slowest. Skipped when no node with CPUs and
//!    memory has figures (nothing to rank the others against).
//! 3. The kernel's memory tiers (memory_tierK), ordered by K.
//! 4. Distances: nodes with CPUs form tier 0; memory-only nodes are grouped by their distance
//!    to the nearest CPU node, nearer groups first.

use super::raw::{iter, Raw, RawTierSource, MAX_NODES, MAX_TIERS, NO_TIER};
use super::sysfs::parse_list;

/// Parses a TIERALLOC_TIERS value into tiers (node sets) over the memory nodes `mem`.
/// None if malformed: an empty or bad list, a node without memory or listed twice, more than
/// `MAX_TIERS` tiers.
pub(crate) fn parse_tiers(v: &[u8], mem: u64) -> Option<([u64; MAX_TIERS], usize)> {
    let mut tiers = [0u64; MAX_TIERS];
    let mut n = 0;
    let mut seen = 0u64;
    for group in v.split(|&c| c == b';') {
        let mut m = [0u64; 1];
        if !parse_list(group, &mut m) || m[0] == 0 || m[0] & !mem != 0 || m[0] & seen != 0 {
            return None;
        }
        if n == MAX_TIERS {
            return None;
        }
        seen |= m[0];
        tiers[n] = m[0];
        n += 1;
    }
    if n == 0 {
        return None;
    }
    tiers[n - 1] |= mem & !seen;
    Some((tiers, n))
}

/// Groups `raw`'s memory nodes into tiers.
pub(crate) fn derive(raw: &mut Raw, env: Option<&[u8]>) {
    let mem = raw.mem_nodes;
    raw.tiers = [0; MAX_TIERS];
    raw.n_tiers = 0;
    if let Some(v) = env {
        match parse_tiers(v, mem) {
            Some((t, n)) => {
                raw.tiers = t;
                raw.n_tiers = n;
                raw.tier_source = RawTierSource::Env;
                return;
            }
            None => crate::sys::env::warn_bad(
                b"TIERALLOC_TIERS\0",
                v,
                "node lists of nodes with memory separated by ';', fastest first, e.g. 0,1;2",
            ),
        }
    }
    if mem == 0 {
        return;
    }
    if !raw.ignore_hmat && from_hmat(raw) {
        raw.tier_source = RawTierSource::Hmat;
        return;
    }
    if from_kernel_tiers(raw) {
        raw.tier_source = RawTierSource::MemoryTiering;
        return;
    }
    from_distances(raw);
    raw.tier_source = RawTierSource::Distances;
}

/// Sorts `keys[..n]` (with `ids`) ascending and groups; `new_group(first_key, key)` says when
/// a key starts a new tier.
fn group_sorted(
    raw: &mut Raw,
    ids: &mut [usize; MAX_NODES],
    keys: &mut [u64; MAX_NODES],
    n: usize,
    new_group: impl Fn(u64, u64) -> bool,
) {
    // Insertion sort: at most 64 entries, stable (ties keep ascending node ids).
    for i in 1..n {
        let mut j = i;
        while j > 0 && keys[j - 1] > keys[j] {
            keys.swap(j - 1, j);
            ids.swap(j - 1, j);
            j -= 1;
        }
    }
    let mut first = 0u64;
    for i in 0..n {
        if i == 0 || (new_group(first, keys[i]) && raw.n_tiers < MAX_TIERS) {
            raw.n_tiers += 1;
            first = keys[i];
        }
        raw.tiers[raw.n_tiers - 1] |= 1 << ids[i];
    }
}

fn from_hmat(raw: &mut Raw) -> bool {
    let mem = raw.mem_nodes;
    let mut best_lat = [0u32; MAX_NODES];
    let mut best_bw = [0u32; MAX_NODES];
    let mut any = false;
    for t in iter(mem) {
        for i in iter(raw.nodes) {
            let p = raw.perf[i][t];
            let (l, b) = (p.latency(), p.bandwidth());
            if l != 0 && (best_lat[t] == 0 || l < best_lat[t]) {
                best_lat[t] = l;
            }
            if b > best_bw[t] {
                best_bw[t] = b;
            }
            any |= l != 0 || b != 0;
        }
    }
    if !any {
        return false;
    }
    // Figures for memory-only nodes alone leave nothing to rank them against: the CPU
    // nodes' memory would count as no faster than the fastest of them, one tier with it
    // (review rev25). Then the next rule decides.
    let cpu_mem = iter(mem)
        .filter(|&t| raw.has_cpus(t))
        .fold(0u64, |m, t| m | 1 << t);
    if cpu_mem != 0 && iter(cpu_mem).all(|t| best_lat[t] == 0 && best_bw[t] == 0) {
        return false;
    }
    let min_lat = iter(mem)
        .map(|t| best_lat[t])
        .filter(|l| *l != 0)
        .min()
        .unwrap_or(0);
    let max_bw = iter(mem).map(|t| best_bw[t]).max().unwrap_or(0);
    let mut ids = [0usize; MAX_NODES];
    let mut keys = [0u64; MAX_NODES];
    let mut n = 0;
    for t in iter(mem) {
        let mut parts = 0u64;
        let mut sum = 0u64;
        if best_lat[t] != 0 && min_lat != 0 {
            sum += best_lat[t] as u64 * 1000 / min_lat as u64;
            parts += 1;
        }
        if best_bw[t] != 0 && max_bw != 0 {
            sum += max_bw as u64 * 1000 / best_bw[t] as u64;
            parts += 1;
        }
        keys[n] = if let Some(k) = sum.checked_div(parts) {
            k
        } else if raw.has_cpus(t) {
            1000
        } else {
            u64::MAX / 2
        };
        ids[n] = t;
        n += 1;
    }
    // Saturating: the key of a node without figures is `u64::MAX / 2`, and two of them must
    // compare equal (one slowest tier), not wrap (review rev25).
    group_sorted(raw, &mut ids, &mut keys, n, |first, k| {
        k.saturating_mul(10) > first.saturating_mul(13)
    });
    true
}

fn from_kernel_tiers(raw: &mut Raw) -> bool {
    let mem = raw.mem_nodes;
    if iter(mem).any(|n| raw.kernel_tier[n] == NO_TIER) {
        return false;
    }
    let mut ids = [0usize; MAX_NODES];
    let mut keys = [0u64; MAX_NODES];
    let mut n = 0;
    for t in iter(mem) {
        ids[n] = t;
        keys[n] = raw.kernel_tier[t] as u64;
        n += 1;
    }
    group_sorted(raw, &mut ids, &mut keys, n, |first, k| k != first);
    true
}

fn from_distances(raw: &mut Raw) {
    let mem = raw.mem_nodes;
    let cpu_nodes = raw.cpu_nodes();
    let mut ids = [0usize; MAX_NODES];
    let mut keys = [0u64; MAX_NODES];
    let mut n = 0;
    for t in iter(mem) {
        ids[n] = t;
        keys[n] = if cpu_nodes & (1 << t) != 0 || cpu_nodes == 0 {
            0
        } else {
            iter(cpu_nodes)
                .map(|c| raw.dist(c, t) as u64)
                .min()
                .unwrap_or(0)
        };
        n += 1;
    }
    group_sorted(raw, &mut ids, &mut keys, n, |first, k| k != first);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_override_parses() {
        let (t, n) = parse_tiers(b"0,1;2", 0b111).unwrap();
        assert_eq!((n, t[0], t[1]), (2, 0b011, 0b100));
        let (t, n) = parse_tiers(b"0", 0b111).unwrap();
        assert_eq!((n, t[0]), (1, 0b111), "unlisted nodes join the last tier");
        assert!(parse_tiers(b"0;0", 0b11).is_none());
        assert!(parse_tiers(b"0;5", 0b11).is_none());
        assert!(parse_tiers(b"0;", 0b11).is_none());
        assert!(parse_tiers(b"x", 0b11).is_none());
    }
}
