//! `GET /api/feedback/training-data` (bearer token) and the rows of
//! `likerate export --format openai|dpo`: fine-tuning data as JSON Lines.
//!
//! - `openai`: `{"messages":[{"role":"user","content":Q},{"role":"assistant","content":A}]}`
//!   for every answer whose current vote is a like (a later event with the same `vote_id`
//!   replaced earlier ones; events without `vote_id` are each a vote); identical
//!   (question, answer) pairs appear once. Ordered by question, then answer.
//! - `dpo`: `{"prompt":Q,"chosen":A1,"rejected":A2}`, one line per question that has both a
//!   liked and a disliked answer, counting current votes: an answer is liked when its likes
//!   outnumber its dislikes and disliked the other way round. `chosen` is the answer with the
//!   largest lead of likes, `rejected` the one with the largest lead of dislikes (ties: the
//!   most recently stored). Neutral votes take no part.
//!
//! Guarantees:
//! - Constant memory for any number of rows: the query runs in one read-only REPEATABLE READ
//!   transaction (a consistent snapshot) and rows are fetched through a portal,
//!   [`PORTAL_ROWS`] at a time, into a bounded channel the consumer drains; PostgreSQL does
//!   the de-duplication and grouping (spilling to disk if it must).
//! - Rows without `user_question` cannot become training pairs: they are skipped and counted,
//!   in the same snapshot, before the first line is sent. HTTP returns the count in the
//!   `X-Likerate-Skipped-Rows` header; `likerate export` prints it in its summary. (Skipped =
//!   current likes without a question for `openai`; current likes and dislikes without one
//!   for `dpo`.)
//! - A failure after the first line ends the HTTP response without its final chunk, so a
//!   client sees an incomplete transfer, never a short file that looks complete.
//! - At most two streams run at once (`CONCURRENT_STREAMS`); more get 429.

use super::{db_error, Authorized, Filter, ParamError, Params};
use crate::db::DbError;
use crate::http::{ApiError, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::IsolationLevel;

/// Rows per portal fetch: big enough to amortise the round trip, small enough that a chunk
/// of long answers stays a few MiB.
const PORTAL_ROWS: i32 = 500;

/// Exports may sort every matching row before the first one comes out: their statements get
/// this timeout instead of `LIKERATE_DATABASE_TIMEOUT`.
const EXPORT_STATEMENT_TIMEOUT: &str = "15min";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAi,
    Dpo,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::OpenAi => "openai",
            Format::Dpo => "dpo",
        }
    }

    fn parse(value: Option<&str>) -> Result<Format, ParamError> {
        match value {
            Some("openai") => Ok(Format::OpenAi),
            Some("dpo") => Ok(Format::Dpo),
            None | Some("") => Err(ParamError::new("format", "is required: openai or dpo")),
            Some(other) => Err(ParamError::new(
                "format",
                format!("must be openai or dpo, got {other:?}"),
            )),
        }
    }

    /// The ratings whose rows can feed this format.
    fn ratings(self) -> Vec<i16> {
        match self {
            Format::OpenAi => vec![1],
            Format::Dpo => vec![1, -1],
        }
    }
}

use crate::votes::current_votes;

const SKIPPED: &str = concat!(
    "SELECT count(*)",
    current_votes!(),
    " AND f.user_question IS NULL"
);

// "C" collation: byte order sorts faster than a linguistic one, and equality is the same.
const OPENAI: &str = concat!(
    "SELECT DISTINCT ON (f.user_question COLLATE \"C\", f.message_content COLLATE \"C\")
            f.user_question, f.message_content",
    current_votes!(),
    " AND f.user_question IS NOT NULL
ORDER BY f.user_question COLLATE \"C\", f.message_content COLLATE \"C\""
);

const DPO: &str = concat!(
    "WITH answers AS (
    SELECT f.user_question AS q, f.message_content AS a,
           count(*) FILTER (WHERE f.rating = 1) AS likes,
           count(*) FILTER (WHERE f.rating = -1) AS dislikes,
           max(f.id) AS last_id",
    current_votes!(),
    " AND f.user_question IS NOT NULL
    GROUP BY 1, 2),
chosen AS (
    SELECT DISTINCT ON (q COLLATE \"C\") q, a FROM answers WHERE likes > dislikes
    ORDER BY q COLLATE \"C\", likes - dislikes DESC, last_id DESC),
rejected AS (
    SELECT DISTINCT ON (q COLLATE \"C\") q, a FROM answers WHERE dislikes > likes
    ORDER BY q COLLATE \"C\", dislikes - likes DESC, last_id DESC)
SELECT c.q, c.a, r.a FROM chosen c JOIN rejected r ON r.q = c.q
ORDER BY c.q COLLATE \"C\""
);

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct OpenAiLine<'a> {
    messages: [Message<'a>; 2],
}

#[derive(Serialize)]
struct DpoLine<'a> {
    prompt: &'a str,
    chosen: &'a str,
    rejected: &'a str,
}

/// Some lines of output.
pub struct Chunk {
    pub data: Bytes,
    pub lines: u64,
}

/// A running export: the skipped count, then the lines.
pub struct Training {
    pub skipped: i64,
    pub chunks: mpsc::Receiver<Result<Chunk, DbError>>,
}

/// Starts the export on its own task, which owns `client` until the last line is taken or
/// the receiver is dropped. Returns once the skipped rows are counted.
pub async fn start(
    client: deadpool_postgres::Client,
    format: Format,
    filter: Filter,
) -> Result<Training, DbError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut client = client;
        let mut ready = Some(ready_tx);
        let outcome = produce(&mut client, format, &filter, &mut ready, &tx).await;
        match (outcome, ready.take()) {
            (Ok(lines), _) => {
                tracing::info!(format = format.name(), lines, "training data exported")
            }
            (Err(e), Some(ready)) => {
                let _ = ready.send(Err(e));
            }
            (Err(e), None) => {
                tracing::warn!(format = format.name(), error = %e, "training data export failed");
                let _ = tx.send(Err(e)).await;
            }
        }
    });
    let skipped = ready_rx
        .await
        .map_err(|_| DbError::Unavailable("export task ended".into()))??;
    Ok(Training {
        skipped,
        chunks: rx,
    })
}

/// Runs the export; returns the lines sent. Stops early, without error, when the receiver
/// is gone (the HTTP client hung up).
#[allow(
    clippy::expect_used,
    reason = "serializing structs of strings and booleans into a Vec cannot fail"
)]
async fn produce(
    client: &mut deadpool_postgres::Client,
    format: Format,
    filter: &Filter,
    ready: &mut Option<oneshot::Sender<Result<i64, DbError>>>,
    tx: &mpsc::Sender<Result<Chunk, DbError>>,
) -> Result<u64, DbError> {
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    txn.batch_execute(&format!(
        "SET LOCAL statement_timeout = '{EXPORT_STATEMENT_TIMEOUT}'"
    ))
    .await?;
    let ratings = format.ratings();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &ratings,
        &filter.subject_id,
        &filter.model,
        &filter.since,
        &filter.until,
    ];
    let skipped: i64 = txn.query_one(SKIPPED, &params).await?.get(0);
    if let Some(ready) = ready.take() {
        if ready.send(Ok(skipped)).is_err() {
            return Ok(0);
        }
    }
    let sql = match format {
        Format::OpenAi => OPENAI,
        Format::Dpo => DPO,
    };
    let statement = txn.prepare_cached(sql).await?;
    let portal = txn.bind(&statement, &params).await?;
    let mut sent = 0;
    loop {
        let rows = txn.query_portal(&portal, PORTAL_ROWS).await?;
        let mut data = Vec::new();
        for r in &rows {
            let line = match format {
                Format::OpenAi => serde_json::to_writer(
                    &mut data,
                    &OpenAiLine {
                        messages: [
                            Message {
                                role: "user",
                                content: r.get(0),
                            },
                            Message {
                                role: "assistant",
                                content: r.get(1),
                            },
                        ],
                    },
                ),
                Format::Dpo => serde_json::to_writer(
                    &mut data,
                    &DpoLine {
                        prompt: r.get(0),
                        chosen: r.get(1),
                        rejected: r.get(2),
                    },
                ),
            };
            line.expect("serializing strings to memory cannot fail");
            data.push(b'\n');
        }
        if !rows.is_empty() {
            let chunk = Chunk {
                data: Bytes::from(data),
                lines: rows.len() as u64,
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return Ok(sent);
            }
            sent += rows.len() as u64;
        }
        if rows.len() < PORTAL_ROWS as usize {
            return Ok(sent);
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingParams {
    format: Option<String>,
    subject_id: Option<String>,
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

pub async fn training_data(
    _: Authorized,
    State(state): State<AppState>,
    Params(p): Params<TrainingParams>,
) -> Result<Response, ApiError> {
    let format = Format::parse(p.format.as_deref())?;
    let filter = Filter::parse(
        p.subject_id.as_deref(),
        p.model.as_deref(),
        p.since.as_deref(),
        p.until.as_deref(),
    )?;
    let permit = state.api.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "other training-data exports are running: retry later",
        )
    })?;
    let client = state.pool.get().await.map_err(|e| db_error(e.into()))?;
    let training = start(client, format, filter).await.map_err(db_error)?;
    // The permit lives as long as the body: it is released when the stream ends or is dropped.
    let body = futures::stream::unfold(
        (training.chunks, permit),
        |(mut chunks, permit)| async move {
            let item = chunks.recv().await?;
            Some((item.map(|c| c.data), (chunks, permit)))
        },
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            ),
            (
                header::HeaderName::from_static("x-likerate-skipped-rows"),
                HeaderValue::from(training.skipped),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_checked() {
        assert_eq!(Format::parse(Some("dpo")).unwrap(), Format::Dpo);
        assert_eq!(Format::parse(Some("csv")).unwrap_err().param, "format");
        assert_eq!(Format::parse(None).unwrap_err().param, "format");
    }
}
