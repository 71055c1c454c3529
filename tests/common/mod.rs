//! The harness every integration test binary shares: a fresh PostgreSQL database, topics of
//! the test's own on a real Apache Kafka broker (`kafka.rs`), synthetic traffic, and
//! `likerate run` with HTTP on port 0: in this process ([`TestApp`], for everything that does
//! not need a process to die) or as a child process ([`Likerate`], for kill -9, signals and
//! what it logs). Each binary uses part of it.
#![allow(dead_code)]

mod kafka;
pub mod observe;
// Each test binary uses part of the harness.
#[allow(unused_imports)]
pub use kafka::{free_port, shared_brokers, Cluster};

use chrono::{DateTime, Utc};
use likerate::config::KafkaConfig;
use likerate::produce::{Generator, ProduceArgs};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use uuid::Uuid;

/// The PostgreSQL port the tests use: 5432, or `LIKERATE_TEST_PG_PORT` (to run a test that
/// stops the server against a cluster of its own while other work uses 5432).
pub fn pg_port() -> u16 {
    std::env::var("LIKERATE_TEST_PG_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5432)
}

pub fn pg_base() -> String {
    format!("postgres://postgres@127.0.0.1:{}", pg_port())
}

/// A short random id for names of databases, topics and groups.
pub fn short_id() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// One test's database, dropped (with its connections) on drop.
pub struct Database {
    pub name: String,
}

impl Database {
    pub async fn create(prefix: &str) -> Database {
        let name = format!("{prefix}_{}", short_id());
        let (admin, conn) = tokio_postgres::connect(&format!("{}/postgres", pg_base()), NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 or LIKERATE_TEST_PG_PORT (run deploy/local/postgres.sh)");
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Database { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", pg_base(), self.name)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    pub async fn count(&self) -> i64 {
        self.client()
            .await
            .query_one("SELECT count(*) FROM feedback", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until `feedback` holds `n` rows (and stays there for a moment).
    pub async fn wait_for_rows(&self, n: i64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let c = self.count().await;
            assert!(c <= n, "more rows than distinct events: {c} > {n}");
            if c == n {
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert_eq!(self.count().await, n, "rows kept arriving past {n}");
                return;
            }
            if Instant::now() >= deadline {
                let per_partition: Vec<(i32, i64, i64, i64)> = self
                    .client()
                    .await
                    .query(
                        "SELECT kafka_partition, count(*), min(kafka_offset), max(kafka_offset)
                         FROM feedback GROUP BY 1 ORDER BY 1",
                        &[],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect();
                let stored: HashSet<(i32, i64)> = self
                    .client()
                    .await
                    .query("SELECT kafka_partition, kafka_offset FROM feedback", &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                let mut missing: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
                for p in 0..3 {
                    let maxo = stored
                        .iter()
                        .filter(|(q, _)| *q == p)
                        .map(|(_, o)| *o)
                        .max()
                        .unwrap_or(0);
                    for o in 0..maxo {
                        if !stored.contains(&(p, o)) {
                            missing.entry(p).or_default().push(o);
                        }
                    }
                }
                let summary: Vec<(i32, usize, Vec<i64>)> = missing
                    .iter()
                    .map(|(p, v)| (*p, v.len(), v.iter().take(30).copied().collect()))
                    .collect();
                panic!("only {c} of {n} rows after {within:?}; per partition (rows, min offset, max offset): {per_partition:?}; missing offsets: {summary:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the dead-letter outbox is drained: at least `expected` rows published and
    /// none waiting (refused rows are not waiting). Only then does reading the dead-letter topic
    /// show everything that will ever be there, so that a letter sent twice is seen.
    pub async fn wait_for_dead_letters_published(&self, expected: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let row = self
                .client()
                .await
                .query_one(
                    "SELECT count(*) FILTER (WHERE published_at IS NOT NULL),
                            count(*) FILTER (WHERE published_at IS NULL AND refused_at IS NULL)
                     FROM feedback_dead_letter",
                    &[],
                )
                .await;
            let (published, waiting): (i64, i64) = match row {
                Ok(r) => (r.get(0), r.get(1)),
                // Not migrated yet: nothing recorded so far.
                Err(_) => (0, 0),
            };
            if published >= expected as i64 && waiting == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dead-letter outbox not drained after {within:?}: {published} of {expected} published, {waiting} waiting"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The rollups equal a recomputation from the stored rows (current votes only), at every
    /// grain, for the minute buckets starting at or after `from` (all when `None`); and every
    /// vote's bookkeeping names its newest stored event.
    pub async fn assert_rollups_exact(&self, from: Option<DateTime<Utc>>) {
        let client = self.client().await;
        let from = from.unwrap_or_else(|| "1900-01-01T00:00:00Z".parse().unwrap());
        let diff: i64 = client
            .query_one(
                "WITH cur AS (
                   SELECT DISTINCT ON (coalesce(vote_id, event_id::text))
                          subject_id, coalesce(model, '') AS model, rating,
                          date_trunc('minute', created_at) AS bucket
                   FROM feedback
                   ORDER BY coalesce(vote_id, event_id::text), created_at DESC, event_id DESC),
                 expected AS (
                   SELECT bucket, subject_id::text, model::text,
                          count(*) FILTER (WHERE rating = 1) AS l,
                          count(*) FILTER (WHERE rating = -1) AS d,
                          count(*) FILTER (WHERE rating = 0) AS n
                   FROM cur WHERE bucket >= $1 GROUP BY 1, 2, 3),
                 actual AS (
                   SELECT bucket, subject_id::text, model::text, likes, dislikes, neutral
                   FROM feedback_rollup
                   WHERE grain = 'm' AND (likes, dislikes, neutral) <> (0, 0, 0)
                     AND bucket >= $1)
                 SELECT count(*) FROM (
                   (SELECT * FROM expected EXCEPT SELECT * FROM actual)
                   UNION ALL
                   (SELECT * FROM actual EXCEPT SELECT * FROM expected)) x",
                &[&from],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(diff, 0, "rollup cells differ from the recomputation");
        let grains: Vec<(i64, i64, i64)> = client
            .query(
                "SELECT sum(likes)::int8, sum(dislikes)::int8, sum(neutral)::int8
                 FROM feedback_rollup GROUP BY grain",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert!(
            grains.len() == 3 || grains.is_empty(),
            "minute, hour and day grains"
        );
        assert!(
            grains.windows(2).all(|w| w[0] == w[1]),
            "grains disagree: {grains:?}"
        );
        let stale: i64 = client
            .query_one(
                "SELECT count(*) FROM (
                   SELECT DISTINCT ON (vote_id) vote_id, event_id FROM feedback
                   WHERE vote_id IS NOT NULL AND created_at >= $1
                   ORDER BY vote_id, created_at DESC, event_id DESC) newest
                 FULL JOIN (
                   SELECT s.vote_id, coalesce(v.event_id, s.event_id) AS event_id
                   FROM feedback s LEFT JOIN feedback_vote v USING (vote_id)
                   WHERE s.vote_slot AND coalesce(v.created_at, s.created_at) >= $1) current
                   USING (vote_id)
                 WHERE newest.event_id IS DISTINCT FROM current.event_id",
                &[&from],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            stale, 0,
            "the current vote (feedback_vote, else the slot holder) is not the newest event"
        );
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Best effort, from a thread of its own: drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) =
                    tokio_postgres::connect(&format!("{}/postgres", pg_base()), NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            })
        })
        .join();
    }
}

/// Topic, dead-letter topic and group names for one test on `brokers`.
pub fn kafka_config(brokers: String) -> KafkaConfig {
    let id = short_id();
    KafkaConfig {
        brokers,
        topic: format!("fe-{id}"),
        group: format!("g-{id}"),
        dlq_topic: format!("fe-{id}-dlq"),
        topic_partitions: 3,
        options: BTreeMap::new(),
    }
}

/// The test's topics (feedback and dead letters, 3 partitions each) and group on a real
/// Kafka broker.
pub struct Broker {
    pub kafka: KafkaConfig,
}

impl Broker {
    /// On the test binary's shared broker.
    pub async fn new() -> Broker {
        Self::on(shared_brokers()).await
    }

    /// On the given brokers (a test's own [`Cluster`]).
    /// The topics are created with a few retries: on a cluster that is still healing from the
    /// previous fault test, an admin request can fail once (seen: "Broker handle destroyed").
    pub async fn on(brokers: String) -> Broker {
        let kafka = kafka_config(brokers);
        let mut attempt = 1;
        while let Err(e) = likerate::kafka::ensure_topics(&kafka).await {
            assert!(attempt < 5, "topics created on the test broker: {e}");
            eprintln!("creating the test topics failed (attempt {attempt}), retrying: {e}");
            attempt += 1;
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Broker { kafka }
    }
}

/// One test's world: topics and a group on a broker, and a database of its own.
pub struct World {
    pub kafka: KafkaConfig,
    pub db: Database,
}

impl World {
    /// On the test binary's shared broker.
    pub async fn new() -> World {
        Self::on(shared_brokers()).await
    }

    /// On the given brokers (a test's own [`Cluster`]).
    pub async fn on(brokers: String) -> World {
        World {
            kafka: Broker::on(brokers).await.kafka,
            db: Database::create("likerate_test").await,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        self.db.client().await
    }

    pub async fn count(&self) -> i64 {
        self.db.count().await
    }

    /// `likerate run` with this world's settings, in another group if given.
    pub fn spawn(&self, group: Option<&str>, extra: &[(&str, &str)]) -> Likerate {
        let mut kafka = self.kafka.clone();
        if let Some(g) = group {
            kafka.group = g.to_owned();
        }
        let extra: Vec<(&str, Option<&str>)> = extra.iter().map(|(k, v)| (*k, Some(*v))).collect();
        Likerate::spawn("", &kafka, &self.db.url(), &extra)
    }

    pub async fn send(&self, records: &[(String, Vec<u8>)]) {
        send(&self.kafka, records).await;
    }

    /// Sends the records from a task, in chunks with a pause between them (a live stream).
    pub fn send_in_background(
        &self,
        records: Records,
        chunk: usize,
        pause: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let kafka = self.kafka.clone();
        tokio::spawn(async move {
            for part in records.chunks(chunk) {
                send(&kafka, part).await;
                tokio::time::sleep(pause).await;
            }
        })
    }

    /// Waits until at least `n` rows are stored.
    pub async fn wait_for_at_least(&self, n: i64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.count().await < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} rows after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_for_rows(&self, n: i64, within: Duration) {
        self.db.wait_for_rows(n, within).await;
    }

    /// Every produced valid event stored once, and the rollups equal their recomputation.
    pub async fn assert_stored_exactly(&self, ids: &HashSet<Uuid>, within: Duration) {
        self.wait_for_rows(ids.len() as i64, within).await;
        let stored: HashSet<Uuid> = self
            .client()
            .await
            .query("SELECT event_id FROM feedback", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            stored == *ids,
            "the stored event ids are not the produced ones"
        );
        self.db.assert_rollups_exact(None).await;
    }

    /// Every record of the dead-letter topic once the outbox is drained of `expected`
    /// ([`Database::wait_for_dead_letters_published`]).
    pub async fn dead_letters(&self, expected: usize) -> Vec<(BTreeMap<String, String>, Vec<u8>)> {
        self.db
            .wait_for_dead_letters_published(expected, Duration::from_secs(90))
            .await;
        dead_letters(&self.kafka, expected)
    }
}

/// Keyed records, as sent to the topic.
pub type Records = Vec<(String, Vec<u8>)>;

/// Sends records in order and waits for every acknowledgement.
pub async fn send(kafka: &KafkaConfig, records: &[(String, Vec<u8>)]) {
    // A test's producer does not give up while a broker is frozen or a leader moves: Kafka's
    // own default delivery timeout (2 minutes) rather than likerate's 30 s.
    let producer: FutureProducer = likerate::kafka::producer_config(kafka)
        .set("message.timeout.ms", "120000")
        .create()
        .unwrap();
    for part in records.chunks(1000) {
        let sends = part.iter().map(|(k, v)| {
            producer.send(
                FutureRecord::to(&kafka.topic).key(k.as_bytes()).payload(v),
                Duration::from_secs(120),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("delivered");
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Synthetic records from `likerate produce`'s generator with its command-line flags, the
/// distinct valid event ids among them, and how many are invalid. Which is which is what the
/// generator made, not what likerate's decoder says: it keys each invalid record it makes
/// `invalid` and gives every valid one an `event_id` (tests do not pass `--no-event-id`), so a
/// decoder that refused a valid event or let an invalid one through fails the tests.
pub fn traffic(n: u64, seed: u64, flags: &[&str]) -> (Records, HashSet<Uuid>, usize) {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }
    assert!(!flags.contains(&"--no-event-id"), "the ids must be known");
    let mut argv = vec!["x".to_owned(), "--seed".into(), seed.to_string()];
    argv.extend(flags.iter().map(|s| s.to_string()));
    let mut g = Generator::new(&Cli::parse_from(argv).args).unwrap();
    let mut records = Vec::new();
    let mut ids = HashSet::new();
    let mut invalid = 0;
    for _ in 0..n {
        let (key, payload) = g.next_record();
        if key == "invalid" {
            invalid += 1;
        } else {
            let event: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            ids.insert(event["event_id"].as_str().unwrap().parse().unwrap());
        }
        records.push((key, payload));
    }
    (records, ids, invalid)
}

/// `n` votes for Math at a 60% like ratio spread over the last 5 minutes: enough to page.
pub fn low_math(n: u64, seed: u64) -> Records {
    traffic(
        n,
        seed,
        &[
            "--subjects",
            "Math",
            "--like-ratio",
            "0.6",
            "--spread",
            "5m",
        ],
    )
    .0
}

/// A `likerate` command line with this test's Kafka and database settings (librdkafka
/// pass-through options included).
pub fn likerate_command(args: &[&str], kafka: &KafkaConfig, db_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_likerate"));
    cmd.args(args)
        .env("LIKERATE_KAFKA_BROKERS", &kafka.brokers)
        .env("LIKERATE_KAFKA_TOPIC", &kafka.topic)
        .env("LIKERATE_KAFKA_GROUP", &kafka.group)
        .env("LIKERATE_DLQ_TOPIC", &kafka.dlq_topic)
        .env("LIKERATE_DATABASE_URL", db_url)
        .env("LIKERATE_HTTP_ADDR", "127.0.0.1:0")
        .env("LIKERATE_DATABASE_TIMEOUT", "5s")
        .env("LIKERATE_DRAIN_TIMEOUT", "5s")
        .env(
            "RUST_LOG",
            std::env::var("TEST_LOG").unwrap_or("likerate=info,warn".into()),
        );
    for (key, value) in &kafka.options {
        let name = format!(
            "LIKERATE_KAFKA_OPTION_{}",
            key.replace('.', "_").to_uppercase()
        );
        cmd.env(name, value);
    }
    cmd
}

/// What a running likerate serves, in this process ([`TestApp`]) or a child ([`Likerate`]).
#[allow(async_fn_in_trait)]
pub trait Served {
    fn http(&self) -> SocketAddr;

    fn base_url(&self) -> String {
        format!("http://{}", self.http())
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http())
    }

    async fn metrics(&self) -> Result<String, String> {
        let r = reqwest::get(self.url("/metrics"))
            .await
            .map_err(|e| e.to_string())?;
        r.text().await.map_err(|e| e.to_string())
    }

    /// The value of one series (exact name and labels as rendered), if present.
    async fn metric(&self, series: &str) -> Result<Option<f64>, String> {
        Ok(series_value(&self.metrics().await?, series))
    }

    /// A counter's value; 0 while the series does not exist yet (nothing counted).
    async fn metric_or_zero(&self, series: &str) -> f64 {
        self.metric(series).await.unwrap().unwrap_or(0.0)
    }
}

impl Served for TestApp {
    fn http(&self) -> SocketAddr {
        self.http
    }
}

impl Served for Likerate {
    fn http(&self) -> SocketAddr {
        self.http
    }
}

/// `likerate run` in the test process: `App::build` binds port 0 and says which port it got,
/// then the app runs on the test's runtime until the `TestApp` is dropped (which stops it:
/// dropping the running app cancels its source, and the test runtime ends the rest).
pub struct TestApp {
    pub http: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Starts the app for this Kafka config and database with `run`'s settings (HTTP on port 0
    /// and short drain and database timeouts unless `run` says otherwise) over the TOML file
    /// `file`, if any.
    pub async fn spawn(
        kafka: &KafkaConfig,
        db_url: &str,
        run: likerate::config::RunArgs,
        file: Option<&std::path::Path>,
    ) -> TestApp {
        let file = likerate::config::ConfigFile::load(file).expect("config file");
        let run = likerate::config::RunArgs {
            http_addr: run.http_addr.or(Some("127.0.0.1:0".into())),
            drain_timeout: run.drain_timeout.or(Some("5s".into())),
            ..run
        }
        .resolve(&file)
        .expect("run settings");
        let db = likerate::config::DatabaseConfig {
            url: db_url.to_owned(),
            timeout: Duration::from_secs(5),
        };
        let app = likerate::app::App::build(kafka.clone(), db, run)
            .await
            .expect("likerate app");
        let http = app.http_addr();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        TestApp {
            http,
            shutdown,
            task,
        }
    }

    pub fn assert_alive(&mut self) {
        assert!(!self.task.is_finished(), "likerate stopped");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `likerate run` as a child process; killed when dropped, so a failing test leaves nothing.
/// Its stderr is echoed and kept line by line (`log`), for tests that check what it logged.
pub struct Likerate {
    pub child: Child,
    pub http: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Its PostgreSQL `application_name` (`likerate-<id>`), to find its sessions.
    pub application: String,
}

impl Likerate {
    /// Starts `likerate run` for this Kafka config and database, with `extra` variables on
    /// top (`None` removes a variable), and waits for its HTTP address.
    pub fn spawn(
        tag: &str,
        kafka: &KafkaConfig,
        db_url: &str,
        extra: &[(&str, Option<&str>)],
    ) -> Likerate {
        let application = format!("likerate-{}", short_id());
        let sep = if db_url.contains('?') { '&' } else { '?' };
        let db_url = format!("{db_url}{sep}application_name={application}");
        let mut cmd = likerate_command(&["run"], kafka, &db_url);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        for (name, value) in extra {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let mut child = cmd.spawn().expect("spawn likerate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let tag = tag.to_owned();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[likerate{tag}] {line}");
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = log.lock().unwrap().iter().find_map(|l| {
                l.contains("likerate running")
                    .then(|| l.split("http=").nth(1))
                    .flatten()
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            });
            if let Some(http) = found {
                return Likerate {
                    child,
                    http,
                    log,
                    application,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("likerate exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "likerate did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(self) {
        drop(self);
    }

    /// kill -9 while one of its sessions is inside a write transaction (a batch in flight: a
    /// transaction id is assigned), looking every 10 ms for up to 30 s; returns whether one was
    /// open when the kill was sent. The dead-letter publisher's session (the holder of its
    /// advisory lock) does not count: its marks are single statements, not a batch. 30 s: an
    /// instance started after another was killed gets no partition until the group's session
    /// timeout (10 s) has evicted the dead member and the rebalance is done.
    pub async fn kill9_in_flight(self, db: &tokio_postgres::Client) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut open = false;
        while !open && Instant::now() < deadline {
            let n: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity a
                     WHERE a.datname = current_database() AND a.application_name = $1
                       AND a.backend_xid IS NOT NULL AND a.state <> 'idle'
                       AND NOT EXISTS (
                         SELECT 1 FROM pg_locks l
                         WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
                           AND l.classid = $2::int8::oid AND l.objsubid = 2)",
                    &[
                        &self.application,
                        &i64::from(likerate::dead_letter::PUBLISHER_LOCK),
                    ],
                )
                .await
                .unwrap()
                .get(0);
            open = n > 0;
            if !open {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.kill9();
        open
    }

    /// SIGTERM; returns the exit status and how long the process took to exit.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(Instant::now() < deadline, "likerate ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("likerate exited: {status}");
        }
    }
}

impl Drop for Likerate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The distinct source coordinates (partition, offset) that dead letters name in their headers.
pub fn letter_origins(
    letters: &[(BTreeMap<String, String>, Vec<u8>)],
) -> HashSet<(String, String)> {
    letters
        .iter()
        .map(|(h, _)| {
            (
                h["likerate-source-partition"].clone(),
                h["likerate-source-offset"].clone(),
            )
        })
        .collect()
}

/// Every record of the dead-letter topic, as its readers see it (committed records only):
/// (headers, payload). Read it once the outbox is drained ([`World::dead_letters`]), or a letter
/// published twice may arrive after the reading stopped.
pub fn dead_letters(
    kafka: &KafkaConfig,
    expected: usize,
) -> Vec<(BTreeMap<String, String>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("dlq-reader-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[&kafka.dlq_topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let mut headers = BTreeMap::new();
            if let Some(h) = m.headers() {
                for i in 0..h.count() {
                    let header = h.get(i);
                    headers.insert(
                        header.key.to_owned(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into(),
                    );
                }
            }
            out.push((headers, m.payload().unwrap_or_default().to_vec()));
        }
    }
    // Nothing more than expected arrives.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            panic!("more dead letters than expected");
        }
    }
    out
}

/// `promtool check metrics` on the text: exit status and output.
pub fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), msg)
}

/// Waits until no settled day is left for compare's conversation units to compute
/// ([`likerate::units::PENDING_DAYS`]): the running instance's task has done them all.
pub async fn units_computed(client: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: Vec<chrono::NaiveDate> = client
            .query_one(likerate::units::PENDING_DAYS, &[])
            .await
            .unwrap()
            .get(0);
        if pending.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "units of {pending:?} not computed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
