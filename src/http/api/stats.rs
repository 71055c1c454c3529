//! `GET /api/feedback/stats` and `GET /api/feedback/daily`: the product guide's two read
//! endpoints, answered from `feedback_rollup` instead of scanning `feedback`.
//!
//! Guarantees:
//! - The counts are those of the votes that currently count (a later event with the same
//!   `vote_id` replaced the earlier one), because the rollups hold exactly those (see
//!   [`crate::sink`]).
//! - Resolution is one minute and the answer is exact within it: the reads are
//!   [`crate::rollup::read`]'s, which say how a range is covered.
//! - `like_percentage` / `like_pct` = `ROUND(likes * 100.0 / total, 1)`; 0.0 without votes.
//! - `daily` follows the product guide's SQL: the last `days` days (from now, to the minute),
//!   grouped by UTC date and subject, newest date first, then subject; dates without votes
//!   are absent.

use super::{db_error, percent_1dp, text_param, Filter, ParamError, Params};
use crate::db::DbError;
use crate::http::{ApiError, AppState};
use crate::rollup::read;
use axum::extract::State;
use axum::Json;
use chrono::{Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    subject_id: Option<String>,
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Stats {
    pub total_feedback: i64,
    pub likes: i64,
    pub dislikes: i64,
    pub neutral: i64,
    pub like_percentage: f64,
    pub subject_id: Option<String>,
}

pub async fn stats(
    State(state): State<AppState>,
    Params(p): Params<StatsParams>,
) -> Result<Json<Stats>, ApiError> {
    let filter = Filter::parse(
        p.subject_id.as_deref(),
        p.model.as_deref(),
        p.since.as_deref(),
        p.until.as_deref(),
    )?;
    let range = filter.rollup_range(filter.model.clone().map(|m| vec![m]));
    let c = async {
        let client = state.pool.get().await?;
        Ok::<_, DbError>(read::total(&client, &range).await?)
    }
    .await
    .map_err(db_error)?;
    Ok(Json(Stats {
        total_feedback: c.total(),
        likes: c.likes,
        dislikes: c.dislikes,
        neutral: c.neutral,
        like_percentage: percent_1dp(c.likes, c.total()),
        subject_id: filter.subject_id,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyParams {
    days: Option<String>,
    subject_id: Option<String>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Day {
    pub date: NaiveDate,
    pub subject_id: String,
    pub total: i64,
    pub likes: i64,
    pub like_pct: f64,
}

/// Longest `daily` range: ten years of day rows per subject is still a small answer.
pub const MAX_DAYS: i64 = 3650;

fn parse_days(value: Option<&str>) -> Result<i64, ParamError> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(30);
    };
    v.parse::<i64>()
        .ok()
        .filter(|d| (1..=MAX_DAYS).contains(d))
        .ok_or_else(|| {
            ParamError::new(
                "days",
                format!("must be an integer from 1 to {MAX_DAYS}, got {v:?}"),
            )
        })
}

pub async fn daily(
    State(state): State<AppState>,
    Params(p): Params<DailyParams>,
) -> Result<Json<Vec<Day>>, ApiError> {
    let days = parse_days(p.days.as_deref())?;
    let filter = Filter {
        subject_id: text_param("subject_id", p.subject_id.as_deref())?,
        since: Some(Utc::now() - Duration::days(days)),
        ..Filter::default()
    };
    let range = filter.rollup_range(None);
    let days = async {
        let client = state.pool.get().await?;
        Ok::<_, DbError>(read::daily(&client, &range).await?)
    }
    .await
    .map_err(db_error)?;
    Ok(Json(
        days.into_iter()
            .map(|(date, subject_id, c)| Day {
                date,
                subject_id,
                total: c.total(),
                likes: c.likes,
                like_pct: percent_1dp(c.likes, c.total()),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_checked() {
        assert_eq!(parse_days(None).unwrap(), 30);
        assert_eq!(parse_days(Some("7")).unwrap(), 7);
        for bad in ["0", "-3", "abc", "3651", "1.5"] {
            assert_eq!(parse_days(Some(bad)).unwrap_err().param, "days");
        }
    }
}
