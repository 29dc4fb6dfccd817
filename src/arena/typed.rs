//! `Arena<T, A>`: a typed arena that runs Drop, resets for reuse, and takes its chunks from any
//! allocator-api2 `Allocator`.
//!
//! Owns: the chunk list of one arena and the values in it.
//! May touch: only the allocator `A` it was given (chunk memory), the global allocator (the
//! small `Vec` of chunk descriptors) and, to move chunks between tiers, the public tier API
//! (`tier`: `move_to_tier`, the tier count, the size up to which blocks share pages, whether a
//! chunk starts a block) and [`owns`](crate::owns) (`global`). Nothing in the allocator core.
//!
//! # Design
//!
//! The hot path is the one of a bump allocator specialised to one type: the arena keeps two
//! pointers into the current chunk, `next` and `end`, in `Cell`s. `alloc` compares them, writes
//! the value at `next` and moves `next` one element on. No borrow flag (typed-arena pays a
//! `RefCell` borrow on every allocation), no alignment arithmetic (bumpalo rounds every request,
//! since it serves all types from one chunk), no per-object header. Everything else (a new
//! chunk, the limit, the statistics) lives on the cold path (`reserve_one`, `grow_or_panic`),
//! which is `#[inline(never)]` and neither takes nor returns the value, so the value stays in
//! registers and the fast path is a handful of instructions.
//!
//! Chunks never move and are never freed before the arena is dropped, so `&mut T` handed out by
//! `alloc` stay valid for the arena's lifetime (`'a` of `&'a self`), and addresses are stable.
//! A new chunk doubles the capacity of the last one, as in typed-arena, so the number of chunks
//! stays logarithmic. Because all elements have one size, chunks are filled completely before
//! the next one is used: chunks `0..cur` are full and chunk `cur` holds `next - start` values.
//! That makes `len`, iteration and dropping simple slice walks.
//!
//! `reset(&mut self)` drops every value and rewinds to chunk 0 *keeping all chunks*: the next
//! request of the same shape walks the same chunks again without asking the allocator for
//! anything. typed-arena cannot reset at all; bumpalo resets but runs no destructors and keeps
//! only its last chunk. One arena per request, reused across requests (for example from a
//! [`crate::Pool`]), therefore costs no allocator call in the steady state.
//!
//! Drop safety: values are dropped one by one under `catch_unwind` (only for types that need
//! drop), so a panicking `Drop` does not leak the values after it; the first panic is resumed
//! once every value is dropped and the arena is consistent (empty) again. If the arena is being
//! dropped during an unwind already, later panics are swallowed instead of aborting.
//!
//! Placement: the chunks come from `A`. With the default `Global` they come from the global
//! allocator (tieralloc, so the calling thread's node); with a `Placed` handle they come from a
//! chosen node or tier, and nothing else in the arena changes.

use core::alloc::Layout;
use core::cell::{Cell, UnsafeCell};
use core::fmt;
use core::marker::PhantomData;
use core::mem;
use core::ptr::{self, NonNull};
use std::panic::{self, AssertUnwindSafe};

use allocator_api2::alloc::{Allocator, Global};

/// Smallest first chunk, in bytes (it still holds at least a few elements).
const MIN_CHUNK_BYTES: usize = 1024;
/// The first chunk holds at least this many elements.
const MIN_CHUNK_ELEMS: usize = 8;

/// Why an arena could not take a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArenaError {
    /// Growing the arena would pass its byte limit.
    LimitExceeded {
        /// The limit set with [`Arena::with_limit`], in bytes.
        limit: usize,
        /// Bytes of chunk memory the arena holds now.
        held: usize,
        /// Bytes the request needed (one element).
        requested: usize,
    },
    /// The chunk allocator returned an error.
    OutOfMemory {
        /// Bytes of the chunk the arena asked for.
        requested: usize,
    },
}

impl fmt::Display for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ArenaError::LimitExceeded {
                limit,
                held,
                requested,
            } => write!(
                f,
                "arena limit of {limit} bytes exceeded: {held} bytes held, \
                 request of {requested} bytes does not fit"
            ),
            ArenaError::OutOfMemory { requested } => {
                write!(f, "arena chunk allocation of {requested} bytes failed")
            }
        }
    }
}

impl std::error::Error for ArenaError {}

/// The error of [`Arena::try_alloc`]: why it failed, and the value, handed back.
pub struct TryAllocError<T> {
    /// The value that was not stored.
    pub value: T,
    /// Why.
    pub error: ArenaError,
}

impl<T> TryAllocError<T> {
    /// Gives the value back.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> fmt::Debug for TryAllocError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryAllocError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for TryAllocError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<T> std::error::Error for TryAllocError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Statistics of one arena, from [`Arena::stats`] (also [`crate::SlotArena::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Bytes of live values (`len * size_of::<T>()`).
    pub bytes_used: usize,
    /// Bytes of chunk memory held (used or not).
    pub bytes_held: usize,
    /// The most `bytes_used` has ever been (across resets).
    pub high_water: usize,
    /// Chunks held.
    pub chunks: usize,
    /// Times the arena was reset.
    pub resets: u64,
}

/// One chunk: `cap` elements at `ptr`, allocated from the arena's allocator.
struct Chunk<T> {
    ptr: NonNull<T>,
    cap: usize,
}

/// What [`Arena::move_to_tier`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaMoveReport {
    /// Chunks whose pages moved.
    pub chunks_moved: usize,
    /// Their bytes.
    pub bytes_moved: usize,
    /// Chunks left where they are (64 KiB or less, or not tieralloc's).
    pub chunks_skipped: usize,
    /// Their bytes.
    pub bytes_skipped: usize,
    /// Pages of moved chunks the kernel could not move.
    pub pages_failed: usize,
}

/// The cold state, touched only outside the fast path.
struct Cold<T> {
    chunks: Vec<Chunk<T>>,
    /// Index of the current chunk (meaningful only when `chunks` is not empty).
    cur: usize,
    /// Elements in chunks `0..cur` (all full).
    full_before: usize,
    /// Bytes of all chunks.
    held: usize,
    high_water: usize,
    resets: u64,
}

/// A typed arena: O(1) allocation of `T` values that live as long as the arena, with stable
/// addresses, Drop run for each value exactly once (on [`reset`](Arena::reset) or drop),
/// iteration, reset-and-reuse of its chunks, an optional byte limit, and chunk memory from any
/// allocator-api2 [`Allocator`].
///
/// ```
/// use tieralloc::Arena;
/// let arena = Arena::new();
/// let a = arena.alloc(String::from("a"));
/// let b = arena.alloc(String::from("b"));
/// a.push('!');
/// assert_eq!((a.as_str(), b.as_str()), ("a!", "b"));
/// ```
///
/// Compared with typed-arena: no `RefCell` on the hot path, `reset` and a limit. Compared with
/// bumpalo: one type per arena, but destructors run. See the module docs for the design.
pub struct Arena<T, A: Allocator + Clone = Global> {
    /// Next free slot in the current chunk (dangling when there is no chunk).
    next: Cell<*mut T>,
    /// One past the last slot of the current chunk (`== next` when there is no chunk).
    end: Cell<*mut T>,
    /// Chunk list and counters; only touched on the cold path or through `&mut self`.
    cold: UnsafeCell<Cold<T>>,
    /// For zero-sized `T`: how many values were "allocated".
    zst_len: Cell<usize>,
    limit: Option<usize>,
    alloc: A,
    _owns: PhantomData<T>,
}

// SAFETY: the arena owns its values and chunks like a Vec<T, A> does; moving it to another thread
// moves them, which is sound when T and A are Send. It is not Sync (Cells), so no `&Arena` is
// ever shared between threads.
unsafe impl<T: Send, A: Allocator + Clone + Send> Send for Arena<T, A> {}

impl<T> Arena<T, Global> {
    /// An empty arena on the global allocator. Allocates nothing until the first value.
    pub fn new() -> Self {
        Self::new_in(Global)
    }

    /// An arena whose first chunk holds `n` values.
    pub fn with_capacity(n: usize) -> Self {
        Self::with_capacity_in(n, Global)
    }

    /// An arena that never holds more than `bytes` of chunk memory; past it
    /// [`try_alloc`](Arena::try_alloc) fails with [`ArenaError::LimitExceeded`] and
    /// [`alloc`](Arena::alloc) panics with the same message.
    pub fn with_limit(bytes: usize) -> Self {
        Self::with_limit_in(bytes, Global)
    }
}

impl<T> Default for Arena<T, Global> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, A: Allocator + Clone> Arena<T, A> {
    /// An empty arena taking its chunks from `alloc` (for example a `Placed` handle).
    pub fn new_in(alloc: A) -> Self {
        Arena {
            next: Cell::new(ptr::null_mut()),
            end: Cell::new(ptr::null_mut()),
            cold: UnsafeCell::new(Cold {
                chunks: Vec::new(),
                cur: 0,
                full_before: 0,
                held: 0,
                high_water: 0,
                resets: 0,
            }),
            zst_len: Cell::new(0),
            limit: None,
            alloc,
            _owns: PhantomData,
        }
    }

    /// An arena on `alloc` whose first chunk holds `n` values (allocated now).
    ///
    /// # Panics
    /// If the allocator fails.
    pub fn with_capacity_in(n: usize, alloc: A) -> Self {
        let a = Self::new_in(alloc);
        if n > 0 && mem::size_of::<T>() != 0 {
            // SAFETY: `a` is fresh and not shared; no reference into the cold state exists.
            let cold = unsafe { &mut *a.cold.get() };
            if let Err(e) = a.push_chunk(cold, n) {
                panic!("{e}");
            }
        }
        a
    }

    /// An arena on `alloc` with a byte limit on its chunk memory (see [`Arena::with_limit`]).
    pub fn with_limit_in(bytes: usize, alloc: A) -> Self {
        let mut a = Self::new_in(alloc);
        a.limit = Some(bytes);
        a
    }

    /// The byte limit, if any.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// The allocator the chunks come from.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// Moves `value` into the arena and returns a mutable reference to it, valid as long as the
    /// arena (and until the next [`reset`](Arena::reset), which needs `&mut self`).
    ///
    /// # Panics
    /// If the byte limit would be passed or the allocator fails; use
    /// [`try_alloc`](Arena::try_alloc) to handle that.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)] // the point of an arena: each call returns a fresh slot
    pub fn alloc(&self, value: T) -> &mut T {
        if mem::size_of::<T>() == 0 {
            return self.alloc_zst(value);
        }
        let mut p = self.next.get();
        if p == self.end.get() {
            // The value stays in registers: the cold path neither takes nor returns it.
            p = self.grow_or_panic();
        }
        // SAFETY: `next != end` (checked, or made so by `grow_or_panic`): `next` is an unused,
        // aligned slot of the current chunk and one past it is at most `end`; the slot is
        // written once and handed out once, so the `&mut` is unique.
        unsafe {
            self.next.set(p.add(1));
            ptr::write(p, value);
            &mut *p
        }
    }

    /// Like [`alloc`](Arena::alloc), but past the limit (or when the allocator fails) returns the
    /// value in a [`TryAllocError`] that says why.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc(&self, value: T) -> Result<&mut T, TryAllocError<T>> {
        if mem::size_of::<T>() == 0 {
            return Ok(self.alloc_zst(value));
        }
        let mut p = self.next.get();
        if p == self.end.get() {
            if let Err(error) = self.reserve_one() {
                return Err(TryAllocError { value, error });
            }
            p = self.next.get();
        }
        // SAFETY: as in `alloc`: `next` points at a free slot of the current chunk.
        unsafe {
            self.next.set(p.add(1));
            ptr::write(p, value);
            Ok(&mut *p)
        }
    }

    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    fn alloc_zst(&self, value: T) -> &mut T {
        self.zst_len.set(self.zst_len.get() + 1);
        let p = NonNull::<T>::dangling().as_ptr();
        // SAFETY: writing a zero-sized value to a dangling, aligned pointer is allowed; the
        // value is owned by the arena from now on (dropped on reset/drop through `zst_len`), and
        // references to ZSTs may alias.
        unsafe {
            ptr::write(p, value);
            &mut *p
        }
    }

    /// Makes room for one value or panics with the [`ArenaError`]; returns the free slot.
    #[cold]
    #[inline(never)]
    #[track_caller]
    fn grow_or_panic(&self) -> *mut T {
        if let Err(e) = self.reserve_one() {
            alloc_failed(e);
        }
        self.next.get()
    }

    /// Allocates a value built by `f`, which runs only if there is room.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_with(&self, f: impl FnOnce() -> T) -> Result<&mut T, ArenaError> {
        if mem::size_of::<T>() != 0 && self.next.get() == self.end.get() {
            self.reserve_one()?;
        }
        match self.try_alloc(f()) {
            Ok(r) => Ok(r),
            Err(e) => Err(e.error),
        }
    }

    /// Makes the current chunk have a free slot: moves on to the next kept chunk, or adds one.
    #[cold]
    fn reserve_one(&self) -> Result<(), ArenaError> {
        // SAFETY: the cold state is only borrowed inside the arena's own methods, never across a
        // call to user code and never re-entrantly (nothing here calls back into `self`), and the
        // arena is !Sync, so this is the only live reference to it.
        let cold = unsafe { &mut *self.cold.get() };
        if !cold.chunks.is_empty() {
            // The current chunk is full (that is why we are here); count it and try the next one.
            let c = &cold.chunks[cold.cur];
            debug_assert_eq!(self.next.get(), c.ptr.as_ptr().wrapping_add(c.cap));
            if cold.cur + 1 < cold.chunks.len() {
                cold.full_before += c.cap;
                cold.cur += 1;
                let n = &cold.chunks[cold.cur];
                self.next.set(n.ptr.as_ptr());
                // SAFETY: in bounds of that chunk's allocation (one past the end).
                self.end.set(unsafe { n.ptr.as_ptr().add(n.cap) });
                return Ok(());
            }
        }
        let last = cold.chunks.last().map_or(0, |c| c.cap);
        let want = if last == 0 {
            (MIN_CHUNK_BYTES / mem::size_of::<T>()).max(MIN_CHUNK_ELEMS)
        } else {
            last.saturating_mul(2)
        };
        let want = match self.limit {
            None => want,
            Some(limit) => {
                let room = limit.saturating_sub(cold.held) / mem::size_of::<T>();
                if room == 0 {
                    return Err(ArenaError::LimitExceeded {
                        limit,
                        held: cold.held,
                        requested: mem::size_of::<T>(),
                    });
                }
                want.min(room)
            }
        };
        self.push_chunk(cold, want)
    }

    /// Allocates a chunk of `cap` elements and makes it current.
    fn push_chunk(&self, cold: &mut Cold<T>, cap: usize) -> Result<(), ArenaError> {
        let layout = Layout::array::<T>(cap).map_err(|_| ArenaError::OutOfMemory {
            requested: usize::MAX,
        })?;
        let mem = self
            .alloc
            .allocate(layout)
            .map_err(|_| ArenaError::OutOfMemory {
                requested: layout.size(),
            })?;
        let ptr = mem.cast::<T>();
        // Called only when there is no chunk yet or the current one is the last and full.
        if !cold.chunks.is_empty() {
            debug_assert_eq!(cold.cur + 1, cold.chunks.len());
            cold.full_before += cold.chunks[cold.cur].cap;
        }
        cold.cur = cold.chunks.len();
        cold.chunks.push(Chunk { ptr, cap });
        cold.held += layout.size();
        self.next.set(ptr.as_ptr());
        // SAFETY: one past the end of the allocation just made.
        self.end.set(unsafe { ptr.as_ptr().add(cap) });
        Ok(())
    }

    /// Number of values in the arena.
    #[inline]
    pub fn len(&self) -> usize {
        if mem::size_of::<T>() == 0 {
            return self.zst_len.get();
        }
        // SAFETY: shared read of the cold state; no `&mut` to it is live (see `reserve_one`).
        let cold = unsafe { &*self.cold.get() };
        match cold.chunks.get(cold.cur) {
            None => 0,
            Some(c) => {
                // SAFETY: `next` lies within the current chunk, at or after its start, so both
                // pointers are in one allocation and the distance is non-negative.
                let in_cur = unsafe { self.next.get().offset_from(c.ptr.as_ptr()) };
                cold.full_before + in_cur as usize
            }
        }
    }

    /// True if the arena holds no value.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values the arena's chunks hold in all, used or not (kept chunks after the current one
    /// too; `usize::MAX` for a zero-sized `T`): it takes `capacity() - len()` more values before
    /// it asks its allocator for another chunk.
    ///
    /// ```
    /// let a: tieralloc::Arena<u64> = tieralloc::Arena::with_capacity(100);
    /// let cap = a.capacity();
    /// a.alloc(1);
    /// assert_eq!(a.capacity(), cap); // the same chunk, one value fewer to come
    /// assert_eq!(a.capacity() - a.len(), cap - 1);
    /// ```
    pub fn capacity(&self) -> usize {
        if mem::size_of::<T>() == 0 {
            return usize::MAX;
        }
        // SAFETY: shared read; see `len`.
        let cold = unsafe { &*self.cold.get() };
        cold.chunks.iter().map(|c| c.cap).sum()
    }

    /// Bytes of live values, bytes of chunk memory held, and the high-water mark.
    pub fn stats(&self) -> ArenaStats {
        let used = self.len().saturating_mul(mem::size_of::<T>());
        // SAFETY: shared read; see `len`.
        let cold = unsafe { &*self.cold.get() };
        ArenaStats {
            bytes_used: used,
            bytes_held: cold.held,
            high_water: cold.high_water.max(used),
            chunks: cold.chunks.len(),
            resets: cold.resets,
        }
    }

    /// Moves the arena's chunk memory to memory tier `tier` (0 = fastest), keeping every
    /// value at its address: each chunk that is a whole large or huge tieralloc block (over
    /// 64 KiB; chunks double, so all but the first few of a big arena) moves with
    /// `tiers::move_to_tier`; smaller chunks share their pages with other blocks and are
    /// left where they are, and counted. Chunks from an allocator that is not tieralloc are
    /// skipped too (the arena does not own their whole pages), and so are chunks that do not
    /// start a tieralloc block: pieces that an allocator such as `&bumpalo::Bump` carves out of
    /// its blocks. (An allocator of pieces whose piece happens to start its block, with others
    /// after it, has that block moved whole, contents and addresses kept.)
    ///
    /// # Errors
    /// The tier does not exist, or the kernel refused a move (chunks already moved stay
    /// moved).
    pub fn move_to_tier(&mut self, tier: usize) -> Result<ArenaMoveReport, crate::tier::TierError> {
        let mut r = ArenaMoveReport::default();
        let cold = self.cold.get_mut();
        for c in &cold.chunks {
            let bytes = c.cap.saturating_mul(mem::size_of::<T>());
            let p = c.ptr.as_ptr() as *mut u8;
            // Only a chunk that is a block of its own moves: one that merely lies in a block
            // (a piece an allocator such as `&bumpalo::Bump` carved out of it) would take the
            // whole block, others' data with it (review rev26).
            let skip = bytes <= crate::tier::SHARED_MAX
                || !crate::global::owns(p)
                // SAFETY: `owns(p)`: the chunk, live, lies in a live block of tieralloc's.
                || !unsafe { crate::tier::starts_block(p) };
            if skip {
                r.chunks_skipped += 1;
                r.bytes_skipped += bytes;
                continue;
            }
            // SAFETY: the chunk is a whole block of ours (`&mut self`: no value is being
            // allocated or dropped meanwhile), the move keeps its address and contents, and the
            // arena frees it later through the same allocator.
            match unsafe { crate::tier::move_to_tier(p, bytes, tier) } {
                Ok(m) => {
                    r.chunks_moved += 1;
                    r.bytes_moved += bytes;
                    r.pages_failed += m.failed;
                }
                Err(crate::tier::TierError::SharedSegment) => {
                    r.chunks_skipped += 1;
                    r.bytes_skipped += bytes;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(r)
    }

    /// [`move_to_tier`](Arena::move_to_tier) to the slowest tier (far memory): for an arena
    /// that has gone cold but must stay.
    ///
    /// # Errors
    /// As `move_to_tier`.
    pub fn demote(&mut self) -> Result<ArenaMoveReport, crate::tier::TierError> {
        let tiers = crate::tier::tier_count();
        self.move_to_tier(tiers.saturating_sub(1))
    }

    /// [`move_to_tier`](Arena::move_to_tier) to the fastest tier.
    ///
    /// # Errors
    /// As `move_to_tier`.
    pub fn promote(&mut self) -> Result<ArenaMoveReport, crate::tier::TierError> {
        self.move_to_tier(0)
    }

    /// Iterates over the values, oldest first.
    pub fn iter_mut(&mut self) -> IterMut<'_, T> {
        let len = self.len();
        let cold = self.cold.get_mut();
        IterMut {
            chunks: cold.chunks.as_slice(),
            chunk: 0,
            pos: 0,
            left: len,
            _marker: PhantomData,
        }
    }

    /// Drops every value (each exactly once, oldest first) and rewinds to the first chunk,
    /// keeping every chunk: filling the arena the same way again allocates nothing.
    ///
    /// # Panics
    /// If a value's `Drop` panics, the remaining values are still dropped, the arena is left
    /// empty and usable, and then the first panic is resumed.
    pub fn reset(&mut self) {
        let used = self.len() * mem::size_of::<T>();
        let len = self.len();
        // Rewind first, so that whatever happens while dropping, nothing is dropped twice.
        self.zst_len.set(0);
        let cold = self.cold.get_mut();
        cold.high_water = cold.high_water.max(used);
        cold.resets += 1;
        cold.cur = 0;
        cold.full_before = 0;
        if let Some(c) = cold.chunks.first() {
            self.next.set(c.ptr.as_ptr());
            // SAFETY: one past the end of chunk 0.
            self.end.set(unsafe { c.ptr.as_ptr().add(c.cap) });
        }
        if let Some(payload) = drop_values(&cold.chunks, len) {
            panic::resume_unwind(payload);
        }
    }

    /// Drops every value and gives the chunks back to the allocator, keeping none.
    pub fn clear_and_shrink(&mut self) {
        let len = self.len();
        self.zst_len.set(0);
        self.next.set(ptr::null_mut());
        self.end.set(ptr::null_mut());
        let cold = self.cold.get_mut();
        cold.high_water = cold.high_water.max(len * mem::size_of::<T>());
        let chunks = mem::take(&mut cold.chunks);
        cold.cur = 0;
        cold.full_before = 0;
        cold.held = 0;
        let payload = drop_values(&chunks, len);
        for c in chunks {
            // SAFETY: each chunk was allocated from `self.alloc` with exactly this layout and is
            // freed once (the list was taken out of the arena).
            unsafe {
                self.alloc
                    .deallocate(c.ptr.cast(), Layout::array::<T>(c.cap).unwrap())
            };
        }
        if let Some(payload) = payload {
            panic::resume_unwind(payload);
        }
    }

    /// Moves the values out into a `Vec`, oldest first, leaving the arena empty (chunks kept).
    pub fn drain_to_vec(&mut self) -> Vec<T> {
        let len = self.len();
        let mut out = Vec::with_capacity(len);
        if mem::size_of::<T>() == 0 {
            for _ in 0..len {
                // SAFETY: ZST values are "stored" at a dangling pointer; reading one moves it out
                // and `zst_len` is zeroed below, so none is dropped twice.
                out.push(unsafe { ptr::read(NonNull::<T>::dangling().as_ptr()) });
            }
            self.zst_len.set(0);
            return out;
        }
        {
            let cold = self.cold.get_mut();
            let mut left = len;
            for c in &cold.chunks {
                let n = left.min(c.cap);
                for i in 0..n {
                    // SAFETY: slots `0..n` of this chunk hold initialised values; each is read
                    // exactly once and the arena is rewound below without dropping them.
                    out.push(unsafe { ptr::read(c.ptr.as_ptr().add(i)) });
                }
                left -= n;
                if left == 0 {
                    break;
                }
            }
        }
        // Rewind without dropping (the values were moved out).
        let cold = self.cold.get_mut();
        cold.high_water = cold.high_water.max(len * mem::size_of::<T>());
        cold.cur = 0;
        cold.full_before = 0;
        if let Some(c) = cold.chunks.first() {
            self.next.set(c.ptr.as_ptr());
            // SAFETY: one past the end of chunk 0.
            self.end.set(unsafe { c.ptr.as_ptr().add(c.cap) });
        }
        out
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn alloc_failed(e: ArenaError) -> ! {
    panic!("{e}")
}

/// Drops the first `len` values stored in `chunks` (chunks filled in order), each under
/// `catch_unwind`. Returns the first panic payload, if any (swallowing later ones, and all of
/// them when the thread is already unwinding).
fn drop_values<T>(chunks: &[Chunk<T>], len: usize) -> Option<Box<dyn core::any::Any + Send>> {
    if !mem::needs_drop::<T>() {
        return None;
    }
    let mut first = None;
    if mem::size_of::<T>() == 0 {
        for _ in 0..len {
            let r = panic::catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: a ZST value "lives" at any aligned pointer; `len` of them were written
                // and the caller zeroed the count, so each is dropped once.
                unsafe { ptr::drop_in_place(NonNull::<T>::dangling().as_ptr()) }
            }));
            if let Err(p) = r {
                first.get_or_insert(p);
            }
        }
        return first.filter(|_| !std::thread::panicking());
    }
    let mut left = len;
    for c in chunks {
        let n = left.min(c.cap);
        for i in 0..n {
            // SAFETY: slot `i < n` of this chunk holds an initialised value that was not
            // dropped yet; the caller has already rewound the arena so it is never seen again.
            let p = unsafe { c.ptr.as_ptr().add(i) };
            let r = panic::catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: see above; `p` is valid for reads and writes and dropped once.
                unsafe { ptr::drop_in_place(p) }
            }));
            if let Err(p) = r {
                first.get_or_insert(p);
            }
        }
        left -= n;
        if left == 0 {
            break;
        }
    }
    first.filter(|_| !std::thread::panicking())
}

impl<T, A: Allocator + Clone> Drop for Arena<T, A> {
    fn drop(&mut self) {
        let len = self.len();
        let cold = self.cold.get_mut();
        let payload = drop_values(&cold.chunks, len);
        for c in cold.chunks.drain(..) {
            let layout = Layout::array::<T>(c.cap).expect("layout was valid at allocation");
            // SAFETY: allocated from `self.alloc` with this layout; freed once (drained).
            unsafe { self.alloc.deallocate(c.ptr.cast(), layout) };
        }
        if let Some(payload) = payload {
            panic::resume_unwind(payload);
        }
    }
}

impl<T, A: Allocator + Clone> fmt::Debug for Arena<T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("len", &self.len())
            .field("stats", &self.stats())
            .field("limit", &self.limit)
            .finish()
    }
}

/// Iterator over `&mut T` of an [`Arena`], from [`Arena::iter_mut`].
pub struct IterMut<'a, T> {
    chunks: &'a [Chunk<T>],
    chunk: usize,
    pos: usize,
    left: usize,
    _marker: PhantomData<&'a mut T>,
}

impl<'a, T> Iterator for IterMut<'a, T> {
    type Item = &'a mut T;

    #[inline]
    fn next(&mut self) -> Option<&'a mut T> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if mem::size_of::<T>() == 0 {
            // SAFETY: references to ZSTs at a dangling aligned pointer are valid.
            return Some(unsafe { &mut *NonNull::<T>::dangling().as_ptr() });
        }
        if self.pos == self.chunks[self.chunk].cap {
            self.chunk += 1;
            self.pos = 0;
        }
        let c = &self.chunks[self.chunk];
        // SAFETY: the iterator walks the first `len` slots (all initialised) in chunk order,
        // each once, while holding `&mut Arena`, so the returned `&mut` are unique.
        let r = unsafe { &mut *c.ptr.as_ptr().add(self.pos) };
        self.pos += 1;
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<T> ExactSizeIterator for IterMut<'_, T> {}

impl<'a, T, A: Allocator + Clone> IntoIterator for &'a mut Arena<T, A> {
    type Item = &'a mut T;
    type IntoIter = IterMut<'a, T>;
    fn into_iter(self) -> IterMut<'a, T> {
        self.iter_mut()
    }
}
