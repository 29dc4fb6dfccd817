//! The `spike` workload: a large short-lived spike over a steady live set, then how fast the
//! resident set comes back down under light traffic.
//!
//! Owns: its steady and spike arrays and the RSS time series. May touch: the global allocator,
//! the measurement helpers.

use crate::measure::{common, current_rss, Lat};
use crate::objects::{free_obj, new_obj, pack, touch, unpack};
use crate::rng::Rng;
use crate::worker::Params;
use crate::MIB;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Spike: steady live set of 16 MiB, a 256 MiB spike of mixed sizes that is freed again, then
/// 3 s of light traffic (4 replacements per ms) while VmRSS is sampled every 50 ms. The RSS
/// time series (ms relative to the end of the free, negative before) also covers the spike.
pub fn run(_p: &Params) -> Value {
    const STEADY: usize = 16 << 20;
    const SPIKE: usize = 256 << 20;
    const IDLE_MS: u64 = 3000;
    let mut r = Rng::new(5);
    let n_steady = STEADY / 520 + 1;
    let mut steady: Vec<u64> = Vec::with_capacity(n_steady);
    let mut steady_bytes = 0usize;
    while steady_bytes < STEADY {
        let sz = r.range(16, 1024);
        let q = new_obj(sz);
        touch(q, sz);
        steady.push(pack(q, sz));
        steady_bytes += sz;
    }
    let mut series: Vec<(f64, f64)> = Vec::with_capacity(512);
    let mut lat = Lat::new(1);
    let steady_book = steady.capacity() * 8 + series.capacity() * 16;
    // Light traffic: replace a few random steady objects (live volume stays about the same).
    let light = |steady: &mut Vec<u64>, steady_bytes: &mut usize, r: &mut Rng| {
        for _ in 0..4 {
            let i = (r.next() as usize) % steady.len();
            let (q, sz) = unpack(steady[i]);
            free_obj(q, sz);
            let nsz = r.range(16, 1024);
            let q = new_obj(nsz);
            touch(q, nsz);
            steady[i] = pack(q, nsz);
            *steady_bytes = *steady_bytes + nsz - sz;
        }
    };
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(200) {
        light(&mut steady, &mut steady_bytes, &mut r);
        std::thread::sleep(Duration::from_millis(1));
    }
    let rss_steady = current_rss();
    let steady_live = steady_bytes + steady_book;
    // The spike: log-uniform 64 B – 64 KiB, and every 64th object 1 MiB.
    // About 10 300 objects; the array is small next to the spike.
    let mut spike: Vec<(usize, usize)> = Vec::with_capacity(1 << 14);
    let spike_book = spike.capacity() * 16;
    let mut spike_bytes = 0usize;
    let mut k = 0usize;
    let ts = Instant::now();
    let mut raw: Vec<(f64, f64)> = Vec::with_capacity(256);
    raw.push((0.0, rss_steady as f64 / MIB));
    let mut next_sample = 50u64;
    while spike_bytes < SPIKE {
        let sz = if k % 64 == 63 {
            1 << 20
        } else {
            let e = r.range(6, 15);
            (1usize << e) + r.range(0, (1 << e) - 1)
        };
        k += 1;
        let q = lat.op(|| new_obj(sz));
        spike.push((q as usize, sz));
        spike_bytes += sz;
        // Touch every page as a real program would.
        touch(q, sz);
        let ms = ts.elapsed().as_millis() as u64;
        if ms >= next_sample && raw.len() < raw.capacity() {
            raw.push((ms as f64, current_rss() as f64 / MIB));
            next_sample += 50;
        }
    }
    let rss_spike = current_rss();
    raw.push((ts.elapsed().as_secs_f64() * 1e3, rss_spike as f64 / MIB));
    let build = ts.elapsed();
    let tf = Instant::now();
    for (q, sz) in spike.drain(..) {
        lat.op(|| free_obj(q as *mut u8, sz));
    }
    let free_time = tf.elapsed();
    drop(spike);
    let end_ms = ts.elapsed().as_secs_f64() * 1e3;
    for (t, v) in raw.drain(..) {
        series.push((t - end_ms, v));
    }
    let rss_after_free = current_rss();
    let t0 = Instant::now();
    let mut next_sample = 0u64;
    loop {
        let ms = t0.elapsed().as_millis() as u64;
        if ms >= next_sample {
            series.push((ms as f64, current_rss() as f64 / MIB));
            next_sample += 50;
        }
        if ms > IDLE_MS {
            break;
        }
        light(&mut steady, &mut steady_bytes, &mut r);
        std::thread::sleep(Duration::from_millis(1));
    }
    let at = |t: f64| -> f64 {
        series
            .iter()
            .find(|s| s.0 >= t)
            .or(series.last())
            .map(|s| s.1)
            .unwrap_or(0.0)
    };
    let target_mib = (1.1 * steady_live as f64) / MIB + 8.0;
    let mut out = json!({
        "rss_1s_mib": at(1000.0),
        "rss_2s_mib": at(2000.0),
        "rss_3s_mib": at(3000.0),
        "rss_idle_mib": at(3000.0),
        "target_mib": target_mib,
        "steady_live_mib": steady_live as f64 / MIB,
        "rss_steady_mib": rss_steady as f64 / MIB,
        "rss_spike_mib": rss_spike as f64 / MIB,
        "rss_after_free_mib": rss_after_free as f64 / MIB,
        "spike_objects": k,
        "spike_build_ms": build.as_secs_f64() * 1e3,
        "spike_free_ms": free_time.as_secs_f64() * 1e3,
        "series_ms_mib": series,
    });
    common(
        &mut out,
        2.0 * k as f64,
        (build + free_time).as_secs_f64(),
        &lat,
        steady_live + spike_bytes + spike_book,
        "one spike alloc or free (every one timed; page touching not included)",
    );
    for w in steady {
        let (q, sz) = unpack(w);
        free_obj(q, sz);
    }
    out
}
