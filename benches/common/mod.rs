//! What the benchmarks share: the raw `COPY` that measures the storage limit, a Kafka node
//! of their own, and the read-latency measurement of the API. Each benchmark binary uses part
//! of it.
#![allow(dead_code)]

use likerate::event::FeedbackEvent;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

/// The `feedback` columns the storage-limit COPY and the naive INSERT write, in order.
pub const COLUMNS: &str = "event_id, subject_id, message_content, user_question, rating, \
                       message_index, created_at, model, conversation_id, vote_id, kafka_topic, \
                       kafka_partition, kafka_offset, vote_slot";

/// One event's values for [`COLUMNS`].
pub struct Columns<'a> {
    event: &'a FeedbackEvent,
    question: Option<&'a str>,
    rating: i16,
    model: Option<&'a str>,
    conversation: Option<&'a str>,
    vote: Option<&'a str>,
    subject: &'a str,
    answer: &'a str,
    topic: &'a str,
    partition: i32,
    offset: i64,
    slot: bool,
}

/// Which events hold their vote's slot, as the sink decides: the first stored event of each
/// `vote_id` (see `schemas/migrations/0004_vote_slot.sql`), so the rows are the sink's rows.
#[derive(Default)]
pub struct VoteSlots(std::collections::HashSet<String>);

impl VoteSlots {
    /// Whether `e`, stored next, takes its vote's slot.
    pub fn take(&mut self, e: &FeedbackEvent) -> bool {
        e.vote_id
            .as_ref()
            .is_some_and(|v| self.0.insert(v.as_str().to_owned()))
    }
}

impl<'a> Columns<'a> {
    pub fn of(
        e: &'a FeedbackEvent,
        topic: &'a str,
        partition: i32,
        offset: i64,
        slot: bool,
    ) -> Columns<'a> {
        Columns {
            event: e,
            question: e.user_question.as_ref().map(|q| q.as_str()),
            rating: e.rating.as_i16(),
            model: e.model.as_ref().map(|m| m.as_str()),
            conversation: e.conversation_id.as_ref().map(|m| m.as_str()),
            vote: e.vote_id.as_ref().map(|m| m.as_str()),
            subject: e.subject_id.as_str(),
            answer: e.assistant_message.as_str(),
            topic,
            partition,
            offset,
            slot,
        }
    }

    pub fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.event.event_id,
            &self.subject,
            &self.answer,
            &self.question,
            &self.rating,
            &self.event.message_index,
            &self.event.created_at,
            &self.model,
            &self.conversation,
            &self.vote,
            &self.topic,
            &self.partition,
            &self.offset,
            &self.slot,
        ]
    }
}

/// Types of [`COLUMNS`], for the binary `COPY`.
const TYPES: [Type; 14] = [
    Type::UUID,
    Type::VARCHAR,
    Type::TEXT,
    Type::TEXT,
    Type::INT2,
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::BOOL,
];

/// Writes the rows into `feedback` with one binary `COPY` (one transaction); returns how many
/// it wrote.
pub async fn copy_rows<'a>(
    client: &Client,
    rows: impl Iterator<Item = Columns<'a>>,
) -> Result<u64, tokio_postgres::Error> {
    let sink = client
        .copy_in(&format!("COPY feedback ({COLUMNS}) FROM STDIN BINARY"))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &TYPES);
    futures::pin_mut!(writer);
    for row in rows {
        writer.as_mut().write(&row.params()).await?;
    }
    writer.finish().await
}

/// An Apache Kafka node of the benchmark's own: `deploy/local/kafka.sh node` (KRaft, broker and
/// controller in one JVM; the script execs it, so the child is the broker) on a free port,
/// with its data under `dir` and its output in `log`. Heap: `LIKERATE_KAFKA_HEAP`, default 1g.
pub struct KafkaNode {
    pub child: std::process::Child,
    pub brokers: String,
}

impl KafkaNode {
    pub fn start(dir: &std::path::Path, log: &std::path::Path) -> anyhow::Result<KafkaNode> {
        use std::time::{Duration, Instant};
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka.sh");
        let free_port = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (port, controller) = (free_port()?, free_port()?);
        let out = std::fs::File::create(log)?;
        let child = std::process::Command::new("bash")
            .arg(&script)
            .arg("node")
            .arg("1")
            .arg(dir)
            .arg(port.to_string())
            .arg(controller.to_string())
            .arg(format!("1@127.0.0.1:{controller}"))
            .env(
                "LIKERATE_KAFKA_HEAP",
                std::env::var("LIKERATE_KAFKA_HEAP").unwrap_or_else(|_| "1g".into()),
            )
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}: {e}", script.display()))?;
        let mut node = KafkaNode {
            child,
            brokers: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(&node.brokers).is_err() {
            if Instant::now() > deadline || node.child.try_wait()?.is_some() {
                node.stop();
                anyhow::bail!("Kafka did not start (see {})", log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(node)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Kafka version that deploy/local/kafka.sh installs (pinned in its pom).
pub fn kafka_version() -> &'static str {
    include_str!("../../deploy/local/kafka/pom.xml")
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or("?")
}

/// RFC 3339 in UTC, whole seconds, as the API's query parameters take it.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `v` encoded for a query string.
pub fn query_value(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// What the read-latency shapes ask about: the stored subjects, two models to compare, and the
/// time range that holds votes.
pub struct ReadShapes {
    pub subjects: Vec<String>,
    pub model_a: String,
    pub model_b: String,
    pub start: chrono::DateTime<chrono::Utc>,
    pub end: chrono::DateTime<chrono::Utc>,
}

/// How many requests [`read_latency`] sends per shape.
pub struct ReadSamples {
    /// Measured requests per shape.
    pub samples: usize,
    /// Requests before them that warm the connection pool and the statement caches.
    pub warmup: usize,
    /// A shape stops early when its requests have taken this long (after one measured).
    pub budget: std::time::Duration,
}

/// Read latency of `stats`, `daily` and `compare` against the server at `base` (issue 4:
/// p99 under 10 ms): per query shape, requests sent one at a time as `n` says. Returns
/// (shape, measured requests, how many of them failed, p50 ms, p99 ms).
pub async fn read_latency(
    client: &reqwest::Client,
    base: &str,
    shapes: &ReadShapes,
    n: &ReadSamples,
) -> Vec<(String, usize, usize, f64, f64)> {
    use chrono::Duration as ChronoDuration;
    use rand::{Rng, SeedableRng};
    type Path<'a> = Box<dyn Fn(&mut rand::rngs::StdRng) -> String + 'a>;
    let seconds = (shapes.end - shapes.start).num_seconds().max(1);
    let days = (seconds / 86_400).max(1);
    let random_time = move |rng: &mut rand::rngs::StdRng| {
        shapes.start + ChronoDuration::seconds(rng.random_range(0..seconds))
    };
    let subject = |rng: &mut rand::rngs::StdRng| {
        query_value(&shapes.subjects[rng.random_range(0..shapes.subjects.len())])
    };
    let (a, b) = (query_value(&shapes.model_a), query_value(&shapes.model_b));
    let list: Vec<(String, Path)> = vec![
        (
            "stats, everything".into(),
            Box::new(|_| "/api/feedback/stats".into()),
        ),
        (
            "stats, one subject".into(),
            Box::new(|rng| format!("/api/feedback/stats?subject_id={}", subject(rng))),
        ),
        (
            "stats, subject + model + range cut inside minutes".into(),
            Box::new(|rng| {
                let (x, y) = (random_time(rng), random_time(rng));
                let (since, until) = if x < y { (x, y) } else { (y, x) };
                format!(
                    "/api/feedback/stats?subject_id={}&model={b}&since={}&until={}",
                    subject(rng),
                    rfc3339(since + ChronoDuration::seconds(17)),
                    rfc3339(until + ChronoDuration::seconds(43))
                )
            }),
        ),
        (
            "daily, 30 days".into(),
            Box::new(|_| "/api/feedback/daily?days=30".into()),
        ),
        (
            format!("daily, {days} days, one subject"),
            Box::new(|rng| {
                format!(
                    "/api/feedback/daily?days={days}&subject_id={}",
                    subject(rng)
                )
            }),
        ),
        (
            "compare, everything".into(),
            Box::new(|_| format!("/api/feedback/compare?model_a={a}&model_b={b}")),
        ),
        (
            "compare, since a random time".into(),
            Box::new(|rng| {
                format!(
                    "/api/feedback/compare?model_a={a}&model_b={b}&since={}",
                    rfc3339(random_time(rng) + ChronoDuration::seconds(29))
                )
            }),
        ),
        (
            "compare by vote (rollups), since a random time".into(),
            Box::new(|rng| {
                format!(
                    "/api/feedback/compare?model_a={a}&model_b={b}&unit=vote&since={}",
                    rfc3339(random_time(rng) + ChronoDuration::seconds(29))
                )
            }),
        ),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut out = Vec::new();
    for (name, path) in list {
        let mut took = Vec::with_capacity(n.samples);
        let started = std::time::Instant::now();
        let (mut warmed, mut failed) = (0, 0);
        while took.len() < n.samples && (took.is_empty() || started.elapsed() < n.budget) {
            // The warm-up ends early when it has used half the budget.
            let warming = warmed < n.warmup && started.elapsed() < n.budget / 2;
            let url = format!("{base}{}", path(&mut rng));
            let t = std::time::Instant::now();
            let r = client.get(&url).send().await.expect("request");
            let ok = r.status().is_success();
            r.bytes().await.expect("body");
            // A failed request (a statement timeout, say) counts with the time it took.
            failed += usize::from(!ok && !warming);
            if warming {
                warmed += 1;
            } else {
                took.push(t.elapsed());
            }
        }
        took.sort();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        out.push((
            name,
            took.len(),
            failed,
            ms(took[took.len() / 2]),
            ms(took[took.len() * 99 / 100]),
        ));
    }
    out
}
