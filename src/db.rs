//! PostgreSQL plumbing: connections with timeouts and TLS, the read pool, and migrations.
//!
//! Guarantees:
//! - Every connection attempt, pool checkout and statement (but a migration's) is bounded by
//!   the configured timeout (`connect_timeout`, pool wait/create/recycle timeouts, `statement_timeout`, and
//!   on the client side [`within`] for the sink and the dead-letter publisher), and TCP
//!   keepalives find a peer that vanished without closing the connection.
//! - `sslmode` follows libpq: `disable`, `prefer`, `require` (encrypted, certificate not
//!   checked), `verify-ca` (certificate checked, host name not), `verify-full` (both);
//!   `sslrootcert=FILE` adds a trusted root.
//! - Migrations in `schemas/migrations/` are applied in order, each once, under an advisory lock
//!   so that several instances starting together do not race.

use crate::config::DatabaseConfig;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use postgres_native_tls::MakeTlsConnector;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Failures talking to PostgreSQL, classified by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database is unreachable, restarting, overloaded or timed out: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The statement was refused because of the data in it: isolate the data.
    #[error("database refused the data: {0}")]
    Data(String),
    /// Configuration or schema problem that retrying cannot fix: stop.
    #[error("database configuration: {0}")]
    Fatal(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        let text = describe(&e);
        match e.code() {
            None => DbError::Unavailable(text),
            Some(code) => {
                let class = &code.code()[..2];
                match class {
                    // data exception, integrity constraint violation
                    "22" | "23" => DbError::Data(text),
                    // connection, resources, operator intervention, transaction rollback
                    // (deadlock, serialization), system errors: all transient
                    "08" | "53" | "57" | "40" | "58" | "XX" => DbError::Unavailable(text),
                    // invalid authorization, catalog, undefined table/column, syntax,
                    // insufficient privilege: a person has to fix something
                    _ => DbError::Fatal(text),
                }
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> DbError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => DbError::from(e),
            other => DbError::Unavailable(other.to_string()),
        }
    }
}

/// The server's message with its SQLSTATE, never the statement's parameters (user text).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// A parsed connection target: the tokio-postgres config and the TLS connector to use.
#[derive(Clone)]
pub struct Target {
    pub pg: tokio_postgres::Config,
    tls: MakeTlsConnector,
    timeout: Duration,
}

impl Target {
    pub fn new(cfg: &DatabaseConfig) -> Result<Target, DbError> {
        let (url, tls) = split_tls(&cfg.url)?;
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| DbError::Fatal(e.to_string()))?;
        pg.connect_timeout(cfg.timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(15))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(cfg.timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("likerate");
        }
        Ok(Target {
            pg,
            tls,
            timeout: cfg.timeout,
        })
    }

    /// Same server, another database (tests and `ensure_database`).
    pub fn with_dbname(&self, dbname: &str) -> Target {
        let mut t = self.clone();
        t.pg.dbname(dbname);
        t
    }

    pub fn dbname(&self) -> &str {
        self.pg.get_dbname().unwrap_or("postgres")
    }

    /// `LIKERATE_DATABASE_TIMEOUT`: the bound of every call, also on the client side
    /// ([`within`]).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One connection whose driver task runs on the runtime; statements time out server side.
    pub async fn connect(&self) -> Result<Client, DbError> {
        let (client, connection) =
            tokio::time::timeout(self.timeout, self.pg.connect(self.tls.clone()))
                .await
                .map_err(|_| DbError::Unavailable("connect timed out".into()))??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection closed");
            }
        });
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}; SET lock_timeout = {}",
                self.timeout.as_millis(),
                self.timeout.as_millis()
            ))
            .await?;
        Ok(client)
    }

    /// The pool for short reads (HTTP API, window gauges, readiness).
    pub fn pool(&self, max_size: usize) -> Result<Pool, DbError> {
        let mut pg = self.pg.clone();
        pg.options(format!(
            "-c statement_timeout={} -c lock_timeout={}",
            self.timeout.as_millis(),
            self.timeout.as_millis()
        ));
        let manager = Manager::from_config(
            pg,
            self.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.timeout))
            .create_timeout(Some(self.timeout))
            .recycle_timeout(Some(self.timeout))
            .build()
            .map_err(|e| DbError::Fatal(e.to_string()))
    }

    /// Creates the database if it does not exist yet (first start on a fresh server).
    pub async fn ensure_database(&self) -> Result<(), DbError> {
        match self.connect().await {
            Ok(_) => Ok(()),
            Err(DbError::Fatal(msg)) if msg.contains("(3D000)") => {
                let admin = self.with_dbname("postgres").connect().await?;
                let name = self.dbname().replace('"', "\"\"");
                match admin
                    .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                    .await
                {
                    Ok(()) => Ok(()),
                    // Another instance created it first.
                    Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// `call` bounded on the client side: no answer within `timeout` (a backend that hangs, a
/// network that drops packets without closing, which `statement_timeout` cannot see) is
/// [`DbError::Unavailable`], so the caller drops the connection and retries.
pub async fn within<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(DbError::Unavailable(format!(
                "no answer within {timeout:?}"
            )))
        })
}

/// Takes libpq's TLS parameters out of the URL (tokio-postgres knows only part of them) and
/// builds the matching connector.
fn split_tls(url: &str) -> Result<(String, MakeTlsConnector), DbError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = "prefer".to_owned();
    let mut root_cert = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = v.to_owned(),
            Some(("sslrootcert", v)) => root_cert = Some(v.to_owned()),
            _ => kept.push(pair),
        }
    }
    let (pg_mode, verify_cert, verify_host) = match mode.as_str() {
        "disable" => ("disable", false, false),
        "prefer" | "allow" => ("prefer", false, false),
        "require" => ("require", false, false),
        "verify-ca" => ("require", true, false),
        "verify-full" => ("require", true, true),
        other => {
            return Err(DbError::Fatal(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            )))
        }
    };
    kept.push(match pg_mode {
        "disable" => "sslmode=disable",
        "prefer" => "sslmode=prefer",
        _ => "sslmode=require",
    });
    let mut builder = native_tls::TlsConnector::builder();
    builder
        .danger_accept_invalid_certs(!verify_cert)
        .danger_accept_invalid_hostnames(!verify_host);
    if let Some(path) = root_cert {
        let pem =
            std::fs::read(&path).map_err(|e| DbError::Fatal(format!("sslrootcert {path}: {e}")))?;
        let cert = native_tls::Certificate::from_pem(&pem)
            .map_err(|e| DbError::Fatal(format!("sslrootcert {path}: {e}")))?;
        builder.add_root_certificate(cert);
    }
    let connector = builder
        .build()
        .map_err(|e| DbError::Fatal(format!("TLS setup: {e}")))?;
    Ok((
        format!("{base}?{}", kept.join("&")),
        MakeTlsConnector::new(connector),
    ))
}

/// The ordered migrations of `schemas/migrations/`, compiled in so the binary is self-contained.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "feedback",
        include_str!("../schemas/migrations/0001_feedback.sql"),
    ),
    (
        2,
        "votes_and_rollups",
        include_str!("../schemas/migrations/0002_votes_and_rollups.sql"),
    ),
    (
        3,
        "operations",
        include_str!("../schemas/migrations/0003_operations.sql"),
    ),
    (
        4,
        "vote_slot",
        include_str!("../schemas/migrations/0004_vote_slot.sql"),
    ),
    (
        5,
        "tombstones",
        include_str!("../schemas/migrations/0005_tombstones.sql"),
    ),
    (
        6,
        "dead_letter_outbox",
        include_str!("../schemas/migrations/0006_dead_letter_outbox.sql"),
    ),
    (
        7,
        "reasons",
        include_str!("../schemas/migrations/0007_reasons.sql"),
    ),
    (
        8,
        "free_text_reasons",
        include_str!("../schemas/migrations/0008_free_text_reasons.sql"),
    ),
    (
        9,
        "dead_letter_publisher",
        include_str!("../schemas/migrations/0009_dead_letter_publisher.sql"),
    ),
    (
        10,
        "conversation_by_day",
        include_str!("../schemas/migrations/0010_conversation_by_day.sql"),
    ),
    (
        11,
        "vote_key",
        include_str!("../schemas/migrations/0011_vote_key.sql"),
    ),
    (
        12,
        "conversation_units",
        include_str!("../schemas/migrations/0012_conversation_units.sql"),
    ),
];

/// Applies the migrations not applied yet; returns their names.
pub async fn migrate(client: &mut Client) -> Result<Vec<String>, DbError> {
    let tx = client.transaction().await?;
    // Serialises concurrent migrators; released at commit.
    tx.execute("SELECT pg_advisory_xact_lock(7335327201)", &[])
        .await?;
    // A migration that rebuilds an index on a large `feedback` takes as long as the table
    // needs (0010: seconds per million rows), longer than any statement timeout meant for the
    // pipeline's statements; cut at the timeout it would roll back and fail again at every
    // start. The lock timeout stays.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS likerate_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM likerate_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut names = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO likerate_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        names.push(format!("{version:04}_{name}"));
    }
    tx.commit().await?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let (url, _) =
            split_tls("postgres://u@h/db?sslmode=verify-full&application_name=x").unwrap();
        assert_eq!(url, "postgres://u@h/db?application_name=x&sslmode=require");
        let (url, _) = split_tls("postgres://u@h/db").unwrap();
        assert_eq!(url, "postgres://u@h/db?sslmode=prefer");
        assert!(split_tls("postgres://u@h/db?sslmode=sometimes").is_err());
    }
}
