//! The transaction of one batch: the new `feedback` rows, their votes and the rollup deltas,
//! committed together or not at all.

use super::sql::{Conn, Statements, FEEDBACK_TYPES, STAGE_COLUMNS};
use crate::db::DbError;
use crate::event::{Coordinates, FeedbackEvent};
use crate::rollup::RollupDeltas;
use crate::{tombstone, votes};
use std::collections::HashSet;
use std::time::Instant;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;
use uuid::Uuid;

/// Whether a write maintains the votes and rollups. The pipeline always does; skipping them
/// exists only in `bench` builds, so that `benches/aggregates.rs` can measure what they cost
/// in the same run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregates {
    Maintain,
    #[cfg(feature = "bench")]
    Skip,
}

/// An event with where it came from.
#[derive(Clone, Copy)]
pub(super) struct Row<'a> {
    pub event: &'a FeedbackEvent,
    pub coords: Coordinates,
}

/// What the write of one chunk did.
pub struct Outcome {
    /// The ids of the rows it created (of the others, the erased ones aside, a copy was stored).
    pub inserted: HashSet<Uuid>,
    /// How many were refused because erasure removed them for good ([`crate::tombstone`]).
    pub erased: usize,
}

/// The write of one chunk: feedback rows, votes and rollups in one transaction.
///
/// Statements that do not depend on each other's answers go out together (tokio-postgres
/// pipelines the requests of futures polled at once, in the order they are first polled, and
/// PostgreSQL runs them in that order): a batch costs six round trips besides `BEGIN`, two of
/// them the `COPY`.
pub(super) async fn write(
    conn: &mut Conn,
    topic: &str,
    rows: &[Row<'_>],
    aggregates: Aggregates,
) -> Result<Outcome, DbError> {
    let st = &conn.statements;
    let started = Instant::now();
    let mut tx = conn.client.transaction().await?;
    let Created {
        mut counted,
        revotes,
        registered,
        erased,
    } = insert(&mut tx, st, topic, rows, aggregates).await?;
    let stored = started.elapsed();
    #[cfg(feature = "bench")]
    if aggregates == Aggregates::Skip {
        tx.commit().await?;
        counted.extend(revotes);
        return Ok(Outcome {
            inserted: counted,
            erased,
        });
    }

    let mut deltas = RollupDeltas::default();
    let inserted = votes::Inserted {
        counted: &counted,
        revotes: &revotes,
        registered: &registered,
    };
    let settled = votes::settle(
        &tx,
        &st.votes,
        rows.iter().map(|r| r.event),
        inserted,
        &mut deltas,
    )
    .await?;
    let voted = started.elapsed();
    tokio::try_join!(settled.write(&tx, &st.votes), async {
        deltas
            .apply(&tx, &st.upsert_rollup)
            .await
            .map_err(DbError::from)
    })?;
    let rolled = started.elapsed();
    tx.commit().await?;
    counted.extend(revotes);
    let counted = Outcome {
        inserted: counted,
        erased,
    };
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
    /// The batch's vote ids that have a `feedback_vote` row; empty when the write skips the
    /// aggregates.
    registered: HashSet<String>,
    /// Rows refused as erased.
    erased: usize,
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
    let keys: Vec<(Uuid, Option<&str>)> = rows
        .iter()
        .map(|r| {
            let conversation = r.event.conversation_id.as_ref().map(|c| c.as_str());
            (r.event.event_id, conversation)
        })
        .collect();
    // One round trip, run in this order: the tombstone lock (so no erasure interleaves), the
    // tombstones, then the lookups. REGISTERED runs after HELD_SLOTS, on a newer snapshot: a
    // vote whose slot holder retention deleted just before HELD_SLOTS looked is seen with the
    // row retention kept for it, so its new event is weighed against that row instead of
    // counted anew.
    let ids: &[&(dyn ToSql + Sync)] = &[&ids];
    let ((), erased, stored, mut held, registered, ()) = tokio::try_join!(
        tx.batch_execute(tombstone::LOCK_SHARED),
        tombstone::erased(tx, &st.erased, &keys),
        tx.query(&st.stored_ids, ids),
        st.votes.held_slots(tx, &votes),
        registered_votes(tx, st, &votes, aggregates),
        tx.batch_execute("SAVEPOINT direct"),
    )?;
    let kept: Vec<Row<'_>>;
    let rows = if erased.is_empty() {
        rows
    } else {
        kept = rows
            .iter()
            .filter(|r| !erased.contains(&r.event.event_id))
            .copied()
            .collect();
        &kept
    };
    let erased = erased.len();
    let stored: HashSet<Uuid> = stored.iter().map(|r| r.get(0)).collect();
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
                erased,
            })
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT direct").await?;
            let (counted, revotes) = insert_staged(tx, st, topic, rows).await?;
            // The staged insert may give a slot HELD_SLOTS saw taken: look again after it.
            let registered = registered_votes(tx, st, &votes, aggregates).await?;
            Ok(Created {
                counted,
                revotes,
                registered,
                erased,
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
    votes: &[&str],
    aggregates: Aggregates,
) -> Result<HashSet<String>, tokio_postgres::Error> {
    #[cfg(feature = "bench")]
    if aggregates == Aggregates::Skip {
        return Ok(HashSet::new());
    }
    let _ = aggregates;
    st.votes.registered(tx, votes).await
}

/// A row's values for the staging table's columns (the first [`STAGE_COLUMNS`] of
/// [`FEEDBACK_TYPES`]).
struct Values<'a> {
    row: &'a Row<'a>,
    subject: &'a str,
    answer: &'a str,
    question: Option<&'a str>,
    rating: i16,
    model: Option<&'a str>,
    conversation: Option<&'a str>,
    vote: Option<&'a str>,
    reason: Option<&'a str>,
    comment: Option<&'a str>,
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
            reason: e.reason.as_ref().map(|r| r.as_str()),
            comment: e.comment.as_ref().map(|c| c.as_str()),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); STAGE_COLUMNS] {
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
            &self.reason,
            &self.comment,
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
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, n] = v.params();
        writer
            .as_mut()
            .write(&[a, b, c, d, e, f, g, h, i, j, k, l, m, n, &topic, slot])
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
    let writer = BinaryCopyInWriter::new(sink, &FEEDBACK_TYPES[..STAGE_COLUMNS]);
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
