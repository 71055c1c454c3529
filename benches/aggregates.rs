//! The sink's write path against the storage limit, without Kafka: on the same events, in one
//! run, each into a database of its own, in batches of 5000 (one transaction each):
//! - raw: a binary `COPY` straight into `feedback` (no idempotency, no aggregates);
//! - without aggregates: the sink's idempotent write alone;
//! - with aggregates: the sink's write with the vote bookkeeping and rollup upserts, as
//!   `likerate run` writes.
//!
//! The three take turns batch by batch (batch i goes to all three, in an order rotated per
//! batch), and each mode's rate is its events over the time its own batches took, summed over
//! the rounds. A shared, noisy machine (a checkpoint, a neighbour's burst) then slows all three
//! alike instead of whichever ran at the time, and the three tables grow in step. The figure
//! also gives each round's cost and the median of the per-batch ratios, which a rare slow
//! batch does not move.
//!
//! Run with `cargo bench --bench aggregates` (`LIKERATE_BENCH_EVENTS`, default 200,000;
//! `LIKERATE_BENCH_ROUNDS`, default 5, each on fresh databases). The bound:
//! maintaining the aggregates costs at most 10% of the write throughput. Without `--bench` (as
//! `cargo test --all-targets` runs it) it prints one line.

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

/// What one mode did in one round: the time each batch took, and the rows it stored.
#[derive(Default)]
struct Spent {
    batches: Vec<Duration>,
    stored: usize,
}

impl Spent {
    fn total(&self) -> Duration {
        self.batches.iter().sum()
    }
}

/// One round: fresh databases, every batch written in every mode.
async fn round(events: &[(FeedbackEvent, Coordinates)], round: usize) -> [Spent; 3] {
    let mut writers = Vec::new();
    for mode in MODES {
        let target = fresh_target(&format!("likerate_bench_aggregates_{}", mode_index(mode))).await;
        writers.push(match mode {
            Mode::Raw => Writer::Raw(target.connect().await.unwrap()),
            Mode::Sink(aggregates) => Writer::Sink(
                BenchWriter::connect(&target, "bench").await.unwrap(),
                aggregates,
            ),
        });
    }
    // The raw COPY cannot take the same event twice: it gets each event once, with the slot
    // the sink would give it.
    let mut seen = std::collections::HashSet::new();
    let mut slots = common::VoteSlots::default();
    let mut spent: [Spent; 3] = Default::default();
    for (i, batch) in events.chunks(batch_size()).enumerate() {
        let distinct: Vec<_> = batch
            .iter()
            .filter(|(e, _)| seen.insert(e.event_id))
            .map(|(e, c)| (e, c, slots.take(e)))
            .collect();
        for k in 0..MODES.len() {
            let m = (i + round + k) % MODES.len();
            let started = Instant::now();
            spent[m].stored += match &mut writers[m] {
                Writer::Raw(client) => {
                    let rows = distinct.iter().map(|(e, c, slot)| {
                        common::Columns::of(e, "bench", c.partition, c.offset, *slot)
                    });
                    common::copy_rows(client, rows).await.unwrap() as usize
                }
                Writer::Sink(w, aggregates) => w.write(batch, *aggregates).await.unwrap(),
            };
            spent[m].batches.push(started.elapsed());
        }
    }
    spent
}

/// A mode's connection: the raw COPY's client, or the sink's writer with its mode.
enum Writer {
    Raw(tokio_postgres::Client),
    Sink(BenchWriter, Aggregates),
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("aggregates benchmark: run with `cargo bench --bench aggregates`");
        return;
    }
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = env("LIKERATE_BENCH_EVENTS", 200_000);
    let rounds = env("LIKERATE_BENCH_ROUNDS", 5).max(1) as usize;
    let with_vote_ids = std::env::var("LIKERATE_BENCH_VOTE_IDS").as_deref() != Ok("0");
    let events = events(n, with_vote_ids);
    let mut totals = [Duration::ZERO; 3];
    let mut per_round = Vec::new();
    let mut per_batch = Vec::new();
    for r in 0..rounds {
        let spent = round(&events, r).await;
        let stored = spent.each_ref().map(|s| s.stored);
        assert!(
            stored.iter().all(|s| *s == stored[0]),
            "every mode stores the same rows: {stored:?}"
        );
        for (total, s) in totals.iter_mut().zip(&spent) {
            *total += s.total();
        }
        let [_, without, with] = &spent;
        per_round.push(cost(without.total(), with.total()));
        per_batch.extend(
            without
                .batches
                .iter()
                .zip(&with.batches)
                .map(|(a, b)| b.as_secs_f64() / a.as_secs_f64()),
        );
    }
    per_batch.sort_by(f64::total_cmp);
    let batch_ratio = per_batch[per_batch.len() / 2];
    let rate = |t: Duration| (n as usize * rounds) as f64 / t.as_secs_f64();
    let [raw, without, with] = totals.map(rate);
    println!(
        "{n} events (vote ids: {with_vote_ids}) in batches of {}, modes interleaved batch by \
         batch, {rounds} rounds:\n\
         raw COPY {raw:.0} events/s; sink without aggregates {without:.0} events/s ({:.2} of raw); \
         sink with aggregates {with:.0} events/s ({:.2} of raw)\n\
         maintaining the aggregates costs {:.1}% of the sink's write throughput \
         (per round: {}; median batch: {:.1}%)",
        batch_size(),
        without / raw,
        with / raw,
        cost(totals[1], totals[2]) * 100.0,
        per_round
            .iter()
            .map(|c| format!("{:.1}%", c * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        (1.0 - 1.0 / batch_ratio) * 100.0,
    );
}

/// The share of throughput lost when the same events take `with` instead of `without`.
fn cost(without: Duration, with: Duration) -> f64 {
    1.0 - without.as_secs_f64() / with.as_secs_f64()
}

fn mode_index(mode: Mode) -> usize {
    MODES.iter().position(|m| *m == mode).expect("listed")
}
