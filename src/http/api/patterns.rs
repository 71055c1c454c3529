//! `GET /api/feedback/dislike-patterns` (bearer token) and [`read`], which the report and the
//! pattern gauges use: per subject, the words and two-word phrases over-represented in
//! disliked questions and answers against liked ones.
//!
//! The method (docs/patterns.md has the derivation and the choices): a vote is a document,
//! its question and answer together; the current votes of the filter (the rule of
//! [`crate::votes`]), likes against dislikes, neutral ones left out. The text is split into
//! lower-case tokens, runs of letters and digits with an inner apostrophe ([`TOKEN`]); a term
//! is a token or two adjacent tokens of the same field, counted once per document. Each term
//! of a subject is scored with the weighted log-odds ratio with an informative Dirichlet prior
//! (Monroe, Colaresi and Quinn 2008, "Fightin' Words"), the prior being the subject's pooled
//! counts (`alpha_w = y_w`, `alpha_0 = n`): `z` is the log-odds difference over its standard
//! error, so a term seen once, only in a dislike, scores below 1 instead of topping the list
//! as a raw ratio would.
//!
//! Guarantees:
//! - Bounded work: at most [`MAX_ROWS`] votes are read (the newest first; `capped` says when
//!   the cap was reached), each field cut to [`MAX_FIELD_CHARS`] characters, in one read-only
//!   transaction with a [`STATEMENT_TIMEOUT`]; at most [`MAX_SUBJECTS`] subjects (the most
//!   dislikes first) and `limit` terms each (at most [`MAX_LIMIT`]) are answered. Rows whose
//!   text retention erased take no part.
//! - Only terms with a positive `z` (more frequent in dislikes than the prior expects) are
//!   answered, highest first; each carries its document counts in both classes and up to
//!   [`EXAMPLES`] event ids of recent disliked votes that contain it.
//! - The route returns fragments of user text, so it needs the export token like `export`.
//!   At most two reads run at once (`CONCURRENT_PATTERNS`); more get 429.

use super::{db_error, Authorized, Filter, Params};
use crate::db::DbError;
use crate::http::{ApiError, AppState};
use crate::telemetry::Metrics;
use crate::votes::current_votes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_postgres::IsolationLevel;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Votes read at most, the newest first (the ones a drop is about). Measured on the 2-core
/// test machine, 20 subjects, answers of 2,100 characters drawn from 5,000 words: 5,000
/// votes cut to 1,000 characters a field took 1.7 s (6.2 million term rows at 10,000 votes
/// and 2,000 characters took 9.3 s).
pub const MAX_ROWS: i64 = 5_000;
/// Characters of a question or an answer that are tokenised: an answer's opening, where what
/// it is about shows.
pub const MAX_FIELD_CHARS: i32 = 1_000;
/// Subjects answered at most, those with the most disliked votes read first.
pub const MAX_SUBJECTS: i64 = 50;
pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;
/// Example event ids per term.
pub const EXAMPLES: i64 = 3;
/// Longest term answered, in characters (a longer token is a URL, a hash or a run-on).
pub const MAX_TERM_CHARS: i32 = 64;
const STATEMENT_TIMEOUT: &str = "30s";
/// Memory of each sort and hash of the query: the votes read and their term counts fit in it,
/// where the default 4 MB spilled 200 MB to disk at 10,000 votes. (JIT is off too: the
/// query took 1.8 s with it, 1.6 s without, in the measurement above.)
const WORK_MEM: &str = "32MB";

/// The tokeniser: letters and digits (any script; the database's character classes), with
/// one inner apostrophe kept (`don't`).
const TOKEN: &str = "[[:alnum:]]+(?:'[[:alnum:]]+)?";

const PATTERNS: &str = concat!(
    "WITH docs AS MATERIALIZED (
    SELECT f.event_id, f.subject_id::text AS subject, f.rating, f.created_at,
           left(coalesce(f.user_question, ''), $7) AS q, left(f.message_content, $7) AS a",
    current_votes!(),
    " AND NOT f.text_erased
    ORDER BY f.created_at DESC, f.event_id DESC
    LIMIT $6),
subjects AS (
    SELECT subject, count(*) FILTER (WHERE rating = -1) AS docs_d,
           count(*) FILTER (WHERE rating = 1) AS docs_l, count(*) AS docs
    FROM docs GROUP BY subject
    ORDER BY 2 DESC, subject LIMIT $9),
words AS MATERIALIZED (
    SELECT d.event_id, d.subject, d.rating, d.created_at,
           ' ' || array_to_string(ARRAY(SELECT m[1] FROM regexp_matches(lower(d.q), $10, 'g') AS m),
                                  ' ') || ' ' AS sq,
           ' ' || array_to_string(ARRAY(SELECT m[1] FROM regexp_matches(lower(d.a), $10, 'g') AS m),
                                  ' ') || ' ' AS sa
    FROM docs d JOIN subjects USING (subject)),
counts AS (
    SELECT w.subject, t.term, count(*) FILTER (WHERE w.rating = -1) AS y_d,
           count(*) FILTER (WHERE w.rating = 1) AS y_l
    FROM words w
    CROSS JOIN LATERAL (SELECT string_to_array(btrim(w.sq), ' ') AS q,
                               string_to_array(btrim(w.sa), ' ') AS a) x
    CROSS JOIN LATERAL (
        SELECT DISTINCT y.term FROM (
            SELECT unnest(x.q || x.a) AS term
            UNION ALL
            SELECT p.a || ' ' || p.b FROM unnest(x.q[1:cardinality(x.q) - 1], x.q[2:]) AS p(a, b)
            UNION ALL
            SELECT p.a || ' ' || p.b FROM unnest(x.a[1:cardinality(x.a) - 1], x.a[2:]) AS p(a, b)) y
        WHERE char_length(y.term) BETWEEN 2 AND $11) t
    GROUP BY 1, 2),
totals AS (
    SELECT subject, sum(y_d)::float8 AS n_d, sum(y_l)::float8 AS n_l FROM counts
    GROUP BY subject),
scored AS (
    SELECT c.subject, c.term, c.y_d, c.y_l, s.delta, s.delta / sqrt(s.variance) AS z
    FROM counts c JOIN totals t USING (subject)
    CROSS JOIN LATERAL (SELECT (c.y_d + c.y_l)::float8 AS alpha, t.n_d + t.n_l AS alpha0) p
    CROSS JOIN LATERAL (SELECT
        ln((c.y_d + p.alpha) / (t.n_d + p.alpha0 - c.y_d - p.alpha))
          - ln((c.y_l + p.alpha) / (t.n_l + p.alpha0 - c.y_l - p.alpha)) AS delta,
        1.0 / (c.y_d + p.alpha) + 1.0 / (c.y_l + p.alpha) AS variance) s
    WHERE c.y_d > 0 AND t.n_l > 0
      AND t.n_d + p.alpha0 - c.y_d - p.alpha > 0 AND t.n_l + p.alpha0 - c.y_l - p.alpha > 0),
top AS (
    SELECT * FROM (SELECT s.*, row_number() OVER (PARTITION BY subject
                                                  ORDER BY z DESC, term COLLATE \"C\") AS rank
                   FROM scored s WHERE z > 0) r
    WHERE rank <= $8),
examples AS (
    SELECT subject, term, array_agg(event_id ORDER BY n) AS ids
    FROM (SELECT t.subject, t.term, w.event_id,
                 row_number() OVER (PARTITION BY t.subject, t.term
                                    ORDER BY w.created_at DESC, w.event_id DESC) AS n
          FROM top t JOIN words w ON w.subject = t.subject AND w.rating = -1
          WHERE strpos(w.sq, ' ' || t.term || ' ') > 0
             OR strpos(w.sa, ' ' || t.term || ' ') > 0) x
    WHERE n <= $12
    GROUP BY subject, term)
SELECT s.subject, s.docs_d, s.docs_l, (SELECT count(*) FROM docs),
       t.term, t.y_d, t.y_l, t.delta, t.z, x.ids
FROM subjects s
LEFT JOIN top t USING (subject)
LEFT JOIN examples x USING (subject, term)
ORDER BY s.docs_d DESC, s.subject COLLATE \"C\", t.rank"
);

/// One over-represented term of a subject.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Term {
    /// A word or two words joined by one space, lower case.
    pub term: String,
    /// The log-odds difference over its standard error (positive: more frequent in dislikes).
    pub z: f64,
    /// The log-odds difference, dislikes against likes, with the prior.
    pub log_odds: f64,
    /// Disliked votes whose question or answer holds the term.
    pub dislikes: i64,
    /// Liked votes whose question or answer holds the term.
    pub likes: i64,
    /// Recent disliked votes holding the term, newest first.
    pub examples: Vec<Uuid>,
}

/// The patterns of one subject.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SubjectPatterns {
    pub subject_id: String,
    /// Disliked and liked votes read for this subject.
    pub disliked_votes: i64,
    pub liked_votes: i64,
    pub terms: Vec<Term>,
}

/// What [`read`] found.
#[derive(Serialize, Debug, Clone, PartialEq, Default)]
pub struct Patterns {
    /// Votes read (likes and dislikes of every subject).
    pub votes_read: i64,
    /// Whether [`MAX_ROWS`] was reached: older votes were not read.
    pub capped: bool,
    pub subjects: Vec<SubjectPatterns>,
}

/// The patterns of the current votes matching `filter`, `limit` terms per subject.
pub async fn read(
    client: &mut tokio_postgres::Client,
    filter: &Filter,
    limit: i64,
) -> Result<Patterns, DbError> {
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    txn.batch_execute(&format!(
        "SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'; SET LOCAL work_mem = '{WORK_MEM}';
         SET LOCAL jit = off"
    ))
    .await?;
    let ratings: Vec<i16> = vec![1, -1];
    let statement = txn.prepare(PATTERNS).await?;
    let rows = txn
        .query(
            &statement,
            &[
                &ratings,
                &filter.subject_id,
                &filter.model,
                &filter.since,
                &filter.until,
                &MAX_ROWS,
                &MAX_FIELD_CHARS,
                &limit,
                &MAX_SUBJECTS,
                &TOKEN,
                &MAX_TERM_CHARS,
                &EXAMPLES,
            ],
        )
        .await?;
    txn.commit().await?;
    let mut out = Patterns::default();
    for r in &rows {
        out.votes_read = r.get(3);
        let subject: String = r.get(0);
        if out.subjects.last().map(|s| &s.subject_id) != Some(&subject) {
            out.subjects.push(SubjectPatterns {
                subject_id: subject,
                disliked_votes: r.get(1),
                liked_votes: r.get(2),
                terms: Vec::new(),
            });
        }
        let Some(term) = r.get::<_, Option<String>>(4) else {
            continue;
        };
        if let Some(s) = out.subjects.last_mut() {
            s.terms.push(Term {
                term,
                dislikes: r.get(5),
                likes: r.get(6),
                log_odds: r.get(7),
                z: r.get(8),
                examples: r.get::<_, Option<Vec<Uuid>>>(9).unwrap_or_default(),
            });
        }
    }
    out.capped = out.votes_read >= MAX_ROWS;
    Ok(out)
}

/// How often `likerate run` refreshes `likerate_dislike_pattern_z`: patterns move over hours,
/// and a refresh reads up to [`MAX_ROWS`] votes.
pub const GAUGE_EVERY: Duration = Duration::from_secs(300);
/// The period the gauges describe, ending now.
pub const GAUGE_PERIOD: chrono::Duration = chrono::Duration::hours(24);

/// The z from which a term is shown on the gauges and in the report: 1.96, where a single
/// term's over-representation would arise by chance in 2.5% of corpora. The API answers every
/// positive z and leaves the cut to its reader.
pub const NOTABLE_Z: f64 = 1.96;

/// Refreshes the pattern gauges (the last [`GAUGE_PERIOD`], notable top terms per subject) every
/// [`GAUGE_EVERY`] until `shutdown`. A failed refresh is logged and keeps the previous
/// series; the next period tries again.
pub async fn refresh_gauges(
    pool: deadpool_postgres::Pool,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(GAUGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let filter = Filter {
            since: Some(Utc::now() - GAUGE_PERIOD),
            ..Filter::default()
        };
        let read = async {
            let mut client = pool.get().await?;
            read(&mut client, &filter, crate::telemetry::PATTERN_TERMS as i64).await
        };
        match read.await {
            Ok(p) => metrics.dislike_patterns(p.subjects.iter().map(|s| {
                (
                    s.subject_id.as_str(),
                    s.terms
                        .iter()
                        .filter(|t| t.z >= NOTABLE_Z)
                        .map(|t| (t.term.as_str(), t.z))
                        .collect(),
                )
            })),
            Err(e) => tracing::warn!(error = %e, "dislike pattern gauges not refreshed"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternParams {
    subject_id: Option<String>,
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
}

/// The answer of the route: what [`read`] found and the range it covered.
#[derive(Serialize)]
pub struct PatternAnswer {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub max_votes: i64,
    #[serde(flatten)]
    pub patterns: Patterns,
}

pub async fn dislike_patterns(
    _: Authorized,
    State(state): State<AppState>,
    Params(p): Params<PatternParams>,
) -> Result<Json<PatternAnswer>, ApiError> {
    let filter = Filter::parse(
        p.subject_id.as_deref(),
        p.model.as_deref(),
        p.since.as_deref(),
        p.until.as_deref(),
    )?;
    let limit = super::parse_limit(p.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let _permit = state.api.patterns.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "other dislike-patterns reads are running: retry later",
        )
    })?;
    let mut client = state.pool.get().await.map_err(|e| db_error(e.into()))?;
    let patterns = read(&mut client, &filter, limit).await.map_err(db_error)?;
    Ok(Json(PatternAnswer {
        since: filter.since,
        until: filter.until,
        max_votes: MAX_ROWS,
        patterns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert_eq!(
            crate::http::api::parse_limit(None, DEFAULT_LIMIT, MAX_LIMIT).unwrap(),
            DEFAULT_LIMIT
        );
        assert_eq!(
            crate::http::api::parse_limit(Some("100"), DEFAULT_LIMIT, MAX_LIMIT).unwrap(),
            100
        );
        for bad in ["0", "101", "-3", "x", "1.5"] {
            assert_eq!(
                crate::http::api::parse_limit(Some(bad), DEFAULT_LIMIT, MAX_LIMIT)
                    .unwrap_err()
                    .param,
                "limit"
            );
        }
    }
}
