//! `likerate erase`: deletes the stored rows of a conversation (or one event) on request and
//! corrects the aggregates, in one transaction. The rows go whole: question, answer, reason and
//! comment.
//!
//! The votes are recounted by [`crate::votes::after_erase`]. For each deleted row that counted (no `vote_id`, or the current vote of its `vote_id`), its
//! like/dislike/neutral is subtracted from the rollups at every grain. When the current vote of
//! a `vote_id` is deleted and older events of that vote remain, the newest remaining one (by
//! `created_at`, then `event_id`, as the sink decides) becomes the current vote and is counted;
//! when none remains the vote is forgotten. Afterwards the rollups equal their recomputation
//! from the remaining rows.
//!
//! Erasure lasts: the erased event id or conversation id is recorded as a tombstone
//! ([`crate::tombstone`]), so when the topic is read again (a new consumer group, an offset
//! reset) the sink refuses those events and counts them as `outcome="erased"`.
//!
//! Not covered: copies outside PostgreSQL. The feedback topic and the dead-letter topic keep
//! the records until Kafka's retention removes them.

use crate::config::DatabaseConfig;
use crate::{tombstone, votes};
use anyhow::bail;
use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;
use std::collections::HashSet;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// The rows of conversation `$1` on the days `$2`: one descent of
/// `ix_feedback_conversation_day` per day (schemas/migrations/0010_conversation_by_day.sql; the
/// day expression is that index's, so the planner can use it).
const CONVERSATION: &str = "conversation_id = $1
      AND ((created_at AT TIME ZONE 'UTC')::date) = ANY($2::date[])";

#[derive(Args, Debug, Clone, Default)]
pub struct EraseArgs {
    /// Erase every row of this conversation
    #[arg(
        long,
        required_unless_present = "event_id",
        conflicts_with = "event_id"
    )]
    pub conversation_id: Option<String>,
    /// Erase the row of this event
    #[arg(long)]
    pub event_id: Option<Uuid>,
}

/// What an erasure removed and changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Erased {
    /// The deleted rows' event ids, sorted.
    pub event_ids: Vec<Uuid>,
    /// Deleted rows that were counted in the rollups (and were subtracted).
    pub uncounted: u64,
    /// Votes whose current event was deleted and an older event of the same vote now counts.
    pub promoted: u64,
    /// Votes with no event left, forgotten.
    pub votes_removed: u64,
    /// Rollup cells changed (all grains).
    pub rollup_cells: u64,
}

impl std::fmt::Display for Erased {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "erased {} rows; {} counted votes subtracted from the aggregates, {} older votes \
             promoted, {} votes forgotten; {} rollup cells corrected",
            self.event_ids.len(),
            self.uncounted,
            self.promoted,
            self.votes_removed,
            self.rollup_cells
        )?;
        for id in &self.event_ids {
            writeln!(f, "  event_id {id}")?;
        }
        Ok(())
    }
}

struct Gone {
    event_id: Uuid,
    vote_id: Option<String>,
    subject: String,
    model: String,
    rating: i16,
    created_at: DateTime<Utc>,
}

pub async fn erase(db: &DatabaseConfig, args: &EraseArgs) -> anyhow::Result<Erased> {
    let target = crate::db::Target::new(db)?;
    let mut client = target.connect().await?;
    crate::db::migrate(&mut client).await?;
    // The tombstone's kind and key (crate::tombstone) and the rows it covers.
    let (kind, text, filter) = match (&args.conversation_id, &args.event_id) {
        (Some(c), None) => (b'c', c.clone(), CONVERSATION),
        (None, Some(e)) => (b'e', e.to_string(), "event_id = $1::text::uuid"),
        _ => bail!("give exactly one of --conversation-id and --event-id"),
    };
    let tx = client.transaction().await?;
    // No batch interleaves (see crate::tombstone): those in flight commit first, and their
    // rows are erased below with the rest; later ones see the tombstone.
    tx.batch_execute(tombstone::LOCK_EXCLUSIVE).await?;
    tx.execute(tombstone::RECORD, &[&(kind as i8), &text])
        .await?;
    // Taken under the lock, so no batch adds a day before the delete.
    let days: Vec<NaiveDate> = if kind == b'c' {
        tx.query_one(crate::units::STORED_DAYS, &[]).await?.get(0)
    } else {
        Vec::new()
    };
    let params: Vec<&(dyn ToSql + Sync)> = if kind == b'c' {
        vec![&text, &days]
    } else {
        vec![&text]
    };
    let touched: Vec<String> = tx
        .query(
            &format!(
                "SELECT DISTINCT vote_id FROM feedback
                 WHERE {filter} AND vote_id IS NOT NULL ORDER BY 1"
            ),
            &params,
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let touched: Vec<&str> = touched.iter().map(String::as_str).collect();
    votes::before_erase(&tx, &touched).await?;
    let rows = tx
        .query(
            &format!(
                "DELETE FROM feedback WHERE {filter}
                 RETURNING event_id, vote_id, subject_id, coalesce(model, ''), rating, created_at"
            ),
            &params,
        )
        .await?;
    let gone: Vec<Gone> = rows
        .iter()
        .map(|r| Gone {
            event_id: r.get(0),
            vote_id: r.get(1),
            subject: r.get(2),
            model: r.get(3),
            rating: r.get(4),
            created_at: r.get(5),
        })
        .collect();
    let mut out = Erased {
        event_ids: gone.iter().map(|g| g.event_id).collect(),
        ..Erased::default()
    };
    out.event_ids.sort_unstable();
    let mut deltas = crate::rollup::RollupDeltas::default();
    for g in gone.iter().filter(|g| g.vote_id.is_none()) {
        deltas.add(
            g.created_at,
            g.subject.as_str(),
            g.model.as_str(),
            g.rating,
            -1,
        );
        out.uncounted += 1;
    }
    if !touched.is_empty() {
        let deleted: HashSet<Uuid> = gone.iter().map(|g| g.event_id).collect();
        let recounted = votes::after_erase(&tx, &touched, &deleted, &mut deltas).await?;
        out.uncounted += recounted.uncounted;
        out.promoted = recounted.promoted;
        out.votes_removed = recounted.removed;
    }
    out.rollup_cells = deltas.apply(&tx, crate::rollup::UPSERT_ROLLUP).await?;
    deltas.remove_empty(&tx).await?;
    tx.commit().await?;
    Ok(out)
}
