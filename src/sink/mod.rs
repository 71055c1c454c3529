//! Sink: batches become rows in PostgreSQL, exactly once, with the rollups that count them.
//!
//! Guarantees:
//! - One transaction per batch holds the new `feedback` rows, the vote bookkeeping and the
//!   rollup deltas; the partition positions move (see [`crate::source::Acker`]) only after it
//!   committed and the batch's dead letters were acknowledged.
//! - Batches are written on several connections at once ("lanes"), each batch split by
//!   partition so a partition always goes to the same lane; acknowledgements are released in
//!   the order the source cut the batches, never past an older batch that is not durable.
//! - Idempotent on `event_id`: a batch looks up which of its ids are stored and copies only
//!   the others straight into `feedback`; if a concurrent writer stored one of them meanwhile,
//!   the unique index refuses the copy and the batch goes through a staging table with
//!   `ON CONFLICT DO NOTHING RETURNING` instead. Rollups are built only from the rows created,
//!   so replays and producer duplicates (also twice in one batch) store one row and count
//!   once. They are counted as `duplicate`.
//! - Votes are settled in the same transaction by the rule of [`crate::votes`]: a newer re-vote
//!   moves the count out of the current vote's bucket into its own, an older one arriving late
//!   is stored but changes no count; a vote whose events are all in one batch is settled from
//!   the batch alone.
//! - Failures are classified: database unavailable, restarting, hanging or deadlocked ->
//!   reconnect and retry the whole batch with backoff, forever (the source pauses meanwhile);
//!   a row PostgreSQL refuses as data -> the batch is split until that row stands alone, the
//!   rest is stored and the row is dead-lettered as `db_rejected`; schema or permission errors
//!   -> [`SinkError::Fatal`], the process stops.
//! - Lock order is deterministic (rows sorted by key), so instances writing concurrently do not
//!   deadlock each other in the common case, and a deadlock that still happens is retried.

//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the lanes and the ordered acknowledgements |
//! | `lane.rs` | one connection: retries, isolation of refused rows, dead letters |
//! | `transaction.rs` | the transaction of one batch |
//! | `sql.rs` | the statements about `feedback` rows, prepared per connection |
//! | [`bench`] | (`bench` feature) the write path without Kafka, for benchmarks and tests |

#[cfg(feature = "bench")]
pub mod bench;
mod lane;
mod sql;
mod transaction;

use crate::db::Target;
use crate::source::{Ack, Acker, Batch};
use crate::telemetry::Metrics;
#[cfg(feature = "bench")]
pub use bench::BenchWriter;
use futures::stream::{FuturesUnordered, StreamExt};
use lane::Lane;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::sync::mpsc;
pub use transaction::Aggregates;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Retrying cannot help (schema missing, permission denied): stop the process.
    #[error("cannot store events: {0}")]
    Fatal(String),
}

/// What one write did.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub stored: u64,
    pub duplicates: u64,
    /// Refused: erased for good ([`crate::tombstone`]) or older than the rows' retention.
    pub erased: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Written) {
        self.stored += other.stored;
        self.duplicates += other.duplicates;
        self.erased += other.erased;
    }
}

/// The sink: batches from the source, written by up to `connections` lanes at once (each a
/// connection of its own, so PostgreSQL works on several batches in parallel), acknowledged in
/// the order the source cut them.
pub struct Sink {
    lanes: Vec<Lane>,
    acker: Acker,
}

/// Most batches written or waiting for their acknowledgement per lane: bounds the
/// acknowledgements held while an older batch is still being retried.
const OUTSTANDING_PER_LANE: usize = 4;

impl Sink {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: Target,
        topic: String,
        acker: Acker,
        metrics: Metrics,
        timeout: Duration,
        connections: usize,
        keep_rows: Option<Duration>,
    ) -> Sink {
        let lanes = (0..connections.max(1))
            .map(|_| Lane {
                target: target.clone(),
                conn: None,
                topic: topic.clone(),
                metrics: metrics.clone(),
                timeout,
                keep_rows,
            })
            .collect();
        Sink { lanes, acker }
    }

    /// Stores batches until the source closes the channel. Each batch is split by partition
    /// across the lanes ([`Batch::split`]); a lane writes its parts in order; a batch is
    /// acknowledged when all its parts are durable and every older batch is acknowledged.
    pub async fn run(self, mut rx: mpsc::Receiver<Batch>) -> Result<(), SinkError> {
        let lanes = self.lanes.len();
        let most = lanes * OUTSTANDING_PER_LANE;
        let mut idle: Vec<Option<Lane>> = self.lanes.into_iter().map(Some).collect();
        let mut queued: Vec<VecDeque<(u64, Batch)>> = (0..lanes).map(|_| VecDeque::new()).collect();
        let mut writing = FuturesUnordered::new();
        // Per batch number: parts still being written, and the acknowledgements of those done.
        let mut outstanding: BTreeMap<u64, (usize, Vec<Ack>)> = BTreeMap::new();
        let mut next_seq = 0u64;
        let mut open = true;
        loop {
            for (i, slot) in idle.iter_mut().enumerate() {
                if slot.is_none() {
                    continue;
                }
                if let Some((seq, part)) = queued[i].pop_front() {
                    // Checked above: the lane is idle.
                    if let Some(lane) = slot.take() {
                        writing.push(lane.write_batch(i, seq, part));
                    }
                }
            }
            if !open && writing.is_empty() {
                return Ok(());
            }
            // Take a batch only when every lane has at most one part queued.
            let room = outstanding.len() < most && queued.iter().all(|q| q.len() < 2);
            tokio::select! {
                batch = rx.recv(), if open && room => match batch {
                    Some(batch) => {
                        let parts = batch.split(lanes);
                        outstanding.insert(next_seq, (parts.len(), Vec::new()));
                        for (lane, part) in parts {
                            queued[lane].push_back((next_seq, part));
                        }
                        next_seq += 1;
                    }
                    None => open = false,
                },
                Some((i, lane, seq, ack)) = writing.next() => {
                    idle[i] = Some(lane);
                    // Every part written belongs to a batch still outstanding: batches leave
                    // the map only once all their parts are back.
                    if let Some(entry) = outstanding.get_mut(&seq) {
                        entry.0 -= 1;
                        entry.1.push(ack?);
                    }
                    while let Some(first) = outstanding.first_entry() {
                        if first.get().0 > 0 {
                            break;
                        }
                        for ack in first.remove().1 {
                            self.acker.ack(ack);
                        }
                    }
                }
            }
        }
    }
}
