//! Benchmarks of the feedback API, run on demand: `cargo bench --bench api`.
//!
//! 1. Read latency (issue 4: p99 under 10 ms with 10 million stored events). A database,
//!    `likerate_bench_api` (or `LIKERATE_BENCH_DATABASE_URL`), is filled once with the rollups
//!    10 million events leave: every minute of 90 days for 20 subjects x 3 models holds 1 or 2
//!    votes, and the hour and day grains hold their sums, exactly the cells the sink maintains.
//!    `stats`, `daily` and `compare` never read `feedback`, so its rows are not generated. The
//!    fill is kept for later runs. Requests are sent one at a time over HTTP to the real router;
//!    p50 and p99 per query shape are printed.
//! 2. `POST /api/feedback` throughput (issue 4: 5,000 requests per second on one core). The
//!    server runs on a single-threaded runtime on its own thread (librdkafka's threads aside)
//!    and publishes with `acks=all` to an Apache Kafka node of the benchmark's own
//!    (`deploy/local/kafka.sh node`), or to `LIKERATE_BENCH_BROKERS`; 64 concurrent clients
//!    send one event per request.
//!
//! Under `cargo test --all-targets` this binary is started without `--bench` and returns at
//! once: the benchmarks take minutes and need PostgreSQL.

mod common;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use likerate::config::{DatabaseConfig, KafkaConfig};
use likerate::http::AppState;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

const DEFAULT_DB: &str = "postgres://postgres@127.0.0.1:5432/likerate_bench_api";
const DAYS: i64 = 90;
const SUBJECTS: usize = 20;
const MODELS: [&str; 3] = ["model-a", "model-b", "model-c"];
const SAMPLES: usize = 2000;
const POSTS: usize = 50_000;
const POST_CONCURRENCY: usize = 64;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("api benchmarks: run with `cargo bench --bench api`");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let url = std::env::var("LIKERATE_BENCH_DATABASE_URL").unwrap_or(DEFAULT_DB.into());
    let database = DatabaseConfig {
        url: url.clone(),
        timeout: Duration::from_secs(30),
    };
    let target = likerate::db::Target::new(&database).expect("database URL");
    target.ensure_database().await.expect("PostgreSQL");
    let end = fill(&url).await;

    let dir = std::env::temp_dir().join(format!("likerate-bench-api-{}", std::process::id()));
    let mut node = None;
    let brokers = match std::env::var("LIKERATE_BENCH_BROKERS") {
        Ok(brokers) => brokers,
        Err(_) => {
            std::fs::create_dir_all(&dir).expect("bench dir");
            let started = common::KafkaNode::start(&dir.join("kafka"), &dir.join("kafka.log"))
                .expect("Kafka node");
            let brokers = started.brokers.clone();
            node = Some(started);
            brokers
        }
    };
    let kafka = KafkaConfig {
        brokers,
        topic: format!("bench-api-{}", std::process::id()),
        group: "bench".into(),
        dlq_topic: format!("bench-api-{}-dlq", std::process::id()),
        topic_partitions: 6,
        options: BTreeMap::new(),
    };
    likerate::kafka::ensure_topics(&kafka)
        .await
        .expect("topics");
    let state = AppState {
        metrics: likerate::telemetry::Metrics::new(200),
        pool: target.pool(8).expect("pool"),
        joined: Arc::new(AtomicBool::new(true)),
        api: likerate::http::api::ApiState::new(&kafka, None).expect("producer"),
    };
    let addr = serve_on_one_thread(state);
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    println!("\nread latency, {SAMPLES} sequential requests per shape (10M events, 90 days):");
    let shapes = common::ReadShapes {
        subjects: (0..SUBJECTS).map(|s| format!("subject-{s}")).collect(),
        model_a: MODELS[0].into(),
        model_b: MODELS[1].into(),
        start: end - ChronoDuration::days(DAYS),
        end,
    };
    let samples = common::ReadSamples {
        samples: SAMPLES,
        warmup: 100,
        budget: Duration::MAX,
    };
    for (name, _, failed, p50, p99) in common::read_latency(&client, &base, &shapes, &samples).await
    {
        assert_eq!(failed, 0, "{name}: {failed} requests failed");
        println!("  {name:<52} p50 {p50:>7.2} ms   p99 {p99:>7.2} ms");
    }

    println!("\nPOST /api/feedback, {POSTS} requests of one event, {POST_CONCURRENCY} concurrent clients, server on one thread:");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..POST_CONCURRENCY {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            for i in (worker..POSTS).step_by(POST_CONCURRENCY) {
                let body = serde_json::json!({
                    "subject_id": format!("subject-{}", i % SUBJECTS),
                    "assistant_message": "Newton's third law states that for every action there is an equal and opposite reaction.",
                    "user_question": "Explain Newton's third law",
                    "rating": 1, "created_at": common::rfc3339(Utc::now()),
                    "model": "model-a", "conversation_id": format!("conv-{i}"),
                });
                let t = Instant::now();
                let r = client
                    .post(format!("{base}/api/feedback"))
                    .json(&body)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 202);
                r.bytes().await.expect("body");
                took.push(t.elapsed());
            }
            took
        }));
    }
    let mut took = Vec::new();
    for t in tasks {
        took.extend(t.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    took.sort();
    println!(
        "  {:.0} requests/s   latency p50 {:.2} ms   p99 {:.2} ms   ({POSTS} in {:.1} s)",
        POSTS as f64 / elapsed.as_secs_f64(),
        ms(took[took.len() / 2]),
        ms(took[took.len() * 99 / 100]),
        elapsed.as_secs_f64()
    );
    if let Some(mut node) = node {
        node.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Serves the app's router on a single-threaded runtime of its own thread.
fn serve_on_one_thread(state: AppState) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("address"))
                .expect("main thread waits");
            axum::serve(listener, likerate::http::router(state))
                .await
                .expect("server");
        });
    });
    rx.recv().expect("server address")
}

/// Fills the rollups once (kept for later runs); returns the end of the filled range.
async fn fill(url: &str) -> DateTime<Utc> {
    let (mut client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    // Buckets are UTC (date_trunc below follows the session's time zone).
    client
        .batch_execute("SET TIME ZONE 'UTC'")
        .await
        .expect("time zone");
    likerate::db::migrate(&mut client).await.expect("migrate");
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bench_fill (filled_until timestamptz, events bigint)",
        )
        .await
        .expect("marker table");
    if let Some(row) = client
        .query_opt("SELECT filled_until, events FROM bench_fill", &[])
        .await
        .expect("marker")
    {
        let (end, events): (DateTime<Utc>, i64) = (row.get(0), row.get(1));
        println!("reusing the filled database: {events} events up to {end}");
        return end;
    }
    let end = likerate::rollup::truncate(Utc::now(), 86_400);
    let start = end - ChronoDuration::days(DAYS);
    println!("filling the rollups of ~10M events over {DAYS} days (once; a few minutes)...");
    let t = Instant::now();
    // An interrupted fill leaves no marker: start over.
    client
        .batch_execute("TRUNCATE feedback_rollup")
        .await
        .expect("truncate");
    // Each (minute, subject, model) cell holds 1 vote, or 2 with probability 0.286: 90 days x
    // 1440 minutes x 60 cells x 1.286 = 10.0M votes; about 85% likes, 10% dislikes, 5% neutral.
    client
        .execute(
            "INSERT INTO feedback_rollup (grain, bucket, subject_id, model, likes, dislikes, neutral)
             SELECT 'm', minute, subject, model, n - d - u, d, u
             FROM (
               SELECT minute, subject, model, n,
                      least(n, (random() < 0.1)::int + (random() < 0.01)::int) AS d,
                      0 AS u
               FROM (
                 SELECT minute, 'subject-' || s AS subject, m AS model,
                        1 + (random() < 0.286)::int AS n
                 FROM generate_series($1::timestamptz, $2::timestamptz - interval '1 minute',
                                      interval '1 minute') AS minute,
                      generate_series(0, 19) AS s,
                      unnest($3::text[]) AS m) cells) c",
            &[&start, &end, &MODELS.to_vec()],
        )
        .await
        .expect("minute grain");
    // A share of neutral votes, taken from likes, so all three counters are exercised.
    client
        .batch_execute(
            "UPDATE feedback_rollup SET likes = likes - 1, neutral = 1
             WHERE grain = 'm' AND likes > 0 AND random() < 0.05;
             INSERT INTO feedback_rollup
             SELECT 'h', date_trunc('hour', bucket), subject_id, model,
                    sum(likes), sum(dislikes), sum(neutral)
             FROM feedback_rollup WHERE grain = 'm' GROUP BY 2, 3, 4;
             INSERT INTO feedback_rollup
             SELECT 'd', date_trunc('day', bucket), subject_id, model,
                    sum(likes), sum(dislikes), sum(neutral)
             FROM feedback_rollup WHERE grain = 'h' GROUP BY 2, 3, 4;",
        )
        .await
        .expect("hour and day grains");
    client
        .batch_execute("VACUUM ANALYZE feedback_rollup")
        .await
        .expect("vacuum");
    let events: i64 = client
        .query_one(
            "SELECT sum(likes + dislikes + neutral)::int8 FROM feedback_rollup WHERE grain = 'd'",
            &[],
        )
        .await
        .expect("sum")
        .get(0);
    client
        .execute("INSERT INTO bench_fill VALUES ($1, $2)", &[&end, &events])
        .await
        .expect("marker");
    println!(
        "filled {events} events in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    end
}
