//! `SlotArena<T, A>`: a generational arena whose small `Copy` keys can cross `tokio::spawn` and
//! plugin boundaries where a borrow cannot go.
//!
//! Owns: its slot vector and the values in it.
//! May touch: only the allocator `A` it was given (the slot vector lives there), and
//! `arena::typed` (its statistics type).
//!
//! # Design
//!
//! Slots live in one `allocator_api2::vec::Vec<Slot<T>, A>`, so placement works as for
//! [`crate::Arena`]: the default `Global` puts them on the caller's node (through tieralloc), a
//! `Placed` handle on a chosen node or tier. Each slot carries a 32-bit generation; a [`Key`] is
//! (index, generation), 8 bytes, `Copy + Send + Sync + 'static`, and every access compares the
//! key's generation with the slot's. `remove` bumps the generation, so a key kept after its
//! value was removed gives `None` even after the slot is reused for another value: a stale key
//! can never reach someone else's object (the ABA case). A slot whose generation would wrap
//! around is retired instead of being reused, so that guarantee holds forever, not just for
//! 2^32 reuses.
//!
//! Freed slots are chained in an intrusive free list (the index of the next free slot is kept
//! in the vacant slot itself), so insert after remove is O(1) and allocates nothing.
//!
//! Compared with slotmap's `SlotMap`: the same shape (slotmap packs the occupied flag into the
//! version's low bit and uses a union; this uses a safe enum, at the cost of a few bytes per
//! slot for small `T`, and contains no `unsafe` at all), plus an allocator parameter for
//! placement and [`ArenaStats`]-style statistics. slotmap has more variants (`HopSlotMap`,
//! `DenseSlotMap`, secondary maps) that this does not try to replace. Values move when the slot
//! vector grows: keep keys, not references, across inserts (as with slotmap).

use core::fmt;

use allocator_api2::alloc::{Allocator, Global};
use allocator_api2::vec::Vec as AVec;

use super::typed::ArenaStats;

/// A key into a [`SlotArena`]: slot index and generation. 8 bytes, `Copy`, `Send`, `'static`.
/// It does not name its arena: used with another arena it finds that arena's value at the
/// same slot and generation, if any (as with slotmap).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    /// A key that no arena ever hands out (generation 0), so it is never found.
    pub const fn null() -> Key {
        Key {
            index: u32::MAX,
            generation: 0,
        }
    }

    /// The slot index.
    pub const fn index(self) -> u32 {
        self.index
    }

    /// The generation the slot had when this key was made.
    pub const fn generation(self) -> u32 {
        self.generation
    }

    /// The key as one `u64` (generation in the high half), for passing through FFI or
    /// plugin boundaries.
    pub const fn to_bits(self) -> u64 {
        ((self.generation as u64) << 32) | self.index as u64
    }

    /// The inverse of [`to_bits`](Key::to_bits).
    pub const fn from_bits(bits: u64) -> Key {
        Key {
            index: bits as u32,
            generation: (bits >> 32) as u32,
        }
    }
}

impl Default for Key {
    fn default() -> Self {
        Key::null()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}v{})", self.index, self.generation)
    }
}

/// No next free slot.
const NONE: u32 = u32::MAX;

/// One slot: a generation and what is in it.
struct Slot<T> {
    generation: u32,
    entry: Entry<T>,
}

enum Entry<T> {
    Occupied(T),
    /// Free, with the index of the next free slot (or `NONE`).
    Vacant(u32),
    /// Generation exhausted: never reused.
    Retired,
}

/// A generational arena: [`insert`](SlotArena::insert) returns a [`Key`]; `get`, `get_mut` and
/// `remove` return `None` for a key whose value was removed, even if the slot was reused.
///
/// ```
/// use tieralloc::SlotArena;
/// let mut a = SlotArena::new();
/// let k = a.insert("x");
/// assert_eq!(a.get(k), Some(&"x"));
/// assert_eq!(a.remove(k), Some("x"));
/// let k2 = a.insert("y"); // reuses the slot
/// assert_eq!(a.get(k), None); // the old key is stale
/// assert_eq!(a.get(k2), Some(&"y"));
/// ```
pub struct SlotArena<T, A: Allocator + Clone = Global> {
    slots: AVec<Slot<T>, A>,
    free_head: u32,
    len: usize,
    high_water: usize,
}

impl<T> SlotArena<T, Global> {
    /// An empty arena on the global allocator.
    pub fn new() -> Self {
        Self::new_in(Global)
    }

    /// An empty arena with room for `n` values.
    pub fn with_capacity(n: usize) -> Self {
        Self::with_capacity_in(n, Global)
    }
}

impl<T> Default for SlotArena<T, Global> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, A: Allocator + Clone> SlotArena<T, A> {
    /// An empty arena whose slots live in `alloc`.
    pub fn new_in(alloc: A) -> Self {
        Self::with_capacity_in(0, alloc)
    }

    /// An empty arena in `alloc` with room for `n` values.
    pub fn with_capacity_in(n: usize, alloc: A) -> Self {
        SlotArena {
            slots: AVec::with_capacity_in(n, alloc),
            free_head: NONE,
            len: 0,
            high_water: 0,
        }
    }

    /// Values in the arena.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the arena holds no value.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots allocated (occupied, free or retired).
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Stores `value` and returns its key. Reuses a freed slot if there is one.
    ///
    /// # Panics
    /// If no slot is free and the arena already has `u32::MAX` slots (indices up to
    /// `u32::MAX - 1`; `u32::MAX` is [`Key::null`]'s).
    #[inline]
    pub fn insert(&mut self, value: T) -> Key {
        self.insert_with_key(|_| value)
    }

    /// Stores the value `f` builds from its own key (for self-referencing records).
    #[inline]
    pub fn insert_with_key(&mut self, f: impl FnOnce(Key) -> T) -> Key {
        // `f` runs before anything changes, so a panic in it leaves the arena as it was.
        if self.free_head != NONE {
            let index = self.free_head;
            let generation = self.slots[index as usize].generation;
            let key = Key { index, generation };
            let value = f(key);
            let slot = &mut self.slots[index as usize];
            let Entry::Vacant(next) = slot.entry else {
                unreachable!("free list points at a vacant slot")
            };
            self.free_head = next;
            slot.entry = Entry::Occupied(value);
            self.note_insert();
            return key;
        }
        let index = self.slots.len();
        assert!(index < NONE as usize, "SlotArena is full");
        let key = Key {
            index: index as u32,
            generation: 1,
        };
        let value = f(key);
        self.slots.push(Slot {
            generation: 1,
            entry: Entry::Occupied(value),
        });
        self.note_insert();
        key
    }

    #[inline(always)]
    fn note_insert(&mut self) {
        self.len += 1;
        if self.len > self.high_water {
            self.high_water = self.len;
        }
    }

    /// True if `key` refers to a live value.
    #[inline]
    pub fn contains(&self, key: Key) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key`, or `None` if it was removed. A key is only meaningful to the arena
    /// that made it: one from another `SlotArena` (not checked, as with slotmap) finds
    /// whatever value this arena has at the same slot and generation, or `None`.
    #[inline]
    pub fn get(&self, key: Key) -> Option<&T> {
        match self.slots.get(key.index as usize) {
            Some(Slot {
                generation,
                entry: Entry::Occupied(v),
            }) if *generation == key.generation => Some(v),
            _ => None,
        }
    }

    /// The value of `key`, mutably, or `None` if it was removed.
    #[inline]
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.slots.get_mut(key.index as usize) {
            Some(Slot {
                generation,
                entry: Entry::Occupied(v),
            }) if *generation == key.generation => Some(v),
            _ => None,
        }
    }

    /// Removes and returns the value of `key`; the key (and every copy of it) is stale from now
    /// on. `None` if it was already removed.
    #[inline]
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation || !matches!(slot.entry, Entry::Occupied(_)) {
            return None;
        }
        let (entry, generation) = match slot.generation.checked_add(1) {
            Some(g) => {
                let e = Entry::Vacant(self.free_head);
                self.free_head = key.index;
                (e, g)
            }
            None => (Entry::Retired, slot.generation),
        };
        slot.generation = generation;
        let old = core::mem::replace(&mut slot.entry, entry);
        self.len -= 1;
        match old {
            Entry::Occupied(v) => Some(v),
            _ => unreachable!(),
        }
    }

    /// Keeps only the values for which `f` returns true (the others are removed, their keys go
    /// stale).
    pub fn retain(&mut self, mut f: impl FnMut(Key, &mut T) -> bool) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let key = Key {
                index: i as u32,
                generation: slot.generation,
            };
            let keep = match &mut slot.entry {
                Entry::Occupied(v) => f(key, v),
                _ => true,
            };
            if !keep {
                self.remove(key);
            }
        }
    }

    /// Removes every value; every key handed out so far goes stale. Slots are kept for reuse.
    pub fn clear(&mut self) {
        self.retain(|_, _| false);
    }

    /// Iterates over `(key, &value)`, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.entry {
                Entry::Occupied(v) => Some((
                    Key {
                        index: i as u32,
                        generation: s.generation,
                    },
                    v,
                )),
                _ => None,
            })
    }

    /// Iterates over `(key, &mut value)`, in slot order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Key, &mut T)> + '_ {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| match &mut s.entry {
                Entry::Occupied(v) => Some((
                    Key {
                        index: i as u32,
                        generation: s.generation,
                    },
                    v,
                )),
                _ => None,
            })
    }

    /// Statistics in the shape of [`ArenaStats`]: bytes of live values, bytes of the slot
    /// vector, high-water mark of live bytes.
    pub fn stats(&self) -> ArenaStats {
        let sz = core::mem::size_of::<Slot<T>>();
        ArenaStats {
            bytes_used: self.len * sz,
            bytes_held: self.slots.capacity() * sz,
            high_water: self.high_water * sz,
            chunks: usize::from(self.slots.capacity() > 0),
            resets: 0,
        }
    }
}

impl<T, A: Allocator + Clone> core::ops::Index<Key> for SlotArena<T, A> {
    type Output = T;
    fn index(&self, key: Key) -> &T {
        self.get(key).expect("stale or foreign key")
    }
}

impl<T, A: Allocator + Clone> core::ops::IndexMut<Key> for SlotArena<T, A> {
    fn index_mut(&mut self, key: Key) -> &mut T {
        self.get_mut(key).expect("stale or foreign key")
    }
}

impl<T: fmt::Debug, A: Allocator + Clone> fmt::Debug for SlotArena<T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}
