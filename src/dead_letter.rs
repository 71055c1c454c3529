//! Dead letters, exactly once: records that are not valid events go to the dead-letter topic
//! with the original bytes and key, and headers saying why and where they came from.
//!
//! They travel through an outbox, `feedback_dead_letter` (migration 0006):
//! - [`record`] writes a batch's dead letters in a transaction that commits before the batch's
//!   offsets are acknowledged, keyed by the record's source (topic, partition, offset). A
//!   replay of the same offsets (kill -9 before the offset commit, an offset reset, a new
//!   consumer group) inserts nothing, and only what it inserted is counted: each bad record is
//!   counted once. The partition moves on once its dead letters are durable in PostgreSQL,
//!   whether or not the dead-letter topic is available.
//! - [`run`] publishes the outbox to the topic: one publisher at a time across instances (a
//!   session advisory lock, released when its connection ends). Before each send it marks the
//!   rows attempted, with the topic's end offsets per partition, in a committed transaction;
//!   after the broker acknowledged (acks=all, idempotent producer) it marks them published
//!   with their dead-letter offsets and drops the payload. A row found attempted and not
//!   published (a crash between the send and the mark, or a send that failed) is looked for in
//!   the topic from those end offsets before it is sent again: each bad record is in the topic
//!   once, whatever point a crash hits.
//! - While the topic is unavailable the rows wait (`likerate_dead_letters_pending`) and the
//!   publisher retries with backoff; nothing is lost and it resumes alone.

use crate::config::KafkaConfig;
use crate::db::{DbError, Target};
use crate::kafka;
use crate::source::Rejected;
use crate::telemetry::Metrics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// The header names (docs/contract.md section 2).
pub const HEADER_ERROR: &str = "likerate-error";
pub const HEADER_DETAIL: &str = "likerate-error-detail";
pub const HEADER_TOPIC: &str = "likerate-source-topic";
pub const HEADER_PARTITION: &str = "likerate-source-partition";
pub const HEADER_OFFSET: &str = "likerate-source-offset";

/// The advisory lock the one active publisher holds ("dl" + 4 in ASCII, beside erasure's).
const PUBLISHER_LOCK: i64 = 1_684_799_540;
/// Rows per send round: dead letters are rare, a round is short.
const ROUND: i64 = 200;
/// How often an idle publisher looks for new rows, and a standby for the lock.
const IDLE: Duration = Duration::from_millis(500);
const STANDBY: Duration = Duration::from_secs(5);

/// One record to dead-letter, with its origin.
pub struct DeadLetter<'a> {
    pub rejected: &'a Rejected,
    pub partition: i32,
    pub offset: i64,
}

const INSERT: &str = "INSERT INTO feedback_dead_letter
        (source_topic, source_partition, source_offset, reason, detail, record_key, payload)
    SELECT $1, * FROM unnest($2::int4[], $3::int8[], $4::text[], $5::text[], $6::bytea[], $7::bytea[])
    ON CONFLICT DO NOTHING
    RETURNING source_partition, source_offset";

/// Writes the dead letters of one batch to the outbox in one transaction and counts the ones
/// it inserted (a replayed record is already there: it is neither written nor counted again).
pub async fn record(
    client: &mut Client,
    topic: &str,
    letters: &[DeadLetter<'_>],
    metrics: &Metrics,
) -> Result<(), DbError> {
    if letters.is_empty() {
        return Ok(());
    }
    // PostgreSQL text cannot hold NUL; the detail may quote input.
    let details: Vec<String> = letters
        .iter()
        .map(|l| l.rejected.error.detail.replace('\0', "\u{FFFD}"))
        .collect();
    let tx = client.transaction().await?;
    let inserted = tx
        .query(
            INSERT,
            &[
                &topic,
                &letters.iter().map(|l| l.partition).collect::<Vec<_>>(),
                &letters.iter().map(|l| l.offset).collect::<Vec<_>>(),
                &letters
                    .iter()
                    .map(|l| l.rejected.error.reason.code())
                    .collect::<Vec<_>>(),
                &details,
                &letters
                    .iter()
                    .map(|l| l.rejected.key.as_deref())
                    .collect::<Vec<_>>(),
                &letters
                    .iter()
                    .map(|l| l.rejected.payload.as_slice())
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
    tx.commit().await?;
    let inserted: HashSet<(i32, i64)> = inserted.iter().map(|r| (r.get(0), r.get(1))).collect();
    for l in letters {
        if inserted.contains(&(l.partition, l.offset)) {
            metrics.dead_letter(l.rejected.error.reason.code());
        }
    }
    Ok(())
}

/// Why the publisher stopped: only a configuration error stops it; the rest is retried.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("dead-letter producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Database(DbError),
}

/// The outbox publisher: runs until the shutdown, retrying while PostgreSQL or the dead-letter
/// topic is unavailable. `crash_after_send` is the test-only fault point
/// (`LIKERATE_TEST_FAULT=dead_letter_sent`): the process aborts after the broker acknowledged
/// a round and before it is marked published, the worst moment for a crash.
pub async fn run(
    target: Target,
    config: KafkaConfig,
    metrics: Metrics,
    crash_after_send: bool,
    shutdown: CancellationToken,
) -> Result<(), PublishError> {
    let publisher = Publisher {
        producer: kafka::producer_config(&config).create()?,
        config,
        metrics,
        crash_after_send,
    };
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let session = async {
            let client = target.connect().await?;
            publisher.session(&client, &mut backoff).await
        };
        let error = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = session => match r {
                Ok(never) => match never {},
                Err(e @ DbError::Fatal(_)) => return Err(PublishError::Database(e)),
                Err(e) => e,
            },
        };
        tracing::warn!(error = %error, retry_in = ?backoff, "dead-letter publisher: database unavailable");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    Ok(())
}

/// A pending outbox row.
struct Pending {
    partition: i32,
    offset: i64,
    reason: String,
    detail: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    attempted: bool,
    scan_from: Option<Vec<i64>>,
}

/// Where a dead letter landed.
type Landed = HashMap<(i32, i64), (i32, i64)>;

struct Publisher {
    producer: FutureProducer,
    config: KafkaConfig,
    metrics: Metrics,
    crash_after_send: bool,
}

impl Publisher {
    /// One database session: wait for the lock, then publish until an error.
    async fn session(
        &self,
        client: &Client,
        backoff: &mut Duration,
    ) -> Result<std::convert::Infallible, DbError> {
        loop {
            self.report_pending(client).await?;
            let held: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&PUBLISHER_LOCK])
                .await?
                .get(0);
            if held {
                break;
            }
            tokio::time::sleep(STANDBY).await;
        }
        loop {
            self.report_pending(client).await?;
            let pending = self.pending(client).await?;
            if pending.is_empty() {
                *backoff = Duration::from_millis(100);
                tokio::time::sleep(IDLE).await;
                continue;
            }
            // Rows a crash or a failed send may have put in the topic already.
            let uncertain: Vec<&Pending> = pending.iter().filter(|p| p.attempted).collect();
            let found = if uncertain.is_empty() {
                Landed::new()
            } else if let Some(found) = self.find(&uncertain).await {
                found
            } else {
                // The topic could not be read to its end: a send now could duplicate.
                tracing::warn!(
                    rows = uncertain.len(),
                    "dead-letter topic not readable: the rows of an earlier attempt wait"
                );
                self.metrics.dlq_publish_failures(uncertain.len() as u64);
                self.wait(backoff).await;
                continue;
            };
            if !found.is_empty() {
                tracing::info!(
                    found = found.len(),
                    "dead letters found in the topic from an earlier attempt: marked, not sent again"
                );
                mark_published(client, &self.config.topic, &found).await?;
            }
            let to_send: Vec<&Pending> = pending
                .iter()
                .filter(|p| !found.contains_key(&(p.partition, p.offset)))
                .collect();
            if to_send.is_empty() {
                continue;
            }
            let Some(ends) = self.end_offsets().await else {
                tracing::warn!("the dead-letter topic's end offsets are unknown: the rows wait");
                self.metrics.dlq_publish_failures(to_send.len() as u64);
                self.wait(backoff).await;
                continue;
            };
            mark_attempted(client, &self.config.topic, &to_send, &ends).await?;
            let (landed, failed) = self.send(&to_send).await;
            if self.crash_after_send && !landed.is_empty() {
                tracing::error!("LIKERATE_TEST_FAULT=dead_letter_sent: aborting before the mark");
                std::process::abort();
            }
            mark_published(client, &self.config.topic, &landed).await?;
            if failed > 0 {
                tracing::warn!(
                    failed,
                    retry_in = ?*backoff,
                    "dead letters not acknowledged by the broker: they wait in the outbox"
                );
                self.metrics.dlq_publish_failures(failed as u64);
                self.wait(backoff).await;
            } else {
                *backoff = Duration::from_millis(100);
            }
        }
    }

    async fn wait(&self, backoff: &mut Duration) {
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(10));
    }

    async fn report_pending(&self, client: &Client) -> Result<(), DbError> {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM feedback_dead_letter WHERE published_at IS NULL",
                &[],
            )
            .await?
            .get(0);
        self.metrics.dead_letters_pending(n.max(0) as u64);
        Ok(())
    }

    async fn pending(&self, client: &Client) -> Result<Vec<Pending>, DbError> {
        let rows = client
            .query(
                "SELECT source_partition, source_offset, reason, detail, record_key, payload,
                        attempted_at IS NOT NULL, scan_from
                 FROM feedback_dead_letter
                 WHERE published_at IS NULL AND source_topic = $1
                 ORDER BY received_at, source_partition, source_offset
                 LIMIT $2",
                &[&self.config.topic, &ROUND],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Pending {
                partition: r.get(0),
                offset: r.get(1),
                reason: r.get(2),
                detail: r.get(3),
                key: r.get(4),
                payload: r.get::<_, Option<Vec<u8>>>(5).unwrap_or_default(),
                attempted: r.get(6),
                scan_from: r.get(7),
            })
            .collect())
    }

    /// The dead-letter topic's end offset per partition (index = partition), before a send.
    async fn end_offsets(&self) -> Option<Vec<i64>> {
        let consumer = self.reader()?;
        let topic = self.config.dlq_topic.clone();
        tokio::task::spawn_blocking(move || end_offsets(&consumer, &topic))
            .await
            .ok()
            .flatten()
    }

    /// Looks for the uncertain rows in the topic from the end offsets recorded at their
    /// attempt; None when the topic could not be read to its end.
    async fn find(&self, uncertain: &[&Pending]) -> Option<Landed> {
        let consumer = self.reader()?;
        // From the earliest recorded end offset of each partition.
        let mut from: Vec<i64> = Vec::new();
        for p in uncertain {
            for (i, o) in p.scan_from.iter().flatten().enumerate() {
                match from.get_mut(i) {
                    Some(f) => *f = (*f).min(*o),
                    None => from.push(*o),
                }
            }
        }
        let wanted: HashSet<(i32, i64)> =
            uncertain.iter().map(|p| (p.partition, p.offset)).collect();
        let dlq = self.config.dlq_topic.clone();
        let source = self.config.topic.clone();
        tokio::task::spawn_blocking(move || scan(&consumer, &dlq, &source, &from, &wanted))
            .await
            .ok()
            .flatten()
    }

    fn reader(&self) -> Option<BaseConsumer> {
        let mut c = kafka::consumer_config(&self.config);
        // A reader that assigns partitions itself and commits nothing: the group id is only
        // there because librdkafka refuses an assignment without one; it never joins it.
        c.set(
            "group.id",
            format!("{}-dead-letter-reader", self.config.group),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
        match c.create() {
            Ok(consumer) => Some(consumer),
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter topic reader");
                None
            }
        }
    }

    /// Sends a round; returns where each acknowledged letter landed and how many failed.
    async fn send(&self, letters: &[&Pending]) -> (Landed, usize) {
        let sends = letters.iter().map(|l| async move {
            let partition = l.partition.to_string();
            let offset = l.offset.to_string();
            let headers = OwnedHeaders::new_with_capacity(5)
                .insert(header(HEADER_ERROR, &l.reason))
                .insert(header(HEADER_DETAIL, &l.detail))
                .insert(header(HEADER_TOPIC, &self.config.topic))
                .insert(header(HEADER_PARTITION, &partition))
                .insert(header(HEADER_OFFSET, &offset));
            let mut record = FutureRecord::to(&self.config.dlq_topic)
                .payload(&l.payload)
                .headers(headers);
            if let Some(key) = &l.key {
                record = record.key(key);
            }
            self.producer
                .send(record, Timeout::Never)
                .await
                .map(|d| ((l.partition, l.offset), (d.partition, d.offset)))
                .map_err(|(e, _)| e)
        });
        let results = futures::future::join_all(sends).await;
        let mut landed = Landed::new();
        let mut failed = 0;
        for r in results {
            match r {
                Ok((from, to)) => {
                    landed.insert(from, to);
                }
                Err(e) => {
                    if failed == 0 {
                        tracing::warn!(error = %e, "dead letter send failed");
                    }
                    failed += 1;
                }
            }
        }
        (landed, failed)
    }
}

fn end_offsets(consumer: &BaseConsumer, topic: &str) -> Option<Vec<i64>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| tracing::warn!(error = %e, "dead-letter topic metadata"))
        .ok()?;
    let partitions = metadata.topics().first()?.partitions().len();
    (0..partitions as i32)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .ok()
                .map(|(_, high)| high)
        })
        .collect()
}

/// Reads `dlq` from `from` (per partition) to its current end and returns the source
/// coordinates in `wanted` that it found, with where; None if it could not read to the end.
fn scan(
    consumer: &BaseConsumer,
    dlq: &str,
    source: &str,
    from: &[i64],
    wanted: &HashSet<(i32, i64)>,
) -> Option<Landed> {
    let mut found = Landed::new();
    let ends = end_offsets(consumer, dlq)?;
    let mut assignment = TopicPartitionList::new();
    let mut open = HashSet::new();
    for (p, end) in ends.iter().enumerate() {
        // A partition added after the attempt is read from its start.
        let start = from.get(p).copied().unwrap_or(0);
        if start < *end {
            let _ = assignment.add_partition_offset(dlq, p as i32, Offset::Offset(start));
            open.insert(p as i32);
        }
    }
    if open.is_empty() {
        return Some(found);
    }
    if let Err(e) = consumer.assign(&assignment) {
        tracing::warn!(error = %e, "reading the dead-letter topic");
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !open.is_empty() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                if o + 1 >= ends[p as usize] {
                    open.remove(&p);
                }
                if let Some(origin) = origin(&m, source) {
                    if wanted.contains(&origin) {
                        found.insert(origin, (p, o));
                    }
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading the dead-letter topic");
                return None;
            }
            None => {}
        }
    }
    if !open.is_empty() {
        tracing::warn!(partitions = ?open, "the dead-letter topic was not read to its end in time");
        return None;
    }
    Some(found)
}

/// The source coordinates in a dead letter's headers, if it came from `source`.
fn origin(m: &rdkafka::message::BorrowedMessage<'_>, source: &str) -> Option<(i32, i64)> {
    let headers = m.headers()?;
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    if value(HEADER_TOPIC)? != source {
        return None;
    }
    Some((
        value(HEADER_PARTITION)?.parse().ok()?,
        value(HEADER_OFFSET)?.parse().ok()?,
    ))
}

async fn mark_attempted(
    client: &Client,
    topic: &str,
    rows: &[&Pending],
    ends: &[i64],
) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE feedback_dead_letter d SET attempted_at = now(), scan_from = $4
             FROM unnest($2::int4[], $3::int8[]) AS u(p, o)
             WHERE d.source_topic = $1 AND d.source_partition = u.p AND d.source_offset = u.o",
            &[
                &topic,
                &rows.iter().map(|r| r.partition).collect::<Vec<_>>(),
                &rows.iter().map(|r| r.offset).collect::<Vec<_>>(),
                &ends,
            ],
        )
        .await?;
    Ok(())
}

async fn mark_published(client: &Client, topic: &str, landed: &Landed) -> Result<(), DbError> {
    let landed: Vec<_> = landed.iter().collect();
    if landed.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "UPDATE feedback_dead_letter d
             SET published_at = now(), payload = NULL, dlq_partition = u.dlq_p, dlq_offset = u.dlq_o
             FROM unnest($2::int4[], $3::int8[], $4::int4[], $5::int8[]) AS u(p, o, dlq_p, dlq_o)
             WHERE d.source_topic = $1 AND d.source_partition = u.p AND d.source_offset = u.o",
            &[
                &topic,
                &landed.iter().map(|(k, _)| k.0).collect::<Vec<_>>(),
                &landed.iter().map(|(k, _)| k.1).collect::<Vec<_>>(),
                &landed.iter().map(|(_, v)| v.0).collect::<Vec<_>>(),
                &landed.iter().map(|(_, v)| v.1).collect::<Vec<_>>(),
            ],
        )
        .await?;
    Ok(())
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
