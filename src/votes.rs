//! Votes: the rule that decides which event of a `vote_id` counts, and every statement about
//! votes and their slots. The sink, erasure, retention and the API's reads of current votes
//! call this module; none of them writes `vote_slot` or `feedback_vote` by itself.
//!
//! The rule: of all stored events sharing a `vote_id`, the one with the latest
//! `(created_at, event_id)` counts ([`Vote::newer_than`]); an event without a `vote_id`
//! counts as it is.
//!
//! The bookkeeping (invariants of `schemas/migrations/0004_vote_slot.sql`):
//! - the first stored event of a `vote_id` takes its slot (`vote_slot`; a unique partial
//!   index on the vote id's key, `schemas/migrations/0011_vote_key.sql`, serialises first
//!   votes across writers); a vote id with stored events has exactly one slot holder;
//! - a vote id with more than one stored event has a `feedback_vote` row, its current vote
//!   (the first re-vote seeds it from the slot holder, [`SEED_VOTES`]); otherwise the slot
//!   holder is the current vote ([`current_votes!`]);
//! - retention keeps the row of a vote whose events it deleted, so a late change still moves
//!   the count; erasure promotes the newest remaining event or forgets the vote.
//!
//! Lock order: `feedback_vote` rows are written and locked in `vote_id` order, like the
//! rollups in key order, so concurrent writers do not deadlock in the common case.

use crate::db::DbError;
use crate::event::{FeedbackEvent, Rating};
use crate::rollup::RollupDeltas;
use chrono::{DateTime, Utc};
use std::borrow::Cow;
use std::collections::hash_map;
use std::collections::{HashMap, HashSet};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};
use uuid::Uuid;

/// The rows whose vote currently counts, of the given ratings (`$1`), matching the filters
/// (`$2` subject, `$3` model, `$4`/`$5` created_at range). A row with a `vote_id` counts when
/// it is the event `feedback_vote` holds for that id, or, for a vote id without a
/// `feedback_vote` row (no re-votes), when it holds the vote's slot.
macro_rules! current_votes {
    () => {
        "
FROM feedback f
LEFT JOIN feedback_vote v ON v.vote_id = f.vote_id
WHERE (f.vote_id IS NULL OR v.event_id = f.event_id OR (v.vote_id IS NULL AND f.vote_slot))
  AND f.rating = ANY($1::int2[])
  AND ($2::text IS NULL OR f.subject_id = $2)
  AND ($3::text IS NULL OR f.model = $3)
  AND ($4::timestamptz IS NULL OR f.created_at >= $4)
  AND ($5::timestamptz IS NULL OR f.created_at < $5)"
    };
}
pub(crate) use current_votes;

/// Gives each vote of the rows `$from` (an SQL table expression with the columns of
/// `feedback`) a `feedback_vote` row from them, unless it has one; in `vote_id` order.
macro_rules! seed_votes {
    ($($from:tt)+) => {
        concat!(
            "INSERT INTO feedback_vote (vote_id, event_id, created_at, subject_id, model, rating)
SELECT s.vote_id, s.event_id, s.created_at, s.subject_id, coalesce(s.model, ''), s.rating
FROM ",
            $($from)+,
            "
ORDER BY s.vote_id
ON CONFLICT (vote_id) DO NOTHING"
        )
    };
}
pub(crate) use seed_votes;

// The lookups by a batch of keys join the array instead of testing `key = ANY($1)`: once a
// prepared statement's generic plan picks a sequential scan (as it did on a table of a few
// thousand rows), `= ANY` compares every row with every key, 200 ms for 5000 keys here.

/// The slot holder of vote id `k.vote_id` is the row `f` (an SQL condition): found through the
/// unique index on the slot holders' keys (`schemas/migrations/0011_vote_key.sql`), the vote id
/// compared as well.
macro_rules! slot_holder {
    () => {
        "likerate_vote_key(f.vote_id) = likerate_vote_key(k.vote_id) AND f.vote_id = k.vote_id
 AND f.vote_slot"
    };
}

/// Which of the vote ids `$1` have a slot holder.
const HELD_SLOTS: &str = concat!(
    "
SELECT f.vote_id FROM unnest($1::text[]) AS k(vote_id)
JOIN feedback f ON ",
    slot_holder!()
);

/// The vote ids `$1` get a `feedback_vote` row from their slot holder, which is their current
/// vote until then (and already counted): before the first re-vote is weighed, or before
/// erasure changes the vote.
pub const SEED_VOTES: &str = seed_votes!(concat!(
    "(SELECT f.* FROM unnest($1::text[]) AS k(vote_id) JOIN feedback f ON ",
    slot_holder!(),
    ") s"
));

/// Which of the vote ids `$1` have a `feedback_vote` row. A first vote normally has none, but
/// retention keeps the row of a vote whose events it deleted: then the new event is weighed
/// against it like a re-vote.
const REGISTERED: &str = "
SELECT v.vote_id FROM unnest($1::text[]) AS k(vote_id)
JOIN feedback_vote v ON v.vote_id = k.vote_id";

/// The current votes of `$1`, locked in `vote_id` order.
pub const LOCK_VOTES: &str = "
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

/// Of the vote ids `$1`, each that has events left but no slot holder (erasure or retention
/// deleted it) passes the slot to its newest remaining event. Without a slot holder every
/// remaining event is a re-vote, so the partial index of re-votes finds them.
pub const PASS_SLOTS: &str = "
UPDATE feedback f SET vote_slot = true
FROM (SELECT DISTINCT ON (vote_id) vote_id, event_id FROM feedback
      WHERE vote_id = ANY($1::text[]) AND vote_id IS NOT NULL AND NOT vote_slot
      ORDER BY vote_id, created_at DESC, event_id DESC) n
WHERE f.event_id = n.event_id
  AND NOT EXISTS (SELECT 1 FROM feedback h WHERE likerate_vote_key(h.vote_id) =
                    likerate_vote_key(n.vote_id) AND h.vote_id = n.vote_id AND h.vote_slot)";

/// The newest remaining event of each vote id `$1`: its slot holder and its re-votes, through
/// the two partial indexes that together cover every event with a `vote_id`.
const NEWEST_REMAINING: &str = concat!(
    "
SELECT DISTINCT ON (vote_id) vote_id, event_id, created_at, subject_id, coalesce(model, ''),
       rating
FROM (SELECT f.* FROM unnest($1::text[]) AS k(vote_id) JOIN feedback f ON ",
    slot_holder!(),
    "
      UNION ALL
      SELECT * FROM feedback
      WHERE vote_id = ANY($1::text[]) AND vote_id IS NOT NULL AND NOT vote_slot) f
ORDER BY vote_id, created_at DESC, event_id DESC"
);

/// The vote statements, prepared on a sink connection.
pub struct Statements {
    held_slots: Statement,
    seed_votes: Statement,
    registered: Statement,
    lock_votes: Statement,
    insert_votes: Statement,
    update_votes: Statement,
}

impl Statements {
    pub async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            held_slots: client.prepare(HELD_SLOTS).await?,
            seed_votes: client.prepare(SEED_VOTES).await?,
            registered: client.prepare(REGISTERED).await?,
            lock_votes: client.prepare(LOCK_VOTES).await?,
            insert_votes: client.prepare(INSERT_VOTES).await?,
            update_votes: client.prepare(UPDATE_VOTES).await?,
        })
    }

    /// Which of `votes` have a slot holder.
    pub async fn held_slots(
        &self,
        tx: &Transaction<'_>,
        votes: &[&str],
    ) -> Result<HashSet<String>, tokio_postgres::Error> {
        let rows = tx.query(&self.held_slots, &[&votes]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Which of `votes` have a `feedback_vote` row.
    pub async fn registered(
        &self,
        tx: &Transaction<'_>,
        votes: &[&str],
    ) -> Result<HashSet<String>, tokio_postgres::Error> {
        let rows = tx.query(&self.registered, &[&votes]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// What a vote contributes to the rollups: borrowed from the batch's event, or owned when read
/// back from `feedback_vote`.
#[derive(Debug, Clone)]
pub struct Vote<'a> {
    pub event_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub subject: Cow<'a, str>,
    pub model: Cow<'a, str>,
    pub rating: Rating,
}

impl<'a> Vote<'a> {
    pub fn of(e: &'a FeedbackEvent) -> Vote<'a> {
        Vote {
            event_id: e.event_id,
            created_at: e.created_at,
            subject: Cow::Borrowed(e.subject_id.as_str()),
            model: Cow::Borrowed(e.model.as_ref().map_or("", |m| m.as_str())),
            rating: e.rating,
        }
    }

    fn from_row(row: &tokio_postgres::Row, first: usize) -> Vote<'static> {
        Vote {
            event_id: row.get(first),
            created_at: row.get(first + 1),
            subject: Cow::Owned(row.get(first + 2)),
            model: Cow::Owned(row.get(first + 3)),
            rating: Rating::from_i64(row.get::<_, i16>(first + 4).into())
                .unwrap_or(Rating::Neutral),
        }
    }

    /// Adds (`sign` 1) or takes out (-1) this vote's count.
    pub fn count(&self, deltas: &mut RollupDeltas<'a>, sign: i64) {
        deltas.add(
            self.created_at,
            self.subject.clone(),
            self.model.clone(),
            self.rating.as_i16(),
            sign,
        );
    }

    /// Later `created_at` wins; the event id breaks ties so every replay decides alike.
    pub fn newer_than(&self, other: &Vote<'_>) -> bool {
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

/// What a batch's insert created, as the vote rule needs to know it.
pub struct Inserted<'s> {
    /// Rows that count as they are: no `vote_id`, or the vote's first event, now holding its
    /// slot.
    pub counted: &'s HashSet<Uuid>,
    /// Rows stored without the slot: re-votes.
    pub revotes: &'s HashSet<Uuid>,
    /// The batch's vote ids that have a `feedback_vote` row (seen after the insert).
    pub registered: &'s HashSet<String>,
}

/// Settles the votes of a batch's new rows: adds what now counts to `deltas`, takes out what
/// no longer does, and writes the changed current votes. What counts:
/// - an event without a vote_id: as it is;
/// - a vote id whose slot this batch took, with no current vote from before (no
///   `feedback_vote` row): every event it has is in this batch, so its newest one counts;
/// - any other vote id's first or re-vote in this batch: its newest one is weighed against
///   the current vote ([`weigh`]).
///
/// Returns the writes of `feedback_vote` still to be done, so the caller can send them with
/// its other statements in one round trip.
pub async fn settle<'a>(
    tx: &Transaction<'_>,
    st: &Statements,
    events: impl Iterator<Item = &'a FeedbackEvent>,
    inserted: Inserted<'_>,
    deltas: &mut RollupDeltas<'a>,
) -> Result<Settled<'a>, DbError> {
    let Inserted {
        counted,
        revotes,
        registered,
    } = inserted;
    let mut newest: HashMap<&str, Vote<'_>> = HashMap::with_capacity(counted.len());
    let mut latest: HashMap<&str, Vote<'_>> = HashMap::new();
    let mut later = Vec::with_capacity(revotes.len());
    for e in events {
        let vote_id = e.vote_id.as_ref().map(|v| v.as_str());
        if counted.contains(&e.event_id) {
            match vote_id {
                None => Vote::of(e).count(deltas, 1),
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
    // A fresh vote whose newest event is a re-vote gets its `feedback_vote` row.
    let mut first_revoted = Vec::new();
    for (v, vote) in newest {
        vote.count(deltas, 1);
        if !counted.contains(&vote.event_id) {
            first_revoted.push((v, vote));
        }
    }
    let replaced = if latest.is_empty() {
        Vec::new()
    } else {
        weigh(tx, st, latest, deltas).await?
    };
    Ok(Settled {
        first_revoted,
        replaced,
    })
}

/// The `feedback_vote` writes [`settle`] decided.
pub struct Settled<'a> {
    first_revoted: Vec<(&'a str, Vote<'a>)>,
    replaced: Vec<(&'a str, Vote<'a>)>,
}

impl Settled<'_> {
    /// Sends both writes (pipelined).
    pub async fn write(&self, tx: &Transaction<'_>, st: &Statements) -> Result<(), DbError> {
        tokio::try_join!(
            set_votes(tx, &st.insert_votes, &self.first_revoted),
            set_votes(tx, &st.update_votes, &self.replaced),
        )?;
        Ok(())
    }
}

/// Weighs the batch's newest vote per `vote_id` (a re-vote, or a first vote whose current vote
/// retention kept) against the current one: the vote's `feedback_vote` row is seeded from its
/// slot holder if it has none, then locked; a newer vote replaces it (old bucket -1, new
/// bucket +1); an older one changes nothing. Returns the votes that replace the current one.
async fn weigh<'a>(
    tx: &Transaction<'_>,
    st: &Statements,
    mut latest: HashMap<&'a str, Vote<'a>>,
    deltas: &mut RollupDeltas<'a>,
) -> Result<Vec<(&'a str, Vote<'a>)>, DbError> {
    let keys: Vec<&str> = latest.keys().copied().collect();
    // One round trip: the seed runs first, so the lock finds every seeded row.
    let keys: &[&(dyn ToSql + Sync)] = &[&keys];
    let (_, stored) = tokio::try_join!(
        tx.execute(&st.seed_votes, keys),
        tx.query(&st.lock_votes, keys),
    )?;
    let mut replaced = Vec::new();
    for row in stored {
        let key: String = row.get(0);
        let old = Vote::from_row(&row, 1);
        if let Some((k, new)) = latest.remove_entry(key.as_str()) {
            if new.newer_than(&old) {
                old.count(deltas, -1);
                new.count(deltas, 1);
                replaced.push((k, new));
            }
        }
    }
    // Neither slot holder nor current vote: erasure removed the vote's other events after this
    // batch's insert met them. The newest event here becomes the vote, holding the slot.
    if !latest.is_empty() {
        let ids: Vec<Uuid> = latest.values().map(|v| v.event_id).collect();
        tx.execute(
            "UPDATE feedback SET vote_slot = true WHERE event_id = ANY($1::uuid[])",
            &[&ids],
        )
        .await
        .map_err(conflict_is_transient)?;
        for vote in latest.values() {
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
    tx: &Transaction<'_>,
    statement: &Statement,
    votes: &[(&str, Vote<'_>)],
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

/// What erasure did to the votes of the rows it deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recounted {
    /// Deleted current votes, subtracted from the rollups.
    pub uncounted: u64,
    /// Votes whose current event was deleted and an older event now counts.
    pub promoted: u64,
    /// Votes with no event left, forgotten.
    pub removed: u64,
}

/// Before erasure deletes rows of the votes `vote_ids`: every one gets its `feedback_vote`
/// row (a vote without re-votes has only its slot holder), so that row is its current vote.
pub async fn before_erase(tx: &Transaction<'_>, vote_ids: &[&str]) -> Result<(), DbError> {
    tx.execute(SEED_VOTES, &[&vote_ids]).await?;
    Ok(())
}

/// After erasure deleted the events `deleted` of the votes `vote_ids` (after
/// [`before_erase`]): each vote whose current event went is subtracted, and its newest
/// remaining event becomes current and is counted, or the vote is forgotten; slots pass to the
/// newest remaining event.
pub async fn after_erase<'a>(
    tx: &Transaction<'_>,
    vote_ids: &[&str],
    deleted: &HashSet<Uuid>,
    deltas: &mut RollupDeltas<'a>,
) -> Result<Recounted, DbError> {
    let mut out = Recounted::default();
    let current = tx.query(LOCK_VOTES, &[&vote_ids]).await?;
    let mut orphaned: Vec<String> = Vec::new();
    for row in &current {
        let vote = Vote::from_row(row, 1);
        if deleted.contains(&vote.event_id) {
            vote.count(deltas, -1);
            out.uncounted += 1;
            orphaned.push(row.get(0));
        }
    }
    if !orphaned.is_empty() {
        let newest: HashMap<String, Vote<'static>> = tx
            .query(NEWEST_REMAINING, &[&orphaned])
            .await?
            .iter()
            .map(|r| (r.get(0), Vote::from_row(r, 1)))
            .collect();
        let mut promoted = Vec::new();
        let mut forgotten = Vec::new();
        for vote_id in &orphaned {
            match newest.get(vote_id) {
                Some(vote) => {
                    vote.count(deltas, 1);
                    promoted.push((vote_id.as_str(), vote.clone()));
                }
                None => forgotten.push(vote_id.as_str()),
            }
        }
        set_votes(tx, &tx.prepare(UPDATE_VOTES).await?, &promoted).await?;
        if !forgotten.is_empty() {
            tx.execute(
                "DELETE FROM feedback_vote WHERE vote_id = ANY($1::text[])",
                &[&forgotten],
            )
            .await?;
        }
        out.promoted = promoted.len() as u64;
        out.removed = forgotten.len() as u64;
    }
    tx.execute(PASS_SLOTS, &[&vote_ids]).await?;
    Ok(out)
}
