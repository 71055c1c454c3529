//! The feedback API (docs/contract.md section 6): `/api/feedback/*`, `POST /api/feedback` and
//! `/api/openapi.json`, plus `likerate export`, which shares the export queries.
//!
//! | module | what it holds |
//! |---|---|
//! | [`stats`] | `stats` and `daily`, read from the rollups |
//! | [`compare`] | the A/B comparison: Wilson intervals, two-proportion test, stratified test |
//! | [`reasons`] | `reasons`: current votes per `reason` tag, read from the rows |
//! | [`export`] | `export`: keyset pages of stored rows |
//! | [`training`] | `training-data`: OpenAI, DPO, KTO and OpenAI preference JSONL, split by question, streamed from a database portal |
//! | [`patterns`] | `dislike-patterns`: the terms over-represented in dislikes (weighted log-odds) |
//! | [`ingest`] | `POST /api/feedback`: validation with the pipeline's decoder, publishing |
//! | [`assignment`] | `/api/experiments/{name}/assignment`: an experiment's arm of a unit |
//! | [`cli`] | `likerate export` |
//! | [`openapi`] | the OpenAPI document and the route table it is checked against |
//!
//! Guarantees shared by every route:
//! - Errors are `{"error", "detail"}` ([`ApiError`]) with a 4xx/5xx status. Query parameters are
//!   checked before any work: an unknown parameter, a bad date, an unknown format, a limit out of
//!   range or a bad cursor is a 400 naming the parameter.
//! - Routes that return user text (`export`, `training-data`, `dislike-patterns`) need
//!   `Authorization: Bearer <LIKERATE_EXPORT_TOKEN>`, compared in constant time: 403 when no
//!   token is configured, 401 (with `WWW-Authenticate: Bearer`) without it or with a wrong one.
//!   Authorization is checked before the parameters.
//! - User text (questions, answers, filter values) is never logged: log lines carry counts,
//!   codes and database error messages, which never include statement parameters. Database
//!   messages are logged only, never answered.
//! - Text parameters holding a NUL character and times outside years 0001 to 9999 are a 400
//!   naming the parameter, before any query (PostgreSQL would refuse them with a 500).

pub mod assignment;
pub mod cli;
pub mod compare;
pub mod export;
pub mod ingest;
pub mod openapi;
pub mod patterns;
pub mod reasons;
pub mod stats;
pub mod training;

use crate::config::KafkaConfig;
use crate::db::DbError;
use crate::http::{ApiError, AppState};
use axum::extract::{FromRequestParts, Query};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Training-data streams served at once. Each holds a database connection (and a snapshot)
/// for as long as the client reads, so they are capped well below the pool size to keep
/// `stats` and readiness answering; more get 429.
const CONCURRENT_STREAMS: usize = 2;

/// `dislike-patterns` reads answered at once: each keeps a core of the database busy for up to
/// a few seconds (docs/patterns.md), so a burst of them must not starve the pipeline's writes;
/// more get 429.
const CONCURRENT_PATTERNS: usize = 2;

/// What the API routes need beyond the database pool.
#[derive(Clone)]
pub struct ApiState {
    export_token: Option<Token>,
    /// `LIKERATE_INGEST_TOKEN`: `None` leaves `POST /api/feedback` open.
    ingest_token: Option<Token>,
    pub publisher: ingest::Publisher,
    streams: Arc<Semaphore>,
    patterns: Arc<Semaphore>,
    /// Experiments and the planning power of `compare`.
    pub ab: Arc<crate::experiment::AbConfig>,
}

impl ApiState {
    /// `export_token` is `LIKERATE_EXPORT_TOKEN` (`None`: the protected routes answer 403).
    pub fn new(
        kafka: &KafkaConfig,
        export_token: Option<&str>,
    ) -> Result<ApiState, rdkafka::error::KafkaError> {
        Ok(ApiState {
            export_token: export_token.map(Token::new),
            ingest_token: None,
            publisher: ingest::Publisher::new(kafka)?,
            streams: Arc::new(Semaphore::new(CONCURRENT_STREAMS)),
            patterns: Arc::new(Semaphore::new(CONCURRENT_PATTERNS)),
            ab: Arc::default(),
        })
    }

    /// The A/B settings of `likerate run` (without: no experiments, the default power).
    pub fn with_ab(self, ab: crate::experiment::AbConfig) -> ApiState {
        ApiState {
            ab: Arc::new(ab),
            ..self
        }
    }

    /// Requires `Authorization: Bearer <token>` on `POST /api/feedback` (`LIKERATE_INGEST_TOKEN`).
    pub fn with_ingest_token(self, token: Option<&str>) -> ApiState {
        ApiState {
            ingest_token: token.map(Token::new),
            ..self
        }
    }
}

/// A configured token, kept as its SHA-256 digest: comparing digests in constant time
/// reveals neither the token's bytes nor its length through timing.
#[derive(Clone)]
struct Token([u8; 32]);

impl Token {
    fn new(token: &str) -> Token {
        Token(Sha256::digest(token.as_bytes()).into())
    }

    fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.0.ct_eq(&digest).into()
    }
}

/// Extractor of the protected routes: present only when the bearer token matches.
pub struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(token) = &state.api.export_token else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this server has no LIKERATE_EXPORT_TOKEN: routes that return user text are disabled",
            )
            .into_response());
        };
        check_bearer(parts, token)
            .map(|()| Authorized)
            .map_err(unauthorized)
    }
}

/// Extractor of `POST /api/feedback`: present when no ingest token is configured or the
/// bearer token matches it.
pub struct IngestAuthorized;

impl FromRequestParts<AppState> for IngestAuthorized {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match &state.api.ingest_token {
            None => Ok(IngestAuthorized),
            Some(token) => check_bearer(parts, token)
                .map(|()| IngestAuthorized)
                .map_err(unauthorized),
        }
    }
}

/// Whether the request carries `token` as its bearer token; else why not.
fn check_bearer(parts: &Parts, token: &Token) -> Result<(), &'static str> {
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match presented {
        Some(t) if token.matches(t) => Ok(()),
        Some(_) => Err("the bearer token is wrong"),
        None => Err("Authorization: Bearer <token> is required"),
    }
}

fn unauthorized(detail: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// Query parameters, with serde's rejection (unknown or repeated parameter) as a JSON 400.
/// The parameter types are `Option<String>` and checked by the handlers, so every message
/// names its parameter.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Params(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

/// A query parameter or `likerate export` flag that cannot be used; names the parameter.
#[derive(Debug, thiserror::Error)]
#[error("{param}: {message}")]
pub struct ParamError {
    pub param: &'static str,
    pub message: String,
}

impl ParamError {
    pub fn new(param: &'static str, message: impl Into<String>) -> ParamError {
        ParamError {
            param,
            message: message.into(),
        }
    }
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", e.to_string())
    }
}

/// A database failure as an answer: 503 when retrying may help, 500 otherwise. The database's
/// message is logged, never answered: it can name hosts, roles and tables.
pub(crate) fn db_error(e: DbError) -> ApiError {
    tracing::warn!(error = %e, "API query failed");
    match e {
        DbError::Unavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database is unavailable; retry later",
        ),
        DbError::Data(_) | DbError::Fatal(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "database_error",
            "the query failed; the server log has the database's message",
        ),
    }
}

/// An optional text parameter: absent and empty are the same.
fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

/// An optional text filter: absent and empty are the same; a NUL character, which PostgreSQL
/// cannot hold in text (and no stored value has), is a 400 naming the parameter.
pub fn text_param(param: &'static str, value: Option<&str>) -> Result<Option<String>, ParamError> {
    match non_empty(value) {
        Some(v) if v.contains('\0') => {
            Err(ParamError::new(param, "must not contain a NUL character"))
        }
        v => Ok(v.map(str::to_owned)),
    }
}

/// A time parameter: an RFC 3339 timestamp or a date (`2026-02-05`, midnight UTC), exactly
/// as the document's pattern and formats allow: a four-digit year from 0001, `T` and `Z` in
/// either case, no leap second. chrono alone would also read a space for the `T`, a second 60
/// at any minute, a U+2212 minus sign and signed or longer years, which JSON Schema's
/// `date-time` refuses or PostgreSQL cannot hold. An instant past year 9999 in UTC
/// (`9999-12-31T23:00:00-05:00`) is read as [`latest`]: it selects the same votes (none is
/// stored that late) and can be written back in RFC 3339.
/// `limit`: an integer from 1 to `max`; `default` when absent or empty.
pub fn parse_limit(value: Option<&str>, default: i64, max: i64) -> Result<i64, ParamError> {
    let Some(v) = non_empty(value) else {
        return Ok(default);
    };
    v.parse::<i64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ParamError::new(
                "limit",
                format!("must be an integer from 1 to {max}, got {v:?}"),
            )
        })
}

pub fn parse_time(
    param: &'static str,
    value: Option<&str>,
) -> Result<Option<DateTime<Utc>>, ParamError> {
    let Some(v) = non_empty(value) else {
        return Ok(None);
    };
    let bad = || {
        ParamError::new(
            param,
            format!(
                "{v:?} is not an RFC 3339 timestamp (2026-02-05T10:30:00Z) or a date (2026-02-05)"
            ),
        )
    };
    if !time_shape(v) {
        return Err(bad());
    }
    let t = if v.len() == 10 {
        NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc())
    } else {
        DateTime::parse_from_rfc3339(v)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    let t = t.ok_or_else(bad)?;
    Ok(Some(match latest() {
        Some(latest) if t > latest => latest,
        _ => t,
    }))
}

/// The last instant of year 9999, UTC.
fn latest() -> Option<DateTime<Utc>> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 999_999_999))
        .map(|t| t.and_utc())
}

/// Whether `v` is `YYYY-MM-DD`, or that followed by `THH:MM:SS`, an optional fraction and
/// `Z` or `+HH:MM`/`-HH:MM` (`T`, `Z` in either case), with a year from 0001 and a second
/// below 60. The digits' ranges (month 13, hour 24) are chrono's to check.
fn time_shape(v: &str) -> bool {
    let b = v.as_bytes();
    let digits = |from: usize, to: usize| {
        b.get(from..to)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let date = digits(0, 4)
        && !v.starts_with("0000")
        && at(4, b'-')
        && digits(5, 7)
        && at(7, b'-')
        && digits(8, 10);
    if !date || b.len() == 10 {
        return date;
    }
    let time = matches!(b.get(10), Some(b'T' | b't'))
        && digits(11, 13)
        && at(13, b':')
        && digits(14, 16)
        && at(16, b':')
        && digits(17, 19)
        && b[17] < b'6';
    if !time {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// The filters most routes share. Times select `since <= created_at < until`: an `until` not
/// later than `since` is an empty range, answered as one (no votes), not refused, since the
/// document cannot forbid it (JSON Schema does not compare two query parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub subject_id: Option<String>,
    pub model: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn parse(
        subject_id: Option<&str>,
        model: Option<&str>,
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<Filter, ParamError> {
        let since = parse_time("since", since)?;
        let until = parse_time("until", until)?;
        Ok(Filter {
            subject_id: text_param("subject_id", subject_id)?,
            model: text_param("model", model)?,
            since,
            until,
        })
    }

    /// The rollup read of this filter's subject and range, for `models` (`None`: all).
    pub fn rollup_range(&self, models: Option<Vec<String>>) -> crate::rollup::Range {
        crate::rollup::Range {
            since: self.since,
            until: self.until,
            subject: self.subject_id.clone(),
            models,
        }
    }
}

/// `100 * part / total` rounded half away from zero to one decimal, in integers so that it
/// equals PostgreSQL's `ROUND(part * 100.0 / total, 1)` exactly; 0.0 when `total` is 0.
pub fn percent_1dp(part: i64, total: i64) -> f64 {
    if total <= 0 {
        return 0.0;
    }
    let tenths = (2000 * part as i128 + total as i128) / (2 * total as i128);
    tenths as f64 / 10.0
}

/// The API routes, recorded as they are added so that the OpenAPI document can be checked
/// against what is really served ([`openapi::route_table`]).
struct Routes {
    router: Router<AppState>,
    table: Vec<(&'static str, Method)>,
}

impl Routes {
    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        // Every method passed here is one of the constants below, which MethodFilter knows;
        // an unknown one would leave the route out, and the OpenAPI test would see it missing.
        if let Ok(filter) = MethodFilter::try_from(method.clone()) {
            self.router = self.router.route(path, on(filter, handler));
        }
        self.table.push((path, method));
        self
    }
}

fn routes() -> Routes {
    Routes {
        router: Router::new(),
        table: Vec::new(),
    }
    .add(Method::GET, "/api/feedback/stats", stats::stats)
    .add(Method::GET, "/api/feedback/daily", stats::daily)
    .add(Method::GET, "/api/feedback/compare", compare::compare)
    .add(Method::GET, "/api/feedback/reasons", reasons::reasons)
    .add(
        Method::GET,
        "/api/experiments/{name}/assignment",
        assignment::assignment,
    )
    .add(Method::GET, "/api/feedback/export", export::export)
    .add(
        Method::GET,
        "/api/feedback/training-data",
        training::training_data,
    )
    .add(
        Method::GET,
        "/api/feedback/dislike-patterns",
        patterns::dislike_patterns,
    )
    .add(Method::POST, "/api/feedback", ingest::post)
    .add(Method::GET, "/api/openapi.json", openapi::document)
}

/// The API routes, to be merged into the server's router.
pub fn router() -> Router<AppState> {
    routes()
        .router
        .layer(axum::extract::DefaultBodyLimit::max(ingest::MAX_BODY_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rounds_like_postgres() {
        // ROUND(x * 100.0 / y, 1) in PostgreSQL: half away from zero.
        assert_eq!(percent_1dp(120, 150), 80.0);
        assert_eq!(percent_1dp(1, 8), 12.5);
        assert_eq!(percent_1dp(1, 3), 33.3);
        assert_eq!(percent_1dp(2, 3), 66.7);
        assert_eq!(percent_1dp(1, 1600), 0.1); // 0.0625 -> 0.1
        assert_eq!(percent_1dp(1, 2001), 0.0); // 0.04997 -> 0.0
        assert_eq!(percent_1dp(0, 0), 0.0);
    }

    #[test]
    fn times_are_rfc3339_or_dates() {
        let t = parse_time("since", Some("2026-02-05T10:30:00+02:00")).unwrap();
        assert_eq!(t.unwrap().to_rfc3339(), "2026-02-05T08:30:00+00:00");
        let d = parse_time("since", Some("2026-02-05")).unwrap();
        assert_eq!(d.unwrap().to_rfc3339(), "2026-02-05T00:00:00+00:00");
        assert_eq!(parse_time("since", Some("")).unwrap(), None);
        let e = parse_time("until", Some("yesterday")).unwrap_err();
        assert!(e.to_string().starts_with("until: "), "{e}");
        // An empty range is a range.
        let f = Filter::parse(None, None, Some("2026-02-05"), Some("2026-02-04")).unwrap();
        assert!(f.since > f.until);
        // Lower-case T and Z, fractions and offsets, as RFC 3339 (and JSON Schema) allow.
        for good in [
            "2026-02-05t10:30:00z",
            "2026-02-05T10:30:00.123456789123+05:30",
            "0001-01-01T00:00:00-23:59",
        ] {
            assert!(parse_time("since", Some(good)).unwrap().is_some(), "{good}");
        }
        // Past year 9999 in UTC: the last instant of 9999, which RFC 3339 can still write.
        let late = parse_time("until", Some("9999-12-31T23:00:00-05:00")).unwrap();
        assert_eq!(late, latest());
        assert_eq!(
            late.unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "9999-12-31T23:59:59.999999999Z"
        );
        // Years PostgreSQL refuses or the document does not allow.
        for bad in [
            "+2026-02-05",
            "-2026-02-05",
            "12026-02-05",
            "0000-01-01",
            "20260-01-01T00:00:00Z",
            "2026-2-5",
            "2026-02-05 10:30:00Z",
            "2026-02-05T23:59:60Z",
            "2026-02-05T10:30:00\u{2212}05:00",
            "2026-02-05T10:30:00.Z",
            "2026-02-05T10:30Z",
            "2026-02-05T10:30:00+0530",
            "2026-02-30",
            "2026-02-05T24:00:00Z",
            "2026-02-05T10:30:00+24:00",
        ] {
            assert_eq!(
                parse_time("since", Some(bad)).unwrap_err().param,
                "since",
                "{bad}"
            );
        }
        let e = Filter::parse(None, Some("a\0b"), None, None).unwrap_err();
        assert_eq!(e.param, "model");
    }

    #[test]
    fn tokens_compare_by_digest() {
        let t = Token::new("0123456789abcdef");
        assert!(t.matches("0123456789abcdef"));
        assert!(!t.matches("0123456789abcdeF"));
        assert!(!t.matches("0123456789abcdef0"));
        assert!(!t.matches(""));
    }
}
