//! Quick end-to-end: tieralloc as this test binary's global allocator.
use std::collections::HashMap;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

#[test]
fn collections_work() {
    let mut m = HashMap::new();
    for i in 0..100_000u64 {
        m.insert(i, vec![i as u8; (i % 300) as usize]);
    }
    for i in 0..100_000u64 {
        assert_eq!(m[&i].len(), (i % 300) as usize);
        assert!(m[&i].iter().all(|&b| b == i as u8));
    }
    let big: Vec<u64> = (0..3_000_000).collect();
    assert_eq!(big.iter().sum::<u64>(), 3_000_000 * 2_999_999 / 2);
    let s = tieralloc::stats();
    assert!(s.bytes_live >= 24_000_000, "{s}");
}

#[test]
fn threads_free_each_others_objects() {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let h = std::thread::spawn(move || {
        for i in 0..200_000usize {
            tx.send(vec![(i % 251) as u8; 1 + i % 700]).unwrap();
        }
    });
    let mut n = 0usize;
    for v in rx {
        assert!(v.iter().all(|&b| b == v[0]));
        n += 1;
    }
    h.join().unwrap();
    assert_eq!(n, 200_000);
}
