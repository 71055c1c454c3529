//! Retention: how long stored feedback is kept.
//!
//! - `LIKERATE_RETENTION_TEXT` (e.g. `90d`): rows whose `created_at` is older have their
//!   question, answer and comment erased (`user_question` and `comment` NULL,
//!   `message_content` `''`, `text_erased` true). Rating, subject, model, reason tag, ids and
//!   time stay (the tag is one of the front end's fixed choices, not user text), so the rows
//!   and the aggregates still give long-term like rates and reasons, and the rollups stay equal
//!   to their recomputation from the rows.
//! - `LIKERATE_RETENTION_ROWS` (e.g. `400d`): older rows are deleted. The rollups are *not*
//!   changed: the aggregates outlive the rows, so like rates over long periods stay available
//!   after the rows are gone (they hold counts per minute/hour/day, subject and model, no
//!   text). The vote bookkeeping stays too (a vote whose events are deleted keeps its
//!   `feedback_vote` row: vote id, subject, model, rating, time), so a late change of an old
//!   vote still moves its count. While `likerate run` has this limit, its sink refuses events
//!   older than it (`outcome="erased"`), so a re-read of the topic does not bring deleted rows
//!   back. Erasure on request
//!   (`likerate erase`) is different: it corrects the aggregates.
//!
//! Both run in bounded batches, one short transaction per batch of [`BATCH`] rows picked with
//! `FOR UPDATE SKIP LOCKED`; ingestion only inserts rows and never waits on them, and two
//! instances running retention at once share the work.

use crate::config::RetentionConfig;
use crate::db::Target;
use crate::telemetry::Metrics;
use crate::votes::{self, seed_votes};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows per retention transaction.
pub const BATCH: i64 = 5000;

/// What one retention pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub text_erased: u64,
    pub deleted: u64,
}

impl std::fmt::Display for Swept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "text erased from {} rows, {} rows deleted",
            self.text_erased, self.deleted
        )
    }
}

const ERASE_TEXT: &str = "
UPDATE feedback SET message_content = '', user_question = NULL, comment = NULL,
                    text_erased = true
WHERE id IN (SELECT id FROM feedback
             WHERE created_at < $1 AND NOT text_erased
             LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// Deletes a batch of old rows. A vote whose slot holder goes keeps its bookkeeping: the
/// holder, unless `feedback_vote` already names the current vote, becomes its row there. The
/// days of the deleted rows are marked dirty for `compare`'s conversation units, like a rollup
/// change ([`crate::rollup::MARK_DIRTY`]).
/// Returns the number of rows deleted and the vote ids whose slot holder went.
const DELETE_ROWS: &str = concat!(
    "
WITH gone AS (
    DELETE FROM feedback
    WHERE id IN (SELECT id FROM feedback WHERE created_at < $1
                 LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING vote_id, event_id, created_at, subject_id, model, rating, vote_slot
), kept AS (
    ",
    seed_votes!("(SELECT * FROM gone WHERE vote_slot) s"),
    "
), marked AS (
    INSERT INTO feedback_unit_dirty (day)
    SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM gone
)
SELECT count(*), coalesce(array_agg(vote_id) FILTER (WHERE vote_slot), '{}') FROM gone"
);

/// One batch of each kind, in its own transaction; returns the rows it changed.
async fn sweep_batch(
    client: &mut tokio_postgres::Client,
    action: &str,
    before: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    if action != "deleted" {
        return client.execute(ERASE_TEXT, &[&before, &BATCH]).await;
    }
    let tx = client.transaction().await?;
    let row = tx.query_one(DELETE_ROWS, &[&before, &BATCH]).await?;
    let slots: Vec<String> = row.get(1);
    if !slots.is_empty() {
        tx.execute(votes::PASS_SLOTS, &[&slots]).await?;
    }
    tx.commit().await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// One pass: applies both limits relative to `now`.
pub async fn sweep(
    target: &Target,
    config: RetentionConfig,
    now: DateTime<Utc>,
    metrics: Option<&Metrics>,
) -> anyhow::Result<Swept> {
    let mut client = target.connect().await?;
    let mut swept = Swept::default();
    let cutoff = |age: Duration| -> anyhow::Result<DateTime<Utc>> {
        now.checked_sub_signed(chrono::Duration::from_std(age)?)
            .ok_or_else(|| anyhow::anyhow!("retention of {age:?} reaches before the calendar"))
    };
    // Rows first: text of rows about to be deleted need not be erased.
    for (age, action) in [(config.rows, "deleted"), (config.text, "text_erased")] {
        let Some(age) = age else { continue };
        let before = cutoff(age)?;
        loop {
            let n = sweep_batch(&mut client, action, before).await?;
            match action {
                "deleted" => swept.deleted += n,
                _ => swept.text_erased += n,
            }
            if let Some(m) = metrics {
                m.retention_rows(action, n);
            }
            if n < BATCH as u64 {
                break;
            }
        }
    }
    Ok(swept)
}

/// The daily task of `likerate run`: a pass at start, then every 24 hours, until shutdown.
/// A failed pass is logged and retried an hour later.
pub async fn run_daily(
    target: Target,
    config: RetentionConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        let wait = match sweep(&target, config, Utc::now(), Some(&metrics)).await {
            Ok(s) => {
                tracing::info!(
                    text_erased = s.text_erased,
                    deleted = s.deleted,
                    "retention pass done"
                );
                Duration::from_secs(24 * 3600)
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "retention pass failed: retry in 1h");
                Duration::from_secs(3600)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
