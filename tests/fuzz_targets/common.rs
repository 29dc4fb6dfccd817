//! Helpers shared by the fuzz targets in this folder: byte patterns, a set of live address
//! ranges that refuses overlaps, the live blocks of a shadow model, thread moves between CPUs, and running ops in a thread that
//! then exits (`thread_op`).
//!
//! Each target is a `pub fn run(data: &[u8])` in its own file here; it decodes `data` into
//! operations with `arbitrary` and checks every result against a shadow model, panicking on
//! the first difference. Both `fuzz/fuzz_targets/*.rs` (cargo-fuzz, nightly) and
//! `tests/fuzz_replay.rs` (stable, replays `fuzz/corpus/<target>/`) include these files with
//! `#[path]`, next to this one as the crate-root module `common`.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// Byte `i` of a block whose seed is `seed`: varies along the block, so a copy to the wrong
/// offset or a block shared with another shows.
#[inline]
pub fn pat(seed: u8, i: usize) -> u8 {
    seed ^ ((i % 251) as u8)
}

/// One period of the pattern of `seed` (it repeats every 251 bytes).
fn period(seed: u8) -> [u8; 251] {
    std::array::from_fn(|i| pat(seed, i))
}

/// Writes the pattern of `seed` into bytes `from..to` of the block at `p`.
///
/// # Safety
/// `p` is valid for writes of `to` bytes.
pub unsafe fn fill(p: *mut u8, from: usize, to: usize, seed: u8) {
    if from >= to {
        return;
    }
    let t = period(seed);
    // SAFETY: bytes from..to of the block (caller's contract).
    let dst = unsafe { std::slice::from_raw_parts_mut(p.add(from), to - from) };
    let mut i = from;
    for chunk in dst.chunks_mut(251) {
        let (k, len) = (i % 251, chunk.len());
        let n = len.min(251 - k);
        chunk[..n].copy_from_slice(&t[k..k + n]);
        chunk[n..].copy_from_slice(&t[..len - n]);
        i += len;
    }
}

/// Panics unless bytes `from..to` of the block at `p` hold the pattern of `seed`.
///
/// # Safety
/// `p` is valid for reads of `to` bytes.
pub unsafe fn check(p: *const u8, from: usize, to: usize, seed: u8, what: &str) {
    if from >= to {
        return;
    }
    let t = period(seed);
    // SAFETY: bytes from..to of the block (caller's contract).
    let src = unsafe { std::slice::from_raw_parts(p.add(from), to - from) };
    let mut i = from;
    for chunk in src.chunks(251) {
        let k = i % 251;
        let n = chunk.len().min(251 - k);
        if chunk[..n] != t[k..k + n] || chunk[n..] != t[..chunk.len() - n] {
            let j = (0..chunk.len())
                .find(|&j| chunk[j] != pat(seed, i + j))
                .unwrap_or(0);
            panic!(
                "{what}: byte {} of the block at {p:p} ({to} bytes checked) is {:#x}, not its \
                 pattern {:#x}",
                i + j,
                chunk[j],
                pat(seed, i + j)
            );
        }
        i += chunk.len();
    }
}

/// Panics unless the `len` bytes at `p` are zero.
///
/// # Safety
/// `p` is valid for reads of `len` bytes.
pub unsafe fn check_zero(p: *const u8, len: usize, what: &str) {
    // SAFETY: len bytes at p (caller's contract).
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    if let Some(i) = s.iter().position(|&b| b != 0) {
        panic!(
            "{what}: byte {i} of the zeroed block at {p:p} is {:#x}",
            s[i]
        );
    }
}

/// The address ranges of the live blocks; inserting one that overlaps another panics (one
/// block handed out twice, or two blocks sharing bytes).
#[derive(Default)]
pub struct Ranges(BTreeMap<usize, usize>);

impl Ranges {
    /// Adds `[start, start + len)` (a zero length counts as one byte).
    pub fn insert(&mut self, start: usize, len: usize, what: &str) {
        let end = start + len.max(1);
        if let Some((&s, &e)) = self.0.range(..end).next_back() {
            assert!(
                e <= start,
                "{what}: new block {start:#x}..{end:#x} overlaps live block {s:#x}..{e:#x}"
            );
        }
        self.0.insert(start, end);
    }

    /// Removes the range starting at `start`.
    pub fn remove(&mut self, start: usize) {
        assert!(
            self.0.remove(&start).is_some(),
            "no live range at {start:#x}"
        );
    }

    /// Number of live ranges.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// A live block of a target's shadow model: where it is, how many bytes were asked, the seed
/// of the pattern it holds, and what else the target needs to free it (`extra`: its
/// alignment, the kind of handle that allocated it, or nothing).
pub struct Live<T> {
    pub addr: usize,
    pub size: usize,
    pub seed: u8,
    pub extra: T,
}

/// The live blocks of a target's shadow model, each filled with its pattern: their address
/// ranges (a new block that overlaps a live one panics) and their total size.
pub struct LiveBlocks<T> {
    blocks: Vec<Live<T>>,
    ranges: Ranges,
    bytes: usize,
    /// Whether a zero-size block takes a (one-byte) range: not where one dangling address
    /// may serve every zero-size block (`Allocator::allocate`).
    empty_takes_a_byte: bool,
}

impl<T> Default for LiveBlocks<T> {
    fn default() -> Self {
        LiveBlocks::new()
    }
}

impl<T> LiveBlocks<T> {
    /// None live; a zero-size block counts as one byte, so it overlaps no other block.
    pub fn new() -> Self {
        LiveBlocks {
            blocks: Vec::new(),
            ranges: Ranges::default(),
            bytes: 0,
            empty_takes_a_byte: true,
        }
    }

    /// None live; zero-size blocks take no range (they may all share one address).
    pub fn sharing_empty() -> Self {
        LiveBlocks {
            empty_takes_a_byte: false,
            ..LiveBlocks::new()
        }
    }

    /// Records the fresh block of `size` bytes at `p` (panicking if it overlaps a live one)
    /// and fills it with the pattern of `seed`.
    ///
    /// # Safety
    /// `p` is valid for writes of `size` bytes, the caller's alone until it is taken back.
    pub unsafe fn add(&mut self, p: *mut u8, size: usize, seed: u8, extra: T, what: &str) {
        if size > 0 || self.empty_takes_a_byte {
            self.ranges.insert(p as usize, size, what);
        }
        // SAFETY: the block has `size` bytes, ours alone (caller's contract).
        unsafe { fill(p, 0, size, seed) };
        self.bytes += size;
        self.blocks.push(Live {
            addr: p as usize,
            size,
            seed,
            extra,
        });
    }

    /// Takes block `i` out (the last one takes its place), panicking unless it still holds
    /// its pattern.
    pub fn take(&mut self, i: usize, what: &str) -> Live<T> {
        let b = self.blocks.swap_remove(i);
        // SAFETY: a live block of b.size bytes (`add`'s contract holds until it is taken).
        unsafe { check(b.addr as *const u8, 0, b.size, b.seed, what) };
        if b.size > 0 || self.empty_takes_a_byte {
            self.ranges.remove(b.addr);
        }
        self.bytes -= b.size;
        b
    }

    /// The index of a live block drawn from `idx`, if any is live.
    pub fn pick(&self, idx: u16) -> Option<usize> {
        (!self.blocks.is_empty()).then(|| idx as usize % self.blocks.len())
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The bytes asked for by the live blocks.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The number of live ranges (of every block, or of the non-empty ones).
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Live<T>> {
        self.blocks.iter()
    }
}

impl<T> std::ops::Index<usize> for LiveBlocks<T> {
    type Output = Live<T>;
    fn index(&self, i: usize) -> &Live<T> {
        &self.blocks[i]
    }
}

impl<'a, T> IntoIterator for &'a LiveBlocks<T> {
    type Item = &'a Live<T>;
    type IntoIter = std::slice::Iter<'a, Live<T>>;
    fn into_iter(self) -> Self::IntoIter {
        self.blocks.iter()
    }
}

/// Moves the calling thread between the CPUs it may run on (under
/// `TIERALLOC_SIMULATE_NODES=N` a CPU's node is its number modulo N, so this moves it between
/// nodes); restores the thread's CPU set when dropped.
pub struct Affinity {
    saved: libc::cpu_set_t,
    cpus: Vec<usize>,
}

impl Affinity {
    /// Saves the calling thread's CPU set.
    pub fn save() -> Affinity {
        // SAFETY: cpu_set_t is plain data; all-zero is an empty set.
        let mut saved: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid cpu_set_t of the size passed; pid 0 is this thread.
        let r = unsafe {
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut saved)
        };
        let cpus = if r == 0 {
            (0..libc::CPU_SETSIZE as usize)
                // SAFETY: i < CPU_SETSIZE.
                .filter(|&i| unsafe { libc::CPU_ISSET(i, &saved) })
                .collect()
        } else {
            Vec::new()
        };
        Affinity { saved, cpus }
    }

    /// Pins the calling thread to the `k`-th allowed CPU (modulo their number).
    pub fn move_to(&self, k: u8) {
        if self.cpus.is_empty() {
            return;
        }
        let cpu = self.cpus[k as usize % self.cpus.len()];
        // If the kernel refuses (a restricted container) the op is a no-op: nothing to check.
        let _ = tieralloc::numa::pin_current_thread_to_cpu(cpu as u32);
    }

    /// Restores the saved CPU set on the calling thread.
    pub fn restore(&self) {
        // SAFETY: `saved` is a valid cpu_set_t of the size passed; pid 0 is this thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.saved) };
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Runs `f` on a new thread and waits until that thread has exited (its thread-local heap
/// has gone through thread exit), propagating a panic.
pub fn in_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e),
    })
}

/// The op of `ops` at `*next` (which then points past it), counted in `count`; `None` at the
/// end of `ops`, or once `count` passes `budget` (the ops of an input in all its threads, so
/// that no input runs long).
pub fn next_op<'o, O>(
    ops: &'o [O],
    next: &mut usize,
    count: &mut usize,
    budget: usize,
) -> Option<&'o O> {
    let op = ops.get(*next)?;
    *next += 1;
    *count += 1;
    (*count <= budget).then_some(op)
}

/// Runs a `Thread(n)` op: the next `n % 32` ops of `ops` after `*next` (which then points
/// past them) go to `run(inner, affinity, depth)` on a new thread, which exits afterwards.
/// Two levels deep at most: deeper, they run on the calling thread, with its `aff`.
pub fn thread_op<'o, O: Sync>(
    ops: &'o [O],
    next: &mut usize,
    n: u8,
    aff: &Affinity,
    depth: u32,
    run: impl FnOnce(&'o [O], &Affinity, u32) + Send,
) {
    let inner = &ops[*next..(*next + n as usize % 32).min(ops.len())];
    *next += inner.len();
    if depth < 2 {
        in_thread(|| run(inner, &Affinity::save(), depth + 1));
    } else {
        run(inner, aff, depth);
    }
}

/// A size drawn from `kind` and `raw`: mostly small, sometimes medium or large, rarely huge
/// (a mapping of its own), up to `max`.
pub fn size_of(kind: u8, raw: u32, max: usize) -> usize {
    let s = match kind % 16 {
        0..=7 => raw as usize % 257,
        8..=10 => raw as usize % (8 << 10),
        11..=12 => raw as usize % (128 << 10),
        13..=14 => raw as usize % (1 << 20),
        _ => raw as usize % (9 << 20),
    };
    s.min(max)
}

/// An alignment drawn from `a`: mostly 1..=4 KiB, sometimes up to 2 MiB, rarely above 2 MiB
/// (4 and 8 MiB), which tieralloc must refuse.
pub fn align_of(a: u8) -> usize {
    match a {
        0..=199 => 1 << (a % 13),
        200..=251 => 1 << (13 + a % 9),
        _ => 1 << (22 + a % 2),
    }
}
