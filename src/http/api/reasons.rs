//! `GET /api/feedback/reasons`: why users vote as they do, counted per `reason` tag.
//!
//! Guarantees:
//! - The counts are those of the votes that currently count (the rule of [`crate::votes`]'s
//!   `current_votes!`), so `likes`, `dislikes` and `neutral` summed over `reasons` plus the
//!   votes without a reason equal `GET /api/feedback/stats` for the same filter: `since` and
//!   `until` are rounded down to the minute like the rollups.
//! - Per tag: its likes, dislikes and neutral votes, how many of them carry a comment, and its
//!   share of the dislikes. Ordered by dislikes, then all votes, then tag. Tags are from the
//!   decoder's grammar (`[a-z0-9_-]`), so they need no escaping anywhere.
//! - A read of the period's rows through `ix_feedback_created`, linear in its votes (like
//!   `compare` by conversation): reasons are not in the rollups.
//!
//! [`read`] is shared with `likerate report`.

use super::{db_error, percent_1dp, Filter, Params};
use crate::db::DbError;
use crate::http::{ApiError, AppState};
use crate::rollup::Counts;
use crate::votes::current_votes;
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};

/// `$1` ratings, `$2` subject, `$3` model, `$4`/`$5` range: current votes per reason (NULL:
/// none given) and rating, with how many carry a comment.
const BY_REASON: &str = concat!(
    "SELECT f.reason::text, f.rating, count(*)::int8, count(f.comment)::int8",
    current_votes!(),
    "
GROUP BY 1, 2"
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonsParams {
    subject_id: Option<String>,
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// One reason tag's votes.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ReasonCount {
    pub reason: String,
    pub likes: i64,
    pub dislikes: i64,
    pub neutral: i64,
    pub total: i64,
    /// Of these votes, those with a comment.
    pub with_comment: i64,
    /// `100 * dislikes / all dislikes` of the filter, one decimal; 0.0 without dislikes.
    pub dislike_percentage: f64,
}

/// The answer.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Reasons {
    pub subject_id: Option<String>,
    pub model: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// All current votes of the filter, with or without a reason.
    pub likes: i64,
    pub dislikes: i64,
    pub neutral: i64,
    /// Dislikes that carry a reason, and those that carry a comment.
    pub dislikes_with_reason: i64,
    pub dislikes_with_comment: i64,
    pub reasons: Vec<ReasonCount>,
}

/// The votes of `filter` per reason tag.
pub async fn read(client: &impl GenericClient, filter: &Filter) -> Result<Reasons, DbError> {
    let minute = |t: Option<DateTime<Utc>>| t.map(|t| crate::rollup::truncate(t, 60));
    let (since, until) = (minute(filter.since), minute(filter.until));
    let ratings: Vec<i16> = vec![-1, 0, 1];
    let statement = client.prepare_cached(BY_REASON).await?;
    let rows = client
        .query(
            &statement,
            &[&ratings, &filter.subject_id, &filter.model, &since, &until],
        )
        .await?;
    let mut all = Counts::default();
    let mut dislikes_with_comment = 0;
    let mut by: std::collections::BTreeMap<String, (Counts, i64)> = Default::default();
    for r in &rows {
        let (reason, rating, n, comments): (Option<String>, i16, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let mut c = Counts::default();
        match rating {
            1 => c.likes = n,
            -1 => c.dislikes = n,
            _ => c.neutral = n,
        }
        all += c;
        if rating == -1 {
            dislikes_with_comment += comments;
        }
        if let Some(reason) = reason {
            let entry = by.entry(reason).or_default();
            entry.0 += c;
            entry.1 += comments;
        }
    }
    let mut reasons: Vec<ReasonCount> = by
        .into_iter()
        .map(|(reason, (c, with_comment))| ReasonCount {
            reason,
            likes: c.likes,
            dislikes: c.dislikes,
            neutral: c.neutral,
            total: c.total(),
            with_comment,
            dislike_percentage: percent_1dp(c.dislikes, all.dislikes),
        })
        .collect();
    reasons.sort_by(|a, b| {
        b.dislikes
            .cmp(&a.dislikes)
            .then(b.total.cmp(&a.total))
            .then_with(|| a.reason.cmp(&b.reason))
    });
    Ok(Reasons {
        subject_id: filter.subject_id.clone(),
        model: filter.model.clone(),
        since,
        until,
        likes: all.likes,
        dislikes: all.dislikes,
        neutral: all.neutral,
        dislikes_with_reason: reasons.iter().map(|r| r.dislikes).sum(),
        dislikes_with_comment,
        reasons,
    })
}

pub async fn reasons(
    State(state): State<AppState>,
    Params(p): Params<ReasonsParams>,
) -> Result<Json<Reasons>, ApiError> {
    let filter = Filter::parse(
        p.subject_id.as_deref(),
        p.model.as_deref(),
        p.since.as_deref(),
        p.until.as_deref(),
    )?;
    let answer = async {
        let client = state.pool.get().await?;
        read(&client, &filter).await
    }
    .await
    .map_err(db_error)?;
    Ok(Json(answer))
}
