//! The sink's write path without the Kafka side (`bench` feature, so not in the production
//! build): for benchmarks and for tests that need batches of their own making
//! (`tests/suite/votes.rs`).

use super::sql::Conn;
use super::transaction::{write, Aggregates, Row};
use crate::db::{DbError, Target};
use crate::event::{Coordinates, FeedbackEvent};

/// The sink's write path without the Kafka side, each call is one transaction, exactly as
/// the sink writes a batch.
pub struct BenchWriter {
    conn: Conn,
    topic: String,
}

impl BenchWriter {
    pub async fn connect(target: &Target, topic: &str) -> Result<BenchWriter, DbError> {
        Ok(BenchWriter {
            conn: Conn::open(target).await?,
            topic: topic.to_owned(),
        })
    }

    /// Writes events (with the coordinates they came from); returns how many were new.
    pub async fn write(
        &mut self,
        events: &[(FeedbackEvent, Coordinates)],
        aggregates: Aggregates,
    ) -> Result<usize, DbError> {
        let rows: Vec<Row<'_>> = events
            .iter()
            .map(|(event, coords)| Row {
                event,
                coords: *coords,
            })
            .collect();
        Ok(write(&mut self.conn, &self.topic, &rows, aggregates)
            .await?
            .inserted
            .len())
    }
}
