//! Size classes ("bins") for small and medium objects.
//!
//! Owns: the mapping from a request size to a bin, each bin's block size and page shape.
//! Touches nothing else. Pure arithmetic, so the fast path can inline it.
//!
//! The classes: 8 B (16 B in the `secure` build, whose blocks hold a freed marker in their
//! second word), then multiples of 16 B up to 128 B, then four classes per power of two
//! (128·1.25, 128·1.5, 128·1.75, 256, 320, ...) up to 64 KiB. Every class from 16 B on is a
//! multiple of 16, so every block is 16-byte aligned. Internal waste is bounded: a request of
//! more than 128 B gets a block less than 1.25 × its size (under 20 % of the block is slack);
//! a request of up to 128 B gets at most 15 B of slack (and 8 B for a 1..=8 B request).

/// Number of bins.
pub const NBINS: usize = 45;
/// The largest block served from 1-slice (64 KiB) pages; bigger blocks up to 8 KiB get 2- and
/// 4-slice pages ([`page_slices`]).
pub const SMALL_MAX: usize = 2 << 10;
/// The largest block served from bins at all; bigger requests get their own span.
pub const MEDIUM_MAX: usize = 64 << 10;
/// Slices (64 KiB each) in a page of a busy medium bin (a sparse one's take 2: see
/// [`page_slices`]).
pub const MEDIUM_PAGE_SLICES: usize = 8;

const fn compute_size(bin: usize) -> usize {
    if bin == 0 {
        // The secure build's blocks hold a freed marker in their second word (heap::secure).
        if cfg!(feature = "secure") {
            16
        } else {
            8
        }
    } else if bin <= 8 {
        bin * 16
    } else {
        let j = bin - 9;
        let k = 7 + j / 4;
        let r = j % 4;
        (1 << k) + (r + 1) * (1 << (k - 2))
    }
}

const fn build_sizes() -> [u32; NBINS] {
    let mut t = [0u32; NBINS];
    let mut i = 0;
    while i < NBINS {
        t[i] = compute_size(i) as u32;
        i += 1;
    }
    t
}

/// Block size of each bin.
pub static BIN_SIZES: [u32; NBINS] = build_sizes();

/// The bin for a request of `size` bytes (1 ..= MEDIUM_MAX; 0 is treated as 1).
#[inline(always)]
pub fn bin_of(size: usize) -> usize {
    if size <= TABLE_MAX {
        // One load from a 513-byte table that stays in L1: cheaper than the arithmetic
        // below on the sizes most programs use most, and up to 4 KiB so that a mix of
        // sizes below and above 1 KiB does not make the branch above unpredictable (`pairs`
        // mixed: 17 % of its sizes above 1 KiB, each a mispredicted branch at 1 KiB).
        SMALL_BINS[(size + 7) >> 3] as usize
    } else {
        bin_of_arith(size)
    }
}

/// Requests up to this size find their bin in `SMALL_BINS`.
const TABLE_MAX: usize = 4096;

/// The bin of every request size up to `TABLE_MAX`, by size in 8-byte words rounded up
/// (class boundaries are multiples of 8, so the rounding never changes the bin).
static SMALL_BINS: [u8; TABLE_MAX / 8 + 1] = build_small_bins();

const fn build_small_bins() -> [u8; TABLE_MAX / 8 + 1] {
    let mut t = [0u8; TABLE_MAX / 8 + 1];
    let mut w = 0;
    while w < t.len() {
        t[w] = bin_of_arith(w * 8) as u8;
        w += 1;
    }
    t
}

/// [`bin_of`] by arithmetic: 8 B, then 16-byte steps to 128 B, then four per power of two.
#[inline(always)]
const fn bin_of_arith(size: usize) -> usize {
    if size <= 8 {
        0
    } else if size <= 128 {
        (size + 15) >> 4
    } else {
        let s = size - 1;
        let k = (usize::BITS - 1 - s.leading_zeros()) as usize;
        9 + (k - 7) * 4 + ((s >> (k - 2)) & 3)
    }
}

/// Block size of `bin`.
#[inline(always)]
pub fn bin_size(bin: usize) -> usize {
    BIN_SIZES[bin] as usize
}

/// Slices per page for `bin`: one (64 KiB) up to `SMALL_MAX`, then two up to 4 KiB, four up
/// to 8 KiB and `MEDIUM_PAGE_SLICES` (512 KiB) above, so that every page of blocks up to
/// 16 KiB holds at least 32. A page runs out after its blocks are handed out, and each time
/// that costs a refill on the slow path: with 2–8 KiB blocks on one-slice pages (8 to 32 a
/// page) a program of 1 B–16 KiB requests (`linear` in preload/bench) spent 20 % more
/// instructions (callgrind: 122–126 M against 99.6–99.9 M). The pages' memory is carved as it
/// is used, and a bin's lone multi-slice page gives back its uncarved tail (`new_bin_page`).
/// A medium bin's pages are `MEDIUM_PAGE_SLICES` only once it is busy: until its heap has
/// handed out 16 of its blocks they take 2 slices (`alloc::new_bin_page`, review rev53: a
/// thread with a few blocks in each of several medium bins held 512 KiB for each).
#[inline]
pub fn page_slices(bin: usize) -> usize {
    let s = bin_size(bin);
    if s <= SMALL_MAX {
        1
    } else if s <= 2 * SMALL_MAX {
        2
    } else if s <= 4 * SMALL_MAX {
        4
    } else {
        MEDIUM_PAGE_SLICES
    }
}

/// The smallest bin whose blocks hold `size` bytes at alignment `align` (a power of two, at
/// most 4096), or None if no bin does.
pub fn bin_for_aligned(size: usize, align: usize) -> Option<usize> {
    let want = size.max(align);
    if want > MEDIUM_MAX {
        return None;
    }
    let mut bin = bin_of(want);
    while bin < NBINS {
        if bin_size(bin) % align == 0 {
            return Some(bin);
        }
        bin += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_increasing_and_end_at_medium_max() {
        // The secure build's first two bins are both 16 bytes (heap::secure's freed marker).
        let first = if cfg!(feature = "secure") { 2 } else { 1 };
        for b in first..NBINS {
            assert!(bin_size(b) > bin_size(b - 1), "bin {b}");
        }
        assert_eq!(bin_size(NBINS - 1), MEDIUM_MAX);
        assert_eq!(bin_size(0), if cfg!(feature = "secure") { 16 } else { 8 });
        assert_eq!(bin_size(8), 128);
        assert_eq!(bin_size(9), 160);
        assert_eq!(bin_size(12), 256);
    }

    #[test]
    fn every_size_maps_to_the_smallest_fitting_bin() {
        for size in 1..=MEDIUM_MAX {
            let b = bin_of(size);
            assert!(bin_size(b) >= size, "size {size} bin {b}");
            if b > 0 && !(cfg!(feature = "secure") && b == 1) {
                assert!(
                    bin_size(b - 1) < size,
                    "size {size} could use bin {}",
                    b - 1
                );
            }
        }
    }

    /// Every size a caller may pass (0 ..= MEDIUM_MAX), in both builds (the secure build's
    /// bin 0 is 16 bytes): the table and the arithmetic agree, on both sides of `TABLE_MAX`.
    #[test]
    fn table_agrees_with_the_arithmetic() {
        for size in 0..=MEDIUM_MAX {
            assert_eq!(bin_of(size), bin_of_arith(size), "size {size}");
        }
        assert_eq!(bin_of(TABLE_MAX), bin_of_arith(TABLE_MAX));
        assert_eq!(
            bin_size(bin_of(1)),
            if cfg!(feature = "secure") { 16 } else { 8 }
        );
        assert_eq!(bin_size(bin_of(1000)), 1024);
    }

    #[test]
    fn internal_waste_bound_holds() {
        for size in 1..=MEDIUM_MAX {
            let block = bin_size(bin_of(size));
            if size > 128 {
                assert!(block * 4 < size * 5, "size {size} block {block}");
            } else {
                assert!(block - size <= 15, "size {size} block {block}");
            }
        }
    }

    #[test]
    fn blocks_from_16_bytes_on_are_16_aligned() {
        for b in 1..NBINS {
            assert_eq!(bin_size(b) % 16, 0);
        }
    }

    #[test]
    fn aligned_bins_are_multiples_of_the_alignment() {
        for align in [16usize, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
            for size in [1usize, 17, 100, 1000, 5000, 40000] {
                let b = bin_for_aligned(size, align).unwrap();
                assert_eq!(bin_size(b) % align, 0);
                assert!(bin_size(b) >= size.max(align));
            }
        }
        assert_eq!(bin_for_aligned(MEDIUM_MAX + 1, 16), None);
    }

    #[test]
    fn page_shapes() {
        assert_eq!(page_slices(bin_of(SMALL_MAX)), 1);
        assert_eq!(page_slices(bin_of(SMALL_MAX + 1)), 2);
        assert_eq!(page_slices(bin_of(4096)), 2);
        assert_eq!(page_slices(bin_of(4097)), 4);
        assert_eq!(page_slices(bin_of(8192)), 4);
        assert_eq!(page_slices(bin_of(8193)), MEDIUM_PAGE_SLICES);
        let slice = 64 << 10;
        for b in 0..NBINS {
            let n = page_slices(b);
            assert!(matches!(n, 1 | 2 | 4 | 8), "bin {b}: {n} slices");
            if bin_size(b) <= 16 << 10 {
                assert!(
                    n * slice / bin_size(b) >= 32,
                    "bin {b}: {n} slices of {}",
                    bin_size(b)
                );
            }
        }
    }
}
