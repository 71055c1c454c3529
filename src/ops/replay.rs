//! `likerate dlq replay`: republishes dead letters to the feedback topic after the cause was
//! fixed (a decoder or configuration change, a database constraint lifted), once each.
//!
//! How:
//! - The dead-letter topic is read from its low to its high watermark, as they were when the
//!   command started, by a consumer with a throwaway group that assigns every partition itself
//!   and commits nothing: the command never moves anybody's position.
//! - Selected: records whose `likerate-error` header equals `--reason` (all when absent) and
//!   whose timestamp (when they were dead-lettered) is at or after `--since`.
//! - Each is identified by the coordinates of the record it came from (the
//!   `likerate-source-{topic,partition,offset}` headers; the dead-letter coordinates when those
//!   are missing). A record dead-lettered twice (a crash between the dead letter and the offset
//!   commit) is therefore one record.
//! - Once: the coordinates go into `dlq_replay` in a transaction that commits only after the
//!   broker acknowledged the republished records (acks=all, idempotent producer). A second run,
//!   or a concurrent one (it waits on the first one's insert), finds them and sends nothing.
//!   A crash between the acknowledgement and the commit can send a record twice: events that
//!   carry an `event_id` are stored once anyway.
//! - The original payload and key are sent unchanged (with a `likerate-replay-of` header naming
//!   the original coordinates); `db_rejected` dead letters carry the event as the sink saw it,
//!   re-encoded as JSON with its `event_id`.

use crate::config::{DatabaseConfig, KafkaConfig};
use crate::dead_letter::{HEADER_ERROR, HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC};
use crate::decode::Reason;
use crate::kafka;
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// The header a republished record carries: `topic/partition/offset` of the original.
pub const HEADER_REPLAY_OF: &str = "likerate-replay-of";

/// Records per transaction of `dlq_replay` rows.
const CHUNK: usize = 500;

#[derive(Args, Debug, Clone, Default)]
pub struct ReplayArgs {
    /// Replay only dead letters with this reason code (`likerate-error` header), e.g.
    /// db_rejected; all reasons when absent
    #[arg(long)]
    pub reason: Option<String>,
    /// Replay only dead letters written at or after this time: an age (7d, 12h) or an RFC 3339
    /// timestamp; all when absent
    #[arg(long)]
    pub since: Option<String>,
    /// Count what would be sent and skipped, send nothing, record nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Longest the dead-letter topic may take to read [default: 120s]
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Records read from the dead-letter topic.
    pub read: u64,
    /// Distinct original records that matched the reason and the time.
    pub matched: u64,
    /// Republished now (with `--dry-run`: would be).
    pub sent: u64,
    /// Matched but already replayed by an earlier run.
    pub skipped: u64,
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct Letter {
    pub source: (String, i32, i64),
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub timestamp: Option<DateTime<Utc>>,
}

pub async fn replay(
    kafka: &KafkaConfig,
    db: &DatabaseConfig,
    args: &ReplayArgs,
) -> anyhow::Result<ReplaySummary> {
    if let Some(code) = &args.reason {
        if Reason::from_code(code).is_none() {
            let known: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
            bail!("--reason: {code:?} is not one of {}", known.join(", "));
        }
    }
    let since = args
        .since
        .as_deref()
        .map(|s| super::parse_since(s, Utc::now()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;

    let target = crate::db::Target::new(db)?;
    target.ensure_database().await?;
    let mut client = target.connect().await?;
    crate::db::migrate(&mut client).await?;

    let config = kafka.clone();
    let timeout = args.read_timeout;
    let letters = tokio::task::spawn_blocking(move || read_all(&config, timeout))
        .await
        .context("dead-letter reader")??;
    let mut summary = ReplaySummary {
        read: letters.len() as u64,
        ..ReplaySummary::default()
    };
    let mut seen = HashSet::new();
    let selected: Vec<Letter> = letters
        .into_iter()
        .filter(|l| args.reason.as_ref().is_none_or(|r| *r == l.reason))
        .filter(|l| since.is_none_or(|s| l.timestamp.is_some_and(|t| t >= s)))
        .filter(|l| seen.insert(l.source.clone()))
        .collect();
    summary.matched = selected.len() as u64;

    let producer: Option<FutureProducer> = if args.dry_run {
        None
    } else {
        Some(
            kafka::producer_config(kafka)
                .create()
                .context("creating the producer")?,
        )
    };
    for chunk in selected.chunks(CHUNK) {
        let topics: Vec<&str> = chunk.iter().map(|l| l.source.0.as_str()).collect();
        let partitions: Vec<i32> = chunk.iter().map(|l| l.source.1).collect();
        let offsets: Vec<i64> = chunk.iter().map(|l| l.source.2).collect();
        let reasons: Vec<&str> = chunk.iter().map(|l| l.reason.as_str()).collect();
        let Some(producer) = &producer else {
            let done: HashSet<(String, i32, i64)> = client
                .query(
                    "SELECT source_topic, source_partition, source_offset FROM dlq_replay
                     JOIN unnest($1::text[], $2::int4[], $3::int8[]) AS k(t, p, o)
                       ON (source_topic, source_partition, source_offset) = (k.t, k.p, k.o)",
                    &[&topics, &partitions, &offsets],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            summary.skipped += done.len() as u64;
            summary.sent += (chunk.len() - done.len()) as u64;
            continue;
        };
        let tx = client.transaction().await?;
        let fresh: HashSet<(String, i32, i64)> = tx
            .query(
                "INSERT INTO dlq_replay (source_topic, source_partition, source_offset, reason)
                 SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::text[])
                 ON CONFLICT DO NOTHING
                 RETURNING source_topic, source_partition, source_offset",
                &[&topics, &partitions, &offsets, &reasons],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let to_send: Vec<&Letter> = chunk.iter().filter(|l| fresh.contains(&l.source)).collect();
        let sends = to_send.iter().map(|l| send(producer, &kafka.topic, l));
        let failed: Vec<String> = futures::future::join_all(sends)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if let Some(first) = failed.first() {
            // Rolled back: none of this chunk counts as replayed; a rerun sends it again.
            drop(tx);
            bail!(
                "{} of {} records not acknowledged by the broker ({first}); \
                 {} sent before this chunk; run the replay again",
                failed.len(),
                to_send.len(),
                summary.sent
            );
        }
        tx.commit().await?;
        summary.sent += to_send.len() as u64;
        summary.skipped += (chunk.len() - to_send.len()) as u64;
    }
    Ok(summary)
}

async fn send(producer: &FutureProducer, topic: &str, letter: &Letter) -> Result<(), String> {
    let (t, p, o) = &letter.source;
    let replay_of = format!("{t}/{p}/{o}");
    let headers = OwnedHeaders::new().insert(Header {
        key: HEADER_REPLAY_OF,
        value: Some(replay_of.as_str()),
    });
    let mut record = FutureRecord::to(topic)
        .payload(&letter.payload)
        .headers(headers);
    if let Some(key) = &letter.key {
        record = record.key(key);
    }
    producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}

/// Every record of the dead-letter topic up to the high watermarks of now.
pub fn read_all(kafka: &KafkaConfig, timeout: Duration) -> anyhow::Result<Vec<Letter>> {
    let topic = &kafka.dlq_topic;
    let group = format!("likerate-dlq-replay-{}", uuid::Uuid::new_v4());
    let consumer: BaseConsumer = kafka::dead_letter_reader_config(kafka, &group)
        .create()
        .context("creating the consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .with_context(|| format!("metadata of {topic}"))?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("dead-letter topic {topic} not found");
    };
    if let Some(e) = meta.error() {
        bail!(
            "dead-letter topic {topic}: {}",
            rdkafka::types::RDKafkaErrorCode::from(e)
        );
    }
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in meta.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(30))
            .with_context(|| format!("watermarks of {topic}/{}", p.id()))?;
        if high > low {
            assignment.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
            ends.insert(p.id(), high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            bail!("reading {topic} took longer than {timeout:?}; partitions left: {ends:?}");
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let partition = m.partition();
                let Some(&end) = ends.get(&partition) else {
                    continue;
                };
                if m.offset() >= end {
                    ends.remove(&partition);
                    continue;
                }
                out.push(letter_of(&m, topic));
                if m.offset() + 1 >= end {
                    ends.remove(&partition);
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "dead-letter read error"),
            None => {
                // Gaps (compaction, transaction markers): the position tells what is left.
                if let Ok(positions) = consumer.position() {
                    for e in positions.elements() {
                        if let (Offset::Offset(o), Some(&end)) =
                            (e.offset(), ends.get(&e.partition()))
                        {
                            if o >= end {
                                ends.remove(&e.partition());
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn letter_of(m: &rdkafka::message::BorrowedMessage<'_>, dlq_topic: &str) -> Letter {
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            if let Some(v) = header.value {
                headers.insert(header.key, String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    let source = match (
        headers.get(HEADER_TOPIC),
        headers.get(HEADER_PARTITION).and_then(|p| p.parse().ok()),
        headers.get(HEADER_OFFSET).and_then(|o| o.parse().ok()),
    ) {
        (Some(t), Some(p), Some(o)) => (t.clone(), p, o),
        _ => (dlq_topic.to_owned(), m.partition(), m.offset()),
    };
    Letter {
        source,
        reason: headers.get(HEADER_ERROR).cloned().unwrap_or_default(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().unwrap_or_default().to_vec(),
        timestamp: m
            .timestamp()
            .to_millis()
            .and_then(DateTime::from_timestamp_millis),
    }
}
