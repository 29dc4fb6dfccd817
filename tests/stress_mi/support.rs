//! Support for the stress test (tests/stress_mi.rs): a seeded generator, blocks and their
//! cookies, the index of live blocks, fault reports that do not allocate, and CPU pinning.

#![allow(dead_code)]

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

// ---------------------------------------------------------------------------------------------
// Randomness: splitmix64, seeded per run, round and thread, so a failure names its seed.

pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6A09_E667_F3BC_C909)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// Blocks and their cookies.

/// A block the test owns: where, how big, its alignment, and its serial number (unique per
/// allocation, so a block handed out twice at the same address and size still differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blk {
    pub addr: usize,
    pub size: usize,
    pub align: usize,
    pub serial: u64,
    /// The worker that allocated (or last resized) it.
    pub owner: u32,
}

impl Blk {
    pub fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).unwrap()
    }
    pub fn cookie(&self) -> u64 {
        mix((self.addr as u64) ^ (self.size as u64).rotate_left(40) ^ mix(self.serial))
    }
}

/// Blocks up to this many words are written and checked whole; bigger ones at probes.
pub const FULL_WORDS: usize = 8 << 10;
/// Head and tail words probed in a big block.
pub const EDGE_WORDS: usize = 512;
/// One word in this many is probed in the middle of a big block (prime, so probes wander
/// across OS pages and cache lines).
pub const STRIDE: usize = 509;

/// Calls `f` on each word index of a block of `words` words that carries the cookie.
pub fn for_each_probe(words: usize, mut f: impl FnMut(usize) -> bool) -> bool {
    if words <= FULL_WORDS {
        return (0..words).all(f);
    }
    (0..EDGE_WORDS).all(&mut f)
        && (EDGE_WORDS..words - EDGE_WORDS).step_by(STRIDE).all(&mut f)
        && (words - EDGE_WORDS..words).all(f)
}

pub fn word_val(cookie: u64, i: usize) -> u64 {
    cookie ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

pub fn byte_val(cookie: u64, j: usize) -> u8 {
    (cookie >> (8 * (j % 8))) as u8 ^ (j as u8)
}

/// Writes `b`'s cookie into the block.
pub fn fill(b: &Blk) {
    let (c, p, words) = (b.cookie(), b.addr as *mut u8, b.size / 8);
    for_each_probe(words, |i| {
        // SAFETY: word i lies inside the live block (8 * i + 8 <= size).
        unsafe { (p.add(8 * i) as *mut u64).write_unaligned(word_val(c, i)) };
        true
    });
    for j in words * 8..b.size {
        // SAFETY: j < size.
        unsafe { *p.add(j) = byte_val(c, j) };
    }
}

/// Checks the cookie of `b` in the block's first `limit` bytes (all of it when limit >= size),
/// reading from `at` (the block itself, or where realloc moved it). Returns the first bad
/// byte offset.
pub fn check_at(b: &Blk, at: usize, limit: usize) -> Result<(), usize> {
    let (c, p, words) = (b.cookie(), at as *const u8, b.size / 8);
    let limit = limit.min(b.size);
    let mut bad = None;
    for_each_probe(words, |i| {
        if 8 * i + 8 > limit {
            return true;
        }
        // SAFETY: word i lies inside the live block.
        let v = unsafe { (p.add(8 * i) as *const u64).read_unaligned() };
        if v != word_val(c, i) {
            bad = Some(8 * i + (v ^ word_val(c, i)).trailing_zeros() as usize / 8);
            return false;
        }
        true
    });
    if let Some(o) = bad {
        return Err(o);
    }
    for j in words * 8..limit {
        // SAFETY: j < size.
        if unsafe { *p.add(j) } != byte_val(c, j) {
            return Err(j);
        }
    }
    Ok(())
}

/// Checks that the whole block is zero (alloc_zeroed). Returns the first non-zero offset.
pub fn check_zero(b: &Blk) -> Result<(), usize> {
    // SAFETY: the block is live and `size` bytes long.
    let s = unsafe { std::slice::from_raw_parts(b.addr as *const u8, b.size) };
    let (head, mid, tail) = {
        // SAFETY: reading initialised bytes as u64 at any alignment u64 allows.
        unsafe { s.align_to::<u64>() }
    };
    if let Some(i) = head.iter().position(|&x| x != 0) {
        return Err(i);
    }
    if let Some(i) = mid.iter().position(|&x| x != 0) {
        return Err(head.len() + 8 * i);
    }
    match tail.iter().position(|&x| x != 0) {
        Some(i) => Err(head.len() + 8 * mid.len() + i),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The index of live blocks.

/// start → (end, serial, align, owner) of every live block. One lock: the test's bookkeeping
/// serialises here, the allocator calls do not (they happen outside the lock).
pub struct Index(pub Mutex<BTreeMap<usize, Entry>>);

#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub end: usize,
    pub align: usize,
    pub serial: u64,
    pub owner: u32,
}

impl Index {
    pub fn lock(&self) -> MutexGuard<'_, BTreeMap<usize, Entry>> {
        // A failed thread may have poisoned it; the others fail on their own evidence.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a block the allocator has just returned. Fails if it overlaps a live block.
    pub fn insert(&self, b: &Blk) -> Result<(), Fault> {
        let end = b.addr + b.size;
        let mut m = self.lock();
        let below = m.range(..=b.addr).next_back().map(|(&s, e)| (s, *e));
        let above = m.range(b.addr..end).next().map(|(&s, e)| (s, *e));
        for (s, e) in below.into_iter().chain(above) {
            if s < end && b.addr < e.end {
                return Err(Fault::Overlap(*b, s, e));
            }
        }
        m.insert(
            b.addr,
            Entry {
                end,
                align: b.align,
                serial: b.serial,
                owner: b.owner,
            },
        );
        Ok(())
    }

    /// Removes a block about to be freed (or resized); it must be in the index as it is.
    pub fn remove(&self, b: &Blk) -> Result<(), Fault> {
        let got = self.lock().remove(&b.addr);
        match got {
            Some(e) if e.end == b.addr + b.size && e.serial == b.serial => Ok(()),
            other => Err(Fault::NotLive(*b, other)),
        }
    }

    /// The block that starts at `addr` (taken out of the transfer array).
    pub fn get(&self, addr: usize) -> Result<Blk, Fault> {
        match self.lock().get(&addr) {
            Some(e) => Ok(Blk {
                addr,
                size: e.end - addr,
                align: e.align,
                serial: e.serial,
                owner: e.owner,
            }),
            None => Err(Fault::NotInIndex(addr)),
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

/// What a check found. Plain data, so it can be reported without allocating: after a block
/// was handed out twice the allocator's lists may be broken, and the report must get out
/// before anything else allocates.
#[derive(Debug)]
pub enum Fault {
    /// A new block overlaps the live block starting at .1.
    Overlap(Blk, usize, Entry),
    /// A block to be freed or resized is not in the index as it should be.
    NotLive(Blk, Option<Entry>),
    /// An address taken out of the transfer array is not live.
    NotInIndex(usize),
    /// A block's cookie is broken at this byte (read at the given address).
    Cookie(Blk, usize, usize, &'static str),
    /// alloc_zeroed returned a non-zero byte at this offset.
    NotZero(Blk, usize),
    /// An allocation or realloc failed or was misaligned: (size, align, result, what).
    Bad(usize, usize, usize, &'static str),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Overlap(b, s, e) => write!(
                f,
                "block handed out twice: new {b:x?} overlaps live block {s:#x}..{:#x} \
                 (serial {:#x}, align {:#x}, worker {:#x})",
                e.end, e.serial, e.align, e.owner
            ),
            Fault::NotLive(b, e) => write!(f, "index entry of {b:x?} is {e:x?}"),
            Fault::NotInIndex(a) => write!(f, "{a:#x} from the transfer array is not live"),
            Fault::Cookie(b, at, o, when) => write!(
                f,
                "{when}: cookie of {b:x?} (read at {at:#x}) broken at byte {o}: corrupted, \
                 or handed to someone else while live"
            ),
            Fault::NotZero(b, o) => write!(f, "alloc_zeroed {b:x?}: byte {o} is not zero"),
            Fault::Bad(size, align, p, what) => {
                write!(f, "{what}: size {size}, align {align}: returned {p:#x}")
            }
        }
    }
}

/// A fixed buffer to format a report into without allocating.
pub struct Buf {
    pub b: [u8; 1024],
    pub n: usize,
}

impl std::fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let k = s.len().min(self.b.len() - self.n);
        self.b[self.n..self.n + k].copy_from_slice(&s.as_bytes()[..k]);
        self.n += k;
        Ok(())
    }
}

/// Writes the report straight to stderr (past the test harness's capture) and aborts: the
/// allocator cannot be trusted to unwind a panic once it has handed a block out twice.
pub fn die(args: std::fmt::Arguments<'_>) -> ! {
    let mut buf = Buf { b: [0; 1024], n: 0 };
    let _ = std::fmt::Write::write_fmt(&mut buf, format_args!("\nstress_mi FAILED: {args}\n"));
    // SAFETY: writes initialised bytes of our buffer to fd 2.
    unsafe { libc::write(2, buf.b.as_ptr().cast(), buf.n) };
    std::process::abort();
}

// ---------------------------------------------------------------------------------------------
// CPU moves.

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`. Under simulated nodes this changes its home node
/// whenever `cpu % N` changes; the heap notices within 16 slow paths.
pub fn pin(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; the call reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0
    }
}

pub fn current_cpu() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::sched_getcpu() }
}

/// The run and round under way, for the crash report.
pub static NOW_SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static NOW_ROUND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn on_crash(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut buf = Buf { b: [0; 1024], n: 0 };
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let _ = std::fmt::Write::write_fmt(
        &mut buf,
        format_args!(
            "\nstress_mi FAILED: signal {sig} (fault address {addr:#x}) in seed {:#x} round {}: \
             the allocator's own structures are broken (a block handed out twice, or memory \
             used after it was given back)\n",
            NOW_SEED.load(Relaxed),
            NOW_ROUND.load(Relaxed)
        ),
    );
    // SAFETY: write(2) is async-signal-safe; the buffer is ours. With SA_RESETHAND the
    // fault repeats on return and kills the process with the default action.
    unsafe { libc::write(2, buf.b.as_ptr().cast(), buf.n) };
}

/// Reports SIGSEGV and SIGBUS with the seed and round before the process dies of them.
pub fn install_crash_report() {
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: sigaction is plain data; the handler only formats into a stack buffer and
        // calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_crash as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}
