//! Tombstones: what erasure removed for good. `likerate erase` records the event id or the
//! conversation id it erased (`feedback_tombstone`), and the sink refuses an event with a
//! recorded id or conversation when the topic is read again, counting it as
//! `likerate_events_total{outcome="erased"}` (not a dead letter: nothing is wrong with it).
//!
//! Guarantee: an erasure and a batch never interleave. Erasure takes an advisory lock
//! exclusively ([`LOCK_EXCLUSIVE`]) before it records and deletes; every batch transaction
//! takes it shared ([`LOCK_SHARED`]) before it reads the tombstones. So a batch that started before the erasure committed first (and its rows are
//! erased with the rest), and a batch that starts after it sees the tombstone.

use std::collections::HashSet;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Statement, Transaction};
use uuid::Uuid;

// The advisory lock key, 1953459554, is the bytes of "tomb".

/// Taken by every batch transaction before it reads the tombstones.
pub const LOCK_SHARED: &str = "SELECT pg_advisory_xact_lock_shared(1953459554)";

/// Taken by erasure before it records and deletes.
pub const LOCK_EXCLUSIVE: &str = "SELECT pg_advisory_xact_lock(1953459554)";

/// Records the erasure of an event id (`kind` 'e') or a conversation id ('c').
pub const RECORD: &str = "
INSERT INTO feedback_tombstone (kind, key) VALUES ($1::\"char\", $2)
ON CONFLICT (kind, key) DO NOTHING";

/// Of the events `$1` (ids) with conversations `$2` (NULL when none), the ids that are erased.
pub const ERASED: &str = "
SELECT k.event_id FROM unnest($1::uuid[], $2::text[]) AS k(event_id, conversation_id)
WHERE EXISTS (SELECT 1 FROM feedback_tombstone t
              WHERE t.kind = 'e' AND t.key = k.event_id::text)
   OR EXISTS (SELECT 1 FROM feedback_tombstone t
              WHERE t.kind = 'c' AND t.key = k.conversation_id)";

/// Which of the events (id, conversation) are erased, with the prepared [`ERASED`].
pub async fn erased(
    tx: &Transaction<'_>,
    statement: &Statement,
    events: &[(Uuid, Option<&str>)],
) -> Result<HashSet<Uuid>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.0).collect();
    let conversations: Vec<Option<&str>> = events.iter().map(|e| e.1).collect();
    let params: [&(dyn ToSql + Sync); 2] = [&ids, &conversations];
    let rows = tx.query(statement, &params).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
