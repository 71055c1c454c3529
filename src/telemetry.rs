//! Telemetry: every metric name likerate exports, the registry that renders them, the
//! subject-label cap, and log setup.
//!
//! Guarantees:
//! - All metric names live in this file (docs/contract.md section 7 plus the pipeline's own), following
//!   Prometheus naming: `likerate_` prefix, base units, `_total` on counters.
//! - No untrusted string becomes a label value without passing the cap: at most
//!   `max_subject_labels` distinct subjects (and as many models) per process, the rest
//!   reported as `_other`. Partition numbers, outcomes, reasons and windows are bounded sets.
//! - Logs never carry user text (questions, answers): only ids, counts and error codes.

use crate::event::Rating;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Label value for the whole stream.
pub const ALL: &str = "_all";
/// Label value for subjects or models past the cap.
pub const OTHER: &str = "_other";

type Labels1 = Vec<(&'static str, String)>;
type GaugeF = Gauge<f64, AtomicU64>;

/// The process's metrics. Cheap to clone (everything inside is shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Events by outcome: stored, duplicate, dead_lettered.
    pub events: Family<Labels1, Counter>,
    /// Dead letters by reason code.
    pub dead_letters: Family<Labels1, Counter>,
    /// Stored votes by subject and rating (the counter SLO burn-rate rules use).
    pub votes: Family<Labels1, Counter>,
    /// Like ratio per subject and window (gauge 0..1), read from PostgreSQL.
    pub like_ratio: Family<Labels1, GaugeF>,
    /// Votes in the window per subject, window and rating.
    pub window_votes: Family<Labels1, Gauge>,
    /// Like ratio per model version and window.
    pub model_like_ratio: Family<Labels1, GaugeF>,
    /// Votes in the window per model, window and rating.
    pub model_window_votes: Family<Labels1, Gauge>,
    /// 1 while the like-rate alert fires for the subject (and model, for per-model rules).
    pub alert_firing: Family<Labels1, Gauge>,
    /// Alert pushes to Alertmanager by result (ok, error).
    pub alert_pushes: Family<Labels1, Counter>,
    /// Messages behind the high watermark, per assigned partition.
    pub consumer_lag: Family<Labels1, Gauge>,
    /// Time to write one batch in one PostgreSQL transaction.
    pub batch_write_seconds: Histogram,
    /// Events per written batch.
    pub batch_events: Histogram,
    /// Failed database attempts that will be retried.
    pub db_retries: Counter,
    /// Failed attempts to publish a dead letter (the partition waits until it succeeds).
    pub dlq_publish_failures: Counter,
    /// Partitions currently paused because the pipeline is full or the database is away.
    pub paused_partitions: Gauge,
    /// Partitions assigned to this instance.
    pub assigned_partitions: Gauge,
    /// Failed refreshes of the window gauges from PostgreSQL.
    pub aggregate_refresh_failures: Counter,
    /// Personal data replaced before the write, by kind (email, phone).
    pub redactions: Family<Labels1, Counter>,
    /// Rows touched by retention, by action (text_erased, deleted).
    pub retention_rows: Family<Labels1, Counter>,
    subjects: Arc<LabelCap>,
    models: Arc<LabelCap>,
}

impl Metrics {
    pub fn new(max_subject_labels: usize) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            events: Family::default(),
            dead_letters: Family::default(),
            votes: Family::default(),
            like_ratio: Family::default(),
            window_votes: Family::default(),
            model_like_ratio: Family::default(),
            model_window_votes: Family::default(),
            alert_firing: Family::default(),
            alert_pushes: Family::default(),
            consumer_lag: Family::default(),
            batch_write_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            batch_events: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            db_retries: Counter::default(),
            dlq_publish_failures: Counter::default(),
            paused_partitions: Gauge::default(),
            assigned_partitions: Gauge::default(),
            aggregate_refresh_failures: Counter::default(),
            redactions: Family::default(),
            retention_rows: Family::default(),
            subjects: Arc::new(LabelCap::new(max_subject_labels)),
            models: Arc::new(LabelCap::new(max_subject_labels)),
        };
        // prometheus-client appends `_total` to counter names itself.
        let r = &mut registry;
        r.register("likerate_events", "Events by outcome", m.events.clone());
        r.register(
            "likerate_dead_letters",
            "Records sent to the dead-letter topic, by reason",
            m.dead_letters.clone(),
        );
        r.register(
            "likerate_votes",
            "Stored votes by subject and rating",
            m.votes.clone(),
        );
        r.register(
            "likerate_like_ratio",
            "Likes / all votes that currently count, per subject and window",
            m.like_ratio.clone(),
        );
        r.register(
            "likerate_window_votes",
            "Votes that currently count, per subject, window and rating",
            m.window_votes.clone(),
        );
        r.register(
            "likerate_model_like_ratio",
            "Likes / all votes, per model version and window",
            m.model_like_ratio.clone(),
        );
        r.register(
            "likerate_model_window_votes",
            "Votes per model version, window and rating",
            m.model_window_votes.clone(),
        );
        r.register(
            "likerate_alert_firing",
            "1 while the like-rate alert fires",
            m.alert_firing.clone(),
        );
        r.register(
            "likerate_alert_pushes",
            "Pushes to Alertmanager by result",
            m.alert_pushes.clone(),
        );
        r.register(
            "likerate_consumer_lag_messages",
            "Messages behind the high watermark per assigned partition",
            m.consumer_lag.clone(),
        );
        r.register(
            "likerate_batch_write_seconds",
            "Time to store one batch in one PostgreSQL transaction",
            m.batch_write_seconds.clone(),
        );
        r.register(
            "likerate_batch_events",
            "Events per stored batch",
            m.batch_events.clone(),
        );
        r.register(
            "likerate_db_retries",
            "Database attempts that failed and will be retried",
            m.db_retries.clone(),
        );
        r.register(
            "likerate_dlq_publish_failures",
            "Failed attempts to publish a dead letter",
            m.dlq_publish_failures.clone(),
        );
        r.register(
            "likerate_paused_partitions",
            "Partitions paused by back-pressure",
            m.paused_partitions.clone(),
        );
        r.register(
            "likerate_assigned_partitions",
            "Partitions assigned to this instance",
            m.assigned_partitions.clone(),
        );
        r.register(
            "likerate_aggregate_refresh_failures",
            "Failed refreshes of the window gauges from PostgreSQL",
            m.aggregate_refresh_failures.clone(),
        );
        r.register(
            "likerate_redactions",
            "Personal data replaced in stored text before the write, by kind",
            m.redactions.clone(),
        );
        r.register(
            "likerate_retention_rows",
            "Rows whose text retention erased or that retention deleted, by action",
            m.retention_rows.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn event(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.events
                .get_or_create(&vec![("outcome", outcome.to_owned())])
                .inc_by(n);
        }
    }

    pub fn dead_letter(&self, reason: &'static str) {
        self.dead_letters
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
        self.event("dead_lettered", 1);
    }

    pub fn vote(&self, subject: &str, rating: Rating, n: u64) {
        self.votes
            .get_or_create(&vec![
                ("subject", self.subject_label(subject)),
                ("rating", rating.label().to_owned()),
            ])
            .inc_by(n);
    }

    /// The label value for a subject: itself while under the cap, `_other` past it.
    pub fn subject_label(&self, subject: &str) -> String {
        self.subjects.label(subject)
    }

    pub fn model_label(&self, model: &str) -> String {
        self.models.label(model)
    }
}

/// Admits the first `max` distinct values of a label; later ones become `_other`.
/// First come, first kept: a series, once exported, keeps its name for the process's life.
struct LabelCap {
    max: usize,
    admitted: Mutex<HashSet<String>>,
}

impl LabelCap {
    fn new(max: usize) -> LabelCap {
        LabelCap {
            max,
            admitted: Mutex::new(HashSet::new()),
        }
    }

    fn label(&self, value: &str) -> String {
        if value == ALL {
            return ALL.to_owned();
        }
        let mut admitted = self.admitted.lock().expect("label cap lock");
        if admitted.contains(value) {
            return value.to_owned();
        }
        if admitted.len() < self.max {
            admitted.insert(value.to_owned());
            return value.to_owned();
        }
        OTHER.to_owned()
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
        assert_eq!(series, 4, "3 admitted subjects and _other:\n{text}");
        assert!(text.contains(r#"subject="_other""#));
    }
}
