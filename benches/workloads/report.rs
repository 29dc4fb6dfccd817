//! Turning the workers' JSON into results: medians and minima, number formatting, and the
//! markdown tables with the JSON summary the driver prints and writes.
//!
//! Owns: the [`Results`] shape (results[workload][alloc] = runs). May touch: nothing but its
//! arguments (pure functions).

use crate::metrics::{Target, COMMON, METRICS};
use serde_json::{json, Map, Value};

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

pub fn minimum(v: &[f64]) -> Option<f64> {
    v.iter().copied().min_by(f64::total_cmp)
}

pub fn metric_of(run: &Value, key: &str) -> Option<f64> {
    run.get("metrics")?.get(key)?.as_f64()
}

/// Three significant digits, plain notation.
pub fn fmt_val(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) if x.abs() >= 1.0 => format!("{x:.2}"),
        Some(0.0) => "0".into(),
        Some(x) => {
            let digits = (2 - x.abs().log10().floor() as i32).clamp(3, 9) as usize;
            format!("{x:.digits$}")
        }
    }
}

fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// results[workload][alloc] = list of worker outputs.
pub type Results = Map<String, Value>;

pub fn values(results: &Results, w: &str, a: &str, key: &str) -> Vec<f64> {
    results
        .get(w)
        .and_then(|x| x.get(a))
        .and_then(|x| x.as_array())
        .map(|runs| runs.iter().filter_map(|r| metric_of(r, key)).collect())
        .unwrap_or_default()
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The markdown tables and the JSON summary.
pub fn tables(
    results: &Results,
    workloads: &[&str],
    allocs: &[String],
    mode: &str,
    runs: usize,
) -> (String, Vec<Value>) {
    let others: Vec<&String> = allocs.iter().filter(|a| *a != "mimalloc").collect();
    let mut summary: Vec<Value> = Vec::new();
    let mut table = format!(
        "\n## Targets: {} ({mode} mode, {runs} runs each, medians)\n\n",
        allocs.join(" vs ")
    );
    let mut head = String::from("| workload | metric | target |");
    let mut rule = String::from("|---|---|---|");
    for a in allocs {
        head.push_str(&format!(" {a} |"));
        rule.push_str("---:|");
    }
    for a in &others {
        head.push_str(&format!(" {}/mi |", short(a)));
        rule.push_str("---:|");
    }
    head.push_str(" verdict |\n");
    rule.push_str("---|\n");
    table.push_str(&head);
    table.push_str(&rule);
    for m in METRICS.iter().filter(|m| workloads.contains(&m.workload)) {
        for minimum_row in [false, true] {
            if minimum_row && !m.show_min {
                continue;
            }
            let stat = |a: &str| {
                let v = values(results, m.workload, a, m.key);
                if minimum_row {
                    minimum(&v)
                } else {
                    median(&v)
                }
            };
            let t = stat("tieralloc");
            let mi = stat("mimalloc");
            let (target_text, verdict) = match m.target {
                Target::VsMimalloc(f) => {
                    let text = if f == 1.0 {
                        "≤ mimalloc".to_string()
                    } else {
                        format!("≤ {f} × mimalloc")
                    };
                    let v = match (t, mi) {
                        (Some(t), Some(mi)) => pass(t <= f * mi),
                        _ => "n/a",
                    };
                    (text, v)
                }
                Target::Absolute(key) => {
                    let goal = median(&values(results, m.workload, "tieralloc", key));
                    let v = match (t, goal) {
                        (Some(t), Some(g)) => pass(t <= g),
                        _ => "n/a",
                    };
                    (
                        format!("≤ 1.1 × steady live + 8 MiB = {}", fmt_val(goal)),
                        v,
                    )
                }
                Target::Info => ("(info)".to_string(), ""),
            };
            let label = if minimum_row {
                format!("{} (minimum)", m.label)
            } else {
                m.label.to_string()
            };
            let mut row = format!("| {} | {} | {} |", m.workload, label, target_text);
            for a in allocs {
                row.push_str(&format!(" {} |", fmt_val(stat(a))));
            }
            for a in &others {
                row.push_str(&format!(" {} |", fmt_ratio(stat(a), mi)));
            }
            row.push_str(&format!(" {verdict} |\n"));
            table.push_str(&row);
            if minimum_row {
                continue;
            }
            let mut per: Map<String, Value> = Map::new();
            for a in allocs {
                let vals = values(results, m.workload, a, m.key);
                per.insert(
                    a.clone(),
                    json!({
                        "median": median(&vals),
                        "min": minimum(&vals),
                        "over_mimalloc": match (median(&vals), mi) {
                            (Some(x), Some(b)) if b > 0.0 => Some(x / b),
                            _ => None,
                        },
                        "runs": vals,
                    }),
                );
            }
            summary.push(json!({
                "workload": m.workload,
                "metric": m.key,
                "label": m.label,
                "target": target_text,
                "verdict": verdict,
                "allocators": per,
            }));
        }
    }

    table.push_str(&format!(
        "\n## All workloads: medians, (ratio to mimalloc) ({mode} mode, {runs} runs)\n\n\
         Throughput: higher is better; latency and memory: lower is better. Latency: a sample \
         of the operations (see JSON `op`, `lat_every`); peak live: requested bytes plus the \
         workload's own arrays; RSS after idle: everything freed, then light traffic.\n\n"
    ));
    let mut head = String::from("| workload | metric |");
    let mut rule = String::from("|---|---|");
    for a in allocs {
        head.push_str(&format!(" {a} |"));
        rule.push_str("---:|");
    }
    table.push_str(&head);
    table.push('\n');
    table.push_str(&rule);
    table.push('\n');
    for &w in workloads {
        for &(key, label, scale) in COMMON {
            let med = |a: &str| median(&values(results, w, a, key)).map(|v| v * scale);
            let mi = med("mimalloc");
            let mut row = format!("| {w} | {label} |");
            for a in allocs {
                let v = med(a);
                if a == "mimalloc" || mi.is_none() {
                    row.push_str(&format!(" {} |", fmt_val(v)));
                } else {
                    row.push_str(&format!(" {} ({}) |", fmt_val(v), fmt_ratio(v, mi)));
                }
            }
            row.push('\n');
            table.push_str(&row);
            let mut per: Map<String, Value> = Map::new();
            for a in allocs {
                let vals = values(results, w, a, key);
                per.insert(
                    a.clone(),
                    json!({ "median": median(&vals), "min": minimum(&vals), "runs": vals }),
                );
            }
            summary.push(json!({
                "workload": w, "metric": key, "label": label, "target": "(info)",
                "verdict": "", "allocators": per,
            }));
        }
    }
    (table, summary)
}

fn short(a: &str) -> &str {
    match a {
        "tieralloc" => "tier",
        "jemalloc" => "je",
        "numalloc" => "numa",
        "tcmalloc" => "tc",
        "system" => "sys",
        other => other,
    }
}
