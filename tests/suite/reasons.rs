//! Reasons and comments (issue 18 item 1) against real services: events with `reason` and
//! `comment` go the real path (`POST /api/feedback` and the topic -> consumer -> sink ->
//! PostgreSQL), are counted per reason by `GET /api/feedback/reasons` and on `/metrics`, the
//! comment is redacted, erased and retained like the answer. A reason is any text of at most
//! 64 characters (spaces, capitals, any script, markup, quotes): stored, counted, and escaped on
//! `/metrics` and in the report; only what the contract refuses (too long, NUL, not a string)
//! is refused (400, or a dead letter) without reaching `/metrics`.
//!
//! Every expected figure comes from the events the test builds.

use crate::common;

use chrono::{DateTime, Duration as CDuration, Utc};
use common::{likerate_command, Served, TestApp, World};
use likerate::config::RunArgs;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One event the test knows everything about.
#[derive(Clone)]
struct Ev {
    id: Uuid,
    subject: &'static str,
    rating: i64,
    reason: Option<&'static str>,
    comment: Option<String>,
    conversation: String,
    vote: Option<&'static str>,
    at: DateTime<Utc>,
}

impl Ev {
    fn new(subject: &'static str, rating: i64, reason: Option<&'static str>) -> Ev {
        Ev {
            id: Uuid::new_v4(),
            subject,
            rating,
            reason,
            comment: None,
            conversation: format!("c-{}", Uuid::new_v4()),
            vote: None,
            at: Utc::now() - CDuration::minutes(3),
        }
    }

    fn comment(mut self, c: &str) -> Ev {
        self.comment = Some(c.to_owned());
        self
    }

    fn json(&self) -> Value {
        json!({
            "event_id": self.id, "subject_id": self.subject, "rating": self.rating,
            "assistant_message": format!("answer {}", self.id), "user_question": "question",
            "created_at": self.at.to_rfc3339(), "conversation_id": self.conversation,
            "reason": self.reason, "comment": self.comment, "vote_id": self.vote,
        })
    }
}

/// The tag as stored: as sent without the white space around it; blank is none.
fn tag(e: &Ev) -> Option<String> {
    if e.reason == Some(MAILED_REASON) {
        return Some("other: mail me at [email]".to_owned());
    }
    e.reason
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A reason typed by the user with an address in it: redacted like the comment, since a tag
/// becomes a metric label that Prometheus keeps beyond any erasure.
const MAILED_REASON: &str = "other: mail me at jo@example.org";

/// A reason the old `[a-z0-9_-]` grammar dead-lettered and the contract allows: spaces,
/// capitals, non-ASCII, markup and both quotes, with white space around it (trimmed).
const HOSTILE_REASON: &str = "  Not helpful: <script>alert(\"错误\")</script> 'Falsch' \n";

/// A label value as the Prometheus text format writes it (backslash, quote, line feed escaped).
fn exposition(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn post(app: &TestApp, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(app.url("/api/feedback"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn get(app: &TestApp, path: &str) -> Value {
    let r = reqwest::get(app.url(path)).await.unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// `/metrics` once `series` has reached `value`.
async fn metrics_with(app: &TestApp, series: &str, value: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = app.metrics().await.unwrap();
        if common::series_value(&text, series) == Some(value) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The reasons answer the events should give: per tag (likes, dislikes, neutral, with
/// comment), counting only the current vote of each `vote_id`; the first `limit` tags, the
/// rest summed in `other`.
fn expected_top(current: &[&Ev], limit: usize) -> Value {
    let mut by: std::collections::BTreeMap<String, [i64; 4]> = Default::default();
    let (mut likes, mut dislikes, mut neutral, mut commented) = (0, 0, 0, 0);
    for e in current {
        let slot = match e.rating {
            1 => {
                likes += 1;
                0
            }
            -1 => {
                dislikes += 1;
                1
            }
            _ => {
                neutral += 1;
                2
            }
        };
        if e.rating == -1 && e.comment.is_some() {
            commented += 1;
        }
        if let Some(t) = tag(e) {
            let c = by.entry(t).or_default();
            c[slot] += 1;
            c[3] += i64::from(e.comment.is_some());
        }
    }
    let mut reasons: Vec<Value> = by
        .into_iter()
        .map(|(reason, [l, d, n, c])| {
            json!({
                "reason": reason, "likes": l, "dislikes": d, "neutral": n, "total": l + d + n,
                "with_comment": c,
                "dislike_percentage": (d as f64 * 1000.0 / dislikes as f64).round() / 10.0,
            })
        })
        .collect();
    reasons.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                -v["dislikes"].as_i64().unwrap(),
                -v["total"].as_i64().unwrap(),
            )
        };
        key(a)
            .cmp(&key(b))
            .then_with(|| a["reason"].as_str().cmp(&b["reason"].as_str()))
    });
    let with_reason = reasons
        .iter()
        .map(|r| r["dislikes"].as_i64().unwrap())
        .sum::<i64>();
    let rest = reasons.split_off(limit.min(reasons.len()));
    let sum = |field: &str| rest.iter().map(|r| r[field].as_i64().unwrap()).sum::<i64>();
    let other_dislikes = sum("dislikes");
    let other = json!({
        "reasons": rest.len(), "likes": sum("likes"), "dislikes": other_dislikes,
        "neutral": sum("neutral"), "total": sum("total"), "with_comment": sum("with_comment"),
        "dislike_percentage": if dislikes == 0 { 0.0 } else {
            (other_dislikes as f64 * 1000.0 / dislikes as f64).round() / 10.0
        },
    });
    json!({
        "likes": likes, "dislikes": dislikes, "neutral": neutral,
        "dislikes_with_reason": with_reason,
        "dislikes_with_comment": commented,
        "reasons": reasons,
        "other": other,
    })
}

/// [`expected_top`] with the route's default limit (20).
fn expected(current: &[&Ev]) -> Value {
    expected_top(current, 20)
}

fn counts_of(answer: &Value) -> Value {
    json!({
        "likes": answer["likes"], "dislikes": answer["dislikes"], "neutral": answer["neutral"],
        "dislikes_with_reason": answer["dislikes_with_reason"],
        "dislikes_with_comment": answer["dislikes_with_comment"],
        "reasons": answer["reasons"],
        "other": answer["other"],
    })
}

const TOKEN: &str = "reasons-test-token-0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn reasons_and_comments_are_stored_counted_redacted_erased_and_retained() {
    let world = World::new().await;
    let run = RunArgs {
        redact: Some("email,phone".into()),
        export_token: Some(TOKEN.into()),
        ..RunArgs::default()
    };
    let app = TestApp::spawn(&world.kafka, &world.db.url(), run, None).await;

    let hostile_comment =
        "Wrong! <script>alert(\"x\")</script>\nmail jane.doe@example.com, call +33 6 12 34 56 78";
    let mut events = vec![
        Ev::new("Math", -1, Some("wrong")).comment("2 + 2 is not 5"),
        Ev::new("Math", -1, Some("Wrong")),
        Ev::new("Math", -1, Some("wrong")).comment(hostile_comment),
        Ev::new("Math", -1, Some("unclear")),
        Ev::new("Math", -1, Some("unclear")).comment("I could not follow"),
        Ev::new("Math", -1, None),
        Ev::new("Math", -1, None).comment("a comment without a tag"),
        Ev::new("Math", 1, Some("helpful")),
        Ev::new("Math", 0, Some("unclear")),
        Ev::new("Math", 1, None),
        Ev::new("Physics", -1, Some("too_long")).comment("far too long"),
        Ev::new("Physics", -1, Some("off-topic")),
        Ev::new("Physics", 1, None),
        Ev::new("Math", -1, Some(HOSTILE_REASON)),
        Ev::new("Math", -1, Some(HOSTILE_REASON)).comment("see <b>above</b>"),
        Ev::new("Math", 1, Some(HOSTILE_REASON)),
        // Spelled like the label values likerate reserves: counted apart from them.
        Ev::new("Physics", -1, Some("_other")),
        Ev::new("Physics", -1, Some("_none")),
        // White space only: no reason, the vote counts.
        Ev::new("Physics", -1, Some(" \t ")),
        Ev::new("Physics", -1, Some(MAILED_REASON)),
    ];
    // A vote that changed: its dislike (tag `unsafe`) no longer counts in the API, the
    // counter of stored dislikes keeps it.
    let mut first = Ev::new("Physics", -1, Some("unsafe"));
    first.vote = Some("changed-vote");
    let mut second = Ev::new("Physics", 1, None);
    second.vote = Some("changed-vote");
    second.conversation = first.conversation.clone();
    second.at = first.at + CDuration::seconds(30);
    events.extend([first.clone(), second.clone()]);
    // Old enough for text retention (3 days), with a comment.
    let mut old = Ev::new("Math", -1, Some("wrong")).comment("old comment");
    old.at = Utc::now() - CDuration::days(3);
    events.push(old.clone());

    let body = Value::Array(events.iter().map(Ev::json).collect());
    let (status, answer) = post(&app, &body).await;
    assert_eq!(status, 202, "{answer}");
    let n = events.len() as i64;
    world.db.wait_for_rows(n, Duration::from_secs(60)).await;

    // Stored: the tag trimmed, the comment redacted, everything else byte-exact.
    let db = world.client().await;
    for e in &events {
        let row = db
            .query_one(
                "SELECT reason, comment FROM feedback WHERE event_id = $1",
                &[&e.id],
            )
            .await
            .unwrap();
        let (reason, comment): (Option<String>, Option<String>) = (row.get(0), row.get(1));
        assert_eq!(reason, tag(e), "{}", e.id);
        let want = e.comment.as_deref().map(|c| {
            if c == hostile_comment {
                "Wrong! <script>alert(\"x\")</script>\nmail [email], call [phone]"
            } else {
                c
            }
        });
        assert_eq!(comment.as_deref(), want, "{}", e.id);
    }

    // Counted per reason, current votes only, equal to stats for the same filter.
    let current: Vec<&Ev> = events.iter().filter(|e| e.id != first.id).collect();
    let got = get(&app, "/api/feedback/reasons").await;
    assert_eq!(counts_of(&got), expected(&current), "{got:#}");
    assert_eq!(got["reasons"][0]["reason"], "wrong");
    assert!(
        got["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"] == HOSTILE_REASON.trim() && r["dislikes"] == 2),
        "{got:#}"
    );
    assert_eq!(got["limit"], 20);
    // The first tags only, the rest summed: still the same totals.
    let top = get(&app, "/api/feedback/reasons?limit=2").await;
    assert_eq!(counts_of(&top), expected_top(&current, 2), "{top:#}");
    assert_eq!(top["reasons"].as_array().unwrap().len(), 2);
    assert!(top["other"]["reasons"].as_i64().unwrap() > 5, "{top:#}");
    for bad in ["0", "501", "x", "-1"] {
        let r = reqwest::get(app.url(&format!("/api/feedback/reasons?limit={bad}")))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "limit={bad}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().starts_with("limit"),
            "{body}"
        );
    }
    let stats = get(&app, "/api/feedback/stats").await;
    assert_eq!(stats["dislikes"], got["dislikes"]);
    assert_eq!(stats["likes"], got["likes"]);
    let math: Vec<&Ev> = current
        .iter()
        .copied()
        .filter(|e| e.subject == "Math")
        .collect();
    let got = get(&app, "/api/feedback/reasons?subject_id=Math").await;
    assert_eq!(counts_of(&got), expected(&math), "{got:#}");
    assert_eq!(got["subject_id"], "Math");
    let since =
        (Utc::now() - CDuration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let recent: Vec<&Ev> = math.iter().copied().filter(|e| e.id != old.id).collect();
    let got = get(
        &app,
        &format!("/api/feedback/reasons?subject_id=Math&since={since}"),
    )
    .await;
    assert_eq!(counts_of(&got), expected(&recent), "{got:#}");
    // The export rows carry them too: Physics' dislikes, in the order stored.
    let rows: Vec<Value> = reqwest::Client::new()
        .get(app.url("/api/feedback/export?subject_id=Physics&rating=dislike"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut got: Vec<(Value, Value)> = rows
        .iter()
        .map(|r| (r["reason"].clone(), r["comment"].clone()))
        .collect();
    let mut want: Vec<(Value, Value)> = events
        .iter()
        .filter(|e| e.subject == "Physics" && e.rating == -1)
        .map(|e| (json!(tag(e)), json!(e.comment)))
        .collect();
    got.sort_by_key(|p| p.0.to_string());
    want.sort_by_key(|p| p.0.to_string());
    assert_eq!(got, want);
    let r = reqwest::get(app.url("/api/feedback/reasons?since=yesterday"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("since"));

    // On /metrics: stored dislikes per subject and tag, the superseded one included.
    let stored = |subject: &str, t: Option<&str>| {
        events
            .iter()
            .filter(|e| e.subject == subject && e.rating == -1 && tag(e).as_deref() == t)
            .count() as f64
    };
    let wrong = r#"likerate_dislike_reasons_total{subject="Math",reason="wrong"}"#;
    let text = metrics_with(&app, wrong, stored("Math", Some("wrong"))).await;
    let hostile_label = exposition(HOSTILE_REASON.trim());
    for (subject, t, label) in [
        ("Math", Some("Wrong"), "Wrong"),
        ("Math", Some("unclear"), "unclear"),
        ("Math", None, "_none"),
        ("Math", Some(HOSTILE_REASON.trim()), hostile_label.as_str()),
        ("Physics", Some("too_long"), "too_long"),
        ("Physics", Some("off-topic"), "off-topic"),
        ("Physics", Some("unsafe"), "unsafe"),
        ("Physics", Some("_other"), "__other"),
        ("Physics", Some("_none"), "__none"),
        ("Physics", None, "_none"),
        (
            "Physics",
            Some("other: mail me at [email]"),
            "other: mail me at [email]",
        ),
    ] {
        let series =
            format!(r#"likerate_dislike_reasons_total{{subject="{subject}",reason="{label}"}}"#);
        assert_eq!(
            common::series_value(&text, &series),
            Some(stored(subject, t)),
            "{series}"
        );
    }
    assert!(
        !text.contains(r#"reason="helpful""#),
        "likes are not dislike reasons"
    );
    assert!(!text.contains("example.com"), "comments are not labels");
    assert!(!text.contains("example.org"), "reasons are redacted");
    assert!(
        !text.contains(r#"reason="_other""#),
        "no tag is past the cap:\n{text}"
    );
    let (ok, msg) = common::promtool(&text);
    assert!(ok, "promtool check metrics: {msg}\n{text}");

    // The report: the tag in the reasons table, escaped like every user text.
    let out = likerate_command(
        &["report", "--since", "1d", "--format", "html"],
        &world.kafka,
        &world.db.url(),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let html = String::from_utf8(out.stdout).unwrap();
    let escaped =
        "Not helpful: &lt;script&gt;alert(&quot;错误&quot;)&lt;/script&gt; &#39;Falsch&#39;";
    assert!(
        html.contains(&format!("<td>{escaped}</td><td>2</td>")),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");

    // What the contract refuses: 400 naming the field, nothing published.
    let long_comment = "x".repeat(4001);
    let long_tag = "错".repeat(65);
    for (reason, comment, code, field) in [
        (json!("a\u{0}b"), json!(null), "nul_character", "reason"),
        (json!(long_tag), json!(null), "out_of_range", "reason"),
        (json!(["wrong"]), json!(null), "invalid_type", "reason"),
        (
            json!("wrong"),
            json!(long_comment),
            "out_of_range",
            "comment",
        ),
        (json!("wrong"), json!(42), "invalid_type", "comment"),
    ] {
        let mut e = Ev::new("Math", -1, None).json();
        e["reason"] = reason.clone();
        e["comment"] = comment;
        let good = Ev::new("Math", -1, Some("wrong")).json();
        let (status, answer) = post(&app, &json!([good, e])).await;
        assert_eq!(status, 400, "{reason}: {answer}");
        assert_eq!(answer["errors"][0]["index"], 1);
        assert_eq!(answer["errors"][0]["reason"], code, "{answer}");
        let detail = answer["errors"][0]["detail"].as_str().unwrap();
        assert!(detail.starts_with(field), "{detail}");
    }

    // The same values straight on the topic: dead letters with the reason code, nothing
    // stored, nothing on /metrics.
    let raw: Vec<(String, Vec<u8>)> = ["x\u{0}\"} 1\n# EOF", &"r".repeat(65), &" ".repeat(65)]
        .iter()
        .map(|r| {
            let mut e = Ev::new("Math", -1, None).json();
            e["reason"] = json!(r);
            ("k".to_owned(), e.to_string().into_bytes())
        })
        .collect();
    world.send(&raw).await;
    let letters = world.dead_letters(raw.len()).await;
    let mut codes: Vec<String> = letters
        .iter()
        .map(|(h, _)| h.get("likerate-error").cloned().unwrap_or_default())
        .collect();
    codes.sort();
    assert_eq!(codes, ["nul_character", "out_of_range", "out_of_range"]);
    let text = metrics_with(
        &app,
        r#"likerate_dead_letters_total{reason="out_of_range"}"#,
        2.0,
    )
    .await;
    assert!(!text.lines().any(|l| l.starts_with("# EOF")), "{text}");
    let dislike_series = text
        .lines()
        .filter(|l| l.starts_with("likerate_dislike_reasons_total{"))
        .count();
    let stored_series: std::collections::BTreeSet<(&str, Option<String>)> = events
        .iter()
        .filter(|e| e.rating == -1)
        .map(|e| (e.subject, tag(e)))
        .collect();
    assert_eq!(
        dislike_series,
        stored_series.len(),
        "no series for refused tags:\n{text}"
    );
    assert_eq!(world.count().await, n);
    let (ok, msg) = common::promtool(&text);
    assert!(ok, "promtool check metrics: {msg}\n{text}");

    // Retention erases the old comment with the answer, keeps the tag and the counts.
    let out = likerate_command(
        &["retention", "--retention-text", "2d"],
        &world.kafka,
        &world.db.url(),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "retention: text erased from 1 rows, 0 rows deleted"
    );
    let row = db
        .query_one(
            "SELECT reason, comment, message_content FROM feedback WHERE event_id = $1",
            &[&old.id],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, Option<String>>(0).as_deref(),
            row.get::<_, Option<String>>(1),
            row.get::<_, String>(2)
        ),
        (Some("wrong"), None, String::new())
    );
    let got = get(&app, "/api/feedback/reasons").await;
    let mut after = expected(&current);
    let was = after["dislikes_with_comment"].as_i64().unwrap();
    after["dislikes_with_comment"] = json!(was - 1);
    let wrong_entry = after["reasons"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["reason"] == "wrong")
        .unwrap();
    let was = wrong_entry["with_comment"].as_i64().unwrap();
    wrong_entry["with_comment"] = json!(was - 1);
    assert_eq!(counts_of(&got), after, "{got:#}");

    // Erasure takes the comment with the row, and the reason counts with it.
    let erased = &events[2];
    let out = likerate_command(
        &["erase", "--conversation-id", &erased.conversation],
        &world.kafka,
        &world.db.url(),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM feedback WHERE comment LIKE '%[email]%' OR event_id = $1",
            &[&erased.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let current: Vec<&Ev> = current.into_iter().filter(|e| e.id != erased.id).collect();
    let got = get(&app, "/api/feedback/reasons").await;
    let mut want = expected(&current);
    // The old comment is still erased by retention.
    let was = want["dislikes_with_comment"].as_i64().unwrap();
    want["dislikes_with_comment"] = json!(was - 1);
    for r in want["reasons"].as_array_mut().unwrap() {
        if r["reason"] == "wrong" {
            let was = r["with_comment"].as_i64().unwrap();
            r["with_comment"] = json!(was - 1);
        }
    }
    assert_eq!(counts_of(&got), want, "{got:#}");
}

/// Posts `events` and waits until the table holds `stored` more rows.
async fn post_stored(app: &TestApp, world: &World, events: Vec<Value>, stored: &mut i64) {
    *stored += events.len() as i64;
    let (status, answer) = post(app, &Value::Array(events)).await;
    assert_eq!(status, 202, "{answer}");
    world
        .db
        .wait_for_rows(*stored, Duration::from_secs(60))
        .await;
}

/// The reason label's 32 places (`_other` included) go to the tags with the most dislikes of
/// the last day, re-ranked while likerate runs: a busy tag that came after the places were
/// taken gets one, in place of the quietest named tag. Until migration 0008 the first 31 tags
/// seen kept their places for the process's life.
#[tokio::test(flavor = "multi_thread")]
async fn the_reason_label_goes_to_the_busiest_tags_of_the_day() {
    let world = World::new().await;
    let app = TestApp::spawn(&world.kafka, &world.db.url(), RunArgs::default(), None).await;
    let dislike = |reason: &str| {
        let mut e = Ev::new("Math", -1, None).json();
        e["reason"] = json!(reason);
        e
    };
    let series = |reason: &str| {
        format!(r#"likerate_dislike_reasons_total{{subject="Math",reason="{reason}"}}"#)
    };
    let count =
        |text: &str, reason: &str| common::series_value(text, &series(reason)).unwrap_or(0.0);
    let mut stored = 0;

    // 31 quiet tags take the 31 free places (the 32nd is `_other`'s).
    let quiet: Vec<String> = (0..32).map(|i| format!("tag-{i:02}")).collect();
    let first: Vec<Value> = quiet[..31].iter().map(|t| dislike(t)).collect();
    post_stored(&app, &world, first, &mut stored).await;
    let text = metrics_with(&app, &series("tag-30"), 1.0).await;
    for t in &quiet[..31] {
        assert_eq!(count(&text, t), 1.0, "{t}:\n{text}");
    }
    // A 32nd quiet tag and a busy one find no place.
    let busy = "Nicht hilfreich 👎";
    let mut late = vec![dislike(&quiet[31])];
    late.extend((0..5).map(|_| dislike(busy)));
    post_stored(&app, &world, late, &mut stored).await;
    let text = metrics_with(&app, &series("_other"), 6.0).await;
    assert_eq!(count(&text, busy), 0.0, "{text}");

    // The next ranking (at most a minute later) names the busy tag: a dislike stored after it
    // is counted under its own name. Probe with one dislike at a time until then.
    let deadline = Instant::now() + Duration::from_secs(100);
    let mut other = 6.0;
    loop {
        post_stored(&app, &world, vec![dislike(busy)], &mut stored).await;
        let text = loop {
            let text = app.metrics().await.unwrap();
            if count(&text, "_other") + count(&text, busy) == other + 1.0 {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "the probe is never counted:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if count(&text, busy) == 1.0 {
            break;
        }
        other += 1.0;
        assert!(
            Instant::now() < deadline,
            "the busy tag never got a place:\n{text}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // 33 tags in the day: the busy one and 30 quiet ones keep a place. Ties among the quiet
    // go to those already named, then by name: tag-30 (named, last) gives its place up, tag-31
    // never had one.
    let again = vec![dislike(&quiet[0]), dislike(&quiet[30]), dislike(&quiet[31])];
    post_stored(&app, &world, again, &mut stored).await;
    let text = metrics_with(&app, &series("_other"), other + 2.0).await;
    assert_eq!(count(&text, &quiet[0]), 2.0, "{text}");
    assert_eq!(count(&text, &quiet[30]), 1.0, "frozen once out:\n{text}");
    let (ok, msg) = common::promtool(&text);
    assert!(ok, "promtool check metrics: {msg}\n{text}");
}

/// The demo's traffic (deploy/local/demo.sh's flags, `likerate produce`'s generator) through the
/// pipeline: the DPO export has pairs, most Math dislikes with a reason say `wrong`, and the
/// comments are stored.
#[tokio::test(flavor = "multi_thread")]
async fn demo_traffic_feeds_the_dpo_export_and_the_reasons() {
    let world = World::new().await;
    let (records, ids, invalid) = common::traffic(
        3000,
        7,
        &[
            "--like-ratio",
            "0.92",
            "--subject-like-ratio",
            "Math=0.6",
            "--spread",
            "10m",
        ],
    );
    assert_eq!(invalid, 0);
    world.send(&records).await;
    let run = RunArgs {
        export_token: Some(TOKEN.into()),
        ..RunArgs::default()
    };
    let app = TestApp::spawn(&world.kafka, &world.db.url(), run, None).await;
    world
        .db
        .wait_for_rows(ids.len() as i64, Duration::from_secs(90))
        .await;

    let dpo = reqwest::Client::new()
        .get(app.url("/api/feedback/training-data?format=dpo"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(dpo.status(), 200);
    let text = dpo.text().await.unwrap();
    let pairs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(pairs.len() >= 20, "{} DPO pairs", pairs.len());
    // Each pair is a question the table holds a liked and a disliked answer to.
    let db = world.client().await;
    for pair in pairs.iter().take(20) {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE rating = 1 AND message_content = $2),
                        count(*) FILTER (WHERE rating = -1 AND message_content = $3)
                 FROM feedback WHERE user_question = $1",
                &[
                    &pair["prompt"].as_str().unwrap(),
                    &pair["chosen"].as_str().unwrap(),
                    &pair["rejected"].as_str().unwrap(),
                ],
            )
            .await
            .unwrap();
        assert!(
            row.get::<_, i64>(0) >= 1 && row.get::<_, i64>(1) >= 1,
            "{pair}"
        );
    }

    // KTO has both signals.
    let kto = reqwest::Client::new()
        .get(app.url("/api/feedback/training-data?format=kto"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels: Vec<bool> = kto
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["label"]
                .as_bool()
                .unwrap()
        })
        .collect();
    assert!(
        labels.contains(&true) && labels.contains(&false),
        "{} KTO rows",
        labels.len()
    );
    // The patterns are not empty: Math's weak topic (probability) stands out in its dislikes.
    let patterns: Value = reqwest::Client::new()
        .get(app.url("/api/feedback/dislike-patterns?subject_id=Math&limit=10"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let probability = [
        "probability",
        "dice",
        "coin",
        "bayes",
        "conditional",
        "expectation",
    ];
    let terms = patterns["subjects"][0]["terms"].as_array().unwrap();
    assert!(
        terms.iter().any(|t| {
            let term = t["term"].as_str().unwrap();
            t["z"].as_f64().unwrap() >= 1.96 && term.split(' ').any(|w| probability.contains(&w))
        }),
        "{patterns:#}"
    );

    let math = get(&app, "/api/feedback/reasons?subject_id=Math").await;
    assert!(math["dislikes_with_reason"].as_i64().unwrap() > 0, "{math}");
    assert_eq!(math["reasons"][0]["reason"], "wrong", "{math:#}");
    assert!(
        math["dislikes_with_comment"].as_i64().unwrap() > 0,
        "{math}"
    );
    // The weak topic: Math's probability questions are disliked far more than its others.
    let rate = |rows: &[tokio_postgres::Row]| {
        let r = &rows[0];
        r.get::<_, i64>(0) as f64 / r.get::<_, i64>(1) as f64
    };
    let topic = |like: &'static str| {
        let db = &db;
        async move {
            db.query(
                &format!(
                    "SELECT count(*) FILTER (WHERE rating = 1), count(*) FROM feedback
                     WHERE subject_id = 'Math' AND user_question {like} 'Math question on probability:%'"
                ),
                &[],
            )
            .await
            .unwrap()
        }
    };
    let (weak, others) = (rate(&topic("LIKE").await), rate(&topic("NOT LIKE").await));
    assert!(
        weak + 0.3 < others,
        "probability {weak} vs the rest {others}"
    );
}
