//! Out of memory: with the address space capped (RLIMIT_AS), every allocation path returns
//! null instead of aborting or panicking, impossible requests return null, and once the cap
//! is lifted allocation works again with every earlier block intact.
//!
//! The scenario runs in a child process (this test binary, re-executed with
//! `TIERALLOC_TEST_OOM_CHILD=1`), because capping the address space would break any test
//! running next to it. tieralloc is the global allocator, so the Rust runtime runs on it too.

use std::alloc::{GlobalAlloc, Layout};
use std::process::Command;
use std::ptr;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const CHILD_ENV: &str = "TIERALLOC_TEST_OOM_CHILD";
const MARKER: &str = "OOM-SCENARIO-OK";
const MAGIC: usize = 0x5EED_0000_0000_0000;

fn vm_size() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .expect("VmSize in kB");
    kb * 1024
}

fn set_as_limit(cur: libc::rlim_t, max: libc::rlim_t) {
    let r = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: a valid rlimit struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &r) };
    assert_eq!(rc, 0, "setrlimit failed");
}

/// A chain of blocks linked through their first word, so that recording them needs no
/// allocation while memory is exhausted. Word 1 holds `MAGIC ^ index`, the last word `index`.
struct Chain {
    head: *mut u8,
    len: usize,
    layout: Layout,
}

impl Chain {
    fn new(size: usize) -> Chain {
        Chain {
            head: ptr::null_mut(),
            len: 0,
            layout: Layout::from_size_align(size, 8).unwrap(),
        }
    }
    /// Allocates until null; panics if `max` blocks are allocated without a null.
    fn fill_until_null(&mut self, max: usize) {
        loop {
            // SAFETY: non-zero size.
            let p = unsafe { GLOBAL.alloc(self.layout) };
            if p.is_null() {
                return;
            }
            assert_eq!(p as usize % 8, 0);
            let w = p as *mut usize;
            let last = self.layout.size() / 8 - 1;
            // SAFETY: p holds layout.size() >= 64 bytes.
            unsafe {
                *w = self.head as usize;
                *w.add(1) = MAGIC ^ self.len;
                *w.add(last) = self.len;
            }
            self.head = p;
            self.len += 1;
            assert!(
                self.len < max,
                "{} blocks of {} B and still no null",
                self.len,
                self.layout.size()
            );
        }
    }
    /// Checks every block and frees it.
    fn check_and_free(&mut self) {
        let last = self.layout.size() / 8 - 1;
        let mut i = self.len;
        while !self.head.is_null() {
            i -= 1;
            let w = self.head as *mut usize;
            // SAFETY: every block on the chain is live and was written as above.
            unsafe {
                assert_eq!(
                    *w.add(1),
                    MAGIC ^ i,
                    "block {i} of {} B",
                    self.layout.size()
                );
                assert_eq!(*w.add(last), i, "block {i} of {} B", self.layout.size());
                let next = *w as *mut u8;
                GLOBAL.dealloc(self.head, self.layout);
                self.head = next;
            }
        }
        assert_eq!(i, 0);
        self.len = 0;
    }
}

#[test]
fn oom_child_scenario() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return; // only runs in the child process
    }
    println!("oom child: start"); // stdout's buffer exists before memory runs out
                                  // Blocks allocated before the cap, of every kind, with contents.
    let early: Vec<(usize, u8)> = vec![(24, 1), (100, 2), (5000, 3), (300 << 10, 4), (3 << 20, 5)];
    let mut early_blocks = [(ptr::null_mut::<u8>(), Layout::new::<u8>()); 5];
    for (k, &(size, byte)) in early.iter().enumerate() {
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { GLOBAL.alloc(l) };
        assert!(!p.is_null());
        // SAFETY: p holds size bytes.
        unsafe { ptr::write_bytes(p, byte, size) };
        early_blocks[k] = (p, l);
    }
    let mut huge = Chain::new(64 << 20);
    let mut large = Chain::new(1 << 20);
    let mut small = Chain::new(64);
    let realloc_layout = Layout::from_size_align(100, 8).unwrap();

    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut old) }, 0);
    let cap = (vm_size() + (256 << 20)) as libc::rlim_t;
    assert!(
        old.rlim_max == libc::RLIM_INFINITY || old.rlim_max > cap,
        "hard limit too low"
    );

    // ---- From here until the cap is lifted, nothing may allocate through std.
    set_as_limit(cap, old.rlim_max);
    huge.fill_until_null(64);
    large.fill_until_null(1 << 16);
    small.fill_until_null(1 << 26);
    let (nh, nl, ns) = (huge.len, large.len, small.len);

    // Requests no machine can serve.
    let impossible = [
        (isize::MAX as usize, 1),
        (isize::MAX as usize - 4095, 4096),
        (isize::MAX as usize / 2, 8),
        (1usize << 62, 16),
        (1usize << 40, 1 << 21),
    ];
    let mut impossible_ok = true;
    for &(size, align) in &impossible {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size.
        let (a, z) = unsafe { (GLOBAL.alloc(l), GLOBAL.alloc_zeroed(l)) };
        impossible_ok &= a.is_null() && z.is_null();
    }
    // Realloc to an impossible size fails and leaves the block alone.
    let (p0, l0) = early_blocks[1];
    // SAFETY: p0 is live with l0; the new size rounded up to 8 does not exceed isize::MAX.
    let r = unsafe { GLOBAL.realloc(p0, l0, isize::MAX as usize - 7) };
    let realloc_ok = r.is_null();
    let _ = realloc_layout;
    // Alignments beyond what tieralloc serves (over 2 MiB): null, never a block, aligned or
    // not (tests/align.rs checks the same with memory to spare).
    let mut align_ok = true;
    for shift in 22..=62 {
        let l = Layout::from_size_align(64, 1usize << shift).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { GLOBAL.alloc(l) };
        if !p.is_null() {
            align_ok = false;
            // SAFETY: p was just allocated with l.
            unsafe { GLOBAL.dealloc(p, l) };
        }
    }

    // ---- Lift the cap.
    set_as_limit(old.rlim_cur, old.rlim_max);
    println!("oom child: huge {nh}, large {nl}, small {ns} blocks before null");
    assert!(impossible_ok, "an impossible request returned a block");
    assert!(realloc_ok, "realloc to an impossible size returned a block");
    assert!(align_ok, "a request aligned over 2 MiB returned a block");
    assert!(
        nh * (64 << 20) < 256 << 20,
        "{nh} huge blocks under a 256 MiB cap"
    );

    // Allocation works again, at every size.
    for size in [64usize, 1 << 20, 64 << 20] {
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { GLOBAL.alloc(l) };
        assert!(!p.is_null(), "alloc({size}) fails after the cap was lifted");
        // SAFETY: p holds size bytes; allocated with l.
        unsafe {
            ptr::write_bytes(p, 0x5A, size);
            GLOBAL.dealloc(p, l);
        }
    }
    let v: Vec<u64> = (0..1_000_000).collect();
    assert_eq!(v.iter().sum::<u64>(), 999_999 * 1_000_000 / 2);

    // Everything allocated before and during the shortage is intact.
    for (k, &(size, byte)) in early.iter().enumerate() {
        let (p, l) = early_blocks[k];
        // SAFETY: p is live with size bytes.
        let s = unsafe { std::slice::from_raw_parts(p, size) };
        assert!(s.iter().all(|&b| b == byte), "early block {k} changed");
        // SAFETY: allocated with l.
        unsafe { GLOBAL.dealloc(p, l) };
    }
    huge.check_and_free();
    large.check_and_free();
    small.check_and_free();
    let s = tieralloc::stats();
    assert!(s.map_failures > 0, "no mmap failure was counted\n{s}");
    println!("{MARKER}");
}

#[test]
fn out_of_memory_returns_null_and_recovers() {
    run_child("oom_child_scenario", &[(CHILD_ENV, "1")]);
}

/// Runs the test `name` of this binary in a child process with `env` set, and checks that it
/// passed and printed the marker line (its last step).
fn run_child(name: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    for &(k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.lines().any(|l| l.trim() == MARKER),
        "no marker line\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

const CACHE_CHILD_ENV: &str = "TIERALLOC_TEST_OOM_CACHE_CHILD";
const MIB: usize = 1 << 20;

/// Frees `n` huge blocks of 3 MiB, so that the thread's huge cache keeps them (each holds 4
/// MiB of address space: its reservation), and caps the address space at what the process
/// uses then plus 16 MiB. Returns the old limit.
fn cache_full_then_cap(n: usize) -> libc::rlimit {
    let l = Layout::from_size_align(3 * MIB, 8).unwrap();
    let mut blocks = [ptr::null_mut::<u8>(); 30];
    for b in blocks.iter_mut().take(n) {
        // SAFETY: non-zero size.
        *b = unsafe { GLOBAL.alloc(l) };
        assert!(!b.is_null());
    }
    for &b in blocks.iter().take(n) {
        // SAFETY: allocated above with l, freed once.
        unsafe { GLOBAL.dealloc(b, l) };
    }
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut old) }, 0);
    let cap = (vm_size() + 16 * MIB) as libc::rlim_t;
    assert!(
        old.rlim_max == libc::RLIM_INFINITY || old.rlim_max > cap,
        "hard limit too low"
    );
    set_as_limit(cap, old.rlim_max);
    old
}

/// Out of address space, an allocation whose mapping fails gives the thread's cached huge
/// mappings back and tries again: the cache (up to 128 MiB a thread) never turns a request
/// that fits once the cache is empty into a null (review rev7: it did, for new segments and
/// for huge blocks alike).
#[test]
fn a_full_huge_cache_gives_way_to_new_mappings() {
    cache_child("global");
}

/// The child of `a_full_huge_cache_gives_way_to_new_mappings` and
/// `a_full_huge_cache_gives_way_to_explicit_placements` and its sibling: 30 freed 3 MiB blocks
/// in the thread's huge cache (120 MiB of address space, which the 128 MiB bound keeps), the
/// address space capped 16 MiB above what is in use; then 48 MiB of 1 MiB (large) blocks,
/// which need new segments, and one 48 MiB huge block, which no cached mapping holds and
/// whose assembly needs a new mapping of its size. Each fits once the cache is given back.
/// The variable names the way: `global` (the global allocator: the thread's own heap), or an
/// explicit placement whose memory does not come from the thread's heap, so that its own huge
/// cache is empty while the freed mappings are in the thread's: `local` (a `Placed::local()`
/// handle: the node heap of the thread's node), `interleave` (`Placed::interleave(&[0])`: a
/// mapping of its own per block), `mapped` (`Placed::node(0).bound()`: the same, bound) or
/// `label` (the global allocator inside a labelled scope: the label's heap).
#[test]
fn oom_cache_child_scenario() {
    use allocator_api2::alloc::Allocator;
    let Some(way) = std::env::var_os(CACHE_CHILD_ENV) else {
        return; // only runs in the child process
    };
    let way = way.into_string().unwrap();
    println!("oom cache child ({way}): start");
    let placed = match way.as_str() {
        "global" | "local" | "label" => tieralloc::Placed::local().unwrap(),
        "interleave" => tieralloc::Placed::interleave(&[0]).unwrap(),
        "mapped" => tieralloc::Placed::node(0).unwrap().bound(),
        other => panic!("unknown way {other}"),
    };
    // A labelled scope sends the global allocator's requests to its label's heap; the guard
    // (and the label's name slot) is made before the cap.
    let _scope = (way == "label").then(|| tieralloc::place_labeled(placed, "oom-label"));
    let global = way == "global" || way == "label";
    let alloc = |l: Layout| -> *mut u8 {
        if global {
            // SAFETY: non-zero size.
            unsafe { GLOBAL.alloc(l) }
        } else {
            placed
                .allocate(l)
                .map_or(ptr::null_mut(), |b| b.as_ptr() as *mut u8)
        }
    };
    let free = |p: *mut u8, l: Layout| {
        if global {
            // SAFETY: allocated by `alloc` with `l`, freed once.
            unsafe { GLOBAL.dealloc(p, l) }
        } else {
            // SAFETY: allocated by `placed` with `l`, freed once.
            unsafe { placed.deallocate(ptr::NonNull::new_unchecked(p), l) }
        }
    };
    let large = Layout::from_size_align(MIB, 8).unwrap();
    let huge = Layout::from_size_align(48 * MIB, 8).unwrap();
    let mut got = [ptr::null_mut::<u8>(); 48];

    // ---- Until the cap is lifted, nothing may allocate through std.
    let old = cache_full_then_cap(30);
    for g in got.iter_mut() {
        *g = alloc(large);
    }
    let large_ok = got.iter().filter(|g| !g.is_null()).count();
    set_as_limit(old.rlim_cur, old.rlim_max);
    // A labelled scope whose label heap is refused serves the request unlabelled from the
    // thread's heap (which gives its own cache back): the blocks must be the label's.
    let labelled = || {
        tieralloc::stats()
            .labels
            .iter()
            .find(|l| l.label == "oom-label")
            .map_or(0, |l| l.bytes_live)
    };
    let large_labelled = labelled();
    for g in got.iter().filter(|g| !g.is_null()) {
        free(*g, large);
    }

    let old = cache_full_then_cap(30);
    let h = alloc(huge);
    set_as_limit(old.rlim_cur, old.rlim_max);
    let huge_labelled = labelled();
    println!(
        "oom cache child ({way}): {large_ok} of 48 large blocks, huge {h:?}, \
         labelled bytes {large_labelled} then {huge_labelled}"
    );
    if way == "label" {
        assert!(
            large_labelled >= 48 * MIB as i64 && huge_labelled >= 48 * MIB as i64,
            "blocks of a labelled scope served outside its label"
        );
    }
    assert_eq!(
        large_ok, 48,
        "{way}: large blocks failed with freed huge mappings cached"
    );
    assert!(
        !h.is_null(),
        "{way}: a huge block failed with freed huge mappings cached"
    );
    free(h, huge);
    println!("{MARKER}");
}

/// Review rev21: out of address space, an explicit placement (`Placed::node`, `local`, a
/// placement scope's node heap) whose new mapping the kernel refused returned an error while
/// the calling thread's huge cache held up to 128 MiB of freed mappings: only the allocating
/// heap's cache was given back (rev7's fix), and a node heap's is always empty.
#[test]
fn a_full_huge_cache_gives_way_to_explicit_placements() {
    cache_child("local");
}

/// As `a_full_huge_cache_gives_way_to_explicit_placements`, for the ways rev21's fix covered
/// without a test of their own: an interleave handle and a bound one (each block a mapping of
/// its own, `placed::map_for_handle`), and a labelled scope (its label's heap,
/// `labels::label_alloc`).
#[test]
fn a_full_huge_cache_gives_way_to_interleaved_mapped_and_labelled_placements() {
    for way in ["interleave", "mapped", "label"] {
        cache_child(way);
    }
}

fn cache_child(way: &str) {
    // Nothing expires from the cache while the scenario runs, however slowly.
    run_child(
        "oom_cache_child_scenario",
        &[
            (CACHE_CHILD_ENV, way),
            ("TIERALLOC_PURGE_DELAY_MS", "600000"),
        ],
    );
}
