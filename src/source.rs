//! Source: the Kafka consumer, on a thread of its own, turning records into batches.
//!
//! Guarantees:
//! - Offsets are acknowledgements. Auto offset *store* is off: an offset is stored (and then
//!   committed by librdkafka's auto-commit, or synchronously at revocation and shutdown) only
//!   by [`Acker::ack`], which the sink calls after the transaction holding the batch committed
//!   and its dead letters were acknowledged by the broker. The sink may write several batches
//!   at once, but acknowledges them in poll order, so a stored offset always covers a
//!   contiguous prefix of its partition.
//! - Stale acknowledgements are ignored: every assignment of a partition gets a new epoch, and
//!   a batch consumed under an older epoch cannot move the position of a newer one.
//! - The consumer keeps polling whatever happens downstream, so it is never evicted from the
//!   group: when the sink cannot keep up (database down, slow), ready batches wait here and
//!   the partitions are simply not read. Each assigned partition has its own librdkafka queue
//!   (split from the consumer queue at assignment), read only while the sink has room;
//!   librdkafka stops fetching when a queue is full. There is no pause/resume, so nothing is
//!   fetched twice. A restart resumes from a committed offset that may lie inside a producer
//!   batch; the broker returns the whole batch and librdkafka skips the records before it.
//! - Partition revocation and shutdown drain through one path, [`PollState::drain`]: cut the
//!   open batch, hand every waiting batch to the sink, wait (bounded) until the sink has
//!   acknowledged all of them, then commit the stored offsets synchronously.
//! - Memory is bounded: batches are cut by count and by bytes, the channel to the sink holds
//!   one, and librdkafka's prefetch queue is capped (its defaults buffer 100,000 messages per
//!   partition).

use crate::config::KafkaConfig;
use crate::decode::{decode, DecodeError, Origin};
use crate::event::{Coordinates, FeedbackEvent};
use crate::kafka;
use crate::redact::Redactor;
use crate::telemetry::Metrics;
use chrono::Utc;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Batch limits and drain bound.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    pub drain_timeout: Duration,
}

/// A record that failed decoding, with everything its dead letter needs.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub error: DecodeError,
    pub payload: Vec<u8>,
    pub key: Option<Vec<u8>>,
}

#[derive(Debug)]
pub enum Payload {
    Event(FeedbackEvent),
    Rejected(Rejected),
}

#[derive(Debug)]
pub struct Record {
    pub coords: Coordinates,
    pub payload: Payload,
}

/// Records of consecutive polls, in poll order, possibly from several partitions.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    /// The assignment epoch of each partition in the batch, when it was consumed.
    epochs: HashMap<i32, u64>,
    bytes: usize,
    started: Option<Instant>,
    /// Set on the marker a drain sends: answered once everything before it is acknowledged.
    flushed: Option<std::sync::mpsc::SyncSender<()>>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Which partitions are assigned now, and under which epoch.
#[derive(Default)]
struct Assignment {
    epochs: HashMap<i32, u64>,
    next_epoch: u64,
}

/// Moves partition positions after the sink made a batch durable.
#[derive(Clone)]
pub struct Acker {
    consumer: Arc<BaseConsumer<SourceContext>>,
    topic: String,
}

/// How far the consumer is: the lag it last saw on its partitions and when it last
/// acknowledged a batch. Written by the source, read by the alert ([`Progress::stalled`]) to
/// tell a stream that went quiet from a pipeline that stopped counting.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    /// Sum of the assigned partitions' last known lag.
    lag: AtomicI64,
    /// Milliseconds after `started` of the last acknowledged batch; -1 before the first.
    last_ack_ms: AtomicI64,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            started: Instant::now(),
            lag: AtomicI64::new(0),
            last_ack_ms: AtomicI64::new(-1),
        }
    }
}

impl Progress {
    fn acked(&self) {
        let ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.last_ack_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether records wait (lag > 0) while no batch was acknowledged for `after` (counted
    /// from the start when none was yet).
    pub fn stalled(&self, after: Duration) -> bool {
        let last = self.last_ack_ms.load(Ordering::Relaxed).max(0);
        let last = Duration::from_millis(u64::try_from(last).unwrap_or(0));
        self.lag.load(Ordering::Relaxed) > 0 && self.started.elapsed().saturating_sub(last) > after
    }
}

/// What acknowledging a batch does, taken from the batch once it is durable so that its
/// records can be freed while it waits for its turn (acknowledgements go in poll order).
#[derive(Debug)]
pub struct Ack {
    /// Per partition: the offset after the batch's last record, and the assignment epoch the
    /// batch was consumed under.
    positions: HashMap<i32, (i64, u64)>,
    flushed: Option<std::sync::mpsc::SyncSender<()>>,
}

impl Batch {
    /// Splits the batch by partition into parts for `lanes` writers (`partition % lanes`),
    /// keeping each partition's records in order. A partition's producer duplicates and
    /// re-sends then never sit in two transactions at once, where one would wait for the other.
    /// Every batch gives at least one part (a drain marker gives itself, to lane 0).
    pub fn split(mut self, lanes: usize) -> Vec<(usize, Batch)> {
        let lanes = lanes.max(1);
        if lanes == 1 || self.records.is_empty() {
            return vec![(0, self)];
        }
        let mut parts: BTreeMap<usize, Batch> = BTreeMap::new();
        for record in std::mem::take(&mut self.records) {
            let partition = record.coords.partition;
            let part = parts
                .entry(partition.rem_euclid(lanes as i32) as usize)
                .or_default();
            if let Some(epoch) = self.epochs.get(&partition) {
                part.epochs.insert(partition, *epoch);
            }
            part.records.push(record);
        }
        parts.into_iter().collect()
    }

    /// The acknowledgement of this batch (call once it is durable).
    pub fn ack(&mut self) -> Ack {
        let mut positions: HashMap<i32, (i64, u64)> = HashMap::new();
        for r in &self.records {
            let epoch = self.epochs.get(&r.coords.partition).copied().unwrap_or(0);
            let e = positions.entry(r.coords.partition).or_insert((0, epoch));
            e.0 = e.0.max(r.coords.offset + 1);
        }
        Ack {
            positions,
            flushed: self.flushed.take(),
        }
    }
}

impl Acker {
    /// Stores, per partition, the offset after the batch's last record, if the partition is
    /// still assigned under the epoch the batch was consumed in; then answers a drain marker.
    /// Must be called in poll order, so that a stored offset covers a contiguous prefix.
    pub fn ack(&self, ack: Ack) {
        let assignment = self
            .consumer
            .context()
            .assignment
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut positions = TopicPartitionList::new();
        for (partition, (offset, epoch)) in ack.positions {
            if assignment.epochs.get(&partition) != Some(&epoch) {
                tracing::debug!(partition, "acknowledgement of a revoked partition ignored");
                continue;
            }
            // The position to resume from. Not `store_offset`: librdkafka's
            // rd_kafka_offset_store adds one to the offset it is given, which would skip the
            // record after the batch at the next handover.
            if let Err(e) =
                positions.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
            {
                tracing::warn!(partition, offset, error = %e, "offset not stored");
            }
        }
        drop(assignment);
        if positions.count() > 0 {
            if let Err(e) = self.consumer.store_offsets(&positions) {
                tracing::warn!(error = %e, "could not store offsets");
            }
        }
        self.consumer.context().progress.acked();
        if let Some(done) = ack.flushed {
            let _ = done.send(());
        }
    }
}

/// librdkafka callbacks: rebalances and statistics.
pub struct SourceContext {
    topic: String,
    metrics: Metrics,
    /// `LIKERATE_REDACT`, applied to every decoded event (`None`: off).
    redactor: Option<Arc<Redactor>>,
    progress: Arc<Progress>,
    assignment: Mutex<Assignment>,
    /// Set at the first assignment (readiness).
    joined: Arc<AtomicBool>,
    last_error_log: Mutex<Option<Instant>>,
    /// The last known lag of each assigned partition.
    lags: Mutex<BTreeMap<i32, i64>>,
    /// The consumer itself, to split partition queues inside the assignment callback (set
    /// once the consumer exists).
    consumer: OnceLock<Weak<BaseConsumer<SourceContext>>>,
    /// The poll thread's batching state; shared with the rebalance callback, which runs on the
    /// same thread inside `poll`, so the lock is never contended.
    state: Mutex<Option<PollState>>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let assignment = self
            .assignment
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut lags = self.lags.lock().unwrap_or_else(PoisonError::into_inner);
        lags.retain(|p, _| assignment.epochs.contains_key(p));
        for (partition, stats) in &topic.partitions {
            // -1 means "not known yet": the last known value stays.
            if assignment.epochs.contains_key(partition) && stats.consumer_lag_stored >= 0 {
                lags.insert(*partition, stats.consumer_lag_stored);
            }
        }
        self.metrics.consumer_lag(&lags);
        self.progress
            .lag
            .store(lags.values().sum(), Ordering::Relaxed);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // librdkafka repeats a broker outage every few milliseconds: one line per 10 s.
        let mut last = self
            .last_error_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(error = %error, reason, "kafka client error (repeats are silenced for 10s)");
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = partitions_of(tpl);
            tracing::info!(?partitions, "partitions revoked: draining");
            if let Some(state) = self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
            {
                state.drain(consumer);
                for p in &partitions {
                    state.queues.remove(p);
                }
            }
            let mut assignment = self
                .assignment
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for p in &partitions {
                assignment.epochs.remove(p);
            }
            self.metrics.assigned_partitions(assignment.epochs.len());
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = partitions_of(tpl);
                tracing::info!(?partitions, "partitions assigned");
                self.joined.store(true, Ordering::Relaxed);
                let mut assignment = self
                    .assignment
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for p in partitions {
                    assignment.next_epoch += 1;
                    let epoch = assignment.next_epoch;
                    assignment.epochs.insert(p, epoch);
                }
                self.metrics.assigned_partitions(assignment.epochs.len());
                drop(assignment);
                // Split right after the assignment, before fetched messages are delivered,
                // so every message of these partitions arrives through their own queue.
                let consumer = self.consumer.get().and_then(Weak::upgrade);
                if let (Some(consumer), Some(state)) = (
                    consumer,
                    self.state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .as_mut(),
                ) {
                    for p in partitions_of(tpl) {
                        match consumer.split_partition_queue(&self.topic, p) {
                            Some(queue) => {
                                state.queues.insert(p, queue);
                            }
                            None => {
                                tracing::warn!(partition = p, "could not split partition queue")
                            }
                        }
                    }
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// Batching state of the poll thread.
struct PollState {
    limits: BatchLimits,
    open: Batch,
    /// Batches cut but not yet taken by the sink (the channel was full).
    waiting: VecDeque<Batch>,
    tx: mpsc::Sender<Batch>,
    /// One queue per assigned partition, read only while no batch waits for the sink.
    queues: BTreeMap<i32, PartitionQueue<SourceContext>>,
    /// Where the next read of the queues starts ([`round_robin`]).
    cursor: usize,
    metrics: Metrics,
}

/// What reading one record of a partition gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Took,
    /// Nothing to read there now (or an error, logged): go on with the next partition.
    Empty,
    /// A batch waits for the sink: read nothing more.
    Stop,
}

/// Records read per partition per round.
const PER_ROUND: usize = 64;

/// Reads partitions in rounds of at most [`PER_ROUND`] records each, starting at `cursor`,
/// until `read` says stop or a whole round read nothing; `cursor` is left at the partition
/// after the one that stopped.
///
/// Rounds are small and the start moves on, so a batch holds about as many records of each
/// busy partition and no partition waits for the others to run dry. That keeps the sink's
/// lanes (a partition always goes to lane `partition % lanes`) at parts of about the same size:
/// with rounds of 1,000 records always starting at the first partition, a batch of 5,000 on
/// six partitions held partitions 0 to 4, lane 0 got 3,000 of them and lane 1 2,000, so one lane
/// idled a third of the time, and partition 5 was read only once the others were empty.
fn round_robin(partitions: &[i32], cursor: &mut usize, mut read: impl FnMut(i32) -> Step) {
    let n = partitions.len();
    if n == 0 {
        return;
    }
    loop {
        let mut took = false;
        for k in 0..n {
            let at = (*cursor + k) % n;
            for _ in 0..PER_ROUND {
                match read(partitions[at]) {
                    Step::Took => took = true,
                    Step::Empty => break,
                    Step::Stop => {
                        *cursor = (at + 1) % n;
                        return;
                    }
                }
            }
        }
        if !took {
            return;
        }
    }
}

impl PollState {
    fn push(&mut self, record: Record, bytes: usize, epoch: u64) {
        let open = &mut self.open;
        open.started.get_or_insert_with(Instant::now);
        open.epochs.insert(record.coords.partition, epoch);
        open.bytes += bytes;
        open.records.push(record);
        if open.records.len() >= self.limits.max_events || open.bytes >= self.limits.max_bytes {
            self.cut();
        }
    }

    fn cut(&mut self) {
        if !self.open.is_empty() {
            self.waiting.push_back(std::mem::take(&mut self.open));
        }
    }

    /// Cuts the open batch when it has lingered long enough and offers waiting batches to the
    /// sink. Returns whether the sink has room for more (no batch is waiting).
    fn tick(&mut self) -> bool {
        if self
            .open
            .started
            .is_some_and(|t| t.elapsed() >= self.limits.linger)
        {
            self.cut();
        }
        while let Some(batch) = self.waiting.pop_front() {
            match self.tx.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(batch)) => {
                    self.waiting.push_front(batch);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        let room = self.waiting.is_empty();
        let held = if room { 0 } else { self.queues.len() };
        self.metrics.paused_partitions(held);
        room
    }

    /// Reads what the partition queues hold, in small rounds across the partitions, until a
    /// batch has to wait for the sink or every queue is empty ([`round_robin`]).
    fn read_partitions(&mut self, context: &SourceContext, topic: &str) {
        let partitions: Vec<i32> = self.queues.keys().copied().collect();
        let mut cursor = self.cursor;
        round_robin(&partitions, &mut cursor, |p| {
            if !self.waiting.is_empty() {
                return Step::Stop;
            }
            let Some(queue) = self.queues.get(&p) else {
                return Step::Empty;
            };
            match queue.poll(Duration::ZERO) {
                Some(Ok(message)) => {
                    let (record, bytes) = record_of(&message, topic, context.redactor.as_deref());
                    let epoch = context.epoch(record.coords.partition);
                    self.push(record, bytes, epoch);
                    Step::Took
                }
                Some(Err(e)) => {
                    tracing::warn!(partition = p, error = %e, "kafka partition error");
                    Step::Empty
                }
                None => Step::Empty,
            }
        });
        self.cursor = cursor;
    }

    /// Hands every batch to the sink and waits until all are durable and acknowledged, then
    /// commits the stored offsets. Bounded by `drain_timeout`: past it, what is not durable
    /// is left to be consumed again by the next owner (writes are idempotent).
    fn drain(&mut self, consumer: &BaseConsumer<SourceContext>) {
        let deadline = Instant::now() + self.limits.drain_timeout;
        self.cut();
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        self.waiting.push_back(Batch {
            flushed: Some(done_tx),
            ..Batch::default()
        });
        let mut drained = false;
        while Instant::now() < deadline {
            if let Some(batch) = self.waiting.pop_front() {
                match self.tx.try_send(batch) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Full(batch)) => self.waiting.push_front(batch),
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
                std::thread::sleep(Duration::from_millis(5));
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                drained = done_rx.recv_timeout(left).is_ok();
                break;
            }
        }
        if !drained {
            tracing::warn!(
                timeout = ?self.limits.drain_timeout,
                "drain timed out: records not yet durable will be consumed again"
            );
        }
        // Whatever was not handed over belongs to the next owner now.
        self.waiting.clear();
        self.open = Batch::default();
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(e) => tracing::warn!(error = %e, "offset commit at drain failed"),
        }
    }
}

/// The running source: the poll thread and the acker the sink uses.
pub struct Source {
    pub acker: Acker,
    pub thread: std::thread::JoinHandle<()>,
}

/// Subscribes and starts the poll thread. Batches go to `tx`; the thread drains, commits and
/// leaves the group when `shutdown` is cancelled.
#[allow(clippy::too_many_arguments)]
pub fn start(
    config: &KafkaConfig,
    limits: BatchLimits,
    metrics: Metrics,
    tx: mpsc::Sender<Batch>,
    joined: Arc<AtomicBool>,
    redactor: Option<Redactor>,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) -> Result<Source, rdkafka::error::KafkaError> {
    let context = SourceContext {
        topic: config.topic.clone(),
        metrics: metrics.clone(),
        redactor: redactor.filter(Redactor::is_enabled).map(Arc::new),
        progress,
        joined,
        last_error_log: Mutex::new(None),
        lags: Mutex::new(BTreeMap::new()),
        consumer: OnceLock::new(),
        assignment: Mutex::new(Assignment::default()),
        state: Mutex::new(Some(PollState {
            limits,
            open: Batch::default(),
            waiting: VecDeque::new(),
            tx,
            cursor: 0,
            queues: BTreeMap::new(),
            metrics: metrics.clone(),
        })),
    };
    let consumer: BaseConsumer<SourceContext> =
        kafka::consumer_config(config).create_with_context(context)?;
    consumer.subscribe(&[&config.topic])?;
    let consumer = Arc::new(consumer);
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    let acker = Acker {
        consumer: consumer.clone(),
        topic: config.topic.clone(),
    };
    let topic = config.topic.clone();
    #[allow(
        clippy::expect_used,
        reason = "runs once at start, before any input; the OS refusing a thread is fatal"
    )]
    let thread = std::thread::Builder::new()
        .name("likerate-source".into())
        .spawn(move || poll_loop(consumer, topic, metrics, shutdown))
        .expect("spawn source thread");
    Ok(Source { acker, thread })
}

impl SourceContext {
    fn epoch(&self, partition: i32) -> u64 {
        let assignment = self
            .assignment
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assignment.epochs.get(&partition).copied().unwrap_or(0)
    }
}

/// A decoded record from a message, and its size.
fn record_of(
    message: &BorrowedMessage<'_>,
    topic: &str,
    redactor: Option<&Redactor>,
) -> (Record, usize) {
    let coords = Coordinates {
        partition: message.partition(),
        offset: message.offset(),
    };
    let payload_bytes = message.payload().unwrap_or_default();
    let origin = Origin {
        topic,
        partition: coords.partition,
        offset: coords.offset,
        received_at: Utc::now(),
    };
    let payload = match decode(payload_bytes, origin) {
        Ok(mut event) => {
            // LIKERATE_REDACT: personal data is replaced before the event reaches the sink.
            if let Some(r) = redactor {
                r.redact(&mut event);
            }
            Payload::Event(event)
        }
        Err(error) => Payload::Rejected(Rejected {
            error,
            payload: payload_bytes.to_vec(),
            key: message.key().map(<[u8]>::to_vec),
        }),
    };
    (Record { coords, payload }, payload_bytes.len())
}

fn poll_loop(
    consumer: Arc<BaseConsumer<SourceContext>>,
    topic: String,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let context = consumer.context().clone();
    while !shutdown.is_cancelled() {
        // Serves rebalances and client events (and counts as a poll for max.poll.interval);
        // messages arrive here only if fetched before their partition queue was split.
        let polled = consumer.poll(Duration::from_millis(10));
        let mut guard = context.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the shutdown below takes the state, after this loop.
        let Some(state) = guard.as_mut() else { break };
        match polled {
            Some(Ok(message)) => {
                let (record, bytes) = record_of(&message, &topic, context.redactor.as_deref());
                let epoch = context.epoch(record.coords.partition);
                state.push(record, bytes, epoch);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
            None => {}
        }
        if state.tick() {
            state.read_partitions(&context, &topic);
            state.tick();
        }
    }
    tracing::info!("source stopping: draining");
    if let Some(mut state) = context
        .state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        state.drain(&consumer);
        // The queues hold the consumer: release them before it closes.
        state.queues.clear();
    }
    consumer.unsubscribe();
    metrics.assigned_partitions(0);
    tracing::info!("source stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Reason;

    /// Cuts batches of `max` from six partitions that each hold `backlog` records, reading
    /// them as the poll thread does; returns the partitions of each batch's records.
    fn batches_of(backlog: usize, max: usize, count: usize) -> Vec<Vec<i32>> {
        let partitions = [0, 1, 2, 3, 4, 5];
        let mut left = [backlog; 6];
        let mut cursor = 0;
        let mut batches = Vec::new();
        for _ in 0..count {
            let mut batch = Vec::new();
            round_robin(&partitions, &mut cursor, |p| {
                if batch.len() >= max {
                    return Step::Stop;
                }
                let left = &mut left[p as usize];
                if *left == 0 {
                    return Step::Empty;
                }
                *left -= 1;
                batch.push(p);
                Step::Took
            });
            batches.push(batch);
        }
        batches
    }

    #[test]
    fn a_batch_takes_about_as_many_records_of_each_busy_partition() {
        for batch in batches_of(100_000, 5000, 20) {
            assert_eq!(batch.len(), 5000);
            let mut per_partition = [0usize; 6];
            for p in &batch {
                per_partition[*p as usize] += 1;
            }
            // 5,000 / 6 = 833 each, give or take one round.
            for n in per_partition {
                assert!(
                    (833 - PER_ROUND..=833 + PER_ROUND).contains(&n),
                    "{per_partition:?}"
                );
            }
            let lane0: usize = per_partition.iter().step_by(2).sum();
            assert!(
                lane0.abs_diff(2500) <= PER_ROUND,
                "lane 0 got {lane0} of 5000"
            );
        }
    }

    #[test]
    fn reading_goes_on_until_the_queues_are_empty_or_a_batch_waits() {
        // Fewer records than a batch: all of them are read in one call, over many rounds.
        let batches = batches_of(300, 5000, 2);
        assert_eq!(batches[0].len(), 1800);
        assert!(batches[1].is_empty());
        // No partitions: nothing to read, no endless loop.
        let mut cursor = 0;
        round_robin(&[], &mut cursor, |_| unreachable!("no partition to read"));
    }

    fn record(partition: i32, offset: i64) -> Record {
        Record {
            coords: Coordinates { partition, offset },
            payload: Payload::Rejected(Rejected {
                error: DecodeError::new(Reason::Empty, "test"),
                payload: Vec::new(),
                key: None,
            }),
        }
    }

    #[test]
    fn split_keeps_each_partition_in_one_lane_in_order() {
        let mut batch = Batch::default();
        for (p, o) in [
            (0, 10),
            (1, 20),
            (2, 30),
            (0, 11),
            (3, 40),
            (1, 21),
            (2, 31),
        ] {
            batch.records.push(record(p, o));
            batch.epochs.insert(p, 7 + p as u64);
        }
        let parts = batch.split(2);
        let lanes: Vec<usize> = parts.iter().map(|(lane, _)| *lane).collect();
        assert_eq!(lanes, vec![0, 1]);
        let coords = |b: &Batch| -> Vec<(i32, i64)> {
            b.records
                .iter()
                .map(|r| (r.coords.partition, r.coords.offset))
                .collect()
        };
        assert_eq!(
            coords(&parts[0].1),
            vec![(0, 10), (2, 30), (0, 11), (2, 31)]
        );
        assert_eq!(coords(&parts[1].1), vec![(1, 20), (3, 40), (1, 21)]);
        // Each part acknowledges only its own partitions, under the epochs they were read in.
        let mut even = parts.into_iter().next().unwrap().1;
        let ack = even.ack();
        assert_eq!(ack.positions.len(), 2);
        assert_eq!(ack.positions[&0], (12, 7));
        assert_eq!(ack.positions[&2], (32, 9));
    }

    #[test]
    fn a_drain_marker_stays_whole() {
        let (done, _rx) = std::sync::mpsc::sync_channel(1);
        let marker = Batch {
            flushed: Some(done),
            ..Batch::default()
        };
        let mut parts = marker.split(4);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].1.ack().flushed.is_some());
    }
}
