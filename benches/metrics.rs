//! `/metrics` rendering cost with the contract's sizing: 200 subjects x 4 windows x 3 models,
//! plus the pipeline metrics. Run with `cargo bench --bench metrics`; prints p50/p99 of one
//! render (the bound is 5 ms). Without `--bench` (as `cargo test --all-targets` runs
//! it) it does one render and exits.

use likerate::aggregate::{export, Snapshot, WINDOWS};
use likerate::event::Rating;
use likerate::rollup::{Cells, Counts};
use likerate::telemetry::Metrics;
use std::collections::BTreeMap;
use std::time::Instant;

fn main() {
    let metrics = Metrics::new(200);
    let mut windows = BTreeMap::new();
    for (i, (name, _)) in WINDOWS.iter().enumerate() {
        let mut cells = Cells::new();
        for s in 0..200 {
            for m in 0..3 {
                let n = (s * 7 + m * 3 + i) as i64 + 10;
                cells.insert(
                    (format!("subject-{s:03}"), format!("model-{m}")),
                    Counts {
                        likes: n * 9,
                        dislikes: n,
                        neutral: n / 3,
                    },
                );
            }
        }
        windows.insert(*name, cells);
    }
    let snap = Snapshot {
        at: chrono::Utc::now(),
        windows,
    };
    export(&metrics, &snap);
    for s in 0..200 {
        for r in Rating::ALL {
            metrics.vote(&format!("subject-{s:03}"), r, 5);
        }
    }
    for outcome in ["stored", "duplicate", "dead_lettered"] {
        metrics.event(outcome, 1000);
    }
    let text = metrics.render();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    if !std::env::args().any(|a| a == "--bench") {
        println!("metrics bench: {series} series rendered (run `cargo bench --bench metrics` to time it)");
        return;
    }
    let mut times = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        std::hint::black_box(metrics.render());
        times.push(t.elapsed());
    }
    let refresh = Instant::now();
    for _ in 0..100 {
        export(&metrics, &snap);
    }
    let refresh = refresh.elapsed() / 100;
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "/metrics render, {series} series, {} bytes: p50 {:?}, p99 {:?}; window refresh (export of a snapshot) {:?}",
        text.len(),
        p(0.5),
        p(0.99),
        refresh
    );
}
