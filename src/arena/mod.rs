//! Arenas: [`Arena<T, A>`](Arena) (typed, runs Drop, resets for reuse), [`BumpCache`]
//! (request-scoped `bumpalo::Bump`s, per worker) and [`SlotArena<T, A>`](SlotArena)
//! (generational keys).
//!
//! Owns: the three arena kinds and their statistics.
//! May touch: only the allocator-api2 `Allocator` each arena is given, the global allocator, the
//! arenas' own data, and the public tier API (`tier`, `global::owns`) for `Arena::move_to_tier`.
//! Nothing in the allocator core: an arena is a client of an allocator, never part of one, so
//! it works the same on tieralloc, mimalloc or the system allocator.
//!
//! # Which one
//!
//! - Many short-lived values of one type that die together, maybe owning resources:
//!   [`Arena<T>`](Arena). Drop runs for each; `reset` keeps the chunks for the next request.
//! - Mixed-type scratch data of plain types for one request: [`BumpCache`]. Fastest, any type,
//!   bumpalo and allocator-api2 collections, but **no Drop** for values placed in it.
//! - Objects referred to from elsewhere (another task, a plugin, a graph) by a handle that must
//!   be `Copy + Send + 'static`: [`SlotArena<T>`](SlotArena) and its [`Key`].
//!
//! Placement: `Arena` and `SlotArena` take any allocator-api2 `Allocator + Clone` (default
//! `Global`, which on a tieralloc process means the calling thread's node); a `Placed` handle
//! (`Placed::node(n)`, `Placed::far()`) plugs in there unchanged. The bump cache's chunks come
//! from the global allocator on the worker thread, which tieralloc serves from that worker's node.

mod bump;
mod slots;
mod typed;

pub use bump::{BumpCache, BumpCacheStats, BumpGuard};
pub use slots::{Key, SlotArena};
pub use typed::{Arena, ArenaError, ArenaMoveReport, ArenaStats, IterMut, TryAllocError};
