//! A `#[global_allocator]` that forwards every call to one allocator chosen at run time by an
//! environment variable: tieralloc, the system allocator, mimalloc, jemalloc
//! (tikv-jemallocator) and numalloc (only with the `bench-peers` feature), or TCMalloc
//! (`tcmalloc-better`, only with the `bench-tcmalloc` feature). A name whose feature is off is
//! refused and the default serves.
//!
//! Owns: the choice (read once, on the first call, with `libc::getenv`, which does not
//! allocate, then cached in an atomic) and the forwarding of the four `GlobalAlloc` calls.
//! May touch: the environment (read only) and the five allocators; nothing else.
//!
//! Shared, with `#[path = ...] mod dispatch;`, by benches/workloads (`TIERALLOC_BENCH_ALLOC`,
//! system when unset) and examples/service.rs (`TIERALLOC_SERVICE_ALLOC`, tieralloc when
//! unset), so it uses only the crate, its dev-dependencies and the benchmark-only optional
//! dependencies. After the first call every call pays one relaxed load and one
//! compare-and-branch whose outcome never changes within a process (perfectly predicted), the
//! same for every allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// The allocators a [`Dispatch`] can forward to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(
    dead_code,
    reason = "a target names only the choices it offers, and a peer's is made only with its feature"
)]
pub enum Choice {
    TierAlloc = 1,
    Mimalloc = 2,
    System = 3,
    Jemalloc = 4,
    Numalloc = 5,
    Tcmalloc = 6,
}

// The hot path matches on these bytes; anything else (`Choice::System`) is the system allocator.
const UNSET: u8 = 0;
const TIER: u8 = Choice::TierAlloc as u8;
#[cfg(feature = "bench-peers")]
const MI: u8 = Choice::Mimalloc as u8;
#[cfg(feature = "bench-peers")]
const JE: u8 = Choice::Jemalloc as u8;
#[cfg(feature = "bench-peers")]
const NUMA: u8 = Choice::Numalloc as u8;
#[cfg(feature = "bench-tcmalloc")]
const TC: u8 = Choice::Tcmalloc as u8;

impl Choice {
    /// The name the environment variable gives it (and reports print).
    pub fn name(self) -> &'static str {
        match self {
            Choice::TierAlloc => "tieralloc",
            Choice::Mimalloc => "mimalloc",
            Choice::System => "system",
            Choice::Jemalloc => "jemalloc",
            Choice::Numalloc => "numalloc",
            Choice::Tcmalloc => "tcmalloc",
        }
    }

    fn from_name(name: &[u8]) -> Option<Choice> {
        Some(match name {
            b"tieralloc" => Choice::TierAlloc,
            #[cfg(feature = "bench-peers")]
            b"mimalloc" => Choice::Mimalloc,
            b"system" => Choice::System,
            #[cfg(feature = "bench-peers")]
            b"jemalloc" => Choice::Jemalloc,
            #[cfg(feature = "bench-peers")]
            b"numalloc" => Choice::Numalloc,
            #[cfg(feature = "bench-tcmalloc")]
            b"tcmalloc" => Choice::Tcmalloc,
            _ => return None,
        })
    }

    fn from_u8(v: u8) -> Choice {
        match v {
            TIER => Choice::TierAlloc,
            #[cfg(feature = "bench-peers")]
            MI => Choice::Mimalloc,
            #[cfg(feature = "bench-peers")]
            JE => Choice::Jemalloc,
            #[cfg(feature = "bench-peers")]
            NUMA => Choice::Numalloc,
            #[cfg(feature = "bench-tcmalloc")]
            TC => Choice::Tcmalloc,
            _ => Choice::System,
        }
    }
}

static TIERALLOC: tieralloc::TierAlloc = tieralloc::TierAlloc::new();
#[cfg(feature = "bench-peers")]
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "bench-peers")]
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(feature = "bench-peers")]
static NUMALLOC: numalloc::NumaAlloc = numalloc::NumaAlloc::new();
#[cfg(feature = "bench-tcmalloc")]
static TCMALLOC: tcmalloc_better::TCMalloc = tcmalloc_better::TCMalloc;

/// Forwards to the allocator named by the environment variable `var` if it is one of
/// `offered`, else to `default`; chosen once per process.
pub struct Dispatch {
    var: &'static CStr,
    default: Choice,
    offered: &'static [Choice],
    chosen: AtomicU8,
}

impl Dispatch {
    /// A dispatcher reading `var` (unset, or a name not in `offered`: `default`).
    pub const fn new(var: &'static CStr, default: Choice, offered: &'static [Choice]) -> Self {
        Dispatch {
            var,
            default,
            offered,
            chosen: AtomicU8::new(UNSET),
        }
    }

    /// The allocator every call goes to (choosing it now if no call has yet).
    pub fn choice(&self) -> Choice {
        Choice::from_u8(self.chosen())
    }

    /// The value of the environment variable if it names no allocator this dispatcher serves
    /// (a name not offered, unknown, or whose feature this build lacks): the dispatcher then
    /// serves its default, which a program should say rather than run as if asked. Not for
    /// the allocation path (it may allocate).
    #[allow(
        dead_code,
        reason = "the service refuses such a value; the benchmark driver checks its own list"
    )]
    pub fn refused(&self) -> Option<String> {
        let var = std::str::from_utf8(self.var.to_bytes()).ok()?;
        let asked = std::env::var_os(var)?;
        let asked = asked.to_string_lossy().into_owned();
        (asked != self.choice().name()).then_some(asked)
    }

    #[inline(always)]
    fn chosen(&self) -> u8 {
        let c = self.chosen.load(Ordering::Relaxed);
        if c != UNSET {
            c
        } else {
            self.choose()
        }
    }

    #[cold]
    #[inline(never)]
    fn choose(&self) -> u8 {
        // SAFETY: `var` is NUL-terminated; getenv does not allocate (so calling it from inside
        // the allocator cannot recurse) and returns null or a NUL-terminated string in the
        // environment block, which nobody modifies in these programs.
        let v = unsafe { libc::getenv(self.var.as_ptr()) };
        let named = if v.is_null() {
            None
        } else {
            // SAFETY: a non-null result of getenv is a valid C string (see above).
            Choice::from_name(unsafe { CStr::from_ptr(v) }.to_bytes())
        };
        let c = named
            .filter(|c| self.offered.contains(c))
            .unwrap_or(self.default) as u8;
        // Racing first calls all compute the same value from the same environment, so a plain
        // store is enough.
        self.chosen.store(c, Ordering::Relaxed);
        c
    }
}

/// `$a` bound to the chosen allocator (a `&'static` of its type), then `$call`. The peers'
/// arms exist only in builds with their feature; without it their choice never gets made
/// (`from_name` refuses the name), so the system arm would not be reached for them either.
macro_rules! forward {
    ($self:ident, $a:ident => $call:expr) => {
        forward_arms!($self, $a => $call;
            TIER: TIERALLOC,
            #[cfg(feature = "bench-peers")] MI: MIMALLOC,
            #[cfg(feature = "bench-peers")] JE: JEMALLOC,
            #[cfg(feature = "bench-peers")] NUMA: NUMALLOC,
            #[cfg(feature = "bench-tcmalloc")] TC: TCMALLOC)
    };
}
/// One arm per `[#[cfg]] CHOICE: STATIC`, then the system allocator's.
macro_rules! forward_arms {
    ($self:ident, $a:ident => $call:expr; $($(#[$m:meta])* $k:ident: $alloc:ident),*) => {
        match $self.chosen() {
            $($(#[$m])* $k => {
                let $a = &$alloc;
                $call
            })*
            _ => {
                let $a = &System;
                $call
            }
        }
    };
}

// SAFETY: every call goes to the same one of the GlobalAlloc implementations for the whole
// life of the process (the choice never changes once made), so pointers are always freed by
// the allocator that returned them, with each one's contract forwarded unchanged.
unsafe impl GlobalAlloc for Dispatch {
    #[inline(always)]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        forward!(self, a => unsafe { a.alloc(l) })
    }
    #[inline(always)]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract; `p` came from the same allocator (fixed choice).
        forward!(self, a => unsafe { a.dealloc(p, l) })
    }
    #[inline(always)]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        forward!(self, a => unsafe { a.alloc_zeroed(l) })
    }
    #[inline(always)]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded contract; `p` came from the same allocator (fixed choice).
        forward!(self, a => unsafe { a.realloc(p, l, n) })
    }
}
