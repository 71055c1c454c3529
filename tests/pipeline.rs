//! The pipeline against real services: PostgreSQL, Apache Kafka (one broker per test binary,
//! `common::kafka`) and the `likerate` binary itself, started as a child process with a fresh
//! database, topic and group per test and HTTP on port 0. Broker faults on a three-node
//! cluster are in `tests/kafka_faults.rs`.
//!
//! Every test ends with the same two checks: the stored rows are exactly the distinct valid
//! events that were produced, and the rollups equal a recomputation from the `feedback` table.

mod common;

use common::{traffic, Served, World};
use std::collections::HashSet;
use std::ops::Deref;
use std::process::Command;
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Tests that restart PostgreSQL take this exclusively; every other test shares it.
fn pg_lock() -> &'static RwLock<()> {
    static LOCK: OnceLock<RwLock<()>> = OnceLock::new();
    LOCK.get_or_init(|| RwLock::new(()))
}

/// A [`World`] on the shared broker, holding the PostgreSQL lock for the test's life.
struct Env {
    world: World,
    _guard: Box<dyn std::any::Any>,
}

impl Env {
    async fn new() -> Env {
        Self::with_guard(false).await
    }

    async fn with_guard(exclusive: bool) -> Env {
        let guard: Box<dyn std::any::Any> = if exclusive {
            Box::new(pg_lock().write().unwrap_or_else(|e| e.into_inner()))
        } else {
            Box::new(pg_lock().read().unwrap_or_else(|e| e.into_inner()))
        };
        Env {
            world: World::new().await,
            _guard: guard,
        }
    }

    fn db_url(&self) -> String {
        self.world.db.url()
    }

    async fn assert_rollups_exact(&self) {
        self.world.db.assert_rollups_exact(None).await;
    }
}

impl Deref for Env {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stores_each_event_once_and_replay_changes_nothing() {
    let env = Env::new().await;
    let (records, ids, invalid) = traffic(
        3000,
        1,
        &[
            "--duplicates",
            "0.02",
            "--revotes",
            "0.05",
            "--invalid",
            "0.01",
        ],
    );
    env.send(&records).await;
    let p = env.spawn(None, &[]);
    env.wait_for_rows(ids.len() as i64, Duration::from_secs(60))
        .await;
    env.assert_rollups_exact().await;
    assert_eq!(env.dead_letters(invalid).await.len(), invalid);
    // Metrics settle after the last batch's acknowledgement.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = p
        .metric_or_zero(r#"likerate_events_total{outcome="stored"}"#)
        .await;
    let dups = p
        .metric_or_zero(r#"likerate_events_total{outcome="duplicate"}"#)
        .await;
    assert_eq!(stored as usize, ids.len());
    assert_eq!(dups as usize, records.len() - invalid - ids.len());
    let (status, took) = p.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");

    // A second group replays the whole topic: nothing new is stored or counted.
    let p = env.spawn(Some("replay-group"), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while p
        .metric_or_zero(r#"likerate_events_total{outcome="duplicate"}"#)
        .await
        < (records.len() - invalid) as f64
    {
        assert!(Instant::now() < deadline, "replay did not finish");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        p.metric_or_zero(r#"likerate_events_total{outcome="stored"}"#)
            .await,
        0.0
    );
    assert_eq!(env.count().await, ids.len() as i64);
    env.assert_rollups_exact().await;
    p.kill9();
}

/// kill -9 while likerate holds an open transaction, restart, repeat: every event is stored
/// exactly once and every bad record is in the dead-letter topic once. The producer batches as
/// producers do (1,000 records sent at once, `linger.ms`, lz4: hundreds of records per producer
/// batch) while likerate's batches hold at most 500 events, so committed offsets fall inside
/// producer batches and restarts resume in the middle of one. Each new instance joins the group
/// while its killed predecessor is still a member until the session timeout evicts it (dynamic
/// membership).
#[tokio::test(flavor = "multi_thread")]
async fn kill9_restarts_store_each_event_once() {
    let env = Env::new().await;
    let settings = [("LIKERATE_BATCH_MAX_EVENTS", "500")];
    let (records, ids, invalid) = traffic(
        20_000,
        2,
        &[
            "--duplicates",
            "0.01",
            "--revotes",
            "0.05",
            "--invalid",
            "0.002",
        ],
    );
    assert!(invalid > 10, "the traffic holds bad records: {invalid}");
    let sender = env.send_in_background(records, 1000, Duration::from_millis(100));
    let admin = env.client().await;
    let mut in_flight = 0;
    for round in 0..5u64 {
        let p = env.spawn(None, &settings);
        tokio::time::sleep(Duration::from_millis(800 + 450 * round)).await;
        in_flight += usize::from(p.kill9_in_flight(&admin).await);
    }
    assert!(
        in_flight >= 3,
        "at least 3 of the 5 kills landed while a transaction was open: {in_flight}"
    );
    sender.await.unwrap();
    let p = env.spawn(None, &settings);
    env.assert_stored_exactly(&ids, Duration::from_secs(180))
        .await;
    // Each bad record once: `dead_letters` fails if more than expected arrive.
    let letters = env.dead_letters(invalid).await;
    assert_eq!(letters.len(), invalid);
    let origins = common::letter_origins(&letters);
    assert_eq!(origins.len(), invalid, "one dead letter per source offset");
    p.kill9();
}

/// Kills likerate's database sessions mid-transaction, then restarts PostgreSQL during a load.
#[tokio::test(flavor = "multi_thread")]
async fn database_sessions_killed_and_server_restarted_lose_nothing() {
    let env = Env::with_guard(true).await;
    let (records, ids, _) = traffic(15_000, 4, &["--revotes", "0.05"]);
    let p = env.spawn(None, &[("LIKERATE_BATCH_MAX_EVENTS", "200")]);
    let sender = env.send_in_background(records, 500, Duration::from_millis(100));
    env.wait_for_at_least(500, Duration::from_secs(60)).await;
    let admin = env.client().await;
    for _ in 0..5 {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name LIKE 'likerate-%' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before = env.count().await;
    env.wait_for_at_least(before + 500, Duration::from_secs(60))
        .await;
    postgres("restart");
    sender.await.unwrap();
    env.wait_for_rows(ids.len() as i64, Duration::from_secs(120))
        .await;
    env.assert_rollups_exact().await;
    assert!(p.metric_or_zero("likerate_db_retries_total").await > 0.0);
    assert_eq!(
        p.metric_or_zero(r#"likerate_events_total{outcome="dead_lettered"}"#)
            .await,
        0.0
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_dead_lettered_with_its_reason_and_text_is_stored_byte_exact() {
    let env = Env::new().await;
    let ok = |answer: &str| {
        serde_json::json!({
            "event_id": Uuid::new_v4(), "subject_id": "Math", "assistant_message": answer,
            "user_question": "q", "rating": 1, "created_at": "2026-02-05T10:30:00Z"
        })
        .to_string()
        .into_bytes()
    };
    let base = r#"{"subject_id":"Math","assistant_message":"x","rating":1,"created_at":"2026-02-05T10:30:00Z"}"#;
    let with = |from: &str, to: &str| base.replacen(from, to, 1).into_bytes();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_utf8", vec![b'{', 0xc3, 0x28, b'}']),
        ("invalid_json", b"not json".to_vec()),
        ("invalid_json", base.as_bytes()[..30].to_vec()),
        (
            "invalid_json",
            format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
        ("not_object", b"[1,2,3]".to_vec()),
        ("not_object", b"\"Math\"".to_vec()),
        ("empty", Vec::new()),
        ("too_large", ok(&"x".repeat(300 * 1024))),
        ("missing_field", with(r#""subject_id":"Math","#, "")),
        ("out_of_range", with("Math", &"m".repeat(65))),
        ("out_of_range", with(r#""rating":1"#, r#""rating":2"#)),
        ("invalid_type", with(r#""rating":1"#, r#""rating":"1""#)),
        ("invalid_type", with(r#""rating":1"#, r#""rating":1.5"#)),
        ("missing_field", with(r#""rating":1"#, r#""rating":null"#)),
        (
            "invalid_timestamp",
            with("2026-02-05T10:30:00Z", "yesterday"),
        ),
        ("invalid_json", with("Math", r"\ud800")),
        (
            "duplicate_field",
            with(r#""rating":1"#, r#""rating":1,"rating":-1"#),
        ),
        ("nul_character", with("Math", r"Ma\u0000th")),
    ];
    let texts = [
        "'; DROP TABLE feedback; --",
        "<script>alert('x')</script><b>bold</b>",
        "emoji 🎉👍🏽 and ZWJ 👩‍💻",
        "right-to-left \u{202e}override\u{202c} and \u{2067}isolate\u{2069}",
        &"long answer ".repeat(200 * 1024 / 12),
        "tab\tnewline\nbackslash\\ quote\" COPY markers \\N \\.",
    ];
    let mut records: Vec<(String, Vec<u8>)> = bad
        .iter()
        .map(|(_, b)| ("k".to_owned(), b.clone()))
        .collect();
    records.extend(texts.iter().map(|t| ("k".to_owned(), ok(t))));
    env.send(&records).await;
    let p = env.spawn(None, &[]);
    env.wait_for_rows(texts.len() as i64, Duration::from_secs(60))
        .await;
    let stored: HashSet<String> = env
        .client()
        .await
        .query("SELECT message_content FROM feedback", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in texts {
        assert!(
            stored.contains(t),
            "not stored byte-exact: {:?}",
            &t[..t.len().min(40)]
        );
    }
    let letters = env.dead_letters(bad.len()).await;
    assert_eq!(letters.len(), bad.len());
    let mut got: Vec<(String, Vec<u8>)> = letters
        .iter()
        .map(|(h, payload)| {
            assert_eq!(h["likerate-source-topic"], env.kafka.topic);
            assert!(h["likerate-source-partition"].parse::<i32>().is_ok());
            assert!(h["likerate-source-offset"].parse::<i64>().is_ok());
            assert!(!h["likerate-error-detail"].is_empty());
            (h["likerate-error"].clone(), payload.clone())
        })
        .collect();
    let mut want: Vec<(String, Vec<u8>)> =
        bad.into_iter().map(|(r, b)| (r.to_owned(), b)).collect();
    got.sort();
    want.sort();
    assert!(
        got == want,
        "dead letters differ in reason or original bytes"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        p.metric_or_zero(r#"likerate_dead_letters_total{reason="invalid_json"}"#)
            .await,
        4.0
    );
    p.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_database_refuses_is_isolated_from_its_batch() {
    let env = Env::new().await;
    // Create the schema, then a constraint standing for any data PostgreSQL may refuse.
    let status = Command::new(env!("CARGO_BIN_EXE_likerate"))
        .args(["migrate", "--database-url", &env.db_url()])
        .status()
        .unwrap();
    assert!(status.success());
    env.client()
        .await
        .batch_execute(
            "ALTER TABLE feedback ADD CONSTRAINT no_poison CHECK (message_content <> 'poison')",
        )
        .await
        .unwrap();
    let event = |answer: &str| {
        serde_json::json!({
            "event_id": Uuid::new_v4(), "subject_id": "Math", "assistant_message": answer,
            "rating": -1, "created_at": chrono::Utc::now().to_rfc3339()
        })
        .to_string()
        .into_bytes()
    };
    let mut records: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| ("k".to_owned(), event(&format!("answer {i}"))))
        .collect();
    records.insert(17, ("k".to_owned(), event("poison")));
    env.send(&records).await;
    let p = env.spawn(None, &[]);
    env.wait_for_rows(40, Duration::from_secs(60)).await;
    let letters = env.dead_letters(1).await;
    assert_eq!(letters[0].0["likerate-error"], "db_rejected");
    assert!(letters[0].0["likerate-error-detail"].contains("no_poison"));
    env.assert_rollups_exact().await;
    p.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_and_config_errors() {
    let env = Env::new().await;
    let p = env.spawn(None, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = reqwest::get(format!("http://{}/readyz", p.http))
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let h = reqwest::get(format!("http://{}/healthz", p.http))
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    p.kill9();

    let out = Command::new(env!("CARGO_BIN_EXE_likerate"))
        .args(["run"])
        .env("LIKERATE_LIKE_RATE_THRESHOLD", "2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LIKERATE_LIKE_RATE_THRESHOLD"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");
}

/// The sink's fast path looks up which event ids are stored and which votes hold a slot, then
/// copies the new rows straight into `feedback`. Another writer that stores one of those events
/// (or takes one of their vote slots) in between makes the unique indexes refuse the copy: the
/// batch then goes through the staging table with `ON CONFLICT`, in the same transaction, and
/// each event is still stored once, each vote counted once.
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_racing_the_fast_path_sends_the_batch_through_the_staged_insert() {
    use likerate::decode::{decode, Origin};
    use likerate::event::Coordinates;
    use likerate::sink::{Aggregates, BenchWriter};
    let env = Env::new().await;
    let db = &env.db;
    let target = likerate::db::Target::new(&likerate::config::DatabaseConfig {
        url: db.url(),
        timeout: Duration::from_secs(30),
    })
    .unwrap();
    likerate::db::migrate(&mut target.connect().await.unwrap())
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let event = |offset: i64, vote: &str, rating: i64| {
        let json = serde_json::json!({
            "event_id": Uuid::new_v4(), "subject_id": "Math", "assistant_message": "a",
            "rating": rating, "created_at": (now + chrono::Duration::seconds(offset)).to_rfc3339(),
            "vote_id": vote,
        });
        let origin = Origin {
            topic: "race",
            partition: 0,
            offset,
            received_at: now,
        };
        let e = decode(json.to_string().as_bytes(), origin).unwrap();
        (
            e,
            Coordinates {
                partition: 0,
                offset,
            },
        )
    };
    // a is stored by the other writer too; c's vote gets its first event from the other writer.
    let batch = vec![event(1, "v-a", 1), event(2, "v-b", 1), event(3, "v-c", -1)];
    let other = db.client().await;
    other.batch_execute("BEGIN").await.unwrap();
    for (id, vote) in [(batch[0].0.event_id, "v-a"), (Uuid::new_v4(), "v-c")] {
        other
            .execute(
                "INSERT INTO feedback (event_id, subject_id, message_content, rating, created_at,
                                       vote_id, vote_slot, kafka_topic, kafka_partition,
                                       kafka_offset)
                 VALUES ($1, 'Math', 'a', 1, now(), $2, true, 'race', 1, 0)",
                &[&id, &vote],
            )
            .await
            .unwrap();
    }
    let mut writer = BenchWriter::connect(&target, "race").await.unwrap();
    let write = tokio::spawn(async move { writer.write(&batch, Aggregates::Maintain).await });
    // The copy waits on the other writer's uncommitted rows in the unique indexes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!write.is_finished(), "the copy waits for the other writer");
    other.batch_execute("COMMIT").await.unwrap();
    let created = write
        .await
        .unwrap()
        .expect("the batch is stored, not refused");
    assert_eq!(
        created, 2,
        "b and c are new; a was stored by the other writer"
    );
    let client = db.client().await;
    let rows: Vec<(String, bool)> = client
        .query(
            "SELECT vote_id, vote_slot FROM feedback ORDER BY vote_id, vote_slot",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [("v-a", true), ("v-b", true), ("v-c", false), ("v-c", true)];
    assert_eq!(
        rows,
        expected.map(|(v, s)| (v.to_owned(), s)).to_vec(),
        "one row per event; c is a re-vote of the other writer's first vote"
    );
    // c (a newer dislike) replaced the other writer's like of v-c: -1 like from its bucket,
    // +1 dislike; b's like counts (the other writer maintained no rollups for its rows).
    let totals = client
        .query_one(
            "SELECT coalesce(sum(likes), 0)::int8, coalesce(sum(dislikes), 0)::int8
             FROM feedback_rollup WHERE grain = 'd'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((totals.get::<_, i64>(0), totals.get::<_, i64>(1)), (0, 1));
}

/// Every long-running task is supervised: when one fails (the test-only fault hook makes it
/// panic two seconds after start), the process does not run on with a dead part; it stops
/// with a non-zero status within the drain bound, and its HTTP port (readiness) goes with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_dies_stops_the_process_with_an_error() {
    let env = Env::new().await;
    for task in [
        "source",
        "sink",
        "aggregates",
        "alert",
        "retention",
        "patterns",
        "units",
        "dead_letters",
        "http",
    ] {
        let mut p = env.spawn(
            None,
            &[
                ("LIKERATE_TEST_FAULT", task),
                ("LIKERATE_RETENTION_ROWS", "400d"),
            ],
        );
        let started = Instant::now();
        let status = loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "{task}: likerate still runs with that task dead"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(!status.success(), "{task}: exit status {status}");
        // The last lines may still be on their way from the pipe.
        let named = format!("the {task} task ended before a shutdown");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.log.lock().unwrap().iter().any(|l| l.contains(&named)) {
            assert!(
                Instant::now() < deadline,
                "{task}: the error does not name the task"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            reqwest::get(format!("http://{}/readyz", p.http))
                .await
                .is_err(),
            "{task}: readiness still answers"
        );
    }
}

/// A PostgreSQL backend frozen mid-transaction (issue 16 item 6): likerate's sessions are
/// SIGSTOPped for 20 s under load, holding their locks and never answering. The lanes time out
/// (`LIKERATE_DATABASE_TIMEOUT` 5s), reconnect and retry; the retries wait on the frozen
/// sessions' locks and time out too, until the sessions are resumed, see their clients gone
/// and roll back. Nothing is lost or stored twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_database_backend_costs_retries_not_data() {
    // Exclusive: a frozen backend may hold a lock of the whole cluster (a WAL insertion lock).
    let env = Env::with_guard(true).await;
    let (records, ids, _) = traffic(8000, 5, &["--revotes", "0.05"]);
    let p = env.spawn(None, &[("LIKERATE_BATCH_MAX_EVENTS", "200")]);
    let sender = env.send_in_background(records, 400, Duration::from_millis(100));
    env.wait_for_at_least(400, Duration::from_secs(60)).await;
    let admin = env.client().await;
    let pids: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE application_name LIKE 'likerate-%' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!pids.is_empty(), "no likerate session to freeze");
    let signal = |sig: &str| {
        for pid in &pids {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    };
    signal("-STOP");
    tokio::time::sleep(Duration::from_secs(20)).await;
    signal("-CONT");
    sender.await.unwrap();
    env.assert_stored_exactly(&ids, Duration::from_secs(180))
        .await;
    env.assert_rollups_exact().await;
    assert!(p.metric_or_zero("likerate_db_retries_total").await > 0.0);
    p.kill9();
}

/// `pg_ctlcluster <action>` on the Debian cluster on the tests' port (`common::pg_port`; not the
/// first listed: a machine may have others, sorted before it).
fn postgres(action: &str) {
    let status = Command::new("bash")
        .args([
            "-c",
            &format!(
                "pg_ctlcluster $(pg_lsclusters -h | awk '$3 == {} {{print $1, $2; exit}}') {action}",
                common::pg_port()
            ),
        ])
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "PostgreSQL {action} failed");
}

/// Failure is never silence (issue 16 item 2): a page that fires before the database goes away
/// stays in a real Alertmanager for the whole outage (its windows cannot be read, so it is held,
/// not resolved), and `FeedbackPipelineStalled{cause="database_unavailable"}` arrives; once the
/// database is back the stall resolves. The outage lasts `LIKERATE_TEST_OUTAGE_SECS` (default
/// 90 s: longer than the `endsAt` horizon of a push, so a page that was not re-sent would
/// have vanished; the contract's 5 minutes is `LIKERATE_TEST_OUTAGE_SECS=300`).
#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_holds_the_page_and_pages_the_stall() {
    use common::observe::{
        alertmanager, alerts_named, brief, eventually, label, wait_ready, TempDir,
    };
    let outage = Duration::from_secs(
        std::env::var("LIKERATE_TEST_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(90),
    );
    let env = Env::with_guard(true).await;
    let dir = TempDir::new("outage");
    let (mut am, am_url) = alertmanager(&dir);
    wait_ready(&mut am, &am_url).await;
    let mut p = env.spawn(
        None,
        &[
            ("LIKERATE_ALERTMANAGER_URL", am_url.as_str()),
            ("LIKERATE_ALERT_MIN_SAMPLES", "50"),
        ],
    );
    let low = common::low_math(400, 2);
    env.send(&low).await;
    let math_page = |alerts: &[serde_json::Value]| {
        alerts
            .iter()
            .any(|a| label(a, "subject") == "Math" && label(a, "source").is_empty())
    };
    eventually(
        "the Math page in Alertmanager",
        Duration::from_secs(150),
        Duration::from_secs(2),
        async || {
            let alerts = alerts_named(&am_url, "FeedbackLikeRateLow").await?;
            math_page(&alerts).then_some(()).ok_or(brief(&alerts))
        },
    )
    .await;

    postgres("stop");
    let stopped = Instant::now();
    let mut stall_seen = None;
    while stopped.elapsed() < outage {
        let pages = alerts_named(&am_url, "FeedbackLikeRateLow").await.unwrap();
        if !math_page(&pages) {
            postgres("start");
            panic!(
                "the Math page left Alertmanager {:?} into the outage: {}",
                stopped.elapsed(),
                brief(&pages)
            );
        }
        let stalls = alerts_named(&am_url, "FeedbackPipelineStalled")
            .await
            .unwrap();
        if stall_seen.is_none()
            && stalls.iter().any(|a| {
                label(a, "cause") == "database_unavailable" && label(a, "severity") == "page"
            })
        {
            stall_seen = Some(stopped.elapsed());
            // The same state on /metrics, for dashboards.
            let gauge = r#"likerate_pipeline_stalled{cause="database_unavailable"}"#;
            assert_eq!(p.metric(gauge).await.unwrap(), Some(1.0), "{gauge}");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    postgres("start");
    p.assert_alive();
    let Some(after) = stall_seen else {
        panic!("FeedbackPipelineStalled never reached Alertmanager during a {outage:?} outage")
    };
    println!("FeedbackPipelineStalled in Alertmanager {after:?} after the database stopped");
    eventually(
        "the stall to resolve once the database is back",
        Duration::from_secs(120),
        Duration::from_secs(2),
        async || {
            let stalls = alerts_named(&am_url, "FeedbackPipelineStalled").await?;
            stalls.is_empty().then_some(()).ok_or(brief(&stalls))
        },
    )
    .await;
    env.wait_for_rows(400, Duration::from_secs(60)).await;
    env.assert_rollups_exact().await;
}
