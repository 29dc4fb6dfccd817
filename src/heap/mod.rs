//! The heap: everything between a size and a pointer.
//!
//! Layers inside, from the bottom: `size_class` (sizes to bins), `remote` (the lock-free lists
//! for cross-thread frees), `delayed` (the owner's and the remote thread's ends of a delayed
//! free), `list` (locked segment lists: pools, abandoned lists), `claim` (the huge registry's
//! claimable slots), `segment` (4 MiB segments, slices, pages, pools), `page` (free
//! lists inside a page), `thread` (the thread-local heap: fast paths, slow paths, thread exit,
//! purging) and `huge` (objects with a segment of their own). Nothing here allocates through
//! the global allocator; everything comes from `sys::os`.

pub(crate) mod claim;
pub(crate) mod delayed;
pub(crate) mod huge;
pub(crate) mod list;
pub(crate) mod page;
#[doc(hidden)]
pub mod probe;
pub mod remote;
pub(crate) mod route;
pub(crate) mod segment;
pub mod size_class;
pub(crate) mod thread;
