//! Sink: batches become rows in PostgreSQL, exactly once, with the rollups that count them.
//!
//! Guarantees:
//! - One transaction per batch holds the new `feedback` rows, the vote bookkeeping and the
//!   rollup deltas; the partition positions move (see [`crate::source::Acker`]) only after it
//!   committed and the batch's dead letters were acknowledged.
//! - Batches are written on several connections at once ("lanes"), each batch split by
//!   partition so a partition always goes to the same lane; acknowledgements are released in
//!   the order the source cut the batches, never past an older batch that is not durable.
//! - Idempotent on `event_id`: a batch looks up which of its ids are stored and copies only
//!   the others straight into `feedback`; if a concurrent writer stored one of them meanwhile,
//!   the unique index refuses the copy and the batch goes through a staging table with
//!   `ON CONFLICT DO NOTHING RETURNING` instead. Rollups are built only from the rows created,
//!   so replays and producer duplicates (also twice in one batch) store one row and count
//!   once. They are counted as `duplicate`.
//! - Votes: of all events sharing a `vote_id`, the one with the latest `(created_at, event_id)`
//!   counts. The first stored event of a `vote_id` takes its slot (a unique partial index, which
//!   serialises first votes across writers); a later event is a re-vote: a newer one moves the
//!   count out of the current vote's bucket into its own, an older one arriving late is stored
//!   but changes no count. The current vote is the vote's `feedback_vote` row, which only
//!   re-voted ids get, else the slot holder. A vote whose events are all in one batch is
//!   settled from the batch alone.
//! - Failures are classified: database unavailable, restarting, hanging or deadlocked ->
//!   reconnect and retry the whole batch with backoff, forever (the source pauses meanwhile);
//!   a row PostgreSQL refuses as data -> the batch is split until that row stands alone, the
//!   rest is stored and the row is dead-lettered as `db_rejected`; schema or permission errors
//!   -> [`SinkError::Fatal`], the process stops.
//! - Lock order is deterministic (rows sorted by key), so instances writing concurrently do not
//!   deadlock each other in the common case, and a deadlock that still happens is retried.

use crate::db::{DbError, Target};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::decode::{DecodeError, Reason};
use crate::event::{Coordinates, FeedbackEvent, Rating};
use crate::rollup::{RollupDeltas, UPSERT_ROLLUP};
use crate::source::{Ack, Acker, Batch, Payload, Rejected};
use crate::telemetry::Metrics;
use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use std::borrow::Cow;
use std::collections::hash_map;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Retrying cannot help (schema missing, permission denied): stop the process.
    #[error("cannot store events: {0}")]
    Fatal(String),
}

/// The batch's rows are copied into this per-connection staging table, then inserted from it
/// in one statement. Binary `COPY` is the cheapest way into PostgreSQL; a temporary table
/// writes no WAL, and `ON COMMIT DELETE ROWS` empties it with the transaction that used it.
const CREATE_STAGE: &str = "
CREATE TEMPORARY TABLE IF NOT EXISTS feedback_stage (
    event_id uuid, subject_id text, message_content text, user_question text, rating int2,
    message_index int4, created_at timestamptz, model text, conversation_id text, vote_id text,
    kafka_partition int4, kafka_offset int8
) ON COMMIT DELETE ROWS";

const COPY_STAGE: &str = "COPY feedback_stage FROM STDIN (FORMAT binary)";

const COPY_FEEDBACK: &str = "
COPY feedback (event_id, subject_id, message_content, user_question, rating, message_index,
               created_at, model, conversation_id, vote_id, kafka_partition, kafka_offset,
               kafka_topic, vote_slot)
FROM STDIN (FORMAT binary)";

/// Types of [`COPY_FEEDBACK`]'s columns, in order, for the binary `COPY`; the staging table
/// has the first twelve.
const FEEDBACK_TYPES: [Type; 14] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT2,
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::TEXT,
    Type::BOOL,
];

// The lookups by a batch of keys join the array instead of testing `key = ANY($1)`: once a
// prepared statement's generic plan picks a sequential scan (as it did on a table of a few
// thousand rows), `= ANY` compares every row with every key, 200 ms for 5000 keys here.

/// Which of the event ids `$1` are stored.
const STORED_IDS: &str = "
SELECT f.event_id FROM unnest($1::uuid[]) AS k(event_id)
JOIN feedback f ON f.event_id = k.event_id";

/// Which of the vote ids `$1` have a slot holder.
const HELD_SLOTS: &str = "
SELECT f.vote_id FROM unnest($1::text[]) AS k(vote_id)
JOIN feedback f ON f.vote_id = k.vote_id AND f.vote_slot";

/// The insert of the staged rows, in `event_id` order: a fixed order of unique-index insertions
/// keeps concurrent writers from deadlocking. Returns the ids of the rows it created. (A macro,
/// so both inserts below share it: the value of `vote_slot`, the rows, the conflict target.)
macro_rules! insert_staged {
    ($slot:literal, $join:literal, $conflict:literal) => {
        concat!(
            "INSERT INTO feedback (event_id, subject_id, message_content, user_question, rating,
                      message_index, created_at, model, conversation_id, vote_id,
                      kafka_topic, kafka_partition, kafka_offset, vote_slot)
SELECT s.event_id, s.subject_id, s.message_content, s.user_question, s.rating,
       s.message_index, s.created_at, s.model, s.conversation_id, s.vote_id, $1::text,
       s.kafka_partition, s.kafka_offset, ",
            $slot,
            " FROM feedback_stage s",
            $join,
            " ORDER BY s.event_id ON CONFLICT ",
            $conflict,
            " DO NOTHING RETURNING event_id"
        )
    };
}

/// Every staged row, each event with a `vote_id` taking its vote's slot (see
/// `schemas/migrations/0004_vote_slot.sql`). Skips a row whose `event_id` is stored (a
/// duplicate) and one whose vote's slot is taken (a re-vote, inserted by [`INSERT_REVOTES`]).
/// The unique slot index serialises the first votes of a `vote_id` across writers.
const INSERT_FEEDBACK: &str = insert_staged!("s.vote_id IS NOT NULL", "", "");

/// The staged rows `$2` (skipped by [`INSERT_FEEDBACK`], with a `vote_id`) without the slot:
/// those created are re-votes, the others duplicates.
const INSERT_REVOTES: &str = insert_staged!(
    "false",
    " JOIN unnest($2::uuid[]) AS u(event_id) ON u.event_id = s.event_id",
    "(event_id)"
);

/// The first re-vote of a `vote_id` gives it a `feedback_vote` row: the slot holder, which is
/// its current vote until then (and already counted).
const SEED_VOTES: &str = "
INSERT INTO feedback_vote (vote_id, event_id, created_at, subject_id, model, rating)
SELECT f.vote_id, f.event_id, f.created_at, f.subject_id, coalesce(f.model, ''), f.rating
FROM unnest($1::text[]) AS k(vote_id)
JOIN feedback f ON f.vote_id = k.vote_id AND f.vote_slot
ORDER BY f.vote_id
ON CONFLICT (vote_id) DO NOTHING";

/// Which of the vote ids `$1` have a `feedback_vote` row. A first vote normally has none, but
/// retention keeps the row of a vote whose events it deleted: then the new event is weighed
/// against it like a re-vote.
const REGISTERED: &str = "
SELECT v.vote_id FROM unnest($1::text[]) AS k(vote_id)
JOIN feedback_vote v ON v.vote_id = k.vote_id";

const LOCK_VOTES: &str = "
SELECT v.vote_id, v.event_id, v.created_at, v.subject_id, v.model, v.rating
FROM unnest($1::text[]) AS k(vote_id)
JOIN feedback_vote v ON v.vote_id = k.vote_id
ORDER BY v.vote_id FOR UPDATE OF v";

/// The current vote of a vote id that had none: its first event is in the same batch and a
/// re-vote there is newer. (Nobody else can have written the row: the vote's slot is this
/// transaction's, so another writer's re-vote of it waits for the commit.)
const INSERT_VOTES: &str = "
INSERT INTO feedback_vote (vote_id, event_id, created_at, subject_id, model, rating)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::int2[])
ORDER BY 1";

const UPDATE_VOTES: &str = "
UPDATE feedback_vote v
SET event_id = u.event_id, created_at = u.created_at, subject_id = u.subject_id,
    model = u.model, rating = u.rating
FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::int2[])
       AS u(vote_id, event_id, created_at, subject_id, model, rating)
WHERE v.vote_id = u.vote_id";

/// A connection with its statements prepared.
struct Conn {
    client: Client,
    statements: Statements,
}

struct Statements {
    copy_stage: Statement,
    copy_feedback: Statement,
    stored_ids: Statement,
    held_slots: Statement,
    insert_feedback: Statement,
    insert_revotes: Statement,
    seed_votes: Statement,
    registered: Statement,
    lock_votes: Statement,
    insert_votes: Statement,
    update_votes: Statement,
    upsert_rollup: Statement,
}

impl Conn {
    async fn open(target: &Target) -> Result<Conn, DbError> {
        let client = target.connect().await?;
        client.batch_execute(CREATE_STAGE).await?;
        let statements = Statements {
            copy_stage: client.prepare(COPY_STAGE).await?,
            copy_feedback: client.prepare(COPY_FEEDBACK).await?,
            stored_ids: client.prepare(STORED_IDS).await?,
            held_slots: client.prepare(HELD_SLOTS).await?,
            insert_feedback: client.prepare(INSERT_FEEDBACK).await?,
            insert_revotes: client.prepare(INSERT_REVOTES).await?,
            seed_votes: client.prepare(SEED_VOTES).await?,
            registered: client.prepare(REGISTERED).await?,
            lock_votes: client.prepare(LOCK_VOTES).await?,
            insert_votes: client.prepare(INSERT_VOTES).await?,
            update_votes: client.prepare(UPDATE_VOTES).await?,
            upsert_rollup: client.prepare(UPSERT_ROLLUP).await?,
        };
        Ok(Conn { client, statements })
    }
}

/// An event with where it came from.
#[derive(Clone, Copy)]
struct Row<'a> {
    event: &'a FeedbackEvent,
    coords: Coordinates,
}

/// What one write did.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub stored: u64,
    pub duplicates: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Written) {
        self.stored += other.stored;
        self.duplicates += other.duplicates;
    }
}

/// The sink: batches from the source, written by up to `connections` lanes at once (each a
/// connection of its own, so PostgreSQL works on several batches in parallel), acknowledged in
/// the order the source cut them.
pub struct Sink {
    lanes: Vec<Lane>,
    acker: Acker,
}

/// One connection's worth of the sink: writes one batch at a time.
struct Lane {
    target: Target,
    conn: Option<Conn>,
    topic: String,
    dead_letters: DeadLetters,
    metrics: Metrics,
    timeout: Duration,
}

/// Most batches written or waiting for their acknowledgement per lane: bounds the
/// acknowledgements held while an older batch is still being retried.
const OUTSTANDING_PER_LANE: usize = 4;

impl Sink {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: Target,
        topic: String,
        dead_letters: DeadLetters,
        acker: Acker,
        metrics: Metrics,
        timeout: Duration,
        connections: usize,
    ) -> Sink {
        let lanes = (0..connections.max(1))
            .map(|_| Lane {
                target: target.clone(),
                conn: None,
                topic: topic.clone(),
                dead_letters: dead_letters.clone(),
                metrics: metrics.clone(),
                timeout,
            })
            .collect();
        Sink { lanes, acker }
    }

    /// Stores batches until the source closes the channel. Each batch is split by partition
    /// across the lanes ([`Batch::split`]); a lane writes its parts in order; a batch is
    /// acknowledged when all its parts are durable and every older batch is acknowledged.
    pub async fn run(self, mut rx: mpsc::Receiver<Batch>) -> Result<(), SinkError> {
        let lanes = self.lanes.len();
        let most = lanes * OUTSTANDING_PER_LANE;
        let mut idle: Vec<Option<Lane>> = self.lanes.into_iter().map(Some).collect();
        let mut queued: Vec<VecDeque<(u64, Batch)>> = (0..lanes).map(|_| VecDeque::new()).collect();
        let mut writing = FuturesUnordered::new();
        // Per batch number: parts still being written, and the acknowledgements of those done.
        let mut outstanding: BTreeMap<u64, (usize, Vec<Ack>)> = BTreeMap::new();
        let mut next_seq = 0u64;
        let mut open = true;
        loop {
            for (i, slot) in idle.iter_mut().enumerate() {
                if slot.is_none() {
                    continue;
                }
                if let Some((seq, part)) = queued[i].pop_front() {
                    // Checked above: the lane is idle.
                    if let Some(lane) = slot.take() {
                        writing.push(lane.write_batch(i, seq, part));
                    }
                }
            }
            if !open && writing.is_empty() {
                return Ok(());
            }
            // Take a batch only when every lane has at most one part queued.
            let room = outstanding.len() < most && queued.iter().all(|q| q.len() < 2);
            tokio::select! {
                batch = rx.recv(), if open && room => match batch {
                    Some(batch) => {
                        let parts = batch.split(lanes);
                        outstanding.insert(next_seq, (parts.len(), Vec::new()));
                        for (lane, part) in parts {
                            queued[lane].push_back((next_seq, part));
                        }
                        next_seq += 1;
                    }
                    None => open = false,
                },
                Some((i, lane, seq, ack)) = writing.next() => {
                    idle[i] = Some(lane);
                    // Every part written belongs to a batch still outstanding: batches leave
                    // the map only once all their parts are back.
                    if let Some(entry) = outstanding.get_mut(&seq) {
                        entry.0 -= 1;
                        entry.1.push(ack?);
                    }
                    while let Some(first) = outstanding.first_entry() {
                        if first.get().0 > 0 {
                            break;
                        }
                        for ack in first.remove().1 {
                            self.acker.ack(ack);
                        }
                    }
                }
            }
        }
    }
}

impl Lane {
    /// Writes one part; gives the lane (number `i`) back with the part's batch number and
    /// acknowledgement.
    async fn write_batch(
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
        for r in &batch.records {
            match &r.payload {
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
        let dead_letters = self.dead_letters.clone();
        let (stored, ()) = tokio::join!(self.store(rows), dead_letters.publish(&letters));
        let (written, refused) = stored?;
        if !refused.is_empty() {
            let refused: Vec<(Rejected, Coordinates)> = refused
                .into_iter()
                .map(|(row, detail)| (refused_letter(row.event, detail), row.coords))
                .collect();
            let letters: Vec<DeadLetter<'_>> = refused
                .iter()
                .map(|(rejected, c)| DeadLetter {
                    rejected,
                    partition: c.partition,
                    offset: c.offset,
                })
                .collect();
            self.dead_letters.publish(&letters).await;
        }
        self.metrics.event("stored", written.stored);
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
            match self.write_with_retry(&chunk).await {
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

    /// One transaction for the rows, retried while the database is unavailable.
    async fn write_with_retry(&mut self, rows: &[Row<'_>]) -> Result<Written, DbError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = async {
                let conn = match &mut self.conn {
                    Some(conn) => conn,
                    None => self.conn.insert(Conn::open(&self.target).await?),
                };
                let started = Instant::now();
                let inserted = write(conn, &self.topic, rows, Aggregates::Maintain).await?;
                self.metrics
                    .batch_written(started.elapsed().as_secs_f64(), rows.len());
                Ok::<_, DbError>(inserted)
            };
            let error = match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(inserted)) => {
                    self.record_votes(rows, &inserted);
                    return Ok(Written {
                        stored: inserted.len() as u64,
                        duplicates: (rows.len() - inserted.len()) as u64,
                    });
                }
                Ok(Err(DbError::Unavailable(e))) => e,
                Ok(Err(other)) => return Err(other),
                Err(_) => format!("no answer within {:?}", self.timeout),
            };
            // The connection may be mid-transaction or dead: never reuse it.
            self.conn = None;
            self.metrics.db_retry();
            tracing::warn!(error = %error, retry_in = ?backoff, "database unavailable: batch will be retried");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Counts the newly stored votes per subject and rating (`likerate_votes_total`).
    fn record_votes(&self, rows: &[Row<'_>], inserted: &HashSet<Uuid>) {
        let mut counts: HashMap<(&str, Rating), u64> = HashMap::new();
        for r in rows.iter().filter(|r| inserted.contains(&r.event.event_id)) {
            *counts
                .entry((r.event.subject_id.as_str(), r.event.rating))
                .or_default() += 1;
        }
        for ((subject, rating), n) in counts {
            self.metrics.vote(subject, rating, n);
        }
    }
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
    });
    Rejected {
        error: DecodeError::new(Reason::DbRejected, detail),
        payload: json.to_string().into_bytes(),
        key: None,
    }
}

/// The write of one chunk: feedback rows, votes and rollups in one transaction. Returns the
/// ids of the rows it created (the others were already stored).
///
/// Statements that do not depend on each other's answers go out together (tokio-postgres
/// pipelines the requests of futures polled at once, in the order they are first polled, and
/// PostgreSQL runs them in that order): a batch costs six round trips besides `BEGIN`, two of
/// them the `COPY`.
async fn write(
    conn: &mut Conn,
    topic: &str,
    rows: &[Row<'_>],
    aggregates: Aggregates,
) -> Result<HashSet<Uuid>, DbError> {
    let st = &conn.statements;
    let started = Instant::now();
    let mut tx = conn.client.transaction().await?;
    let Created {
        mut counted,
        revotes,
        registered,
    } = insert(&mut tx, st, topic, rows, aggregates).await?;
    let stored = started.elapsed();
    if aggregates == Aggregates::Skip {
        tx.commit().await?;
        counted.extend(revotes);
        return Ok(counted);
    }

    // What counts:
    // - an event without a vote_id: as it is;
    // - a vote id whose slot this batch took, with no current vote from before (no
    //   `feedback_vote` row): every event it has is in this batch, so its newest one counts;
    // - any other vote id's first or re-vote in this batch: its newest one is weighed against
    //   the current vote ([`weigh_revotes`]).
    let mut deltas = RollupDeltas::default();
    let mut newest: HashMap<&str, Vote<'_>> = HashMap::with_capacity(counted.len());
    let mut latest: HashMap<&str, Vote<'_>> = HashMap::new();
    let mut later = Vec::with_capacity(revotes.len());
    for e in rows.iter().map(|r| r.event) {
        let vote_id = e.vote_id.as_ref().map(|v| v.as_str());
        if counted.contains(&e.event_id) {
            match vote_id {
                None => Vote::of(e).count(&mut deltas, 1),
                Some(v) if registered.contains(v) => keep_newest(&mut latest, v, Vote::of(e)),
                Some(v) => {
                    newest.insert(v, Vote::of(e));
                }
            }
        } else if let Some(v) = vote_id.filter(|_| revotes.contains(&e.event_id)) {
            later.push((v, e));
        }
    }
    // Re-votes once every vote whose slot this batch took is known.
    for (v, e) in later {
        let votes = if newest.contains_key(v) {
            &mut newest
        } else {
            &mut latest
        };
        keep_newest(votes, v, Vote::of(e));
    }
    // A fresh vote whose newest event is a re-vote gets its `feedback_vote` row here.
    let mut first_revoted = Vec::new();
    for (v, vote) in &newest {
        vote.count(&mut deltas, 1);
        if !counted.contains(&vote.event_id) {
            first_revoted.push((*v, vote));
        }
    }
    let replaced = if latest.is_empty() {
        Vec::new()
    } else {
        weigh_revotes(&tx, st, &latest, &mut deltas).await?
    };
    counted.extend(revotes);
    let voted = started.elapsed();
    tokio::try_join!(
        set_votes(&tx, &st.insert_votes, &first_revoted),
        set_votes(&tx, &st.update_votes, &replaced),
        async {
            deltas
                .apply(&tx, &st.upsert_rollup)
                .await
                .map_err(DbError::from)
        },
    )?;
    let rolled = started.elapsed();
    tx.commit().await?;
    // Where a slow batch spends its time (`RUST_LOG=likerate::sink=debug`).
    tracing::debug!(
        rows = rows.len(),
        ?stored,
        ?voted,
        ?rolled,
        committed = ?started.elapsed(),
        "batch written"
    );
    Ok(counted)
}

/// What [`insert`] created, and what the weighing of votes needs to know.
struct Created {
    /// Rows that count as they are: no `vote_id`, or the vote's first event, now holding its
    /// slot.
    counted: HashSet<Uuid>,
    /// Rows stored without the slot: re-votes.
    revotes: HashSet<Uuid>,
    /// The batch's vote ids that have a `feedback_vote` row ([`REGISTERED`]); empty when the
    /// write skips the aggregates.
    registered: HashSet<String>,
}

/// Inserts the rows that are not stored yet. The fast path asks which event ids are stored and
/// which votes have a slot holder (index lookups only), then copies the new rows straight into
/// `feedback`. A concurrent writer may store one of them or take one of their slots in
/// between: the unique indexes refuse the copy, and the batch goes through the staging table
/// with `ON CONFLICT` instead, in the same transaction.
async fn insert(
    tx: &mut tokio_postgres::Transaction<'_>,
    st: &Statements,
    topic: &str,
    rows: &[Row<'_>],
    aggregates: Aggregates,
) -> Result<Created, DbError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.event.event_id).collect();
    let votes: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.event.vote_id.as_ref().map(|v| v.as_str()))
        .collect();
    // One round trip. REGISTERED runs after HELD_SLOTS, on a newer snapshot: a vote whose slot
    // holder retention deleted just before HELD_SLOTS looked is seen with the row retention
    // kept for it, so its new event is weighed against that row instead of counted anew.
    let (ids, votes): (&[&(dyn ToSql + Sync)], &[&(dyn ToSql + Sync)]) = (&[&ids], &[&votes]);
    let (stored, held, registered, ()) = tokio::try_join!(
        tx.query(&st.stored_ids, ids),
        tx.query(&st.held_slots, votes),
        registered_votes(tx, st, votes, aggregates),
        tx.batch_execute("SAVEPOINT direct"),
    )?;
    let stored: HashSet<Uuid> = stored.iter().map(|r| r.get(0)).collect();
    let mut held: HashSet<String> = held.iter().map(|r| r.get(0)).collect();
    // In event_id order, as the staged insert: the same lock order, the same slot holders.
    let mut seen = HashSet::with_capacity(rows.len());
    let mut new: Vec<&Row<'_>> = rows
        .iter()
        .filter(|r| !stored.contains(&r.event.event_id) && seen.insert(r.event.event_id))
        .collect();
    new.sort_unstable_by_key(|r| r.event.event_id);
    let new: Vec<(&Row<'_>, bool)> = new
        .into_iter()
        .map(|r| {
            let slot = r
                .event
                .vote_id
                .as_ref()
                .is_some_and(|v| held.insert(v.as_str().to_owned()));
            (r, slot)
        })
        .collect();
    // The savepoint stays open until the commit when the copy succeeds: releasing it would
    // cost a round trip and gain nothing.
    match copy_rows(tx, &st.copy_feedback, topic, &new).await {
        Ok(()) => {
            let mut counted = HashSet::with_capacity(new.len());
            let mut revotes = HashSet::new();
            for (r, slot) in new {
                if slot || r.event.vote_id.is_none() {
                    counted.insert(r.event.event_id);
                } else {
                    revotes.insert(r.event.event_id);
                }
            }
            Ok(Created {
                counted,
                revotes,
                registered,
            })
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT direct").await?;
            let (counted, revotes) = insert_staged(tx, st, topic, rows).await?;
            // The staged insert may give a slot HELD_SLOTS saw taken: look again after it.
            let registered = registered_votes(tx, st, votes, aggregates).await?;
            Ok(Created {
                counted,
                revotes,
                registered,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Which of the vote ids `votes` have a `feedback_vote` row; none are looked up when the write
/// skips the aggregates.
async fn registered_votes(
    tx: &tokio_postgres::Transaction<'_>,
    st: &Statements,
    votes: &[&(dyn ToSql + Sync)],
    aggregates: Aggregates,
) -> Result<HashSet<String>, tokio_postgres::Error> {
    if aggregates == Aggregates::Skip {
        return Ok(HashSet::new());
    }
    let rows = tx.query(&st.registered, votes).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A row's values for the staging table's columns (the first twelve of [`FEEDBACK_TYPES`]).
struct Values<'a> {
    row: &'a Row<'a>,
    subject: &'a str,
    answer: &'a str,
    question: Option<&'a str>,
    rating: i16,
    model: Option<&'a str>,
    conversation: Option<&'a str>,
    vote: Option<&'a str>,
}

impl<'a> Values<'a> {
    fn of(row: &'a Row<'a>) -> Values<'a> {
        let e = row.event;
        Values {
            row,
            subject: e.subject_id.as_str(),
            answer: e.assistant_message.as_str(),
            question: e.user_question.as_ref().map(|t| t.as_str()),
            rating: e.rating.as_i16(),
            model: e.model.as_ref().map(|l| l.as_str()),
            conversation: e.conversation_id.as_ref().map(|l| l.as_str()),
            vote: e.vote_id.as_ref().map(|l| l.as_str()),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        let e = self.row.event;
        [
            &e.event_id,
            &self.subject,
            &self.answer,
            &self.question,
            &self.rating,
            &e.message_index,
            &e.created_at,
            &self.model,
            &self.conversation,
            &self.vote,
            &self.row.coords.partition,
            &self.row.coords.offset,
        ]
    }
}

/// The new rows, straight into `feedback` with a binary `COPY`.
async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
    copy: &Statement,
    topic: &str,
    rows: &[(&Row<'_>, bool)],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &FEEDBACK_TYPES);
    futures::pin_mut!(writer);
    for (r, slot) in rows {
        let v = Values::of(r);
        let [a, b, c, d, e, f, g, h, i, j, k, l] = v.params();
        writer
            .as_mut()
            .write(&[a, b, c, d, e, f, g, h, i, j, k, l, &topic, slot])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// The idempotent insert through the staging table: every row is copied there, then
/// [`INSERT_FEEDBACK`] and [`INSERT_REVOTES`] skip what is stored.
async fn insert_staged(
    tx: &tokio_postgres::Transaction<'_>,
    st: &Statements,
    topic: &str,
    rows: &[Row<'_>],
) -> Result<(HashSet<Uuid>, HashSet<Uuid>), DbError> {
    let sink = tx.copy_in(&st.copy_stage).await?;
    let writer = BinaryCopyInWriter::new(sink, &FEEDBACK_TYPES[..12]);
    futures::pin_mut!(writer);
    for r in rows {
        writer.as_mut().write(&Values::of(r).params()).await?;
    }
    writer.finish().await?;
    let inserted: HashSet<Uuid> = tx
        .query(&st.insert_feedback, &[&topic])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let skipped: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.event.vote_id.is_some() && !inserted.contains(&r.event.event_id))
        .map(|r| r.event.event_id)
        .collect();
    let revotes: HashSet<Uuid> = if skipped.is_empty() {
        HashSet::new()
    } else {
        tx.query(&st.insert_revotes, &[&topic, &skipped])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    Ok((inserted, revotes))
}

/// Whether a write maintains the votes and rollups. The pipeline always does; skipping them
/// exists only so that `benches/aggregates.rs` can measure what they cost in the same run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregates {
    Maintain,
    Skip,
}

/// The sink's write path without the Kafka side, for benchmarks and for tests that need
/// batches of their own making (`tests/votes.rs`): each call is one transaction, exactly as
/// the sink writes a batch.
pub struct BenchWriter {
    conn: Conn,
    topic: String,
}

impl BenchWriter {
    pub async fn connect(target: &Target, topic: &str) -> Result<BenchWriter, DbError> {
        Ok(BenchWriter {
            conn: Conn::open(target).await?,
            topic: topic.to_owned(),
        })
    }

    /// Writes events (with the coordinates they came from); returns how many were new.
    pub async fn write(
        &mut self,
        events: &[(FeedbackEvent, Coordinates)],
        aggregates: Aggregates,
    ) -> Result<usize, DbError> {
        let rows: Vec<Row<'_>> = events
            .iter()
            .map(|(event, coords)| Row {
                event,
                coords: *coords,
            })
            .collect();
        Ok(write(&mut self.conn, &self.topic, &rows, aggregates)
            .await?
            .len())
    }
}

/// What a vote contributes to the rollups: borrowed from the batch's event, or owned when read
/// back from `feedback_vote`.
#[derive(Debug)]
struct Vote<'a> {
    event_id: Uuid,
    created_at: DateTime<Utc>,
    subject: Cow<'a, str>,
    model: Cow<'a, str>,
    rating: Rating,
}

impl<'a> Vote<'a> {
    fn of(e: &'a FeedbackEvent) -> Vote<'a> {
        Vote {
            event_id: e.event_id,
            created_at: e.created_at,
            subject: Cow::Borrowed(e.subject_id.as_str()),
            model: Cow::Borrowed(e.model.as_ref().map_or("", |m| m.as_str())),
            rating: e.rating,
        }
    }

    /// Adds (`sign` 1) or takes out (-1) this vote's count.
    fn count(&self, deltas: &mut RollupDeltas<'a>, sign: i64) {
        deltas.add(
            self.created_at,
            self.subject.clone(),
            self.model.clone(),
            self.rating.as_i16(),
            sign,
        );
    }

    /// Later `created_at` wins; the event id breaks ties so every replay decides alike.
    fn newer_than(&self, other: &Vote<'_>) -> bool {
        (self.created_at, self.event_id) > (other.created_at, other.event_id)
    }
}

/// Keeps the newer of `vote` and the one `votes` holds for `vote_id`.
fn keep_newest<'a>(votes: &mut HashMap<&'a str, Vote<'a>>, vote_id: &'a str, vote: Vote<'a>) {
    match votes.entry(vote_id) {
        hash_map::Entry::Vacant(slot) => {
            slot.insert(vote);
        }
        hash_map::Entry::Occupied(mut cur) => {
            if vote.newer_than(cur.get()) {
                cur.insert(vote);
            }
        }
    }
}

/// Weighs the batch's newest vote per `vote_id` (a re-vote, or a first vote whose current vote
/// retention kept) against the current one: the vote's `feedback_vote` row is seeded from its
/// slot holder if it has none, then locked; a newer vote replaces it (old bucket -1, new
/// bucket +1); an older one changes nothing. Returns the votes that replace the current one,
/// for [`UPDATE_VOTES`].
async fn weigh_revotes<'v, 'a>(
    tx: &tokio_postgres::Transaction<'_>,
    conn: &Statements,
    latest: &'v HashMap<&'a str, Vote<'a>>,
    deltas: &mut RollupDeltas<'a>,
) -> Result<Vec<(&'a str, &'v Vote<'a>)>, DbError> {
    let keys: Vec<&str> = latest.keys().copied().collect();
    // One round trip: the seed runs first, so the lock finds every seeded row.
    let keys: &[&(dyn ToSql + Sync)] = &[&keys];
    let (_, stored) = tokio::try_join!(
        tx.execute(&conn.seed_votes, keys),
        tx.query(&conn.lock_votes, keys),
    )?;
    let mut found: HashSet<String> = HashSet::with_capacity(stored.len());
    let mut replaced = Vec::new();
    for row in stored {
        let key: String = row.get(0);
        let old = Vote {
            event_id: row.get(1),
            created_at: row.get(2),
            subject: Cow::Owned(row.get(3)),
            model: Cow::Owned(row.get(4)),
            rating: Rating::from_i64(row.get::<_, i16>(5).into()).unwrap_or(Rating::Neutral),
        };
        if let Some((&k, new)) = latest.get_key_value(key.as_str()) {
            if new.newer_than(&old) {
                old.count(deltas, -1);
                new.count(deltas, 1);
                replaced.push((k, new));
            }
        }
        found.insert(key);
    }
    // Neither slot holder nor current vote: erasure removed the vote's other events after this
    // batch's insert met them. The newest event here becomes the vote, holding the slot.
    let orphans: Vec<&Vote> = latest
        .iter()
        .filter(|(k, _)| !found.contains(**k))
        .map(|(_, v)| v)
        .collect();
    if !orphans.is_empty() {
        let ids: Vec<Uuid> = orphans.iter().map(|v| v.event_id).collect();
        tx.execute(
            "UPDATE feedback SET vote_slot = true WHERE event_id = ANY($1::uuid[])",
            &[&ids],
        )
        .await
        .map_err(conflict_is_transient)?;
        for vote in orphans {
            vote.count(deltas, 1);
        }
    }
    Ok(replaced)
}

/// A unique violation where the sink's own reads said there could be none: another writer
/// changed the same vote in between. Retrying the batch reads the new state.
fn conflict_is_transient(e: tokio_postgres::Error) -> DbError {
    match DbError::from(e) {
        DbError::Data(detail) => DbError::Unavailable(detail),
        other => other,
    }
}

/// Writes current votes with `statement` ([`INSERT_VOTES`] or [`UPDATE_VOTES`], which take
/// the same columns).
async fn set_votes(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &Statement,
    votes: &[(&str, &Vote<'_>)],
) -> Result<(), DbError> {
    if votes.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = votes.iter().map(|(k, _)| *k).collect();
    let ids: Vec<Uuid> = votes.iter().map(|(_, v)| v.event_id).collect();
    let created: Vec<DateTime<Utc>> = votes.iter().map(|(_, v)| v.created_at).collect();
    let subjects: Vec<&str> = votes.iter().map(|(_, v)| v.subject.as_ref()).collect();
    let models: Vec<&str> = votes.iter().map(|(_, v)| v.model.as_ref()).collect();
    let ratings: Vec<i16> = votes.iter().map(|(_, v)| v.rating.as_i16()).collect();
    tx.execute(
        statement,
        &[&keys, &ids, &created, &subjects, &models, &ratings],
    )
    .await
    .map_err(conflict_is_transient)?;
    Ok(())
}
