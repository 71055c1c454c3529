//! `GET /api/feedback/export`: stored feedback rows, a page at a time (bearer token).
//!
//! Guarantees:
//! - Keyset pagination on `id` (the primary key), never OFFSET: each page is one index range
//!   scan from the cursor, whatever the page number. Pages are in ascending `id` order, so
//!   following `Link: <...>; rel="next"` to the end returns every row matching the filters
//!   exactly once, and rows stored meanwhile appear on later pages. The last page has no
//!   `Link` header.
//! - Every stored event is a row, including votes a later event with the same `vote_id`
//!   replaced (the export is the product guide's table dump; `training-data` is where only
//!   current votes count).
//! - `limit` defaults to [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]; the cursor is opaque
//!   (URL-safe base64) and a cursor that is not one of ours is a 400.
//!
//! [`page`] is also what `likerate export --format json` reads, page by page.

use super::{db_error, Authorized, Filter, ParamError, Params};
use crate::db::DbError;
use crate::event::Rating;
use crate::http::{ApiError, AppState};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// Rows after `$1` matching the filters, in id order (`$7` rows).
const PAGE: &str = "
SELECT f.id, f.subject_id::text, f.user_question, f.message_content, f.rating, f.created_at,
       f.model::text, f.reason::text, f.comment
FROM feedback f
WHERE f.id > $1
  AND ($2::text IS NULL OR f.subject_id = $2)
  AND ($3::text IS NULL OR f.model = $3)
  AND ($4::timestamptz IS NULL OR f.created_at >= $4)
  AND ($5::timestamptz IS NULL OR f.created_at < $5)
  AND ($6::int2 IS NULL OR f.rating = $6)
ORDER BY f.id
LIMIT $7";

/// One exported row: the product guide's fields plus `model`, and why the user voted so
/// (`reason`, `comment`: null when none was given or retention erased the comment).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    pub id: i64,
    pub subject_id: String,
    pub user_question: Option<String>,
    pub assistant_message: String,
    pub rating: i16,
    pub rating_label: &'static str,
    /// RFC 3339 in UTC, `Z` suffix, fractional seconds only when there are any.
    pub created_at: String,
    pub model: Option<String>,
    pub reason: Option<String>,
    pub comment: Option<String>,
}

/// The filters of `export` (and of `likerate export --format json`).
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub filter: Filter,
    pub rating: Option<Rating>,
}

/// `rating`: -1, 0, 1 or their labels, spelled exactly so (not `+1` or `01`: the document's
/// enum is the whole list).
pub fn parse_rating(value: Option<&str>) -> Result<Option<Rating>, ParamError> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let rating = match v {
        "like" | "1" => Some(Rating::Like),
        "neutral" | "0" => Some(Rating::Neutral),
        "dislike" | "-1" => Some(Rating::Dislike),
        _ => None,
    };
    rating.map(Some).ok_or_else(|| {
        ParamError::new(
            "rating",
            format!("must be -1, 0, 1, dislike, neutral or like, got {v:?}"),
        )
    })
}

/// Up to `limit` rows with an id above `after`.
pub async fn page(
    client: &deadpool_postgres::Client,
    filter: &ExportFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<ExportRow>, DbError> {
    let f = &filter.filter;
    let rating = filter.rating.map(Rating::as_i16);
    let statement = client.prepare_cached(PAGE).await?;
    let rows = client
        .query(
            &statement,
            &[
                &after,
                &f.subject_id,
                &f.model,
                &f.since,
                &f.until,
                &rating,
                &limit,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let rating: i16 = r.get(4);
            let created: DateTime<Utc> = r.get(5);
            ExportRow {
                id: r.get(0),
                subject_id: r.get(1),
                user_question: r.get(2),
                assistant_message: r.get(3),
                rating,
                rating_label: Rating::from_i64(rating.into()).map_or("neutral", Rating::label),
                created_at: created.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                model: r.get(6),
                reason: r.get(7),
                comment: r.get(8),
            }
        })
        .collect())
}

fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(id.to_be_bytes())
}

fn decode_cursor(value: Option<&str>) -> Result<i64, ParamError> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(0);
    };
    URL_SAFE_NO_PAD
        .decode(v)
        .ok()
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(i64::from_be_bytes)
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ParamError::new(
                "cursor",
                "is not a cursor of this API (take it from the Link header)",
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    subject_id: Option<String>,
    rating: Option<String>,
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

pub async fn export(
    _: Authorized,
    State(state): State<AppState>,
    Params(p): Params<ExportParams>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = ExportFilter {
        filter: Filter::parse(
            p.subject_id.as_deref(),
            p.model.as_deref(),
            p.since.as_deref(),
            p.until.as_deref(),
        )?,
        rating: parse_rating(p.rating.as_deref())?,
    };
    let limit = super::parse_limit(p.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = decode_cursor(p.cursor.as_deref())?;
    let client = state.pool.get().await.map_err(|e| db_error(e.into()))?;
    // One row more than asked tells whether there is a next page.
    let mut rows = page(&client, &filter, after, limit + 1)
        .await
        .map_err(db_error)?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut response = Json(&rows).into_response();
    if let (true, Some(last)) = (more, rows.last()) {
        let link = format!(
            "</api/feedback/export?{}>; rel=\"next\"",
            next_query(query.as_deref().unwrap_or(""), &encode_cursor(last.id))
        );
        // The query is re-encoded by `next_query`, so it is ASCII and always a valid header.
        if let Ok(value) = header::HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

/// The request's query with its cursor replaced. The parameters are decoded the way the
/// handler read them (so `%63ursor` is the cursor too, and is replaced rather than repeated)
/// and encoded again.
fn next_query(query: &str, cursor: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name != "cursor" {
            out.append_pair(&name, &value);
        }
    }
    out.append_pair("cursor", cursor);
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_strangers() {
        for id in [1, 42, i64::MAX] {
            assert_eq!(decode_cursor(Some(&encode_cursor(id))).unwrap(), id);
        }
        assert_eq!(decode_cursor(None).unwrap(), 0);
        for bad in ["42", "!!!", &encode_cursor(-5), "AAAAAAAAAAA"] {
            assert_eq!(decode_cursor(Some(bad)).unwrap_err().param, "cursor");
        }
    }

    #[test]
    fn limits_and_ratings_are_checked() {
        assert_eq!(
            crate::http::api::parse_limit(None, DEFAULT_LIMIT, MAX_LIMIT).unwrap(),
            DEFAULT_LIMIT
        );
        assert_eq!(
            crate::http::api::parse_limit(Some("1000"), DEFAULT_LIMIT, MAX_LIMIT).unwrap(),
            1000
        );
        for bad in ["0", "-1", "1001", "ten"] {
            assert_eq!(
                crate::http::api::parse_limit(Some(bad), DEFAULT_LIMIT, MAX_LIMIT)
                    .unwrap_err()
                    .param,
                "limit"
            );
        }
        assert_eq!(parse_rating(Some("-1")).unwrap(), Some(Rating::Dislike));
        assert_eq!(parse_rating(Some("like")).unwrap(), Some(Rating::Like));
        for bad in ["2", "+1", "01", "-0", "Like"] {
            assert_eq!(
                parse_rating(Some(bad)).unwrap_err().param,
                "rating",
                "{bad}"
            );
        }
    }

    #[test]
    fn next_link_keeps_the_other_parameters() {
        assert_eq!(
            next_query("subject_id=Computer%20Science&cursor=AAA&limit=5", "BBB"),
            "subject_id=Computer+Science&limit=5&cursor=BBB"
        );
        assert_eq!(next_query("", "BBB"), "cursor=BBB");
        // An encoded parameter name is the same parameter: replaced, never repeated.
        assert_eq!(
            next_query("%63ursor=AAA&limit=5", "BBB"),
            "limit=5&cursor=BBB"
        );
    }
}
