//! `PerThread<T>`: one `T` per thread id ([`super::tid`]), for the pools' thread caches and
//! the bump caches' lists.
//!
//! Owns: its blocks of entries. May touch: the global allocator (a new block) and `tid`.
//!
//! Entries live in blocks of doubling size (block `b` holds ids `2^b - 1 .. 2^(b+1) - 1`),
//! made on first use and never moved, so a reference to an entry lives as long as the table
//! (the `thread_local` crate's layout, which this replaces: review rev34). Only the thread
//! holding an id writes its entry; an entry stays when its thread exits and goes, with the id,
//! to the next thread that takes the id. The drop of the table leaves alone the entries of
//! ids lost at a fork (`tid::is_lost`: their thread may have been in the middle of changing
//! them), and drops every other entry even if one entry's drop panics (review rev39).

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;

use crate::sync::{AtomicBool, AtomicPtr, Ordering};

use super::tid::{self, BLOCKS};

struct Entry<T> {
    present: AtomicBool,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// One `T` per thread. See the module docs.
pub(crate) struct PerThread<T: Send> {
    blocks: [AtomicPtr<Entry<T>>; BLOCKS],
}

// Ids pass between threads through the registry's lock, which orders one holder's uses
// before the next's. Other threads see entries only through `iter`, which needs `T: Sync`.
// SAFETY: an entry is written (`insert_with`, before `present` is published) and handed out
// (`get_or`) only to the thread holding its id: one thread at a time uses it (`T: Send`: it
// may pass to the id's next holder).
unsafe impl<T: Send> Sync for PerThread<T> {}

impl<T: Send> PerThread<T> {
    /// An empty table (allocates nothing); registers the id registry's fork handlers.
    pub(crate) fn new() -> Self {
        tid::register();
        PerThread {
            blocks: [const { AtomicPtr::new(ptr::null_mut()) }; BLOCKS],
        }
    }

    /// The entry of `id`, if it has one.
    #[inline(always)]
    fn get(&self, id: usize) -> Option<&T> {
        let (block, index) = tid::locate(id);
        let p = self.blocks[block].load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: a published block has `2^block` initialised entries and lives as long as
        // `self`; `index < 2^block`.
        let e = unsafe { &*p.add(index) };
        if !e.present.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: present: written before `present` was published (acquire above), and never
        // written again while `self` lives.
        Some(unsafe { (*e.value.get()).assume_init_ref() })
    }

    /// The calling thread's entry, made by `make` if it has none; `None` once the thread's
    /// id was released (its exit: `tid`).
    #[inline(always)]
    pub(crate) fn get_or(&self, make: impl FnOnce() -> T) -> Option<&T> {
        let id = tid::current()?;
        if let Some(v) = self.get(id) {
            return Some(v);
        }
        Some(self.insert_with(id, make))
    }

    /// Makes the entry of `id`, which the calling thread holds.
    #[cold]
    #[inline(never)]
    fn insert_with(&self, id: usize, make: impl FnOnce() -> T) -> &T {
        let v = make();
        let (block, index) = tid::locate(id);
        let slot = &self.blocks[block];
        let mut p = slot.load(Ordering::Acquire);
        if p.is_null() {
            let new = new_block::<T>(1 << block);
            p = match slot.compare_exchange(
                ptr::null_mut(),
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => new,
                Err(theirs) => {
                    // SAFETY: made just above with this length, never published.
                    unsafe { free_block(new, 1 << block) };
                    theirs
                }
            };
        }
        // SAFETY: as in `get`.
        let e = unsafe { &*p.add(index) };
        // SAFETY: the entry of the caller's id: no other thread writes it, and none reads
        // its value before `present` is published below.
        let r = unsafe { (*e.value.get()).write(v) };
        e.present.store(true, Ordering::Release);
        r
    }

    /// Every present entry (a snapshot: entries made meanwhile may be missed).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T>
    where
        T: Sync,
    {
        (0..BLOCKS).flat_map(move |block| {
            let p = self.blocks[block].load(Ordering::Acquire);
            let n = if p.is_null() { 0 } else { 1usize << block };
            (0..n).filter_map(move |index| {
                // SAFETY: as in `get`.
                let e = unsafe { &*p.add(index) };
                // SAFETY: present, as in `get`.
                e.present
                    .load(Ordering::Acquire)
                    .then(|| unsafe { (*e.value.get()).assume_init_ref() })
            })
        })
    }
}

impl<T: Send> Drop for PerThread<T> {
    fn drop(&mut self) {
        // An entry's drop runs user code (a pooled object's `Drop`): if it unwinds, the guard
        // drops the entries not dropped yet and frees the blocks on the way out, as a `Vec`
        // drops its other elements (review rev39: the walk stopped at the panic, and every
        // later entry, other threads' caches, was leaked with its block). A second panic
        // there aborts, as it would in a `Vec`.
        struct Rest<'a, T: Send>(&'a mut PerThread<T>);
        impl<T: Send> Drop for Rest<'_, T> {
            fn drop(&mut self) {
                self.0.drop_entries();
            }
        }
        let rest = Rest(self);
        rest.0.drop_entries();
        core::mem::forget(rest);
    }
}

impl<T: Send> PerThread<T> {
    /// Drops every present entry and frees every block, each once: an entry is marked absent
    /// before its value is dropped, and a block's pointer cleared before it is freed, so a walk
    /// cut short by a panic can be taken up again by another (`Drop`'s guard).
    fn drop_entries(&mut self) {
        for block in 0..BLOCKS {
            let p = *self.blocks[block].get_mut();
            if p.is_null() {
                continue;
            }
            let n = 1usize << block;
            for index in 0..n {
                // SAFETY: as in `get`; `&mut self`: no other reference to the entries.
                let e = unsafe { &mut *p.add(index) };
                // An entry of an id lost at a fork is leaked (see the module docs).
                if core::mem::replace(e.present.get_mut(), false) && !tid::is_lost(n - 1 + index) {
                    // SAFETY: was present, and is marked absent first: dropped once, even if
                    // this drop unwinds and the walk is taken up again.
                    unsafe { e.value.get_mut().assume_init_drop() };
                }
            }
            *self.blocks[block].get_mut() = ptr::null_mut();
            // SAFETY: made by `new_block` with length `n`; its values are dropped or leaked,
            // and its pointer is cleared above, so no later walk frees it again.
            unsafe { free_block(p, n) };
        }
    }
}

fn new_block<T>(n: usize) -> *mut Entry<T> {
    let b: Box<[Entry<T>]> = (0..n)
        .map(|_| Entry {
            present: AtomicBool::new(false),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })
        .collect();
    Box::into_raw(b).cast()
}

/// Frees a block made by [`new_block`] (its values are not dropped: `MaybeUninit`).
///
/// # Safety
/// `p` came from `new_block(n)` and is not used again.
unsafe fn free_block<T>(p: *mut Entry<T>, n: usize) {
    // SAFETY: the caller's contract: a boxed slice of `n` entries.
    drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(p, n)) });
}

#[cfg(test)]
mod tests {
    use super::PerThread;
    use crate::pool::tid;

    #[test]
    fn each_thread_finds_its_own_entry() {
        let t = PerThread::new();
        assert_eq!(t.get_or(|| 7), Some(&7));
        assert_eq!(t.get_or(|| 8), Some(&7));
        std::thread::scope(|s| {
            s.spawn(|| {
                let id = tid::current().unwrap();
                assert!(t.get(id).is_none());
                assert_eq!(t.get_or(|| 9), Some(&9));
            });
        });
        let mut all: Vec<i32> = t.iter().copied().collect();
        all.sort();
        assert_eq!(all, [7, 9]);
    }
}
