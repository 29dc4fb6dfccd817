//! A temporary directory tree laid out like sysfs (`devices/system/node/...`), for topology
//! discovery from fake machines (`Topology::from_sysfs_root`), removed on drop, and the
//! tiers such a machine's model reports.
//!
//! Shared by the test crates that build such trees with
//! `#[path = "common/sysfs_tree.rs"] mod sysfs_tree;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use tieralloc::Topology;

/// A temporary directory tree, removed on drop.
pub struct Tree(PathBuf);

impl Tree {
    /// Writes each `(path, content)` under a fresh directory (a path ending in `/` is an
    /// empty directory).
    pub fn new<P: AsRef<str>, C: AsRef<str>>(files: &[(P, C)]) -> Tree {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "tieralloc-sysfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        for (path, content) in files {
            let (path, content) = (path.as_ref(), content.as_ref());
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if path.ends_with('/') {
                std::fs::create_dir_all(&p).unwrap();
            } else {
                std::fs::write(&p, content).unwrap();
            }
        }
        Tree(root)
    }

    /// The tree's root.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Each tier's nodes, sorted, fastest tier first.
pub fn tier_nodes(t: &Topology) -> Vec<Vec<u32>> {
    t.tiers
        .iter()
        .map(|t| {
            let mut n = t.nodes.clone();
            n.sort();
            n
        })
        .collect()
}
