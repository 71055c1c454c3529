//! Dead letters, exactly once: records that are not valid events go to the dead-letter topic
//! with the original bytes and key, and headers saying why and where they came from.
//!
//! They travel through an outbox, `feedback_dead_letter` (migrations 0006 and 0009):
//! - [`record`] writes a batch's dead letters in a transaction that commits before the batch's
//!   offsets are acknowledged, keyed by the record's source (topic, partition, offset). A
//!   replay of the same offsets (kill -9 before the offset commit, an offset reset, a new
//!   consumer group) inserts nothing, and only what the batch inserted is counted, also when
//!   the answer to its commit was lost and the batch is retried: each bad record is counted
//!   once by the instance that stored it. The partition moves on once its dead letters are
//!   durable in PostgreSQL, whether or not the dead-letter topic is available. The detail is
//!   stored as printable ASCII ([`sanitize`]), so no database encoding can refuse it.
//! - [`run`] publishes the outbox to the topic ([`publisher`] says how each is sent once).
//!   A row the topic refuses for good (too large, invalid) is set aside for a person
//!   (`likerate_dead_letters_refused`) instead of holding up the others.
//! - While the topic is unavailable the rows wait (`likerate_dead_letters_pending`) and the
//!   publisher retries with backoff; nothing is lost and it resumes alone.
//! - Once published, a row keeps only its coordinates and reason (no payload, key or detail,
//!   which may hold user text), and it is deleted once its source offset has left the source
//!   topic, when no re-read can bring the record back.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the outbox rows: [`record`], their detail |
//! | [`publisher`] | the one publisher: lock, Kafka transactions, marks, refusals, purge |
//! | `topic.rs` | reading the dead-letter topic: watermarks and the scan for earlier sends |

mod publisher;
mod topic;

use crate::db::DbError;
use crate::source::Rejected;
use crate::telemetry::Metrics;
pub use publisher::{run, Fault, PublishError, PUBLISHER_LOCK};
use std::collections::HashSet;
use tokio_postgres::Client;
use uuid::Uuid;

/// The header names (docs/contract.md section 2).
pub const HEADER_ERROR: &str = "likerate-error";
pub const HEADER_DETAIL: &str = "likerate-error-detail";
pub const HEADER_TOPIC: &str = "likerate-source-topic";
pub const HEADER_PARTITION: &str = "likerate-source-partition";
pub const HEADER_OFFSET: &str = "likerate-source-offset";

/// Longest detail kept, in bytes: a decoder's or PostgreSQL's message is far shorter, and the
/// detail travels as a header on top of the original record, which already may be as large as
/// the topics allow.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// One record to dead-letter, with its origin.
pub struct DeadLetter<'a> {
    pub rejected: &'a Rejected,
    pub partition: i32,
    pub offset: i64,
}

/// Inserts the rows and returns the coordinates this batch stored: the ones inserted now, and
/// the ones an earlier attempt of the same batch (`$8`) inserted in a commit whose answer was
/// lost. The second part reads the rows as they were before this statement, so a row is never
/// returned twice.
const INSERT: &str = "
WITH new AS (
    INSERT INTO feedback_dead_letter (source_topic, source_partition, source_offset, reason,
                                      detail, record_key, payload, recorded_by)
    SELECT $1, *, $8 FROM unnest($2::int4[], $3::int8[], $4::text[], $5::text[], $6::bytea[],
                                 $7::bytea[])
    ON CONFLICT DO NOTHING
    RETURNING source_partition, source_offset)
SELECT source_partition, source_offset FROM new
UNION ALL
SELECT d.source_partition, d.source_offset
FROM feedback_dead_letter d JOIN unnest($2::int4[], $3::int8[]) AS u(p, o)
     ON d.source_partition = u.p AND d.source_offset = u.o
WHERE d.source_topic = $1 AND d.recorded_by = $8";

/// Writes the dead letters of one batch to the outbox in one transaction and counts the ones
/// the batch stored. `attempt` names the batch: the same for every retry of it, so a retry
/// after a commit whose answer was lost counts what that commit inserted; a replayed record
/// (stored by another batch) is neither written nor counted again.
pub async fn record(
    client: &mut Client,
    topic: &str,
    letters: &[DeadLetter<'_>],
    attempt: Uuid,
    metrics: &Metrics,
) -> Result<(), DbError> {
    if letters.is_empty() {
        return Ok(());
    }
    let details: Vec<String> = letters
        .iter()
        .map(|l| sanitize(&l.rejected.error.detail))
        .collect();
    let tx = client.transaction().await?;
    let stored = tx
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
                &attempt,
            ],
        )
        .await?;
    tx.commit().await?;
    let stored: HashSet<(i32, i64)> = stored.iter().map(|r| (r.get(0), r.get(1))).collect();
    for l in letters {
        if stored.contains(&(l.partition, l.offset)) {
            metrics.dead_letter(l.rejected.error.reason.code());
        }
    }
    Ok(())
}

/// The detail as stored and sent: printable ASCII, at most [`MAX_DETAIL_BYTES`]. It may quote
/// input, and the database's encoding may not hold every character (a LATIN1 database refuses
/// an emoji, PostgreSQL text refuses NUL): such a refusal of the outbox row would stop the
/// partition, so every other character is written as its escape (`\u{e9}`).
pub fn sanitize(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len().min(MAX_DETAIL_BYTES));
    for c in detail.chars() {
        let start = out.len();
        if c == ' ' || c.is_ascii_graphic() {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
        if out.len() > MAX_DETAIL_BYTES {
            out.truncate(start);
            out.push_str("...");
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detail_is_printable_ascii() {
        assert_eq!(
            sanitize("expected `,` at line 1 column 9"),
            "expected `,` at line 1 column 9"
        );
        assert_eq!(
            sanitize("Ma\0th \u{e9}t\u{e9} 🎉\n\ttab"),
            r"Ma\u{0}th \u{e9}t\u{e9} \u{1f389}\u{a}\u{9}tab"
        );
        // Right-to-left overrides and lone surrogates' replacement are escaped like any other.
        assert_eq!(sanitize("\u{202e}x\u{fffd}"), r"\u{202e}x\u{fffd}");
    }

    #[test]
    fn a_long_detail_is_cut_between_characters() {
        let long = sanitize(&"é".repeat(1000));
        assert!(long.len() <= MAX_DETAIL_BYTES + 3, "{}", long.len());
        assert!(long.ends_with(r"\u{e9}..."), "{long}");
        assert_eq!(
            sanitize(&"a".repeat(MAX_DETAIL_BYTES)).len(),
            MAX_DETAIL_BYTES
        );
        assert_eq!(
            sanitize(&"a".repeat(MAX_DETAIL_BYTES + 1)),
            format!("{}...", "a".repeat(MAX_DETAIL_BYTES))
        );
    }
}
