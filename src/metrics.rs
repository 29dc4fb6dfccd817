//! Prometheus metrics (feature `prometheus`): a `prometheus-client` [`Collector`] that reads
//! the allocator's statistics at scrape time.
//!
//! Owns: the metric names, help texts and labels of the allocator's statistics, and the
//! collector that encodes them. May touch: the public snapshots only ([`crate::stats`],
//! [`crate::tiers::stats`], [`crate::topology`], and the arenas', bump caches' and pools'
//! `stats()` through the closures a program hands in). Nothing here runs on the allocator's
//! paths: a scrape is ordinary code that allocates its snapshots (through whatever global
//! allocator the program has). In the top layer, beside the crate root.
//!
//! A service registers it in one line:
//!
//! ```
//! let mut registry = prometheus_client::registry::Registry::default();
//! tieralloc::metrics::register(&mut registry);
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains("# TYPE tieralloc_live_bytes gauge"));
//! ```
//!
//! or, to also report its own arenas, bump caches and pools (each read by a closure at
//! scrape time, labelled with the name given):
//!
//! ```
//! use std::sync::Arc;
//! let buffers = Arc::new(tieralloc::Pool::new(Vec::<u8>::new));
//! let b = Arc::clone(&buffers);
//! let collector = tieralloc::metrics::Collector::new().pool("buffers", move || b.stats());
//! let mut registry = prometheus_client::registry::Registry::default();
//! registry.register_collector(Box::new(collector));
//! ```
//!
//! The families (counters end in `_total`, sizes in `_bytes`):
//! - process-wide: `tieralloc_live_bytes`, `tieralloc_committed_bytes`,
//!   `tieralloc_reserved_bytes`, `tieralloc_segments{state="mapped|pooled|abandoned"}`,
//!   `tieralloc_large_live_bytes`, `tieralloc_huge_live_bytes`, and the counters
//!   `tieralloc_{large,huge}_{allocs,frees}_total`, `tieralloc_remote_frees_total`,
//!   `tieralloc_pages_{abandoned,adopted}_total`, `tieralloc_purges_total`,
//!   `tieralloc_purged_bytes_total`, `tieralloc_map_failures_total`;
//! - per size class (`class`: the block size in bytes): `tieralloc_class_allocs_total`,
//!   `tieralloc_class_frees_total`, `tieralloc_class_live_blocks`,
//!   `tieralloc_class_live_bytes`;
//! - per NUMA node (`node`, and `tier`: the node's tier, 0 the fastest):
//!   `tieralloc_node_live_bytes`, `tieralloc_node_committed_bytes`,
//!   `tieralloc_node_cross_frees_total`;
//! - per scope label (`scope`: the label of [`place_labeled`](crate::place_labeled) and its
//!   kin): `tieralloc_scope_live_bytes`, and per node (`scope`, `node`, `tier`)
//!   `tieralloc_scope_node_live_bytes`;
//! - per tier (`tier`): `tieralloc_tier_live_bytes`, `tieralloc_tier_committed_bytes`,
//!   `tieralloc_tier_budget_bytes` (tiers with a budget), and the counters
//!   `tieralloc_tier_spills_total`, `tieralloc_tier_spilled_bytes_total`,
//!   `tieralloc_tier_refused_total`, `tieralloc_tier_routed_bytes_total`,
//!   `tieralloc_tier_demoted_bytes_total`, `tieralloc_tier_promoted_bytes_total`;
//! - per arena handed in (`arena`): `tieralloc_arena_used_bytes`, `tieralloc_arena_held_bytes`,
//!   `tieralloc_arena_high_water_bytes`, `tieralloc_arena_chunks`,
//!   `tieralloc_arena_resets_total`;
//! - per bump cache handed in (`cache`): `tieralloc_bump_cache_checkouts_total{outcome="hit|
//!   miss"}`, `tieralloc_bump_cache_dropped_total`, `tieralloc_bump_cache_idle`,
//!   `tieralloc_bump_cache_idle_bytes`;
//! - per pool handed in (`pool`): `tieralloc_pool_{hits,misses,created,dropped}_total`,
//!   `tieralloc_pool_idle`, `tieralloc_pool_out`.

use crate::{ArenaStats, BumpCacheStats, PoolStats};
use prometheus_client::collector::Collector as PromCollector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// The `prometheus-client` crate this collector is built for (so that a program can name the
/// same version).
pub use prometheus_client;

type Source<S> = (String, Box<dyn Fn() -> S + Send + Sync>);

/// The allocator's statistics as Prometheus metrics, read at each scrape; optionally also
/// arenas, bump caches and pools of the program (see the [module docs](self)).
#[derive(Default)]
pub struct Collector {
    arenas: Vec<Source<ArenaStats>>,
    bump_caches: Vec<Source<BumpCacheStats>>,
    pools: Vec<Source<PoolStats>>,
}

impl core::fmt::Debug for Collector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        fn names<S>(v: &[Source<S>]) -> Vec<&str> {
            v.iter().map(|(n, _)| n.as_str()).collect()
        }
        f.debug_struct("Collector")
            .field("arenas", &names(&self.arenas))
            .field("bump_caches", &names(&self.bump_caches))
            .field("pools", &names(&self.pools))
            .finish()
    }
}

/// Registers a [`Collector`] of the allocator's statistics (no arenas or pools) with
/// `registry`.
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(Collector::new()));
}

impl Collector {
    /// A collector of the allocator's statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also reports an arena, labelled `arena="name"`, read by `stats` at each scrape.
    pub fn arena(
        mut self,
        name: impl Into<String>,
        stats: impl Fn() -> ArenaStats + Send + Sync + 'static,
    ) -> Self {
        self.arenas.push((name.into(), Box::new(stats)));
        self
    }

    /// Also reports a bump cache, labelled `cache="name"`, read by `stats` at each scrape.
    pub fn bump_cache(
        mut self,
        name: impl Into<String>,
        stats: impl Fn() -> BumpCacheStats + Send + Sync + 'static,
    ) -> Self {
        self.bump_caches.push((name.into(), Box::new(stats)));
        self
    }

    /// Also reports a pool, labelled `pool="name"`, read by `stats` at each scrape.
    pub fn pool(
        mut self,
        name: impl Into<String>,
        stats: impl Fn() -> PoolStats + Send + Sync + 'static,
    ) -> Self {
        self.pools.push((name.into(), Box::new(stats)));
        self
    }
}

type Res = Result<(), core::fmt::Error>;

/// One family: its samples (label set, value), skipped when there are none. `metric` makes
/// the constant metric of a value (a gauge or a counter).
fn family<L, V, M>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: &[(L, V)],
    metric: impl Fn(&V) -> M,
) -> Res
where
    L: EncodeLabelSet,
    M: EncodeMetric,
{
    let Some((_, first)) = samples.first() else {
        return Ok(());
    };
    let mut m = enc.encode_descriptor(name, help, unit, metric(first).metric_type())?;
    for (labels, v) in samples {
        metric(v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// One unlabelled value.
fn single<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    m: M,
) -> Res {
    m.encode(enc.encode_descriptor(name, help, unit, m.metric_type())?)
}

fn gauge<V: Copy>(v: &V) -> ConstGauge<V>
where
    ConstGauge<V>: EncodeMetric,
{
    ConstGauge::new(*v)
}

fn counter(v: &u64) -> ConstCounter<u64> {
    ConstCounter::new(*v)
}

const BYTES: Option<&Unit> = Some(&Unit::Bytes);

type L1 = [(&'static str, String); 1];
type L2 = [(&'static str, String); 2];
type L3 = [(&'static str, String); 3];

impl Collector {
    fn encode_process(enc: &mut DescriptorEncoder, s: &crate::Stats) -> Res {
        let g = |v: u64| ConstGauge::new(v);
        let c = |v: u64| ConstCounter::new(v);
        single(
            enc,
            "tieralloc_live",
            "Bytes in live blocks.",
            BYTES,
            g(s.bytes_live),
        )?;
        single(
            enc,
            "tieralloc_committed",
            "Bytes handed to pages and spans and not purged since.",
            BYTES,
            g(s.bytes_committed),
        )?;
        single(
            enc,
            "tieralloc_reserved",
            "Bytes of address space mapped.",
            BYTES,
            g(s.bytes_reserved),
        )?;
        let segs: [(L1, u64); 3] = [
            ([("state", "mapped".into())], s.segments),
            ([("state", "pooled".into())], s.segments_pooled),
            ([("state", "abandoned".into())], s.segments_abandoned),
        ];
        family(
            enc,
            "tieralloc_segments",
            "Normal segments: all mapped, and of those the empty pooled ones and the ones \
             left by exited threads.",
            None,
            &segs,
            gauge,
        )?;
        single(
            enc,
            "tieralloc_large_live",
            "Bytes of live large objects.",
            BYTES,
            g(s.large_bytes_live),
        )?;
        single(
            enc,
            "tieralloc_huge_live",
            "Bytes of live huge objects.",
            BYTES,
            g(s.huge_bytes_live),
        )?;
        for (name, help, v) in [
            (
                "tieralloc_large_allocs",
                "Large objects allocated.",
                s.large_allocs,
            ),
            (
                "tieralloc_large_frees",
                "Large objects freed.",
                s.large_frees,
            ),
            (
                "tieralloc_huge_allocs",
                "Huge objects allocated.",
                s.huge_allocs,
            ),
            ("tieralloc_huge_frees", "Huge objects freed.", s.huge_frees),
            (
                "tieralloc_remote_frees",
                "Frees of blocks that another thread owned.",
                s.remote_frees,
            ),
            (
                "tieralloc_pages_abandoned",
                "Pages left behind by exiting threads.",
                s.pages_abandoned,
            ),
            (
                "tieralloc_pages_adopted",
                "Pages taken over again by live threads.",
                s.pages_adopted,
            ),
            ("tieralloc_purges", "Purges of idle memory.", s.purges),
            (
                "tieralloc_map_failures",
                "mmap calls refused.",
                s.map_failures,
            ),
        ] {
            single(enc, name, help, None, c(v))?;
        }
        single(
            enc,
            "tieralloc_purged",
            "Bytes returned by purges.",
            BYTES,
            c(s.purged_bytes),
        )
    }

    fn encode_classes(enc: &mut DescriptorEncoder, s: &crate::Stats) -> Res {
        let per = |f: fn(&crate::ClassStats) -> u64| -> Vec<(L1, u64)> {
            s.classes
                .iter()
                .map(|c| ([("class", c.block_size.to_string())], f(c)))
                .collect()
        };
        family(
            enc,
            "tieralloc_class_allocs",
            "Blocks allocated per size class (label: block size in bytes).",
            None,
            &per(|c| c.allocs),
            counter,
        )?;
        family(
            enc,
            "tieralloc_class_frees",
            "Blocks freed per size class.",
            None,
            &per(|c| c.frees),
            counter,
        )?;
        family(
            enc,
            "tieralloc_class_live_blocks",
            "Live blocks per size class.",
            None,
            &per(|c| c.live),
            gauge,
        )?;
        family(
            enc,
            "tieralloc_class_live",
            "Bytes in live blocks per size class.",
            BYTES,
            &per(|c| c.live * c.block_size as u64),
            gauge,
        )
    }

    fn encode_scopes(enc: &mut DescriptorEncoder, s: &crate::Stats) -> Res {
        let live: Vec<(L1, i64)> = s
            .labels
            .iter()
            .map(|l| ([("scope", l.label.clone())], l.bytes_live))
            .collect();
        family(
            enc,
            "tieralloc_scope_live",
            "Bytes in live blocks allocated in placement scopes with this label.",
            BYTES,
            &live,
            gauge,
        )?;
        let topo = crate::topology();
        let per_node: Vec<(L3, i64)> = s
            .labels
            .iter()
            .flat_map(|l| {
                l.nodes.iter().map(|n| {
                    let tier = topo
                        .tier_of(n.node)
                        .map_or_else(|| "unknown".to_string(), |t| t.to_string());
                    let set = [
                        ("scope", l.label.clone()),
                        ("node", n.node.to_string()),
                        ("tier", tier),
                    ];
                    (set, n.bytes_live)
                })
            })
            .collect();
        family(
            enc,
            "tieralloc_scope_node_live",
            "Bytes in live blocks allocated in scopes with this label, on the node.",
            BYTES,
            &per_node,
            gauge,
        )
    }

    fn encode_nodes_and_tiers(enc: &mut DescriptorEncoder, s: &crate::Stats) -> Res {
        let topo = crate::topology();
        let labels = |node: u32| -> L2 {
            let tier = topo
                .tier_of(node)
                .map_or_else(|| "unknown".to_string(), |t| t.to_string());
            [("node", node.to_string()), ("tier", tier)]
        };
        let live: Vec<(L2, i64)> = s
            .nodes
            .iter()
            .map(|n| (labels(n.node), n.bytes_live))
            .collect();
        family(
            enc,
            "tieralloc_node_live",
            "Bytes in live blocks whose memory is on the node.",
            BYTES,
            &live,
            gauge,
        )?;
        let committed: Vec<(L2, u64)> = s
            .nodes
            .iter()
            .map(|n| (labels(n.node), n.bytes_committed))
            .collect();
        family(
            enc,
            "tieralloc_node_committed",
            "Bytes committed on the node.",
            BYTES,
            &committed,
            gauge,
        )?;
        let cross: Vec<(L2, u64)> = s
            .nodes
            .iter()
            .map(|n| (labels(n.node), n.cross_node_frees))
            .collect();
        family(
            enc,
            "tieralloc_node_cross_frees",
            "Frees of the node's blocks by threads running on another node.",
            None,
            &cross,
            counter,
        )?;

        // From the same snapshot as the node series, so that they add up.
        let tiers = crate::tier::stats_of(s);
        let tier = |t: &crate::tiers::TierStats| -> L1 { [("tier", t.index.to_string())] };
        let live: Vec<(L1, i64)> = tiers.iter().map(|t| (tier(t), t.live_bytes)).collect();
        family(
            enc,
            "tieralloc_tier_live",
            "Bytes in live blocks on the tier's nodes.",
            BYTES,
            &live,
            gauge,
        )?;
        let per = |f: fn(&crate::tiers::TierStats) -> u64| -> Vec<(L1, u64)> {
            tiers.iter().map(|t| (tier(t), f(t))).collect()
        };
        family(
            enc,
            "tieralloc_tier_committed",
            "Bytes committed on the tier's nodes.",
            BYTES,
            &per(|t| t.committed_bytes),
            gauge,
        )?;
        let budgets: Vec<(L1, u64)> = tiers
            .iter()
            .filter_map(|t| Some((tier(t), t.budget_bytes?)))
            .collect();
        family(
            enc,
            "tieralloc_tier_budget",
            "The tier's byte budget (tiers that have one).",
            BYTES,
            &budgets,
            gauge,
        )?;
        for (name, help, unit, f) in [
            (
                "tieralloc_tier_spills",
                "Allocations and segments that spilled out of the tier (budget spent).",
                None,
                (|t| t.spills) as fn(&crate::tiers::TierStats) -> u64,
            ),
            (
                "tieralloc_tier_spilled",
                "Bytes that spilled out of the tier.",
                BYTES,
                |t| t.spilled_bytes,
            ),
            (
                "tieralloc_tier_refused",
                "Explicit requests for the tier refused (budget spent).",
                None,
                |t| t.refused,
            ),
            (
                "tieralloc_tier_routed",
                "Bytes the tier policies sent to the tier away from the allocating thread's node.",
                BYTES,
                |t| t.routed_bytes,
            ),
            (
                "tieralloc_tier_demoted",
                "Bytes moved into the tier from a faster tier.",
                BYTES,
                |t| t.demoted_bytes,
            ),
            (
                "tieralloc_tier_promoted",
                "Bytes moved into the tier from a slower tier.",
                BYTES,
                |t| t.promoted_bytes,
            ),
        ] {
            family(enc, name, help, unit, &per(f), counter)?;
        }
        Ok(())
    }

    fn encode_arenas(&self, enc: &mut DescriptorEncoder) -> Res {
        let snaps: Vec<(L1, ArenaStats)> = self
            .arenas
            .iter()
            .map(|(n, f)| ([("arena", n.clone())], f()))
            .collect();
        let per = |f: fn(&ArenaStats) -> u64| -> Vec<(L1, u64)> {
            snaps.iter().map(|(l, s)| (l.clone(), f(s))).collect()
        };
        family(
            enc,
            "tieralloc_arena_used",
            "Bytes of live values in the arena.",
            BYTES,
            &per(|s| s.bytes_used as u64),
            gauge,
        )?;
        family(
            enc,
            "tieralloc_arena_held",
            "Bytes of chunk memory the arena holds.",
            BYTES,
            &per(|s| s.bytes_held as u64),
            gauge,
        )?;
        family(
            enc,
            "tieralloc_arena_high_water",
            "The most bytes of live values the arena has held.",
            BYTES,
            &per(|s| s.high_water as u64),
            gauge,
        )?;
        family(
            enc,
            "tieralloc_arena_chunks",
            "Chunks the arena holds.",
            None,
            &per(|s| s.chunks as u64),
            gauge,
        )?;
        family(
            enc,
            "tieralloc_arena_resets",
            "Times the arena was reset.",
            None,
            &per(|s| s.resets),
            counter,
        )
    }

    fn encode_bump_caches(&self, enc: &mut DescriptorEncoder) -> Res {
        let snaps: Vec<(String, BumpCacheStats)> = self
            .bump_caches
            .iter()
            .map(|(n, f)| (n.clone(), f()))
            .collect();
        let mut checkouts: Vec<(L2, u64)> = Vec::new();
        for (n, s) in &snaps {
            checkouts.push(([("cache", n.clone()), ("outcome", "hit".into())], s.hits));
            checkouts.push(([("cache", n.clone()), ("outcome", "miss".into())], s.misses));
        }
        family(
            enc,
            "tieralloc_bump_cache_checkouts",
            "Bump checkouts, served by a cached bump (hit) or a new one (miss).",
            None,
            &checkouts,
            counter,
        )?;
        let per = |f: fn(&BumpCacheStats) -> u64| -> Vec<(L1, u64)> {
            snaps
                .iter()
                .map(|(n, s)| ([("cache", n.clone())], f(s)))
                .collect()
        };
        family(
            enc,
            "tieralloc_bump_cache_dropped",
            "Bumps dropped on return (cache full, or bump too large).",
            None,
            &per(|s| s.dropped),
            counter,
        )?;
        family(
            enc,
            "tieralloc_bump_cache_idle",
            "Bumps idle in the per-thread caches.",
            None,
            &per(|s| s.idle),
            gauge,
        )?;
        family(
            enc,
            "tieralloc_bump_cache_idle",
            "Chunk bytes held by idle bumps.",
            BYTES,
            &per(|s| s.idle_bytes),
            gauge,
        )
    }

    fn encode_pools(&self, enc: &mut DescriptorEncoder) -> Res {
        let snaps: Vec<(L1, PoolStats)> = self
            .pools
            .iter()
            .map(|(n, f)| ([("pool", n.clone())], f()))
            .collect();
        let per = |f: fn(&PoolStats) -> u64| -> Vec<(L1, u64)> {
            snaps.iter().map(|(l, s)| (l.clone(), f(s))).collect()
        };
        for (name, help, f) in [
            (
                "tieralloc_pool_hits",
                "Gets served by an idle object.",
                (|s| s.hits) as fn(&PoolStats) -> u64,
            ),
            (
                "tieralloc_pool_misses",
                "Gets that made a new object.",
                |s| s.misses,
            ),
            ("tieralloc_pool_created", "Objects made.", |s| s.created),
            (
                "tieralloc_pool_dropped",
                "Returned objects dropped (idle bound reached, or taken out).",
                |s| s.dropped,
            ),
        ] {
            family(enc, name, help, None, &per(f), counter)?;
        }
        family(
            enc,
            "tieralloc_pool_idle",
            "Idle objects in the pool.",
            None,
            &per(|s| s.idle),
            gauge,
        )?;
        family(
            enc,
            "tieralloc_pool_out",
            "Objects of the pool out now.",
            None,
            &per(|s| s.out),
            gauge,
        )
    }
}

impl PromCollector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), core::fmt::Error> {
        let s = crate::stats();
        Self::encode_process(&mut enc, &s)?;
        Self::encode_classes(&mut enc, &s)?;
        Self::encode_nodes_and_tiers(&mut enc, &s)?;
        Self::encode_scopes(&mut enc, &s)?;
        self.encode_arenas(&mut enc)?;
        self.encode_bump_caches(&mut enc)?;
        self.encode_pools(&mut enc)
    }
}
