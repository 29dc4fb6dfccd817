//! The SVG charts (plotters, SVG backend: no font or system libraries needed): latency
//! percentiles, the spike's RSS over time, and throughput and memory relative to mimalloc.
//!
//! Owns: the chart files it writes into the directory it is given. May touch: nothing else.

use crate::report::{median, metric_of, values, Results};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;
use std::path::Path;

type Res = Result<(), Box<dyn std::error::Error>>;
type Chart = fn(&Ctx, &Path) -> Res;

const PCTS: [(&str, &str); 4] = [
    ("lat_p50_ns", "p50"),
    ("lat_p99_ns", "p99"),
    ("lat_p999_ns", "p99.9"),
    ("lat_max_ns", "max"),
];

fn color(a: &str) -> RGBColor {
    match a {
        "tieralloc" => RGBColor(214, 39, 40),
        "mimalloc" => RGBColor(31, 119, 180),
        "jemalloc" => RGBColor(44, 160, 44),
        "numalloc" => RGBColor(255, 127, 14),
        "tcmalloc" => RGBColor(148, 103, 189),
        _ => RGBColor(100, 100, 100),
    }
}

fn fmt_ns(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.0} s", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.0} ms", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} µs", v / 1e3)
    } else {
        format!("{v:.0} ns")
    }
}

struct Ctx<'a> {
    results: &'a Results,
    allocs: Vec<String>,
    workloads: Vec<String>,
    caption: String,
}

pub fn draw_all(doc: &Value, dir: &Path) {
    let Some(results) = doc.get("raw").and_then(|r| r.as_object()) else {
        eprintln!("no raw results to plot");
        return;
    };
    let strs = |k: &str| -> Vec<String> {
        doc.get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let m = &doc["machine"];
    let ctx = Ctx {
        results,
        allocs: strs("allocators"),
        workloads: strs("workloads"),
        caption: format!(
            "{} cores, {}, {} mode, {} runs, medians, commit {}",
            m["cores"],
            m["cpu"].as_str().unwrap_or(""),
            doc["mode"].as_str().unwrap_or(""),
            doc["runs"],
            m["commit"].as_str().unwrap_or("?"),
        ),
    };
    let _ = std::fs::create_dir_all(dir);
    let jobs: [(&str, Chart); 4] = [
        ("latency.svg", latency),
        ("spike-rss.svg", spike),
        ("throughput-ratio.svg", throughput),
        ("memory-ratio.svg", memory),
    ];
    for (name, f) in jobs {
        let path = dir.join(name);
        match f(&ctx, &path) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("could not draw {}: {e}", path.display()),
        }
    }
}

/// The legend box of every chart: series labels at `pos` in `size`-point type on a light
/// background with a black border.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    pos: SeriesLabelPosition,
    size: u32,
) -> Res {
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", size))
        .draw()?;
    Ok(())
}

fn med(ctx: &Ctx, w: &str, a: &str, key: &str) -> Option<f64> {
    median(&values(ctx.results, w, a, key))
}

/// Latency percentiles per allocator, one panel per workload (log scale).
fn latency(ctx: &Ctx, path: &Path) -> Res {
    let n = ctx.workloads.len().max(1);
    let cols = 3.min(n);
    let rows = n.div_ceil(cols);
    let root = SVGBackend::new(path, (1500, 60 + 380 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "Per-operation latency (sampled), log scale. {}",
            ctx.caption
        ),
        ("sans-serif", 20),
    )?;
    let panels = root.split_evenly((rows, cols));
    for (w, panel) in ctx.workloads.iter().zip(panels.iter()) {
        let mut lo = f64::MAX;
        let mut hi = 1.0f64;
        for a in &ctx.allocs {
            for (k, _) in PCTS {
                if let Some(v) = med(ctx, w, a, k) {
                    lo = lo.min(v.max(1.0));
                    hi = hi.max(v);
                }
            }
        }
        if lo > hi {
            continue;
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(w, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..3.5f64, (lo / 2.0..hi * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && (0.0..4.0).contains(&i) {
                    PCTS[i as usize].1.to_string()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| fmt_ns(*v))
            .draw()?;
        for (ai, a) in ctx.allocs.iter().enumerate() {
            let c = color(a);
            let off = (ai as f64 - (ctx.allocs.len() as f64 - 1.0) / 2.0) * 0.06;
            let pts: Vec<(f64, f64)> = PCTS
                .iter()
                .enumerate()
                .filter_map(|(i, (k, _))| med(ctx, w, a, k).map(|v| (i as f64 + off, v)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(a.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft, 13)?;
    }
    root.present()?;
    Ok(())
}

/// RSS over time through the spike: for each allocator the run with the median RSS at 1 s.
fn spike(ctx: &Ctx, path: &Path) -> Res {
    let Some(per) = ctx.results.get("spike") else {
        return Err("no spike results".into());
    };
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut target = None;
    for a in &ctx.allocs {
        let Some(runs) = per.get(a).and_then(|v| v.as_array()) else {
            continue;
        };
        let mut by: Vec<(f64, &Value)> = runs
            .iter()
            .filter_map(|r| metric_of(r, "rss_1s_mib").map(|v| (v, r)))
            .collect();
        if by.is_empty() {
            continue;
        }
        by.sort_by(|x, y| x.0.total_cmp(&y.0));
        let run = by[by.len() / 2].1;
        target = target.or(metric_of(run, "target_mib"));
        let pts: Vec<(f64, f64)> = run["metrics"]["series_ms_mib"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(|p| Some((p[0].as_f64()? / 1e3, p[1].as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        lines.push((a.clone(), pts));
    }
    let xmin = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.0))
        .fold(0.0f64, f64::min);
    let ymax = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(10.0f64, f64::max);
    let ymin = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(f64::MAX, f64::min)
        .min(target.unwrap_or(f64::MAX));
    let root = SVGBackend::new(path, (1200, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "spike: RSS through a 256 MiB spike (freed at t = 0) over a 16 MiB steady set",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            xmin - 0.05..3.1f64,
            ((ymin * 0.8).min(10.0)..ymax * 4.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc(format!("seconds after the free   ({})", ctx.caption))
        .y_desc("RSS, MiB (log scale)")
        .y_labels(15)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    if let Some(t) = target {
        chart
            .draw_series(LineSeries::new(
                vec![(xmin - 0.05, t), (3.1, t)],
                BLACK.mix(0.6).stroke_width(1),
            ))?
            .label(format!("target {t:.1} MiB (1.1 × steady live + 8 MiB)"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6)));
    }
    for (a, pts) in &lines {
        let c = color(a);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(a.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
        // The RSS at the end, written at the line's end (the log axis has few labels).
        if let Some(&(x, y)) = pts.last() {
            let style = ("sans-serif", 12)
                .into_font()
                .color(&c)
                .pos(Pos::new(HPos::Right, VPos::Bottom));
            chart.draw_series(std::iter::once(Text::new(
                format!("{y:.1} MiB"),
                (x, y),
                style,
            )))?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight, 14)?;
    root.present()?;
    Ok(())
}

/// Grouped bars of value / mimalloc's value per workload, log scale around 1.
fn ratio_bars(ctx: &Ctx, path: &Path, title: &str, series: &[(&str, &str)], ylabel: &str) -> Res {
    let allocs: Vec<&String> = ctx.allocs.iter().filter(|a| *a != "mimalloc").collect();
    let n = ctx.workloads.len();
    let root = SVGBackend::new(path, (1300, 360 * series.len() as u32 + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&format!("{title}. {}", ctx.caption), ("sans-serif", 18))?;
    let panels = root.split_evenly((series.len(), 1));
    for ((key, name), panel) in series.iter().zip(panels.iter()) {
        let mut bars: Vec<(usize, usize, f64)> = Vec::new();
        for (wi, w) in ctx.workloads.iter().enumerate() {
            let Some(mi) = med(ctx, w, "mimalloc", key) else {
                continue;
            };
            for (ai, a) in allocs.iter().enumerate() {
                if let Some(v) = med(ctx, w, a, key) {
                    if mi > 0.0 && v > 0.0 {
                        bars.push((wi, ai, v / mi));
                    }
                }
            }
        }
        let lo = bars.iter().map(|b| b.2).fold(1.0f64, f64::min) / 1.6;
        let hi = bars.iter().map(|b| b.2).fold(1.0f64, f64::max) * 1.6;
        let wl = ctx.workloads.clone();
        let mut chart = ChartBuilder::on(panel)
            .caption(*name, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .x_label_formatter(&move |x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < wl.len() {
                    wl[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(ylabel)
            .y_labels(5)
            .y_label_formatter(&|v| format!("{v:.2}"))
            .draw()?;
        let k = allocs.len().max(1) as f64;
        let width = 0.8 / k;
        for (ai, a) in allocs.iter().enumerate() {
            let c = color(a);
            chart
                .draw_series(bars.iter().filter(|b| b.1 == ai).map(|&(wi, _, r)| {
                    let x0 = wi as f64 - 0.4 + ai as f64 * width;
                    Rectangle::new([(x0, 1.0), (x0 + width * 0.9, r)], c.filled())
                }))?
                .label(a.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            // The value at the end of each bar (the log axis has few labels).
            let font = ("sans-serif", 11).into_font();
            let above = TextStyle::from(font.clone()).pos(Pos::new(HPos::Left, VPos::Bottom));
            let below = TextStyle::from(font).pos(Pos::new(HPos::Left, VPos::Top));
            chart.draw_series(bars.iter().filter(|b| b.1 == ai).map(|&(wi, _, r)| {
                let x0 = wi as f64 - 0.4 + ai as f64 * width;
                let style = if r >= 1.0 {
                    above.clone()
                } else {
                    below.clone()
                };
                Text::new(format!("{r:.2}"), (x0, r), style)
            }))?;
        }
        chart.draw_series(LineSeries::new(
            vec![(-0.5, 1.0), (n as f64 - 0.5, 1.0)],
            BLACK.stroke_width(1),
        ))?;
        legend(&mut chart, SeriesLabelPosition::UpperRight, 13)?;
    }
    root.present()?;
    Ok(())
}

fn throughput(ctx: &Ctx, path: &Path) -> Res {
    ratio_bars(
        ctx,
        path,
        "Throughput relative to mimalloc (above 1 = faster than mimalloc)",
        &[("ops_per_s", "throughput / mimalloc's")],
        "ratio (log scale)",
    )
}

fn memory(ctx: &Ctx, path: &Path) -> Res {
    ratio_bars(
        ctx,
        path,
        "Memory relative to mimalloc (below 1 = less than mimalloc)",
        &[
            ("peak_rss_mib", "peak RSS / mimalloc's"),
            ("rss_idle_mib", "RSS after idle / mimalloc's"),
        ],
        "ratio (log scale)",
    )
}
