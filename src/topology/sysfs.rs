//! Reading Linux's sysfs into a [`Raw`], allocation-free: raw `open`/`read`/`getdents64` into
//! stack buffers, and hand-written parsers for the list format ("0-3,8,10-11").
//!
//! Owns: the sysfs paths and formats tieralloc understands (every sysfs read of the crate is
//! here) and the list parser. May touch: `topology::raw` (fills it) and `sys::env` (trim).
//! Reads, below a root (`/sys`, or a fixture tree in tests):
//! `devices/system/node/{online,possible}`, `nodeN/cpulist`, `nodeN/meminfo` (MemTotal),
//! `nodeN/distance`, `nodeN/access0/initiators/{read,write}_{latency,bandwidth}` and the
//! `nodeM` links beside them, `devices/virtual/memory_tiering/memory_tierK/nodelist`, and for
//! a machine without NUMA `devices/system/cpu/{possible,online}` and /proc/meminfo; and, for
//! `Placed`'s weighted interleave, `/sys/kernel/mm/mempolicy/weighted_interleave/nodeN`.

use super::raw::{Perf, Raw, RawSource, MAX_CPUS, MAX_NODES};
use crate::sys::env::trim;

const PATH_MAX: usize = 512;

/// A path built on the stack, NUL-terminated on use.
struct Path {
    buf: [u8; PATH_MAX],
    len: usize,
    ok: bool,
}

impl Path {
    fn new(root: &[u8]) -> Path {
        let mut p = Path {
            buf: [0; PATH_MAX],
            len: 0,
            ok: true,
        };
        p.push(root);
        p
    }
    fn push(&mut self, s: &[u8]) -> &mut Self {
        if self.len + s.len() < PATH_MAX {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s);
            self.len += s.len();
        } else {
            self.ok = false;
        }
        self
    }
    fn push_num(&mut self, mut n: usize) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let d = digits;
        self.push(&d[i..])
    }
    fn truncate(&mut self, len: usize) {
        self.len = len;
    }
    /// A pointer to the NUL-terminated path, or None if it did not fit.
    fn c_str(&mut self) -> Option<*const libc::c_char> {
        if !self.ok || self.len + 1 > PATH_MAX {
            return None;
        }
        self.buf[self.len] = 0;
        Some(self.buf.as_ptr() as *const libc::c_char)
    }
}

/// Reads a whole (small) file into `buf`; the number of bytes read, or None.
fn read_file(path: &mut Path, buf: &mut [u8]) -> Option<usize> {
    let c = path.c_str()?;
    // SAFETY: `c` points to a NUL-terminated path in `path`, alive for the call.
    let fd = unsafe { libc::open(c, libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    let mut ok = true;
    while len < buf.len() {
        // SAFETY: buf[len..] is valid writable memory of the length we pass.
        let n = unsafe {
            libc::read(
                fd,
                buf[len..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - len,
            )
        };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            ok = false;
            break;
        }
        if n == 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    ok.then_some(len)
}

fn exists(path: &mut Path) -> bool {
    match path.c_str() {
        // SAFETY: a NUL-terminated path; access only reads it.
        Some(c) => unsafe { libc::access(c, libc::F_OK) == 0 },
        None => false,
    }
}

/// Calls `f` with the name of each entry of a directory (raw getdents64 into a stack
/// buffer: opendir would allocate).
fn for_each_entry(path: &mut Path, mut f: impl FnMut(&[u8])) {
    let Some(c) = path.c_str() else { return };
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is writable for its length; the kernel writes whole dirent64 records.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if n <= 0 {
            break;
        }
        let n = n as usize;
        let mut off = 0;
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while off + 19 <= n {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 || off + reclen > n {
                break;
            }
            let name = &buf[off + 19..off + reclen];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            f(&name[..end]);
            off += reclen;
        }
    }
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
}

fn parse_num(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 9 {
        return None;
    }
    let mut n = 0usize;
    for &c in v {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (c - b'0') as usize;
    }
    Some(n)
}

/// The kernel's weighted-interleave weight of `node`
/// (/sys/kernel/mm/mempolicy/weighted_interleave/nodeN, system-wide, set by root), if it has
/// one. Allocation-free.
pub(crate) fn weighted_interleave_weight(node: u32) -> Option<u32> {
    let mut path = Path::new(b"/sys/kernel/mm/mempolicy/weighted_interleave/node");
    path.push_num(node as usize);
    let mut buf = [0u8; 16];
    let n = read_file(&mut path, &mut buf)?;
    if n == 0 {
        return None;
    }
    crate::sys::env::parse_u64(&buf[..n]).map(|w| w as u32)
}

/// Parses a Linux list ("0-3,8,10-11"; empty means none; surrounding whitespace allowed)
/// into the bit set `out` (which it clears first). False if malformed (a bad number, a
/// reversed range, an empty item) or naming an id beyond `out`'s bits.
pub(crate) fn parse_list(v: &[u8], out: &mut [u64]) -> bool {
    parse_list_clipped(v, out, false) == Some(false)
}

/// Like [`parse_list`], but with `clip` an id beyond `out`'s bits is left out rather than
/// refused: `Some(true)` then says some were (a CPU list of a machine past `MAX_CPUS`).
/// None if malformed.
pub(crate) fn parse_list_clipped(v: &[u8], out: &mut [u64], clip: bool) -> Option<bool> {
    out.iter_mut().for_each(|w| *w = 0);
    let v = trim(v);
    if v.is_empty() {
        return Some(false);
    }
    let bits = out.len() * 64;
    let mut beyond = false;
    for item in v.split(|&c| c == b',') {
        let item = trim(item);
        let (a, b) = match item.iter().position(|&c| c == b'-') {
            Some(i) => (parse_num(trim(&item[..i])), parse_num(trim(&item[i + 1..]))),
            None => {
                let n = parse_num(item);
                (n, n)
            }
        };
        let (Some(a), Some(b)) = (a, b) else {
            return None;
        };
        if a > b || (b >= bits && !clip) {
            return None;
        }
        beyond |= b >= bits;
        for i in a..=b.min(bits - 1) {
            out[i / 64] |= 1 << (i % 64);
        }
    }
    Some(beyond)
}

/// The first decimal number after `key` in `text` (e.g. "MemTotal:" in a meminfo file).
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &text[at..];
    let s = rest.iter().position(|c| c.is_ascii_digit())?;
    let mut n: u64 = 0;
    for &c in &rest[s..] {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(n)
}

fn read_u32(path: &mut Path) -> u32 {
    let mut buf = [0u8; 32];
    match read_file(path, &mut buf) {
        Some(n) => parse_num(trim(&buf[..n])).map_or(0, |v| v.min(u32::MAX as usize) as u32),
        None => 0,
    }
}

/// Fills `raw` from the sysfs tree below `root` (`/sys` for the real machine). `real`: this
/// is the running machine (so /proc/meminfo and the affinity mask may stand in for missing
/// files). Never fails: a machine without NUMA information is one node 0 with every CPU.
/// `raw` is [`Raw::EMPTY`] (as made, or as `Raw::empty_in_zeroed` makes it): it is not
/// reset here, so that the pages of the process-wide instance discovery has no figure for
/// are never written.
pub(crate) fn discover(root: &[u8], real: bool, raw: &mut Raw) {
    let mut base = Path::new(root);
    base.push(b"/devices/system/node/");
    let base_len = base.len;
    let mut buf = [0u8; 4096];
    let mut m = [0u64; 1];

    // Which nodes.
    let mut nodes = 0u64;
    for file in [&b"online"[..], b"possible", b"has_memory"] {
        base.truncate(base_len);
        base.push(file);
        if let Some(n) = read_file(&mut base, &mut buf) {
            if parse_list(&buf[..n], &mut m) && m[0] != 0 {
                nodes = m[0];
                break;
            }
        }
    }
    if nodes == 0 {
        for n in 0..MAX_NODES {
            base.truncate(base_len);
            base.push(b"node").push_num(n);
            if exists(&mut base) {
                nodes |= 1 << n;
            }
        }
    }
    if nodes == 0 {
        fallback(root, real, raw);
        return;
    }
    raw.source = RawSource::Sysfs;
    raw.nodes = nodes;

    // Nodes with memory: has_memory when present, else MemTotal > 0.
    let mut mem_nodes_file = None;
    base.truncate(base_len);
    base.push(b"has_memory");
    if let Some(n) = read_file(&mut base, &mut buf) {
        if parse_list(&buf[..n], &mut m) {
            mem_nodes_file = Some(m[0] & nodes);
        }
    }

    let mut order = [0usize; MAX_NODES];
    let mut count = 0;
    for n in super::raw::iter(nodes) {
        order[count] = n;
        count += 1;
    }

    for &n in &order[..count] {
        base.truncate(base_len);
        base.push(b"node").push_num(n).push(b"/");
        let node_len = base.len;

        base.push(b"cpulist");
        if let Some(mut len) = read_file(&mut base, &mut buf) {
            if len == buf.len() && buf[len - 1] != b'\n' {
                // Longer than the buffer (CPUs listed one by one, past the tables): the last
                // item may be cut inside its number, so it goes (review rev25).
                len = buf.iter().rposition(|&c| c == b',').unwrap_or(0);
            }
            let mut cpus = [0u64; MAX_CPUS / 64];
            // CPUs past the tables are left out, their node still a CPU node (review rev25:
            // the whole list was refused, and the node read as memory-only).
            if let Some(beyond) = parse_list_clipped(&buf[..len], &mut cpus, true) {
                raw.cpus[n] = cpus;
                if beyond {
                    raw.cpus_beyond |= 1 << n;
                }
            }
        }

        base.truncate(node_len);
        base.push(b"meminfo");
        if let Some(len) = read_file(&mut base, &mut buf) {
            if let Some(kib) = number_after(&buf[..len], b"MemTotal:") {
                raw.mem_bytes[n] = kib.saturating_mul(1024);
            }
        }

        base.truncate(node_len);
        base.push(b"distance");
        if let Some(len) = read_file(&mut base, &mut buf) {
            let toks = buf[..len]
                .split(|c| c.is_ascii_whitespace())
                .filter(|t| !t.is_empty());
            for (tok, &to) in toks.zip(&order[..count]) {
                if let Some(d) = parse_num(tok) {
                    raw.distance[n][to] = d.min(255) as u8;
                }
            }
        }

        // HMAT: this node's performance from its best initiators.
        base.truncate(node_len);
        base.push(b"access0/initiators/");
        let acc_len = base.len;
        let mut perf = Perf::default();
        for (file, slot) in [
            (&b"read_latency"[..], 0),
            (b"write_latency", 1),
            (b"read_bandwidth", 2),
            (b"write_bandwidth", 3),
        ] {
            base.truncate(acc_len);
            base.push(file);
            let v = read_u32(&mut base);
            match slot {
                0 => perf.read_latency = v,
                1 => perf.write_latency = v,
                2 => perf.read_bandwidth = v,
                _ => perf.write_bandwidth = v,
            }
        }
        if perf.known() {
            base.truncate(acc_len);
            let mut initiators = 0u64;
            for_each_entry(&mut base, |name| {
                if let Some(id) = name.strip_prefix(b"node").and_then(parse_num) {
                    if id < MAX_NODES {
                        initiators |= 1 << id;
                    }
                }
            });
            for i in super::raw::iter(initiators & nodes) {
                raw.perf[i][n] = perf;
            }
        }
    }

    for &n in &order[..count] {
        let has_mem = match mem_nodes_file {
            Some(mm) => mm & (1 << n) != 0,
            None => raw.mem_bytes[n] > 0,
        };
        if has_mem {
            raw.mem_nodes |= 1 << n;
        }
    }
    // The files name no node with memory (none present, or naming no node of `online`): the
    // memory is somewhere, so every node counts as having it (review rev25: only a one-node
    // machine did, and several nodes got no tier and the absent node 0 as their home).
    if raw.mem_nodes == 0 {
        raw.mem_nodes = nodes;
    }

    // The kernel's memory tiers.
    let mut tiers = Path::new(root);
    tiers.push(b"/devices/virtual/memory_tiering/");
    let tiers_len = tiers.len;
    let mut ids = [0u16; 64];
    let mut n_ids = 0;
    for_each_entry(&mut tiers, |name| {
        if let Some(id) = name.strip_prefix(b"memory_tier").and_then(parse_num) {
            if n_ids < ids.len() && id < u16::MAX as usize {
                ids[n_ids] = id as u16;
                n_ids += 1;
            }
        }
    });
    for &id in &ids[..n_ids] {
        tiers.truncate(tiers_len);
        tiers
            .push(b"memory_tier")
            .push_num(id as usize)
            .push(b"/nodelist");
        if let Some(len) = read_file(&mut tiers, &mut buf) {
            if parse_list(&buf[..len], &mut m) {
                for n in super::raw::iter(m[0] & nodes) {
                    raw.kernel_tier[n] = id;
                }
            }
        }
    }
}

/// One node 0 with every CPU (the machine has no NUMA information).
fn fallback(root: &[u8], real: bool, raw: &mut Raw) {
    raw.source = RawSource::Fallback;
    raw.nodes = 1;
    raw.mem_nodes = 1;
    raw.distance[0][0] = 10;
    let mut buf = [0u8; 4096];
    let mut cpus = [0u64; MAX_CPUS / 64];
    let mut found = false;
    for file in [&b"possible"[..], b"online"] {
        let mut p = Path::new(root);
        p.push(b"/devices/system/cpu/").push(file);
        if let Some(n) = read_file(&mut p, &mut buf) {
            if parse_list_clipped(&buf[..n], &mut cpus, true).is_some()
                && cpus.iter().any(|w| *w != 0)
            {
                found = true;
                break;
            }
        }
    }
    if !found && real {
        // SAFETY: the kernel writes at most `size_of_val(&cpus)` bytes into the mask, which
        // is that long; pid 0 is the calling thread.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_getaffinity,
                0 as libc::pid_t,
                core::mem::size_of_val(&cpus),
                cpus.as_mut_ptr(),
            )
        };
        found = r > 0 && cpus.iter().any(|w| *w != 0);
    }
    if !found {
        cpus[0] = 1;
    }
    raw.cpus[0] = cpus;
    if real {
        let mut p = Path::new(b"/proc/meminfo");
        if let Some(n) = read_file(&mut p, &mut buf) {
            if let Some(kib) = number_after(&buf[..n], b"MemTotal:") {
                raw.mem_bytes[0] = kib.saturating_mul(1024);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        let mut m = [0u64; 2];
        assert!(parse_list(b"0-3,8,10-11\n", &mut m));
        assert_eq!(m[0], 0b1101_0000_1111);
        assert!(parse_list(b"", &mut m) && m == [0, 0]);
        assert!(parse_list(b"127", &mut m) && m[1] == 1 << 63);
        assert!(!parse_list(b"128", &mut m));
        assert!(!parse_list(b"3-1", &mut m));
        assert!(!parse_list(b"1,,2", &mut m));
        assert!(!parse_list(b"a", &mut m));
        assert!(!parse_list(b"1-", &mut m));
    }

    #[test]
    fn meminfo_numbers() {
        let t = b"Node 0 MemTotal:       16345676 kB\nNode 0 MemFree: 1 kB\n";
        assert_eq!(number_after(t, b"MemTotal:"), Some(16345676));
        assert_eq!(number_after(t, b"Nope:"), None);
    }

    #[test]
    fn this_machine_is_discovered() {
        let mut raw = Box::new(Raw::EMPTY);
        discover(b"/sys", true, &mut raw);
        assert!(raw.nodes & 1 != 0);
        assert!(raw.cpu_nodes() != 0);
    }
}
