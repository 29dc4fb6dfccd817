//! The only door to the kernel.
//!
//! Owns: every system call the crate makes for memory (`os`), for placement (`numa`) and for
//! the few process facts the allocator needs (time, stderr, environment). Layers above never
//! call `libc` for memory themselves. Nothing in here allocates.

pub(crate) mod numa;
pub(crate) mod os;
