//! NUMA system calls: binding a range to a node (or interleaving it over several), asking
//! which node a page is on, moving pages (one batched helper for every caller), which CPU and
//! node the calling thread runs on, and setting a thread's CPU affinity.
//!
//! Owns: the raw syscalls (mbind, get_mempolicy, move_pages, getcpu, sched_setaffinity), made
//! with `libc::syscall` (no libnuma), the process-wide switch that turns binding off, the far
//! policy (TIERALLOC_FAR_POLICY: which memory policy binds the far tiers' nodes, and, under
//! `preferred`, handing fresh far mappings back to the default policy once faulted in), and the
//! two facts of the machine the calls need, which `topology::discover` hands down once it
//! has discovered the machine ([`set_machine`]): whether the nodes are simulated, and which
//! nodes have memory. May touch: `sys::os` (the page size, madvise) and `sync`. Everything
//! the allocator calls here is allocation-free: node masks are fixed arrays on the stack.
//! Only [`pages_on_nodes`] (a public diagnostic, never called by the allocator) allocates.

use crate::sync::{AtomicBool, Ordering};
use core::sync::atomic::{AtomicU64, AtomicU8};
use std::io;

/// Whether fresh mappings are bound to their node (TIERALLOC_NUMA=off clears it).
pub(crate) static BIND_ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether the far tiers' memory is placed with MPOL_PREFERRED and, for fresh segments and huge
/// blocks, then left on the default policy (TIERALLOC_FAR_POLICY=preferred: the kernel may
/// move and promote it, [`let_kernel_promote`]) instead of MPOL_BIND (the default: strict).
/// Set by `init`.
static FAR_PREFERRED: AtomicBool = AtomicBool::new(false);
/// The nodes of the tiers slower than the fastest (bit n: node n) that the far policy applies
/// to; set by `init` with the policy.
static FAR_NODES: AtomicU64 = AtomicU64::new(0);

/// Sets the far policy: with `preferred`, the nodes of `far_nodes` (bit n: node n) are bound
/// with MPOL_PREFERRED from now on (segments, huge objects and moves made later), the others
/// with MPOL_BIND as always. Called once by `init` at start-up, before any segment is mapped.
pub(crate) fn set_far_policy(preferred: bool, far_nodes: u64) {
    FAR_NODES.store(far_nodes, Ordering::Relaxed);
    FAR_PREFERRED.store(preferred, Ordering::Relaxed);
}

/// Whether the far policy is `preferred`.
pub(crate) fn far_preferred() -> bool {
    FAR_PREFERRED.load(Ordering::Relaxed)
}

/// The policy that binds memory to `node`: MPOL_PREFERRED for a far node under the
/// `preferred` far policy, MPOL_BIND otherwise.
fn policy_for(node: u32, far_nodes: u64, preferred: bool) -> Policy {
    if preferred && node < 64 && far_nodes & (1 << node) != 0 {
        Policy::Preferred
    } else {
        Policy::Bind
    }
}

/// [`policy_for`] under the process's far policy.
fn node_policy(node: u32) -> Policy {
    policy_for(
        node,
        FAR_NODES.load(Ordering::Relaxed),
        FAR_PREFERRED.load(Ordering::Relaxed),
    )
}

/// Whether the nodes are simulated (TIERALLOC_SIMULATE_NODES), as `topology::discover` found.
static SIMULATED: AtomicBool = AtomicBool::new(false);
/// The nodes with memory, as `topology::discover` found (0 until then: unknown).
static MEM_NODES: AtomicU64 = AtomicU64::new(0);

/// Tells this layer what the topology discovered: whether the nodes are simulated and which
/// nodes have memory. Called once, by `topology::discover`, before it publishes the machine;
/// every caller that binds or moves memory to a node has asked the topology for that node
/// first, so it sees these.
pub(crate) fn set_machine(simulated: bool, mem_nodes: u64) {
    SIMULATED.store(simulated, Ordering::Relaxed);
    MEM_NODES.store(mem_nodes, Ordering::Relaxed);
}

/// Bits in a node mask handed to the kernel (more than any kernel's MAX_NUMNODES today).
pub(crate) const MASK_BITS: usize = 1024;
/// A node mask as the kernel reads it: `MASK_BITS` bits in unsigned longs.
pub(crate) type NodeMask = [libc::c_ulong; MASK_BITS / 64];

const MPOL_DEFAULT: libc::c_int = 0;
const MPOL_PREFERRED: libc::c_int = 1;
const MPOL_BIND: libc::c_int = 2;
const MPOL_INTERLEAVE: libc::c_int = 3;
const MPOL_WEIGHTED_INTERLEAVE: libc::c_int = 6;
/// mbind flag: move pages that are already there (used by demotion, issue 4).
pub(crate) const MPOL_MF_MOVE: libc::c_uint = 2;
const MPOL_F_MEMS_ALLOWED: libc::c_ulong = 4;
/// get_mempolicy flag: the policy of the mapping at an address.
#[cfg(test)]
const MPOL_F_ADDR: libc::c_ulong = 2;

/// A memory policy for a range.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Policy {
    /// Only the given nodes; allocation fails rather than spill elsewhere (strict).
    Bind,
    /// The given node first, others when it is full; the kernel may move the pages (the far
    /// policy `preferred`, `Placed::preferred`).
    Preferred,
    /// Page by page round robin over the given nodes.
    Interleave,
    /// Round robin weighted by /sys/kernel/mm/mempolicy/weighted_interleave (Linux 6.9+).
    WeightedInterleave,
    /// No policy of the range's own (the thread's, by default the local node); the only one
    /// under which NUMA balancing promotes pages from a slower tier ([`let_kernel_promote`]).
    Default,
}

impl Policy {
    fn mode(self) -> libc::c_int {
        match self {
            Policy::Bind => MPOL_BIND,
            Policy::Preferred => MPOL_PREFERRED,
            Policy::Interleave => MPOL_INTERLEAVE,
            Policy::WeightedInterleave => MPOL_WEIGHTED_INTERLEAVE,
            Policy::Default => MPOL_DEFAULT,
        }
    }
}

/// A node mask with exactly the nodes of `nodes` (a 64-bit set of node ids below 64).
pub(crate) fn mask_of(nodes: u64) -> NodeMask {
    let mut m: NodeMask = [0; MASK_BITS / 64];
    m[0] = nodes as libc::c_ulong;
    m
}

/// Whether the nodes are simulated (TIERALLOC_SIMULATE_NODES): the kernel's binding calls are
/// then skipped and treated as successful.
#[inline]
pub(crate) fn simulated() -> bool {
    SIMULATED.load(Ordering::Relaxed)
}

/// Applies `policy` over `nodes` to `[p, p+len)` with mbind `flags`. `Err(errno)` when the
/// kernel refuses. Allocation-free. With simulated nodes the call is skipped and succeeds
/// (memory stays where the kernel puts it: the machine's one real node).
pub(crate) fn mbind(
    p: *mut u8,
    len: usize,
    policy: Policy,
    nodes: &NodeMask,
    flags: libc::c_uint,
) -> Result<(), i32> {
    // An injected refusal (tests only) also with simulated nodes; errno kept, as for the
    // kernel's refusal below.
    if super::os::keeping_errno(|| super::fault::fails(super::fault::Kind::Bind)) {
        return Err(super::fault::Kind::Bind.errno());
    }
    if simulated() {
        return Ok(());
    }
    mbind_raw(p, len, policy, nodes, flags)
}

/// [`mbind`] made even with simulated nodes.
fn mbind_raw(
    p: *mut u8,
    len: usize,
    policy: Policy,
    nodes: &NodeMask,
    flags: libc::c_uint,
) -> Result<(), i32> {
    // The refusal is returned, not left in errno: a segment's binding back to its node runs
    // inside C's `free` (`Segment::free_page` of a moved page), which must keep errno.
    super::os::keeping_errno(|| {
        // SAFETY: mbind only reads `nodes` (MASK_BITS bits; the kernel reads maxnode - 1
        // bits) and changes the policy of a range the caller owns; it never touches memory
        // contents.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                p as libc::c_ulong,
                len as libc::c_ulong,
                policy.mode() as libc::c_ulong,
                nodes.as_ptr(),
                (MASK_BITS + 1) as libc::c_ulong,
                flags as libc::c_ulong,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    })
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

/// Binds `[p, p+len)` to `node` before its first touch: MPOL_BIND (strict: the kernel never
/// places these pages elsewhere), or MPOL_PREFERRED for a far node under the far policy
/// `preferred`. Returns false if the kernel refused (no NUMA support, node not allowed) or
/// binding is off (TIERALLOC_NUMA=off).
pub(crate) fn bind(p: *mut u8, len: usize, node: u32) -> bool {
    if !BIND_ENABLED.load(Ordering::Relaxed) || node as usize >= MASK_BITS {
        return false;
    }
    let mem = MEM_NODES.load(Ordering::Relaxed);
    if mem == 1 << node {
        // The only node with memory: every page lands there anyway, and the system call
        // (one per segment mapped) would only cost time.
        return true;
    }
    let mut m: NodeMask = [0; MASK_BITS / 64];
    m[node as usize / 64] |= 1 << (node % 64);
    mbind(p, len, node_policy(node), &m, 0).is_ok()
}

/// madvise advice: fault every page of a range in, writable (Linux 5.14+).
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Under the far policy `preferred`, makes the far memory of a fresh mapping `[p, p+len)`
/// (just bound to `node` by [`bind`], untouched) one the kernel's tiering may promote: its
/// pages are faulted in now, on `node` (MADV_POPULATE_WRITE under the MPOL_PREFERRED that
/// `bind` set), and the range then gets the default policy back, without MPOL_MF_MOVE, so
/// the pages stay where they are. NUMA balancing promotes pages of default-policy ranges
/// only: a range whose policy names the far node alone gives `mpol_misplaced` no other
/// target. Returns true when that was done; false (nothing changed) for any other node or
/// policy, with simulated nodes, or when the kernel refused the populate (before 5.14, or
/// no memory): the range then keeps MPOL_PREFERRED (placed far, not promotable). Costs the
/// range's pages in resident memory at once. Pages faulted in later inside the range (after
/// a purge gave them back) land where the faulting thread runs. Allocation-free; called at
/// mapping time only (segments and huge blocks), never on the allocation fast path.
pub(crate) fn let_kernel_promote(p: *mut u8, len: usize, node: u32) -> bool {
    node_policy(node) == Policy::Preferred && populate_then_default(p, len, node)
}

/// The second half of [`let_kernel_promote`], whatever the far policy (`Placed::preferred`
/// mappings, bound to `node` with MPOL_PREFERRED by [`bind_with`]): fault the range in, then
/// give it the default policy back. False (nothing changed) with binding off, simulated
/// nodes, a machine whose memory is all on `node`, or a refused populate.
pub(crate) fn populate_then_default(p: *mut u8, len: usize, node: u32) -> bool {
    if !BIND_ENABLED.load(Ordering::Relaxed)
        || simulated()
        || MEM_NODES.load(Ordering::Relaxed) == 1 << node
    {
        return false;
    }
    // SAFETY: advice on a fresh private mapping of the caller's: it only faults in zeroed
    // pages (contents unchanged); a refusal changes nothing.
    if super::fault::fails(super::fault::Kind::Advise) {
        return false;
    }
    // SAFETY: as above.
    let r = unsafe { libc::madvise(p as *mut libc::c_void, len, MADV_POPULATE_WRITE) };
    if r != 0 {
        return false;
    }
    mbind(p, len, Policy::Default, &[0; MASK_BITS / 64], 0).is_ok()
}

/// Places `[p, p+len)` (a fresh mapping of the caller's) on `node` with `policy` (Bind or
/// Preferred), whatever the far policy: `Placed::bound` and `Placed::preferred` mappings.
/// Unlike [`bind`] this ignores TIERALLOC_NUMA: it serves explicit requests only.
pub(crate) fn bind_with(p: *mut u8, len: usize, node: u32, policy: Policy) -> Result<(), i32> {
    if node as usize >= MASK_BITS {
        return Err(libc::EINVAL);
    }
    let mut m: NodeMask = [0; MASK_BITS / 64];
    m[node as usize / 64] |= 1 << (node % 64);
    mbind(p, len, policy, &m, 0)
}

/// The memory policy mode of the page at `p` (get_mempolicy with MPOL_F_ADDR: MPOL_BIND is
/// 2, MPOL_PREFERRED 1, the default 0), or the kernel's errno. Allocation-free.
#[cfg(test)]
pub(crate) fn policy_at(p: *const u8) -> Result<i32, i32> {
    let mut mode: libc::c_int = -1;
    let mut m: NodeMask = [0; MASK_BITS / 64];
    // SAFETY: the kernel writes one int into `mode` and at most maxnode - 1 bits into `m`;
    // with MPOL_F_ADDR it only looks up the policy of the mapping holding `p`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            m.as_mut_ptr(),
            (MASK_BITS + 1) as libc::c_ulong,
            p as libc::c_ulong,
            MPOL_F_ADDR,
        )
    };
    if r == 0 {
        Ok(mode)
    } else {
        Err(errno())
    }
}

/// Interleaves `[p, p+len)` page by page over `nodes` (node ids below 64) before its first
/// touch. Unlike [`bind`] this ignores TIERALLOC_NUMA: it serves explicit requests only.
/// Transparent huge pages are turned off for the range first: a 2 MiB page would put 512
/// pages on one node.
pub(crate) fn interleave(p: *mut u8, len: usize, nodes: u64) -> Result<(), i32> {
    super::os::no_huge_pages(p, len);
    mbind(p, len, Policy::Interleave, &mask_of(nodes), 0)
}

const WI_UNKNOWN: u8 = 0;
const WI_YES: u8 = 1;
const WI_NO: u8 = 2;
static WEIGHTED_INTERLEAVE: AtomicU8 = AtomicU8::new(WI_UNKNOWN);

/// Whether the kernel has MPOL_WEIGHTED_INTERLEAVE (Linux 6.9+), found by trying it once on a
/// scratch page and remembered. Allocation-free.
pub fn weighted_interleave_supported() -> bool {
    match WEIGHTED_INTERLEAVE.load(Ordering::Relaxed) {
        WI_YES => return true,
        WI_NO => return false,
        _ => {}
    }
    let page = crate::sys::os::OS_PAGE;
    // SAFETY: a fresh anonymous mapping with no hint; checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    // The real kernel's answer, also with simulated nodes.
    let ok = mbind_raw(
        p as *mut u8,
        page,
        Policy::WeightedInterleave,
        &mask_of(1),
        0,
    )
    .is_ok();
    // SAFETY: the page is ours, untouched, and unknown to anyone else.
    unsafe { libc::munmap(p, page) };
    WEIGHTED_INTERLEAVE.store(if ok { WI_YES } else { WI_NO }, Ordering::Relaxed);
    ok
}

/// Moves the pages of `[p, p+len)` (already touched or not) to `node` keeping their addresses
/// and contents (mbind with MPOL_MF_MOVE), and binds the range there for the future, with the
/// policy [`bind`] gives that node (MPOL_BIND, or MPOL_PREFERRED for a far node under the far
/// policy `preferred`). Allocation-free.
pub(crate) fn move_range(p: *mut u8, len: usize, node: u32) -> Result<(), i32> {
    if node as usize >= MASK_BITS {
        return Err(libc::EINVAL);
    }
    let mut m: NodeMask = [0; MASK_BITS / 64];
    m[node as usize / 64] |= 1 << (node % 64);
    mbind(p, len, node_policy(node), &m, MPOL_MF_MOVE)
}

/// move_pages(2) on the calling process: with `nodes` None, writes into `status` the node of
/// each page in `pages` (or a negative errno: -ENOENT for a page not yet touched); with
/// `nodes`, moves each page to its node. Allocation-free. With simulated nodes a move is
/// skipped and reported done (each status is the node asked for); a query still asks the
/// kernel, so it reports the real node.
pub(crate) fn move_pages(
    pages: &[*mut libc::c_void],
    nodes: Option<&[libc::c_int]>,
    status: &mut [libc::c_int],
) -> Result<(), i32> {
    if status.len() < pages.len() || nodes.is_some_and(|n| n.len() < pages.len()) {
        return Err(libc::EINVAL);
    }
    // An injected refusal (tests only), of a query or a move, also with simulated nodes.
    if super::fault::fails(super::fault::Kind::MovePages) {
        return Err(super::fault::Kind::MovePages.errno());
    }
    if let Some(n) = nodes {
        if simulated() {
            status[..pages.len()].copy_from_slice(&n[..pages.len()]);
            return Ok(());
        }
    }
    // SAFETY: `pages`, `nodes` and `status` hold at least `pages.len()` entries; the kernel
    // reads the first two and writes the third within that count.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0 as libc::pid_t,
            pages.len() as libc::c_ulong,
            pages.as_ptr(),
            nodes.map_or(core::ptr::null(), |n| n.as_ptr()),
            status.as_mut_ptr(),
            0 as libc::c_int,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Pages per move_pages(2) call in [`move_pages_batched`] (the arrays live on the stack).
const BATCH: usize = 512;

/// move_pages(2) over the `pages` OS pages from `start`, in batches of arrays on the stack
/// (allocation-free): with `node_of` None, asks where each page is; with `node_of`, moves
/// page `i` to `node_of(i)` (called once per page, in order, just before the batch holding
/// it is moved: a caller may touch the page there). Then calls `each(i, status)` for every
/// page of the batch, in order: the page's node, or a negative errno (-ENOENT: never
/// touched). The first error, of the kernel or of `each`, ends the walk.
pub(crate) fn move_pages_batched(
    start: usize,
    pages: usize,
    mut node_of: Option<&mut dyn FnMut(usize) -> libc::c_int>,
    mut each: impl FnMut(usize, libc::c_int) -> Result<(), i32>,
) -> Result<(), i32> {
    let page = super::os::OS_PAGE;
    let mut addrs = [core::ptr::null_mut::<libc::c_void>(); BATCH];
    let mut nodes = [0 as libc::c_int; BATCH];
    let mut status = [0 as libc::c_int; BATCH];
    let mut i = 0;
    while i < pages {
        let k = (pages - i).min(BATCH);
        for j in 0..k {
            addrs[j] = (start + (i + j) * page) as *mut libc::c_void;
            if let Some(f) = node_of.as_mut() {
                nodes[j] = f(i + j);
            }
        }
        let to = node_of.is_some().then_some(&nodes[..k]);
        move_pages(&addrs[..k], to, &mut status[..k])?;
        for (j, s) in status.iter().take(k).enumerate() {
            each(i + j, *s)?;
        }
        i += k;
    }
    Ok(())
}

/// The nodes this process may place memory on (get_mempolicy with MPOL_F_MEMS_ALLOWED: the
/// cpuset's Mems_allowed), as a set of node ids below 64. None if the kernel cannot say
/// (no NUMA support). Allocation-free.
pub(crate) fn mems_allowed() -> Option<u64> {
    let mut m: NodeMask = [0; MASK_BITS / 64];
    // SAFETY: the kernel writes at most maxnode - 1 bits into `m`, which holds MASK_BITS.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            core::ptr::null_mut::<libc::c_int>(),
            m.as_mut_ptr(),
            (MASK_BITS + 1) as libc::c_ulong,
            0 as libc::c_ulong,
            MPOL_F_MEMS_ALLOWED,
        )
    };
    if r == 0 {
        Some(m[0] as u64)
    } else {
        None
    }
}

/// The CPU and NUMA node the calling thread runs on, from getcpu(2). Allocation-free.
pub(crate) fn getcpu() -> Option<(u32, u32)> {
    let mut cpu: libc::c_uint = 0;
    let mut node: libc::c_uint = 0;
    // SAFETY: getcpu writes two c_uints through valid pointers to our stack; the third
    // argument (tcache) is unused by the kernel and may be null.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut libc::c_uint,
            &mut node as *mut libc::c_uint,
            core::ptr::null_mut::<libc::c_void>(),
        )
    };
    if r == 0 {
        Some((cpu, node))
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Public diagnostics (may allocate: never called by the allocator).

/// The NUMA node of every OS page of `[ptr, ptr+len)`, in order, from move_pages(2) with
/// `nodes = NULL`. An entry is the node id, or a negative errno for a page that has no node
/// (`-ENOENT`: never touched, `-EFAULT`: not mapped). The range is widened to whole pages.
///
/// With simulated nodes (`TIERALLOC_SIMULATE_NODES`) this still reports where the kernel
/// put the pages (the machine's real node), not the simulated node the allocator booked
/// them on: nothing was bound. `tieralloc::stats()` shows the simulated placement.
///
/// This is for tests and diagnostics: it allocates its result.
///
/// # Errors
/// The error move_pages(2) returned (ENOSYS on a kernel without NUMA).
pub fn pages_on_nodes(ptr: *const u8, len: usize) -> io::Result<Vec<i32>> {
    let page = crate::sys::os::OS_PAGE;
    let start = ptr as usize & !(page - 1);
    let end = (ptr as usize)
        .checked_add(len)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let n = (end - start).div_ceil(page);
    let mut out = Vec::with_capacity(n);
    move_pages_batched(start, n, None, |_, s| {
        out.push(s);
        Ok(())
    })
    .map_err(io::Error::from_raw_os_error)?;
    Ok(out)
}

/// Sets the calling thread's CPU affinity to the CPUs in `cpus` (a bit per CPU id).
///
/// # Errors
/// The OS error if sched_setaffinity refuses.
pub(crate) fn set_affinity(cpus: &[u64]) -> io::Result<()> {
    // SAFETY: the kernel reads `size_of_val(cpus)` bytes of the mask, which is that long;
    // pid 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            0 as libc::pid_t,
            core::mem::size_of_val(cpus),
            cpus.as_ptr(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::os;

    #[test]
    fn bind_to_node_zero_places_every_page_there() {
        let len = 64 * os::OS_PAGE;
        let p = os::map_aligned(len, os::OS_PAGE, None);
        assert!(!p.is_null());
        assert!(
            bind(p, len, 0),
            "binding to node 0 must work on any Linux machine"
        );
        // SAFETY: p is a fresh mapping of len bytes.
        unsafe { core::ptr::write_bytes(p, 1, len) };
        let nodes = pages_on_nodes(p, len).unwrap();
        assert_eq!(nodes.len(), 64);
        assert!(nodes.iter().all(|n| *n == 0), "{nodes:?}");
        // SAFETY: our mapping, no longer used.
        unsafe { os::unmap(p, len) };
    }

    #[test]
    fn untouched_pages_have_no_node_and_bad_nodes_are_refused() {
        let len = 4 * os::OS_PAGE;
        let p = os::map_aligned(len, os::OS_PAGE, None);
        assert!(!bind(p, len, 1000), "node 1000 exists nowhere");
        let nodes = pages_on_nodes(p, len).unwrap();
        assert!(nodes.iter().all(|n| *n == -libc::ENOENT), "{nodes:?}");
        // SAFETY: our mapping, no longer used.
        unsafe { os::unmap(p, len) };
    }

    #[test]
    fn the_far_policy_picks_the_mode_passed_to_mbind() {
        // Node 2 far, nodes 0 and 1 near.
        let far = 1 << 2;
        assert_eq!(policy_for(2, far, false), Policy::Bind);
        assert_eq!(policy_for(2, far, true), Policy::Preferred);
        assert_eq!(
            policy_for(0, far, true),
            Policy::Bind,
            "near nodes stay bound"
        );
        assert_eq!(policy_for(70, far, true), Policy::Bind);
        // The modes the kernel reads (linux/mempolicy.h).
        assert_eq!(Policy::Bind.mode(), 2);
        assert_eq!(Policy::Preferred.mode(), 1);
    }

    #[test]
    fn bind_with_sets_the_policy_the_kernel_reports() {
        for (policy, mode) in [(Policy::Preferred, 1), (Policy::Bind, 2)] {
            let len = 4 * os::OS_PAGE;
            let p = os::map_aligned(len, os::OS_PAGE, None);
            assert!(!p.is_null());
            assert_eq!(bind_with(p, len, 0, policy), Ok(()));
            assert_eq!(policy_at(p), Ok(mode), "{policy:?}");
            // SAFETY: our mapping, no longer used.
            unsafe { os::unmap(p, len) };
        }
    }

    #[test]
    fn mems_allowed_holds_node_zero() {
        assert!(mems_allowed().unwrap_or(1) & 1 != 0);
    }
}
