//! The heap: everything between a size and a pointer.
//!
//! Layers inside, from the bottom: `size_class` (sizes to bins), `remote` (the lock-free lists for
//! cross-thread frees), `delayed` (the owner's and the remote thread's ends of a delayed free), `error` (the report of
//! a free proven wrong, and `TIERALLOC_ON_ERROR`),
//! `list` (locked segment lists: pools, abandoned lists), `claim` (the huge registry's claimable
//! slots), `heaps` (the registry's list of live heaps), `atfork` (the fork handlers' lock order and
//! the child's resets of the lock-free words), `wake` (the purger's sleep and wake-up handshake),
//! `segment` (4 MiB segments, slices, pages, pools;
//! `segment/map.rs` the segment map), `page` (free lists inside a page), `trim` (giving back the
//! all-free OS pages of sparse pages), `huge` (objects with a
//! segment of their own, and the per-thread cache of freed ones), `route` (the tier routing state
//! and node choice, which `tier` sets) and `thread` (the thread-local heap, one file per job in
//! `thread/`: `tls`, `registry`, `bins`, `alloc`, `slices`, `large`, `node`, `free`, `tick`,
//! `counters`, `fork`). Nothing here allocates through the global allocator; everything comes from
//! `sys::os`. In the crate's layers (tests/layers.rs) the heap sits above `sync`, `sys` and
//! `topology`, which it may touch, with `init` (start-up, run from `thread::registry`) and `stats`
//! in its layer; nothing here touches `placed`, `tier` or anything above.

pub(crate) mod atfork;
pub(crate) mod claim;
pub(crate) mod delayed;
pub(crate) mod error;
pub(crate) mod gate;
pub(crate) mod heaps;
pub(crate) mod huge;
pub(crate) mod list;
pub(crate) mod page;
#[doc(hidden)]
pub mod probe;
pub mod remote;
pub(crate) mod route;
#[cfg(feature = "secure")]
pub(crate) mod secure;
pub(crate) mod segment;
pub mod size_class;
pub(crate) mod thread;
pub(crate) mod trim;
pub(crate) mod wake;
