//! The secure drop-in's look at a pointer outside every tieralloc segment given to `free` (and
//! `cfree`, `delete`, `realloc`): reported when it provably lies on a stack or in a loaded
//! object's image, left alone otherwise (docs/security.md, "The `secure` build").
//!
//! Owns: [`check`] and the two tests behind it. May touch: glibc's `_dl_find_object`, `getauxval`,
//! `pthread_self`, `sigaltstack`, and `open`/`read`/`close` of /proc/self/maps (plain system
//! calls); `tieralloc::report_foreign_free`. Compiled only with the `secure` feature; the
//! default drop-in ignores every such pointer.
//!
//! Nothing here allocates or takes a lock of ours, and `errno` comes back as it was:
//! - **Static**: `_dl_find_object` (glibc 2.35+) names the object whose loaded segments (data,
//!   bss, read-only data, code) hold the address. It takes no lock and allocates nothing
//!   (`dladdr`, used first, takes the loader's `dl_load_lock`: a deadlock with a `dlopen`
//!   when the `free` comes from inside a `dl_iterate_phdr` callback). The dynamic loader's
//!   own image is exempt: its private early allocator hands out the rest of the loader's last
//!   data page, and the loader may free those blocks through `free`. The loader is the object
//!   at `getauxval(AT_BASE)`, or (when ld.so was run as a command, AT_BASE 0) the one that
//!   holds `__tls_get_addr`. Its other blocks are `mmap`ed: in no object.
//! - **Stack**: the address is at or above the current stack pointer (a live frame of this
//!   thread, or the main thread's stack seen from any thread: thread stacks are `mmap`ed
//!   below it), and one pass over /proc/self/maps (read in 256-byte pieces into a stack
//!   buffer) shows it in the main thread's stack (the mapping the kernel names `[stack]`),
//!   or, for a thread glibc made, between the stack pointer and the thread's descriptor
//!   (`pthread_self()`, which glibc puts at the top of the block the thread's stack is
//!   carved from) with both in the one mapping that holds the address. That rule is skipped
//!   on an alternate signal stack. `pthread_getattr_np` is not used: glibc's allocates (the
//!   affinity mask; for the main thread it reads /proc/self/maps through `fopen`).
//!
//! Cost: none on any path of our own blocks (tieralloc's `c_free_or` calls [`check`] only for
//! a non-null pointer outside every segment); on that path two `_dl_find_object` calls, and the read of
//! /proc/self/maps when the pointer is above the stack pointer.

use core::ffi::c_void;
use tieralloc::ForeignFree;

/// Reports `p`, a non-null pointer outside every tieralloc segment that a program frees, if
/// it provably lies on a stack or in a loaded object other than the dynamic loader
/// (`TIERALLOC_ON_ERROR`: abort by default); returns, leaving `p` alone, otherwise or when
/// the report returns.
#[cold]
#[inline(never)]
pub(crate) fn check(p: *mut c_void) {
    let saved = crate::errno();
    if let Some(kind) = classify(p as usize) {
        tieralloc::report_foreign_free(kind, p as *const u8);
    }
    crate::set_errno(saved);
}

/// What `p` provably is, if anything we report.
#[inline(never)]
fn classify(p: usize) -> Option<ForeignFree> {
    if in_object_image(p) {
        return Some(ForeignFree::Static);
    }
    // A local's address: at or below every frame of our callers.
    let marker = 0u8;
    let sp = core::hint::black_box(core::ptr::addr_of!(marker)) as usize;
    if p >= sp && on_stack(p, sp) {
        return Some(ForeignFree::Stack);
    }
    None
}

/// glibc's `struct dl_find_object` (dlfcn.h, 2.35+): on x86_64 and aarch64 five words and
/// seven reserved ones; more reserved room here costs nothing and covers a port with the
/// optional fields.
#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: *mut c_void,
    map_end: *mut c_void,
    link_map: *mut c_void,
    eh_frame: *mut c_void,
    reserved: [u64; 12],
}

extern "C" {
    /// Defined by the dynamic loader (every glibc's ld.so exports it): its address tells
    /// which loaded object is the loader when AT_BASE does not.
    fn __tls_get_addr();
    /// glibc 2.35+: the loaded object whose mapping holds `address` (0), or -1. Takes no
    /// lock and allocates nothing (it reads a copy of the object list that `dlopen` and
    /// `dlclose` publish with a version counter, for unwinders).
    fn _dl_find_object(address: *mut c_void, result: *mut DlFindObject) -> libc::c_int;
}

/// The link map of the loaded object whose mapping (code, read-only data, data, bss) holds
/// `p`, if any.
///
/// Not `dladdr`: that takes the loader's `dl_load_lock`, and a `free` inside a
/// `dl_iterate_phdr` callback (which holds `dl_load_write_lock`) while another thread's
/// `dlopen` holds `dl_load_lock` and waits for the other deadlocked both threads
/// (preload/tests/foreign_locks.rs). Nor a `dl_iterate_phdr` walk of our own: a fork child
/// of a process that had a thread inside one inherits `dl_load_write_lock` held.
fn object_of(p: usize) -> Option<usize> {
    // SAFETY: DlFindObject is plain data (integers and pointers): all-zero is valid.
    let mut found: DlFindObject = unsafe { core::mem::zeroed() };
    // SAFETY: _dl_find_object only reads the loader's published object list and writes
    // `found`, a valid local at least as large as glibc's struct; it never dereferences `p`.
    let r = unsafe { _dl_find_object(p as *mut c_void, &mut found) };
    (r == 0 && !found.link_map.is_null()).then_some(found.link_map as usize)
}

/// Whether `p` lies in a loaded object's image (its loaded segments) other than the loader's.
fn in_object_image(p: usize) -> bool {
    let Some(object) = object_of(p) else {
        return false;
    };
    // SAFETY: getauxval reads the process's auxiliary vector; no precondition.
    let at_base = unsafe { libc::getauxval(libc::AT_BASE) } as usize;
    let loader = if at_base != 0 {
        object_of(at_base)
    } else {
        object_of(__tls_get_addr as *const c_void as usize)
    };
    // The loader cannot be told apart: report nothing rather than its blocks.
    loader.is_some_and(|loader| object != loader)
}

/// Whether `p` (at or above the current stack pointer `sp`) lies on the main thread's stack
/// or on the calling thread's, as the module's docs say.
fn on_stack(p: usize, sp: usize) -> bool {
    // SAFETY: pthread_self has no precondition and returns the calling thread's descriptor.
    let me = unsafe { libc::pthread_self() } as usize;
    let Some(m) = mappings_of(p, sp, me) else {
        return false;
    };
    if m.p_in_main_stack {
        return true;
    }
    p < me && m.sp_start == Some(m.p_start) && m.me_start == Some(m.p_start) && !on_altstack()
}

/// Whether the calling thread runs on its alternate signal stack.
fn on_altstack() -> bool {
    // SAFETY: stack_t is plain data; all-zero is a valid value.
    let mut ss: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: with a null new stack, sigaltstack only writes the current one into `ss`.
    let r = unsafe { libc::sigaltstack(core::ptr::null(), &mut ss) };
    r != 0 || ss.ss_flags & libc::SS_ONSTACK != 0
}

/// What one pass over /proc/self/maps says about `p`, `sp` and `me`.
struct Mappings {
    /// The start of the mapping holding `p`.
    p_start: usize,
    /// Whether that mapping is the one the kernel names `[stack]` (the main thread's stack).
    p_in_main_stack: bool,
    /// The start of the mapping holding `sp`, if any.
    sp_start: Option<usize>,
    /// The start of the mapping holding `me`, if any.
    me_start: Option<usize>,
}

/// Reads /proc/self/maps without allocating; `None` if it cannot be read or no mapping holds
/// `p`.
fn mappings_of(p: usize, sp: usize, me: usize) -> Option<Mappings> {
    // SAFETY: the path is a NUL-terminated literal; open has no other precondition.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut parser = MapsParser::new(p, sp, me);
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: buf is a valid, writable local of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && crate::errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        for &b in buf.get(..n as usize).unwrap_or(&[]) {
            parser.byte(b);
        }
    }
    // SAFETY: fd is the descriptor opened above, closed once.
    unsafe { libc::close(fd) };
    parser.result()
}

/// A byte-at-a-time parser of /proc/self/maps lines (`start-end perms offset dev inode
/// name`), keeping only what [`Mappings`] needs: no line is stored.
struct MapsParser {
    p: usize,
    sp: usize,
    me: usize,
    /// The fields of the current line: 0 start, 1 end, 2 to 5 perms to inode, 6 the name.
    field: u8,
    /// Whether the previous byte was a space (a new field starts at the next non-space).
    in_space: bool,
    start: usize,
    end: usize,
    /// The name's first bytes and its length (longer than `name` holds: not `[stack]`).
    name: [u8; 8],
    name_len: usize,
    out: Mappings,
    found_p: bool,
}

impl MapsParser {
    fn new(p: usize, sp: usize, me: usize) -> Self {
        MapsParser {
            p,
            sp,
            me,
            field: 0,
            in_space: false,
            start: 0,
            end: 0,
            name: [0; 8],
            name_len: 0,
            out: Mappings {
                p_start: 0,
                p_in_main_stack: false,
                sp_start: None,
                me_start: None,
            },
            found_p: false,
        }
    }

    fn byte(&mut self, b: u8) {
        match b {
            b'\n' => self.end_line(),
            b'-' if self.field == 0 => self.field = 1,
            b' ' if self.field < 6 => self.in_space = true,
            _ => {
                if self.in_space {
                    self.in_space = false;
                    self.field += 1;
                }
                match self.field {
                    0 => self.start = hex_digit(self.start, b),
                    1 => self.end = hex_digit(self.end, b),
                    6 => {
                        if let Some(slot) = self.name.get_mut(self.name_len) {
                            *slot = b;
                        }
                        self.name_len += 1;
                    }
                    _ => {}
                }
            }
        }
    }

    fn end_line(&mut self) {
        let (s, e) = (self.start, self.end);
        if s <= self.p && self.p < e {
            self.found_p = true;
            self.out.p_start = s;
            self.out.p_in_main_stack = self.name.get(..self.name_len) == Some(b"[stack]");
        }
        if s <= self.sp && self.sp < e {
            self.out.sp_start = Some(s);
        }
        if s <= self.me && self.me < e {
            self.out.me_start = Some(s);
        }
        self.field = 0;
        self.in_space = false;
        self.start = 0;
        self.end = 0;
        self.name_len = 0;
    }

    fn result(self) -> Option<Mappings> {
        self.found_p.then_some(self.out)
    }
}

/// `acc` with the hex digit `b` appended (a byte that is no hex digit counts as 0: the
/// kernel writes none there).
fn hex_digit(acc: usize, b: u8) -> usize {
    let d = match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => 0,
    };
    acc.wrapping_shl(4) | d as usize
}
