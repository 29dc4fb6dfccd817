//! Frees from a thread that does not own the block: contents survive the hand-off and every
//! counter that the tier caps and the stats rest on (per-class frees, remote frees, per-node
//! live bytes) moves by exactly what was freed. One test in its own binary, so no other test
//! allocates in the class it watches.

use std::sync::mpsc;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// An odd size, in a class nothing else in this process uses.
const SIZE: usize = 11_000;
const N: usize = 3_000;

fn class_row(s: &tieralloc::Stats, block_size: usize) -> (u64, u64, u64) {
    s.classes
        .iter()
        .find(|c| c.block_size == block_size)
        .map(|c| (c.allocs, c.frees, c.live))
        .unwrap_or((0, 0, 0))
}

#[test]
fn remote_frees_keep_contents_and_are_counted_exactly() {
    // The block size of SIZE's class, learnt from one allocation.
    let probe = vec![0u8; SIZE];
    // SAFETY: probe's pointer is a live block of the global allocator, which is TierAlloc.
    let block_size = unsafe { tieralloc::usable_size(probe.as_ptr()) };
    drop(probe);
    assert!((SIZE..2 * SIZE).contains(&block_size));

    let before = tieralloc::stats();
    let node_live_before: i64 = before.nodes.iter().map(|n| n.bytes_live).sum();
    let (a0, f0, l0) = class_row(&before, block_size);

    let (tx, rx) = mpsc::sync_channel::<Vec<Vec<u8>>>(4);
    // The producer stays alive until every block is freed, so no free finds its segment
    // abandoned (that one would be adopted and freed locally, not remotely).
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let producer = std::thread::spawn(move || {
        // Batches of 100 freed while the producer keeps allocating (its current page gets
        // remote frees), and a last batch of everything else sent only after all of it was
        // allocated (full pages: those frees take the delayed path).
        let mut kept = Vec::with_capacity(N);
        for i in 0..N {
            let mut v = Vec::with_capacity(SIZE);
            v.resize(SIZE, (i % 251) as u8);
            if i < N / 2 {
                kept.push(v);
                if kept.len() == 100 {
                    tx.send(std::mem::take(&mut kept)).unwrap();
                    kept.reserve(100);
                }
            } else {
                kept.push(v);
            }
        }
        tx.send(kept).unwrap();
        drop(tx);
        done_rx.recv().unwrap();
    });
    let consumer = std::thread::spawn(move || {
        let mut seen = vec![false; 251];
        let mut n = 0usize;
        for batch in rx {
            for v in batch {
                assert_eq!(v.len(), SIZE);
                assert!(v.iter().all(|&b| b == v[0]), "a block changed in transit");
                seen[v[0] as usize] = true;
                n += 1;
            }
        }
        assert!(seen.iter().all(|&s| s));
        n
    });
    assert_eq!(consumer.join().unwrap(), N);
    done_tx.send(()).unwrap();
    producer.join().unwrap();

    let after = tieralloc::stats();
    let (a1, f1, l1) = class_row(&after, block_size);
    assert_eq!(a1 - a0, N as u64, "allocations of the class");
    assert_eq!(f1 - f0, N as u64, "frees of the class");
    assert_eq!(l1, l0, "live blocks of the class");
    // The blocks, plus the batches' vectors and the channel's own nodes.
    let remote = after.remote_frees - before.remote_frees;
    assert!(
        (N as u64..N as u64 + 100).contains(&remote),
        "remote frees: {} -> {}",
        before.remote_frees,
        after.remote_frees
    );
    // Everything of the class came back; what else moved (the channel, the batches' vectors,
    // thread set-up) is far smaller than one block per freed object.
    let node_live_after: i64 = after.nodes.iter().map(|n| n.bytes_live).sum();
    assert!(
        (node_live_after - node_live_before).abs() < block_size as i64 * 8,
        "node live bytes {node_live_before} -> {node_live_after}"
    );
}
