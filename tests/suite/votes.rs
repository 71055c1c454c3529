//! The sink's vote rules, batch by batch, against PostgreSQL (no broker: each batch is one
//! write of the sink's, as `likerate run` makes it): of all events sharing a `vote_id`, the
//! newest by `(created_at, event_id)` counts, whether its other events are in the same batch,
//! in an earlier one, or arrive again in a replay.

use crate::common;

use common::Database;
use likerate::config::DatabaseConfig;
use likerate::db::{migrate, Target};
use likerate::decode::{decode, Origin};
use likerate::event::{Coordinates, FeedbackEvent};
use likerate::sink::{Aggregates, BenchWriter};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

/// An event with a readable id (`n` as the last digits of the UUID, so the order of ids is the
/// order of `n`), a vote id, a minute offset from 10:00 and a rating.
fn event(
    n: u64,
    vote: Option<&str>,
    minute: i64,
    rating: i64,
    offset: i64,
) -> (FeedbackEvent, Coordinates) {
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-02T10:00:00Z").unwrap()
        + chrono::Duration::minutes(minute);
    let mut e = json!({
        "event_id": Uuid::from_u128(n as u128),
        "subject_id": "Math",
        "assistant_message": format!("answer {n}"),
        "rating": rating,
        "created_at": at.to_rfc3339(),
        "model": "m1",
    });
    if let Some(v) = vote {
        e["vote_id"] = json!(v);
    }
    let origin = Origin {
        topic: "votes",
        partition: 0,
        offset,
        received_at: chrono::Utc::now(),
    };
    let event = decode(e.to_string().as_bytes(), origin).expect("valid event");
    (
        event,
        Coordinates {
            partition: 0,
            offset,
        },
    )
}

/// The day cell's counts: (likes, dislikes, neutral).
async fn day_counts(db: &Database) -> (i64, i64, i64) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT sum(likes)::int8, sum(dislikes)::int8, sum(neutral)::int8
             FROM feedback_rollup WHERE grain = 'd'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// The event each vote id's `feedback_vote` row names, by vote id.
async fn vote_rows(db: &Database) -> Vec<(String, Uuid)> {
    db.client()
        .await
        .query(
            "SELECT vote_id, event_id FROM feedback_vote ORDER BY vote_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn the_newest_event_of_a_vote_counts_within_and_across_batches() {
    let db = Database::create("likerate_votes").await;
    let target = Target::new(&DatabaseConfig {
        url: db.url(),
        timeout: Duration::from_secs(30),
    })
    .unwrap();
    migrate(&mut target.connect().await.unwrap()).await.unwrap();
    let mut writer = BenchWriter::connect(&target, "votes").await.unwrap();
    let id = Uuid::from_u128;

    // Batch 1. Vote a: its slot goes to a1 (the lowest id), but a re-vote in the same batch,
    // a2, is newer and counts; a3 is older than both. Vote b: b2, a re-vote older than its
    // slot holder b1, changes nothing. Vote c: one event. And one event without a vote id.
    let first = vec![
        event(3, Some("a"), -1, 0, 0),
        event(1, Some("a"), 0, 1, 1),
        event(2, Some("a"), 1, -1, 2),
        event(4, Some("b"), 2, 1, 3),
        event(5, Some("b"), -2, -1, 4),
        event(6, Some("c"), 0, 1, 5),
        event(7, None, 0, -1, 6),
    ];
    assert_eq!(writer.write(&first, Aggregates::Maintain).await.unwrap(), 7);
    db.assert_rollups_exact(None).await;
    // Current votes: a2 dislike, b1 like, c1 like, the plain dislike.
    assert_eq!(day_counts(&db).await, (2, 2, 0));
    // Only a has a row: its newest event does not hold the slot.
    assert_eq!(vote_rows(&db).await, vec![("a".to_owned(), id(2))]);

    // Batch 2, against the stored votes: a4 is newer than a2, b3 older than b1, c2 a newer
    // re-vote an hour later; a1 again (a producer duplicate) is stored once.
    let second = vec![
        event(8, Some("a"), 5, 0, 7),
        event(9, Some("b"), -30, -1, 8),
        event(10, Some("c"), 60, -1, 9),
        event(1, Some("a"), 0, 1, 10),
    ];
    assert_eq!(
        writer.write(&second, Aggregates::Maintain).await.unwrap(),
        3
    );
    db.assert_rollups_exact(None).await;
    // Current votes: a4 neutral, b1 like, c2 dislike, the plain dislike.
    assert_eq!(day_counts(&db).await, (1, 2, 1));
    assert_eq!(
        vote_rows(&db).await,
        vec![
            ("a".to_owned(), id(8)),
            ("b".to_owned(), id(4)),
            ("c".to_owned(), id(10)),
        ]
    );
    let hours: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM feedback_rollup
             WHERE grain = 'h' AND (likes, dislikes, neutral) <> (0, 0, 0)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hours, 2, "c's vote moved to the 11:00 bucket");

    // A replay of everything, in one batch: nothing is stored, nothing moves.
    let replay: Vec<_> = first.iter().chain(&second).cloned().collect();
    assert_eq!(
        writer.write(&replay, Aggregates::Maintain).await.unwrap(),
        0
    );
    db.assert_rollups_exact(None).await;
    assert_eq!(day_counts(&db).await, (1, 2, 1));
    assert_eq!(db.count().await, 10);
}
