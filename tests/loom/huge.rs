//! The huge registry's claim bit (`heap::claim`).

use super::*;

/// A huge object as the claim protocol sees it: its header's `node` (written by a demoter
/// that moves it, read and written by the owner under its own claim) and a "freed" mark the
/// owner sets after taking it out of its slot (where it unmaps the object).
struct Huge {
    node: UnsafeCell<u32>,
    freed: UnsafeCell<bool>,
}

// SAFETY: the cells are only touched by the holder of the claim (or the owner after `take`).
unsafe impl Sync for Huge {}
// SAFETY: as above.
unsafe impl Send for Huge {}

/// The owner of a huge object registers it (`register`), works on it under its claim
/// (`with_claim`: an explicit move or grow_huge), then frees it (`unregister`, then unmap), while the automatic demoter visits
/// the registry (`for_each_claimed`) and moves it. Never both at once (loom checks every
/// header access happens before the other side's); the demoter never touches the object
/// after the owner took it out of its slot.
#[test]
fn huge_claim_owner_visitor_and_free() {
    check(3, |yield_first| {
        let obj = Arc::new(Huge {
            node: UnsafeCell::new(0),
            freed: UnsafeCell::new(false),
        });
        let slot = Arc::new(ClaimSlot::new());
        let addr = Arc::as_ptr(&obj) as usize;
        let visitor = {
            let slot = slot.clone();
            thread::spawn(move || {
                if let Some(v) = slot.try_claim() {
                    let h = v as *const Huge;
                    // SAFETY: claimed: the object is live and ours until we release it.
                    unsafe {
                        assert!(!(*h).freed.with(|f| *f), "visited a freed object");
                        (*h).node.with_mut(|n| *n = 1);
                    }
                    slot.release(v);
                }
            })
        };
        if yield_first {
            thread::yield_now();
        }
        // The owner hands the object out: writes its header (register sets huge_born_ms),
        // then puts it in the registry, where the visitor may find it at once.
        // SAFETY: not registered yet: ours alone.
        unsafe { obj.node.with_mut(|n| *n = 5) };
        assert!(slot.try_fill(addr));
        // The owner: an explicit move under its claim.
        assert!(slot.claim_own(addr), "the owner's object is in its slot");
        // SAFETY: claimed.
        unsafe {
            let n = obj.node.with(|n| *n);
            obj.node.with_mut(|m| *m = n + 2);
        }
        slot.release(addr);
        // Its free: out of the registry, then gone.
        slot.take(addr, || {});
        // SAFETY: no visitor reaches it any more.
        unsafe {
            obj.freed.with_mut(|f| *f = true);
            obj.node.with_mut(|n| *n = 99);
        }
        assert!(slot.try_claim().is_none(), "a freed object is in no slot");
        visitor.join().unwrap();
    });
}

/// While the owner has its object claimed (`with_claim`), another thread registers a huge
/// object of its own (`register`: `try_fill` on every slot in turn). The claimed slot must
/// not take it: the owner's release would overwrite it, and that object would never be
/// visited. (The registering thread the model above lacks: a claim that emptied the slot
/// instead of marking it survived it; docs/correctness/mutants.md.)
#[test]
fn huge_claim_leaves_the_slot_to_its_object() {
    check(3, |yield_first| {
        let slot = Arc::new(ClaimSlot::new());
        // Objects are never touched here: addresses with the claim bit clear.
        let (v, w) = (0x1000usize, 0x2000usize);
        assert!(slot.try_fill(v));
        let registrar = {
            let slot = slot.clone();
            thread::spawn(move || slot.try_fill(w))
        };
        if yield_first {
            thread::yield_now();
        }
        assert!(slot.claim_own(v), "the owner's object is in its slot");
        slot.release(v);
        let filled = registrar.join().unwrap();
        assert!(!filled, "another object was registered in an occupied slot");
        assert_eq!(
            slot.try_claim(),
            Some(v),
            "the owner's object is in its slot"
        );
        slot.release(v);
        slot.take(v, || {});
    });
}
