//! The Prometheus collector (feature `prometheus`, src/metrics.rs): the families a scrape
//! encodes, the live bytes of a known allocation, a labelled scope's `scope` series, and the
//! arenas, bump caches and pools a
//! program hands in. Run with `cargo test --release --features prometheus --test metrics`.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tieralloc::metrics::{register, Collector};
use tieralloc::Placed;

#[global_allocator]
static GLOBAL: tieralloc::TierAlloc = tieralloc::TierAlloc::new();

/// The tests read process-wide counters: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text
}

/// The value of the sample whose name and labels are `series`.
fn value(text: &str, series: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// The sum of the samples of family `name` (any labels).
fn sum(text: &str, name: &str) -> i64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            rest.rsplit_once(' ')?.1.parse::<i64>().ok()
        })
        .sum()
}

#[test]
fn a_scrape_has_every_family_and_the_live_bytes_of_a_placed_vector() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut registry = Registry::default();
    register(&mut registry);
    let before = scrape(&registry);
    const N: usize = 3 << 20;
    let mut v: allocator_api2::vec::Vec<u8, Placed> =
        allocator_api2::vec::Vec::with_capacity_in(N, Placed::hot());
    v.resize(N, 7);
    let after = scrape(&registry);
    for family in [
        "# TYPE tieralloc_live_bytes gauge",
        "# UNIT tieralloc_live_bytes bytes",
        "# TYPE tieralloc_committed_bytes gauge",
        "# TYPE tieralloc_reserved_bytes gauge",
        "# TYPE tieralloc_segments gauge",
        "# TYPE tieralloc_remote_frees counter",
        "# TYPE tieralloc_purged_bytes counter",
        "# TYPE tieralloc_class_allocs counter",
        "# TYPE tieralloc_class_live_blocks gauge",
        "# TYPE tieralloc_node_live_bytes gauge",
        "# TYPE tieralloc_node_cross_frees counter",
        "# TYPE tieralloc_tier_live_bytes gauge",
        "# TYPE tieralloc_tier_demoted_bytes counter",
        "tieralloc_segments{state=\"pooled\"} ",
        "tieralloc_node_live_bytes{node=\"0\",tier=\"0\"} ",
        "tieralloc_tier_committed_bytes{tier=\"0\"} ",
        "tieralloc_remote_frees_total ",
        "tieralloc_huge_allocs_total ",
        "tieralloc_class_allocs_total{class=\"16\"} ",
    ] {
        assert!(after.contains(family), "missing {family} in\n{after}");
    }
    assert!(after.ends_with("# EOF\n"), "{after}");
    // No arenas, bump caches or pools handed in: none of their families.
    assert!(!after.contains("tieralloc_pool_"), "{after}");
    assert!(!after.contains("tieralloc_arena_"), "{after}");

    // The vector's bytes are live on the nodes and on the tiers (the same sums), within
    // what the harness's own thread allocates meanwhile.
    let slack = 64 << 10;
    let moved = |name: &str, from: &str, to: &str| sum(to, name) - sum(from, name);
    for name in ["tieralloc_node_live_bytes", "tieralloc_tier_live_bytes"] {
        let d = moved(name, &before, &after);
        assert!(
            (N as i64 - slack..N as i64 + slack).contains(&d),
            "{name} moved by {d}, not by the vector's {N}"
        );
    }
    let d = value(&after, "tieralloc_live_bytes") - value(&before, "tieralloc_live_bytes");
    assert!((N as i64 - slack..N as i64 + slack).contains(&d), "{d}");
    drop(v);
    let freed = scrape(&registry);
    let d = moved("tieralloc_node_live_bytes", &before, &freed);
    assert!(d.abs() < slack, "after the free: {d}");
}

/// A labelled scope's blocks: the `scope` series carry exactly their usable sizes, in total
/// and on their node, and drop back to 0 once they are freed (on another thread).
#[test]
fn a_labelled_scopes_bytes_are_its_scope_series() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut registry = Registry::default();
    register(&mut registry);
    let node = Placed::node(0).unwrap();
    let blocks: Vec<Vec<u8>> = tieralloc::with_placement_labeled(node, "m-cache", || {
        (0..10).map(|i| vec![i as u8; 1000 * (i + 1)]).collect()
    });
    // SAFETY: live blocks of the global allocator.
    let usable = |p: *const u8| unsafe { tieralloc::usable_size(p) } as i64;
    let want = blocks.iter().map(|b| usable(b.as_ptr())).sum::<i64>()
        + usable(blocks.as_ptr() as *const u8);
    let text = scrape(&registry);
    assert!(
        text.contains("# TYPE tieralloc_scope_live_bytes gauge"),
        "{text}"
    );
    assert!(
        text.contains("# UNIT tieralloc_scope_node_live_bytes bytes"),
        "{text}"
    );
    assert_eq!(
        value(&text, "tieralloc_scope_live_bytes{scope=\"m-cache\"}"),
        want
    );
    assert_eq!(
        value(
            &text,
            "tieralloc_scope_node_live_bytes{scope=\"m-cache\",node=\"0\",tier=\"0\"}"
        ),
        want
    );
    std::thread::spawn(move || drop(blocks)).join().unwrap();
    let text = scrape(&registry);
    assert_eq!(
        value(&text, "tieralloc_scope_live_bytes{scope=\"m-cache\"}"),
        0
    );
}

#[test]
fn arenas_bump_caches_and_pools_handed_in_are_reported() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pool = Arc::new(tieralloc::Pool::new(|| vec![0u8; 100]));
    let arena = Arc::new(Mutex::new(tieralloc::Arena::<u64>::new()));
    let bumps = Arc::new(tieralloc::BumpCache::new());
    let (p, a, b) = (pool.clone(), arena.clone(), bumps.clone());
    let mut registry = Registry::default();
    registry.register_collector(Box::new(
        Collector::new()
            .pool("bufs", move || p.stats())
            .arena("results", move || a.lock().unwrap().stats())
            .bump_cache("scratch", move || b.stats()),
    ));
    {
        let _g1 = pool.get();
        let _g2 = pool.get();
    }
    drop(pool.get());
    {
        let a = arena.lock().unwrap();
        for i in 0..1000u64 {
            a.alloc(i);
        }
    }
    drop(bumps.checkout());
    drop(bumps.checkout());
    let text = scrape(&registry);
    assert_eq!(
        value(&text, "tieralloc_pool_created_total{pool=\"bufs\"}"),
        2
    );
    assert_eq!(
        value(&text, "tieralloc_pool_misses_total{pool=\"bufs\"}"),
        2
    );
    assert_eq!(value(&text, "tieralloc_pool_hits_total{pool=\"bufs\"}"), 1);
    assert_eq!(value(&text, "tieralloc_pool_out{pool=\"bufs\"}"), 0);
    assert_eq!(value(&text, "tieralloc_pool_idle{pool=\"bufs\"}"), 2);
    assert_eq!(
        value(&text, "tieralloc_arena_used_bytes{arena=\"results\"}"),
        8000
    );
    assert_eq!(
        value(&text, "tieralloc_arena_resets_total{arena=\"results\"}"),
        0
    );
    let checkouts = "tieralloc_bump_cache_checkouts_total{cache=\"scratch\",outcome=";
    assert_eq!(value(&text, &format!("{checkouts}\"miss\"}}")), 1);
    assert_eq!(value(&text, &format!("{checkouts}\"hit\"}}")), 1);
    assert_eq!(
        value(&text, "tieralloc_bump_cache_idle{cache=\"scratch\"}"),
        1
    );
}

#[test]
fn a_scrapes_tier_series_add_up_to_its_node_series() {
    // The tier series are sums over the tiers' nodes: in one scrape they must be the sums of
    // the node series beside them, while another thread allocates and frees (each scrape
    // took two snapshots, one for the nodes and one for the tiers, so they could differ).
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut registry = Registry::default();
    register(&mut registry);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v = std::hint::black_box(vec![1u8; 1 << 20]);
                drop(v);
                let w = std::hint::black_box(vec![2u8; 3000]);
                drop(w);
                n += 1;
            }
            n
        })
    };
    let (mut live_off, mut committed_off) = (0, 0);
    for _ in 0..300 {
        let text = scrape(&registry);
        if sum(&text, "tieralloc_tier_live_bytes") != sum(&text, "tieralloc_node_live_bytes") {
            live_off += 1;
        }
        if sum(&text, "tieralloc_tier_committed_bytes")
            != sum(&text, "tieralloc_node_committed_bytes")
        {
            committed_off += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    assert!(rounds > 0);
    assert_eq!(
        (live_off, committed_off),
        (0, 0),
        "scrapes (of 300) whose tier live and committed series were not their nodes' sums"
    );
}
