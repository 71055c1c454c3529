//! `GET /api/feedback/reasons`: why users vote as they do, counted per `reason` tag.
//!
//! Guarantees:
//! - The counts are those of the votes that currently count (the rule of [`crate::votes`]'s
//!   `current_votes!`), so `likes`, `dislikes` and `neutral` summed over `reasons`, `other` and
//!   the votes without a reason equal `GET /api/feedback/stats` for the same filter: `since` and
//!   `until` are rounded down to the minute like the rollups.
//! - Per tag: its likes, dislikes and neutral votes, how many of them carry a comment, and its
//!   share of the dislikes. The `limit` tags with the most dislikes (then votes, then tag, by
//!   code point) are answered ([`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]); the rest are summed
//!   in `other`, with how many tags it holds, so the answer is bounded however many distinct
//!   tags the period has. `other` is a field of its own, not a row of `reasons`: a tag is any
//!   text, `_other` included, and could not be told apart from such a row.
//! - Tags are any text (docs/design.md): JSON escapes them here; the report escapes them for
//!   HTML and Markdown.
//! - A read of the period's rows through `ix_feedback_created`, linear in its votes (like
//!   `compare` by conversation): reasons are not in the rollups. The grouping and the cut are
//!   done in PostgreSQL, so at most `limit + 2` rows come back.
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

/// Tags answered when `limit` is not given: a table's worth.
pub const DEFAULT_LIMIT: i64 = 20;
/// Most tags answered at once.
pub const MAX_LIMIT: i64 = 500;

/// `$1` ratings, `$2` subject, `$3` model, `$4`/`$5` range, `$6` limit: one row per answered
/// tag (`tag`, ranked), one summing the tags past the limit (`other`, with their number) and
/// one for the votes without a reason (`none`); each with its likes, dislikes, neutral votes,
/// votes with a comment and dislikes with a comment.
const BY_REASON: &str = concat!(
    "WITH by_reason AS MATERIALIZED (
    SELECT f.reason::text AS reason,
           count(*) FILTER (WHERE f.rating = 1) AS likes,
           count(*) FILTER (WHERE f.rating = -1) AS dislikes,
           count(*) FILTER (WHERE f.rating = 0) AS neutral,
           count(f.comment) AS with_comment,
           count(f.comment) FILTER (WHERE f.rating = -1) AS dislikes_with_comment",
    current_votes!(),
    "
    GROUP BY 1),
ranked AS (
    SELECT *, row_number() OVER (ORDER BY dislikes DESC, likes + dislikes + neutral DESC,
                                          reason COLLATE \"C\") AS n
    FROM by_reason WHERE reason IS NOT NULL)
SELECT 'tag', reason, likes, dislikes, neutral, with_comment, dislikes_with_comment,
       1::int8, n
FROM ranked WHERE n <= $6
UNION ALL
SELECT 'other', NULL, coalesce(sum(likes), 0)::int8, coalesce(sum(dislikes), 0)::int8,
       coalesce(sum(neutral), 0)::int8, coalesce(sum(with_comment), 0)::int8,
       coalesce(sum(dislikes_with_comment), 0)::int8, count(*), NULL
FROM ranked WHERE n > $6
UNION ALL
SELECT 'none', NULL, likes, dislikes, neutral, with_comment, dislikes_with_comment, 0, NULL
FROM by_reason WHERE reason IS NULL
ORDER BY 9"
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonsParams {
    subject_id: Option<String>,
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
}

/// The votes of one tag, or of the tags summed in `other`.
#[derive(Serialize, Debug, Clone, PartialEq, Default)]
pub struct ReasonVotes {
    pub likes: i64,
    pub dislikes: i64,
    pub neutral: i64,
    pub total: i64,
    /// Of these votes, those with a comment.
    pub with_comment: i64,
    /// `100 * dislikes / all dislikes` of the filter, one decimal; 0.0 without dislikes.
    pub dislike_percentage: f64,
}

impl ReasonVotes {
    fn new(c: Counts, with_comment: i64, all_dislikes: i64) -> ReasonVotes {
        ReasonVotes {
            likes: c.likes,
            dislikes: c.dislikes,
            neutral: c.neutral,
            total: c.total(),
            with_comment,
            dislike_percentage: percent_1dp(c.dislikes, all_dislikes),
        }
    }
}

/// One reason tag's votes.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ReasonCount {
    pub reason: String,
    #[serde(flatten)]
    pub votes: ReasonVotes,
}

/// The tags past the limit, summed.
#[derive(Serialize, Debug, Clone, PartialEq, Default)]
pub struct OtherReasons {
    /// How many tags are summed here.
    pub reasons: i64,
    #[serde(flatten)]
    pub votes: ReasonVotes,
}

/// The answer.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Reasons {
    pub subject_id: Option<String>,
    pub model: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Tags answered at most.
    pub limit: i64,
    /// All current votes of the filter, with or without a reason.
    pub likes: i64,
    pub dislikes: i64,
    pub neutral: i64,
    /// Dislikes that carry a reason, and those that carry a comment.
    pub dislikes_with_reason: i64,
    pub dislikes_with_comment: i64,
    /// The `limit` tags with the most dislikes, then votes, then tag.
    pub reasons: Vec<ReasonCount>,
    /// The tags past `limit`, summed.
    pub other: OtherReasons,
}

/// The votes of `filter` per reason tag: the `limit` first, the rest summed.
pub async fn read(
    client: &impl GenericClient,
    filter: &Filter,
    limit: i64,
) -> Result<Reasons, DbError> {
    let minute = |t: Option<DateTime<Utc>>| t.map(|t| crate::rollup::truncate(t, 60));
    let (since, until) = (minute(filter.since), minute(filter.until));
    let ratings: Vec<i16> = vec![-1, 0, 1];
    let statement = client.prepare_cached(BY_REASON).await?;
    let rows = client
        .query(
            &statement,
            &[
                &ratings,
                &filter.subject_id,
                &filter.model,
                &since,
                &until,
                &limit,
            ],
        )
        .await?;
    let mut all = Counts::default();
    let mut dislikes_with_comment = 0;
    let mut tags: Vec<(String, Counts, i64)> = Vec::new();
    let mut other: Option<(i64, Counts, i64)> = None;
    for r in &rows {
        let c = Counts {
            likes: r.get(2),
            dislikes: r.get(3),
            neutral: r.get(4),
        };
        let with_comment: i64 = r.get(5);
        all += c;
        dislikes_with_comment += r.get::<_, i64>(6);
        match (r.get::<_, &str>(0), r.get::<_, Option<String>>(1)) {
            ("tag", Some(reason)) => tags.push((reason, c, with_comment)),
            ("other", _) => other = Some((r.get(7), c, with_comment)),
            _ => {}
        }
    }
    let reasons: Vec<ReasonCount> = tags
        .into_iter()
        .map(|(reason, c, with_comment)| ReasonCount {
            reason,
            votes: ReasonVotes::new(c, with_comment, all.dislikes),
        })
        .collect();
    let other = other
        .map(|(n, c, with_comment)| OtherReasons {
            reasons: n,
            votes: ReasonVotes::new(c, with_comment, all.dislikes),
        })
        .unwrap_or_default();
    Ok(Reasons {
        subject_id: filter.subject_id.clone(),
        model: filter.model.clone(),
        since,
        until,
        limit,
        likes: all.likes,
        dislikes: all.dislikes,
        neutral: all.neutral,
        dislikes_with_reason: reasons.iter().map(|r| r.votes.dislikes).sum::<i64>()
            + other.votes.dislikes,
        dislikes_with_comment,
        reasons,
        other,
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
    let limit = super::parse_limit(p.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let answer = async {
        let client = state.pool.get().await?;
        read(&client, &filter, limit).await
    }
    .await
    .map_err(db_error)?;
    Ok(Json(answer))
}
