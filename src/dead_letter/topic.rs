//! Reading the dead-letter topic (blocking librdkafka calls: the publisher runs them in
//! `spawn_blocking`): watermarks, and the scan for the dead letters of an earlier attempt.
//!
//! A topic whose metadata carries an error (unknown, no leader) or whose watermarks cannot be
//! read is `None`, never an empty topic: taking it for empty would send again what may be
//! there already.

use super::publisher::Pending;
use super::{HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Where dead letters landed: source (partition, offset) -> dead-letter (partition, offset).
pub(super) type Landed = HashMap<(i32, i64), (i32, i64)>;

/// Bound of one metadata or watermark request.
const REQUEST: Duration = Duration::from_secs(10);
/// Longest a scan reads. Past the last record written it may still wait for another
/// producer's open transaction to end (`transaction.timeout.ms`, 60 s by default).
const SCAN: Duration = Duration::from_secs(90);

/// (low, high) watermark per partition of `topic` (index = partition), with `consumer`'s
/// isolation level (the high one is the last stable offset for a reader of committed data).
fn watermarks(consumer: &BaseConsumer, topic: &str) -> Option<Vec<(i64, i64)>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST)
        .map_err(|e| tracing::warn!(error = %e, topic, "topic metadata"))
        .ok()?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        tracing::warn!(
            topic,
            "topic metadata: the topic is missing from the answer"
        );
        return None;
    };
    if let Some(e) = meta.error() {
        tracing::warn!(error = %RDKafkaErrorCode::from(e), topic, "topic metadata");
        return None;
    }
    let mut partitions: Vec<i32> = Vec::with_capacity(meta.partitions().len());
    for p in meta.partitions() {
        if let Some(e) = p.error() {
            tracing::warn!(error = %RDKafkaErrorCode::from(e), topic, partition = p.id(), "partition metadata");
            return None;
        }
        partitions.push(p.id());
    }
    partitions.sort_unstable();
    if partitions.is_empty() || partitions.iter().zip(0..).any(|(p, i)| *p != i) {
        tracing::warn!(
            topic,
            ?partitions,
            "topic metadata: partitions are not 0..n"
        );
        return None;
    }
    partitions
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, *p, REQUEST)
                .map_err(|e| tracing::warn!(error = %e, topic, partition = p, "watermarks"))
                .ok()
        })
        .collect()
}

pub(super) fn high_watermarks(consumer: &BaseConsumer, topic: &str) -> Option<Vec<i64>> {
    Some(
        watermarks(consumer, topic)?
            .into_iter()
            .map(|(_, high)| high)
            .collect(),
    )
}

pub(super) fn low_watermarks(consumer: &BaseConsumer, topic: &str) -> Option<Vec<i64>> {
    Some(
        watermarks(consumer, topic)?
            .into_iter()
            .map(|(low, _)| low)
            .collect(),
    )
}

/// Where to start reading for `uncertain` rows: per partition, the lowest high watermark
/// recorded at their attempts.
pub(super) fn scan_start(uncertain: &[&Pending]) -> Vec<i64> {
    let mut from: Vec<i64> = Vec::new();
    for p in uncertain {
        for (i, o) in p.scan_from.iter().flatten().enumerate() {
            match from.get_mut(i) {
                Some(f) => *f = (*f).min(*o),
                None => from.push(*o),
            }
        }
    }
    from
}

/// Reads `dlq` with `reader` (committed records only) from `from` to `ends` (per partition,
/// high watermarks taken before) and returns the source coordinates in `wanted` that it
/// found, with where; None if it could not read that far in time.
pub(super) fn scan(
    reader: &BaseConsumer,
    dlq: &str,
    source: &str,
    from: &[i64],
    ends: &[i64],
    wanted: &HashSet<(i32, i64)>,
) -> Option<Landed> {
    let mut found = Landed::new();
    let mut assignment = TopicPartitionList::new();
    let mut open: HashMap<i32, i64> = HashMap::new();
    for (p, end) in ends.iter().enumerate() {
        // A partition added after the attempt is read from its start.
        let start = from.get(p).copied().unwrap_or(0);
        if start < *end {
            let _ = assignment.add_partition_offset(dlq, p as i32, Offset::Offset(start));
            open.insert(p as i32, *end);
        }
    }
    if open.is_empty() {
        return Some(found);
    }
    if let Err(e) = reader.assign(&assignment) {
        tracing::warn!(error = %e, "reading the dead-letter topic");
        return None;
    }
    let deadline = Instant::now() + SCAN;
    while !open.is_empty() && Instant::now() < deadline {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                if open.get(&p).is_some_and(|end| o + 1 >= *end) {
                    open.remove(&p);
                }
                if let Some(origin) = origin(&m, source) {
                    if wanted.contains(&origin) {
                        found.insert(origin, (p, o));
                    }
                }
            }
            // Nothing more for now (or the end, where `enable.partition.eof` is set): transaction
            // markers and aborted records take offsets but are never delivered, so the position
            // tells what is left. A partition whose last stable offset is below the end (another
            // producer's transaction still open) stays open until it moves.
            Some(Err(KafkaError::PartitionEOF(_))) | None => {
                if let Ok(positions) = reader.position() {
                    for e in positions.elements() {
                        if let (Offset::Offset(o), Some(end)) =
                            (e.offset(), open.get(&e.partition()))
                        {
                            if o >= *end {
                                open.remove(&e.partition());
                            }
                        }
                    }
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading the dead-letter topic");
                return None;
            }
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
