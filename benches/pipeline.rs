//! The pipeline benchmark of issue 6: `cargo bench --bench pipeline`, driven by
//! `deploy/local/bench.sh` (which builds the release binary and makes sure PostgreSQL runs).
//!
//! One run, one set of rows. N events (`LIKERATE_BENCH_EVENTS`, default 1,000,000) are made once
//! by `likerate::produce::Generator` (8 subjects, 2 models, answers of 200 to 800 characters,
//! 1% producer duplicates) and produced to a fresh 6-partition topic. Then:
//!
//! - a. storage limit: the distinct rows, with the Kafka coordinates the broker gave them, are
//!   written by one binary `COPY` into a fresh database with likerate's schema and indexes, and
//!   also by as many `COPY`s at once as likerate has sink connections
//!   (`LIKERATE_SINK_CONNECTIONS`, default 2; rows split by partition, as the sink splits its
//!   batches); the best of `LIKERATE_BENCH_COPY_ROUNDS` (default 2) rounds of both counts;
//! - b. broker limit: a plain `BaseConsumer` (new group, librdkafka defaults) drains the topic
//!   and discards the records; b2 does the same with likerate's own consumer settings
//!   (`likerate::kafka::consumer_config`: bounded prefetch);
//! - c. likerate end to end: the release binary `likerate run` on a fresh database and group,
//!   until `likerate_events_total` says every record was handled; rows and rollups are then
//!   counted; RSS and the CPU time of likerate, Kafka and PostgreSQL are sampled from /proc;
//! - d. naive design: one `INSERT` and one commit per event, on a subset;
//! - p. the peer users would deploy instead: Kafka Connect (standalone) with Debezium's JDBC
//!   sink connector, upserting the same events into a fresh table of `feedback`'s shape
//!   (`deploy/local/connect-peer.sh`; `LIKERATE_BENCH_PEER=0` skips it);
//! - e. ratios;
//! - f. latency at half of c's rate, against the still running likerate of c, after a
//!   warm-up at that rate (`LIKERATE_BENCH_LATENCY_WARMUP`, default 15 s, not counted: the
//!   broker's JIT compiles its produce path then, a quarter of a core in the first seconds on
//!   2 cores), measured for `LIKERATE_BENCH_LATENCY_SECS` (default 45): p50/p99 from
//!   `created_at` (set at send time) to `ingested_at` (the inserting transaction's `now()`,
//!   i.e. its start), to the row being visible to another connection (polled every 20 ms), and
//!   to a marker vote being counted in `/metrics` (a `bench-marker` subject gets one like
//!   every 500 ms; marker k is visible when `likerate_window_votes{subject="bench-marker",
//!   window="5m",rating="like"}` reaches k, polled every 50 ms);
//! - g. RSS with a backlog (`LIKERATE_BENCH_BACKLOG`, default 10,000,000; produced within
//!   `LIKERATE_BENCH_BACKLOG_BUDGET` seconds, default 600, and while the machine keeps 3 GiB
//!   available) waiting in a topic while a fresh likerate drains it for
//!   `LIKERATE_BENCH_BACKLOG_SECS` (default 30).
//!
//! The broker is an Apache Kafka node of its own (`deploy/local/kafka.sh node`, KRaft, heap
//! `LIKERATE_KAFKA_HEAP`, default 1g, data in the run's temporary folder) on a free port unless
//! `LIKERATE_BENCH_BROKERS` names one. PostgreSQL
//! is `LIKERATE_BENCH_PG` (default `postgres://postgres@127.0.0.1:5432`); the databases the
//! run creates are dropped at the end unless `LIKERATE_BENCH_KEEP=1`. The binary is
//! `LIKERATE_BIN`, or `target/release/likerate` (honouring `CARGO_TARGET_DIR`).
//!
//! `LIKERATE_BENCH_MODE=scale` runs the scale mode instead (issue 14: the same events into an
//! empty table and one that holds N rows; `benches/pipeline/scale.rs` opens with its method).
//!
//! Under `cargo test --all-targets` this binary is started without `--bench` and returns at
//! once.

use chrono::{DateTime, Utc};
mod common;
#[path = "pipeline/scale.rs"]
mod scale;

use common::{kafka_version, Columns, KafkaNode, VoteSlots, COLUMNS};
use likerate::config::KafkaConfig;
use likerate::decode::{decode, Origin};
use likerate::event::FeedbackEvent;
use likerate::produce::{Generator, ProduceArgs};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

const SUBJECTS: &str =
    "Math,Physics,Chemistry,Biology,History,Literature,Geography,Computer Science";
const MARKER_SUBJECT: &str = "bench-marker";
const MARKER_EVERY: Duration = Duration::from_millis(500);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("pipeline benchmark: run with `deploy/local/bench.sh` or `cargo bench --bench pipeline`");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut bench = Bench::new(&runtime);
    let result = bench.run();
    bench.cleanup();
    if let Err(e) = result {
        eprintln!("pipeline benchmark failed: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and helpers

/// The sink's connections (`LIKERATE_SINK_CONNECTIONS`, default 2): the raw COPYs write on as
/// many at once.
fn sink_connections() -> usize {
    env_u64("LIKERATE_SINK_CONNECTIONS", 2).max(1) as usize
}

/// Which distinct rows hold their vote's slot, as the sink decides (see [`VoteSlots`]).
fn vote_slots(p: &Produced) -> Vec<bool> {
    let mut slots = VoteSlots::default();
    p.first.iter().map(|&i| slots.take(&p.events[i])).collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.replace(['_', ','], ""))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Extra librdkafka properties for every consumer of the run (the plain ones and likerate's),
/// from `LIKERATE_BENCH_KAFKA_OPTIONS="fetch.wait.max.ms=10,..."`.
fn kafka_options() -> Vec<(String, String)> {
    std::env::var("LIKERATE_BENCH_KAFKA_OPTIONS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn say(text: impl AsRef<str>) {
    println!("==> {}", text.as_ref());
    let _ = std::io::stdout().flush();
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted from the state (field 3) here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Pids whose command name is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| comm(*pid).as_deref() == Some(name))
        .collect()
}

/// Processes whose command line holds `arg` (a JVM's main class, say).
fn pids_with_arg(arg: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

/// Total busy and all ticks of the machine (/proc/stat).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// (VmRSS, VmHWM) in kB.
fn rss_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn mem_available_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

/// CPU seconds of the processes that share the machine during a phase.
#[derive(Clone)]
struct CpuSnapshot {
    at: Instant,
    likerate: u64,
    broker: u64,
    postgres: u64,
    bench: u64,
    machine_busy: u64,
    machine_all: u64,
}

// ---------------------------------------------------------------------------------------------
// Producing

#[derive(Default)]
struct Delivered {
    acked: AtomicU64,
    failed: AtomicU64,
    /// Where each record landed, by the index it was sent with (empty: not kept).
    coords: Mutex<Vec<(i32, i64)>>,
}

struct DeliveryContext(Arc<Delivered>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        match result {
            Ok(m) => {
                self.0.acked.fetch_add(1, Ordering::Relaxed);
                let mut coords = self.0.coords.lock().expect("lock");
                if let Some(c) = coords.get_mut(index) {
                    *c = (m.partition(), m.offset());
                }
            }
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn producer(kafka: &KafkaConfig, delivered: Arc<Delivered>) -> ThreadedProducer<DeliveryContext> {
    let mut config = likerate::kafka::producer_config(kafka);
    config
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "524288");
    config
        .create_with_context(DeliveryContext(delivered))
        .expect("producer")
}

fn send(
    p: &ThreadedProducer<DeliveryContext>,
    topic: &str,
    index: usize,
    key: &[u8],
    value: &[u8],
) {
    let mut record = BaseRecord::with_opaque_to(topic, index)
        .key(key)
        .payload(value);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((e, r))
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
            {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
}

/// `LIKERATE_BENCH_EVENT_IDS=v7`: the generator sends time-ordered event ids (as likerate's API
/// assigns them) instead of random v4 ones, the default.
fn ordered_event_ids() -> bool {
    std::env::var("LIKERATE_BENCH_EVENT_IDS").is_ok_and(|v| v == "v7")
}

fn generator_args(seed: u64, subjects: &str, like_ratio: f64, duplicates: f64) -> ProduceArgs {
    ProduceArgs {
        count: 0,
        rate: 0.0,
        subjects: subjects.into(),
        like_ratio,
        // Math answers are liked less (the alert fires, as in the demo); not for the markers.
        subject_like_ratio: if subjects == SUBJECTS {
            vec!["Math=0.7".into()]
        } else {
            Vec::new()
        },
        models: "llama-3.2-3b,llama-3.2-3b-ft1".into(),
        spread: "0s".into(),
        duplicates,
        revotes: 0.0,
        invalid: 0.0,
        no_event_id: false,
        ordered_event_ids: ordered_event_ids(),
        seed: Some(seed),
        file: None,
        // The traffic of docs/benchmarks.md's figures: no regenerations, reasons or comments.
        regenerations: 0.0,
        reasons: 0.0,
        comments: 0.0,
        weak_topic: Some("none".into()),
    }
}

fn origin(topic: &str) -> Origin<'_> {
    Origin {
        topic,
        partition: 0,
        offset: 0,
        received_at: Utc::now(),
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: the broker and likerate

struct Likerate {
    child: Child,
    http: String,
}

/// A likerate the run did not stop (a failed or panicking run) does not outlive it.
impl Drop for Likerate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Likerate {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn likerate_bin() -> std::path::PathBuf {
    if let Ok(bin) = std::env::var("LIKERATE_BIN") {
        return bin.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release").join("likerate")
}

// ---------------------------------------------------------------------------------------------
// The benchmark

#[derive(Default)]
struct Results {
    n: u64,
    distinct: u64,
    avg_bytes: f64,
    generate_s: f64,
    produce_rate: f64,
    copy_rate: f64,
    copy_s: f64,
    consume_rate: f64,
    consume_wall_s: f64,
    consume_likerate_settings_rate: f64,
    likerate_rate: f64,
    likerate_wall_s: f64,
    likerate_rows_ok: String,
    likerate_peak_rss_mb: f64,
    likerate_max_rss_mb: f64,
    cpu_lines: Vec<String>,
    naive_rate: f64,
    naive_n: u64,
    peer_rate: f64,
    peer_notes: String,
    latency_target_rate: f64,
    latency_achieved_rate: f64,
    latency_secs: f64,
    latency_warmup: f64,
    latency_rows: usize,
    lat_ingested: (f64, f64, f64),
    lat_visible: (f64, f64, f64),
    lat_metrics: (f64, f64, f64),
    lat_markers: usize,
    latency_cpu_lines: Vec<String>,
    likerate_batches: String,
    latency_batches: String,
    lat_broker: (f64, f64, f64),
    lat_broker_n: usize,
    latency_rss_mb: f64,
    backlog: u64,
    backlog_requested: u64,
    backlog_produce_s: f64,
    backlog_stop_reason: String,
    backlog_max_rss_mb: f64,
    backlog_hwm_mb: f64,
    backlog_drained: u64,
    backlog_secs: f64,
}

/// The run's events, produced: the decoded events, the index of the first event of each
/// distinct `event_id`, and the (partition, offset) each record landed at.
struct Produced {
    events: Vec<FeedbackEvent>,
    first: Vec<usize>,
    coords: Vec<(i32, i64)>,
}

/// What one drain by `likerate run` measured ([`Bench::drain`]); `app` still runs.
struct Drained {
    app: Likerate,
    /// Events per second after the first commit.
    rate: f64,
    wall: f64,
    first_commit_s: f64,
    max_rss_mb: f64,
    hwm_mb: f64,
    cpu: Vec<String>,
    /// The sink's batch totals at the end ([`batch_totals`]).
    batches: (f64, f64, f64),
}

/// What a database holds, for checking what a drain added: rows after `after_id`, their
/// distinct event ids, and the votes counted in the minute rollups.
#[derive(Default, Clone, Copy)]
struct Stored {
    max_id: i64,
    rows: i64,
    distinct: i64,
    votes: i64,
}

impl Stored {
    /// Rows stored after `before.max_id`, and the votes of the minute rollups now.
    async fn since(url: &str, before: Stored) -> anyhow::Result<Stored> {
        let client = connect(url).await?;
        let row = client
            .query_one(
                "SELECT coalesce(max(id), $1), count(*), count(DISTINCT event_id)
                 FROM feedback WHERE id > $1",
                &[&before.max_id],
            )
            .await?;
        let votes: i64 = client
            .query_one(
                "SELECT coalesce(sum(likes + dislikes + neutral), 0)::int8
                 FROM feedback_rollup WHERE grain = 'm'",
                &[],
            )
            .await?
            .get(0);
        Ok(Stored {
            max_id: row.get(0),
            rows: row.get(1),
            distinct: row.get(2),
            votes,
        })
    }
}

struct Bench<'r> {
    rt: &'r tokio::runtime::Runtime,
    id: String,
    pg_base: String,
    brokers: String,
    broker: Option<KafkaNode>,
    broker_log: std::path::PathBuf,
    log_dir: std::path::PathBuf,
    databases: Vec<String>,
    children: Vec<Likerate>,
    results: Results,
    tck: f64,
}

/// A panicking run still stops its processes and drops its databases.
impl Drop for Bench<'_> {
    fn drop(&mut self) {
        self.cleanup();
    }
}

impl<'r> Bench<'r> {
    fn new(rt: &'r tokio::runtime::Runtime) -> Bench<'r> {
        let id = format!("{}_{}", std::process::id(), Utc::now().format("%H%M%S"));
        let log_dir = std::env::temp_dir().join(format!("likerate-bench-{id}"));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        Bench {
            rt,
            pg_base: std::env::var("LIKERATE_BENCH_PG")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
                .trim_end_matches('/')
                .to_owned(),
            broker_log: log_dir.join("kafka.log"),
            log_dir,
            id,
            brokers: String::new(),
            broker: None,
            databases: Vec::new(),
            children: Vec::new(),
            results: Results::default(),
            tck: clk_tck(),
        }
    }

    fn cleanup(&mut self) {
        for child in self.children.drain(..) {
            child.stop();
        }
        if std::env::var("LIKERATE_BENCH_KEEP").as_deref() != Ok("1") {
            let dbs = std::mem::take(&mut self.databases);
            let base = self.pg_base.clone();
            let _ = self.rt.block_on(async move {
                let admin = connect(&format!("{base}/postgres")).await?;
                for db in dbs {
                    admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                        .await?;
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        if let Some(mut node) = self.broker.take() {
            node.stop();
        }
    }

    fn kafka(&self, topic: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            topic: topic.into(),
            group: format!("bench-{}-unused", self.id),
            dlq_topic: format!("{topic}-dlq"),
            topic_partitions: 6,
            options: BTreeMap::new(),
        }
    }

    fn start_broker(&mut self) -> anyhow::Result<()> {
        if let Ok(brokers) = std::env::var("LIKERATE_BENCH_BROKERS") {
            say(format!("broker: {brokers} (LIKERATE_BENCH_BROKERS)"));
            self.brokers = brokers;
            return Ok(());
        }
        let node = KafkaNode::start(&self.log_dir.join("kafka"), &self.broker_log)?;
        self.brokers = node.brokers.clone();
        self.broker = Some(node);
        say(format!(
            "broker: own Apache Kafka node on {} ({})",
            self.brokers,
            kafka_version()
        ));
        Ok(())
    }

    /// The broker's processes: our own node, or every Kafka JVM on the machine when the
    /// broker is someone else's.
    fn broker_pids(&self) -> Vec<u32> {
        match &self.broker {
            Some(node) => vec![node.child.id()],
            None => pids_with_arg("kafka.Kafka"),
        }
    }

    fn cpu_snapshot(&self, likerate: Option<u32>) -> CpuSnapshot {
        let sum = |pids: &[u32]| pids.iter().filter_map(|p| cpu_ticks(*p)).sum::<u64>();
        let (busy, all) = machine_ticks();
        CpuSnapshot {
            at: Instant::now(),
            likerate: likerate.and_then(cpu_ticks).unwrap_or(0),
            broker: sum(&self.broker_pids()),
            postgres: sum(&pids_named("postgres")),
            bench: cpu_ticks(std::process::id()).unwrap_or(0),
            machine_busy: busy,
            machine_all: all,
        }
    }

    fn cpu_report(&self, a: &CpuSnapshot, b: &CpuSnapshot) -> Vec<String> {
        let wall = b.at.duration_since(a.at).as_secs_f64();
        let cores = |ticks: u64| ticks as f64 / self.tck / wall;
        let machine = (b.machine_busy - a.machine_busy) as f64
            / (b.machine_all - a.machine_all).max(1) as f64
            * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        let known = cores(b.likerate - a.likerate)
            + cores(b.broker - a.broker)
            + cores(b.postgres - a.postgres)
            + cores(b.bench - a.bench);
        vec![
            format!("likerate   {:.2} cores", cores(b.likerate - a.likerate)),
            format!("kafka      {:.2} cores", cores(b.broker - a.broker)),
            format!(
                "postgres   {:.2} cores (all postgres processes)",
                cores(b.postgres - a.postgres)
            ),
            format!(
                "bench      {:.2} cores (this process)",
                cores(b.bench - a.bench)
            ),
            format!(
                "other      {:.2} cores (rest of the machine)",
                (machine - known).max(0.0)
            ),
            format!(
                "machine    {machine:.2} of {} cores busy, over {wall:.1} s",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
        ]
    }

    fn db_url(&self, db: &str) -> String {
        format!("{}/{db}", self.pg_base)
    }

    /// Creates the database `name` anew, empty; returns a connection to `postgres` (admin).
    async fn empty_database(&self, name: &str) -> anyhow::Result<Client> {
        let admin = connect(&format!("{}/postgres", self.pg_base)).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(admin)
    }

    /// Creates the database `name` anew with likerate's schema; returns a connection to it.
    async fn fresh_database(&self, name: &str) -> anyhow::Result<Client> {
        self.empty_database(name).await?;
        let mut client = connect(&format!("{}/{name}", self.pg_base)).await?;
        likerate::db::migrate(&mut client).await?;
        Ok(client)
    }

    fn spawn_likerate(
        &mut self,
        topic: &str,
        group: &str,
        db: &str,
        tag: &str,
    ) -> anyhow::Result<Likerate> {
        let bin = likerate_bin();
        anyhow::ensure!(
            bin.exists(),
            "{} missing: run `cargo build --release` (deploy/local/bench.sh does) or set LIKERATE_BIN",
            bin.display()
        );
        let log_path = self.log_dir.join(format!("likerate-{tag}.log"));
        let mut child = Command::new(&bin)
            .arg("run")
            .args(
                kafka_options()
                    .into_iter()
                    .flat_map(|(k, v)| ["--kafka-option".to_owned(), format!("{k}={v}")]),
            )
            .env("LIKERATE_KAFKA_BROKERS", &self.brokers)
            .env("LIKERATE_KAFKA_TOPIC", topic)
            .env("LIKERATE_KAFKA_GROUP", group)
            .env("LIKERATE_DLQ_TOPIC", format!("{topic}-dlq"))
            .env("LIKERATE_DATABASE_URL", format!("{}/{db}", self.pg_base))
            .env("LIKERATE_HTTP_ADDR", "127.0.0.1:0")
            .env("LIKERATE_LOG_FORMAT", "json")
            .env("LIKERATE_EXPORT_TOKEN", scale::EXPORT_TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("LIKERATE_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("LIKERATE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log_path).expect("log file");
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if let Some(i) = line.find("\"http\":\"") {
                    let rest = &line[i + 8..];
                    if let (Some(end), Some(t)) = (rest.find('"'), tx.take()) {
                        let _ = t.send(rest[..end].to_owned());
                    }
                }
            }
        });
        let http = match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(http) => http,
            Err(_) => {
                let _ = child.kill();
                anyhow::bail!("likerate did not start: see {}", self.log_dir.display());
            }
        };
        Ok(Likerate { child, http })
    }

    /// Makes the N events once (the generator with `args`) and produces them to `topic`
    /// beforehand; sets the run's generation and produce figures.
    fn produce_events(
        &mut self,
        kafka: &KafkaConfig,
        n: u64,
        args: &ProduceArgs,
    ) -> anyhow::Result<Produced> {
        let topic = kafka.topic.clone();
        let t = Instant::now();
        let mut generator = Generator::new(args)?;
        let records: Vec<(String, Vec<u8>)> = (0..n).map(|_| generator.next_record()).collect();
        let events: Vec<FeedbackEvent> = records
            .iter()
            .map(|(_, v)| decode(v, origin(&topic)).expect("generated events decode"))
            .collect();
        let mut seen = HashSet::with_capacity(events.len());
        let first: Vec<usize> = (0..events.len())
            .filter(|i| seen.insert(events[*i].event_id))
            .collect();
        drop(seen);
        let r = &mut self.results;
        r.distinct = first.len() as u64;
        r.avg_bytes = records.iter().map(|(_, v)| v.len()).sum::<usize>() as f64 / n as f64;
        r.generate_s = t.elapsed().as_secs_f64();
        say(format!(
            "generated {} events ({} distinct, {:.0} bytes on average) in {:.1} s",
            thousands(n as f64),
            thousands(r.distinct as f64),
            r.avg_bytes,
            r.generate_s
        ));

        // Produced beforehand.
        let delivered = Arc::new(Delivered {
            coords: Mutex::new(vec![(-1, -1); records.len()]),
            ..Delivered::default()
        });
        let p = producer(kafka, delivered.clone());
        let t = Instant::now();
        for (i, (k, v)) in records.iter().enumerate() {
            send(&p, &topic, i, k.as_bytes(), v);
        }
        p.flush(Duration::from_secs(120))?;
        let produce_s = t.elapsed().as_secs_f64();
        drop(p);
        let acked = delivered.acked.load(Ordering::Relaxed);
        anyhow::ensure!(
            acked == n,
            "produced {acked} of {n} ({} failed)",
            delivered.failed.load(Ordering::Relaxed)
        );
        self.results.produce_rate = n as f64 / produce_s;
        say(format!(
            "produced to {topic} (6 partitions) at {} records/s",
            thousands(self.results.produce_rate)
        ));
        let coords = std::mem::take(&mut *delivered.coords.lock().expect("lock"));
        Ok(Produced {
            events,
            first,
            coords,
        })
    }

    fn run(&mut self) -> anyhow::Result<()> {
        if scale::chosen() {
            return self.run_scale();
        }
        let n = env_u64("LIKERATE_BENCH_EVENTS", 1_000_000).max(1000);
        let backlog_requested = env_u64("LIKERATE_BENCH_BACKLOG", 10_000_000);
        self.results.n = n;
        self.results.backlog_requested = backlog_requested;
        say(format!(
            "pipeline benchmark: N = {}, run id {}, logs in {}",
            thousands(n as f64),
            self.id,
            self.log_dir.display()
        ));
        self.start_broker()?;
        let topic = format!("bench-{}", self.id);
        let kafka = self.kafka(&topic);
        self.rt.block_on(likerate::kafka::ensure_topics(&kafka))?;
        let produced = self.produce_events(&kafka, n, &generator_args(42, SUBJECTS, 0.9, 0.01))?;
        self.phase_copy(&topic, &produced)?;
        self.phase_consume(&kafka, n, false)?;
        self.phase_consume(&kafka, n, true)?;
        let running = self.phase_likerate(&topic, n)?;
        self.phase_naive(&topic, &produced)?;
        drop(produced);
        // Before the latency phase adds records to the topic: the peer reads the same N.
        self.phase_peer(&topic)?;
        self.phase_latency(&topic, &running)?;
        if let Some((rss, _)) = rss_kb(running.pid()) {
            self.results.latency_rss_mb = rss as f64 / 1024.0;
        }
        if let Some((_, hwm)) = rss_kb(running.pid()) {
            self.results.likerate_peak_rss_mb =
                self.results.likerate_peak_rss_mb.max(hwm as f64 / 1024.0);
        }
        running.stop();
        if backlog_requested > 0 {
            self.phase_backlog(backlog_requested)?;
        }
        self.print_table();
        Ok(())
    }

    /// Writes the distinct rows into the existing database `db` by binary `COPY`, on
    /// `connections` connections at once (the rows split by partition, as the sink splits its
    /// batches); `slot` is each distinct row's `vote_slot`. Returns the seconds it took.
    fn copy_into(
        &self,
        db: &str,
        topic: &str,
        p: &Produced,
        slot: &[bool],
        connections: usize,
    ) -> anyhow::Result<f64> {
        let (events, first, coords) = (&p.events, &p.first, &p.coords);
        self.rt.block_on(async {
            let mut clients = Vec::new();
            for _ in 0..connections {
                clients.push(connect(&format!("{}/{db}", self.pg_base)).await?);
            }
            let t = Instant::now();
            let copies = clients.iter().enumerate().map(|(lane, client)| {
                let rows = first.iter().zip(slot).filter_map(move |(&i, &slot)| {
                    let (partition, offset) = coords[i];
                    (partition as usize % connections == lane)
                        .then(|| Columns::of(&events[i], topic, partition, offset, slot))
                });
                common::copy_rows(client, rows)
            });
            let rows: u64 = futures::future::try_join_all(copies).await?.iter().sum();
            let seconds = t.elapsed().as_secs_f64();
            anyhow::ensure!(rows == first.len() as u64, "COPY wrote {rows} rows");
            Ok::<_, anyhow::Error>(seconds)
        })
    }

    // a. Storage limit: raw binary COPY of the same rows.
    fn phase_copy(&mut self, topic: &str, p: &Produced) -> anyhow::Result<()> {
        // A single COPY's rate swung from 19k to 37k rows/s between runs (where the
        // checkpoints fall): the limit is the best of a few rounds, each on a fresh database.
        // likerate writes on several connections, so each round also copies on as many
        // connections at once, the rows split by partition as the sink splits its batches.
        let rounds = env_u64("LIKERATE_BENCH_COPY_ROUNDS", 2).max(1);
        let lanes = sink_connections();
        say(format!("a. storage limit: binary COPY of the distinct rows into a fresh database with the schema and indexes, on 1 and on {lanes} connections, best of {rounds} rounds"));
        let slot = vote_slots(p);
        let distinct = p.first.len() as f64;
        let mut best = f64::INFINITY;
        for round in 1..=rounds {
            let widths = if lanes > 1 { vec![1, lanes] } else { vec![1] };
            for connections in widths {
                let db = format!("likerate_bench_{}_copy{round}_{connections}", self.id);
                self.databases.push(db.clone());
                self.rt.block_on(self.fresh_database(&db))?;
                let seconds = self.copy_into(&db, topic, p, &slot, connections)?;
                say(format!(
                    "   round {round}, {connections} connection(s): {} rows in {seconds:.1} s: {} rows/s",
                    thousands(distinct),
                    thousands(distinct / seconds)
                ));
                best = best.min(seconds);
                self.drop_database(&db);
            }
        }
        self.results.copy_s = best;
        self.results.copy_rate = distinct / best;
        Ok(())
    }

    // p. The peer users would deploy instead: Kafka Connect (standalone) with Debezium's JDBC
    // sink, upserting the same events on event_id into a table of feedback's shape
    // (deploy/local/connect-peer.sh; its header says why it reads an envelope copy of the
    // topic). LIKERATE_BENCH_PEER=0 skips it.
    fn phase_peer(&mut self, topic: &str) -> anyhow::Result<()> {
        if env_u64("LIKERATE_BENCH_PEER", 1) == 0 {
            say("p. peer skipped (LIKERATE_BENCH_PEER=0)");
            return Ok(());
        }
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/connect-peer.sh");
        let envelope = format!("{topic}-envelope");
        let db = format!("likerate_bench_{}_peer", self.id);
        self.rt.block_on(self.empty_database(&db))?;
        self.databases.push(db.clone());
        say("p. peer: Kafka Connect + Debezium JDBC sink, upsert on event_id, into a fresh database");
        let run = |args: &[&str], env: &[(&str, String)]| -> anyhow::Result<String> {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_dir.join("peer.log"))?;
            let out = Command::new("bash")
                .arg(&script)
                .args(args)
                .env("PEER_BROKERS", &self.brokers)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stderr(log)
                .output()?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            anyhow::ensure!(
                out.status.success(),
                "{} {}: {} (see {})",
                script.display(),
                args.join(" "),
                out.status,
                self.log_dir.join("peer.log").display()
            );
            Ok(stdout)
        };
        let copied = run(&["envelope", topic, &envelope], &[])?;
        say(format!("   {}", copied.trim()));
        let out = run(
            &["run"],
            &[
                ("PEER_TOPIC", envelope.clone()),
                ("PEER_DATABASE_URL", format!("{}/{db}", self.pg_base)),
                ("PEER_EXPECTED", self.results.distinct.to_string()),
                ("PEER_GROUP", format!("bench-{}-peer", self.id)),
            ],
        )?;
        for l in out.lines() {
            say(format!("   {l}"));
        }
        // The last line: `peer: N events in S s = R events/s`.
        let last = out.lines().last().unwrap_or_default();
        self.results.peer_rate = last
            .rsplit('=')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no rate in the peer's last line: {last:?}"))?;
        self.results.peer_notes = out
            .lines()
            .find(|l| l.contains("took"))
            .unwrap_or_default()
            .trim_start_matches("peer: ")
            .to_owned();
        self.drop_database(&db);
        Ok(())
    }

    fn drop_database(&mut self, db: &str) {
        if std::env::var("LIKERATE_BENCH_KEEP").as_deref() == Ok("1") {
            return;
        }
        let base = self.pg_base.clone();
        let name = db.to_owned();
        let _ = self.rt.block_on(async move {
            let admin = connect(&format!("{base}/postgres")).await?;
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await?;
            Ok::<_, anyhow::Error>(())
        });
        self.databases.retain(|d| d != db);
    }

    // b. Broker limit: a plain consumer draining the topic.
    fn phase_consume(
        &mut self,
        kafka: &KafkaConfig,
        n: u64,
        likerate_settings: bool,
    ) -> anyhow::Result<()> {
        let group = format!("bench-{}-plain-{}", self.id, likerate_settings);
        let consumer: BaseConsumer = if likerate_settings {
            say("b2. a plain consumer with likerate's client settings (bounded prefetch), discarding");
            let mut k = kafka.clone();
            k.group = group;
            k.options.extend(kafka_options());
            let mut c = likerate::kafka::consumer_config(&k);
            c.set("enable.auto.commit", "false")
                .set("statistics.interval.ms", "0");
            c.create()?
        } else {
            say("b. broker limit: a plain BaseConsumer (librdkafka defaults, new group) draining the topic, discarding");
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", &self.brokers)
                .set("group.id", &group)
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false");
            for (k, v) in kafka_options() {
                c.set(k, v);
            }
            c.create()?
        };
        consumer.subscribe(&[&kafka.topic])?;
        let started = Instant::now();
        let mut count = 0u64;
        let mut first: Option<(Instant, u64)> = None;
        let mut bytes = 0usize;
        let deadline = started + Duration::from_secs(900);
        while count < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "consumer got {count} of {n} records in 900 s"
            );
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    count += 1;
                    bytes += m.payload().map_or(0, <[u8]>::len);
                    if first.is_none() {
                        first = Some((Instant::now(), count));
                    }
                }
                Some(Err(e)) => say(format!("   consumer error: {e}")),
                None => {}
            }
        }
        let done = Instant::now();
        let (t0, c0) = first.expect("records");
        let steady = (count - c0) as f64 / done.duration_since(t0).as_secs_f64();
        let wall = done.duration_since(started).as_secs_f64();
        say(format!(
            "   {} records ({} MB) in {wall:.1} s ({:.1} s to the first record): {} records/s after the first",
            thousands(count as f64),
            bytes / 1_000_000,
            t0.duration_since(started).as_secs_f64(),
            thousands(steady)
        ));
        if likerate_settings {
            self.results.consume_likerate_settings_rate = steady;
        } else {
            self.results.consume_rate = steady;
            self.results.consume_wall_s = wall;
        }
        drop(consumer);
        Ok(())
    }

    /// Runs `likerate run` on the database `db` (which it migrates if it must) with the fresh
    /// group `group`, until `likerate_events_total` says `n` records were handled; samples its
    /// RSS and the machine's CPU meanwhile. `LIKERATE_BENCH_PERF=1` records a system-wide perf
    /// profile of the drain (`perf-<tag>.data`; perf report --sort comm,dso).
    fn drain(&mut self, topic: &str, n: u64, db: &str, tag: &str) -> anyhow::Result<Drained> {
        let started = Instant::now();
        let group = format!("bench-{}-{tag}", self.id);
        let mut app = self.spawn_likerate(topic, &group, db, tag)?;
        let pid = app.pid();
        let cpu_start = self.cpu_snapshot(Some(pid));
        let perf = if std::env::var("LIKERATE_BENCH_PERF").as_deref() == Ok("1") {
            let out = self.log_dir.join(format!("perf-{tag}.data"));
            say(format!("   perf record -a -g -F 199 -o {}", out.display()));
            Command::new("perf")
                .args(["record", "-a", "-g", "-F", "199", "-o"])
                .arg(&out)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        } else {
            None
        };
        let http = reqwest::Client::new();
        let metrics_url = format!("http://{}/metrics", app.http);
        let mut first: Option<(Instant, u64)> = None;
        let mut max_rss = 0u64;
        let mut hwm = 0u64;
        let mut last_print = Instant::now();
        let deadline = started + Duration::from_secs(1200);
        let mut processed;
        let mut last_text;
        loop {
            if let Some((rss, h)) = rss_kb(pid) {
                max_rss = max_rss.max(rss);
                hwm = hwm.max(h);
            }
            let text = self
                .rt
                .block_on(fetch(&http, &metrics_url))
                .unwrap_or_default();
            let stored = metric(&text, "likerate_events_total", &[("outcome", "stored")])
                .unwrap_or(0.0) as u64;
            let duplicate = metric(&text, "likerate_events_total", &[("outcome", "duplicate")])
                .unwrap_or(0.0) as u64;
            processed = stored + duplicate;
            last_text = text;
            if processed > 0 && first.is_none() {
                first = Some((Instant::now(), processed));
            }
            if processed >= n {
                break;
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                last_print = Instant::now();
                say(format!(
                    "   {} of {} handled, RSS {} MB",
                    thousands(processed as f64),
                    thousands(n as f64),
                    max_rss / 1024
                ));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "likerate handled {processed} of {n} in 1200 s"
            );
            if let Ok(Some(status)) = app.child.try_wait() {
                anyhow::bail!(
                    "likerate exited with {status}: see {}",
                    self.log_dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let done = Instant::now();
        let cpu_end = self.cpu_snapshot(Some(pid));
        if let Some(mut perf) = perf {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(perf.id().to_string())
                .status();
            let _ = perf.wait();
        }
        if let Some((rss, h)) = rss_kb(pid) {
            max_rss = max_rss.max(rss);
            hwm = hwm.max(h);
        }
        let (t0, c0) = first.expect("progress");
        let wall = done.duration_since(started).as_secs_f64();
        Ok(Drained {
            rate: (processed - c0) as f64 / done.duration_since(t0).as_secs_f64(),
            wall,
            first_commit_s: t0.duration_since(started).as_secs_f64(),
            max_rss_mb: max_rss as f64 / 1024.0,
            hwm_mb: hwm as f64 / 1024.0,
            cpu: self.cpu_report(&cpu_start, &cpu_end),
            batches: batch_totals(&last_text),
            app,
        })
    }

    // c. likerate end to end.
    fn phase_likerate(&mut self, topic: &str, n: u64) -> anyhow::Result<Likerate> {
        let db = format!("likerate_bench_{}_run", self.id);
        self.databases.push(db.clone());
        say(format!(
            "c. likerate end to end: {} run, fresh database and group",
            likerate_bin().display()
        ));
        self.rt.block_on(async {
            // Empty: likerate migrates it. LIKERATE_BENCH_PG_LOG=1 logs every statement of this
            // database with its duration in the server log (statement-level profile).
            let admin = self.empty_database(&db).await?;
            if std::env::var("LIKERATE_BENCH_PG_LOG").as_deref() == Ok("1") {
                admin
                    .batch_execute(&format!(
                        "ALTER DATABASE \"{db}\" SET log_min_duration_statement = 0"
                    ))
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        let d = self.drain(topic, n, &db, "run")?;
        // Verify rows and rollups.
        let distinct = self.results.distinct;
        let s = self
            .rt
            .block_on(Stored::since(&self.db_url(&db), Stored::default()))?;
        let ok = s.rows as u64 == distinct && s.votes as u64 == distinct && s.distinct == s.rows;
        self.results.likerate_rows_ok = format!(
            "{} rows, {} votes in minute rollups, expected {}: {}",
            thousands(s.rows as f64),
            thousands(s.votes as f64),
            thousands(distinct as f64),
            if ok { "OK" } else { "MISMATCH" }
        );
        say(format!(
            "   {} events in {:.1} s ({:.1} s to the first commit): {} events/s after the first commit; {}",
            thousands(n as f64),
            d.wall,
            d.first_commit_s,
            thousands(d.rate),
            self.results.likerate_rows_ok
        ));
        anyhow::ensure!(
            ok,
            "likerate's rows do not match: {}",
            self.results.likerate_rows_ok
        );
        self.results.likerate_batches = batch_report((0.0, 0.0, 0.0), d.batches, d.wall);
        say(format!("   sink: {}", self.results.likerate_batches));
        self.results.likerate_rate = d.rate;
        self.results.likerate_wall_s = d.wall;
        self.results.likerate_max_rss_mb = d.max_rss_mb;
        self.results.likerate_peak_rss_mb = d.hwm_mb;
        self.results.cpu_lines = d.cpu;
        for l in &self.results.cpu_lines {
            say(format!("   cpu: {l}"));
        }
        Ok(d.app)
    }

    // d. Naive: one INSERT and one commit per event.
    fn phase_naive(&mut self, topic: &str, p: &Produced) -> anyhow::Result<()> {
        let (events, first, coords) = (&p.events, &p.first, &p.coords);
        let subset = ((first.len() / 20).clamp(1000, 20_000)).min(first.len());
        self.results.naive_n = subset as u64;
        let db = format!("likerate_bench_{}_naive", self.id);
        self.databases.push(db.clone());
        say(format!(
            "d. naive: one INSERT and one commit per event, {} events",
            thousands(subset as f64)
        ));
        let seconds = self.rt.block_on(async {
            let client = self.fresh_database(&db).await?;
            let insert = client
                .prepare(&format!(
                    "INSERT INTO feedback ({COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                         ON CONFLICT (event_id) DO NOTHING"
                ))
                .await?;
            let mut slots = VoteSlots::default();
            let t = Instant::now();
            for &i in &first[..subset] {
                let e = &events[i];
                let (partition, offset) = coords[i];
                let row = Columns::of(e, topic, partition, offset, slots.take(e));
                client.execute(&insert, &row.params()).await?;
            }
            Ok::<_, anyhow::Error>(t.elapsed().as_secs_f64())
        })?;
        self.results.naive_rate = subset as f64 / seconds;
        say(format!(
            "   {seconds:.1} s: {} events/s",
            thousands(self.results.naive_rate)
        ));
        self.drop_database(&db);
        Ok(())
    }

    // f. Latency at half of the measured rate, against the running likerate of c.
    fn phase_latency(&mut self, topic: &str, app: &Likerate) -> anyhow::Result<()> {
        let fraction = std::env::var("LIKERATE_BENCH_LATENCY_FRACTION")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.5);
        let rate = (self.results.likerate_rate * fraction).max(10.0);
        let secs = env_u64("LIKERATE_BENCH_LATENCY_SECS", 45) as f64;
        let warmup = env_u64("LIKERATE_BENCH_LATENCY_WARMUP", 15) as f64;
        self.results.latency_target_rate = rate;
        self.results.latency_secs = secs;
        self.results.latency_warmup = warmup;
        say(format!(
            "f. latency: {} events/s ({fraction} x c), {warmup:.0} s of warm-up then {secs:.0} s measured, created_at = send time, a {MARKER_SUBJECT} like every {} ms",
            thousands(rate),
            MARKER_EVERY.as_millis()
        ));
        let db = format!("likerate_bench_{}_run", self.id);
        let kafka = self.kafka(topic);
        let markers: Arc<Mutex<Vec<DateTime<Utc>>>> = Arc::default();
        let producing = Arc::new(AtomicBool::new(true));
        let sent = Arc::new(AtomicU64::new(0));
        // Set by the producer when the warm-up ends: only events created from then on count.
        let measured_from: Arc<OnceLock<DateTime<Utc>>> = Arc::default();
        // The broker's own floor: a plain consumer (new group, from the end) on the same topic,
        // measuring created_at -> received.
        let probe_stop = Arc::new(AtomicBool::new(false));
        let probe_thread = {
            let (stop, topic, brokers, measured_from) = (
                probe_stop.clone(),
                topic.to_owned(),
                self.brokers.clone(),
                measured_from.clone(),
            );
            let group = format!("bench-{}-probe", self.id);
            std::thread::spawn(move || {
                let mut c = ClientConfig::new();
                c.set("bootstrap.servers", &brokers)
                    .set("group.id", &group)
                    .set("auto.offset.reset", "latest")
                    .set("enable.auto.commit", "false");
                for (k, v) in kafka_options() {
                    c.set(k, v);
                }
                let consumer: BaseConsumer = c.create().expect("probe consumer");
                consumer.subscribe(&[&topic]).expect("subscribe");
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                        let now = Utc::now();
                        if let Some(Ok(e)) = m.payload().map(|v| decode(v, origin(&topic))) {
                            if measured_from.get().is_some_and(|&t| e.created_at >= t) {
                                lat.push(
                                    (now - e.created_at).num_microseconds().unwrap_or(0) as f64
                                        / 1000.0,
                                );
                            }
                        }
                    }
                }
                lat
            })
        };
        // Let the probe join its group before the load starts.
        std::thread::sleep(Duration::from_secs(3));
        // One client and URL for every /metrics read of the phase.
        let http = reqwest::Client::new();
        let metrics_url = format!("http://{}/metrics", app.http);
        // How many marker likes /metrics has counted.
        let markers_counted = |text: &str| {
            metric(
                text,
                "likerate_window_votes",
                &[
                    ("subject", MARKER_SUBJECT),
                    ("window", "5m"),
                    ("rating", "like"),
                ],
            )
        };
        let producer_thread = {
            let (markers, producing, sent, topic, measured_from) = (
                markers.clone(),
                producing.clone(),
                sent.clone(),
                topic.to_owned(),
                measured_from.clone(),
            );
            std::thread::spawn(move || {
                let delivered = Arc::new(Delivered::default());
                let p = producer(&kafka, delivered.clone());
                let mut load =
                    Generator::new(&generator_args(7, SUBJECTS, 0.9, 0.0)).expect("generator");
                let mut marker = Generator::new(&generator_args(8, MARKER_SUBJECT, 1.0, 0.0))
                    .expect("generator");
                let t0 = Instant::now();
                let mut next_marker = t0;
                let mut i = 0u64;
                // Events sent since the warm-up ended, and when it did.
                let mut measured = 0u64;
                let mut measuring: Option<Instant> = None;
                while t0.elapsed().as_secs_f64() < warmup + secs {
                    let now = Instant::now();
                    if measuring.is_none() && (now - t0).as_secs_f64() >= warmup {
                        measuring = Some(now);
                        let _ = measured_from.set(Utc::now());
                    }
                    if now >= next_marker {
                        next_marker += MARKER_EVERY;
                        let (k, v) = marker.next_record();
                        let e = decode(&v, origin(&topic)).expect("marker decodes");
                        markers.lock().expect("lock").push(e.created_at);
                        send(&p, &topic, 0, k.as_bytes(), &v);
                        continue;
                    }
                    // Paced by the millisecond: a sleep per event (every 60 µs at 17k/s) cost
                    // this thread more CPU than making the events.
                    let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(now) {
                        if wait > Duration::from_millis(1) {
                            std::thread::sleep(
                                wait.min(next_marker.saturating_duration_since(now)),
                            );
                            continue;
                        }
                    }
                    let (k, v) = load.next_record();
                    send(&p, &topic, 0, k.as_bytes(), &v);
                    i += 1;
                    if measuring.is_some() {
                        measured += 1;
                        sent.store(measured, Ordering::Relaxed);
                    }
                }
                // Never left unset (LIKERATE_BENCH_LATENCY_SECS=0): the poller waits for it.
                let _ = measured_from.set(Utc::now());
                let achieved =
                    measured as f64 / measuring.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
                p.flush(Duration::from_secs(60)).expect("flush");
                producing.store(false, Ordering::Relaxed);
                achieved
            })
        };
        // Pollers: rows (every 20 ms) and /metrics (every 50 ms).
        let pg = format!("{}/{db}", self.pg_base);
        let (ingested, visible, metric_lat, rows, (f_started, f_cpu_start, batches_before)) = self.rt.block_on(async {
            let client = connect(&pg).await?;
            // A generic plan of `id > $1` is a sequential scan of the whole table: plan each poll.
            client
                .batch_execute("SET plan_cache_mode = force_custom_plan; SET jit = off")
                .await?;
            // Markers are counted from before the warm-up, so that the k-th count is the k-th
            // marker sent; those sent in the warm-up are left out of the figures below.
            let base_markers =
                markers_counted(&fetch(&http, &metrics_url).await.unwrap_or_default())
                    .unwrap_or(0.0) as usize;
            let from = loop {
                if let Some(&t) = measured_from.get() {
                    break t;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let batches_before =
                batch_totals(&fetch(&http, &metrics_url).await.unwrap_or_default());
            let f_started = Instant::now();
            let f_cpu_start = self.cpu_snapshot(Some(app.pid()));
            let mut last_id: i64 = client
                .query_one("SELECT coalesce(max(id), 0) FROM feedback", &[])
                .await?
                .get(0);
            let poll = client
                .prepare(
                    "SELECT id, created_at, ingested_at FROM feedback WHERE id > $1 ORDER BY id LIMIT 20000",
                )
                .await?;
            let mut ingested = Vec::new();
            let mut visible = Vec::new();
            let mut metric_lat = Vec::new();
            let mut seen_markers = 0usize;
            let mut next_metrics = Instant::now();
            let mut quiet_since: Option<Instant> = None;
            loop {
                let rows = client.query(&poll, &[&last_id]).await?;
                let now = Utc::now();
                for row in &rows {
                    let id: i64 = row.get(0);
                    let created: DateTime<Utc> = row.get(1);
                    let ing: DateTime<Utc> = row.get(2);
                    last_id = last_id.max(id);
                    if created >= from {
                        ingested
                            .push((ing - created).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                        visible
                            .push((now - created).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                    }
                }
                if Instant::now() >= next_metrics {
                    next_metrics += Duration::from_millis(50);
                    let text = fetch(&http, &metrics_url).await.unwrap_or_default();
                    let now = Utc::now();
                    if let Some(v) = markers_counted(&text) {
                        let v = (v as usize).saturating_sub(base_markers);
                        let sent_markers = markers.lock().expect("lock").clone();
                        while seen_markers < v.min(sent_markers.len()) {
                            let sent_at = sent_markers[seen_markers];
                            if sent_at >= from {
                                metric_lat.push(
                                    (now - sent_at).num_microseconds().unwrap_or(0) as f64
                                        / 1000.0,
                                );
                            }
                            seen_markers += 1;
                        }
                    }
                }
                let (all_markers, measured_markers) = {
                    let m = markers.lock().expect("lock");
                    (m.len(), m.iter().filter(|&&t| t >= from).count())
                };
                if !producing.load(Ordering::Relaxed) {
                    let done = seen_markers >= all_markers
                        && visible.len() as u64
                            >= sent.load(Ordering::Relaxed) + measured_markers as u64;
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if done || since.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let rows = visible.len();
            Ok::<_, anyhow::Error>((
                ingested,
                visible,
                metric_lat,
                rows,
                (f_started, f_cpu_start, batches_before),
            ))
        })?;
        let achieved = producer_thread
            .join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))?;
        probe_stop.store(true, Ordering::Relaxed);
        let f_cpu_end = self.cpu_snapshot(Some(app.pid()));
        self.results.latency_cpu_lines = self.cpu_report(&f_cpu_start, &f_cpu_end);
        let batches_after = batch_totals(
            &self
                .rt
                .block_on(fetch(&http, &metrics_url))
                .unwrap_or_default(),
        );
        self.results.latency_batches = batch_report(
            batches_before,
            batches_after,
            f_started.elapsed().as_secs_f64(),
        );
        say(format!("   sink: {}", self.results.latency_batches));
        let broker_lat = probe_thread
            .join()
            .map_err(|_| anyhow::anyhow!("probe thread panicked"))?;
        let stats = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (
                percentile(&v, 0.5),
                percentile(&v, 0.99),
                v.last().copied().unwrap_or(f64::NAN),
            )
        };
        let r = &mut self.results;
        r.latency_achieved_rate = achieved;
        r.latency_rows = rows;
        r.lat_markers = metric_lat.len();
        r.lat_ingested = stats(ingested);
        r.lat_visible = stats(visible);
        r.lat_metrics = stats(metric_lat);
        r.lat_broker_n = broker_lat.len();
        r.lat_broker = stats(broker_lat);
        say(format!(
            "   broker floor: a plain consumer got {} records, created_at -> received p50 {:.0} ms p99 {:.0} ms",
            thousands(r.lat_broker_n as f64), r.lat_broker.0, r.lat_broker.1
        ));
        say(format!(
            "   sent {} events/s; {} rows seen; created_at -> ingested_at p50 {:.0} ms p99 {:.0} ms; -> visible p50 {:.0} ms p99 {:.0} ms; -> /metrics ({} markers) p50 {:.0} ms p99 {:.0} ms",
            thousands(achieved), thousands(rows as f64), r.lat_ingested.0, r.lat_ingested.1, r.lat_visible.0, r.lat_visible.1, r.lat_markers, r.lat_metrics.0, r.lat_metrics.1
        ));
        Ok(())
    }

    // g. RSS with a backlog waiting in the topic.
    fn phase_backlog(&mut self, requested: u64) -> anyhow::Result<()> {
        let budget = Duration::from_secs(env_u64("LIKERATE_BENCH_BACKLOG_BUDGET", 600));
        let watch = Duration::from_secs(env_u64("LIKERATE_BENCH_BACKLOG_SECS", 30));
        let topic = format!("bench-{}-backlog", self.id);
        let kafka = self.kafka(&topic);
        self.rt.block_on(likerate::kafka::ensure_topics(&kafka))?;
        say(format!(
            "g. backlog: producing up to {} events to {topic} (budget {} s, stop below 3 GiB available memory)",
            thousands(requested as f64),
            budget.as_secs()
        ));
        let delivered = Arc::new(Delivered::default());
        let p = producer(&kafka, delivered.clone());
        let mut generator = Generator::new(&generator_args(99, SUBJECTS, 0.9, 0.01))?;
        let t = Instant::now();
        let mut sent = 0u64;
        let mut reason = "all produced".to_owned();
        let mut last_print = Instant::now();
        while sent < requested {
            if sent.is_multiple_of(10_000) {
                if t.elapsed() > budget {
                    reason = format!("time budget of {} s reached", budget.as_secs());
                    break;
                }
                if mem_available_kb() < 3 * 1024 * 1024 {
                    reason = "available memory fell below 3 GiB".into();
                    break;
                }
                if last_print.elapsed() > Duration::from_secs(30) {
                    last_print = Instant::now();
                    say(format!(
                        "   {} sent, {:.0} s, {} MB available",
                        thousands(sent as f64),
                        t.elapsed().as_secs_f64(),
                        mem_available_kb() / 1024
                    ));
                }
            }
            let (k, v) = generator.next_record();
            send(&p, &topic, 0, k.as_bytes(), &v);
            sent += 1;
        }
        p.flush(Duration::from_secs(300))?;
        drop(p);
        let acked = delivered.acked.load(Ordering::Relaxed);
        let broker_mb = self
            .broker_pids()
            .first()
            .and_then(|p| rss_kb(*p))
            .map_or(0, |r| r.0 / 1024);
        let r = &mut self.results;
        r.backlog = acked;
        r.backlog_produce_s = t.elapsed().as_secs_f64();
        r.backlog_stop_reason = reason;
        say(format!(
            "   {} records acknowledged in {:.0} s ({}); Kafka RSS {} MB",
            thousands(acked as f64),
            r.backlog_produce_s,
            r.backlog_stop_reason,
            broker_mb
        ));
        let db = format!("likerate_bench_{}_backlog", self.id);
        self.databases.push(db.clone());
        let app = self.spawn_likerate(
            &topic,
            &format!("bench-{}-backlog", self.id),
            &db,
            "backlog",
        )?;
        let pid = app.pid();
        let http = reqwest::Client::new();
        let url = format!("http://{}/metrics", app.http);
        let t = Instant::now();
        let mut max_rss = 0;
        let mut hwm = 0;
        let mut processed = 0u64;
        while t.elapsed() < watch {
            if let Some((rss, h)) = rss_kb(pid) {
                max_rss = max_rss.max(rss);
                hwm = hwm.max(h);
            }
            let text = self.rt.block_on(fetch(&http, &url)).unwrap_or_default();
            processed = (metric(&text, "likerate_events_total", &[("outcome", "stored")])
                .unwrap_or(0.0)
                + metric(&text, "likerate_events_total", &[("outcome", "duplicate")])
                    .unwrap_or(0.0)) as u64;
            std::thread::sleep(Duration::from_millis(200));
        }
        let r = &mut self.results;
        r.backlog_max_rss_mb = max_rss as f64 / 1024.0;
        r.backlog_hwm_mb = hwm as f64 / 1024.0;
        r.backlog_drained = processed;
        r.backlog_secs = watch.as_secs_f64();
        say(format!(
            "   likerate over {} s: max RSS {:.0} MB (VmHWM {:.0} MB), {} events handled meanwhile",
            watch.as_secs(),
            r.backlog_max_rss_mb,
            r.backlog_hwm_mb,
            thousands(processed as f64)
        ));
        app.stop();
        self.drop_database(&db);
        Ok(())
    }

    /// Prints the run's table and writes it to `table.md` in the run's folder.
    fn publish_table(&self, out: &str) {
        print!("{out}");
        let _ = std::io::stdout().flush();
        let path = self.log_dir.join("table.md");
        let _ = std::fs::write(&path, out);
        say(format!("table written to {}", path.display()));
    }

    fn print_table(&self) {
        let r = &self.results;
        let tighter = r.copy_rate.min(r.consume_rate);
        let tighter_name = if r.copy_rate <= r.consume_rate {
            "a. storage"
        } else {
            "b. broker"
        };
        let vs_limit = r.likerate_rate / tighter;
        let vs_naive = r.likerate_rate / r.naive_rate;
        let mark = |ok: bool| if ok { "met" } else { "MISSED" };
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pg_version = self
            .rt
            .block_on(async {
                let c = connect(&format!("{}/postgres", self.pg_base)).await?;
                let v: String = c.query_one("SHOW server_version", &[]).await?.get(0);
                Ok::<_, anyhow::Error>(v)
            })
            .unwrap_or_default();
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(String::new());
        line(format!(
            "## likerate pipeline benchmark: N = {} events ({} distinct, {:.0} bytes each on average, 6 partitions)",
            thousands(r.n as f64),
            thousands(r.distinct as f64),
            r.avg_bytes
        ));
        line(String::new());
        line(format!(
            "Machine: {nproc} cores ({model}), {mem_gib:.0} GiB RAM; PostgreSQL {pg_version}; Apache Kafka {} (one KRaft node); extra consumer properties: {}; load average at the end: {}",
            kafka_version(),
            std::env::var("LIKERATE_BENCH_KAFKA_OPTIONS").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "none (librdkafka defaults)".into()),
            load_average()
        ));
        line(String::new());
        line("| measurement | events/s | notes |".into());
        line("|---|---:|---|".into());
        line(format!(
            "| produce (setup, not a target) | {} | one client, linger.ms=20, lz4, acks=all |",
            thousands(r.produce_rate)
        ));
        line(format!("| a. storage limit: raw binary COPY | {} | {} distinct rows, same schema and indexes, {:.1} s (best round, on 1 or on the sink's connections) |", thousands(r.copy_rate), thousands(r.distinct as f64), r.copy_s));
        line(format!("| b. broker limit: plain consumer, discarding | {} | librdkafka defaults, after the first record ({:.1} s with the group join) |", thousands(r.consume_rate), r.consume_wall_s));
        line(format!("| b2. plain consumer with likerate's client settings | {} | bounded prefetch (queued.min.messages=2000, 4 MiB) |", thousands(r.consume_likerate_settings_rate)));
        line(format!("| c. likerate end to end | {} | after the first commit ({:.1} s from process start); {} |", thousands(r.likerate_rate), r.likerate_wall_s, r.likerate_rows_ok));
        if r.peer_rate > 0.0 {
            line(format!(
                "| p. peer: Kafka Connect + Debezium JDBC sink, upsert on event_id | {} | no aggregates, no vote supersession; {} |",
                thousands(r.peer_rate),
                r.peer_notes
            ));
        }
        line(format!(
            "| d. naive: INSERT + commit per event | {} | {} events |",
            thousands(r.naive_rate),
            thousands(r.naive_n as f64)
        ));
        line(String::new());
        line("| target | measured | |".into());
        line("|---|---:|---|".into());
        line(format!(
            "| likerate / tighter limit ({tighter_name}, {}) >= 0.8 | {vs_limit:.2} | {} |",
            thousands(tighter),
            mark(vs_limit >= 0.8)
        ));
        line(format!(
            "| likerate / storage limit | {:.2} | |",
            r.likerate_rate / r.copy_rate
        ));
        line(format!(
            "| likerate / broker limit | {:.2} | |",
            r.likerate_rate / r.consume_rate
        ));
        if r.peer_rate > 0.0 {
            line(format!(
                "| likerate / peer (Kafka Connect JDBC sink) | {:.2} | likerate also keeps the rollups and the votes |",
                r.likerate_rate / r.peer_rate
            ));
        }
        line(format!(
            "| likerate / naive >= 20 | {vs_naive:.1} | {} |",
            mark(vs_naive >= 20.0)
        ));
        line(format!(
            "| p99 created_at -> committed row at half load <= 250 ms | {:.0} ms | {} (visible to another connection; p50 {:.0} ms, max {:.0} ms) |",
            r.lat_visible.1, mark(r.lat_visible.1 <= 250.0), r.lat_visible.0, r.lat_visible.2
        ));
        line(format!(
            "| peak RSS of likerate (VmHWM, phases c and f) <= 200 MB | {:.0} MB | {} |",
            r.likerate_peak_rss_mb,
            mark(r.likerate_peak_rss_mb <= 200.0)
        ));
        if r.backlog_requested > 0 {
            line(format!(
                "| RSS with a {} event backlog (max over {:.0} s of draining) <= 200 MB | {:.0} MB | {} (VmHWM {:.0} MB) |",
                thousands(r.backlog as f64), r.backlog_secs, r.backlog_max_rss_mb, mark(r.backlog_max_rss_mb <= 200.0), r.backlog_hwm_mb
            ));
        }
        line(String::new());
        line(format!(
            "Latency phase: {} events/s asked, {} sent, for {:.0} s after {:.0} s of warm-up (not counted); {} rows",
            thousands(r.latency_target_rate),
            thousands(r.latency_achieved_rate),
            r.latency_secs,
            r.latency_warmup,
            thousands(r.latency_rows as f64)
        ));
        line(String::new());
        line("| from created_at (= send time) to | p50 | p99 | max |".into());
        line("|---|---:|---:|---:|".into());
        line(format!("| received by a plain consumer (broker floor, {} records) | {:.0} ms | {:.0} ms | {:.0} ms |", thousands(r.lat_broker_n as f64), r.lat_broker.0, r.lat_broker.1, r.lat_broker.2));
        line(format!(
            "| ingested_at (start of the inserting transaction) | {:.0} ms | {:.0} ms | {:.0} ms |",
            r.lat_ingested.0, r.lat_ingested.1, r.lat_ingested.2
        ));
        line(format!("| row visible to another connection (committed; polled every 20 ms) | {:.0} ms | {:.0} ms | {:.0} ms |", r.lat_visible.0, r.lat_visible.1, r.lat_visible.2));
        line(format!("| like counted in /metrics ({} markers, polled every 50 ms) | {:.0} ms | {:.0} ms | {:.0} ms |", r.lat_markers, r.lat_metrics.0, r.lat_metrics.1, r.lat_metrics.2));
        line(String::new());
        line(format!(
            "Memory: likerate max VmRSS {:.0} MB during c, {:.0} MB after f, VmHWM {:.0} MB. Backlog: {} of {} requested events produced in {:.0} s ({}); {} handled during the {:.0} s watched.",
            r.likerate_max_rss_mb, r.latency_rss_mb, r.likerate_peak_rss_mb,
            thousands(r.backlog as f64), thousands(r.backlog_requested as f64), r.backlog_produce_s, r.backlog_stop_reason,
            thousands(r.backlog_drained as f64), r.backlog_secs
        ));
        line(String::new());
        line(format!("Sink during c: {}.", r.likerate_batches));
        line(format!("Sink during f: {}.", r.latency_batches));
        line(String::new());
        line("Who used the cores during c (CPU time / wall time, from /proc/PID/stat):".into());
        line(String::new());
        for l in &r.cpu_lines {
            line(format!("    {l}"));
        }
        line(String::new());
        line("Who used the cores during f (including the bench's own producer, probe consumer and row poller):".into());
        line(String::new());
        for l in &r.latency_cpu_lines {
            line(format!("    {l}"));
        }
        self.publish_table(&out);
    }
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn fetch(http: &reqwest::Client, url: &str) -> Option<String> {
    http.get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The sink's batch histograms: (batches, events in them, seconds writing them).
fn batch_totals(text: &str) -> (f64, f64, f64) {
    let plain = |name: &str| {
        text.lines()
            .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ')))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        plain("likerate_batch_write_seconds_count"),
        plain("likerate_batch_events_sum"),
        plain("likerate_batch_write_seconds_sum"),
    )
}

/// What the sink did between two scrapes, over `wall` seconds.
fn batch_report(before: (f64, f64, f64), after: (f64, f64, f64), wall: f64) -> String {
    let (n, events, secs) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    if n <= 0.0 {
        return "no batches".into();
    }
    format!(
        "{} batches of {:.0} events on average, {:.1} ms per transaction, the sink was in a transaction {:.0}% of the {wall:.1} s",
        thousands(n),
        events / n,
        secs / n * 1000.0,
        secs / wall * 100.0
    )
}

/// The value of the series `name{labels...}` in a Prometheus text exposition.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
