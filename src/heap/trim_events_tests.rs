//! Review rev46: the trim of one page against the other events of its blocks: the owner's
//! frees, other threads' frees (its remote list, `thread_free`) and their collection, the
//! local list made the free list, and the page given back once it holds no live block and
//! its slices made a page again. After every event each carved block is in exactly one
//! place (live, freed by another thread and not yet collected, on `free` or `local_free`, or
//! parked) and `used` counts the first two.
//!
//! Owns nothing; touches the page descriptor and its segment (`heap::segment`), as the
//! tests beside `heap::trim` do.

use super::tests::{check, drop_segment, fill, page_of, pop, push};
use crate::heap::remote::{Block, Pushed};
use crate::heap::segment::{Page, Segment, PAGE_SLICES};
use crate::heap::size_class::{bin_of, bin_size, page_slices};
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Clone, Debug)]
enum Ev {
    Alloc,
    /// The owner frees the k-th live block.
    Free(usize),
    /// Another thread frees the k-th live block (onto the page's remote list).
    FreeRemote(usize),
    /// All live blocks freed but every `keep`-th (in address order), by the owner or by
    /// another thread: a sparse page.
    Thin {
        keep: usize,
        remote: bool,
    },
    /// The owner's collection (`Page::collect`): the remote list onto the free lists.
    Collect,
    Trim,
    /// With no live block and nothing on the remote list: the page given back, and a page
    /// of the same bin made on its slices.
    Retire,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => Just(Ev::Alloc),
        4 => any::<usize>().prop_map(Ev::Free),
        2 => any::<usize>().prop_map(Ev::FreeRemote),
        1 => (2usize..12, any::<bool>()).prop_map(|(keep, remote)| Ev::Thin { keep, remote }),
        1 => Just(Ev::Collect),
        1 => Just(Ev::Trim),
        1 => Just(Ev::Retire),
    ]
}

/// Where each carved block of `page` is: live (`live`), freed by another thread and not yet
/// collected (`remote`), on `free` or `local_free`, or parked; each in exactly one place,
/// and `used` counting the first two.
fn partition(page: &Page, live: &HashMap<usize, u8>, remote: &[usize]) -> Result<(), String> {
    let (lo, size) = (page.start() as usize, page.block_size as usize);
    let mut seen = vec![0u32; page.capacity as usize];
    let mut note = |b: usize, what: &str| -> Result<(), String> {
        let i = (b - lo) / size;
        if (b - lo) % size != 0 || i >= seen.len() || seen[i] > 0 {
            return Err(format!("{what} block {i} ({b:#x}) twice or not a block"));
        }
        seen[i] = 1;
        Ok(())
    };
    for &b in live.keys().chain(remote) {
        note(b, "live or remote")?;
    }
    for head in [page.free, page.local_free] {
        let mut x = head;
        while !x.is_null() {
            note(x as usize, "listed")?;
            // SAFETY: x is on one of the page's lists, which the test owns.
            x = unsafe { Block::next(x) };
        }
    }
    for (i, s) in seen.iter_mut().enumerate() {
        if page.holds_parked((lo + i * size) as *const u8) {
            if *s > 0 {
                return Err(format!("block {i} parked and elsewhere"));
            }
            *s = 1;
        }
    }
    if let Some(i) = seen.iter().position(|&s| s == 0) {
        return Err(format!("block {i} lost"));
    }
    if page.used as usize != live.len() + remote.len() {
        return Err(format!(
            "used {} for {} live and {} remote",
            page.used,
            live.len(),
            remote.len()
        ));
    }
    Ok(())
}

/// A page of `bin` of `n` slices (its real shape, `page_slices`: review rev49, 2 and 4
/// slices for 2049-8192 B blocks; or a sparse medium class's 2) in a fresh segment: at slice
/// 0 (one slice only), or ending at the segment's last page slice (`at_end`: a filler run
/// before it), or at slice 1.
fn shaped_page(
    bin: usize,
    n: usize,
    slice0: bool,
    at_end: bool,
) -> (*mut Segment, &'static mut Page) {
    if n == 1 && !at_end {
        return page_of(bin, slice0);
    }
    let seg = Segment::map_normal(0, false);
    assert!(!seg.is_null());
    // SAFETY: the segment is fresh and ours alone.
    let page = unsafe {
        if at_end {
            assert!(!Segment::take_slices(seg, PAGE_SLICES - n - 1, false).is_null());
        }
        &mut *Segment::take_slices(seg, n, false)
    };
    let i = page.slice_index();
    assert!(!at_end || i + n == PAGE_SLICES, "{n} slices at {i}");
    page.init_bin(bin, Segment::run_bytes(i, n));
    (seg, page)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random events on one page against a shadow of its live blocks and of those freed by
    /// other threads: no block is handed out while live or waiting on the remote list, live
    /// blocks keep their contents, every block is in one place after each event, and at the
    /// end (everything collected) the page fills up to exactly its block count.
    #[test]
    fn trims_among_remote_frees_collections_and_retirements_keep_every_block_once(
        which in 0usize..12,
        at_end in any::<bool>(),
        evs in proptest::collection::vec(ev(), 1..500),
    ) {
        // 3072 and 4096 B blocks on 2-slice pages, 5120 and 8192 B ones on 4-slice pages;
        // 10, 20, 40 and 64 KiB ones on the 2-slice pages of a sparse medium class (review
        // rev54: 32 OS pages, so trimmed, where an 8-slice page's 128 never are).
        let sizes = [
            64, 256, 1280, 3072, 8192, 4096, 5120, 2048, 10 << 10, 20 << 10, 40 << 10, 64 << 10,
        ];
        let bin = bin_of(sizes[which]);
        let size = bin_size(bin);
        let slices = if which >= 8 { 2 } else { page_slices(bin) };
        let (seg, page) = shaped_page(bin, slices, which == 1, at_end);
        let mut live: HashMap<usize, u8> = HashMap::new();
        let mut remote: Vec<usize> = vec![];
        let mut tag = 0u8;
        for e in evs {
            match e {
                Ev::Alloc => {
                    if let Some(b) = pop(page) {
                        let b = b as usize;
                        let twice = live.contains_key(&b) || remote.contains(&b);
                        prop_assert!(!twice, "{b:#x} handed out twice");
                        tag = tag.wrapping_add(1);
                        fill(b as *mut Block, size, tag);
                        live.insert(b, tag);
                    }
                }
                Ev::Free(_) | Ev::FreeRemote(_) | Ev::Thin { .. } if !live.is_empty() => {
                    let mut keys: Vec<usize> = live.keys().copied().collect();
                    keys.sort_unstable();
                    let (gone, by_other): (Vec<usize>, bool) = match e {
                        Ev::Free(k) => (vec![keys[k % keys.len()]], false),
                        Ev::FreeRemote(k) => (vec![keys[k % keys.len()]], true),
                        Ev::Thin { keep, remote } => {
                            let thin = keys.iter().enumerate().filter(|(i, _)| i % keep != 0);
                            (thin.map(|(_, &b)| b).collect(), remote)
                        }
                        _ => unreachable!(),
                    };
                    for b in gone {
                        check(b as *mut Block, size, live.remove(&b).unwrap());
                        if by_other {
                            // SAFETY: a live block of the page, freed once (as another
                            // thread would free it).
                            let r = unsafe { page.thread_free.push(b as *mut Block) };
                            prop_assert!(matches!(r, Pushed::OnPage));
                            remote.push(b);
                        } else {
                            push(page, b as *mut Block);
                        }
                    }
                }
                Ev::Free(_) | Ev::FreeRemote(_) | Ev::Thin { .. } => {}
                Ev::Collect => {
                    let n = page.collect();
                    prop_assert_eq!(n as usize, remote.len());
                    remote.clear();
                }
                Ev::Trim => {
                    // SAFETY: the page's owner, between pops.
                    unsafe { page.trim() };
                }
                Ev::Retire if page.used == 0 && remote.is_empty() => {
                    let (i, n) = (page.slice_index(), slices);
                    // SAFETY: the test owns the segment; the page holds no live block.
                    let again = unsafe {
                        Segment::free_page(page, 0, 0);
                        Segment::take_slices(seg, n, i == 0)
                    };
                    prop_assert!(core::ptr::eq(again, page), "another slice taken");
                    prop_assert_eq!(page.parked, 0);
                    page.init_bin(bin, Segment::run_bytes(i, n));
                }
                Ev::Retire => {}
            }
            if let Err(e) = partition(page, &live, &remote) {
                drop_segment(seg);
                return Err(TestCaseError::fail(e));
            }
        }
        page.collect();
        remote.clear();
        for (&b, &t) in &live {
            check(b as *mut Block, size, t);
        }
        let mut n = live.len();
        while let Some(b) = pop(page) {
            prop_assert!(!live.contains_key(&(b as usize)), "{b:p} handed out twice at the end");
            live.insert(b as usize, 0);
            n += 1;
        }
        prop_assert_eq!(n, page.reserved as usize);
        partition(page, &live, &remote).map_err(TestCaseError::fail)?;
        drop_segment(seg);
    }
}
