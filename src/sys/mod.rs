//! The only door to the kernel.
//!
//! Owns: every system call the crate makes for memory (`os`), for placement (`numa`) and for
//! the few process facts the allocator needs (time, stderr: `os`; the environment: `env`),
//! and the test-only failures injected into those calls (`fault`, feature `fault-injection`).
//! Layers above never call `libc` for memory themselves. Nothing in here allocates, and
//! nothing in here reads a layer above: what `numa` must know of the machine (simulated
//! nodes, the nodes with memory) the topology tells it once it has discovered the machine.
//! May touch: `sync` only.

pub(crate) mod env;
pub(crate) mod fault;
pub(crate) mod numa;
pub(crate) mod os;
