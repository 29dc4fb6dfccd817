//! The far policy in the VM (issue 17 item 4), in children of the probe started with
//! `TIERALLOC_FAR_POLICY=bind` and `=preferred`: far memory (a far scope's blocks, cold blocks,
//! `Placed::far().preferred()` and `.bound()` mappings) is on node 2 with the memory policy
//! get_mempolicy reports (the default, 0, for the heap's far memory under `preferred` and for
//! the `preferred()` mapping); then the kernel's NUMA balancing in its memory-tiering mode runs
//! while a thread on node 0 touches every block (under `preferred` at least half of the heap's
//! far memory must be promoted to node 0, under `bind` none of it; at least half of the
//! `preferred()` mapping under either, none of the `bound()` one), and move_pages(2) moves
//! each to node 0: what moved is counted, by census.

use super::{page_census, policy_at, warm_up_on_cpu0};
use crate::{all_on, Checks, PAGE};
use allocator_api2::vec::Vec as PVec;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tieralloc::Placed;

const MPOL_DEFAULT: i32 = 0;
const MPOL_PREFERRED: i32 = 1;
const MPOL_BIND: i32 = 2;
const MPOL_PREFERRED_MANY: i32 = 5;
const MPOL_F_NUMA_BALANCING: i32 = 1 << 13;

fn write(path: &str, v: &str) -> bool {
    std::fs::write(path, v).is_ok()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("({e})"))
}

/// Moves every page of `ranges` to `node` with move_pages(2); returns the per-page statuses
/// counted (a node, or a negative errno).
fn move_to(ranges: &[(*const u8, usize)], node: i32) -> BTreeMap<i32, usize> {
    let mut pages: Vec<usize> = ranges
        .iter()
        .flat_map(|&(p, len)| (p as usize / PAGE)..=((p as usize + len.max(1) - 1) / PAGE))
        .collect();
    pages.sort_unstable();
    pages.dedup();
    let ptrs: Vec<*mut libc::c_void> = pages.iter().map(|p| (p * PAGE) as *mut _).collect();
    let nodes = vec![node; ptrs.len()];
    let mut status = vec![i32::MIN; ptrs.len()];
    // SAFETY: move_pages reads `count` pointers and nodes and writes `count` statuses, all in
    // vectors of that length we own; the pages are our own live memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            ptrs.len() as libc::c_ulong,
            ptrs.as_ptr(),
            nodes.as_ptr(),
            status.as_mut_ptr(),
            2 as libc::c_int, // MPOL_MF_MOVE
        )
    };
    let mut m = BTreeMap::new();
    if r < 0 {
        m.insert(-100_000, ptrs.len());
        return m;
    }
    for s in status {
        *m.entry(s).or_insert(0) += 1;
    }
    m
}

/// A raw mapping of `len` bytes with a policy of its own (for the experiment rows).
struct Raw {
    name: &'static str,
    p: *mut u8,
    len: usize,
    mbind: Result<(), i32>,
}

fn raw(name: &'static str, len: usize, mode: Option<i32>) -> Raw {
    // SAFETY: a fresh private anonymous mapping, checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: our mapping; no huge pages, so that pages are counted one by one.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    let mbind = match mode {
        None => Ok(()),
        Some(mode) => {
            let mask: [libc::c_ulong; 16] = {
                let mut m = [0; 16];
                m[0] = 1 << 2;
                m
            };
            // SAFETY: mbind reads the mask (1024 bits) and sets our mapping's policy.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_mbind,
                    p,
                    len as libc::c_ulong,
                    mode as libc::c_ulong,
                    mask.as_ptr(),
                    1025 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            };
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
            }
        }
    };
    let p = p as *mut u8;
    // SAFETY: our mapping of `len` bytes: first touch.
    unsafe { std::ptr::write_bytes(p, 0x11, len) };
    let mbind = if name == "raw-preferred-then-default" {
        let mask = [0 as libc::c_ulong; 16];
        // SAFETY: mbind sets our mapping's policy back to the default; no flags: nothing moves.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                p,
                len as libc::c_ulong,
                0 as libc::c_ulong,
                mask.as_ptr(),
                1025 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if r == 0 {
            mbind
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    } else {
        mbind
    };
    Raw {
        name,
        p,
        len,
        mbind,
    }
}

/// Touches one byte of every page of `ranges` (read and write), `rounds` times.
fn touch_loop(ranges: &[(usize, usize)], rounds: u64) -> u64 {
    for _ in 0..rounds {
        for &(p, len) in ranges {
            let mut off = 0;
            while off < len {
                // SAFETY: live memory of ours of `len` bytes.
                unsafe {
                    let q = (p + off) as *mut u8;
                    q.write_volatile(q.read_volatile().wrapping_add(1));
                }
                off += PAGE;
            }
        }
    }
    rounds
}

/// Blocks checked together: a name, their ranges, and the policy mode they should have (-1:
/// not checked).
type Group = (&'static str, Vec<(*const u8, usize)>, i32);

/// The child of one far policy (`policy`: "bind" or "preferred", as TIERALLOC_FAR_POLICY).
pub fn far_policy(c: &mut Checks, policy: &str) {
    // NUMA balancing off until the tiering check below turns it on: the VM's kernel starts
    // with it on (Debian's CONFIG_NUMA_BALANCING_DEFAULT_ENABLED), and its scanner, once it
    // starts (a second into the process), moves default-policy pages (the `preferred` far
    // memory) to the node of the thread touching them. On a slow VM that began before the
    // placement census: the far scope's blocks read {0: 496, 2: 16} under a loaded host,
    // {2: 512} on a quiet one. Put back as it was at the end.
    let nb_before = read("/proc/sys/kernel/numa_balancing");
    write("/proc/sys/kernel/numa_balancing", "0");
    warm_up_on_cpu0();
    let preferred = policy == "preferred";
    // Under `preferred` the heap's far memory is faulted in on the far node and then given
    // the default policy back (so that the kernel's tiering may promote it).
    let env_mode = if preferred { MPOL_DEFAULT } else { MPOL_BIND };
    let far = Placed::far().expect("a far tier");
    // The heap's far memory: a far scope's blocks and cold blocks (what hints allocate).
    let scoped: Vec<Vec<u8>> = {
        let _g = tieralloc::place(far);
        (0..8).map(|i| vec![i as u8 + 1; 256 << 10]).collect()
    };
    let mut cold: PVec<u8, Placed> = PVec::with_capacity_in(1 << 20, Placed::cold());
    cold.resize(1 << 20, 0xC0);
    // Mappings of their own, with the handle's policy whatever the variable says.
    let mut pref: PVec<u8, Placed> = PVec::with_capacity_in(1 << 20, far.preferred());
    pref.resize(1 << 20, 0x70);
    let mut bound: PVec<u8, Placed> = PVec::with_capacity_in(1 << 20, far.bound());
    bound.resize(1 << 20, 0xB0);
    let mut groups: Vec<Group> = vec![
        (
            "scope",
            scoped.iter().map(|v| (v.as_ptr(), v.len())).collect(),
            env_mode,
        ),
        ("cold", vec![(cold.as_ptr(), cold.len())], env_mode),
        (
            "preferred()",
            vec![(pref.as_ptr(), pref.len())],
            MPOL_DEFAULT,
        ),
        ("bound()", vec![(bound.as_ptr(), bound.len())], MPOL_BIND),
    ];
    // Raw mappings: the kernel's behaviour for each policy, and a control with the default
    // policy (moved to node 2 by move_pages) that NUMA balancing may promote.
    let raws = [
        raw("raw-default", 1 << 20, None),
        raw("raw-preferred", 1 << 20, Some(MPOL_PREFERRED)),
        raw("raw-bind", 1 << 20, Some(MPOL_BIND)),
        raw(
            "raw-preferred+nb",
            1 << 20,
            Some(MPOL_PREFERRED | MPOL_F_NUMA_BALANCING),
        ),
        raw(
            "raw-preferred-many+nb",
            1 << 20,
            Some(MPOL_PREFERRED_MANY | MPOL_F_NUMA_BALANCING),
        ),
        raw(
            "raw-bind+nb",
            1 << 20,
            Some(MPOL_BIND | MPOL_F_NUMA_BALANCING),
        ),
        raw("raw-preferred-many", 1 << 20, Some(MPOL_PREFERRED_MANY)),
        raw("raw-preferred-then-default", 1 << 20, Some(MPOL_PREFERRED)),
    ];
    let moved = move_to(&[(raws[0].p, raws[0].len)], 2);
    println!("info raw-default moved to node 2: {moved:?}");
    for r in &raws {
        groups.push((r.name, vec![(r.p as *const u8, r.len)], -1));
        println!(
            "info {}: mbind {:?}, policy {:?}, pages {:?}",
            r.name,
            r.mbind,
            policy_at(r.p as usize),
            page_census(&[(r.p, r.len)])
        );
    }
    let mut all_far = true;
    let mut modes_ok = true;
    let mut detail = String::new();
    for (name, ranges, mode) in &groups[..4] {
        let m = page_census(ranges);
        let got = policy_at(ranges[0].0 as usize).map(|(m, _)| m);
        all_far &= all_on(&m, 2);
        modes_ok &= got == Some(*mode);
        detail += &format!("{name} {m:?} mode {got:?}; ");
    }
    c.check(
        &format!("far-policy-{policy}-on-node-2"),
        all_far && modes_ok,
        format!("TIERALLOC_FAR_POLICY={policy}: {detail}"),
    );
    // The kernel's tiering: NUMA balancing in memory-tiering mode, with faster scans, while
    // this thread (on node 0) touches every block; until the control (default policy, moved
    // to node 2) is all back on node 0, which shows the kernel promoting (at most 60 s).
    let nb = write("/proc/sys/kernel/numa_balancing", "2");
    let dbg = "/sys/kernel/debug/sched/numa_balancing";
    for (k, v) in [
        ("scan_delay_ms", "50"),
        ("scan_period_min_ms", "100"),
        ("scan_period_max_ms", "200"),
    ] {
        write(&format!("{dbg}/{k}"), v);
    }
    let flat: Vec<(usize, usize)> = groups
        .iter()
        .flat_map(|(_, r, _)| r.iter().map(|&(p, l)| (p as usize, l)))
        .collect();
    let control = &groups[4].1;
    // The control must start on node 2, or its "promotion" proves nothing.
    let control_far = all_on(&page_census(control), 2);
    let seq0 = scan_seq();
    let t0 = Instant::now();
    let mut rounds = 0;
    let mut promoted = false;
    // The heap's far memory (a far scope's blocks and cold blocks): under `preferred` at
    // least half of its pages must be promoted to node 0, under `bind` none.
    let heap_far: Vec<(*const u8, usize)> = groups[..2]
        .iter()
        .flat_map(|(_, r, _)| r.iter().copied())
        .collect();
    let heap_share = |m: &BTreeMap<i32, usize>| {
        let all: usize = m.values().sum();
        m.get(&0).copied().unwrap_or(0) * 100 / all.max(1)
    };
    // Until the control is promoted and the scanner has been over the whole address space
    // twice since (so it has seen every range, and passed over those it leaves alone); under
    // `preferred` also until half of the heap's far memory is promoted.
    // The `preferred()` handle's mapping (populated, then the default policy) under either
    // policy: at least half of it promoted too.
    let pref_map = groups[2].1.clone();
    while !(promoted
        && scan_seq() >= seq0 + 2
        && (!preferred || heap_share(&page_census(&heap_far)) >= 50)
        && heap_share(&page_census(&pref_map)) >= 50)
        && t0.elapsed() < Duration::from_secs(60)
    {
        rounds += touch_loop(&flat, 500);
        promoted = all_on(&page_census(control), 0);
    }
    let passes = scan_seq() - seq0;
    let took = t0.elapsed();
    write("/proc/sys/kernel/numa_balancing", &nb_before);
    let mut stayed = true;
    let mut detail = String::new();
    for (i, (name, ranges, _)) in groups.iter().enumerate() {
        let m = page_census(ranges);
        // The heap's far memory under `preferred`, and the `preferred()` handle's mapping
        // (default policy once populated) under either, are checked by share below; the
        // `bound()` mapping (MPOL_BIND) stays on node 2 under either policy.
        let heap_preferred = (preferred && i < 2) || i == 2;
        if !name.starts_with("raw-") && !heap_preferred {
            stayed &= all_on(&m, 2);
        }
        detail += &format!("{name} {m:?}; ");
    }
    let heap_census = page_census(&heap_far);
    let share = heap_share(&heap_census);
    let heap_ok = if preferred {
        share >= 50
    } else {
        all_on(&heap_census, 2)
    };
    let pref_census = page_census(&pref_map);
    let pref_ok = heap_share(&pref_census) >= 50;
    let name = if preferred {
        "far-policy-preferred-kernel-tiering-promotes-it"
    } else {
        "far-policy-bind-kernel-tiering-leaves-it-on-node-2"
    };
    c.check(
        name,
        nb && control_far && promoted && passes >= 2 && stayed && heap_ok && pref_ok,
        format!(
            "numa_balancing 2 ({nb}), {rounds} rounds of touches on node 0 in {took:.1?}, \
             {passes} scan passes, control (default policy) on node 2 before: {control_far}, \
             promoted: {promoted}, heap's far memory on node 0: {share} % {heap_census:?}, \
             preferred() mapping {pref_census:?}: {detail}{}",
            vmstat()
        ),
    );
    // move_pages to node 0: the kernel moves pages whatever their policy.
    let mut all_moved = true;
    let mut detail = String::new();
    for (name, ranges, _) in &groups[..4] {
        let st = move_to(ranges, 0);
        // A page the kernel finds busy (-EBUSY) is tried once more.
        let retry = if st.keys().any(|&k| k < 0) {
            format!(", again {:?}", move_to(ranges, 0))
        } else {
            String::new()
        };
        let m = page_census(ranges);
        all_moved &= all_on(&m, 0);
        detail += &format!("{name}: statuses {st:?}{retry}, pages {m:?}; ");
    }
    c.check(
        &format!("far-policy-{policy}-move-pages-moves-it-to-node-0"),
        all_moved,
        detail,
    );
}

/// How many times NUMA balancing's scanner has been over the whole of this process's
/// address space (`mm->numa_scan_seq` in /proc/self/sched).
fn scan_seq() -> i64 {
    read("/proc/self/sched")
        .lines()
        .find(|l| l.contains("numa_scan_seq"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1000)
}

fn vmstat() -> String {
    read("/proc/vmstat")
        .lines()
        .filter(|l| l.starts_with("pgpromote_success") || l.starts_with("numa_hint_faults "))
        .collect::<Vec<_>>()
        .join(", ")
}
