//! Training data and disliked patterns on constructed corpora, through the running app
//! (`POST /api/feedback` -> Kafka -> sink -> PostgreSQL, then the API and `likerate export`).
//! Every expectation comes from the construction: the test knows which questions, answers and
//! terms it made.
//!
//! The exports are loaded with Hugging Face `datasets` (PyPI, in a venv that
//! `deploy/local/datasets-venv.sh` installs once) by `deploy/local/check-training-data.py`,
//! which checks the columns TRL's trainers expect and OpenAI's format rules.

use super::api::{Env, TOKEN};
use chrono::{Duration as ChronoDuration, Utc};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use uuid::Uuid;

const QUESTIONS: usize = 1000;

/// The question of number `i`, and a twin spelled with other case and spacing.
fn question(i: usize) -> String {
    format!("How do I solve problem {i}?")
}

fn twin(i: usize) -> String {
    format!("  how do i   SOLVE problem {i}? ")
}

/// What a split keys on: the question trimmed, white space collapsed, lower case.
fn normalised(q: &str) -> String {
    q.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The corpus: per question `i` a liked answer (liked twice when `i % 5 == 0`: one pair), a
/// disliked one when `i` is even, and when `i % 10 == 0` a liked answer to its twin. Rows
/// that cannot be examples: a like without a question, likes with a blank answer or question.
fn corpus() -> (Vec<Value>, usize) {
    let now = Utc::now();
    let mut events = Vec::new();
    let mut event = |q: Option<&str>, a: &str, rating: i64| {
        let at = now - ChronoDuration::seconds(events.len() as i64);
        let mut e = json!({"subject_id": "Math", "assistant_message": a, "rating": rating,
                           "created_at": at.to_rfc3339()});
        if let Some(q) = q {
            e["user_question"] = json!(q);
        }
        events.push(e);
    };
    for i in 0..QUESTIONS {
        let q = question(i);
        event(Some(&q), &format!("good answer {i}"), 1);
        if i % 5 == 0 {
            event(Some(&q), &format!("good answer {i}"), 1);
        }
        if i % 2 == 0 {
            event(Some(&q), &format!("bad answer {i}"), -1);
        }
        if i % 10 == 0 {
            event(Some(&twin(i)), &format!("other answer {i}"), 1);
        }
    }
    event(None, "an answer to nothing", 1);
    event(Some("a question"), " \n\t", 1);
    event(Some("   "), "an answer", -1);
    (events, 3)
}

/// A training file's lines, parsed.
fn parse(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The question of a line of `format`.
fn prompt(format: &str, line: &Value) -> String {
    match format {
        "openai" => line["messages"][0]["content"].as_str(),
        "openai-dpo" => line["input"]["messages"][0]["content"].as_str(),
        _ => line["prompt"].as_str(),
    }
    .unwrap()
    .to_owned()
}

/// Loads `files` with `datasets` as `format`; returns (rows, kto (true, false) labels) per file.
fn load_with_datasets(format: &str, files: &[&Path]) -> Vec<(u64, (u64, u64))> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = Command::new("bash")
        .arg(root.join("deploy/local/datasets-venv.sh"))
        .output()
        .unwrap();
    assert!(
        venv.status.success(),
        "datasets-venv.sh: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let python = String::from_utf8(venv.stdout).unwrap().trim().to_owned();
    let out = Command::new(python)
        .arg(root.join("deploy/local/check-training-data.py"))
        .arg(format)
        .args(files)
        .env(
            "HF_DATASETS_CACHE",
            std::env::temp_dir().join("likerate-hf-cache"),
        )
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-training-data.py {format}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["rows"].as_u64().unwrap(),
                (
                    v["labels"]["true"].as_u64().unwrap(),
                    v["labels"]["false"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

fn export(env: &Env, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_likerate"))
        .arg("export")
        .args(args)
        .args(["--database-url", &env.db_url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "likerate export {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_format_loads_in_datasets_and_the_split_is_by_question() {
    let env = Env::new().await;
    let p = env.spawn(Some(TOKEN)).await;
    let (events, blank) = corpus();
    p.post_events(&events).await;
    env.wait_for_rows(events.len() as i64).await;
    let dir = std::env::temp_dir().join(format!("likerate-training-{}", env.db.name));
    std::fs::create_dir_all(&dir).unwrap();

    let evens = QUESTIONS / 2;
    let tenths = QUESTIONS / 10;
    // (format, lines, skipped): openai: one pair per question and one per twin; dpo: the even
    // questions; kto: every pair with a verdict.
    let expected = [
        ("openai", QUESTIONS + tenths, 2),
        ("dpo", evens, blank),
        ("openai-dpo", evens, blank),
        ("kto", QUESTIONS + evens + tenths, blank),
    ];
    for (format, lines, skipped) in expected {
        let get = |split: &str| {
            let path = format!("/api/feedback/training-data?format={format}{split}");
            let p = &p;
            async move {
                let r = p.get(&path, Some(TOKEN)).await;
                assert_eq!(r.status(), 200, "{path}");
                let skipped: usize = r.headers()["x-likerate-skipped-rows"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                (r.text().await.unwrap(), skipped)
            }
        };
        let (all, got_skipped) = get("").await;
        assert_eq!(got_skipped, skipped, "{format} skipped");
        let all_lines = parse(&all);
        assert_eq!(all_lines.len(), lines, "{format} lines");
        let unique: BTreeSet<String> = all.lines().map(str::to_owned).collect();
        assert_eq!(unique.len(), lines, "{format}: a line appears twice");
        if format == "kto" {
            let liked = all_lines
                .iter()
                .filter(|l| l["label"] == json!(true))
                .count();
            assert_eq!(liked, QUESTIONS + tenths);
        }

        // The split: train and validation make up the whole, no question in both, and the
        // same bytes on a second run.
        let (train, _) = get("&split=train").await;
        let (validation, _) = get("&split=validation").await;
        assert_eq!(
            get("&split=validation").await.0,
            validation,
            "{format}: stable"
        );
        let mut both: Vec<String> = train
            .lines()
            .chain(validation.lines())
            .map(str::to_owned)
            .collect();
        both.sort();
        let mut whole: Vec<String> = all.lines().map(str::to_owned).collect();
        whole.sort();
        assert_eq!(both, whole, "{format}: train + validation = everything");
        let side = |body: &str| -> BTreeSet<String> {
            parse(body)
                .iter()
                .map(|l| normalised(&prompt(format, l)))
                .collect()
        };
        let (train_q, validation_q) = (side(&train), side(&validation));
        assert!(
            train_q.is_disjoint(&validation_q),
            "{format}: a question in both sets"
        );
        // A twin goes where its question goes (openai and kto hold twins).
        if format == "openai" {
            for i in (0..QUESTIONS).step_by(10) {
                assert_eq!(normalised(&question(i)), normalised(&twin(i)));
            }
            let share = validation_q.len() as f64 / (train_q.len() + validation_q.len()) as f64;
            // 1000 questions at 10%: the standard deviation is 0.0095.
            assert!((share - 0.1).abs() < 0.035, "validation share {share}");
        }

        // likerate export --split both: the same two sets, in two files, with a summary.
        let out_base = dir.join(format!("{format}.jsonl"));
        let out = export(
            &env,
            &[
                "--format",
                format,
                "--split",
                "both",
                "--out",
                out_base.to_str().unwrap(),
            ],
        );
        let train_file = dir.join(format!("{format}.train.jsonl"));
        let validation_file = dir.join(format!("{format}.validation.jsonl"));
        assert_eq!(std::fs::read_to_string(&train_file).unwrap(), train);
        assert_eq!(
            std::fs::read_to_string(&validation_file).unwrap(),
            validation
        );
        assert!(!out_base.exists(), "--split both writes only the two sets");
        let summary = String::from_utf8_lossy(&out.stdout);
        let train_n = train.lines().count();
        let validation_n = validation.lines().count();
        assert!(
            summary.contains(&format!("{}: {train_n} examples", train_file.display())),
            "{summary}"
        );
        assert!(
            summary.contains(&format!(
                "{}: {validation_n} examples",
                validation_file.display()
            )),
            "{summary}"
        );
        assert_eq!(
            summary.contains("warning:"),
            train_n < 500,
            "warns exactly below 500 train examples: {summary}"
        );

        // The whole file loads with datasets, with the columns the trainers expect.
        let all_file = dir.join(format!("{format}.all.jsonl"));
        std::fs::write(&all_file, &all).unwrap();
        let loaded = load_with_datasets(format, &[&all_file, &train_file, &validation_file]);
        assert_eq!(
            loaded.iter().map(|l| l.0).collect::<Vec<_>>(),
            [lines as u64, train_n as u64, validation_n as u64],
            "{format}: rows datasets loaded"
        );
        if format == "kto" {
            assert_eq!(loaded[0].1, ((QUESTIONS + tenths) as u64, evens as u64));
        }
    }

    // Another share: another split, still by question, near its share.
    let out = export(
        &env,
        &[
            "--format",
            "openai",
            "--split",
            "validation",
            "--validation-share",
            "0.3",
        ],
    );
    let v30: BTreeSet<String> = parse(std::str::from_utf8(&out.stdout).unwrap())
        .iter()
        .map(|l| normalised(&prompt("openai", l)))
        .collect();
    let share = v30.len() as f64 / QUESTIONS as f64;
    let http = p
        .get(
            "/api/feedback/training-data?format=openai&split=validation&validation_share=0.3",
            Some(TOKEN),
        )
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        http.as_bytes(),
        out.stdout,
        "the API and the CLI split alike"
    );
    // sd at 30% of 1000: 0.0145.
    assert!(
        (share - 0.3).abs() < 0.05,
        "validation share {share} at 0.3"
    );

    // Bad parameters are a 400 naming the parameter; bad flags fail with their name.
    for (query, param) in [
        ("format=kto&split=test", "split"),
        (
            "format=kto&split=train&validation_share=1",
            "validation_share",
        ),
        ("format=openai-sft", "format"),
    ] {
        let r = p
            .get(&format!("/api/feedback/training-data?{query}"), Some(TOKEN))
            .await;
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().starts_with(param),
            "{body}"
        );
    }
    for (args, flag) in [
        (vec!["--format", "dpo", "--split", "both"], "--out"),
        (vec!["--format", "json", "--split", "train"], "--split"),
        (
            vec!["--format", "kto", "--validation-share", "0.2"],
            "--validation-share",
        ),
        (
            vec![
                "--format",
                "kto",
                "--split",
                "train",
                "--validation-share",
                "2",
            ],
            "--validation-share",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_likerate"))
            .arg("export")
            .args(&args)
            .args(["--database-url", &env.db_url()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Per subject, what the corpus of [`patterns_corpus`] over-represents in dislikes.
struct Built {
    events: Vec<Value>,
    /// Event ids of the current disliked votes holding "crash", newest first.
    crash_dislikes: Vec<Uuid>,
}

/// Math: 80 current dislikes against 161 current likes. Every answer is the same filler with
/// one of eight topics. Dislikes ask "wrong unit" (40) or "crash" (20, plus one that is
/// re-voted to a like) or "what is <topic>" (20, one of whose answers ends in the rare word
/// "zyzzyva"); likes ask "wrong unit" 4 times, "crash" 2 times (3 with the re-vote), the rest
/// "what is <topic>", and 40 of them end with "thanks". Physics: 20 dislikes ask "slow", 40
/// likes ask "what is <topic>".
fn patterns_corpus() -> Built {
    let now = Utc::now();
    let topics = [
        "algebra", "geometry", "calculus", "primes", "vectors", "limits", "series", "matrices",
    ];
    let mut events = Vec::new();
    let mut crash: Vec<(usize, Uuid)> = Vec::new();
    let mut add =
        |subject: &str, q: String, extra: &str, rating: i64, vote: Option<&str>, age: i64| {
            let n = events.len();
            let topic = topics[n % topics.len()];
            let id = Uuid::new_v4();
            let mut e = json!({
                "event_id": id, "subject_id": subject, "rating": rating,
                "user_question": q.replace("{topic}", topic),
                "assistant_message": format!("The answer is {topic} and the method works{extra}"),
                "created_at": (now - ChronoDuration::minutes(age)).to_rfc3339(),
            });
            if let Some(v) = vote {
                e["vote_id"] = json!(v);
            }
            events.push(e);
            (n, id)
        };
    let mut age = 1000;
    let mut next_age = || {
        age -= 1;
        age
    };
    for _ in 0..40 {
        add("Math", "wrong unit".into(), "", -1, None, next_age());
    }
    for _ in 0..20 {
        let (n, id) = add("Math", "crash".into(), "", -1, None, next_age());
        crash.push((n, id));
    }
    // A dislike re-voted to a like: its current vote is the like.
    add("Math", "crash".into(), "", -1, Some("flip"), next_age());
    add("Math", "crash".into(), "", 1, Some("flip"), next_age());
    add(
        "Math",
        "what is {topic}".into(),
        " zyzzyva",
        -1,
        None,
        next_age(),
    );
    for _ in 0..19 {
        add("Math", "what is {topic}".into(), "", -1, None, next_age());
    }
    for _ in 0..4 {
        add("Math", "wrong unit".into(), "", 1, None, next_age());
    }
    for _ in 0..2 {
        add("Math", "crash".into(), "", 1, None, next_age());
    }
    for i in 0..154 {
        let extra = if i < 40 { ". Thanks!" } else { "" };
        add("Math", "what is {topic}".into(), extra, 1, None, next_age());
    }
    for _ in 0..20 {
        add("Physics", "slow".into(), "", -1, None, next_age());
    }
    for _ in 0..40 {
        add("Physics", "what is {topic}".into(), "", 1, None, next_age());
    }
    // Newest first: the later an event was added, the younger it is.
    crash.sort_by_key(|c| std::cmp::Reverse(c.0));
    Built {
        events,
        crash_dislikes: crash.into_iter().map(|(_, id)| id).collect(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dislike_patterns_rank_the_constructed_terms_and_not_the_rare_one() {
    let env = Env::new().await;
    let p = env.spawn(Some(TOKEN)).await;
    let built = patterns_corpus();
    p.post_events(&built.events).await;
    env.wait_for_rows(built.events.len() as i64).await;

    let body = p.get_json("/api/feedback/dislike-patterns?limit=100").await;
    assert_eq!(body["votes_read"], json!(80 + 161 + 20 + 40), "{body}");
    assert_eq!(body["capped"], json!(false));
    let subjects = body["subjects"].as_array().unwrap();
    let names: Vec<&str> = subjects
        .iter()
        .map(|s| s["subject_id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Math", "Physics"], "the most dislikes first");
    let math = &subjects[0];
    assert_eq!(
        (math["disliked_votes"].clone(), math["liked_votes"].clone()),
        (json!(80), json!(161))
    );
    let terms: Vec<&Value> = math["terms"].as_array().unwrap().iter().collect();
    let by_term: BTreeMap<&str, &Value> = terms
        .iter()
        .map(|t| (t["term"].as_str().unwrap(), *t))
        .collect();
    let ranked: Vec<&str> = terms.iter().map(|t| t["term"].as_str().unwrap()).collect();
    // "wrong", "unit" and "wrong unit" occur in exactly the same votes: one score, ties by
    // term; then "crash".
    assert_eq!(
        ranked[..4],
        ["unit", "wrong", "wrong unit", "crash"],
        "{ranked:?}"
    );
    let counts = |t: &str| {
        (
            by_term[t]["dislikes"].as_i64().unwrap(),
            by_term[t]["likes"].as_i64().unwrap(),
        )
    };
    assert_eq!(counts("wrong unit"), (40, 4));
    assert_eq!(
        counts("crash"),
        (20, 3),
        "the re-voted dislike counts as its like"
    );
    let z = |t: &str| by_term[t]["z"].as_f64().unwrap();
    assert!(z("wrong unit") > 3.0 && z("crash") > 2.0, "{math}");
    // The rare word, only in one dislike: a raw ratio would put it first; here it is weak.
    let rare = by_term["zyzzyva"];
    assert_eq!(counts("zyzzyva"), (1, 0));
    assert!(z("zyzzyva") < 1.0, "{rare}");
    let rare_rank = ranked.iter().position(|t| *t == "zyzzyva").unwrap();
    assert!(rare_rank > 3, "{ranked:?}");
    // Terms of likes never come out; every answered z is positive and in order.
    assert!(!by_term.contains_key("thanks"), "{ranked:?}");
    assert!(terms
        .windows(2)
        .all(|w| w[0]["z"].as_f64() >= w[1]["z"].as_f64()));
    assert!(terms.iter().all(|t| t["z"].as_f64().unwrap() > 0.0));
    // Examples: the newest disliked votes holding the term.
    let examples: Vec<Uuid> = by_term["crash"]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(examples, built.crash_dislikes[..3]);
    // Subjects are compared with themselves only.
    let physics: Vec<&str> = subjects[1]["terms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["term"].as_str().unwrap())
        .collect();
    assert_eq!(physics.first(), Some(&"slow"), "{physics:?}");
    assert!(!physics.contains(&"wrong"));

    // Filters and limits.
    let only = p
        .get_json("/api/feedback/dislike-patterns?subject_id=Physics&limit=1")
        .await;
    let only = only["subjects"].as_array().unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["terms"].as_array().unwrap().len(), 1);
    let future = p
        .get_json("/api/feedback/dislike-patterns?since=9999-01-01")
        .await;
    assert_eq!(future["votes_read"], json!(0));
    assert_eq!(future["subjects"], json!([]));
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("since=yesterday", "since"),
        ("subject_id=a%00b", "subject_id"),
    ] {
        let r = p
            .get(
                &format!("/api/feedback/dislike-patterns?{query}"),
                Some(TOKEN),
            )
            .await;
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().starts_with(param),
            "{body}"
        );
    }
    let r = p
        .get("/api/feedback/dislike-patterns?format=x", Some(TOKEN))
        .await;
    assert_eq!(r.status(), 400, "an unknown parameter");
    let r = p.get("/api/feedback/dislike-patterns", None).await;
    assert_eq!(r.status(), 401, "words of user text need the token");

    // A fresh instance refreshes the gauges at start: the top terms per subject on /metrics.
    let second = env.spawn(Some(TOKEN)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let metrics = loop {
        let text = reqwest::get(format!("{}/metrics", second.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("likerate_dislike_pattern_z{") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("likerate_dislike_pattern_z{"))
        .collect();
    // Only notable terms (z >= 1.96): the four of Math, "slow" of Physics.
    assert_eq!(series.len(), 5, "{series:?}");
    assert!(
        series
            .iter()
            .any(|l| l
                .starts_with(r#"likerate_dislike_pattern_z{subject="Math",term="wrong unit"} "#)),
        "{series:?}"
    );
    assert!(!series.iter().any(|l| l.contains("zyzzyva")), "{series:?}");
}

/// Sessions of the test's database, other than the asking one, that run a dislike-pattern read
/// (`PATTERNS` starts so).
async fn pattern_reads(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
           AND query LIKE 'WITH docs AS MATERIALIZED%'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Sessions waiting for a lock on `feedback`. From `pg_locks`, not from `pg_stat_activity`'s
/// query: a statement that waits while it is parsed (the extended protocol's Parse, where the
/// pattern read takes its lock) is shown with the state and text of the statement before it.
async fn sessions_waiting_for_feedback(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(DISTINCT pid) FROM pg_locks
         WHERE relation = 'feedback'::regclass AND NOT granted AND pid <> pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// At most two dislike-pattern reads run at once: a third is answered 429 at once rather than
/// queued, other routes are not held up, and once the two are done reads are served again.
/// The two are held open by a real lock, not a hook: a session holds `feedback` in ACCESS
/// EXCLUSIVE mode (as a migration or a `VACUUM FULL` would), so their reads wait for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_third_dislike_pattern_read_at_once_is_answered_429() {
    let env = Env::new().await;
    let p = env.spawn(Some(TOKEN)).await;
    let built = patterns_corpus();
    p.post_events(&built.events).await;
    env.wait_for_rows(built.events.len() as i64).await;
    let db = env.client().await;
    // The start-up refresh of the pattern gauges reads without a permit: let it finish, so
    // that the reads waiting below are the route's (the next refresh is 5 minutes away).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while pattern_reads(&db).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a pattern read never ends"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    db.batch_execute("BEGIN; LOCK TABLE feedback IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let url = format!("{}/api/feedback/dislike-patterns?limit=5", p.base);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sessions_waiting_for_feedback(&db).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the two reads never waited on the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let started = std::time::Instant::now();
    let third = p
        .get("/api/feedback/dislike-patterns?limit=5", Some(TOKEN))
        .await;
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "5");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "answered at once, not queued"
    );
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"], "busy", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("retry later"),
        "{body}"
    );
    // The limit is the route's own: the rollup reads answer meanwhile.
    let stats = p.get("/api/feedback/stats", None).await;
    assert_eq!(stats.status(), 200);

    db.batch_execute("COMMIT").await.unwrap();
    for read in held {
        let (status, body) = read.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["subjects"][0]["subject_id"], "Math", "{body}");
    }
    let after = p
        .get("/api/feedback/dislike-patterns?limit=5", Some(TOKEN))
        .await;
    assert_eq!(after.status(), 200, "the permits are given back");
}
