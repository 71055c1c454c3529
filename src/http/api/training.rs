//! `GET /api/feedback/training-data` (bearer token) and the rows of
//! `likerate export --format openai|dpo|kto|openai-dpo`: fine-tuning data as JSON Lines.
//!
//! An answer's verdict counts current votes (a later event with the same `vote_id` replaced
//! earlier ones; events without `vote_id` are each a vote): an answer is liked when its likes
//! outnumber its dislikes, disliked the other way round; neutral votes take no part. Each
//! (question, answer) pair appears at most once in every format. Lines are ordered by
//! question (byte order), then answer.
//!
//! - `openai` (chat fine-tuning, TRL's SFT `messages`):
//!   `{"messages":[{"role":"user","content":Q},{"role":"assistant","content":A}]}` for every
//!   pair with a current like.
//! - `dpo` (TRL's preference columns): `{"prompt":Q,"chosen":A1,"rejected":A2}`, one line per
//!   question that has both a liked and a disliked answer. `chosen` is the answer with the
//!   largest lead of likes, `rejected` the one with the largest lead of dislikes (ties: the
//!   most recently stored).
//! - `openai-dpo` (OpenAI's preference fine-tuning): the same pairs as `dpo`, as
//!   `{"input":{"messages":[{"role":"user","content":Q}]},"preferred_output":[{"role":
//!   "assistant","content":A1}],"non_preferred_output":[{"role":"assistant","content":A2}]}`.
//! - `kto` (TRL's unpaired preference): `{"prompt":Q,"completion":A,"label":true|false}` for
//!   every liked (true) or disliked (false) pair; a pair whose likes and dislikes tie is left
//!   out.
//!
//! The split: a question is in the validation set when the first 32 bits of the SHA-256 of
//! its normalised text (trimmed, runs of white space as one space, lower case), modulo
//! 10,000, fall below the share in basis points ([`Split`]); everything else is train. It is
//! a function of the question alone, so no question is in both sets, every run (and every
//! instance) splits alike, and a question that differs only in case or spacing goes where its
//! twin goes. The share is the expected fraction of questions, not of lines.
//!
//! Guarantees:
//! - Constant memory for any number of rows: the query runs in one read-only REPEATABLE READ
//!   transaction (a consistent snapshot) and rows are fetched through a portal,
//!   [`PORTAL_ROWS`] at a time, into a bounded channel the consumer drains; PostgreSQL does
//!   the de-duplication and grouping (spilling to disk if it must). Both sets of a split come
//!   from the one query, so from the same snapshot.
//! - Rows without `user_question`, or whose question or answer is empty or white space only,
//!   cannot become training examples (OpenAI refuses empty content): they are skipped and
//!   counted, in the same snapshot, before the first line is sent. HTTP returns the count in
//!   the `X-Likerate-Skipped-Rows` header; `likerate export` prints it in its summary.
//!   (Skipped = such current likes for `openai`; such current likes and dislikes for the
//!   other formats; they belong to neither set of a split.)
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

/// The validation share when none is given: the product guide's "test on validation set",
/// at the usual 10%.
pub const DEFAULT_VALIDATION_BASIS_POINTS: i32 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAi,
    Dpo,
    Kto,
    OpenAiDpo,
}

impl Format {
    const NAMES: &'static str = "openai, dpo, kto or openai-dpo";

    pub fn name(self) -> &'static str {
        match self {
            Format::OpenAi => "openai",
            Format::Dpo => "dpo",
            Format::Kto => "kto",
            Format::OpenAiDpo => "openai-dpo",
        }
    }

    fn parse(value: Option<&str>) -> Result<Format, ParamError> {
        match value {
            Some("openai") => Ok(Format::OpenAi),
            Some("dpo") => Ok(Format::Dpo),
            Some("kto") => Ok(Format::Kto),
            Some("openai-dpo") => Ok(Format::OpenAiDpo),
            None | Some("") => Err(ParamError::new(
                "format",
                format!("is required: {}", Format::NAMES),
            )),
            Some(other) => Err(ParamError::new(
                "format",
                format!("must be {}, got {other:?}", Format::NAMES),
            )),
        }
    }

    /// The ratings whose rows can feed this format.
    fn ratings(self) -> Vec<i16> {
        match self {
            Format::OpenAi => vec![1],
            Format::Dpo | Format::Kto | Format::OpenAiDpo => vec![1, -1],
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Format::OpenAi => OPENAI,
            Format::Dpo | Format::OpenAiDpo => DPO,
            Format::Kto => KTO,
        }
    }
}

/// Which questions an export holds: all, or one side of the split at `basis_points`
/// (1..=9999) of 10,000 going to validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// `None`: both sets (each line says which it is in); `Some(true)`: validation only.
    pub only_validation: Option<bool>,
    pub basis_points: i32,
}

impl Split {
    /// Every question, undivided: all lines are in [`Chunk::main`].
    pub const NONE: Split = Split {
        only_validation: None,
        basis_points: 0,
    };

    /// `split` (`train` or `validation`, absent: no split) and `validation_share` (a fraction
    /// strictly between 0 and 1, default 0.1), as the API takes them.
    pub fn parse(split: Option<&str>, share: Option<&str>) -> Result<Split, ParamError> {
        let basis_points = parse_share(share)?;
        let only_validation = match split.filter(|s| !s.is_empty()) {
            None => return Ok(Split::NONE),
            Some("train") => false,
            Some("validation") => true,
            Some(other) => {
                return Err(ParamError::new(
                    "split",
                    format!("must be train or validation, got {other:?}"),
                ))
            }
        };
        Ok(Split {
            only_validation: Some(only_validation),
            basis_points,
        })
    }
}

/// A validation share as basis points: a decimal strictly between 0 and 1, with at most four
/// decimals' worth of precision kept (0.1 -> 1000).
pub fn parse_share(value: Option<&str>) -> Result<i32, ParamError> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_VALIDATION_BASIS_POINTS);
    };
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite())
        .map(|s| (s * 10_000.0).round())
        .filter(|bp| (1.0..=9_999.0).contains(bp))
        .map(|bp| bp as i32)
        .ok_or_else(|| {
            ParamError::new(
                "validation_share",
                format!("must be a fraction between 0.0001 and 0.9999, got {v:?}"),
            )
        })
}

use crate::votes::current_votes;

/// Whether the question `$q` is in the validation set at `$7` basis points (see the module
/// doc). The 32 bits are read as an unsigned number (`bit(32)::bigint`).
macro_rules! in_validation {
    ($q:literal) => {
        concat!(
            "((('x' || encode(substr(sha256(convert_to(lower(btrim(regexp_replace(",
            $q,
            ", '\\s+', ' ', 'g'))), 'UTF8')), 1, 4), 'hex'))::bit(32)::bigint % 10000) < $7::int4)"
        )
    };
}

/// Whether a row can be an example: a question, and a question and an answer that are not
/// empty or white space only (OpenAI refuses empty content, and an empty turn teaches
/// nothing).
macro_rules! usable {
    () => {
        "(coalesce(f.user_question, '') ~ '[^[:space:]]' AND f.message_content ~ '[^[:space:]]')"
    };
}

/// The usable rows of a split: all when `$6` is NULL, else the side `$6` says.
macro_rules! split_rows {
    () => {
        concat!(
            " AND ",
            usable!(),
            " AND ($6::bool IS NULL OR ",
            in_validation!("f.user_question"),
            " = $6)"
        )
    };
}

const SKIPPED: &str = concat!("SELECT count(*)", current_votes!(), " AND NOT ", usable!());

// "C" collation: byte order sorts faster than a linguistic one, and equality is the same.
const OPENAI: &str = concat!(
    "SELECT DISTINCT ON (f.user_question COLLATE \"C\", f.message_content COLLATE \"C\")
            f.user_question, f.message_content, ",
    in_validation!("f.user_question"),
    current_votes!(),
    split_rows!(),
    "
ORDER BY f.user_question COLLATE \"C\", f.message_content COLLATE \"C\""
);

/// The verdict of each (question, answer) pair: `likes`, `dislikes`, the newest row `last_id`
/// and the side of the split `v`.
macro_rules! answers {
    () => {
        concat!(
            "WITH answers AS (
    SELECT f.user_question AS q, f.message_content AS a,
           count(*) FILTER (WHERE f.rating = 1) AS likes,
           count(*) FILTER (WHERE f.rating = -1) AS dislikes,
           max(f.id) AS last_id, ",
            in_validation!("f.user_question"),
            " AS v",
            current_votes!(),
            split_rows!(),
            "
    GROUP BY 1, 2)"
        )
    };
}

const DPO: &str = concat!(
    answers!(),
    ",
chosen AS (
    SELECT DISTINCT ON (q COLLATE \"C\") q, a, v FROM answers WHERE likes > dislikes
    ORDER BY q COLLATE \"C\", likes - dislikes DESC, last_id DESC),
rejected AS (
    SELECT DISTINCT ON (q COLLATE \"C\") q, a FROM answers WHERE dislikes > likes
    ORDER BY q COLLATE \"C\", dislikes - likes DESC, last_id DESC)
SELECT c.q, c.a, c.v, r.a FROM chosen c JOIN rejected r ON r.q = c.q
ORDER BY c.q COLLATE \"C\""
);

const KTO: &str = concat!(
    answers!(),
    "
SELECT q, a, v, likes > dislikes FROM answers WHERE likes <> dislikes
ORDER BY q COLLATE \"C\", a COLLATE \"C\""
);

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

impl Message<'_> {
    fn user(content: &str) -> Message<'_> {
        Message {
            role: "user",
            content,
        }
    }

    fn assistant(content: &str) -> Message<'_> {
        Message {
            role: "assistant",
            content,
        }
    }
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

#[derive(Serialize)]
struct KtoLine<'a> {
    prompt: &'a str,
    completion: &'a str,
    label: bool,
}

#[derive(Serialize)]
struct OpenAiDpoInput<'a> {
    messages: [Message<'a>; 1],
}

#[derive(Serialize)]
struct OpenAiDpoLine<'a> {
    input: OpenAiDpoInput<'a>,
    preferred_output: [Message<'a>; 1],
    non_preferred_output: [Message<'a>; 1],
}

/// Lines of one set.
#[derive(Debug, Default)]
pub struct Lines {
    pub data: Bytes,
    pub count: u64,
}

/// Some lines of output: `main` holds the train set's lines, or every line when the export
/// is not split ([`Split::NONE`]); `validation` the validation set's.
#[derive(Debug, Default)]
pub struct Chunk {
    pub main: Lines,
    pub validation: Lines,
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
    split: Split,
) -> Result<Training, DbError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let mut client = client;
        let mut ready = Some(ready_tx);
        let outcome = produce(&mut client, format, &filter, split, &mut ready, &tx).await;
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

/// Appends the line of row `r` (the columns of [`Format::sql`]) to `out`.
#[allow(
    clippy::expect_used,
    reason = "serializing structs of strings and booleans into a Vec cannot fail"
)]
fn write_line(out: &mut Vec<u8>, format: Format, r: &tokio_postgres::Row) {
    let written = match format {
        Format::OpenAi => serde_json::to_writer(
            &mut *out,
            &OpenAiLine {
                messages: [Message::user(r.get(0)), Message::assistant(r.get(1))],
            },
        ),
        Format::Dpo => serde_json::to_writer(
            &mut *out,
            &DpoLine {
                prompt: r.get(0),
                chosen: r.get(1),
                rejected: r.get(3),
            },
        ),
        Format::OpenAiDpo => serde_json::to_writer(
            &mut *out,
            &OpenAiDpoLine {
                input: OpenAiDpoInput {
                    messages: [Message::user(r.get(0))],
                },
                preferred_output: [Message::assistant(r.get(1))],
                non_preferred_output: [Message::assistant(r.get(3))],
            },
        ),
        Format::Kto => serde_json::to_writer(
            &mut *out,
            &KtoLine {
                prompt: r.get(0),
                completion: r.get(1),
                label: r.get(3),
            },
        ),
    };
    written.expect("serializing strings to memory cannot fail");
    out.push(b'\n');
}

/// Runs the export; returns the lines sent. Stops early, without error, when the receiver
/// is gone (the HTTP client hung up).
async fn produce(
    client: &mut deadpool_postgres::Client,
    format: Format,
    filter: &Filter,
    split: Split,
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
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &ratings,
        &filter.subject_id,
        &filter.model,
        &filter.since,
        &filter.until,
        &split.only_validation,
        &split.basis_points,
    ];
    let skipped: i64 = txn.query_one(SKIPPED, &params[..5]).await?.get(0);
    if let Some(ready) = ready.take() {
        if ready.send(Ok(skipped)).is_err() {
            return Ok(0);
        }
    }
    let statement = txn.prepare_cached(format.sql()).await?;
    let portal = txn.bind(&statement, &params).await?;
    let mut sent = 0;
    loop {
        let rows = txn.query_portal(&portal, PORTAL_ROWS).await?;
        let (mut main, mut validation) = (Vec::new(), Vec::new());
        let mut chunk = Chunk::default();
        for r in &rows {
            // Column 2 is the side of the split; always false when not split (share 0).
            if r.get::<_, bool>(2) {
                write_line(&mut validation, format, r);
                chunk.validation.count += 1;
            } else {
                write_line(&mut main, format, r);
                chunk.main.count += 1;
            }
        }
        if !rows.is_empty() {
            chunk.main.data = Bytes::from(main);
            chunk.validation.data = Bytes::from(validation);
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
    split: Option<String>,
    validation_share: Option<String>,
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
    let split = Split::parse(p.split.as_deref(), p.validation_share.as_deref())?;
    let permit = state.api.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "other training-data exports are running: retry later",
        )
    })?;
    let client = state.pool.get().await.map_err(|e| db_error(e.into()))?;
    let training = start(client, format, filter, split)
        .await
        .map_err(db_error)?;
    // The permit lives as long as the body: it is released when the stream ends or is dropped.
    let body = futures::stream::unfold(
        (training.chunks, permit),
        |(mut chunks, permit)| async move {
            let item = chunks.recv().await?;
            // One side is empty: a split request selects one set, and an unsplit export puts
            // every line in `main`.
            let data = item.map(|c| {
                if c.validation.data.is_empty() {
                    c.main.data
                } else if c.main.data.is_empty() {
                    c.validation.data
                } else {
                    [c.main.data, c.validation.data].concat().into()
                }
            });
            Some((data, (chunks, permit)))
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
        for f in [Format::OpenAi, Format::Dpo, Format::Kto, Format::OpenAiDpo] {
            assert_eq!(Format::parse(Some(f.name())).unwrap(), f);
        }
    }

    #[test]
    fn splits_and_shares_are_checked() {
        assert_eq!(Split::parse(None, None).unwrap(), Split::NONE);
        assert_eq!(
            Split::parse(Some("validation"), Some("0.25")).unwrap(),
            Split {
                only_validation: Some(true),
                basis_points: 2_500
            }
        );
        assert_eq!(
            Split::parse(Some("train"), None).unwrap().basis_points,
            DEFAULT_VALIDATION_BASIS_POINTS
        );
        assert_eq!(Split::parse(Some("test"), None).unwrap_err().param, "split");
        for bad in ["0", "1", "-0.1", "1.5", "NaN", "inf", "ten", "0.00001"] {
            assert_eq!(
                Split::parse(Some("train"), Some(bad)).unwrap_err().param,
                "validation_share",
                "{bad}"
            );
        }
    }
}
