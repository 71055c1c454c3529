//! What maintaining the exact aggregates costs: the sink's write path (one transaction per
//! batch of 5000) with and without the vote bookkeeping and rollup upserts, on the same events,
//! in one run, each into a fresh database. Run with `cargo bench --bench aggregates`
//! (`LIKERATE_BENCH_EVENTS`, default 200,000). The bound: at most 10% of the write
//! throughput. Without `--bench` (as `cargo test --all-targets` runs it) it prints one line.

use likerate::config::DatabaseConfig;
use likerate::db::{migrate, Target};
use likerate::decode::{decode, Origin};
use likerate::event::{Coordinates, FeedbackEvent};
use likerate::produce::{Generator, ProduceArgs};
use likerate::sink::{Aggregates, BenchWriter};
use std::time::{Duration, Instant};

const BATCH: usize = 5000;
/// Live traffic: votes arrive within a minute of being cast, so a batch touches few buckets.
/// (`LIKERATE_BENCH_SPREAD=24h` measures a backfill, where nearly every event has a bucket
/// of its own.)
const SPREAD: &str = "1m";

/// `with_vote_ids`: every synthetic event carries a `vote_id` (5% of them re-votes); without,
/// only the rollups are maintained (no vote bookkeeping).
fn events(n: u64, with_vote_ids: bool) -> Vec<(FeedbackEvent, Coordinates)> {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }
    // Realistic traffic: 8 subjects, 2 models, 1% duplicates, 5% re-votes.
    let spread = std::env::var("LIKERATE_BENCH_SPREAD").unwrap_or_else(|_| SPREAD.into());
    let cli = Cli::parse_from([
        "x",
        "--seed",
        "9",
        "--duplicates",
        "0.01",
        "--revotes",
        "0.05",
        "--spread",
        spread.as_str(),
    ]);
    let mut g = Generator::new(&cli.args).unwrap();
    (0..n as i64)
        .map(|offset| {
            let (_, payload) = g.next_record();
            let origin = Origin {
                topic: "bench",
                partition: (offset % 6) as i32,
                offset,
                received_at: chrono::Utc::now(),
            };
            let coords = Coordinates {
                partition: origin.partition,
                offset,
            };
            let mut event = decode(&payload, origin).expect("valid");
            if !with_vote_ids {
                event.vote_id = None;
            }
            (event, coords)
        })
        .collect()
}

async fn fresh_target(name: &str) -> Target {
    let base = std::env::var("LIKERATE_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let admin = Target::new(&DatabaseConfig {
        url: format!("{base}/postgres"),
        timeout: Duration::from_secs(60),
    })
    .unwrap();
    let client = admin.connect().await.unwrap();
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let target = admin.with_dbname(name);
    migrate(&mut target.connect().await.unwrap()).await.unwrap();
    target
}

async fn run(events: &[(FeedbackEvent, Coordinates)], aggregates: Aggregates) -> (f64, usize) {
    let name = format!("likerate_bench_aggregates_{aggregates:?}").to_lowercase();
    let target = fresh_target(&name).await;
    let mut writer = BenchWriter::connect(&target, "bench").await.unwrap();
    let started = Instant::now();
    let mut stored = 0;
    for batch in events.chunks(BATCH) {
        stored += writer.write(batch, aggregates).await.unwrap();
    }
    (
        events.len() as f64 / started.elapsed().as_secs_f64(),
        stored,
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("aggregates benchmark: run with `cargo bench --bench aggregates`");
        return;
    }
    let n: u64 = std::env::var("LIKERATE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let with_vote_ids = std::env::var("LIKERATE_BENCH_VOTE_IDS").as_deref() != Ok("0");
    let events = events(n, with_vote_ids);
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut stored = Vec::new();
    for round in 0..4 {
        // Alternate which goes first, so neither always inherits the other's checkpoint.
        let order = if round % 2 == 0 {
            [Aggregates::Maintain, Aggregates::Skip]
        } else {
            [Aggregates::Skip, Aggregates::Maintain]
        };
        for aggregates in order {
            let (rate, n) = run(&events, aggregates).await;
            stored.push(n);
            match aggregates {
                Aggregates::Maintain => with.push(rate),
                Aggregates::Skip => without.push(rate),
            }
        }
    }
    assert!(
        stored.windows(2).all(|w| w[0] == w[1]),
        "both store the same rows"
    );
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let (w, wo) = (best(&with), best(&without));
    println!(
        "{n} events (vote ids: {with_vote_ids}) in batches of {BATCH}: with aggregates {w:.0} events/s, without {wo:.0} events/s; \
         maintaining them costs {:.1}% of the write throughput (runs: with {with:.0?}, without {without:.0?})",
        (1.0 - w / wo) * 100.0
    );
}
