//! Live bytes as `tieralloc::stats()` reports them, for the tests that check where blocks
//! are booked: one node's, one label's.
//!
//! Shared by several test crates with `#[path = "common/live.rs"] mod live;`; each uses part
//! of it.
#![allow(dead_code)]

/// Live bytes on node `node` (0 if `stats()` lists no such node).
pub fn node_live(node: u32) -> i64 {
    tieralloc::stats()
        .nodes
        .iter()
        .find(|n| n.node == node)
        .map_or(0, |n| n.bytes_live)
}

/// Live bytes of the scope label `label` (0 if `stats()` lists no such label).
pub fn label_live(label: &str) -> i64 {
    tieralloc::stats()
        .labels
        .iter()
        .find(|l| l.label == label)
        .map_or(0, |l| l.bytes_live)
}
