//! One lane of the sink: a connection of its own that writes one batch at a time, retries
//! while the database is unavailable, and isolates the rows it refuses as data.

use super::sql::Conn;
use super::transaction::{write, Aggregates, Row};
use super::{SinkError, Written};
use crate::db::{self, DbError, Target};
use crate::dead_letter::{self, DeadLetter};
use crate::decode::{DecodeError, Reason};
use crate::event::{Coordinates, FeedbackEvent, Rating};
use crate::source::{Ack, Batch, Payload, Rejected};
use crate::telemetry::Metrics;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One connection's worth of the sink: writes one batch at a time.
pub(super) struct Lane {
    pub(super) target: Target,
    pub(super) conn: Option<Conn>,
    pub(super) topic: String,
    pub(super) metrics: Metrics,
    pub(super) timeout: Duration,
    /// `LIKERATE_RETENTION_ROWS`: events older than this are refused as erased.
    pub(super) keep_rows: Option<Duration>,
}

impl Lane {
    /// Writes one part; gives the lane (number `i`) back with the part's batch number and
    /// acknowledgement.
    pub(super) async fn write_batch(
        mut self,
        i: usize,
        seq: u64,
        mut part: Batch,
    ) -> (usize, Lane, u64, Result<Ack, SinkError>) {
        let result = if part.is_empty() {
            Ok(())
        } else {
            self.process(&part).await
        };
        (i, self, seq, result.map(|()| part.ack()))
    }

    async fn process(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let mut rows = Vec::with_capacity(batch.records.len());
        let mut letters = Vec::new();
        let mut seen = HashSet::with_capacity(batch.records.len());
        let mut in_batch_duplicates = 0;
        // Rows older than LIKERATE_RETENTION_ROWS would be deleted by the next retention pass:
        // a replay must not bring them back.
        let horizon = self
            .keep_rows
            .and_then(|age| chrono::Duration::from_std(age).ok())
            .and_then(|age| chrono::Utc::now().checked_sub_signed(age));
        let mut too_old = 0;
        for r in &batch.records {
            match &r.payload {
                Payload::Event(event) if horizon.is_some_and(|h| event.created_at < h) => {
                    too_old += 1;
                }
                Payload::Event(event) => {
                    if seen.insert(event.event_id) {
                        rows.push(Row {
                            event,
                            coords: r.coords,
                        });
                    } else {
                        in_batch_duplicates += 1;
                    }
                }
                Payload::Rejected(rejected) => letters.push(DeadLetter {
                    rejected,
                    partition: r.coords.partition,
                    offset: r.coords.offset,
                }),
            }
        }
        let (written, refused) = self.store(rows).await?;
        // The rows the database refused become dead letters too; all of them are durable in
        // the outbox before the batch is acknowledged (crate::dead_letter).
        let refused: Vec<(Rejected, Coordinates)> = refused
            .into_iter()
            .map(|(row, detail)| (refused_letter(row.event, detail), row.coords))
            .collect();
        letters.extend(refused.iter().map(|(rejected, c)| DeadLetter {
            rejected,
            partition: c.partition,
            offset: c.offset,
        }));
        if !letters.is_empty() {
            // One id for every attempt at this batch's dead letters: a retry after a commit
            // whose answer was lost counts what that commit stored (crate::dead_letter).
            self.with_retry(Work::Letters(&letters, Uuid::new_v4()))
                .await
                .map_err(|e| SinkError::Fatal(e.to_string()))?;
        }
        self.metrics.event("stored", written.stored);
        self.metrics.event("erased", written.erased + too_old);
        self.metrics
            .event("duplicate", written.duplicates + in_batch_duplicates);
        Ok(())
    }

    /// Writes the rows, isolating any row PostgreSQL refuses as data. Returns what was written
    /// and the refused rows with the server's reason.
    async fn store<'a>(
        &mut self,
        rows: Vec<Row<'a>>,
    ) -> Result<(Written, Vec<(Row<'a>, String)>), SinkError> {
        let mut written = Written::default();
        let mut refused = Vec::new();
        let mut stack = vec![rows];
        while let Some(chunk) = stack.pop() {
            if chunk.is_empty() {
                continue;
            }
            match self.with_retry(Work::Rows(&chunk)).await {
                Ok(w) => written += w,
                Err(DbError::Data(detail)) if chunk.len() == 1 => {
                    tracing::warn!(event_id = %chunk[0].event.event_id, %detail, "row refused by the database: dead-lettered");
                    refused.push((chunk[0], detail));
                }
                Err(DbError::Data(detail)) => {
                    tracing::warn!(rows = chunk.len(), %detail, "batch refused as data: splitting to isolate the row");
                    let mut first = chunk;
                    let second = first.split_off(first.len() / 2);
                    stack.push(second);
                    stack.push(first);
                }
                Err(e) => return Err(SinkError::Fatal(e.to_string())),
            }
        }
        Ok((written, refused))
    }

    /// One transaction for the rows or the dead letters, retried while the database is
    /// unavailable.
    async fn with_retry(&mut self, work: Work<'_, '_>) -> Result<Written, DbError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = async {
                let conn = match &mut self.conn {
                    Some(conn) => conn,
                    None => self.conn.insert(Conn::open(&self.target).await?),
                };
                match work {
                    Work::Rows(rows) => {
                        let started = Instant::now();
                        let outcome = write(conn, &self.topic, rows, Aggregates::Maintain).await?;
                        self.metrics
                            .batch_written(started.elapsed().as_secs_f64(), rows.len());
                        let inserted = outcome.inserted;
                        record_votes(&self.metrics, rows, &inserted);
                        Ok::<_, DbError>(Written {
                            stored: inserted.len() as u64,
                            duplicates: (rows.len() - inserted.len() - outcome.erased) as u64,
                            erased: outcome.erased as u64,
                        })
                    }
                    Work::Letters(letters, batch) => {
                        dead_letter::record(
                            &mut conn.client,
                            &self.topic,
                            letters,
                            batch,
                            &self.metrics,
                        )
                        .await?;
                        Ok(Written::default())
                    }
                }
            };
            let error = match db::within(self.timeout, attempt).await {
                Ok(written) => return Ok(written),
                Err(DbError::Unavailable(e)) => e,
                Err(other) => return Err(other),
            };
            // The connection may be mid-transaction or dead: never reuse it.
            self.conn = None;
            self.metrics.db_retry();
            tracing::warn!(error = %error, retry_in = ?backoff, "database unavailable: batch will be retried");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Counts the newly stored votes per subject and rating (`likerate_votes_total`), and the
/// dislikes among them per subject and reason (`likerate_dislike_reasons_total`).
fn record_votes(metrics: &Metrics, rows: &[Row<'_>], inserted: &HashSet<Uuid>) {
    let mut counts: HashMap<(&str, Rating), u64> = HashMap::new();
    let mut reasons: HashMap<(&str, Option<&str>), u64> = HashMap::new();
    for r in rows.iter().filter(|r| inserted.contains(&r.event.event_id)) {
        let subject = r.event.subject_id.as_str();
        *counts.entry((subject, r.event.rating)).or_default() += 1;
        if r.event.rating == Rating::Dislike {
            let reason = r.event.reason.as_ref().map(|t| t.as_str());
            *reasons.entry((subject, reason)).or_default() += 1;
        }
    }
    for ((subject, rating), n) in counts {
        metrics.vote(subject, rating, n);
    }
    for ((subject, reason), n) in reasons {
        metrics.dislike_reason(subject, reason, n);
    }
}

/// What one transaction of a lane writes.
#[derive(Clone, Copy)]
enum Work<'a, 'b> {
    Rows(&'b [Row<'a>]),
    /// With the id of the batch's attempts ([`dead_letter::record`]).
    Letters(&'b [DeadLetter<'a>], Uuid),
}

/// A dead letter for an event the database refused. The decoded event is re-encoded as JSON:
/// the original bytes are not kept for valid events (that would copy every payload), and the
/// re-encoding carries every field the event had.
fn refused_letter(event: &FeedbackEvent, detail: String) -> Rejected {
    let json = serde_json::json!({
        "event_id": event.event_id,
        "subject_id": event.subject_id.as_str(),
        "assistant_message": event.assistant_message.as_str(),
        "user_question": event.user_question.as_ref().map(|t| t.as_str()),
        "rating": event.rating.as_i16(),
        "message_index": event.message_index,
        "created_at": event.created_at.to_rfc3339(),
        "model": event.model.as_ref().map(|l| l.as_str()),
        "conversation_id": event.conversation_id.as_ref().map(|l| l.as_str()),
        "vote_id": event.vote_id.as_ref().map(|l| l.as_str()),
        "reason": event.reason.as_ref().map(|r| r.as_str()),
        "comment": event.comment.as_ref().map(|c| c.as_str()),
    });
    Rejected {
        error: DecodeError::new(Reason::DbRejected, detail),
        payload: json.to_string().into_bytes(),
        key: None,
    }
}
