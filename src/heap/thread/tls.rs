//! Per-thread heap access: where a thread finds its `Heap`.
//!
//! Owns: the `thread_local!` heap, and with the `initial-exec-tls` feature on x86-64 Linux the
//! hand-made initial-exec TLS slot that caches its address and the `UNSET_HEAP` placeholder a
//! new thread's slot points at. The feature's condition is written once: the two ways of
//! reaching the heap are the two versions of the inner module `imp`. May touch: the `Heap`
//! type (`super`), `core::arch` (the slot's assembly). Nothing here allocates or registers.

use super::{Heap, HeapRef};
use core::cell::UnsafeCell;

thread_local! {
    static HEAP: UnsafeCell<Heap> = const { UnsafeCell::new(Heap::new()) };
}

pub(crate) use imp::heap;
pub(super) use imp::{heap_or_unset, is_unset};

/// The calling thread's heap as a [`HeapRef`]: for the entry points that are not on the fast
/// paths (and for the fast paths' cold paths, once they know the thread has looked it up).
#[inline(always)]
pub(super) fn own() -> HeapRef {
    // SAFETY: heap() is the calling thread's own heap, never the unset one.
    unsafe { HeapRef::new(heap()) }
}

/// The plain `thread_local!`: the heap's address is `HEAP.with`, a TLS offset (no lazy-init
/// check: the heap is `const`-initialised).
#[cfg(not(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
)))]
mod imp {
    use super::{Heap, HEAP};

    /// The calling thread's heap.
    #[inline(always)]
    pub(crate) fn heap() -> *mut Heap {
        HEAP.with(|h| h.get())
    }

    /// The calling thread's heap; never the unset heap here (the initial-exec variant may
    /// return it: see [`is_unset`]).
    #[inline(always)]
    pub(crate) fn heap_or_unset() -> *mut Heap {
        heap()
    }

    /// Whether `h` (from [`heap_or_unset`]) is the placeholder of a thread that has not
    /// looked its heap up yet. Never here.
    #[inline(always)]
    pub(crate) fn is_unset(_h: *mut Heap) -> bool {
        false
    }
}

// A shared library (the malloc drop-in) reaches `thread_local!` data through
// `__tls_get_addr`, a call on every malloc and free. With the `initial-exec-tls` feature the
// heap's address is cached in a TLS slot declared by hand in the static TLS block and read
// with the initial-exec model: one load of its offset from the GOT and one %fs-relative load.
// This is what C allocators do with `__attribute__((tls_model("initial-exec")))`; it needs
// the library to be loaded at start-up (LD_PRELOAD, or linked), or glibc's static TLS reserve
// when it is dlopen'ed.
//
// A new thread's slot holds the address of UNSET_HEAP (the TLS image is initialised data, not
// zeros), a heap that owns nothing and whose pages have no free block: the fast paths need no
// null check, since with it `malloc` finds no block and `free` finds no segment of its own,
// and the slow paths they fall into look the real heap up (`is_unset`).
#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
))]
mod imp {
    use super::{Heap, HEAP};
    use core::ptr;

    core::arch::global_asm!(
        ".pushsection .tdata,\"awT\",@progbits",
        ".p2align 3",
        ".globl __tieralloc_heap_slot",
        ".hidden __tieralloc_heap_slot",
        ".type __tieralloc_heap_slot, @tls_object",
        ".size __tieralloc_heap_slot, 8",
        "__tieralloc_heap_slot:",
        ".quad {unset}",
        ".popsection",
        unset = sym UNSET_HEAP,
    );

    /// The heap every thread's slot points at until the thread looks its own up. Never
    /// written: it owns no segment, its `pages` and `direct` entries are `EMPTY_PAGE` (no free
    /// block), and every path that would change a heap checks `is_unset` first.
    static UNSET_HEAP: UnsetHeap = UnsetHeap(Heap::new());

    /// [`UNSET_HEAP`]'s type.
    struct UnsetHeap(Heap);

    // SAFETY: UNSET_HEAP is only ever read (see its comment), so sharing it is sound.
    unsafe impl Sync for UnsetHeap {}

    /// Whether `h` (from [`heap_or_unset`]) is [`UNSET_HEAP`]: this thread has not looked its
    /// heap up yet.
    #[inline(always)]
    pub(crate) fn is_unset(h: *mut Heap) -> bool {
        ptr::eq(h, &UNSET_HEAP.0)
    }

    /// The calling thread's heap (initial-exec TLS slot; see above).
    #[inline(always)]
    pub(crate) fn heap() -> *mut Heap {
        let slot = heap_slot();
        // SAFETY: the slot is this thread's (see heap_slot).
        unsafe {
            let h = *slot;
            if !is_unset(h) {
                return h;
            }
            let h = HEAP.with(|h| h.get());
            *slot = h;
            h
        }
    }

    /// The calling thread's heap, or [`UNSET_HEAP`] if this thread has not looked it up yet:
    /// the fast paths find nothing in that one and call [`heap`] from their cold paths, so
    /// that they themselves hold no call and no check.
    #[inline(always)]
    pub(crate) fn heap_or_unset() -> *mut Heap {
        let h: *mut Heap;
        // SAFETY: as in heap_slot; the slot is read through %fs directly (one load fewer than
        // forming its address first). The asm reads memory only.
        unsafe {
            core::arch::asm!(
                "mov {h}, qword ptr [rip + __tieralloc_heap_slot@GOTTPOFF]",
                "mov {h}, qword ptr fs:[{h}]",
                h = out(reg) h,
                options(nostack, readonly, preserves_flags),
            );
        }
        h
    }

    /// The address of this thread's heap slot.
    #[inline(always)]
    fn heap_slot() -> *mut *mut Heap {
        let slot: *mut *mut Heap;
        // SAFETY: the slot is an 8-byte, 8-aligned TLS variable of this object; its offset
        // from the thread pointer comes from the GOT (R_X86_64_TPOFF64, set by the dynamic
        // linker), %fs:0 holds the thread pointer on x86-64 Linux; the asm only reads memory.
        unsafe {
            core::arch::asm!(
                "mov {slot}, qword ptr [rip + __tieralloc_heap_slot@GOTTPOFF]",
                "add {slot}, qword ptr fs:0",
                slot = out(reg) slot,
                options(nostack, readonly, preserves_flags, pure),
            );
        }
        slot
    }
}
