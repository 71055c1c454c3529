//! The sink's write path against the storage limit, without Kafka: on the same events, in one
//! run, each into a fresh database, in batches of 5000 (one transaction each):
//! - raw: a binary `COPY` straight into `feedback` (no idempotency, no aggregates);
//! - without aggregates: the sink's idempotent write alone;
//! - with aggregates: the sink's write with the vote bookkeeping and rollup upserts, as
//!   `likerate run` writes.
//!
//! Run with `cargo bench --bench aggregates` (`LIKERATE_BENCH_EVENTS`, default 200,000). The
//! issue's bound: maintaining the aggregates costs at most 10% of the write throughput. Without
//! `--bench` (as `cargo test --all-targets` runs it) it prints one line.

mod common;

use likerate::config::DatabaseConfig;
use likerate::db::{migrate, Target};
use likerate::decode::{decode, Origin};
use likerate::event::{Coordinates, FeedbackEvent};
use likerate::produce::{Generator, ProduceArgs};
use likerate::sink::{Aggregates, BenchWriter};
use std::time::{Duration, Instant};

/// Events per transaction (`LIKERATE_BENCH_BATCH`), the sink's default batch size.
fn batch_size() -> usize {
    std::env::var("LIKERATE_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}
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

/// How a run writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Raw,
    Sink(Aggregates),
}

const MODES: [Mode; 3] = [
    Mode::Raw,
    Mode::Sink(Aggregates::Skip),
    Mode::Sink(Aggregates::Maintain),
];

async fn run(events: &[(FeedbackEvent, Coordinates)], mode: Mode) -> (f64, usize) {
    let name = format!("likerate_bench_aggregates_{}", mode_index(mode));
    let target = fresh_target(&name).await;
    let mut stored = 0;
    let started;
    match mode {
        Mode::Raw => {
            // The raw COPY cannot take the same event twice: give it each event once.
            let mut seen = std::collections::HashSet::new();
            let distinct: Vec<_> = events
                .iter()
                .filter(|(e, _)| seen.insert(e.event_id))
                .collect();
            let mut slots = common::VoteSlots::default();
            let distinct: Vec<_> = distinct
                .into_iter()
                .map(|(e, c)| (e, c, slots.take(e)))
                .collect();
            let client = target.connect().await.unwrap();
            started = Instant::now();
            for batch in distinct.chunks(batch_size()) {
                let rows = batch.iter().map(|(e, c, slot)| {
                    common::Columns::of(e, "bench", c.partition, c.offset, *slot)
                });
                stored += common::copy_rows(&client, rows).await.unwrap() as usize;
            }
        }
        Mode::Sink(aggregates) => {
            let mut writer = BenchWriter::connect(&target, "bench").await.unwrap();
            started = Instant::now();
            for batch in events.chunks(batch_size()) {
                stored += writer.write(batch, aggregates).await.unwrap();
            }
        }
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
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut stored = Vec::new();
    for round in 0..4 {
        // Rotate which goes first, so none always inherits another's checkpoint.
        for k in 0..MODES.len() {
            let mode = MODES[(round + k) % MODES.len()];
            let (rate, n) = run(&events, mode).await;
            stored.push(n);
            rates[mode_index(mode)].push(rate);
        }
    }
    assert!(
        stored.windows(2).all(|w| w[0] == w[1]),
        "every mode stores the same rows: {stored:?}"
    );
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let [raw, without, with] = rates.each_ref().map(|v| best(v));
    println!(
        "{n} events (vote ids: {with_vote_ids}) in batches of {}, best of 4 runs each:\n\
         raw COPY {raw:.0} events/s; sink without aggregates {without:.0} events/s ({:.2} of raw); \
         sink with aggregates {with:.0} events/s ({:.2} of raw)\n\
         maintaining the aggregates costs {:.1}% of the sink's write throughput \
         (runs: raw {:.0?}, without {:.0?}, with {:.0?})",
        batch_size(),
        without / raw,
        with / raw,
        (1.0 - with / without) * 100.0,
        rates[0],
        rates[1],
        rates[2],
    );
}

fn mode_index(mode: Mode) -> usize {
    MODES.iter().position(|m| *m == mode).expect("listed")
}
