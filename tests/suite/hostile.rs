//! Every edge is hostile (issue 15): what a user sends cannot break or forge `/metrics`, panic
//! the server, exhaust its connections or memory, reach PostgreSQL as a 500, or write into the
//! log unescaped.
//!
//! Real services only: PostgreSQL on 127.0.0.1:5432, Apache Kafka (the harness's broker:
//! `LIKERATE_TEST_BROKERS`, or one node it starts), the `likerate` binary, Prometheus'
//! `promtool` to judge the exposition, and `python3` to hold idle connections.

use crate::common;

use common::{likerate_command, Database, Likerate as Server, Served};
use likerate::config::KafkaConfig;
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fresh topics and group on the test binary's broker (`LIKERATE_TEST_BROKERS`, or one node
/// the harness starts).
async fn kafka() -> KafkaConfig {
    common::Broker::new().await.kafka
}

/// `likerate run` on these topics and this database, with `extra` settings on top.
fn spawn(kafka: &KafkaConfig, db: &Database, extra: &[(&str, &str)]) -> Server {
    let extra: Vec<(&str, Option<&str>)> = extra.iter().map(|(k, v)| (*k, Some(*v))).collect();
    Server::spawn("", kafka, &db.url(), &extra)
}

fn event(subject: &str, model: &str, rating: i64) -> Value {
    json!({
        "subject_id": subject,
        "model": model,
        "assistant_message": "an answer",
        "user_question": "a question",
        "rating": rating,
        "created_at": chrono::Utc::now().to_rfc3339(),
    })
}

async fn post(client: &reqwest::Client, server: &Server, body: Vec<u8>) -> (u16, String) {
    let r = client
        .post(server.url("/api/feedback"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("an answer, not a dropped connection");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// Polls `/metrics` until `ready` holds for its text.
async fn metrics_until(server: &Server, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = reqwest::get(server.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if ready(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "metrics never ready:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Hostile subjects and models reach `/metrics` escaped and capped; the exposition passes
/// `promtool check metrics`, and no series exists that the test did not cause.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_labels_cannot_break_or_forge_the_scrape() {
    let db = Database::create("hostile_labels").await;
    let kafka = kafka().await;
    let server = spawn(&kafka, &db, &[("LIKERATE_MAX_SUBJECT_LABELS", "6")]);
    let client = reqwest::Client::new();
    let subjects = [
        "x\"} 1\n# EOF",
        "back\\slash",
        "_all",
        "_other",
        "line\nlikerate_alert_firing{subject=\"Math\"} 1",
    ];
    let long_model = "m".repeat(128);
    let models = ["q\"uote", "new\nline", long_model.as_str()];
    let mut events = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        for j in 0..=i {
            events.push(event(
                s,
                models[j % models.len()],
                if j % 2 == 0 { 1 } else { -1 },
            ));
        }
    }
    let sent = events.len();
    let likes = events.iter().filter(|e| e["rating"] == 1).count();
    let (status, body) = post(&client, &server, serde_json::to_vec(&events).unwrap()).await;
    assert_eq!(status, 202, "{body}");
    db.wait_for_rows(sent as i64, Duration::from_secs(60)).await;
    let all_likes = r#"likerate_window_votes{subject="_all",window="24h",rating="like"}"#;
    let text = metrics_until(&server, |t| {
        common::series_value(t, all_likes) == Some(likes as f64)
    })
    .await;
    let (ok, msg) = common::promtool(&text);
    assert!(ok, "promtool check metrics: {msg}\n{text}");
    // Every line is a comment or one series: a label value cannot start a line.
    for line in text.lines().filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with("# HELP likerate_")
                || line.starts_with("# TYPE likerate_")
                || line.starts_with("likerate_"),
            "a line nobody exported: {line:?}"
        );
    }
    // The whole stream counts every vote (a subject spelled `_all` did not replace it) and
    // the reserved spellings sent by users count as `_other`.
    let all_total: f64 = ["like", "dislike", "neutral"]
        .iter()
        .filter_map(|r| {
            common::series_value(
                &text,
                &format!(r#"likerate_window_votes{{subject="_all",window="24h",rating="{r}"}}"#),
            )
        })
        .sum();
    assert_eq!(all_total, sent as f64);
    assert!(text.contains(r#"subject="x\"} 1\n# EOF""#), "{text}");
    assert!(text.contains(r#"subject="back\\slash""#), "{text}");
    assert!(text.contains(&format!(r#"model="{long_model}""#)));
    assert!(!text.contains("\n# EOF"));
    assert!(
        !text.contains(r#"likerate_alert_firing{subject="Math"}"#),
        "forged series:\n{text}"
    );
}

/// A valid event with an unknown field holding what the decoder skips but a second parse
/// would refuse (a lone surrogate, a number beyond f64) is accepted and stored; nothing
/// panics.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_with_odd_json_are_accepted_not_a_panic() {
    let db = Database::create("hostile_odd").await;
    let kafka = kafka().await;
    let mut server = spawn(&kafka, &db, &[]);
    let client = reqwest::Client::new();
    let base = serde_json::to_string(&event("Math", "m1", 1)).unwrap();
    let mut ids = Vec::new();
    for extra in [
        r#""x":"\ud800""#,
        r#""x":1e400"#,
        r#""y":[1e400,{"z":"\udfff"}]"#,
    ] {
        let body = format!("{},{extra}}}", &base[..base.len() - 1]);
        let (status, answer) = post(&client, &server, body.clone().into_bytes()).await;
        assert_eq!(status, 202, "{body}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        ids.push(answer["event_ids"][0].as_str().unwrap().to_owned());
    }
    server.assert_alive();
    db.wait_for_rows(3, Duration::from_secs(60)).await;
    let stored: Vec<String> = db
        .client()
        .await
        .query("SELECT event_id::text FROM feedback ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.sort();
    assert_eq!(stored, ids, "stored under the ids answered");
}

/// At most 1,000 events; at most 100 listed errors plus their count; a 256 KiB array of
/// 130k invalid items answers quickly with a small body.
#[tokio::test(flavor = "multi_thread")]
async fn ingest_bounds_events_errors_and_bodies() {
    let db = Database::create("hostile_ingest").await;
    let kafka = kafka().await;
    let mut server = spawn(&kafka, &db, &[]);
    let client = reqwest::Client::new();

    let many: Vec<Value> = (0..1001).map(|_| event("Math", "m", 1)).collect();
    let (status, body) = post(&client, &server, serde_json::to_vec(&many).unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "too_many_events"
    );

    let invalid: Vec<Value> = (0..1000).map(|i| json!({"subject_id": i})).collect();
    let (status, body) = post(&client, &server, serde_json::to_vec(&invalid).unwrap()).await;
    assert_eq!(status, 400);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["errors"].as_array().unwrap().len(), 100);
    assert_eq!(answer["invalid_count"], 1000);
    assert_eq!(answer["errors"][99]["index"], 99);

    let mut tiny = String::from("[");
    while tiny.len() < 256 * 1024 - 2 {
        tiny.push_str("1,");
    }
    tiny.push_str("1]");
    assert!(tiny.matches('1').count() > 130_000);
    let started = Instant::now();
    let (status, body) = post(&client, &server, tiny.into_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.len() < 1024,
        "a small answer, got {} bytes",
        body.len()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answers (liveness bound)"
    );

    let huge = vec![b' '; 2 * 1024 * 1024];
    let (status, _) = post(&client, &server, huge).await;
    assert_eq!(status, 413);
    server.assert_alive();
    assert_eq!(db.count().await, 0, "nothing was published");
}

/// `LIKERATE_INGEST_TOKEN` guards the POST; `LIKERATE_CORS_ORIGINS` answers preflight for the
/// listed origins only; a bad origin is a configuration error naming the setting.
#[tokio::test(flavor = "multi_thread")]
async fn ingest_token_and_cors() {
    let db = Database::create("hostile_auth").await;
    let kafka = kafka().await;
    let token = "ingest-token-0123456789";
    let server = spawn(
        &kafka,
        &db,
        &[
            ("LIKERATE_INGEST_TOKEN", token),
            (
                "LIKERATE_CORS_ORIGINS",
                "https://app.example, http://127.0.0.1:3000",
            ),
        ],
    );
    let client = reqwest::Client::new();
    let body = serde_json::to_vec(&event("Math", "m", 1)).unwrap();
    let (status, _) = post(&client, &server, body.clone()).await;
    assert_eq!(status, 401);
    let r = client
        .post(server.url("/api/feedback"))
        .bearer_auth("wrong-token-0123456789")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(server.url("/api/feedback"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, server.url("/api/feedback"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let r = preflight("https://app.example").await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let r = preflight("https://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let out = likerate_command(&["run"], &kafka, &db.url())
        .env("LIKERATE_CORS_ORIGINS", "app.example/path")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LIKERATE_CORS_ORIGINS"), "{stderr}");

    // A deduplication window shorter than the topic keeps its records (Kafka's default
    // retention, 7 days = 604800000 ms) is a config error naming both settings.
    let out = likerate_command(&["run"], &kafka, &db.url())
        .env("LIKERATE_DEDUP_WINDOW", "1d")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("LIKERATE_DEDUP_WINDOW: 1d is shorter than the retention.ms 604800000 (7d)"),
        "{stderr}"
    );
}

/// Values PostgreSQL would refuse are a 400 naming the parameter; pagination survives an
/// encoded parameter name; `/readyz` does not echo the database's message.
#[tokio::test(flavor = "multi_thread")]
async fn query_parameters_are_refused_before_postgres() {
    let db = Database::create("hostile_query").await;
    let kafka = kafka().await;
    let token = "export-token-0123456789";
    let server = spawn(&kafka, &db, &[("LIKERATE_EXPORT_TOKEN", token)]);
    let client = reqwest::Client::new();
    let events: Vec<Value> = (0..3).map(|_| event("Math", "m", 1)).collect();
    let (status, _) = post(&client, &server, serde_json::to_vec(&events).unwrap()).await;
    assert_eq!(status, 202);
    db.wait_for_rows(3, Duration::from_secs(60)).await;

    for (query, param) in [
        ("/api/feedback/compare?model_a=a&model_b=b%00", "model_b"),
        ("/api/feedback/stats?subject_id=%00", "subject_id"),
        ("/api/feedback/daily?subject_id=a%00", "subject_id"),
        ("/api/feedback/stats?since=%2B2026-01-01", "since"),
        ("/api/feedback/stats?since=-2026-01-01", "since"),
        ("/api/feedback/stats?until=12026-01-01", "until"),
        ("/api/feedback/stats?since=20260-01-01T00:00:00Z", "since"),
    ] {
        let r = client.get(server.url(query)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let answer: Value = r.json().await.unwrap();
        let detail = answer["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("{param}:")),
            "{query}: {detail}"
        );
    }

    // Page 1, then page 2 from a request that spells the cursor's name encoded.
    let r = client
        .get(server.url("/api/feedback/export?limit=1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let link = r.headers()["link"].to_str().unwrap().to_owned();
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let cursor = next.split("cursor=").nth(1).unwrap();
    let encoded = format!("/api/feedback/export?limit=1&%63ursor={cursor}");
    let r = client
        .get(server.url(&encoded))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let link = r.headers()["link"].to_str().unwrap().to_owned();
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    assert_eq!(next.matches("cursor=").count(), 1, "{next}");
    let r = client
        .get(server.url(next))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the next page of the next page");
    let rows: Vec<Value> = r.json().await.unwrap();
    assert_eq!(rows.len(), 1);

    // The database goes away: readiness says so without its message.
    let name = db.name.clone();
    drop(db);
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let r = client.get(server.url("/readyz")).send().await.unwrap();
        if r.status() == 503 {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "still ready without a database");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!body.contains(&name), "{body}");
    assert!(!body.to_lowercase().contains("does not exist"), "{body}");
}

/// Opens `n` connections to `addr` from a helper process (this container's hard limit of
/// open files, 20,000, which even root cannot raise here, keeps one process from holding
/// them all) and holds them idle until the helper is killed.
fn hold_idle(addr: SocketAddr, n: usize) -> Child {
    let script = format!(
        "import socket,sys,time\nk=[]\nfor _ in range({n}):\n k.append(socket.create_connection(('{}',{})))\nprint('ready',flush=True)\ntime.sleep(600)\n",
        addr.ip(),
        addr.port()
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "the helper could not open {n} connections"
    );
    child
}

/// A connection that never finishes its headers is closed within 30 s, and 20,000 idle
/// connections do not stop `/healthz` from answering.
#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_connections_cannot_lock_out_healthz() {
    let db = Database::create("hostile_conns").await;
    let kafka = kafka().await;
    let mut server = spawn(&kafka, &db, &[]);

    let mut slow = std::net::TcpStream::connect(server.http).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(35)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let closed = matches!(slow.read(&mut buf), Ok(0) | Err(_));
    assert!(
        closed && started.elapsed() < Duration::from_secs(30),
        "slow headers kept open for {:?}",
        started.elapsed()
    );

    let mut helpers: Vec<Child> = (0..2).map(|_| hold_idle(server.http, 10_000)).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let answered = loop {
        if let Ok(r) = client.get(server.url("/healthz")).send().await {
            break r.status();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/healthz did not answer within 30 s of 20,000 idle connections"
        );
    };
    assert_eq!(answered, 200);
    eprintln!(
        "/healthz answered {:?} after 20,000 idle connections",
        started.elapsed()
    );
    server.assert_alive();
    for h in &mut helpers {
        let _ = h.kill();
        let _ = h.wait();
    }
}

/// One label cap rule for the alert targets: with a cap of 3, twenty junk subjects at 0%
/// fire at most the cap's targets (two named and `_other`, plus `_all`), and the log shows
/// their subject escaped.
#[tokio::test(flavor = "multi_thread")]
async fn alert_targets_are_capped_and_logged_escaped() {
    let db = Database::create("hostile_alerts").await;
    let kafka = kafka().await;
    let mut server = spawn(
        &kafka,
        &db,
        &[
            ("LIKERATE_MAX_SUBJECT_LABELS", "3"),
            ("LIKERATE_ALERT_MIN_SAMPLES", "5"),
            ("LIKERATE_ALERT_PER_MODEL", "false"),
        ],
    );
    let client = reqwest::Client::new();
    let mut events = Vec::new();
    for i in 0..20 {
        let subject = format!("junk-{i:02}\nFORGED log line");
        for _ in 0..(10 + i) {
            events.push(event(&subject, "m", -1));
        }
    }
    let (status, body) = post(&client, &server, serde_json::to_vec(&events).unwrap()).await;
    assert_eq!(status, 202, "{body}");
    db.wait_for_rows(events.len() as i64, Duration::from_secs(60))
        .await;
    // Fires after four evaluations 15 s apart.
    let text = metrics_until(&server, |t| {
        common::series_value(t, r#"likerate_alert_firing{subject="_all"}"#) == Some(1.0)
    })
    .await;
    let firing: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("likerate_alert_firing{") && l.ends_with(" 1"))
        .collect();
    assert!(
        firing.len() <= 4,
        "more pages than the cap allows: {firing:#?}"
    );
    assert!(
        firing.iter().any(|l| l.contains(r#"subject="_other""#)),
        "{firing:#?}"
    );
    // The two busiest junk subjects keep their names, like in every other metric.
    for named in ["junk-19\\nFORGED log line", "junk-18\\nFORGED log line"] {
        assert!(
            firing.iter().any(|l| l.contains(named)),
            "{named}: {firing:#?}"
        );
    }
    server.assert_alive();
    let log = server.log.lock().unwrap();
    assert!(log.iter().any(|l| l.contains("like-rate alert firing")));
    assert!(
        !log.iter().any(|l| l.starts_with("FORGED")),
        "a user's subject split a log line"
    );
}
