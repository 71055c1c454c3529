//! Telemetry: every metric name likerate exports, the recorder that renders them, the label
//! cap, and log setup.
//!
//! Guarantees:
//! - All metric names live in this file (docs/contract.md section 7 plus the pipeline's own), following
//!   Prometheus naming: `likerate_` prefix, base units, `_total` on counters.
//! - Rendering is `metrics-exporter-prometheus`'s (text format 0.0.4): label values are escaped
//!   as the format requires (backslash, double quote, line feed), so no label value can end a
//!   series, start another or forge a comment.
//! - No untrusted string becomes a label value without passing one [`LabelCap`] rule, the same
//!   for every metric and for the alert targets: at most `max_subject_labels` distinct subjects
//!   (and as many models), the rest reported as `_other`; values are at most
//!   [`MAX_LABEL_CHARS`] characters; a user value spelled like a reserved one (`_all`,
//!   `_other`) is `_other`. The `reason` tag of a vote (`likerate_dislike_reasons_total`) is any
//!   text of at most 64 characters: it passes the same rule with a cap of its own,
//!   [`MAX_REASON_LABELS`] values ranked by their dislikes ([`Metrics::rank_reasons`]), and a
//!   tag that starts with `_` gets one more in front ([`reason_value`]), so no user's tag reads
//!   as `_other` or `_none`. Partition numbers, outcomes, dead-letter reasons and windows are
//!   bounded sets.
//! - Series that describe the present (the window gauges, the alert state, the consumer lag)
//!   are replaced as a whole at each refresh, so a subject or partition that is gone leaves no
//!   stale series behind.
//! - Logs never carry user text (questions, answers, comments, reasons): only ids, counts and
//!   error codes; labels a user chose (subjects, models) are logged with `?` (escaped, quoted).

use crate::event::Rating;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};

/// Label value for the whole stream.
pub const ALL: &str = "_all";
/// Label value for subjects or models past the cap.
pub const OTHER: &str = "_other";
/// Longest label value taken from user input, in characters (the contract's longest model).
pub const MAX_LABEL_CHARS: usize = 128;
/// Label value of the dislikes that came without a reason.
pub const NO_REASON: &str = "_none";
/// Distinct `reason` label values, `_other` included (with `_none` on top). A front end offers
/// a handful of tags; 32 leaves room for several front ends, versions and languages while
/// bounding the series at 33 per subject.
pub const MAX_REASON_LABELS: usize = 32;

pub const EVENTS: &str = "likerate_events_total";
pub const DEAD_LETTERS: &str = "likerate_dead_letters_total";
pub const VOTES: &str = "likerate_votes_total";
pub const DISLIKE_REASONS: &str = "likerate_dislike_reasons_total";
pub const LIKE_RATIO: &str = "likerate_like_ratio";
pub const WINDOW_VOTES: &str = "likerate_window_votes";
pub const MODEL_LIKE_RATIO: &str = "likerate_model_like_ratio";
pub const MODEL_WINDOW_VOTES: &str = "likerate_model_window_votes";
pub const ALERT_FIRING: &str = "likerate_alert_firing";
pub const PIPELINE_STALLED: &str = "likerate_pipeline_stalled";
pub const ALERT_PUSHES: &str = "likerate_alert_pushes_total";
pub const CONSUMER_LAG: &str = "likerate_consumer_lag_messages";
pub const BATCH_WRITE_SECONDS: &str = "likerate_batch_write_seconds";
pub const BATCH_EVENTS: &str = "likerate_batch_events";
pub const DB_RETRIES: &str = "likerate_db_retries_total";
pub const DLQ_PUBLISH_FAILURES: &str = "likerate_dlq_publish_failures_total";
pub const DEAD_LETTERS_PENDING: &str = "likerate_dead_letters_pending";
pub const DEAD_LETTERS_REFUSED: &str = "likerate_dead_letters_refused";
pub const PAUSED_PARTITIONS: &str = "likerate_paused_partitions";
pub const ASSIGNED_PARTITIONS: &str = "likerate_assigned_partitions";
pub const AGGREGATE_REFRESH_FAILURES: &str = "likerate_aggregate_refresh_failures_total";
pub const REDACTIONS: &str = "likerate_redactions_total";
pub const RETENTION_ROWS: &str = "likerate_retention_rows_total";
pub const DISLIKE_PATTERN_Z: &str = "likerate_dislike_pattern_z";
pub const UNIT_DAY_REFRESHES: &str = "likerate_unit_day_refreshes_total";

/// Terms per subject on `likerate_dislike_pattern_z`: a dashboard table's worth, and with at
/// most `max_subject_labels` subjects a bounded number of series.
pub const PATTERN_TERMS: usize = 5;

/// Help texts, by metric.
const HELP: [(&str, &str); 25] = [
    (EVENTS, "Events by outcome"),
    (
        DEAD_LETTERS,
        "Records dead-lettered (stored in the outbox for the dead-letter topic, once each), by reason",
    ),
    (VOTES, "Stored votes by subject and rating"),
    (
        DISLIKE_REASONS,
        "Stored dislikes by subject and reason tag (_none: without a reason)",
    ),
    (
        LIKE_RATIO,
        "Likes / all votes that currently count, per subject and window",
    ),
    (
        WINDOW_VOTES,
        "Votes that currently count, per subject, window and rating",
    ),
    (
        MODEL_LIKE_RATIO,
        "Likes / all votes, per model version and window",
    ),
    (
        MODEL_WINDOW_VOTES,
        "Votes per model version, window and rating",
    ),
    (ALERT_FIRING, "1 while the like-rate alert fires"),
    (
        PIPELINE_STALLED,
        "1 while likerate cannot count for this cause (FeedbackPipelineStalled), else 0",
    ),
    (ALERT_PUSHES, "Pushes to Alertmanager by result"),
    (
        CONSUMER_LAG,
        "Messages behind the high watermark per assigned partition",
    ),
    (
        BATCH_WRITE_SECONDS,
        "Time to store one batch in one PostgreSQL transaction",
    ),
    (BATCH_EVENTS, "Events per stored batch"),
    (
        DB_RETRIES,
        "Database attempts that failed and will be retried",
    ),
    (
        DLQ_PUBLISH_FAILURES,
        "Failed attempts to publish a dead letter",
    ),
    (
        DEAD_LETTERS_PENDING,
        "Dead letters stored in the outbox and not yet in the dead-letter topic",
    ),
    (
        DEAD_LETTERS_REFUSED,
        "Dead letters the dead-letter topic refused for good (too large, invalid), kept in the outbox for a person",
    ),
    (PAUSED_PARTITIONS, "Partitions paused by back-pressure"),
    (ASSIGNED_PARTITIONS, "Partitions assigned to this instance"),
    (
        AGGREGATE_REFRESH_FAILURES,
        "Failed refreshes of the window gauges from PostgreSQL",
    ),
    (
        REDACTIONS,
        "Personal data replaced in stored text before the write, by kind",
    ),
    (
        RETENTION_ROWS,
        "Rows whose text retention erased or that retention deleted, by action",
    ),
    (
        DISLIKE_PATTERN_Z,
        "z-score of the terms most over-represented in the last 24 h of dislikes, per subject (weighted log-odds, docs/patterns.md)",
    ),
    (
        UNIT_DAY_REFRESHES,
        "Settled UTC days whose conversation units compare reads were recomputed (computed) or could not be (failed)",
    ),
];

/// What every registration is attributed to (the recorder ignores it; the API requires it).
static METADATA: Metadata<'static> = Metadata::new("likerate", Level::INFO, Some(module_path!()));

/// The process's metrics. Cheap to clone (everything inside is shared).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Counters, histograms and the gauges that keep their series for the process's life.
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The window gauges, replaced at each refresh.
    windows: Replaced,
    /// `likerate_alert_firing`, replaced at each evaluation.
    alerts: Replaced,
    /// `likerate_consumer_lag_messages`, replaced at each statistics report.
    lag: Replaced,
    /// `likerate_dislike_pattern_z`, replaced at each pattern refresh.
    patterns: Replaced,
    batch_write_seconds: Histogram,
    batch_events: Histogram,
    subjects: LabelCap,
    models: LabelCap,
    reasons: LabelCap,
}

/// A group of gauges rendered from their own recorder, which is replaced as a whole.
#[derive(Default)]
struct Replaced(RwLock<Option<PrometheusHandle>>);

impl Replaced {
    fn replace(&self, fill: impl FnOnce(&Gauges)) {
        let recorder = PrometheusBuilder::new().build_recorder();
        describe(&recorder);
        fill(&Gauges(&recorder));
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(recorder.handle());
    }

    fn render_into(&self, out: &mut String) {
        if let Some(handle) = &*self.0.read().unwrap_or_else(|e| e.into_inner()) {
            out.push_str(&handle.render());
        }
    }
}

/// The gauges of one [`Replaced`] group while it is filled.
pub struct Gauges<'r>(&'r PrometheusRecorder);

impl Gauges<'_> {
    /// Sets one series. Label values must have passed a [`LabelCap`] or be from a bounded set.
    pub fn set(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.0
            .register_gauge(&key(name, labels), &METADATA)
            .set(value);
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

fn describe(recorder: &PrometheusRecorder) {
    for (name, help) in HELP {
        let help = SharedString::const_str(help);
        // The kind only decides which describe call; the exporter renders `# HELP` either way.
        recorder.describe_gauge(name.into(), None, help);
    }
}

impl Metrics {
    pub fn new(max_subject_labels: usize) -> Metrics {
        let builder = PrometheusBuilder::new();
        #[allow(
            clippy::expect_used,
            reason = "set_buckets_for_metric fails only on an empty bucket list; these are non-empty constants"
        )]
        let builder = builder
            .set_buckets_for_metric(
                Matcher::Full(BATCH_WRITE_SECONDS.into()),
                &exponential(0.001, 2.0, 15),
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(BATCH_EVENTS.into()),
                    &exponential(1.0, 4.0, 9),
                )
            })
            .expect("non-empty buckets");
        let recorder = builder.build_recorder();
        describe(&recorder);
        let handle = recorder.handle();
        let batch_write_seconds =
            recorder.register_histogram(&key(BATCH_WRITE_SECONDS, &[]), &METADATA);
        let batch_events = recorder.register_histogram(&key(BATCH_EVENTS, &[]), &METADATA);
        let m = Metrics {
            inner: Arc::new(Inner {
                recorder,
                handle,
                windows: Replaced::default(),
                alerts: Replaced::default(),
                lag: Replaced::default(),
                patterns: Replaced::default(),
                batch_write_seconds,
                batch_events,
                subjects: LabelCap::new(max_subject_labels),
                models: LabelCap::new(max_subject_labels),
                reasons: LabelCap::new(MAX_REASON_LABELS),
            }),
        };
        // Series that exist from the start, so "nothing happened yet" is visible as 0.
        for outcome in ["stored", "duplicate", "dead_lettered", "erased"] {
            m.counter(EVENTS, &[("outcome", outcome)]).increment(0);
        }
        // The failure counters too: the dashboard and the Prometheus rules take their rates,
        // which have no data (rather than 0) while a series is absent.
        for name in [DB_RETRIES, DLQ_PUBLISH_FAILURES, AGGREGATE_REFRESH_FAILURES] {
            m.counter(name, &[]).increment(0);
        }
        m.set_gauge(ASSIGNED_PARTITIONS, 0.0);
        m.set_gauge(PAUSED_PARTITIONS, 0.0);
        m.set_gauge(DEAD_LETTERS_PENDING, 0.0);
        m.set_gauge(DEAD_LETTERS_REFUSED, 0.0);
        m.alerts_replace(|g| g.set(ALERT_FIRING, &[("subject", ALL)], 0.0));
        m
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.inner
            .recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str) -> Gauge {
        self.inner
            .recorder
            .register_gauge(&key(name, &[]), &METADATA)
    }

    fn set_gauge(&self, name: &'static str, value: f64) {
        self.gauge(name).set(value);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = self.inner.handle.render();
        self.inner.windows.render_into(&mut out);
        self.inner.alerts.render_into(&mut out);
        self.inner.lag.render_into(&mut out);
        self.inner.patterns.render_into(&mut out);
        out
    }

    pub fn event(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.counter(EVENTS, &[("outcome", outcome)]).increment(n);
        }
    }

    pub fn dead_letter(&self, reason: &'static str) {
        self.counter(DEAD_LETTERS, &[("reason", reason)])
            .increment(1);
        self.event("dead_lettered", 1);
    }

    pub fn vote(&self, subject: &str, rating: Rating, n: u64) {
        let subject = self.subject_label(subject);
        self.counter(VOTES, &[("subject", &subject), ("rating", rating.label())])
            .increment(n);
    }

    /// Counts `n` stored dislikes of `subject` with `reason` (`None`: without one).
    pub fn dislike_reason(&self, subject: &str, reason: Option<&str>, n: u64) {
        let subject = self.subject_label(subject);
        let reason = match reason {
            Some(r) => self.inner.reasons.label(&reason_value(r)),
            None => NO_REASON.to_owned(),
        };
        self.counter(
            DISLIKE_REASONS,
            &[("subject", &subject), ("reason", &reason)],
        )
        .increment(n);
    }

    pub fn alert_push(&self, result: &'static str) {
        self.counter(ALERT_PUSHES, &[("result", result)])
            .increment(1);
    }

    pub fn batch_written(&self, seconds: f64, events: usize) {
        self.inner.batch_write_seconds.record(seconds);
        self.inner.batch_events.record(events as f64);
    }

    pub fn db_retry(&self) {
        self.counter(DB_RETRIES, &[]).increment(1);
    }

    pub fn dead_letters_pending(&self, n: u64) {
        self.set_gauge(DEAD_LETTERS_PENDING, n as f64);
    }

    pub fn dead_letters_refused(&self, n: u64) {
        self.set_gauge(DEAD_LETTERS_REFUSED, n as f64);
    }

    pub fn dlq_publish_failures(&self, n: u64) {
        self.counter(DLQ_PUBLISH_FAILURES, &[]).increment(n);
    }

    pub fn paused_partitions(&self, n: usize) {
        self.set_gauge(PAUSED_PARTITIONS, n as f64);
    }

    pub fn assigned_partitions(&self, n: usize) {
        self.set_gauge(ASSIGNED_PARTITIONS, n as f64);
    }

    pub fn aggregate_refresh_failure(&self) {
        self.counter(AGGREGATE_REFRESH_FAILURES, &[]).increment(1);
    }

    pub fn redactions(&self, kind: &'static str, n: u64) {
        self.counter(REDACTIONS, &[("kind", kind)]).increment(n);
    }

    pub fn unit_day_refreshes(&self, outcome: &'static str, n: u64) {
        self.counter(UNIT_DAY_REFRESHES, &[("outcome", outcome)])
            .increment(n);
    }

    pub fn retention_rows(&self, action: &'static str, n: u64) {
        self.counter(RETENTION_ROWS, &[("action", action)])
            .increment(n);
    }

    /// Replaces the consumer lag series: one per partition in `lags`.
    pub fn consumer_lag(&self, lags: &BTreeMap<i32, i64>) {
        self.inner.lag.replace(|g| {
            for (partition, lag) in lags {
                g.set(
                    CONSUMER_LAG,
                    &[("partition", &partition.to_string())],
                    *lag as f64,
                );
            }
        });
    }

    /// Replaces the window gauges with what `fill` sets.
    pub fn windows_replace(&self, fill: impl FnOnce(&Gauges)) {
        self.inner.windows.replace(fill);
    }

    /// Replaces the alert gauges with what `fill` sets.
    pub fn alerts_replace(&self, fill: impl FnOnce(&Gauges)) {
        self.inner.alerts.replace(fill);
    }

    /// Replaces `likerate_dislike_pattern_z` with the top terms of each subject: at most
    /// [`PATTERN_TERMS`] per subject, only subjects the label cap names (a subject past the cap
    /// gets no series, since the terms of several subjects cannot be summed into `_other`),
    /// terms cut to [`MAX_LABEL_CHARS`].
    pub fn dislike_patterns<'a>(
        &self,
        subjects: impl IntoIterator<Item = (&'a str, Vec<(&'a str, f64)>)>,
    ) {
        self.inner.patterns.replace(|g| {
            for (subject, terms) in subjects {
                let subject = self.subject_label(subject);
                if subject == OTHER {
                    continue;
                }
                for (term, z) in terms.into_iter().take(PATTERN_TERMS) {
                    let term: String = term.chars().take(MAX_LABEL_CHARS).collect();
                    g.set(
                        DISLIKE_PATTERN_Z,
                        &[("subject", &subject), ("term", &term)],
                        z,
                    );
                }
            }
        });
    }

    /// The cap of the `subject` label.
    pub fn subjects(&self) -> &LabelCap {
        &self.inner.subjects
    }

    /// The cap of the `model` label.
    pub fn models(&self) -> &LabelCap {
        &self.inner.models
    }

    /// Ranks the reason tags by their dislikes of the last 24 hours: the reason label's cap
    /// keeps the busiest ([`LabelCap::rank`]).
    pub fn rank_reasons<'a>(&self, dislikes: impl IntoIterator<Item = (&'a str, i64)>) {
        let values: Vec<(Cow<'a, str>, i64)> = dislikes
            .into_iter()
            .map(|(reason, n)| (reason_value(reason), n))
            .collect();
        self.inner
            .reasons
            .rank(values.iter().map(|(v, n)| (v.as_ref(), *n)));
    }

    /// The label value of a subject under the cap (see [`LabelCap::label`]).
    pub fn subject_label(&self, subject: &str) -> String {
        self.inner.subjects.label(subject)
    }
}

/// The value a reason tag is known by under the reason label's cap: the tag itself, with one
/// more `_` in front when it starts with `_`. The values likerate gives the label, `_none` (no
/// reason) and `_other` (past the cap), start with a single `_` and a letter, so a user's
/// `_other` (shown `__other`) is never read as either of them; and two tags never share a value
/// (the mapping is one-to-one).
fn reason_value(reason: &str) -> Cow<'_, str> {
    if reason.starts_with('_') {
        Cow::Owned(format!("_{reason}"))
    } else {
        Cow::Borrowed(reason)
    }
}

/// `count` bucket bounds from `start`, each `factor` times the one before.
fn exponential(start: f64, factor: f64, count: usize) -> Vec<f64> {
    std::iter::successors(Some(start), |b| Some(b * factor))
        .take(count)
        .collect()
}

/// The one rule that decides which values of a user-chosen label keep their name; every
/// metric and the alert targets ask the same instance, so a value is never named in one place
/// and `_other` in another.
///
/// The rule: at most `max` distinct values are exported. While there are no more than `max`,
/// all keep their name; past it, the `max - 1` values with the most votes in the last 24 hours
/// keep it and the rest are summed into `_other`. The ranking is redone at every window refresh
/// ([`LabelCap::rank`]; ties go to the values already named, then by name). Between refreshes a
/// new value is named only into a free place, never in place of a named one, so a burst of new
/// values cannot push out the busy ones: it fills the free places, and the next ranking gives
/// them to whoever has the votes.
pub struct LabelCap {
    max: usize,
    named: RwLock<HashSet<String>>,
}

impl LabelCap {
    pub fn new(max: usize) -> LabelCap {
        LabelCap {
            max,
            named: RwLock::new(HashSet::new()),
        }
    }

    /// The label value of `value`: itself (cut to [`MAX_LABEL_CHARS`]) while named, `_other`
    /// otherwise. `_all` and `_other` from users are `_other`.
    pub fn label(&self, value: &str) -> String {
        if value == ALL || value == OTHER {
            return OTHER.to_owned();
        }
        let shown = || value.chars().take(MAX_LABEL_CHARS).collect::<String>();
        if self.read().contains(value) {
            return shown();
        }
        let mut named = self.named.write().unwrap_or_else(|e| e.into_inner());
        // A free place: below max - 1, so that `_other` plus the named stay within max.
        if named.contains(value) || named.len() + 1 < self.max {
            named.insert(value.to_owned());
            return shown();
        }
        OTHER.to_owned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<String>> {
        self.named.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Ranks the values by their votes in the last 24 hours (`_all` and `_other` are ignored)
    /// and names the ones the rule keeps.
    pub fn rank<'a>(&self, votes: impl IntoIterator<Item = (&'a str, i64)>) {
        let mut named = self.named.write().unwrap_or_else(|e| e.into_inner());
        let mut ranked: Vec<(&str, i64, bool)> = votes
            .into_iter()
            .filter(|(v, _)| *v != ALL && *v != OTHER)
            .map(|(v, n)| (v, n, named.contains(v)))
            .collect();
        let keep = if ranked.len() <= self.max {
            ranked.len()
        } else {
            self.max.saturating_sub(1)
        };
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
        *named = ranked
            .into_iter()
            .take(keep)
            .map(|(v, _, _)| v.to_owned())
            .collect();
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `LIKERATE_LOG_FORMAT=json` for
/// machine-read logs.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if std::env::var("LIKERATE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_cap_bounds_the_series() {
        let m = Metrics::new(3);
        for i in 0..100_000 {
            m.vote(&format!("subject-{i}"), Rating::Like, 1);
        }
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("likerate_votes_total{"))
            .count();
        assert_eq!(series, 3, "2 named subjects and _other:\n{text}");
        assert!(text.contains(r#"subject="_other""#));
    }

    #[test]
    fn a_burst_of_new_values_cannot_push_out_the_busy_ones() {
        let cap = LabelCap::new(3);
        cap.rank([("Math", 500), ("Physics", 400), ("Chemistry", 3)]);
        for i in 0..1000 {
            assert_eq!(cap.label(&format!("junk-{i}")), OTHER);
        }
        // The junk gets more votes than Physics: the next ranking names it instead.
        cap.rank([
            ("Math", 500),
            ("Physics", 400),
            ("Chemistry", 3),
            ("junk-7", 401),
        ]);
        assert_eq!(cap.label("Math"), "Math");
        assert_eq!(cap.label("junk-7"), "junk-7");
        assert_eq!(cap.label("Physics"), OTHER);
        // Reserved spellings are never a user's.
        assert_eq!(cap.label("_all"), OTHER);
    }

    #[test]
    fn reason_labels_are_capped() {
        let m = Metrics::new(10);
        for i in 0..1000 {
            m.dislike_reason("Math", Some(&format!("tag-{i}")), 1);
        }
        m.dislike_reason("Math", None, 2);
        let text = m.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("likerate_dislike_reasons_total{"))
            .collect();
        // 31 named tags, _other and _none.
        assert_eq!(series.len(), MAX_REASON_LABELS + 1, "{text}");
        assert!(
            text.contains(r#"likerate_dislike_reasons_total{subject="Math",reason="_other"} 969"#)
        );
        assert!(text.contains(r#"likerate_dislike_reasons_total{subject="Math",reason="_none"} 2"#));
        assert!(text.contains(r#"reason="tag-0"} 1"#));
    }

    #[test]
    fn reason_labels_are_escaped_and_never_a_reserved_value() {
        let m = Metrics::new(10);
        for reason in [
            "_other",
            "_none",
            "__other",
            "x\"} 1\n# EOF\\",
            "Not helpful",
            "错误",
            "<script>",
        ] {
            m.dislike_reason("Math", Some(reason), 1);
        }
        m.dislike_reason("Math", None, 2);
        let text = m.render();
        let series = |reason: &str| {
            let line =
                format!(r#"likerate_dislike_reasons_total{{subject="Math",reason="{reason}"}} "#);
            text.lines()
                .find_map(|l| l.strip_prefix(&line))
                .map(|v| v.to_owned())
        };
        for (label, value) in [
            ("__other", "1"),
            ("__none", "1"),
            ("___other", "1"),
            (r#"x\"} 1\n# EOF\\"#, "1"),
            ("Not helpful", "1"),
            ("错误", "1"),
            ("<script>", "1"),
            ("_none", "2"),
        ] {
            assert_eq!(series(label).as_deref(), Some(value), "{label}:\n{text}");
        }
        assert_eq!(series("_other"), None, "no tag is past the cap:\n{text}");
        assert!(!text.lines().any(|l| l.starts_with("# EOF")));
    }

    #[test]
    fn reason_labels_are_ranked_by_dislikes() {
        let m = Metrics::new(10);
        for i in 0..MAX_REASON_LABELS - 1 {
            m.dislike_reason("Math", Some(&format!("tag-{i:02}")), 1);
        }
        // The places are taken: a busy tag that comes late is counted under `_other`...
        m.dislike_reason("Math", Some("_Not helpful"), 40);
        let text = m.render();
        assert!(
            text.contains(r#"{subject="Math",reason="_other"} 40"#),
            "{text}"
        );
        // ... until the ranking names it in place of the quietest: 33 tags in the day (one
        // this instance never stored), 31 keep their name; ties go to the named, then by name.
        let mut day: Vec<(String, i64)> = (0..MAX_REASON_LABELS)
            .map(|i| (format!("tag-{i:02}"), 1))
            .collect();
        day.push(("_Not helpful".to_owned(), 40));
        m.rank_reasons(day.iter().map(|(r, n)| (r.as_str(), *n)));
        m.dislike_reason("Math", Some("_Not helpful"), 1);
        m.dislike_reason("Math", Some("tag-30"), 1);
        m.dislike_reason("Math", Some("tag-29"), 1);
        let text = m.render();
        for (reason, n) in [("__Not helpful", 1), ("_other", 41), ("tag-29", 2)] {
            let series = format!(r#"{{subject="Math",reason="{reason}"}} {n}"#);
            assert!(text.contains(&series), "{series}:\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped_and_cut() {
        let m = Metrics::new(10);
        let hostile = "x\"} 1\n# EOF\\";
        m.vote(hostile, Rating::Like, 1);
        m.vote(&"y".repeat(500), Rating::Like, 1);
        let text = m.render();
        assert!(
            text.contains(r#"subject="x\"} 1\n# EOF\\""#),
            "escaped:\n{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("# EOF")));
        assert!(text.contains(&format!("subject=\"{}\"", "y".repeat(MAX_LABEL_CHARS))));
    }

    #[test]
    fn pattern_gauges_are_capped_and_replaced() {
        let m = Metrics::new(3);
        let terms: Vec<(&str, f64)> = (0..9)
            .map(|i| (["a", "b", "c", "d", "e", "f", "g", "h", "i"][i], i as f64))
            .collect();
        let hostile = "t\"} 1\n# EOF";
        m.dislike_patterns([
            ("Math", terms.clone()),
            ("Physics", vec![(hostile, 2.0)]),
            ("History", terms.clone()),
        ]);
        let text = m.render();
        let series = |text: &str| {
            text.lines()
                .filter(|l| l.starts_with("likerate_dislike_pattern_z{"))
                .count()
        };
        // Math and Physics take the two free places; History is past the cap: no series.
        assert_eq!(series(&text), PATTERN_TERMS + 1, "{text}");
        assert!(
            text.contains(r#"likerate_dislike_pattern_z{subject="Math",term="e"} 4"#),
            "{text}"
        );
        assert!(text.contains(r#"term="t\"} 1\n# EOF""#), "{text}");
        assert!(!text.contains("History"));
        // A refresh replaces the set: gone terms leave no series.
        m.dislike_patterns([("Math", vec![("z", 1.5)])]);
        let text = m.render();
        assert_eq!(series(&text), 1, "{text}");
    }
}
