//! Discovery of the running machine, once per process: the sysfs tree under /sys, the
//! cpuset's Mems_allowed, the environment's overrides (`TIERALLOC_SIMULATE_NODES`,
//! `TIERALLOC_NODES`, `TIERALLOC_TIERS`, `TIERALLOC_IGNORE_HMAT`), then the derived fields.
//!
//! Owns: the process-wide [`Raw`] behind [`get`] and [`Raw::finish`] (the derived fields of
//! any `Raw`, also one built from a fixture tree or hwloc). May touch: `topology::{raw,
//! sysfs, sim, tiers}` (to fill it), `sys::numa` (Mems_allowed; and it tells `sys::numa`
//! whether the nodes are simulated and which have memory), `sys::env` (getenv, warnings) and
//! `sync`. Nothing here allocates, panics or formats: the heap reaches it through
//! `topology::home::home_node`.

use super::raw::{iter, Raw, MAX_CPUS};
use super::{sim, sysfs, tiers};
use crate::sync::{once_begin, AtomicUsize, OnceStep, Ordering, ONCE_DONE, ONCE_UNINIT};
use crate::sys::env::{getenv, parse_bool, warn_bad};
use crate::sys::numa;
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;

impl Raw {
    /// Fills the derived fields: `allowed` from `env_nodes` (TIERALLOC_NODES), the tiers
    /// (TIERALLOC_TIERS in `env_tiers`), and the per-CPU home table.
    pub fn finish(&mut self, env_nodes: Option<&[u8]>, env_tiers: Option<&[u8]>) {
        if self.mems_allowed == 0 {
            self.mems_allowed = self.nodes;
        }
        let usable = self.mem_nodes & self.mems_allowed;
        let mut allowed = usable;
        if let Some(v) = env_nodes {
            let mut m = [0u64; 1];
            // Every node named exists and has memory (docs/tiers.md; review rev25: a node
            // without memory was dropped silently), and one of them is in Mems_allowed.
            if sysfs::parse_list(v, &mut m) && m[0] & usable != 0 && m[0] & !self.mem_nodes == 0 {
                allowed = m[0] & usable;
            } else {
                warn_bad(
                    b"TIERALLOC_NODES\0",
                    v,
                    "a node list such as 0,1 or 0-1 naming nodes of this machine with memory",
                );
            }
        }
        if allowed == 0 {
            // Nothing usable: the lowest node (not node 0, which may not exist).
            let any = if self.mem_nodes != 0 {
                self.mem_nodes
            } else {
                self.nodes
            };
            allowed = if usable != 0 {
                usable
            } else if any != 0 {
                any & any.wrapping_neg()
            } else {
                1
            };
        }
        self.allowed = allowed;
        tiers::derive(self, env_tiers);
        for n in iter(self.nodes) {
            let home = self.home_of_node(n as u32) as u8;
            for cpu in 0..MAX_CPUS {
                if self.cpus[n][cpu / 64] & (1 << (cpu % 64)) != 0 {
                    self.cpu_home[cpu] = home;
                }
            }
        }
    }
}

/// The instance: zero bytes until discovery makes it [`Raw::EMPTY`] and fills it
/// ([`Raw::empty_in_zeroed`]), so that it sits in `.bss` and only the pages discovery
/// writes are ever resident.
struct Global {
    raw: UnsafeCell<MaybeUninit<Raw>>,
}
// SAFETY: `raw` is written only by the one thread that moves STATE from UNINIT to RUNNING,
// and read only after STATE is DONE (Release/Acquire), after which nobody writes it.
unsafe impl Sync for Global {}

static GLOBAL: Global = Global {
    raw: UnsafeCell::new(MaybeUninit::zeroed()),
};
/// `sync::once_begin`'s state word for discovery.
static STATE: AtomicUsize = AtomicUsize::new(ONCE_UNINIT);

/// The machine, discovered on first call (from /sys, the environment and Mems_allowed).
/// Allocation-free; other threads calling meanwhile wait for the first (in a fork child whose
/// parent was discovering, the child's first caller discovers again).
pub(crate) fn get() -> &'static Raw {
    if STATE.load(Ordering::Acquire) != ONCE_DONE {
        init();
    }
    // SAFETY: STATE is DONE, so the instance is complete and never written again.
    unsafe { (*GLOBAL.raw.get()).assume_init_ref() }
}

#[cold]
fn init() {
    // Discovery allocates nothing, so the running thread is never us re-entering.
    if let OnceStep::Run { again } = once_begin(&STATE, || false) {
        let p = GLOBAL.raw.get();
        if again {
            // SAFETY: we are the runner (once_begin): nobody else reads or writes the
            // instance until we publish DONE; the parent's runner may have written part
            // of it before the fork, so it is zeroed again (all of it, this once).
            unsafe { ptr::write_bytes(p, 0, 1) };
        }
        // SAFETY: we are the runner: nobody else reads or writes the instance until we
        // publish DONE, and it is zero bytes (its initialiser's, or written just above).
        let raw = unsafe { Raw::empty_in_zeroed((*p).as_mut_ptr()) };
        sysfs::discover(b"/sys", true, raw);
        if let Some(m) = numa::mems_allowed() {
            if m & raw.nodes != 0 {
                raw.mems_allowed = m & raw.nodes;
            }
        }
        if let Some(v) = getenv(b"TIERALLOC_SIMULATE_NODES\0") {
            match sim::parse(v) {
                Some(spec) => sim::apply(raw, spec),
                None => warn_bad(b"TIERALLOC_SIMULATE_NODES\0", v, sim::EXPECTED),
            }
        }
        let nodes = getenv(b"TIERALLOC_NODES\0");
        let tiers = getenv(b"TIERALLOC_TIERS\0");
        if let Some(v) = getenv(b"TIERALLOC_IGNORE_HMAT\0") {
            match parse_bool(v) {
                Some(b) => raw.ignore_hmat = b,
                None => warn_bad(b"TIERALLOC_IGNORE_HMAT\0", v, "1 or 0"),
            }
        }
        raw.finish(nodes, tiers);
        // Before DONE: whoever binds or moves memory has called `get` for its node first.
        numa::set_machine(raw.simulated(), raw.mem_nodes);
        STATE.store(ONCE_DONE, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review rev25: with no node known to have memory, the fallback was node 0 whether or
    /// not it existed; it is the lowest node there is.
    #[test]
    fn with_nothing_usable_the_fallback_node_exists() {
        let mut raw = Box::new(Raw::EMPTY);
        raw.nodes = 0b110;
        raw.cpus[1][0] = 1;
        raw.finish(None, None);
        assert_eq!(raw.allowed, 0b010);
        assert_eq!(raw.cpu_home[0], 1);
    }

    /// A cpuset whose Mems_allowed leaves node 0 out: node 1 is the one allowed node, and
    /// node 0's CPUs draw from it.
    #[test]
    fn mems_allowed_without_node_0_homes_every_cpu_on_node_1() {
        let mut raw = Box::new(Raw::EMPTY);
        raw.nodes = 0b11;
        raw.mem_nodes = 0b11;
        raw.cpus[0][0] = 0b0011;
        raw.cpus[1][0] = 0b1100;
        raw.mems_allowed = 0b10;
        raw.finish(Some(b"0"), None);
        assert_eq!(
            raw.allowed, 0b10,
            "TIERALLOC_NODES=0 is outside the cpuset: refused"
        );
        assert_eq!(
            &raw.cpu_home[..5],
            &[1, 1, 1, 1, crate::topology::raw::NO_NODE]
        );
        assert_eq!((raw.n_tiers, raw.tiers[0]), (1, 0b11));
    }
}
