//! The segment map: two bytes per 4 MiB of address space, saying whether a segment starts
//! there and which heap owns it (by tag).
//!
//! Owns: `SEGMENT_MAP` and its span (`MAP_LO`, `MAP_HI`), the tags' reserved values, and the
//! segment header's `owner` field together with the map entry (`set_owner`). May touch: the
//! segment header (`super::Segment`), `sync`.

use super::{Segment, SEGMENT_SHIFT};
use crate::sync::{AtomicU16, AtomicUsize, Ordering};

/// The address space the segment map covers: 2^47 bytes, the x86-64 and AArch64 user space,
/// in 4 MiB steps.
const MAP_ENTRIES: usize = 1 << (47 - SEGMENT_SHIFT);
#[allow(clippy::declare_interior_mutable_const)]
const NO_SEGMENT: AtomicU16 = AtomicU16::new(0);
/// The segment map's entry of a segment that no heap owns through its tag: pooled,
/// abandoned, huge, or owned by a heap without a tag ([`NO_TAG`]).
pub const MAP_UNOWNED: u16 = 1;
/// The tag of a heap that has none (more heaps than tags, a heap not yet registered, a dead
/// one). No map entry ever holds it, so such a heap never takes the tag fast path.
pub const NO_TAG: u16 = u16::MAX;
/// The tags heaps can have: `MAP_UNOWNED + 1 ..= NO_TAG - 1`.
pub const FIRST_TAG: u16 = MAP_UNOWNED + 1;
/// The header `owner` of a quarantined segment (no heap's address: heaps are aligned): a
/// segment a fork child found in the hands of a thread the fork stopped inside a slow path
/// (`heap::thread::fork`), whose state may be torn. Its map entry is [`MAP_UNOWNED`]; no list
/// holds it and no heap ever owns it again; every free into it takes the remote slow path,
/// which drops the block (`thread::free::free_other_slow`).
pub const QUARANTINED: usize = 1;

/// Two bytes per 4 MiB of address space: 0 where no segment starts; for a segment (normal or
/// huge) its owner heap's tag, or [`MAP_UNOWNED`]. 64 MiB of zero-initialised static memory
/// (address space only: a 4 KiB page of it is touched once a segment lives in the 8 GiB it
/// covers). The drop-in's `free` asks this of every pointer: one load says both whether the
/// pointer is ours and whether the calling thread owns its segment (compared with its heap's
/// tag), where a byte map would need a second load, of the segment header's owner.
/// Segments never share an entry (they are 4 MiB aligned), so entries are stored, not
/// read-modified-written.
static SEGMENT_MAP: [AtomicU16; MAP_ENTRIES] = [NO_SEGMENT; MAP_ENTRIES];

/// Writes the segment map's entry of the segment at `seg` (nothing for a segment above the
/// 47 bits the map covers).
#[inline]
fn map_store(seg: *mut Segment, entry: u16, order: Ordering) {
    let i = seg as usize >> SEGMENT_SHIFT;
    if i < MAP_ENTRIES {
        SEGMENT_MAP[i].store(entry, order);
    }
}

/// The lowest and highest map entries ever inserted (`MAP_LO > MAP_HI` while none was).
static MAP_LO: AtomicUsize = AtomicUsize::new(usize::MAX);
static MAP_HI: AtomicUsize = AtomicUsize::new(0);

/// Records that a segment starts at `seg` (with no owner yet).
pub fn map_insert(seg: *mut Segment) {
    let i = seg as usize >> SEGMENT_SHIFT;
    // Widening the span is rare (most new segments land inside it): load before the RMW.
    if i < MAP_LO.load(Ordering::Relaxed) {
        MAP_LO.fetch_min(i, Ordering::Relaxed);
    }
    if i > MAP_HI.load(Ordering::Relaxed) {
        MAP_HI.fetch_max(i, Ordering::Relaxed);
    }
    map_store(seg, MAP_UNOWNED, Ordering::Release);
}

/// The segment map's entry for the 4 MiB holding `p`: 0 if no tieralloc segment starts there
/// (memory that is not ours), else the owner's tag or [`MAP_UNOWNED`].
#[inline(always)]
pub fn map_tag(p: *const u8) -> u16 {
    let i = p as usize >> SEGMENT_SHIFT;
    if i < MAP_ENTRIES {
        // Relaxed: a thread compares the entry with its own tag, and the only entries equal to
        // it are ones it wrote itself (see the module's invariants).
        SEGMENT_MAP[i].load(Ordering::Relaxed)
    } else {
        0
    }
}

/// Gives the normal segment `seg` to the heap at `owner` whose tag is `tag` (0 and any tag:
/// no owner), in the header and in the segment map.
///
/// # Safety
/// The caller is taking `seg` (fresh from `map_normal`, or off a list under its lock) or
/// letting go of it as its owner; `tag` is `owner`'s tag, [`NO_TAG`] if it has none.
#[inline]
pub unsafe fn set_owner(seg: *mut Segment, owner: usize, tag: u16) {
    let entry = if owner == 0 || tag == NO_TAG {
        MAP_UNOWNED
    } else {
        tag
    };
    // The entry goes first when letting go, last when taking: it never names a heap that does
    // not own the segment (a stale entry of ours could only make us take the slow path).
    // SAFETY: per the contract, seg is a live normal segment header.
    unsafe {
        if owner == 0 {
            map_store(seg, entry, Ordering::Relaxed);
            (*seg).owner.store(0, Ordering::Release);
        } else {
            (*seg).owner.store(owner, Ordering::Release);
            map_store(seg, entry, Ordering::Relaxed);
        }
    }
}

/// Forgets the segment at `seg` (before it is unmapped).
pub fn map_remove(seg: *mut Segment) {
    map_store(seg, 0, Ordering::Release);
}

/// Whether `p` lies in the first 4 MiB of a live tieralloc segment: true for every pointer
/// tieralloc handed out and not yet freed; false for memory that never came from it.
#[inline]
pub fn contains(p: *const u8) -> bool {
    let i = p as usize >> SEGMENT_SHIFT;
    i < MAP_ENTRIES && SEGMENT_MAP[i].load(Ordering::Acquire) != 0
}

/// Calls `f(segment, entry)` for every segment the map knows (normal or huge, owned or not),
/// reading the map only between the lowest and highest entries ever inserted (segments come
/// from mmap, so that span is about the size of what was mapped). For a fork child (see
/// `heap::thread::fork`), which reads each header's
/// `owner`: an entry is written only once its header is (and removed before its unmap), so
/// every segment named is mapped. No entry may change while it runs.
pub fn for_each_segment(mut f: impl FnMut(*mut Segment, u16)) {
    let lo = MAP_LO.load(Ordering::Relaxed);
    let hi = MAP_HI.load(Ordering::Relaxed).min(MAP_ENTRIES - 1);
    let Some(span) = SEGMENT_MAP.get(lo..=hi) else {
        return;
    };
    for (k, entry) in span.iter().enumerate() {
        let e = entry.load(Ordering::Acquire);
        if e != 0 {
            f(((lo + k) << SEGMENT_SHIFT) as *mut Segment, e);
        }
    }
}
