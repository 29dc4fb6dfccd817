//! The crate's shape: every module of `src/` sits in one layer, and no module imports a layer
//! above its own, so that no import circle can form between layers. The order is written
//! once, in [`LAYERS`] below (docs/design.md draws it).
//!
//! What is read: every `crate::…` path and every `super::…` path (resolved from the file's
//! module) in the code of each `src/**/*.rs` file, in `use` declarations (groups such as
//! `use crate::{a::b, c}` included) and in expressions alike. Comments (doc comments too),
//! string and character literals, and `#[cfg(test)]` items (the unit tests may reach anywhere)
//! are skipped; paths relative to the module itself (`use child::x`, `self::`) stay inside the
//! module's own layer and are not read. A path whose first segment is not a module of the
//! crate names an item of `lib.rs` and counts as the top layer.
//!
//! `TIERALLOC_LAYERS_SRC=/some/src cargo test --test layers` checks another tree (such as an
//! older commit's `src/`, exported with `git archive`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, from the bottom: a module may import its own layer and the layers before it.
/// Each entry names the top-level modules of `src/` in the layer (`lib` is `src/lib.rs`).
const LAYERS: &[(&str, &[&str])] = &[
    // Atomics and the spin lock (std or loom).
    ("sync", &["sync"]),
    // System calls and the environment's raw values.
    ("sys", &["sys"]),
    // The machine: nodes, CPUs, tiers; the calling thread's home node; pinning.
    ("topology", &["topology"]),
    // The allocator core: the heap (with its tier routing state, `heap::route`), the start-up
    // that its first thread registration runs (`init`), and the statistics of its counters
    // (`stats`, whose exit-time printer the start-up registers).
    ("heap", &["heap", "init", "stats"]),
    // Explicit placement on nodes and tiers, and placement scopes on them.
    ("placed", &["placed", "scope"]),
    // The tier API: policy setting, migration, auto-demotion, per-tier statistics.
    ("tier", &["tier"]),
    // The global allocator.
    ("global", &["global"]),
    // Clients of any allocator.
    ("arena, pool", &["arena", "pool"]),
    // The crate root: the public API, and the Prometheus collector over its statistics
    // (feature `prometheus`).
    ("lib", &["lib", "metrics"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// The module path of a file below `src/` ("heap/thread/fork.rs" is heap::thread::fork,
/// "heap/mod.rs" is heap, "lib.rs" is the root).
fn module_path(rel: &str) -> Vec<String> {
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod") | Some("lib")) {
        parts.pop();
    }
    parts
}

/// `text` with comments, string literals and character literals blanked out (newlines kept,
/// so that line numbers stay true).
fn strip(text: &str) -> Vec<u8> {
    let s = text.as_bytes();
    let mut out = s.to_vec();
    let blank = |out: &mut Vec<u8>, a: usize, b: usize| {
        for c in &mut out[a..b] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(b"//") {
            let e = s[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(s.len(), |k| i + k);
            blank(&mut out, i, e);
            i = e;
        } else if s[i..].starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < s.len() && depth > 0 {
                if s[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if s[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if s[i] == b'r'
            && (s[i + 1..].starts_with(b"\"") || s[i + 1..].starts_with(b"#"))
            && (i == 0 || !is_ident(s[i - 1]))
        {
            // A raw string: r"…", r#"…"#, …
            let hashes = s[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if s.get(i + 1 + hashes) != Some(&b'"') {
                i += 1;
                continue;
            }
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let start = i + 2 + hashes;
            let e = s[start..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(s.len(), |k| start + k + close.len());
            blank(&mut out, i, e);
            i = e;
        } else if s[i] == b'"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != b'"' {
                j += if s[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, (j + 1).min(s.len()));
            i = j + 1;
        } else if s[i] == b'\'' {
            // A character literal ('x', '\n', '\''), or a lifetime ('a), which stays.
            if s.get(i + 1) == Some(&b'\\') {
                let e = s[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map_or(s.len(), |k| i + 2 + k + 1);
                blank(&mut out, i, e);
                i = e;
            } else if s.get(i + 2) == Some(&b'\'') {
                blank(&mut out, i, i + 3);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Blanks out every item under `#[cfg(test)]`: up to its `;`, or its `{ … }` block.
fn skip_test_items(s: &mut [u8]) {
    const ATTR: &[u8] = b"#[cfg(test)]";
    let mut i = 0;
    while let Some(k) = s[i..].windows(ATTR.len()).position(|w| w == ATTR) {
        let a = i + k;
        let mut j = a + ATTR.len();
        while j < s.len() && s[j] != b'{' && s[j] != b';' {
            j += 1;
        }
        if j < s.len() && s[j] == b'{' {
            let mut depth = 0;
            while j < s.len() {
                match s[j] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        let e = (j + 1).min(s.len());
        for c in &mut s[a..e] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        i = e;
    }
}

fn skip_ws(s: &[u8], i: &mut usize) {
    while *i < s.len() && s[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn ident(s: &[u8], i: &mut usize) -> String {
    let a = *i;
    while *i < s.len() && is_ident(s[*i]) {
        *i += 1;
    }
    String::from_utf8_lossy(&s[a..*i]).into_owned()
}

/// The paths of a use tree that starts at `i` (just after a `::`): `a::b`, `a::{b, c::d}`,
/// `*`; each as its segments.
fn use_tree(s: &[u8], i: &mut usize) -> Vec<Vec<String>> {
    skip_ws(s, i);
    if *i < s.len() && s[*i] == b'{' {
        *i += 1;
        let mut out = Vec::new();
        loop {
            skip_ws(s, i);
            if *i >= s.len() {
                return out;
            }
            if s[*i] == b'}' {
                *i += 1;
                return out;
            }
            if s[*i] == b',' {
                *i += 1;
                continue;
            }
            let before = *i;
            out.extend(use_tree(s, i));
            if *i == before {
                *i += 1; // not a path (`as`, a stray token): step over it
            }
        }
    }
    let name = ident(s, i);
    if name.is_empty() {
        return vec![Vec::new()];
    }
    let mut j = *i;
    skip_ws(s, &mut j);
    if s[j..].starts_with(b"::") {
        *i = j + 2;
        return use_tree(s, i)
            .into_iter()
            .map(|mut v| {
                v.insert(0, name.clone());
                v
            })
            .collect();
    }
    vec![vec![name]]
}

/// One path of a file into the crate: its line and its segments from the crate root.
struct Import {
    line: usize,
    path: Vec<String>,
}

/// The `crate::` and `super::` paths of `code` (already stripped), resolved from `module`.
fn imports(code: &[u8], module: &[String]) -> Vec<Import> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let starts_word = i == 0 || !(is_ident(code[i - 1]) || code[i - 1] == b'$');
        let after_colons = i >= 2 && &code[i - 2..i] == b"::";
        let anchor = if !starts_word || after_colons {
            None
        } else if code[i..].starts_with(b"crate") {
            Some("crate")
        } else if code[i..].starts_with(b"super") {
            Some("super")
        } else {
            None
        };
        let Some(anchor) = anchor else {
            i += 1;
            continue;
        };
        let line = 1 + code[..i].iter().filter(|&&c| c == b'\n').count();
        let mut j = i;
        let base: Vec<String> = if anchor == "crate" {
            j += 5;
            Vec::new()
        } else {
            // super::super::…: one level up per `super`.
            let mut up = 0;
            let mut k = i;
            while code[k..].starts_with(b"super") && !code.get(k + 5).is_some_and(|&c| is_ident(c))
            {
                up += 1;
                k += 5;
                let mut m = k;
                skip_ws(code, &mut m);
                if code[m..].starts_with(b"::") {
                    let mut n = m + 2;
                    skip_ws(code, &mut n);
                    if code[n..].starts_with(b"super") {
                        k = n;
                        continue;
                    }
                }
                break;
            }
            j = k;
            if up == 0 {
                i += 1; // `superb`: not a path
                continue;
            }
            if up > module.len() {
                i = j;
                continue;
            }
            module[..module.len() - up].to_vec()
        };
        if code.get(j).is_some_and(|&c| is_ident(c)) {
            i = j; // `crateX`, `superb`: not a path
            continue;
        }
        let mut k = j;
        skip_ws(code, &mut k);
        if !code[k..].starts_with(b"::") {
            i = j; // `pub(crate)`, a bare `super`
            continue;
        }
        k += 2;
        for tail in use_tree(code, &mut k) {
            let mut path = base.clone();
            path.extend(tail);
            out.push(Import { line, path });
        }
        i = k.max(i + 1);
    }
    out
}

/// The layer violations of one file (`rel`: its path below `src/`), given the crate's
/// top-level modules.
fn check_file(rel: &str, text: &str, modules: &BTreeSet<String>) -> Vec<String> {
    let module = module_path(rel);
    let top = module.first().cloned().unwrap_or_else(|| "lib".to_string());
    let Some(own) = layer_of(&top) else {
        return vec![format!(
            "src/{rel}: module `{top}` is in no layer: place it in tests/layers.rs's LAYERS \
             (and in docs/design.md's drawing)"
        )];
    };
    let mut code = strip(text);
    skip_test_items(&mut code);
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for imp in imports(&code, &module) {
        let Some(first) = imp.path.first() else {
            continue;
        };
        let target = if modules.contains(first) {
            first.clone()
        } else {
            "lib".to_string() // an item of lib.rs
        };
        let shown = format!("crate::{}", imp.path.join("::"));
        let Some(theirs) = layer_of(&target) else {
            if seen.insert((shown.clone(), usize::MAX)) {
                out.push(format!(
                    "src/{rel}:{}: imports {shown}, and module `{target}` is in no layer",
                    imp.line
                ));
            }
            continue;
        };
        if theirs > own && seen.insert((shown.clone(), imp.line)) {
            out.push(format!(
                "src/{rel}:{}: imports {shown}: layer `{}` (of `{top}`) may not import layer \
                 `{}` (of `{target}`), which is above it",
                imp.line, LAYERS[own].0, LAYERS[theirs].0
            ));
        }
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules of a `src/` tree: its `.rs` files and directories, but `lib`.
fn top_modules(src: &Path) -> BTreeSet<String> {
    fs::read_dir(src)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = if p.is_dir() {
                p.file_name()?.to_str()?.to_string()
            } else if p.extension().is_some_and(|x| x == "rs") {
                p.file_stem()?.to_str()?.to_string()
            } else {
                return None;
            };
            (name != "lib").then_some(name)
        })
        .collect()
}

/// Every violation in the tree below `src`.
fn check_tree(src: &Path) -> Vec<String> {
    let modules = top_modules(src);
    let mut files = Vec::new();
    rs_files(src, &mut files);
    let mut out = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(src)
            .unwrap()
            .to_str()
            .unwrap()
            .replace('\\', "/");
        let text = fs::read_to_string(&f).unwrap();
        out.extend(check_file(&rel, &text, &modules));
    }
    out
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let src = std::env::var_os("TIERALLOC_LAYERS_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let v = check_tree(&src);
    assert!(
        v.is_empty(),
        "{} import(s) break the layer order (tests/layers.rs, LAYERS):\n{}",
        v.len(),
        v.join("\n")
    );
}

#[test]
fn docs_design_lists_the_same_order() {
    // docs/design.md states the order in one bold line after "The layers, from the bottom:";
    // each layer's first module must appear there, in this file's order.
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/design.md"))
        .expect("docs/design.md");
    let at = doc
        .find("The layers, from the bottom:")
        .expect("docs/design.md says \"The layers, from the bottom:\"");
    let rest = &doc[at..];
    let a = rest.find("**").expect("the order in bold") + 2;
    let b = a + rest[a..].find("**").expect("the end of the bold order");
    let line = &rest[a..b];
    let mut from = 0;
    for (name, modules) in LAYERS {
        let m = modules[0];
        let k = line[from..].find(m).unwrap_or_else(|| {
            panic!("docs/design.md's order `{line}` lacks `{m}` ({name}) after position {from}")
        });
        from += k + m.len();
    }
}

// The checker itself, on sources written here.

fn mods(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn an_upward_import_is_named_with_both_layers() {
    let m = mods(&["sys", "topology", "heap", "tier"]);
    let v = check_file("sys/numa.rs", "use crate::topology::raw as topo;\n", &m);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].starts_with("src/sys/numa.rs:1: imports crate::topology::raw"),
        "{v:?}"
    );
    assert!(
        v[0].contains("layer `sys`") && v[0].contains("layer `topology`"),
        "{v:?}"
    );
    // In an expression, after other code, on a later line.
    let v = check_file(
        "heap/thread.rs",
        "fn f() {\n    let a = 1;\n    if crate::tier::ACTIVE.load(R) {}\n}\n",
        &m,
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].starts_with("src/heap/thread.rs:3: imports crate::tier::ACTIVE"),
        "{v:?}"
    );
}

#[test]
fn downward_and_same_layer_imports_pass() {
    let m = mods(&["sync", "sys", "topology", "heap", "init", "tier"]);
    let text = "use crate::sys::{numa, os};\nuse crate::heap::route;\nuse crate::init;\n\
                use super::migrate::X;\n";
    assert!(check_file("tier/auto.rs", text, &m).is_empty());
    assert!(check_file("heap/thread.rs", "use crate::init::init_once;\n", &m).is_empty());
}

#[test]
fn groups_and_super_paths_are_resolved() {
    let m = mods(&["sync", "sys", "topology", "heap", "tier"]);
    let v = check_file(
        "sys/os.rs",
        "use crate::{sync::Ordering, tier::{a, b::c}};\n",
        &m,
    );
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v[0].contains("crate::tier::a") && v[1].contains("crate::tier::b::c"),
        "{v:?}"
    );
    // heap/thread/fork.rs is heap::thread::fork: super::super is heap, the same layer.
    let t = "use super::super::route;\nuse super::{Heap, NO_TAG};\n";
    assert!(check_file("heap/thread/fork.rs", t, &m).is_empty());
    // sys/mod.rs is sys: its super is the crate root, and `tier` is above.
    let v = check_file("sys/mod.rs", "use super::tier::x;\n", &m);
    assert_eq!(v.len(), 1, "{v:?}");
}

#[test]
fn comments_strings_and_unit_tests_are_not_read() {
    let m = mods(&["sys", "tier"]);
    let text = "//! May touch: crate::tier.\n/// See [`crate::tier::x`].\n/* crate::tier::y */\n\
                fn f() { let s = \"crate::tier::z\"; let c = '\"'; let r = r#\"crate::tier\"#; }\n\
                #[cfg(test)]\nmod tests {\n    use crate::tier::w;\n    fn g() { {} }\n}\n\
                #[cfg(test)]\nuse crate::tier::v;\n";
    assert!(
        check_file("sys/os.rs", text, &m).is_empty(),
        "{:?}",
        check_file("sys/os.rs", text, &m)
    );
    // After the test module, code is read again.
    let text2 = format!("{text}fn h() {{ crate::tier::u(); }}\n");
    assert_eq!(check_file("sys/os.rs", &text2, &m).len(), 1);
}

#[test]
fn a_module_in_no_layer_fails_and_so_does_importing_it() {
    let m = mods(&["sys", "config", "tier"]);
    let v = check_file("config.rs", "use crate::sys::os;\n", &m);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("`config` is in no layer"), "{v:?}");
    let v = check_file(
        "tier/mod.rs",
        "fn f() { crate::config::init_once(); }\n",
        &m,
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("module `config` is in no layer"), "{v:?}");
}

#[test]
fn an_item_of_the_crate_root_counts_as_the_top_layer() {
    let m = mods(&["arena", "tier"]);
    let v = check_file(
        "arena/typed.rs",
        "fn f(p: *const u8) -> bool { crate::owns(p) }\n",
        &m,
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("layer `lib`"), "{v:?}");
}
