//! `likerate produce`: the demo traffic and the load generator.
//!
//! Synthetic events look like chat feedback (subjects, answers of 200 to 800 characters,
//! questions, models, a like ratio per subject), with optional shares of producer duplicates
//! (the same `event_id` again), re-votes (a later event with the same `vote_id`) and invalid
//! records; or the lines of a JSONL file, sent as they are.
//!
//! Guarantee: the command exits 0 only when every record was acknowledged by the broker
//! (acks=all), and prints what it sent.

use crate::config::KafkaConfig;
use crate::kafka;
use chrono::{Duration as ChronoDuration, Utc};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Events to send; 0 sends until interrupted
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Events per second; 0 sends as fast as the broker takes them
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Subjects, comma separated
    #[arg(
        long,
        default_value = "Math,Physics,Chemistry,Biology,History,Literature,Geography,Computer Science"
    )]
    pub subjects: String,
    /// Share of likes among votes (the rest split between dislikes and neutral, 3:1)
    #[arg(long, default_value_t = 0.9)]
    pub like_ratio: f64,
    /// Like ratio of one subject, SUBJECT=RATIO (repeatable), e.g. Math=0.6
    #[arg(long = "subject-like-ratio", value_name = "SUBJECT=RATIO")]
    pub subject_like_ratio: Vec<String>,
    /// Model versions, comma separated, picked uniformly; empty for none
    #[arg(long, default_value = "llama-3.2-3b,llama-3.2-3b-ft1")]
    pub models: String,
    /// Spread of created_at: uniform over [now - spread, now]
    #[arg(long, default_value = "0s")]
    pub spread: String,
    /// Share of events sent twice with the same event_id
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Share of events that re-vote an earlier vote_id with a later created_at
    #[arg(long, default_value_t = 0.0)]
    pub revotes: f64,
    /// Share of invalid records (bad JSON, bad rating, missing subject)
    #[arg(long, default_value_t = 0.0)]
    pub invalid: f64,
    /// Leave event_id out (likerate then derives it from topic/partition/offset)
    #[arg(long)]
    pub no_event_id: bool,
    /// Seed of the generator, for reproducible traffic
    #[arg(long)]
    pub seed: Option<u64>,
    /// Send the lines of this JSONL file instead of synthetic events
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// Counts acknowledged and failed deliveries.
#[derive(Default)]
struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
}

struct Context(Arc<Deliveries>);

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.acked.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!(error = %e, "delivery failed");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// What `produce` sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
}

/// Sends events; blocking (run it on a blocking thread).
pub fn produce(
    kafka_config: &KafkaConfig,
    args: &ProduceArgs,
    stop: CancellationToken,
) -> anyhow::Result<Produced> {
    let deliveries = Arc::new(Deliveries::default());
    let mut config = kafka::producer_config(kafka_config);
    config.set("linger.ms", "20");
    let producer: ThreadedProducer<Context> =
        config.create_with_context(Context(deliveries.clone()))?;
    let started = Instant::now();
    let mut sent = 0u64;
    {
        let mut send = |key: &[u8], payload: &[u8]| -> anyhow::Result<()> {
            let mut record = BaseRecord::to(&kafka_config.topic)
                .key(key)
                .payload(payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, r))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
            sent += 1;
            if args.rate > 0.0 {
                let due = started + Duration::from_secs_f64(sent as f64 / args.rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(())
        };
        match &args.file {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| anyhow::anyhow!("--file {}: {e}", path.display()))?;
                for line in std::io::BufReader::new(file).split(b'\n') {
                    let line = line?;
                    if line.iter().all(u8::is_ascii_whitespace) || stop.is_cancelled() {
                        continue;
                    }
                    send(b"", &line)?;
                }
            }
            None => {
                let mut generator = Generator::new(args)?;
                while (args.count == 0 || generator.produced < args.count) && !stop.is_cancelled() {
                    let (key, payload) = generator.next_record();
                    send(key.as_bytes(), &payload)?;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(Produced {
        sent,
        acked: deliveries.acked.load(Ordering::Relaxed),
        failed: deliveries.failed.load(Ordering::Relaxed),
    })
}

const WORDS: &[&str] = &[
    "the",
    "answer",
    "depends",
    "on",
    "energy",
    "force",
    "equation",
    "derivative",
    "integral",
    "because",
    "therefore",
    "consider",
    "example",
    "velocity",
    "reaction",
    "molecule",
    "cell",
    "evolution",
    "empire",
    "treaty",
    "novel",
    "metaphor",
    "river",
    "climate",
    "algorithm",
    "function",
    "variable",
    "proof",
    "theorem",
    "first",
    "second",
    "finally",
    "which",
    "means",
    "we",
    "can",
    "see",
    "that",
    "this",
    "is",
    "a",
    "simple",
    "step",
    "result",
    "so",
];

/// The synthetic event generator.
pub struct Generator {
    rng: StdRng,
    subjects: Vec<(String, f64)>,
    models: Vec<String>,
    spread: ChronoDuration,
    duplicates: f64,
    revotes: f64,
    invalid: f64,
    no_event_id: bool,
    recent: Vec<(String, Vec<u8>)>,
    recent_votes: Vec<(String, String, String)>,
    pub produced: u64,
}

impl Generator {
    pub fn new(args: &ProduceArgs) -> anyhow::Result<Generator> {
        let ratio = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(anyhow::anyhow!("{name} must be between 0 and 1, got {v}"))
            }
        };
        let like_ratio = ratio("--like-ratio", args.like_ratio)?;
        let mut subjects: Vec<(String, f64)> = args
            .subjects
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| (s.to_owned(), like_ratio))
            .collect();
        if subjects.is_empty() {
            anyhow::bail!("--subjects must name at least one subject");
        }
        for spec in &args.subject_like_ratio {
            let (name, value) = spec.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--subject-like-ratio {spec:?} is not SUBJECT=RATIO")
            })?;
            let value: f64 = value
                .parse()
                .map_err(|_| anyhow::anyhow!("--subject-like-ratio {spec:?}: not a number"))?;
            let value = ratio("--subject-like-ratio", value)?;
            match subjects.iter_mut().find(|(s, _)| s == name) {
                Some(entry) => entry.1 = value,
                None => subjects.push((name.to_owned(), value)),
            }
        }
        let spread = humantime::parse_duration(&args.spread)
            .map_err(|e| anyhow::anyhow!("--spread {:?}: {e}", args.spread))?;
        Ok(Generator {
            rng: match args.seed {
                Some(s) => StdRng::seed_from_u64(s),
                None => StdRng::from_os_rng(),
            },
            subjects,
            models: args
                .models
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            spread: ChronoDuration::from_std(spread)?,
            duplicates: ratio("--duplicates", args.duplicates)?,
            revotes: ratio("--revotes", args.revotes)?,
            invalid: ratio("--invalid", args.invalid)?,
            no_event_id: args.no_event_id,
            recent: Vec::new(),
            recent_votes: Vec::new(),
            produced: 0,
        })
    }

    fn text(&mut self, min: usize, max: usize) -> String {
        let target = self.rng.random_range(min..=max);
        let mut s = String::with_capacity(target + 16);
        while s.len() < target {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(WORDS[self.rng.random_range(0..WORDS.len())]);
        }
        s.truncate(target);
        s
    }

    /// The next record: (key, value).
    pub fn next_record(&mut self) -> (String, Vec<u8>) {
        self.produced += 1;
        if !self.recent.is_empty() && self.rng.random_bool(self.duplicates) {
            let i = self.rng.random_range(0..self.recent.len());
            return self.recent[i].clone();
        }
        if self.rng.random_bool(self.invalid) {
            let bad: &[u8] = match self.rng.random_range(0..3) {
                0 => b"{\"subject_id\": \"Math\", \"rating\": ",
                1 => b"{\"subject_id\":\"Math\",\"assistant_message\":\"x\",\"rating\":2,\"created_at\":\"2026-02-05T10:30:00Z\"}",
                _ => b"{\"assistant_message\":\"x\",\"rating\":1,\"created_at\":\"2026-02-05T10:30:00Z\"}",
            };
            return ("invalid".to_owned(), bad.to_vec());
        }
        let mut created_at = Utc::now();
        if self.spread > ChronoDuration::zero() {
            let ms = self.rng.random_range(0..=self.spread.num_milliseconds());
            created_at -= ChronoDuration::milliseconds(ms);
        }
        let (subject, conversation, vote_id) =
            if !self.recent_votes.is_empty() && self.rng.random_bool(self.revotes) {
                let i = self.rng.random_range(0..self.recent_votes.len());
                // A re-vote happens after the vote it replaces.
                created_at = Utc::now() + ChronoDuration::seconds(1);
                self.recent_votes[i].clone()
            } else {
                let s = self.rng.random_range(0..self.subjects.len());
                let vote = (
                    self.subjects[s].0.clone(),
                    uuid::Uuid::new_v4().to_string(),
                    uuid::Uuid::new_v4().to_string(),
                );
                if self.recent_votes.len() < 1000 {
                    self.recent_votes.push(vote.clone());
                } else {
                    let i = self.rng.random_range(0..1000);
                    self.recent_votes[i] = vote.clone();
                }
                vote
            };
        let like_ratio = self
            .subjects
            .iter()
            .find(|(s, _)| *s == subject)
            .map(|(_, r)| *r)
            .unwrap_or(0.9);
        let rating = if self.rng.random_bool(like_ratio) {
            1
        } else if self.rng.random_bool(0.75) {
            -1
        } else {
            0
        };
        let question = format!("Question about {subject}: {}?", self.text(20, 80));
        let answer = self.text(200, 800);
        let mut event = serde_json::json!({
            "subject_id": subject,
            "user_question": question,
            "assistant_message": answer,
            "rating": rating,
            "message_index": self.rng.random_range(0..20),
            "created_at": created_at.to_rfc3339(),
            "conversation_id": conversation,
            "vote_id": vote_id,
        });
        if !self.models.is_empty() {
            let m = &self.models[self.rng.random_range(0..self.models.len())];
            event["model"] = serde_json::Value::String(m.clone());
        }
        if !self.no_event_id {
            event["event_id"] = serde_json::Value::String(uuid::Uuid::new_v4().to_string());
        }
        let record = (conversation, event.to_string().into_bytes());
        if self.recent.len() < 1000 {
            self.recent.push(record.clone());
        } else {
            let i = self.rng.random_range(0..1000);
            self.recent[i] = record.clone();
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    #[test]
    fn synthetic_events_decode_and_follow_the_ratio() {
        let cli = Cli::parse_from([
            "x",
            "--seed",
            "7",
            "--like-ratio",
            "0.8",
            "--subjects",
            "Math",
        ]);
        let mut g = Generator::new(&cli.args).unwrap();
        let mut likes = 0;
        for offset in 0..2000 {
            let (_, payload) = g.next_record();
            let origin = crate::decode::Origin {
                topic: "t",
                partition: 0,
                offset,
                received_at: Utc::now(),
            };
            let e = crate::decode::decode(&payload, origin).unwrap();
            assert_eq!(e.subject_id.as_str(), "Math");
            let len = e.assistant_message.as_str().len();
            assert!((200..=800).contains(&len), "{len}");
            likes += i32::from(e.rating == crate::event::Rating::Like);
        }
        assert!((1500..1700).contains(&likes), "{likes}");
    }
}
