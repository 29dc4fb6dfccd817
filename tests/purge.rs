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

/// Resident 4 KiB pages in `[p, p + len)` (`p` page-aligned).
fn resident_pages(p: usize, len: usize) -> usize {
    let mut v = vec![0u8; len / 4096];
    // SAFETY: the range is mapped (it lies inside one of tieralloc's segments) and `v` has a
    // byte per page.
    let r = unsafe { libc::mincore(p as *mut libc::c_void, len, v.as_mut_ptr()) };
    assert_eq!(r, 0);
    v.iter().filter(|&&b| b & 1 != 0).count()
}

/// A medium-class page (eight 64 KiB slices) that lands on slices other pages made resident
/// keeps them resident while its bin may still carve them (a thread that fills the page
/// within the purge delay must not fault every byte in again), and gives back what is still
/// uncarved after a delay or two: its blocks are carved one at a time, and a bin with a few
/// blocks live must not pin 512 KiB. Run in a child with a purge delay of 200 ms.
#[test]
fn child_sparse_medium_page() {
    if !is_scenario("sparse-medium") {
        return;
    }
    std::thread::spawn(|| {
        // Sixteen one-slice pages of 4 KiB blocks, every byte written, then freed: their
        // slices go back to the segment still resident (the purge delay has not passed).
        let blocks: Vec<usize> = (0..16 * 16).map(|i| new_block(4096, i as u8)).collect();
        for (i, p) in blocks.into_iter().enumerate() {
            drop_block(p, 4096, i as u8);
        }
        // Five 20 KiB blocks: the first page of their (medium) class, on those resident
        // slices, carved one block at a time.
        let m: Vec<usize> = (0..5)
            .map(|i| new_block(20 << 10, 0xB0 + i as u8))
            .collect();
        let p = m[0];
        assert_eq!(p % (64 << 10), 0, "the first block starts its page");
        let size = m[1] - m[0];
        assert!(
            m.windows(2).all(|w| w[1] - w[0] == size),
            "carved in address order"
        );
        let end = p + 8 * (64 << 10);
        let carved = (p + 5 * size + 4095) & !4095;
        let rest = resident_pages(carved, end - carved);
        assert_eq!(
            rest,
            (end - carved) / 4096,
            "the uncarved memory of the page was given back at once"
        );
        // Slow paths (4 KiB blocks allocated and freed a page at a time), with short sleeps,
        // until a collection gives the uncarved memory back.
        let start = Instant::now();
        let mut rest = rest;
        while rest > 0 && start.elapsed() < DEADLINE {
            let ps: Vec<usize> = (0..64).map(|_| new_block(4096, 7)).collect();
            for q in ps {
                drop_block(q, 4096, 7);
            }
            std::thread::sleep(Duration::from_millis(5));
            rest = resident_pages(carved, end - carved);
        }
        assert_eq!(
            rest, 0,
            "{rest} uncarved pages still resident after {DEADLINE:?}"
        );
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "given back after {:?}, before the purge delay",
            start.elapsed()
        );
        // What was carved stays, with its contents.
        assert_eq!(resident_pages(p, carved - p), (carved - p) / 4096);
        for (i, q) in m.into_iter().enumerate() {
            drop_block(q, 20 << 10, 0xB0 + i as u8);
        }
    })
    .join()
    .unwrap();
}

#[test]
fn a_sparse_medium_page_gives_back_its_uncarved_memory_after_the_delay() {
    run_scenario(
        "child_sparse_medium_page",
        "sparse-medium",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}

/// Review (rev9): the tails a quiet thread books are never given back when its heap is not
/// `waiting`. `take_slices` takes the whole run (512 KiB) off `idle_bytes` when a page lands
/// on resident slices, and `new_bin_page` books its uncarved ~450 KiB as a tail without
/// counting it anywhere; so a thread that freed a spike and then made one block in each
/// medium class (here ~4 MiB of tails past the pages' first slices, up to ~5.5 MiB with all
/// 12 classes booked) drops out of `waiting`, and no helping pass (or background purger)
/// visits it again: the tails stay resident for as long as the thread is quiet. Before the
/// change that memory went back at once (passes on 8bab17e, fails on f60b541). Run in a
/// child with a 500 ms purge delay.
#[test]
fn child_quiet_thread_tails() {
    if !is_scenario("quiet-tails") {
        return;
    }
    // Medium request sizes, one per medium class (bins of 10, 12, 14, 16, 20, ..., 64 KiB),
    // 64 bytes short of the class so that the secure build's trailer fits too.
    let sizes: Vec<usize> = [10usize, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64]
        .iter()
        .map(|k| (k << 10) - 64)
        .collect();
    // Blocks of the 4 KiB class in both builds.
    const SMALL: usize = 4096 - 64;
    let (to_main, from_worker) = std::sync::mpsc::channel::<Vec<(usize, usize)>>();
    let (to_worker, from_main) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        // 12 MiB of 4 KiB blocks, every byte written, then freed but every 256th (one
        // page in 16 stays in use, so no segment empties and goes to the pool): their slices
        // go back to the segments still resident, in runs of 15.
        let blocks: Vec<usize> = (0..3072).map(|i| new_block(SMALL, i as u8)).collect();
        let mut kept = Vec::new();
        for (i, p) in blocks.into_iter().enumerate() {
            if i % 256 == 255 {
                kept.push((p, i as u8));
            } else {
                drop_block(p, SMALL, i as u8);
            }
        }
        // One block of each medium class: each the first page of its class, on those
        // resident slices (booked tails).
        let m: Vec<(usize, usize)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| (new_block(s, 0xC0 + i as u8), s))
            .collect();
        // 4 MiB of 4 KiB blocks kept live: they take resident slices too, so that what the
        // heap books as waiting to be purged falls below `WAIT_BYTES` (not `waiting`).
        let live: Vec<usize> = (0..1024).map(|_| new_block(SMALL, 0x5A)).collect();
        to_main.send(m.clone()).unwrap();
        // Quiet: no allocator call until told.
        from_main.recv().unwrap();
        for (i, (p, s)) in m.into_iter().enumerate() {
            drop_block(p, s, 0xC0 + i as u8);
        }
        for q in live {
            drop_block(q, SMALL, 0x5A);
        }
        for (q, b) in kept {
            drop_block(q, SMALL, b);
        }
    });
    let m = from_worker.recv().unwrap();
    // The uncarved part of each page past its first slice (booked or not: a page made on
    // fresh slices has none of it resident, and before the change a page on resident slices
    // gave it back at once).
    let mut tails = Vec::new();
    for &(p, s) in &m {
        // Only pages whose one block starts them (the first block of a new page).
        if p % (64 << 10) != 0 {
            continue;
        }
        let end = p + 8 * (64 << 10);
        // Past the page's first slice (which the code before the change kept resident) and
        // past its carved block.
        let from = ((p + s + 4095) & !4095).max(p + (64 << 10));
        tails.push((from, end - from));
    }
    let booked: usize = tails.iter().map(|&(c, n)| resident_pages(c, n) * 4096).sum();
    eprintln!("{booked} bytes of uncarved medium pages resident after the allocations");
    // This thread's slow paths, with short sleeps, for ten purge delays: its collections
    // run the helping pass over the other heaps.
    let start = Instant::now();
    let mut rest = booked;
    while rest > 0 && start.elapsed() < Duration::from_secs(5) {
        let ps: Vec<usize> = (0..64).map(|_| new_block(4096, 7)).collect();
        for q in ps {
            drop_block(q, 4096, 7);
        }
        std::thread::sleep(Duration::from_millis(5));
        rest = tails.iter().map(|&(c, n)| resident_pages(c, n) * 4096).sum();
    }
    to_worker.send(()).unwrap();
    worker.join().unwrap();
    assert_eq!(
        rest,
        0,
        "{:.1} MiB of a quiet thread's uncarved medium pages (of {:.1} MiB booked) still \
         resident after {:?} of other threads' traffic",
        rest as f64 / MIB as f64,
        booked as f64 / MIB as f64,
        start.elapsed()
    );
}

#[test]
fn a_quiet_threads_sparse_medium_pages_give_back_their_uncarved_memory() {
    run_scenario(
        "child_quiet_thread_tails",
        "quiet-tails",
        &[("TIERALLOC_PURGE_DELAY_MS", "500")],
    );
}

/// Review (rev9): the README's idle bound (live + 10 % + 8 MiB over the baseline) with three
/// quiet threads that each did what [`child_quiet_thread_tails`]'s worker does. Fails on
/// f60b541 (RSS 39.7 MiB, bound 25.4: the booked tails, about 4 MiB a thread, are never
/// given back) and also on 8bab17e (28.1 MiB, bound 25.6: pre-existing, each quiet heap
/// below `WAIT_BYTES` is never `waiting`, so never visited, and keeps its ~2 MiB of
/// resident free slices; the per-heap slack adds up over quiet threads). Run in a child
/// with a 500 ms purge delay.
#[test]
fn child_quiet_threads_rss() {
    if !is_scenario("quiet-rss") {
        return;
    }
    const SMALL: usize = 4096 - 64;
    let sizes: Vec<usize> = [10usize, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64]
        .iter()
        .map(|k| (k << 10) - 64)
        .collect();
    let baseline = rss();
    let (to_main, from_workers) = std::sync::mpsc::channel::<usize>();
    let mut stops = Vec::new();
    let mut workers = Vec::new();
    let mut live = 0usize;
    for _ in 0..3 {
        let (stop, wait) = std::sync::mpsc::channel::<()>();
        stops.push(stop);
        let to_main = to_main.clone();
        let sizes = sizes.clone();
        workers.push(std::thread::spawn(move || {
            let blocks: Vec<usize> = (0..3072).map(|i| new_block(SMALL, i as u8)).collect();
            let mut kept = Vec::new();
            for (i, p) in blocks.into_iter().enumerate() {
                if i % 256 == 255 {
                    kept.push((p, i as u8));
                } else {
                    drop_block(p, SMALL, i as u8);
                }
            }
            let m: Vec<(usize, usize)> = sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| (new_block(s, 0xC0 + i as u8), s))
                .collect();
            let live: Vec<usize> = (0..1024).map(|_| new_block(SMALL, 0x5A)).collect();
            let bytes = m.iter().map(|b| b.1).sum::<usize>() + (1024 + kept.len()) * SMALL;
            to_main.send(bytes).unwrap();
            wait.recv().unwrap();
            for (i, (p, s)) in m.into_iter().enumerate() {
                drop_block(p, s, 0xC0 + i as u8);
            }
            for q in live {
                drop_block(q, SMALL, 0x5A);
            }
            for (q, b) in kept {
                drop_block(q, SMALL, b);
            }
        }));
        // One at a time: each worker's spike and medium pages in a quiet moment.
        live += from_workers.recv().unwrap();
    }
    let r = light_traffic_until(rss::bound(baseline, live));
    for s in stops {
        s.send(()).unwrap();
    }
    for w in workers {
        w.join().unwrap();
    }
    report(
        "three quiet threads with sparse medium pages, after other threads' traffic",
        r,
        baseline,
        live,
    );
}

#[test]
fn rss_falls_with_quiet_threads_holding_sparse_medium_pages() {
    run_scenario(
        "child_quiet_threads_rss",
        "quiet-rss",
        &[("TIERALLOC_PURGE_DELAY_MS", "500")],
    );
}

/// Review (rev9): the tails of a thread that exits with its medium block live are given back
/// from the abandoned segment (`tick::tend_abandoned`) or by its adopter. Passes on f60b541,
/// and fails with the `tend_abandoned` hook removed, which no other test notices (the
/// sparse-medium test's thread tends its own tails).
#[test]
fn child_exited_thread_tails() {
    if !is_scenario("exited-tails") {
        return;
    }
    const SMALL: usize = 4096 - 64;
    let (p, s) = std::thread::spawn(|| {
        let blocks: Vec<usize> = (0..16 * 16).map(|i| new_block(SMALL, i as u8)).collect();
        for (i, p) in blocks.into_iter().enumerate() {
            drop_block(p, SMALL, i as u8);
        }
        let s = (20 << 10) - 64;
        (new_block(s, 0xD1), s)
    })
    .join()
    .unwrap();
    assert_eq!(p % (64 << 10), 0, "the first block starts its page");
    let from = ((p + s + 4095) & !4095).max(p + (64 << 10));
    let end = p + 8 * (64 << 10);
    let booked = resident_pages(from, end - from);
    assert_eq!(booked, (end - from) / 4096, "the tail was not booked");
    let start = Instant::now();
    let mut rest = booked;
    while rest > 0 && start.elapsed() < DEADLINE {
        let ps: Vec<usize> = (0..64).map(|_| new_block(4096, 7)).collect();
        for q in ps {
            drop_block(q, 4096, 7);
        }
        std::thread::sleep(Duration::from_millis(5));
        rest = resident_pages(from, end - from);
    }
    assert_eq!(rest, 0, "{rest} pages of an exited thread's tail still resident");
    drop_block(p, s, 0xD1);
}

#[test]
fn an_exited_threads_sparse_medium_page_gives_back_its_tail() {
    run_scenario(
        "child_exited_thread_tails",
        "exited-tails",
        &[("TIERALLOC_PURGE_DELAY_MS", "200")],
    );
}
