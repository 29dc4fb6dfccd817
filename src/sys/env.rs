//! Reading the environment without allocating: the raw value of a variable, the parsers for
//! the values tieralloc accepts (numbers, booleans, sizes, ratios) and the one-line warning
//! for a malformed value.
//!
//! Owns: `getenv` and the value parsers (numbers, booleans, sizes, ratios, a word from a list). May touch: `sys::os` (stderr, for the warning).
//! Which variables exist and what they set belongs to their readers: `init` (the process
//! settings and the tier policy) and `topology::discover` (the machine). Nothing here
//! allocates or panics.

use super::os;

/// The raw value of an environment variable (a NUL-terminated name), without allocating.
pub(crate) fn getenv(name: &'static [u8]) -> Option<&'static [u8]> {
    debug_assert_eq!(name.last(), Some(&0));
    // SAFETY: `name` is NUL-terminated; getenv returns a pointer into the environment block,
    // which lives as long as nobody calls setenv on that name (a documented caveat of reading
    // the environment from an allocator).
    unsafe {
        let p = libc::getenv(name.as_ptr() as *const libc::c_char);
        if p.is_null() {
            return None;
        }
        let len = libc::strlen(p);
        Some(core::slice::from_raw_parts(p as *const u8, len))
    }
}

/// Parses a decimal u64 (surrounding spaces allowed).
pub(crate) fn parse_u64(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in v {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(n)
}

/// Parses a boolean: 1/0, on/off, true/false, yes/no. An empty value is none of them (review
/// rev25: read as `0`, it turned `TIERALLOC_NUMA`'s binding off without a warning).
pub(crate) fn parse_bool(v: &[u8]) -> Option<bool> {
    let v = trim(v);
    let eq = |s: &[u8]| v.eq_ignore_ascii_case(s);
    if eq(b"1") || eq(b"on") || eq(b"true") || eq(b"yes") {
        Some(true)
    } else if eq(b"0") || eq(b"off") || eq(b"false") || eq(b"no") {
        Some(false)
    } else {
        None
    }
}

/// A byte count: digits with an optional binary suffix K, M, G or T (case-insensitive, an
/// optional trailing "iB"/"B").
pub(crate) fn parse_size(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    let digits = v.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let n = parse_u64(&v[..digits])?;
    let mut rest = &v[digits..];
    if rest.len() == 3 && rest[1..].eq_ignore_ascii_case(b"ib") {
        rest = &rest[..1];
    } else if rest.last().is_some_and(|c| c.eq_ignore_ascii_case(&b'b')) {
        rest = &rest[..rest.len() - 1];
    }
    let shift = match rest {
        b"" => 0,
        b"k" | b"K" => 10,
        b"m" | b"M" => 20,
        b"g" | b"G" => 30,
        b"t" | b"T" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// The index in `choices` of the word `v` is (case-insensitive, surrounding spaces allowed).
pub(crate) fn parse_choice(v: &[u8], choices: &[&[u8]]) -> Option<usize> {
    let v = trim(v);
    choices.iter().position(|c| v.eq_ignore_ascii_case(c))
}

/// "near:far" weights, far at least 1.
pub(crate) fn parse_ratio(v: &[u8]) -> Option<(u32, u32)> {
    let v = trim(v);
    let i = v.iter().position(|&c| c == b':')?;
    let n = parse_u64(&v[..i])?;
    let f = parse_u64(&v[i + 1..])?;
    if f == 0 || n > 1_000_000 || f > 1_000_000 {
        return None;
    }
    Some((n as u32, f as u32))
}

/// TIERALLOC_FAR_POLICY: `bind` (false) or `preferred` (true), in any case.
pub(crate) fn parse_far_policy(v: &[u8]) -> Option<bool> {
    parse_choice(v, &[b"bind", b"preferred"]).map(|i| i == 1)
}

/// `v` without leading and trailing ASCII whitespace (for environment values and sysfs text).
pub(crate) fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &v[s..e]
}

/// Writes "tieralloc: warning: ignoring NAME=VALUE (expected WHAT); using the default".
pub(crate) fn warn_bad(name: &[u8], value: &[u8], expected: &str) {
    let name = name.strip_suffix(b"\0").unwrap_or(name);
    os::write_stderr(b"tieralloc: warning: ignoring malformed ");
    os::write_stderr(name);
    os::write_stderr(b"=\"");
    // Control characters as `?`, so that the warning stays one line and no escape sequence
    // reaches a terminal (review rev25).
    let mut shown = [0u8; 64];
    let n = value.len().min(shown.len());
    for (d, &c) in shown.iter_mut().zip(&value[..n]) {
        *d = if c < 0x20 || c == 0x7f { b'?' } else { c };
    }
    os::write_stderr(&shown[..n]);
    os::write_stderr(b"\" (expected ");
    os::write_stderr(expected.as_bytes());
    os::write_stderr(b"); using the default\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_and_garbage_does_not() {
        assert_eq!(parse_u64(b"250"), Some(250));
        assert_eq!(parse_u64(b" 7 "), Some(7));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12ms"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }

    #[test]
    fn booleans_parse() {
        assert_eq!(parse_bool(b"1"), Some(true));
        assert_eq!(parse_bool(b"OFF"), Some(false));
        assert_eq!(parse_bool(b"maybe"), None);
        assert_eq!(parse_bool(b""), None);
        assert_eq!(parse_bool(b"  "), None);
    }

    #[test]
    fn choices_parse() {
        let c: &[&[u8]] = &[b"abort", b"warn", b"ignore"];
        assert_eq!(parse_choice(b"abort", c), Some(0));
        assert_eq!(parse_choice(b" WARN ", c), Some(1));
        assert_eq!(parse_choice(b"ignore", c), Some(2));
        assert_eq!(parse_choice(b"", c), None);
        assert_eq!(parse_choice(b"warning", c), None);
    }

    #[test]
    fn sizes_and_ratios_parse() {
        assert_eq!(parse_size(b"1048576"), Some(1 << 20));
        assert_eq!(parse_size(b"1M"), Some(1 << 20));
        assert_eq!(parse_size(b" 2g "), Some(2 << 30));
        assert_eq!(parse_size(b"8GiB"), Some(8 << 30));
        assert_eq!(parse_size(b"64KB"), Some(64 << 10));
        assert_eq!(parse_size(b"12B"), Some(12));
        assert_eq!(parse_size(b"x"), None);
        assert_eq!(parse_size(b"1Q"), None);
        assert_eq!(parse_size(b"99999999999T"), None);
        assert_eq!(parse_ratio(b"1:4"), Some((1, 4)));
        assert_eq!(parse_ratio(b"0:1"), Some((0, 1)));
        assert_eq!(parse_ratio(b"1:0"), None);
        assert_eq!(parse_ratio(b"14"), None);
    }

    #[test]
    fn far_policies_parse() {
        assert_eq!(parse_far_policy(b"bind"), Some(false));
        assert_eq!(parse_far_policy(b" Preferred "), Some(true));
        assert_eq!(parse_far_policy(b"prefer"), None);
        assert_eq!(parse_far_policy(b""), None);
    }
}
