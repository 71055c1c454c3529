//! Configuration: every setting has a flag, an environment variable and a key in an optional
//! TOML file (`--config FILE`), with precedence flag > environment > file > default
//! (docs/contract.md section 4).
//!
//! Guarantee: the typed settings handed to the rest of the program are valid. A bad value is a
//! [`ConfigError`] that names the setting the way the user wrote it (the environment variable),
//! and the process stops before it touches Kafka or PostgreSQL.
//!
//! How layering works: clap fills each `Option` from the flag or else the variable; the file
//! fills what is still `None`; `resolve` applies defaults and parses. The file's keys are the
//! variable names without `LIKERATE_`, lower case (`kafka_brokers = "..."`); librdkafka
//! pass-through properties go in a `[kafka_options]` table.

use clap::Args;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A setting that cannot be used. Always names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
    #[error("--config {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// The optional TOML file, loaded once and shared by the setting groups.
#[derive(Debug, Default, Clone)]
pub struct ConfigFile {
    table: toml::Table,
    path: Option<PathBuf>,
}

impl ConfigFile {
    pub fn load(path: Option<&Path>) -> Result<ConfigFile, ConfigError> {
        let Some(path) = path else {
            return Ok(ConfigFile::default());
        };
        let file_err = |message: String| ConfigError::File {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| file_err(e.to_string()))?;
        Ok(ConfigFile {
            table,
            path: Some(path.to_owned()),
        })
    }

    /// A key of the file that is no flag's: a table like `[[experiments]]`.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.table.get(key)
    }

    /// Fills the `None` fields of `cli` from the file.
    #[allow(
        clippy::expect_used,
        reason = "structs of options and TOML tables always serialize to JSON"
    )]
    fn layer<T: Serialize + DeserializeOwned>(&self, cli: &T) -> Result<T, ConfigError> {
        let mut merged = serde_json::to_value(cli).expect("settings serialize");
        let file = serde_json::to_value(&self.table).expect("toml serializes as json");
        if let (Some(merged), Some(file)) = (merged.as_object_mut(), file.as_object()) {
            for (key, value) in merged.iter_mut() {
                if value.is_null() {
                    if let Some(from_file) = file.get(key) {
                        *value = from_file.clone();
                    }
                }
            }
        }
        serde_json::from_value(merged).map_err(|e| ConfigError::File {
            path: self.path.clone().unwrap_or_default(),
            message: e.to_string(),
        })
    }
}

/// Kafka settings shared by every command that talks to the broker.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma separated [default: 127.0.0.1:9092]
    #[arg(long, env = "LIKERATE_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic of feedback events [default: feedback-events]
    #[arg(long, env = "LIKERATE_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// Consumer group [default: likerate]
    #[arg(long, env = "LIKERATE_KAFKA_GROUP")]
    pub kafka_group: Option<String>,
    /// Dead-letter topic [default: feedback-events-dlq]
    #[arg(long, env = "LIKERATE_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,
    /// Partitions of the topics likerate creates when they are missing [default: 6]
    #[arg(long, env = "LIKERATE_TOPIC_PARTITIONS")]
    pub topic_partitions: Option<i32>,
    /// librdkafka property passed through, KEY=VALUE (repeatable); also
    /// LIKERATE_KAFKA_OPTION_SECURITY_PROTOCOL=sasl_ssl sets security.protocol
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    #[serde(skip)]
    pub kafka_option: Vec<String>,
}

/// Validated Kafka settings.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub dlq_topic: String,
    pub topic_partitions: i32,
    /// librdkafka properties passed through, applied last (they win over likerate's own).
    pub options: BTreeMap<String, String>,
}

impl KafkaArgs {
    pub fn resolve(&self, file: &ConfigFile) -> Result<KafkaConfig, ConfigError> {
        let s = file.layer(self)?;
        let non_empty = |setting: &'static str, v: Option<String>, default: &str| {
            let v = v.unwrap_or_else(|| default.to_owned());
            if v.trim().is_empty() {
                Err(invalid(setting, "must not be empty"))
            } else {
                Ok(v)
            }
        };
        let topic_partitions = s.topic_partitions.unwrap_or(6);
        if !(1..=10_000).contains(&topic_partitions) {
            return Err(invalid(
                "LIKERATE_TOPIC_PARTITIONS",
                format!("must be between 1 and 10000, got {topic_partitions}"),
            ));
        }
        Ok(KafkaConfig {
            brokers: non_empty("LIKERATE_KAFKA_BROKERS", s.kafka_brokers, "127.0.0.1:9092")?,
            topic: non_empty("LIKERATE_KAFKA_TOPIC", s.kafka_topic, "feedback-events")?,
            group: non_empty("LIKERATE_KAFKA_GROUP", s.kafka_group, "likerate")?,
            dlq_topic: non_empty("LIKERATE_DLQ_TOPIC", s.dlq_topic, "feedback-events-dlq")?,
            topic_partitions,
            options: kafka_options(file, std::env::vars(), &self.kafka_option)?,
        })
    }
}

const OPTION_PREFIX: &str = "LIKERATE_KAFKA_OPTION_";

/// librdkafka pass-through properties: file `[kafka_options]`, then the environment, then
/// `--kafka-option` flags, later layers winning per property.
fn kafka_options(
    file: &ConfigFile,
    env: impl Iterator<Item = (String, String)>,
    flags: &[String],
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut options = BTreeMap::new();
    if let Some(table) = file.table.get("kafka_options") {
        let table = table
            .as_table()
            .ok_or_else(|| invalid("kafka_options", "must be a table of strings"))?;
        for (key, value) in table {
            let value = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            options.insert(key.clone(), value);
        }
    }
    for (name, value) in env {
        if let Some(rest) = name.strip_prefix(OPTION_PREFIX) {
            options.insert(rest.to_ascii_lowercase().replace('_', "."), value);
        }
    }
    for flag in flags {
        let (key, value) = flag
            .split_once('=')
            .ok_or_else(|| invalid("--kafka-option", format!("{flag:?} is not KEY=VALUE")))?;
        options.insert(key.trim().to_owned(), value.to_owned());
    }
    Ok(options)
}

/// PostgreSQL settings.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatabaseArgs {
    /// PostgreSQL URL [default: postgres://postgres@127.0.0.1:5432/likerate]
    #[arg(long, env = "LIKERATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL URL (for secrets mounted as files); used when
    /// LIKERATE_DATABASE_URL is unset
    #[arg(long, env = "LIKERATE_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Timeout of one database statement or connection attempt [default: 30s]
    #[arg(long, env = "LIKERATE_DATABASE_TIMEOUT")]
    pub database_timeout: Option<String>,
}

#[derive(Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("DatabaseConfig")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl DatabaseArgs {
    pub fn resolve(&self, file: &ConfigFile) -> Result<DatabaseConfig, ConfigError> {
        let s = file.layer(self)?;
        let url = match (s.database_url, s.database_url_file) {
            (Some(url), _) => url,
            (None, Some(path)) => read_secret("LIKERATE_DATABASE_URL_FILE", &path)?,
            (None, None) => "postgres://postgres@127.0.0.1:5432/likerate".to_owned(),
        };
        url.parse::<tokio_postgres::Config>()
            .map_err(|e| invalid("LIKERATE_DATABASE_URL", e.to_string()))?;
        Ok(DatabaseConfig {
            url,
            timeout: duration("LIKERATE_DATABASE_TIMEOUT", s.database_timeout, "30s")?,
        })
    }
}

fn read_secret(setting: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| invalid(setting, format!("{}: {e}", path.display())))
}

pub fn duration(
    setting: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_owned());
    humantime::parse_duration(text.trim())
        .map_err(|e| invalid(setting, format!("{text:?} is not a duration like 15m: {e}")))
}

/// The deduplication window must cover the topic's retention (docs/contract.md section 3):
/// an event read again (a new consumer group, an offset reset, a disaster recovery) is then
/// always still inside it. `retention` `None`: the topic keeps records forever. A config error
/// (stop), naming both settings.
pub fn check_dedup_window(
    window: Duration,
    topic: &str,
    retention: Option<Duration>,
) -> Result<(), ConfigError> {
    // Whole days as a user writes them (`30d`); humantime would say "1month 13h 26m 24s".
    let shown = |d: Duration| match d.as_secs() {
        s if s > 0 && s % 86_400 == 0 && d.subsec_nanos() == 0 => format!("{}d", s / 86_400),
        _ => humantime::format_duration(d).to_string(),
    };
    let kept = match retention {
        Some(r) if r <= window => return Ok(()),
        Some(r) => format!("retention.ms {} ({})", r.as_millis(), shown(r)),
        None => "retention.ms -1 (forever)".to_owned(),
    };
    Err(invalid(
        "LIKERATE_DEDUP_WINDOW",
        format!(
            "{} is shorter than the {kept} of topic {topic:?}: an event read again from the \
             topic could fall outside the window; set LIKERATE_DEDUP_WINDOW to at least the \
             topic's retention, or lower the topic's retention.ms",
            shown(window)
        ),
    ))
}

/// Settings of `likerate run` beyond Kafka and PostgreSQL.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunArgs {
    /// Address of the HTTP API and /metrics [default: 127.0.0.1:8080]
    #[arg(long, env = "LIKERATE_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Alertmanager base URL; unset: alerts are only shown in metrics
    #[arg(long, env = "LIKERATE_ALERTMANAGER_URL")]
    pub alertmanager_url: Option<String>,
    /// Page when the like rate is below this ratio [default: 0.85]
    #[arg(long, env = "LIKERATE_LIKE_RATE_THRESHOLD")]
    pub like_rate_threshold: Option<f64>,
    /// Window the alert is evaluated over [default: 15m]
    #[arg(long, env = "LIKERATE_ALERT_WINDOW")]
    pub alert_window: Option<String>,
    /// Fewest votes in the window for the alert to fire [default: 50]
    #[arg(long, env = "LIKERATE_ALERT_MIN_SAMPLES")]
    pub alert_min_samples: Option<u64>,
    /// Also evaluate the alert per model version [default: true]
    #[arg(long, env = "LIKERATE_ALERT_PER_MODEL")]
    pub alert_per_model: Option<bool>,
    /// The consumer counts as stalled when it has lag but acknowledged no batch for this long:
    /// a firing page is then held and FeedbackPipelineStalled pushed [default: 2m]
    #[arg(long, env = "LIKERATE_STALL_AFTER")]
    pub stall_after: Option<String>,
    /// Runbook linked from the alert
    #[arg(long, env = "LIKERATE_RUNBOOK_URL")]
    pub runbook_url: Option<String>,
    /// Dashboard linked from the alert
    #[arg(long, env = "LIKERATE_DASHBOARD_URL")]
    pub dashboard_url: Option<String>,
    /// Bearer token of the endpoints that return user text; unset: they answer 403
    #[arg(long, env = "LIKERATE_EXPORT_TOKEN", hide_env_values = true)]
    pub export_token: Option<String>,
    /// File holding the export token; used when LIKERATE_EXPORT_TOKEN is unset
    #[arg(long, env = "LIKERATE_EXPORT_TOKEN_FILE")]
    pub export_token_file: Option<PathBuf>,
    /// Bearer token `POST /api/feedback` requires; unset: the route is open
    #[arg(long, env = "LIKERATE_INGEST_TOKEN", hide_env_values = true)]
    pub ingest_token: Option<String>,
    /// Origins allowed to call the API from a browser, comma separated
    /// (`https://app.example.com`), or `*` for any; unset: no CORS headers
    #[arg(long, env = "LIKERATE_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// Most HTTP connections open at once; past it the oldest idle one is closed
    /// [default: 1024]
    #[arg(long, env = "LIKERATE_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// Most HTTP requests handled at once; more are answered 503 at once [default: 256]
    #[arg(long, env = "LIKERATE_HTTP_MAX_REQUESTS")]
    pub http_max_requests: Option<usize>,
    /// Longest a client may take to send a request's headers, and a request's body
    /// [default: 10s]
    #[arg(long, env = "LIKERATE_HTTP_READ_TIMEOUT")]
    pub http_read_timeout: Option<String>,
    /// Most distinct values of the `subject` metric label; the rest are `_other` [default: 200]
    #[arg(long, env = "LIKERATE_MAX_SUBJECT_LABELS")]
    pub max_subject_labels: Option<usize>,
    /// Most events in one database transaction [default: 5000]
    #[arg(long, env = "LIKERATE_BATCH_MAX_EVENTS")]
    pub batch_max_events: Option<usize>,
    /// Longest an event waits for its batch to fill [default: 50ms]
    #[arg(long, env = "LIKERATE_BATCH_LINGER")]
    pub batch_linger: Option<String>,
    /// Database connections writing batches in parallel [default: 2]
    #[arg(long, env = "LIKERATE_SINK_CONNECTIONS")]
    pub sink_connections: Option<usize>,
    /// Longest a shutdown or partition revocation waits for in-flight batches [default: 20s]
    #[arg(long, env = "LIKERATE_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// Replace these kinds of personal data in questions and answers before they are stored,
    /// comma separated: email, phone [default: none]
    #[arg(long, env = "LIKERATE_REDACT")]
    pub redact: Option<String>,
    /// Horizon of idempotency and vote bookkeeping; must cover the feedback topic's
    /// `retention.ms`, or likerate refuses to start [default: 30d]
    #[arg(long, env = "LIKERATE_DEDUP_WINDOW")]
    pub dedup_window: Option<String>,
    /// Power at which `compare` plans the votes an A/B test needs [default: 0.8]
    #[arg(long, env = "LIKERATE_AB_POWER")]
    pub ab_power: Option<f64>,
    #[command(flatten)]
    #[serde(flatten)]
    pub retention: RetentionArgs,
}

/// How long stored feedback is kept (`likerate retention`, and daily inside `likerate run`).
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct RetentionArgs {
    /// Erase question and answer text of rows older than this (ratings and aggregates stay),
    /// e.g. 90d [default: unset, kept]
    #[arg(long, env = "LIKERATE_RETENTION_TEXT")]
    pub retention_text: Option<String>,
    /// Delete rows older than this; the rollups keep counting them, e.g. 400d
    /// [default: unset, kept]
    #[arg(long, env = "LIKERATE_RETENTION_ROWS")]
    pub retention_rows: Option<String>,
}

/// Validated retention: `None` keeps forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionConfig {
    pub text: Option<Duration>,
    pub rows: Option<Duration>,
}

impl RetentionConfig {
    pub fn is_enabled(&self) -> bool {
        self.text.is_some() || self.rows.is_some()
    }
}

impl RetentionArgs {
    pub fn resolve(&self, file: &ConfigFile) -> Result<RetentionConfig, ConfigError> {
        let s = file.layer(self)?;
        let age = |setting: &'static str, value: Option<String>| -> Result<_, ConfigError> {
            let Some(text) = value.filter(|v| !v.trim().is_empty()) else {
                return Ok(None);
            };
            let d = duration(setting, Some(text), "")?;
            if d < Duration::from_secs(60) {
                return Err(invalid(setting, "must be at least 1m (for example 90d)"));
            }
            Ok(Some(d))
        };
        Ok(RetentionConfig {
            text: age("LIKERATE_RETENTION_TEXT", s.retention_text)?,
            rows: age("LIKERATE_RETENTION_ROWS", s.retention_rows)?,
        })
    }
}

/// Which personal data is replaced before the write (`LIKERATE_REDACT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedactConfig {
    pub email: bool,
    pub phone: bool,
}

impl RedactConfig {
    pub fn parse(value: Option<&str>) -> Result<RedactConfig, ConfigError> {
        let mut c = RedactConfig::default();
        for kind in value.unwrap_or_default().split(',').map(str::trim) {
            match kind.to_ascii_lowercase().as_str() {
                "" | "none" => {}
                "email" => c.email = true,
                "phone" => c.phone = true,
                other => {
                    return Err(invalid(
                        "LIKERATE_REDACT",
                        format!("{other:?} is not one of email, phone, none"),
                    ))
                }
            }
        }
        Ok(c)
    }
}

/// Origins allowed to call the API from a browser (`LIKERATE_CORS_ORIGINS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS headers: browsers keep other origins out.
    #[default]
    None,
    /// `*`: any origin (the API uses bearer tokens, never cookies).
    Any,
    List(Vec<String>),
}

impl CorsOrigins {
    pub fn parse(value: Option<&str>) -> Result<CorsOrigins, ConfigError> {
        let setting = "LIKERATE_CORS_ORIGINS";
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(CorsOrigins::None);
        };
        if value == "*" {
            return Ok(CorsOrigins::Any);
        }
        let mut origins = Vec::new();
        for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            // An origin is scheme://host[:port], exactly as a browser sends it: no path, no
            // trailing slash, printable ASCII (it becomes a header value).
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let valid = rest.is_some_and(|host| {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            });
            if !valid {
                return Err(invalid(
                    setting,
                    format!("{origin:?} is not an origin like https://app.example.com (scheme, host, optional port; no path)"),
                ));
            }
            origins.push(origin.to_owned());
        }
        Ok(CorsOrigins::List(origins))
    }
}

/// Bounds of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_requests: usize,
    pub read_timeout: Duration,
}

#[derive(Clone)]
pub struct RunConfig {
    pub http_addr: SocketAddr,
    pub alert: AlertConfig,
    pub export_token: Option<String>,
    pub ingest_token: Option<String>,
    pub cors_origins: CorsOrigins,
    pub http_limits: HttpLimits,
    pub max_subject_labels: usize,
    pub batch_max_events: usize,
    pub batch_linger: Duration,
    pub sink_connections: usize,
    pub drain_timeout: Duration,
    pub redact: RedactConfig,
    pub retention: RetentionConfig,
    /// `LIKERATE_DEDUP_WINDOW` ([`check_dedup_window`]).
    pub dedup_window: Duration,
    /// Experiments (file only: `[[experiments]]`) and the planning power.
    pub ab: crate::experiment::AbConfig,
}

impl std::fmt::Debug for RunConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunConfig")
            .field("http_addr", &self.http_addr)
            .field("alert", &self.alert)
            .field("export_token", &self.export_token.as_ref().map(|_| "<set>"))
            .field("ingest_token", &self.ingest_token.as_ref().map(|_| "<set>"))
            .field("cors_origins", &self.cors_origins)
            .field("http_limits", &self.http_limits)
            .field("max_subject_labels", &self.max_subject_labels)
            .field("batch_max_events", &self.batch_max_events)
            .field("batch_linger", &self.batch_linger)
            .field("sink_connections", &self.sink_connections)
            .field("drain_timeout", &self.drain_timeout)
            .field("redact", &self.redact)
            .field("retention", &self.retention)
            .field("dedup_window", &self.dedup_window)
            .field("ab", &self.ab)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub alertmanager_url: Option<String>,
    pub threshold: f64,
    pub window: Duration,
    pub min_samples: u64,
    pub per_model: bool,
    /// `LIKERATE_STALL_AFTER`: lag without an acknowledged batch for this long is a stall.
    pub stall_after: Duration,
    pub runbook_url: String,
    pub dashboard_url: String,
}

impl RunArgs {
    pub fn resolve(&self, file: &ConfigFile) -> Result<RunConfig, ConfigError> {
        let s = file.layer(self)?;
        let http_addr = s
            .http_addr
            .as_deref()
            .unwrap_or("127.0.0.1:8080")
            .parse::<SocketAddr>()
            .map_err(|e| invalid("LIKERATE_HTTP_ADDR", e.to_string()))?;
        let threshold = s.like_rate_threshold.unwrap_or(0.85);
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(invalid(
                "LIKERATE_LIKE_RATE_THRESHOLD",
                format!("must be a ratio in (0, 1], got {threshold}"),
            ));
        }
        let window = duration("LIKERATE_ALERT_WINDOW", s.alert_window, "15m")?;
        let stall_after = duration("LIKERATE_STALL_AFTER", s.stall_after, "2m")?;
        if stall_after < Duration::from_secs(10) || stall_after > Duration::from_secs(24 * 3600) {
            return Err(invalid(
                "LIKERATE_STALL_AFTER",
                "must be between 10s and 24h",
            ));
        }
        if window < Duration::from_secs(60) || window > Duration::from_secs(24 * 3600) {
            return Err(invalid(
                "LIKERATE_ALERT_WINDOW",
                "must be between 1m and 24h",
            ));
        }
        if let Some(url) = &s.alertmanager_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "LIKERATE_ALERTMANAGER_URL",
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
        }
        let export_token = match (s.export_token, s.export_token_file) {
            (Some(t), _) => Some(t),
            (None, Some(path)) => Some(read_secret("LIKERATE_EXPORT_TOKEN_FILE", &path)?),
            (None, None) => None,
        };
        if export_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(
                "LIKERATE_EXPORT_TOKEN",
                "must be at least 16 characters",
            ));
        }
        if s.ingest_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(
                "LIKERATE_INGEST_TOKEN",
                "must be at least 16 characters",
            ));
        }
        let cors_origins = CorsOrigins::parse(s.cors_origins.as_deref())?;
        let max_connections = s.http_max_connections.unwrap_or(1024);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(invalid(
                "LIKERATE_HTTP_MAX_CONNECTIONS",
                "must be between 1 and 1000000",
            ));
        }
        let max_requests = s.http_max_requests.unwrap_or(256);
        if !(1..=100_000).contains(&max_requests) {
            return Err(invalid(
                "LIKERATE_HTTP_MAX_REQUESTS",
                "must be between 1 and 100000",
            ));
        }
        let read_timeout = duration("LIKERATE_HTTP_READ_TIMEOUT", s.http_read_timeout, "10s")?;
        if read_timeout < Duration::from_millis(100) || read_timeout > Duration::from_secs(300) {
            return Err(invalid(
                "LIKERATE_HTTP_READ_TIMEOUT",
                "must be between 100ms and 5m",
            ));
        }
        let max_subject_labels = s.max_subject_labels.unwrap_or(200);
        if max_subject_labels == 0 {
            return Err(invalid("LIKERATE_MAX_SUBJECT_LABELS", "must be at least 1"));
        }
        let batch_max_events = s.batch_max_events.unwrap_or(5000);
        if !(1..=100_000).contains(&batch_max_events) {
            return Err(invalid(
                "LIKERATE_BATCH_MAX_EVENTS",
                "must be between 1 and 100000",
            ));
        }
        let sink_connections = s.sink_connections.unwrap_or(2);
        if !(1..=16).contains(&sink_connections) {
            return Err(invalid(
                "LIKERATE_SINK_CONNECTIONS",
                "must be between 1 and 16",
            ));
        }
        Ok(RunConfig {
            http_addr,
            alert: AlertConfig {
                alertmanager_url: s
                    .alertmanager_url
                    .map(|u| u.trim_end_matches('/').to_owned()),
                threshold,
                window,
                min_samples: s.alert_min_samples.unwrap_or(50),
                per_model: s.alert_per_model.unwrap_or(true),
                stall_after,
                runbook_url: s.runbook_url.unwrap_or_else(|| {
                    "https://github.com/likerate/likerate/blob/main/deploy/RUNBOOK.md".to_owned()
                }),
                dashboard_url: s
                    .dashboard_url
                    .unwrap_or_else(|| "http://127.0.0.1:3000/d/likerate".to_owned()),
            },
            export_token,
            ingest_token: s.ingest_token,
            cors_origins,
            http_limits: HttpLimits {
                max_connections,
                max_requests,
                read_timeout,
            },
            max_subject_labels,
            batch_max_events,
            batch_linger: duration("LIKERATE_BATCH_LINGER", s.batch_linger, "50ms")?,
            sink_connections,
            drain_timeout: duration("LIKERATE_DRAIN_TIMEOUT", s.drain_timeout, "20s")?,
            redact: RedactConfig::parse(s.redact.as_deref())?,
            retention: s.retention.resolve(file)?,
            dedup_window: duration("LIKERATE_DEDUP_WINDOW", s.dedup_window, "30d")?,
            ab: crate::experiment::AbConfig::resolve(file.get("experiments"), s.ab_power)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ConfigFile {
        ConfigFile {
            table: text.parse().unwrap(),
            path: Some("test.toml".into()),
        }
    }

    #[test]
    fn flag_or_env_beats_file_beats_default() {
        let f = file("kafka_topic = \"from-file\"\nkafka_group = \"file-group\"");
        let cli = KafkaArgs {
            kafka_topic: Some("from-cli".into()),
            ..KafkaArgs::default()
        };
        let c = cli.resolve(&f).unwrap();
        assert_eq!(c.topic, "from-cli");
        assert_eq!(c.group, "file-group");
        assert_eq!(c.dlq_topic, "feedback-events-dlq");
    }

    #[test]
    fn kafka_options_layer_per_property() {
        let f = file("[kafka_options]\n\"security.protocol\" = \"ssl\"\n\"linger.ms\" = 5");
        let env = vec![(
            "LIKERATE_KAFKA_OPTION_SECURITY_PROTOCOL".to_owned(),
            "sasl_ssl".to_owned(),
        )];
        let opts = kafka_options(
            &f,
            env.into_iter(),
            &["sasl.mechanism=SCRAM-SHA-512".into()],
        )
        .unwrap();
        assert_eq!(opts["security.protocol"], "sasl_ssl");
        assert_eq!(opts["linger.ms"], "5");
        assert_eq!(opts["sasl.mechanism"], "SCRAM-SHA-512");
    }

    #[test]
    fn errors_name_the_setting() {
        let bad = RunArgs {
            like_rate_threshold: Some(1.5),
            ..RunArgs::default()
        };
        let err = bad.resolve(&ConfigFile::default()).unwrap_err().to_string();
        assert!(err.starts_with("LIKERATE_LIKE_RATE_THRESHOLD:"), "{err}");
        let bad = RunArgs {
            alert_window: Some("soon".into()),
            ..RunArgs::default()
        };
        let err = bad.resolve(&ConfigFile::default()).unwrap_err().to_string();
        assert!(err.starts_with("LIKERATE_ALERT_WINDOW:"), "{err}");
        let bad = RunArgs {
            redact: Some("email,ssn".into()),
            ..RunArgs::default()
        };
        let err = bad.resolve(&ConfigFile::default()).unwrap_err().to_string();
        assert!(err.starts_with("LIKERATE_REDACT:"), "{err}");
        let bad = RetentionArgs {
            retention_text: Some("ninety days".into()),
            ..RetentionArgs::default()
        };
        let err = bad.resolve(&ConfigFile::default()).unwrap_err().to_string();
        assert!(err.starts_with("LIKERATE_RETENTION_TEXT:"), "{err}");
        for origins in [
            "app.example.com",
            "https://app.example.com/",
            "ftp://x",
            "https://a b",
        ] {
            let bad = RunArgs {
                cors_origins: Some(origins.into()),
                ..RunArgs::default()
            };
            let err = bad.resolve(&ConfigFile::default()).unwrap_err().to_string();
            assert!(
                err.starts_with("LIKERATE_CORS_ORIGINS:"),
                "{origins}: {err}"
            );
        }
        let bad = RunArgs {
            ingest_token: Some("short".into()),
            ..RunArgs::default()
        };
        let err = bad.resolve(&ConfigFile::default()).unwrap_err().to_string();
        assert!(err.starts_with("LIKERATE_INGEST_TOKEN:"), "{err}");
        let c = file("cors_origins = \"https://a.example, http://127.0.0.1:3000\"\ningest_token = \"0123456789abcdef\"")
            .layer(&RunArgs::default())
            .unwrap()
            .resolve(&ConfigFile::default())
            .unwrap();
        assert_eq!(
            c.cors_origins,
            CorsOrigins::List(vec![
                "https://a.example".into(),
                "http://127.0.0.1:3000".into()
            ])
        );
        assert_eq!(c.ingest_token.as_deref(), Some("0123456789abcdef"));
        let err = file("http_addr = 5")
            .layer(&RunArgs::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.toml"), "{err}");
    }

    #[test]
    fn the_dedup_window_must_cover_the_topics_retention() {
        let day = Duration::from_secs(86_400);
        let c = RunArgs::default().resolve(&ConfigFile::default()).unwrap();
        assert_eq!(c.dedup_window, 30 * day);
        assert!(check_dedup_window(30 * day, "t", Some(7 * day)).is_ok());
        assert!(check_dedup_window(30 * day, "t", Some(30 * day)).is_ok());
        let err = check_dedup_window(30 * day, "feedback-events", Some(31 * day))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("LIKERATE_DEDUP_WINDOW: 30d is shorter"),
            "{err}"
        );
        assert!(err.contains("retention.ms 2678400000 (31d)"), "{err}");
        assert!(err.contains("\"feedback-events\""), "{err}");
        let err = check_dedup_window(30 * day, "t", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention.ms -1 (forever)"), "{err}");
        let bad = RunArgs {
            dedup_window: Some("a month".into()),
            ..RunArgs::default()
        };
        let err = bad.resolve(&ConfigFile::default()).unwrap_err().to_string();
        assert!(err.starts_with("LIKERATE_DEDUP_WINDOW:"), "{err}");
    }

    #[test]
    fn retention_and_redaction_layer_like_the_rest() {
        let f = file("retention_text = \"90d\"\nredact = \"email, phone\"");
        let c = RunArgs {
            retention: RetentionArgs {
                retention_rows: Some("400d".into()),
                ..RetentionArgs::default()
            },
            ..RunArgs::default()
        }
        .resolve(&f)
        .unwrap();
        assert_eq!(c.retention.text, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(c.retention.rows, Some(Duration::from_secs(400 * 86_400)));
        assert_eq!(
            c.redact,
            RedactConfig {
                email: true,
                phone: true
            }
        );
        let c = RunArgs::default().resolve(&ConfigFile::default()).unwrap();
        assert!(!c.retention.is_enabled());
        assert_eq!(c.redact, RedactConfig::default());
    }
}
