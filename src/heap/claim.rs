//! A registry slot with a claim bit: the huge-object registry's one word per object
//! (`heap::huge`), kept apart so that loom can check it on its own (tests/loom/).
//!
//! Owns: [`ClaimSlot`]. A slot holds 0 (free) or an object's address (at least 2-aligned),
//! with the low bit, `CLAIMED`, set while a visitor (the automatic demoter) or the owner
//! works on the object. Invariants: at most one thread has the object claimed at a time; the
//! claim's acquire and the release that ends it order every access to the object's header
//! by one holder before the next holder's; once the owner has taken the object out of its
//! slot ([`ClaimSlot::take`]), no visitor reaches it any more, so the owner may free it.

use crate::sync::{spin_hint, AtomicUsize, Ordering};

const CLAIMED: usize = 1;

/// One slot of the registry.
pub struct ClaimSlot(AtomicUsize);

impl ClaimSlot {
    /// A free slot.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        ClaimSlot(AtomicUsize::new(0))
    }
    /// A free slot.
    #[cfg(loom)]
    pub fn new() -> Self {
        ClaimSlot(AtomicUsize::new(0))
    }

    /// The owner puts its object `v` (non-zero, low bit clear) in the slot if the slot is
    /// free. Returns whether it did.
    pub fn try_fill(&self, v: usize) -> bool {
        debug_assert!(v != 0 && v & CLAIMED == 0);
        self.0.load(Ordering::Relaxed) == 0
            && self
                .0
                .compare_exchange(0, v, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// The owner takes its object `v` out of the slot, waiting while a visitor has it
    /// claimed (calling `waiting` each time it finds it so: a test's hook, `|| {}` otherwise).
    /// Afterwards no visitor touches the object.
    #[inline]
    pub fn take(&self, v: usize, mut waiting: impl FnMut()) {
        loop {
            match self
                .0
                .compare_exchange(v, 0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(cur) if cur == v | CLAIMED => {
                    waiting();
                    spin_hint()
                }
                Err(_) => return,
            }
        }
    }

    /// The owner claims its object `v`, waiting while a visitor has it. Returns false (and
    /// claims nothing) if `v` is not in the slot. A true return must be followed by
    /// [`release`](Self::release).
    pub fn claim_own(&self, v: usize) -> bool {
        loop {
            match self
                .0
                .compare_exchange(v, v | CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(cur) if cur == v | CLAIMED => spin_hint(),
                Err(_) => return false,
            }
        }
    }

    /// A visitor claims whatever object is in the slot, unless it is free or claimed.
    /// Returns the object; it must be given back with [`release`](Self::release).
    pub fn try_claim(&self) -> Option<usize> {
        let v = self.0.load(Ordering::Acquire);
        if v == 0 || v & CLAIMED != 0 {
            return None;
        }
        self.0
            .compare_exchange(v, v | CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| v)
    }

    /// Ends a claim on object `v`.
    pub fn release(&self, v: usize) {
        self.0.store(v, Ordering::Release);
    }

    /// For the loom models of fork: the slot's object and whether it is claimed, as a fork
    /// would copy them (a read-modify-write that changes nothing reads the latest value).
    #[cfg(loom)]
    pub fn fork_copy(&self) -> (usize, bool) {
        let v = self.0.fetch_add(0, Ordering::SeqCst);
        (v & !CLAIMED, v & CLAIMED != 0)
    }

    /// In a fork child: drops the slot's claim, if any. Its holder was a thread that does not
    /// exist in the child (see `heap::huge::clear_claims_after_fork`), so the object's owner
    /// would otherwise wait for it forever. No other thread runs meanwhile.
    pub fn clear_claim_after_fork(&self) {
        let v = self.0.load(Ordering::Relaxed);
        if v & CLAIMED != 0 {
            self.0.store(v & !CLAIMED, Ordering::Release);
        }
    }
}

impl Default for ClaimSlot {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::ClaimSlot;

    /// The owner's claim keeps its object in the slot (marked), so that no other object is
    /// registered there meanwhile: the release would overwrite that entry, and the demoter
    /// would never visit it (a mutant that stored `v & CLAIMED`, an empty slot, survived
    /// every other test). The loom model `huge_claim_leaves_the_slot_to_its_object` checks the
    /// same with the registering thread running concurrently.
    #[test]
    fn an_owners_claim_leaves_no_room_for_another_object() {
        let slot = ClaimSlot::new();
        let (v, w) = (0x1000usize, 0x2000usize);
        assert!(slot.try_fill(v));
        assert!(slot.claim_own(v));
        assert!(
            !slot.try_fill(w),
            "another object registered in a claimed slot"
        );
        assert!(
            slot.try_claim().is_none(),
            "a visitor claimed a claimed slot"
        );
        slot.release(v);
        assert_eq!(slot.try_claim(), Some(v), "the object is back, unclaimed");
        slot.release(v);
        slot.take(v, || {});
        assert!(slot.try_fill(w), "a slot taken out is free");
    }
}
