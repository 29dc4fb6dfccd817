//! Memory goes back to the OS: after a spike of ~256 MiB is freed, resident memory falls back
//! to about the live data plus the baseline while the program keeps doing light allocation
//! traffic (no explicit `collect`). Covers a spike freed by the thread that made it, and one
//! made by a thread that exits with some of it still live (its segments are abandoned).
//!
//! Each scenario runs in a child process (this binary re-executed with
//! `TIERALLOC_PURGE_DELAY_MS=50`), so no other test disturbs its RSS. Not a timing test: the
//! child polls RSS under light traffic up to a generous deadline and asserts the bound.

#[path = "common/child.rs"]
mod child;
#[path = "common/rss.rs"]
mod rss;

use rss::{drop_block, is_scenario, new_block, report, rss, run_scenario, MIB};
use std::alloc::{alloc, dealloc, Layout};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

const DEADLINE: Duration = Duration::from_secs(10);

/// A block of the spike, as plain numbers so it can cross threads.
#[derive(Clone, Copy)]
struct Block {
    addr: usize,
    size: usize,
}

fn alloc_block(size: usize, byte: u8) -> Block {
    Block {
        addr: new_block(size, byte),
        size,
    }
}

fn free_block(b: Block, byte: u8) {
    drop_block(b.addr, b.size, byte);
}

/// ~256 MiB in small, medium, large and huge objects, interleaved (so the small pages and
/// the large objects share segments), every byte written. Sizes cycle deterministically.
fn spike() -> Vec<Block> {
    let mut v = Vec::new();
    let (mut small, mut medium, mut large, mut huge) = (0usize, 0usize, 0usize, 0usize);
    let mut k = 0usize;
    while small < 32 * MIB || medium < 64 * MIB || large < 96 * MIB || huge < 64 * MIB {
        k += 1;
        if small < 32 * MIB {
            for j in 0..64 {
                let s = 16 + (k * 7 + j * 13) % 1000;
                small += s;
                v.push(alloc_block(s, 0xA1));
            }
        }
        if medium < 64 * MIB {
            let s = 1024 + (k * 7919) % (63 << 10);
            medium += s;
            v.push(alloc_block(s, 0xA1));
        }
        if large < 96 * MIB && k % 4 == 0 {
            let s = (64 << 10) + (k * 104_729) % (2 * MIB - (64 << 10));
            large += s;
            v.push(alloc_block(s, 0xA1));
        }
        if huge < 64 * MIB && k % 64 == 0 {
            let s = 2 * MIB + 4096 + (k * 15_485_863) % (6 * MIB);
            huge += s;
            v.push(alloc_block(s, 0xA1));
        }
    }
    v
}

/// Light traffic (one 64-byte object allocated and freed, over and over, with short sleeps)
/// until RSS is at most `bound`, or the deadline passes. Returns the last RSS seen.
fn light_traffic_until(bound: usize) -> usize {
    let start = Instant::now();
    let l = Layout::from_size_align(64, 8).unwrap();
    loop {
        for _ in 0..100 {
            // SAFETY: non-zero size; freed right away.
            unsafe {
                let p = alloc(l);
                assert!(!p.is_null());
                p.write(1);
                dealloc(p, l);
            }
        }
        let r = rss();
        if r <= bound || start.elapsed() > DEADLINE {
            return r;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn assert_falls(what: &str, baseline: usize, live: usize) {
    let r = light_traffic_until(rss::bound(baseline, live));
    report(
        &format!("{what}, after at most {DEADLINE:?} of light traffic"),
        r,
        baseline,
        live,
    );
}

#[test]
fn child_spike_on_this_thread() {
    if !is_scenario("this-thread") {
        return;
    }
    let baseline = rss();
    let blocks = spike();
    let peak = rss();
    assert!(
        peak >= baseline + 200 * MIB,
        "the spike did not raise RSS: {baseline} -> {peak}"
    );
    for b in blocks {
        free_block(b, 0xA1);
    }
    assert_falls("spike freed by its own thread", baseline, 0);
}

#[test]
fn child_spike_on_exited_thread() {
    if !is_scenario("exited-thread") {
        return;
    }
    let baseline = rss();
    // The spike thread frees most of what it allocated, keeps every 8th large or huge object
    // and every 1000th small one (so live blocks are spread over its segments), and exits.
    let survivors = std::thread::spawn(|| {
        let blocks = spike();
        let mut keep = Vec::new();
        for (i, b) in blocks.into_iter().enumerate() {
            if (b.size > 64 << 10 && i % 8 == 0) || i % 1000 == 0 {
                keep.push(b);
            } else {
                free_block(b, 0xA1);
            }
        }
        keep
    })
    .join()
    .unwrap();
    let live: usize = survivors.iter().map(|b| b.size).sum();
    assert!(
        live > 4 * MIB && live < 64 * MIB,
        "{live} bytes survive the spike"
    );
    assert!(tieralloc::stats().pages_abandoned > 0);
    assert_falls("spike of an exited thread, some of it live", baseline, live);
    // Then the survivors are freed here, by a thread that did not allocate them.
    for b in survivors {
        free_block(b, 0xA1);
    }
    assert_falls("survivors of an exited thread freed", baseline, 0);
}

fn run_child(scenario: &str) {
    let test = match scenario {
        "this-thread" => "child_spike_on_this_thread",
        _ => "child_spike_on_exited_thread",
    };
    run_scenario(test, scenario, &[("TIERALLOC_PURGE_DELAY_MS", "50")]);
}

#[test]
fn rss_falls_after_a_spike_freed_by_its_thread() {
    run_child("this-thread");
}

#[test]
fn rss_falls_after_a_spike_of_an_exited_thread() {
    run_child("exited-thread");
}
