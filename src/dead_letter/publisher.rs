//! The outbox publisher: moves each row of `feedback_dead_letter` to the dead-letter topic once,
//! whatever point a crash, a lost database session or a failed send hits.
//!
//! - **One publisher per queue.** The queue is the rows of one source topic. Its publisher holds
//!   the session advisory lock ([`PUBLISHER_LOCK`], `hashtext(source topic)`), released when its
//!   connection ends; the other instances wait for it. Deployments that share a database with
//!   other source topics have locks of their own.
//! - **Fencing.** The producer is transactional, with one `transactional.id` per queue
//!   (the database's identity, `likerate_identity`, and the source topic). A publisher that
//!   takes the lock starts its producer (`init_transactions`) before anything else: Kafka then
//!   aborts the open transaction of the one before it, which may still be alive after losing
//!   its session, and refuses its later sends. Every send is preceded by a write on the
//!   lock-holding session, so only the current holder can write.
//! - **A round** of up to 200 rows: marked attempted, with the topic's high watermark per
//!   partition, in a committed statement; sent in one Kafka transaction; committed; then marked
//!   published (payload, key and detail dropped). A send that fails (a timeout whose record may
//!   still reach the broker included) aborts the transaction, so none of its records is ever
//!   visible to a reader of committed data.
//! - **Uncertain rows** (attempted, not published: a crash after the commit, an aborted or
//!   unknown outcome) are looked for in the topic before they are sent again, reading only
//!   committed records from the recorded watermarks up to the current high watermark, after
//!   this producer's `init_transactions` settled every earlier transaction of the queue. Found
//!   ones are only marked. If the topic cannot be read that far the rows wait.
//! - **Refusals.** A record the topic refuses for good (too large for `max.message.bytes`,
//!   invalid) is marked refused when the refusal was its own: it was alone in its transaction,
//!   or librdkafka refused it before it left (the transaction then commits the rest). A broker
//!   refusal in a round of several (Kafka refuses a whole producer batch) is sent again alone.
//!   Rows are taken never-tried first, then tried longest ago, so none holds the others back.
//! - **Purge.** Published rows whose source offset is below the source partition's low
//!   watermark are deleted (checked every hour): no re-read of the topic can reach them.
//! - Every database call is bounded by `LIKERATE_DATABASE_TIMEOUT`; a hung backend ends the
//!   session and the publisher reconnects.

use super::topic::{self, Landed};
use super::{HEADER_DETAIL, HEADER_ERROR, HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC};
use crate::config::KafkaConfig;
use crate::db::{self, DbError, Target};
use crate::kafka;
use crate::telemetry::Metrics;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use std::collections::{BTreeSet, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// The class of the advisory lock the publisher of a queue holds ("dl" + 4 in ASCII, beside
/// erasure's); the second key is `hashtext(source topic)`.
pub const PUBLISHER_LOCK: i32 = 1_684_799_540;
/// Rows per send round: dead letters are rare, a round is short.
const ROUND: i64 = 200;
/// How often an idle publisher looks for new rows, and a standby for the lock.
const IDLE: Duration = Duration::from_millis(500);
const STANDBY: Duration = Duration::from_secs(5);
/// Bound of `init_transactions`, `commit_transaction` and `abort_transaction`: librdkafka's
/// `transaction.timeout.ms` is 60 s, and a round's sends (`message.timeout.ms`, 30 s) come
/// before the commit.
const TRANSACTION_CALL: Duration = Duration::from_secs(60);
/// How often published rows are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Rows per purge statement.
const PURGE_BATCH: i64 = 5000;
/// How long [`Fault::StallBeforeSend`] stalls.
const STALL: Duration = Duration::from_secs(30);

/// Test-only fault points (`LIKERATE_TEST_FAULT`, `src/app.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// `dead_letter_sent`: the process aborts after a round's transaction committed and before
    /// the rows are marked published, the worst moment for a crash.
    CrashAfterCommit,
    /// `dead_letter_stall`: the publisher stalls for 30 s after it marked a round attempted and
    /// began its transaction, before the sends: a publisher whose session is lost while a round
    /// is in flight, and that sends once another has taken over.
    StallBeforeSend,
}

/// Why the publisher stopped: only a configuration error stops it; the rest is retried.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("dead-letter producer: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Database(#[from] DbError),
}

/// The outbox publisher: runs until the shutdown, retrying while PostgreSQL or the dead-letter
/// topic is unavailable.
pub async fn run(
    target: Target,
    config: KafkaConfig,
    metrics: Metrics,
    fault: Fault,
    shutdown: CancellationToken,
) -> Result<(), PublishError> {
    // A property librdkafka refuses stops the task at start, not at the first dead letter.
    drop(kafka::transactional_producer_config(&config, "likerate-check").create::<BaseProducer>()?);
    let publisher = Publisher {
        timeout: target.timeout(),
        config,
        metrics,
        fault,
    };
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let session = async {
            let client = db::within(publisher.timeout, target.connect()).await?;
            publisher.session(&client, &mut backoff).await
        };
        let error = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = session => match r {
                Ok(never) => match never {},
                Err(e @ (PublishError::Database(DbError::Fatal(_)) | PublishError::Kafka(_))) => return Err(e),
                Err(PublishError::Database(e)) => e,
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
pub(super) struct Pending {
    pub(super) partition: i32,
    pub(super) offset: i64,
    reason: String,
    detail: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    attempted: bool,
    pub(super) scan_from: Option<Vec<i64>>,
}

impl Pending {
    fn coordinates(&self) -> (i32, i64) {
        (self.partition, self.offset)
    }
}

/// How a round's transaction ended.
enum Outcome {
    /// Committed: every record delivered is in the topic.
    Committed,
    /// Aborted: none is.
    Aborted,
    /// Not known (a commit or abort that failed or timed out): the producer is replaced, whose
    /// `init_transactions` settles it before the rows are looked for.
    Unknown,
}

/// The transactional producer, dropped off the runtime: librdkafka purges and flushes for up
/// to half a second when a producer goes.
struct Transactional(Option<FutureProducer>);

impl Transactional {
    fn get(&self) -> Option<&FutureProducer> {
        self.0.as_ref()
    }

    fn replace(&mut self, producer: Option<FutureProducer>) {
        if let Some(old) = std::mem::replace(&mut self.0, producer) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || drop(old))),
                Err(_) => drop(old),
            }
        }
    }
}

impl Drop for Transactional {
    fn drop(&mut self) {
        self.replace(None);
    }
}

struct Publisher {
    config: KafkaConfig,
    metrics: Metrics,
    fault: Fault,
    timeout: Duration,
}

impl Publisher {
    /// A database call bounded by the database timeout.
    async fn db<T>(
        &self,
        call: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        db::within(self.timeout, async { Ok(call.await?) }).await
    }

    /// One database session: wait for the lock, then publish until an error.
    async fn session(
        &self,
        client: &Client,
        backoff: &mut Duration,
    ) -> Result<Infallible, PublishError> {
        loop {
            self.report_pending(client).await?;
            let held: bool = self
                .db(client.query_one(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))",
                    &[&PUBLISHER_LOCK, &self.config.topic],
                ))
                .await?
                .get(0);
            if held {
                break;
            }
            tokio::time::sleep(STANDBY).await;
        }
        let identity: uuid::Uuid = self
            .db(client.query_one("SELECT id FROM likerate_identity", &[]))
            .await?
            .get(0);
        // One id per queue, the same for every instance: ':' is not allowed in topic names.
        let transactional_id = format!("likerate-dead-letters:{identity}:{}", self.config.topic);
        let mut producer = Transactional(None);
        // Rows a broker refused in a round of several: each is sent alone next.
        let mut suspects: BTreeSet<(i32, i64)> = BTreeSet::new();
        let mut purged: Option<Instant> = None;
        loop {
            self.report_pending(client).await?;
            if purged.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                self.purge(client).await?;
                purged = Some(Instant::now());
            }
            if producer.get().is_none() {
                match self.start(&transactional_id).await? {
                    Some(p) => producer.replace(Some(p)),
                    None => {
                        self.metrics.dlq_publish_failures(1);
                        self.wait(backoff).await;
                        continue;
                    }
                }
            }
            let pending = match suspects.pop_first() {
                Some(row) => self.pending(client, Some(row)).await?,
                None => self.pending(client, None).await?,
            };
            if pending.is_empty() {
                *backoff = Duration::from_millis(100);
                tokio::time::sleep(IDLE).await;
                continue;
            }
            // Rows a crash or a failed round may have put in the topic already.
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
                self.mark_published(client, &found).await?;
            }
            let to_send: Vec<&Pending> = pending
                .iter()
                .filter(|p| !found.contains_key(&p.coordinates()))
                .collect();
            if to_send.is_empty() {
                continue;
            }
            let Some(ends) = self.high_watermarks().await else {
                tracing::warn!("the dead-letter topic's end offsets are unknown: the rows wait");
                self.metrics.dlq_publish_failures(to_send.len() as u64);
                self.wait(backoff).await;
                continue;
            };
            self.mark_attempted(client, &to_send, &ends).await?;
            let Some(current) = producer.get() else {
                continue;
            };
            let (results, outcome) = self.round(current, &to_send).await;
            if matches!(outcome, Outcome::Unknown) {
                producer.replace(None);
            }
            let committed = matches!(outcome, Outcome::Committed);
            let mut landed = Landed::new();
            let mut refused = Vec::new();
            // Failures that may pass: the publisher backs off before the next round.
            let mut transient = 0;
            for (row, result) in to_send.iter().zip(results) {
                match result {
                    Ok(at) if committed => {
                        landed.insert(row.coordinates(), at);
                    }
                    // Aborted with its round: sent again.
                    Ok(_) => {}
                    Err(e) if refusal(&e) => {
                        // Its own refusal when it was alone, or when the transaction still
                        // committed (librdkafka refused it before it left; a broker's refusal
                        // makes the transaction abortable).
                        if to_send.len() == 1 || committed {
                            refused.push((row.coordinates(), e.to_string()));
                        } else {
                            suspects.insert(row.coordinates());
                        }
                    }
                    Err(e) => {
                        if transient == 0 {
                            tracing::warn!(error = %e, "dead letter send failed");
                        }
                        transient += 1;
                    }
                }
            }
            if committed && !landed.is_empty() {
                if self.fault == Fault::CrashAfterCommit {
                    tracing::error!(
                        "LIKERATE_TEST_FAULT=dead_letter_sent: aborting before the mark"
                    );
                    std::process::abort();
                }
                self.mark_published(client, &landed).await?;
            }
            if !refused.is_empty() {
                self.mark_refused(client, &refused).await?;
            }
            let unpublished = to_send.len() - landed.len();
            if unpublished > 0 {
                tracing::warn!(
                    unpublished,
                    refused = refused.len(),
                    to_send_alone = suspects.len(),
                    "dead letters of a round not published: they wait in the outbox"
                );
                self.metrics.dlq_publish_failures(unpublished as u64);
            }
            if transient > 0 || matches!(outcome, Outcome::Unknown) {
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

    /// A new transactional producer, started (`init_transactions`: the queue's earlier
    /// transactions are settled and their producers fenced). None, with a warning, when Kafka
    /// did not answer in time or refused (its transaction coordinator unavailable, the
    /// `transactional.id` not authorized).
    async fn start(&self, transactional_id: &str) -> Result<Option<FutureProducer>, KafkaError> {
        let mut producer = Transactional(Some(
            kafka::transactional_producer_config(&self.config, transactional_id).create()?,
        ));
        let Some(p) = producer.get() else {
            return Ok(None);
        };
        match blocking(p, |p| p.init_transactions(TRANSACTION_CALL)).await {
            Ok(()) => {
                tracing::info!(transactional_id, "dead-letter publisher started");
                Ok(producer.0.take())
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter producer: transactions not started");
                Ok(None)
            }
        }
    }

    /// Sends `rows` in one transaction; returns each row's delivery and how the transaction
    /// ended.
    async fn round(
        &self,
        producer: &FutureProducer,
        rows: &[&Pending],
    ) -> (Vec<Result<(i32, i64), KafkaError>>, Outcome) {
        if let Err(e) = blocking(producer, |p| p.begin_transaction()).await {
            tracing::warn!(error = %e, "dead-letter transaction not begun");
            let results = rows.iter().map(|_| Err(e.clone())).collect();
            return (results, Outcome::Unknown);
        }
        if self.fault == Fault::StallBeforeSend {
            tracing::warn!("LIKERATE_TEST_FAULT=dead_letter_stall: stalling before the sends");
            tokio::time::sleep(STALL).await;
        }
        let results = self.send(producer, rows).await;
        let outcome = match blocking(producer, |p| p.commit_transaction(TRANSACTION_CALL)).await {
            Ok(()) => Outcome::Committed,
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                match blocking(producer, |p| p.abort_transaction(TRANSACTION_CALL)).await {
                    Ok(()) => Outcome::Aborted,
                    Err(e) => {
                        tracing::warn!(error = %e, "dead-letter transaction: abort failed");
                        Outcome::Unknown
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter transaction: commit failed");
                Outcome::Unknown
            }
        };
        (results, outcome)
    }

    /// Sends one round; where each record landed, or why not.
    async fn send(
        &self,
        producer: &FutureProducer,
        rows: &[&Pending],
    ) -> Vec<Result<(i32, i64), KafkaError>> {
        let sends = rows.iter().map(|row| async move {
            let partition = row.partition.to_string();
            let offset = row.offset.to_string();
            let headers = OwnedHeaders::new_with_capacity(5)
                .insert(header(HEADER_ERROR, &row.reason))
                .insert(header(HEADER_DETAIL, &row.detail))
                .insert(header(HEADER_TOPIC, &self.config.topic))
                .insert(header(HEADER_PARTITION, &partition))
                .insert(header(HEADER_OFFSET, &offset));
            let mut record = FutureRecord::to(&self.config.dlq_topic)
                .payload(&row.payload)
                .headers(headers);
            if let Some(key) = &row.key {
                record = record.key(key);
            }
            producer
                .send(record, Timeout::Never)
                .await
                .map(|d| (d.partition, d.offset))
                .map_err(|(e, _)| e)
        });
        futures::future::join_all(sends).await
    }

    async fn report_pending(&self, client: &Client) -> Result<(), DbError> {
        let row = self
            .db(client.query_one(
                "SELECT
                   (SELECT count(*) FROM feedback_dead_letter
                    WHERE source_topic = $1 AND published_at IS NULL AND refused_at IS NULL),
                   (SELECT count(*) FROM feedback_dead_letter
                    WHERE source_topic = $1 AND published_at IS NULL AND refused_at IS NOT NULL)",
                &[&self.config.topic],
            ))
            .await?;
        self.metrics
            .dead_letters_pending(row.get::<_, i64>(0).max(0) as u64);
        self.metrics
            .dead_letters_refused(row.get::<_, i64>(1).max(0) as u64);
        Ok(())
    }

    /// The next round: the rows never tried first, then those tried longest ago; or only
    /// `row`, when it is to be sent alone.
    async fn pending(
        &self,
        client: &Client,
        row: Option<(i32, i64)>,
    ) -> Result<Vec<Pending>, DbError> {
        let rows = self
            .db(client.query(
                "SELECT source_partition, source_offset, reason, detail, record_key, payload,
                        attempted_at IS NOT NULL, scan_from
                 FROM feedback_dead_letter
                 WHERE source_topic = $1 AND published_at IS NULL AND refused_at IS NULL
                   AND ($3::int4 IS NULL OR (source_partition, source_offset) = ($3, $4))
                 ORDER BY attempted_at NULLS FIRST, received_at, source_partition, source_offset
                 LIMIT $2",
                &[
                    &self.config.topic,
                    &ROUND,
                    &row.map(|r| r.0),
                    &row.map(|r| r.1),
                ],
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|r| Pending {
                partition: r.get(0),
                offset: r.get(1),
                reason: r.get(2),
                detail: r.get::<_, Option<String>>(3).unwrap_or_default(),
                key: r.get(4),
                payload: r.get::<_, Option<Vec<u8>>>(5).unwrap_or_default(),
                attempted: r.get(6),
                scan_from: r.get(7),
            })
            .collect())
    }

    /// A client for watermarks: the high watermark, not the last stable offset, so that a
    /// scan ends only past every record written, committed or still open.
    fn probe(&self) -> Option<BaseConsumer> {
        let mut c = kafka::dead_letter_reader_config(&self.config, &self.reader_group());
        c.set("isolation.level", "read_uncommitted");
        created(c)
    }

    /// A reader of committed records: a record of an aborted transaction was never published.
    fn reader(&self) -> Option<BaseConsumer> {
        created(kafka::dead_letter_reader_config(
            &self.config,
            &self.reader_group(),
        ))
    }

    fn reader_group(&self) -> String {
        format!("{}-dead-letter-reader", self.config.group)
    }

    /// The dead-letter topic's high watermark per partition (index = partition).
    async fn high_watermarks(&self) -> Option<Vec<i64>> {
        let probe = self.probe()?;
        let dlq = self.config.dlq_topic.clone();
        tokio::task::spawn_blocking(move || topic::high_watermarks(&probe, &dlq))
            .await
            .ok()
            .flatten()
    }

    /// Looks for the uncertain rows in the topic from the watermarks recorded at their
    /// attempt; None when the topic could not be read to its end.
    async fn find(&self, uncertain: &[&Pending]) -> Option<Landed> {
        let probe = self.probe()?;
        let reader = self.reader()?;
        let from = topic::scan_start(uncertain);
        let wanted: HashSet<(i32, i64)> = uncertain.iter().map(|p| p.coordinates()).collect();
        let dlq = self.config.dlq_topic.clone();
        let source = self.config.topic.clone();
        tokio::task::spawn_blocking(move || {
            let ends = topic::high_watermarks(&probe, &dlq)?;
            topic::scan(&reader, &dlq, &source, &from, &ends, &wanted)
        })
        .await
        .ok()
        .flatten()
    }

    async fn mark_attempted(
        &self,
        client: &Client,
        rows: &[&Pending],
        ends: &[i64],
    ) -> Result<(), DbError> {
        self.db(client.execute(
            "UPDATE feedback_dead_letter d SET attempted_at = now(), scan_from = $4
             FROM unnest($2::int4[], $3::int8[]) AS u(p, o)
             WHERE d.source_topic = $1 AND d.source_partition = u.p AND d.source_offset = u.o",
            &[
                &self.config.topic,
                &rows.iter().map(|r| r.partition).collect::<Vec<_>>(),
                &rows.iter().map(|r| r.offset).collect::<Vec<_>>(),
                &ends,
            ],
        ))
        .await?;
        Ok(())
    }

    /// Marks rows published, with where they landed; what may be user text goes.
    async fn mark_published(&self, client: &Client, landed: &Landed) -> Result<(), DbError> {
        let landed: Vec<_> = landed.iter().collect();
        self.db(client.execute(
            "UPDATE feedback_dead_letter d
             SET published_at = now(), dlq_partition = u.dlq_p, dlq_offset = u.dlq_o,
                 payload = NULL, record_key = NULL, detail = NULL
             FROM unnest($2::int4[], $3::int8[], $4::int4[], $5::int8[]) AS u(p, o, dlq_p, dlq_o)
             WHERE d.source_topic = $1 AND d.source_partition = u.p AND d.source_offset = u.o",
            &[
                &self.config.topic,
                &landed.iter().map(|(k, _)| k.0).collect::<Vec<_>>(),
                &landed.iter().map(|(k, _)| k.1).collect::<Vec<_>>(),
                &landed.iter().map(|(_, v)| v.0).collect::<Vec<_>>(),
                &landed.iter().map(|(_, v)| v.1).collect::<Vec<_>>(),
            ],
        ))
        .await?;
        Ok(())
    }

    /// Sets rows aside that the topic refused for good, with the reason, for a person.
    async fn mark_refused(
        &self,
        client: &Client,
        refused: &[((i32, i64), String)],
    ) -> Result<(), DbError> {
        for ((partition, offset), why) in refused {
            tracing::error!(
                partition,
                offset,
                error = %why,
                "the dead-letter topic refused a dead letter for good: it stays in the outbox, refused"
            );
        }
        self.db(client.execute(
            "UPDATE feedback_dead_letter d SET refused_at = now(), refusal = u.why
             FROM unnest($2::int4[], $3::int8[], $4::text[]) AS u(p, o, why)
             WHERE d.source_topic = $1 AND d.source_partition = u.p AND d.source_offset = u.o",
            &[
                &self.config.topic,
                &refused.iter().map(|(k, _)| k.0).collect::<Vec<_>>(),
                &refused.iter().map(|(k, _)| k.1).collect::<Vec<_>>(),
                &refused
                    .iter()
                    .map(|(_, why)| super::sanitize(why))
                    .collect::<Vec<_>>(),
            ],
        ))
        .await?;
        Ok(())
    }

    /// Deletes the published rows whose source offset is below its partition's low watermark:
    /// Kafka can no longer deliver that record, so no re-read can dead-letter it again. Waits
    /// for the next pass when the source topic's watermarks are unknown.
    async fn purge(&self, client: &Client) -> Result<(), DbError> {
        let Some(probe) = self.probe() else {
            return Ok(());
        };
        let source = self.config.topic.clone();
        let lows = tokio::task::spawn_blocking(move || topic::low_watermarks(&probe, &source))
            .await
            .ok()
            .flatten();
        let Some(lows) = lows else {
            return Ok(());
        };
        let partitions: Vec<i32> = (0..lows.len() as i32).collect();
        let mut deleted = 0;
        loop {
            let n = self
                .db(client.execute(
                    "DELETE FROM feedback_dead_letter WHERE ctid IN (
                       SELECT d.ctid FROM feedback_dead_letter d
                       JOIN unnest($2::int4[], $3::int8[]) AS u(p, low)
                         ON d.source_partition = u.p AND d.source_offset < u.low
                       WHERE d.source_topic = $1 AND d.published_at IS NOT NULL
                       LIMIT $4)",
                    &[&self.config.topic, &partitions, &lows, &PURGE_BATCH],
                ))
                .await?;
            deleted += n;
            if n < PURGE_BATCH as u64 {
                break;
            }
        }
        if deleted > 0 {
            tracing::info!(
                deleted,
                "published dead letters purged: their source records are gone from the topic"
            );
        }
        Ok(())
    }
}

/// A size or format refusal: sending the same record again cannot succeed.
fn refusal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// A blocking librdkafka call on the producer, off the runtime.
async fn blocking<T: Send + 'static>(
    producer: &FutureProducer,
    call: impl FnOnce(&FutureProducer) -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    let producer = producer.clone();
    // A call that panicked is an outcome not known, like one that failed.
    tokio::task::spawn_blocking(move || call(&producer))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

fn created(c: rdkafka::ClientConfig) -> Option<BaseConsumer> {
    match c.create() {
        Ok(consumer) => Some(consumer),
        Err(e) => {
            tracing::warn!(error = %e, "dead-letter topic reader");
            None
        }
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
