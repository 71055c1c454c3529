//! The `scale` mode of the pipeline benchmark (issue 14): does the cost per event hold when
//! the table already holds tens of millions of rows? `LIKERATE_BENCH_MODE=scale` (or
//! `deploy/local/bench.sh scale`) runs this instead of phases a..g. One run:
//!
//! 1. M events (`LIKERATE_BENCH_EVENTS`, default 300,000 here: the generator with 5% re-votes
//!    and 1% duplicates) are made once and produced to a fresh 6-partition topic.
//! 2. a. `likerate run` drains them into a fresh empty database (fresh consumer group).
//! 3. A database migrated by likerate's own migrations gets N historical rows
//!    (`LIKERATE_BENCH_SCALE`, default 10,000,000; [`Bench::preload`]), then
//!    b. `likerate run` drains the same M events into it (fresh group), and, against that
//!    still running process, the read API is measured: `export` (pages of 1000 from the
//!    start) and `training-data` (the newest rows) of `LIKERATE_BENCH_EXPORT_ROWS` (default
//!    1,000,000) rows, rows/s and the process's RSS; then `stats`, `daily`, `compare` p50/p99
//!    (`LIKERATE_BENCH_READ_SAMPLES` requests per shape, default 1000, each shape stopping
//!    after `LIKERATE_BENCH_READ_BUDGET` seconds, default 60).
//! 4. c. a raw binary `COPY` of the same distinct rows (on as many connections as the sink
//!    uses, rows split by partition) into an empty database of today's unpartitioned schema,
//!    migrations 0001 to 0004 (later migrations are not applied), so this reference does not
//!    move when likerate's schema does; d. the same into such a database after the same N-row preload.
//! 5. Figures and ratios, with the cluster's WAL (`pg_stat_wal`) and checkpoint
//!    (`pg_stat_bgwriter`) deltas per phase: these are cluster-wide, so other users of the
//!    cluster show up in them (point `LIKERATE_BENCH_PG` at a cluster of your own for clean
//!    figures). Each measured phase starts after a `CHECKPOINT`.
//!
//! The preload is schema-agnostic: it records the definitions of `feedback`'s primary key,
//! unique and exclusion constraints and its other indexes (`pg_get_constraintdef`,
//! `pg_get_indexdef`), drops them, loads with plain `INSERT INTO feedback (the contract's
//! columns) SELECT ... FROM generate_series(...)` on two connections, builds the bookkeeping
//! the sink would have left (the `vote_slot` flag is set on each vote's first event by the
//! load itself; a `feedback_vote` row per re-voted vote id, its current vote; the minute, hour
//! and day rollups recomputed from the current votes), recreates the constraints and indexes,
//! then `VACUUM (ANALYZE)` and `CHECKPOINT`. The rows: `created_at` spread over the last 30
//! days in id order, `ingested_at` up to 2 s later, 8 subjects, 2 models, answers of 200 to 800
//! characters and questions of 20 to 80 cut from the generator's own text, one vote id in 20
//! re-voted once (a later event, stored after all first votes), a conversation per vote.

use super::*;

/// The schema the raw COPY reference writes into: today's, frozen.
/// Migrations are never edited once released, so these four are today's schema for good.
const REFERENCE_SCHEMA: &str = concat!(
    include_str!("../../schemas/migrations/0001_feedback.sql"),
    include_str!("../../schemas/migrations/0002_votes_and_rollups.sql"),
    include_str!("../../schemas/migrations/0003_operations.sql"),
    include_str!("../../schemas/migrations/0004_vote_slot.sql"),
);
/// One vote id in this many gets a re-vote in the preload.
const REVOTE_EVERY: i64 = 20;
/// Rows per preload statement.
const CHUNK: i64 = 250_000;
/// The bearer token of the likerate processes the benchmark starts (export routes).
pub const EXPORT_TOKEN: &str = "bench-export-token-0123456789";

/// Whether this run is the scale mode.
pub fn chosen() -> bool {
    std::env::var("LIKERATE_BENCH_MODE").as_deref() == Ok("scale")
}

/// One preloaded row `i` (1-based) of `$4` rows of which the first `$5` are first votes; the
/// rest re-vote vote `REVOTE_EVERY * (i - $5)`. `$1` texts of at least 800 characters to cut
/// answers and questions from (the start of one: `substr` at an offset would scan the text),
/// `$2`/`$3` the rows of this statement, `$6` subjects, `$7` models, `$8` the start of the
/// history, `$9` its length in seconds.
const PRELOAD: &str = "
INSERT INTO feedback (event_id, subject_id, message_content, user_question, rating,
                      message_index, created_at, model, conversation_id, vote_id, kafka_topic,
                      kafka_partition, kafka_offset, ingested_at, vote_slot)
SELECT md5('e' || i || '/' || $4::int8)::uuid, subj,
       left(($1::text[])[1 + (i % cardinality($1::text[]))::int], 200 + (random() * 600)::int),
       'Question about ' || subj || ': '
         || left(($1::text[])[1 + ((i * 7 + 3) % cardinality($1::text[]))::int], 20 + (random() * 60)::int) || '?',
       (CASE WHEN random() < CASE WHEN subj = 'Math' THEN 0.7 ELSE 0.9 END THEN 1
             WHEN random() < 0.75 THEN -1 ELSE 0 END)::int2,
       (i % 20)::int4, ts, ($7::text[])[1 + (i % cardinality($7::text[]))::int],
       md5('c' || j || '/' || $4::int8)::uuid::text, md5('v' || j || '/' || $4::int8)::uuid::text,
       'bench-history', (i % 6)::int4, i / 6, ts + random() * interval '2 seconds', i <= $5::int8
FROM generate_series($2::int8, $3::int8) AS i,
     LATERAL (SELECT CASE WHEN i <= $5::int8 THEN i ELSE REVOTE_EVERY * (i - $5::int8) END AS j) v,
     LATERAL (SELECT ($6::text[])[1 + (j % cardinality($6::text[]))::int] AS subj,
                     $8::timestamptz + (j::float8 / $5::int8) * $9::float8 * interval '1 second'
                       AS first_at) s,
     LATERAL (SELECT CASE WHEN i <= $5::int8 THEN first_at
                          ELSE first_at + random() * ($8::timestamptz
                                 + $9::float8 * interval '1 second' - first_at) END AS ts) t";

/// The bookkeeping the sink leaves, from the stored rows (see
/// `schemas/migrations/0004_vote_slot.sql`): a vote id with more than one event (one that
/// has an event without the slot) gets a `feedback_vote` row, its newest event; the rollups
/// count each vote id's current vote (that row, else the slot holder) and every event without
/// a vote id, per UTC minute, then hour and day.
const BOOKKEEPING: [&str; 4] = [
    "INSERT INTO feedback_vote (vote_id, event_id, created_at, subject_id, model, rating)
     SELECT DISTINCT ON (f.vote_id) f.vote_id, f.event_id, f.created_at, f.subject_id,
            coalesce(f.model, ''), f.rating
     FROM feedback f
     WHERE f.vote_id IN (SELECT vote_id FROM feedback WHERE NOT vote_slot AND vote_id IS NOT NULL)
     ORDER BY f.vote_id, f.created_at DESC, f.event_id DESC",
    "INSERT INTO feedback_rollup (grain, bucket, subject_id, model, likes, dislikes, neutral)
     SELECT 'm', date_trunc('minute', c.created_at), c.subject_id, c.model,
            count(*) FILTER (WHERE c.rating = 1), count(*) FILTER (WHERE c.rating = -1),
            count(*) FILTER (WHERE c.rating = 0)
     FROM (SELECT coalesce(v.created_at, f.created_at) AS created_at,
                  coalesce(v.subject_id, f.subject_id) AS subject_id,
                  CASE WHEN v.vote_id IS NULL THEN coalesce(f.model, '') ELSE v.model END AS model,
                  coalesce(v.rating, f.rating) AS rating
           FROM feedback f LEFT JOIN feedback_vote v ON f.vote_slot AND v.vote_id = f.vote_id
           WHERE f.vote_slot OR f.vote_id IS NULL) c
     GROUP BY 2, 3, 4",
    "INSERT INTO feedback_rollup (grain, bucket, subject_id, model, likes, dislikes, neutral)
     SELECT 'h', date_trunc('hour', bucket), subject_id, model, sum(likes), sum(dislikes),
            sum(neutral)
     FROM feedback_rollup WHERE grain = 'm' GROUP BY 2, 3, 4",
    "INSERT INTO feedback_rollup (grain, bucket, subject_id, model, likes, dislikes, neutral)
     SELECT 'd', date_trunc('day', bucket), subject_id, model, sum(likes), sum(dislikes),
            sum(neutral)
     FROM feedback_rollup WHERE grain = 'h' GROUP BY 2, 3, 4",
];

/// The cluster's cumulative WAL and checkpoint counters.
#[derive(Clone, Copy, Default)]
struct PgCounters {
    wal_records: i64,
    fpi: i64,
    wal_bytes: i64,
    checkpoints_timed: i64,
    checkpoints_req: i64,
}

impl PgCounters {
    async fn read(client: &Client) -> anyhow::Result<PgCounters> {
        let row = client
            .query_one(
                "SELECT w.wal_records, w.wal_fpi, w.wal_bytes::int8, b.checkpoints_timed,
                        b.checkpoints_req
                 FROM pg_stat_wal w, pg_stat_bgwriter b",
                &[],
            )
            .await?;
        Ok(PgCounters {
            wal_records: row.get(0),
            fpi: row.get(1),
            wal_bytes: row.get(2),
            checkpoints_timed: row.get(3),
            checkpoints_req: row.get(4),
        })
    }

    fn since(self, before: PgCounters) -> PgCounters {
        PgCounters {
            wal_records: self.wal_records - before.wal_records,
            fpi: self.fpi - before.fpi,
            wal_bytes: self.wal_bytes - before.wal_bytes,
            checkpoints_timed: self.checkpoints_timed - before.checkpoints_timed,
            checkpoints_req: self.checkpoints_req - before.checkpoints_req,
        }
    }
}

/// One measured write phase.
struct Phase {
    name: String,
    rows: u64,
    rate: f64,
    seconds: f64,
    wal: PgCounters,
    note: String,
}

/// What a preload took.
struct Preloaded {
    rows: i64,
    load_s: f64,
    bookkeeping_s: f64,
    indexes_s: f64,
    vacuum_s: f64,
    /// Computing the conversation units of the settled days (likerate's schema only).
    units_s: f64,
    wal: PgCounters,
    note: String,
}

impl Preloaded {
    fn seconds(&self) -> f64 {
        self.load_s + self.bookkeeping_s + self.indexes_s + self.vacuum_s + self.units_s
    }

    fn line(&self, db: &str) -> String {
        format!(
            "{} rows into {db} in {:.0} s: load {:.0} s ({} rows/s), bookkeeping {:.0} s, constraints and indexes {:.0} s, VACUUM ANALYZE + CHECKPOINT {:.0} s, conversation units {:.0} s; WAL {} MB, {} full-page images, checkpoints {} requested / {} timed; {}",
            thousands(self.rows as f64),
            self.seconds(),
            self.load_s,
            thousands(self.rows as f64 / self.load_s),
            self.bookkeeping_s,
            self.indexes_s,
            self.vacuum_s,
            self.units_s,
            thousands(self.wal.wal_bytes as f64 / 1e6),
            thousands(self.wal.fpi as f64),
            self.wal.checkpoints_req,
            self.wal.checkpoints_timed,
            self.note
        )
    }
}

/// The read API on the loaded database.
#[derive(Default)]
struct Reads {
    latency: Vec<(String, usize, usize, f64, f64)>,
    export_rows: u64,
    export_s: f64,
    export_rss_mb: f64,
    export_rss_start_mb: f64,
    training_lines: u64,
    training_range_rows: i64,
    training_s: f64,
    training_rss_mb: f64,
    training_rss_start_mb: f64,
    rss_before_mb: f64,
    hwm_mb: f64,
}

/// Runs `f` while a thread samples the VmRSS of `pid` every 20 ms; returns its result and the
/// largest VmRSS seen, in MB (the first sample is taken before `f` starts).
fn with_rss<T>(pid: u32, f: impl FnOnce() -> T) -> (T, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                max = max.max(rss_kb(pid).map_or(0, |r| r.0));
                std::thread::sleep(Duration::from_millis(20));
            }
            max
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    let max = sampler.join().unwrap_or(0);
    (out, max as f64 / 1024.0)
}

impl Bench<'_> {
    pub(super) fn run_scale(&mut self) -> anyhow::Result<()> {
        let n = env_u64("LIKERATE_BENCH_SCALE", 10_000_000).max(1000) as i64;
        let m = env_u64("LIKERATE_BENCH_EVENTS", 300_000).max(1000);
        let export_rows = env_u64("LIKERATE_BENCH_EXPORT_ROWS", 1_000_000).min(n as u64);
        let samples = env_u64("LIKERATE_BENCH_READ_SAMPLES", 1000).max(10) as usize;
        let lanes = sink_connections();
        self.results.n = m;
        say(format!(
            "pipeline benchmark, scale mode: N = {} stored rows, M = {} events, run id {}, logs in {}",
            thousands(n as f64),
            thousands(m as f64),
            self.id,
            self.log_dir.display()
        ));
        let settings = self.rt.block_on(self.cluster_settings())?;
        say(format!("PostgreSQL {}", settings));
        let run_started = Instant::now();
        self.start_broker()?;
        let topic = format!("bench-{}", self.id);
        let kafka = self.kafka(&topic);
        self.rt.block_on(likerate::kafka::ensure_topics(&kafka))?;
        let args = ProduceArgs {
            revotes: 0.05,
            ..generator_args(42, SUBJECTS, 0.9, 0.01)
        };
        let produced = self.produce_events(&kafka, m, &args)?;
        let distinct_votes = {
            let mut ids = HashSet::new();
            for &i in &produced.first {
                let e = &produced.events[i];
                ids.insert(
                    e.vote_id
                        .as_ref()
                        .map_or_else(|| e.event_id.to_string(), |v| v.as_str().to_owned()),
                );
            }
            ids.len() as i64
        };
        // The texts the preload cuts answers and questions from: the generator's own words.
        let corpus = {
            let mut g = Generator::new(&generator_args(5, SUBJECTS, 0.9, 0.0))?;
            let mut texts = Vec::new();
            let mut text = String::new();
            while texts.len() < 251 {
                let (_, v) = g.next_record();
                text.push_str(decode(&v, origin(&topic))?.assistant_message.as_str());
                text.push(' ');
                if text.len() >= 800 {
                    texts.push(std::mem::take(&mut text));
                }
            }
            texts
        };
        let mut phases = Vec::new();

        // a. likerate into an empty database.
        let empty = format!("likerate_bench_{}_scale_empty", self.id);
        self.databases.push(empty.clone());
        self.rt.block_on(self.empty_database(&empty))?;
        say("a. likerate run into a fresh empty database, fresh group");
        let a = self.drain_phase(
            &topic,
            m,
            &empty,
            "empty",
            Stored::default(),
            distinct_votes,
        )?;
        phases.push(a.phase("a. likerate, empty database"));
        a.app.stop();
        self.drop_database(&empty);

        // b. likerate into the preloaded database, then the read API on it.
        let loaded = format!("likerate_bench_{}_scale_loaded", self.id);
        self.databases.push(loaded.clone());
        self.rt.block_on(self.fresh_database(&loaded))?;
        say(format!(
            "preloading {} rows into {loaded} (likerate's schema)",
            thousands(n as f64)
        ));
        let pre_l = self.preload(&loaded, n, &corpus)?;
        say(format!("   {}", pre_l.line(&loaded)));
        let before = self.rt.block_on(Stored::mark(&self.db_url(&loaded)))?;
        say(format!(
            "b. likerate run into {loaded} ({} rows), fresh group",
            thousands(n as f64)
        ));
        let b = self.drain_phase(&topic, m, &loaded, "loaded", before, distinct_votes)?;
        phases.push(b.phase(&format!("b. likerate, {} stored rows", thousands(n as f64))));
        let sizes = self.rt.block_on(sizes(&self.db_url(&loaded)))?;
        let reads = self.reads(&b.app, &loaded, &args, export_rows, samples)?;
        b.app.stop();
        self.drop_database(&loaded);

        // c, d. Raw COPY into today's schema, empty and preloaded.
        let slot = vote_slots(&produced);
        let copy = |bench: &mut Self, db: &str, name: String| -> anyhow::Result<Phase> {
            let (seconds, wal) = bench.measured(db, |bench| {
                bench.copy_into(db, &topic, &produced, &slot, lanes)
            })?;
            let rows = produced.first.len() as u64;
            say(format!(
                "   {} rows in {seconds:.1} s: {} rows/s; WAL {} MB, {} full-page images",
                thousands(rows as f64),
                thousands(rows as f64 / seconds),
                thousands(wal.wal_bytes as f64 / 1e6),
                thousands(wal.fpi as f64)
            ));
            Ok(Phase {
                name,
                rows,
                rate: rows as f64 / seconds,
                seconds,
                wal,
                note: format!("binary COPY on {lanes} connection(s)"),
            })
        };
        let reference = format!("likerate_bench_{}_scale_ref", self.id);
        self.databases.push(reference.clone());
        self.reference_database(&reference)?;
        say(format!(
            "c. raw COPY into an empty database of today's schema ({lanes} connections)"
        ));
        phases.push(copy(
            self,
            &reference,
            "c. raw COPY, today's schema, empty".into(),
        )?);
        self.reference_database(&reference)?;
        say(format!(
            "preloading {} rows into {reference} (today's schema)",
            thousands(n as f64)
        ));
        let pre_r = self.preload(&reference, n, &corpus)?;
        say(format!("   {}", pre_r.line(&reference)));
        say(format!(
            "d. raw COPY into {reference} ({} rows, today's schema)",
            thousands(n as f64)
        ));
        phases.push(copy(
            self,
            &reference,
            format!(
                "d. raw COPY, today's schema, {} stored rows",
                thousands(n as f64)
            ),
        )?);
        self.drop_database(&reference);

        self.print_scale(&ScaleReport {
            n,
            m,
            settings,
            phases,
            preloads: vec![
                pre_l.line("likerate's schema"),
                pre_r.line("today's schema"),
            ],
            sizes,
            reads,
            export_target_rows: export_rows,
            samples,
            wall_s: run_started.elapsed().as_secs_f64(),
        });
        Ok(())
    }

    /// The settings issue 14 item 3 is about, as the cluster has them.
    async fn cluster_settings(&self) -> anyhow::Result<String> {
        let client = connect(&format!("{}/postgres", self.pg_base)).await?;
        let rows = client
            .query(
                "SELECT name, current_setting(name) FROM pg_settings
                 WHERE name IN ('server_version', 'shared_buffers', 'max_wal_size',
                   'min_wal_size', 'checkpoint_timeout', 'checkpoint_completion_target',
                   'wal_compression', 'synchronous_commit', 'full_page_writes')
                 ORDER BY name = 'server_version' DESC, name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
            .join(", "))
    }

    /// Creates `db` anew with the frozen reference schema.
    fn reference_database(&mut self, db: &str) -> anyhow::Result<()> {
        self.rt.block_on(async {
            self.empty_database(db).await?;
            connect(&self.db_url(db))
                .await?
                .batch_execute(REFERENCE_SCHEMA)
                .await?;
            Ok(())
        })
    }

    /// `CHECKPOINT`, then `f`, with the cluster's WAL and checkpoint counters around it.
    fn measured<T>(
        &mut self,
        db: &str,
        f: impl FnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, PgCounters)> {
        let url = self.db_url(db);
        let client = self.rt.block_on(async {
            let client = connect(&url).await?;
            client.batch_execute("CHECKPOINT").await?;
            // The checkpointer counts a checkpoint just after the command returns.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, anyhow::Error>(client)
        })?;
        let before = self.rt.block_on(PgCounters::read(&client))?;
        let out = f(self)?;
        let after = self.rt.block_on(PgCounters::read(&client))?;
        Ok((out, after.since(before)))
    }

    /// A drain by `likerate run` into `db` (see [`Bench::drain`]), checked: the rows it added
    /// are the distinct events, once each, and the minute rollups gained one vote per distinct
    /// vote id (`votes`).
    fn drain_phase(
        &mut self,
        topic: &str,
        m: u64,
        db: &str,
        tag: &str,
        before: Stored,
        votes: i64,
    ) -> anyhow::Result<DrainPhase> {
        let (d, wal) = self.measured(db, |bench| bench.drain(topic, m, db, tag))?;
        let s = self.rt.block_on(Stored::since(&self.db_url(db), before))?;
        let distinct = self.results.distinct as i64;
        let added_votes = s.votes - before.votes;
        let ok = s.rows == distinct && s.distinct == s.rows && added_votes == votes;
        let check = format!(
            "{} rows added ({} distinct ids), {} votes added to the minute rollups, expected {} and {}: {}",
            thousands(s.rows as f64),
            thousands(s.distinct as f64),
            thousands(added_votes as f64),
            thousands(distinct as f64),
            thousands(votes as f64),
            if ok { "OK" } else { "MISMATCH" }
        );
        let per_event_us = d.batches.2 / d.batches.1.max(1.0) * 1e6;
        say(format!(
            "   {} events in {:.1} s ({:.1} s to the first commit): {} events/s after the first commit; {check}",
            thousands(m as f64),
            d.wall,
            d.first_commit_s,
            thousands(d.rate)
        ));
        say(format!(
            "   sink: {}; WAL {} MB, {} full-page images, checkpoints {} requested / {} timed",
            batch_report((0.0, 0.0, 0.0), d.batches, d.wall),
            thousands(wal.wal_bytes as f64 / 1e6),
            thousands(wal.fpi as f64),
            wal.checkpoints_req,
            wal.checkpoints_timed
        ));
        for l in &d.cpu {
            say(format!("   cpu: {l}"));
        }
        if !ok {
            d.app.stop();
            anyhow::bail!("likerate's rows in {db} do not match: {check}");
        }
        let note = format!(
            "{per_event_us:.0} µs per event inside the sink's transactions; max RSS {:.0} MB",
            d.max_rss_mb
        );
        Ok(DrainPhase {
            rows: m,
            rate: d.rate,
            seconds: d.wall,
            wal,
            note,
            app: d.app,
        })
    }

    /// Fills `db`'s `feedback` with `n` historical rows and the bookkeeping they leave (see
    /// the module's opening comment).
    fn preload(&mut self, db: &str, n: i64, corpus: &[String]) -> anyhow::Result<Preloaded> {
        let url = self.db_url(db);
        let subjects: Vec<String> = SUBJECTS.split(',').map(str::to_owned).collect();
        let models: Vec<String> = generator_args(0, SUBJECTS, 0.9, 0.0)
            .models
            .split(',')
            .map(str::to_owned)
            .collect();
        let revotes = n / (REVOTE_EVERY + 1);
        let first_votes = n - revotes;
        let span_s = 30.0 * 86_400.0 - 60.0;
        let start = Utc::now() - chrono::Duration::days(30);
        let lanes = 2usize;
        self.rt.block_on(async move {
            let session = "SET TIME ZONE 'UTC'; SET synchronous_commit = off;
                           SET maintenance_work_mem = '1GB'";
            let client = connect(&url).await?;
            client.batch_execute(session).await?;
            let before = PgCounters::read(&client).await?;
            let constraints: Vec<(String, String)> = client
                .query(
                    "SELECT quote_ident(conname), pg_get_constraintdef(oid) FROM pg_constraint
                     WHERE conrelid = 'feedback'::regclass AND contype IN ('p', 'u', 'x')",
                    &[],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let indexes: Vec<(String, String)> = client
                .query(
                    "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
                     FROM pg_index i
                     WHERE i.indrelid = 'feedback'::regclass
                       AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                                       WHERE k.conrelid = i.indrelid
                                         AND k.conindid = i.indexrelid)",
                    &[],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            for (name, _) in &indexes {
                client.batch_execute(&format!("DROP INDEX {name}")).await?;
            }
            for (name, _) in &constraints {
                client
                    .batch_execute(&format!("ALTER TABLE feedback DROP CONSTRAINT {name}"))
                    .await?;
            }
            let sql = PRELOAD.replace("REVOTE_EVERY", &REVOTE_EVERY.to_string());
            let t = Instant::now();
            let chunks: Vec<(i64, i64)> = (0..(n + CHUNK - 1) / CHUNK)
                .map(|c| (c * CHUNK + 1, ((c + 1) * CHUNK).min(n)))
                .collect();
            let done = AtomicU64::new(0);
            let lane = |l: usize| {
                let (url, sql, chunks, done) = (&url, &sql, &chunks, &done);
                let (subjects, models) = (&subjects, &models);
                async move {
                    let c = connect(url).await?;
                    c.batch_execute(session).await?;
                    let statement = c.prepare(sql).await?;
                    for &(lo, hi) in chunks.iter().skip(l).step_by(lanes) {
                        c.execute(
                            &statement,
                            &[
                                &corpus,
                                &lo,
                                &hi,
                                &n,
                                &first_votes,
                                subjects,
                                models,
                                &start,
                                &span_s,
                            ],
                        )
                        .await?;
                        let rows = done.fetch_add((hi - lo + 1) as u64, Ordering::Relaxed)
                            + (hi - lo + 1) as u64;
                        if (rows / CHUNK as u64).is_multiple_of(8) {
                            say(format!(
                                "   {} of {} rows, {:.0} s",
                                thousands(rows as f64),
                                thousands(n as f64),
                                t.elapsed().as_secs_f64()
                            ));
                        }
                    }
                    Ok::<_, anyhow::Error>(())
                }
            };
            futures::future::try_join_all((0..lanes).map(lane)).await?;
            let load_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for statement in BOOKKEEPING {
                client.batch_execute(statement).await?;
            }
            let bookkeeping_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for (name, def) in &constraints {
                client
                    .batch_execute(&format!("ALTER TABLE feedback ADD CONSTRAINT {name} {def}"))
                    .await?;
            }
            for (_, def) in &indexes {
                client.batch_execute(def).await?;
            }
            let indexes_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for table in ["feedback", "feedback_vote", "feedback_rollup"] {
                client
                    .batch_execute(&format!("VACUUM (ANALYZE) {table}"))
                    .await?;
            }
            client.batch_execute("CHECKPOINT").await?;
            let vacuum_s = t.elapsed().as_secs_f64();
            // The sums of the settled days that a running likerate keeps for compare.
            let t = Instant::now();
            let mut client = client;
            let kept: bool = client
                .query_one("SELECT to_regclass('feedback_unit_day') IS NOT NULL", &[])
                .await?
                .get(0);
            let unit_days = if kept {
                likerate::units::compute_pending(&mut client, &tokio_util::sync::CancellationToken::new())
                    .await?
            } else {
                0
            };
            let units_s = t.elapsed().as_secs_f64();
            let wal = PgCounters::read(&client).await?.since(before);
            // What the bookkeeping must hold, by construction of the rows.
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM feedback_vote),
                            (SELECT array_agg(s ORDER BY g) FROM (
                               SELECT grain AS g, sum(likes + dislikes + neutral)::int8 AS s
                               FROM feedback_rollup GROUP BY grain) x)",
                    &[],
                )
                .await?;
            let (votes_rows, grains): (i64, Vec<i64>) = (row.get(0), row.get(1));
            anyhow::ensure!(
                votes_rows == revotes && grains.iter().all(|&g| g == first_votes),
                "preload bookkeeping: {votes_rows} feedback_vote rows (expected {revotes}), \
                 votes per grain {grains:?} (expected {first_votes} each)"
            );
            Ok(Preloaded {
                rows: n,
                load_s,
                bookkeeping_s,
                indexes_s,
                vacuum_s,
                units_s,
                wal,
                note: format!(
                    "{} vote ids, {} re-voted ({} feedback_vote rows), {} constraints and {} indexes rebuilt, conversation units of {unit_days} days",
                    thousands(first_votes as f64),
                    thousands(revotes as f64),
                    thousands(votes_rows as f64),
                    constraints.len(),
                    indexes.len()
                ),
            })
        })
    }

    /// The read API against the running likerate `app` on `db`.
    fn reads(
        &mut self,
        app: &Likerate,
        db: &str,
        args: &ProduceArgs,
        export_rows: u64,
        samples: usize,
    ) -> anyhow::Result<Reads> {
        let base = format!("http://{}", app.http);
        let http = reqwest::Client::new();
        let url = self.db_url(db);
        let pid = app.pid();
        let mut r = Reads {
            rss_before_mb: rss_kb(pid).map_or(0.0, |r| r.0 as f64 / 1024.0),
            ..Reads::default()
        };
        let (start, end, cutoff, range_rows) = self.rt.block_on(async {
            let client = connect(&url).await?;
            let row = client
                .query_one("SELECT min(created_at), max(created_at) FROM feedback", &[])
                .await?;
            let (start, end): (DateTime<Utc>, DateTime<Utc>) = (row.get(0), row.get(1));
            // The newest `export_rows` rows by created_at: training-data's range.
            let cutoff: DateTime<Utc> = client
                .query_one(
                    "SELECT created_at FROM feedback ORDER BY created_at DESC OFFSET $1 LIMIT 1",
                    &[&(export_rows as i64 - 1)],
                )
                .await?
                .get(0);
            let range: i64 = client
                .query_one(
                    "SELECT count(*) FROM feedback WHERE created_at >= $1",
                    &[&cutoff],
                )
                .await?
                .get(0);
            Ok::<_, anyhow::Error>((start, end, cutoff, range))
        })?;
        let shapes = common::ReadShapes {
            subjects: SUBJECTS.split(',').map(str::to_owned).collect(),
            model_a: args.models.split(',').next().unwrap_or_default().to_owned(),
            model_b: args.models.split(',').nth(1).unwrap_or_default().to_owned(),
            start,
            end,
        };
        say(format!(
            "   export: pages of 1000 from the start until {} rows",
            thousands(export_rows as f64)
        ));
        let rt = self.rt;
        let rss_now = || rss_kb(pid).map_or(0.0, |r| r.0 as f64 / 1024.0);
        r.export_rss_start_mb = rss_now();
        let (out, rss) = with_rss(pid, || {
            rt.block_on(async {
                let t = Instant::now();
                let mut next = Some("/api/feedback/export?limit=1000".to_owned());
                let mut rows = 0u64;
                while let (Some(path), true) = (next.take(), rows < export_rows) {
                    let resp = http
                        .get(format!("{base}{path}"))
                        .bearer_auth(EXPORT_TOKEN)
                        .send()
                        .await?
                        .error_for_status()?;
                    next = resp
                        .headers()
                        .get(reqwest::header::LINK)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|l| l.strip_prefix('<')?.split('>').next())
                        .map(str::to_owned);
                    let body = resp.bytes().await?;
                    rows +=
                        serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body)?.len() as u64;
                }
                Ok::<_, anyhow::Error>((rows, t.elapsed().as_secs_f64()))
            })
        });
        (r.export_rows, r.export_s) = out?;
        r.export_rss_mb = rss;
        let (rows, secs) = (r.export_rows, r.export_s);
        say(format!(
            "   {} rows in {secs:.1} s: {} rows/s, likerate max RSS {rss:.0} MB",
            thousands(rows as f64),
            thousands(rows as f64 / secs)
        ));
        say(format!(
            "   training-data (openai) since {} ({} stored rows)",
            common::rfc3339(cutoff),
            thousands(range_rows as f64)
        ));
        r.training_rss_start_mb = rss_now();
        let (out, rss) = with_rss(pid, || {
            rt.block_on(async {
                let t = Instant::now();
                let mut resp = http
                    .get(format!(
                        "{base}/api/feedback/training-data?format=openai&since={}",
                        common::query_value(&common::rfc3339(cutoff))
                    ))
                    .bearer_auth(EXPORT_TOKEN)
                    .send()
                    .await?
                    .error_for_status()?;
                let mut lines = 0u64;
                while let Some(chunk) = resp.chunk().await? {
                    lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
                }
                Ok::<_, anyhow::Error>((lines, t.elapsed().as_secs_f64()))
            })
        });
        (r.training_lines, r.training_s) = out?;
        r.training_rss_mb = rss;
        r.training_range_rows = range_rows;
        say(format!(
            "   {} lines ({} stored rows in the range) in {:.1} s: {} lines/s, {} rows/s, likerate max RSS {rss:.0} MB",
            thousands(r.training_lines as f64),
            thousands(range_rows as f64),
            r.training_s,
            thousands(r.training_lines as f64 / r.training_s),
            thousands(range_rows as f64 / r.training_s)
        ));
        // After the exports: compare by conversation (the default unit) is the heaviest read of
        // the database; VmHWM below says whether any read grew likerate's memory.
        say(format!(
            "   read latency: up to {samples} sequential requests per shape (at most {} s each)",
            env_u64("LIKERATE_BENCH_READ_BUDGET", 60)
        ));
        let budget = Duration::from_secs(env_u64("LIKERATE_BENCH_READ_BUDGET", 60));
        let n = common::ReadSamples {
            samples,
            warmup: (samples / 10).clamp(1, 100),
            budget,
        };
        r.latency = self
            .rt
            .block_on(common::read_latency(&http, &base, &shapes, &n));
        for (name, k, failed, p50, p99) in &r.latency {
            say(format!(
                "   {name:<52} p50 {p50:>8.2} ms   p99 {p99:>8.2} ms   ({k} requests, {failed} failed)"
            ));
        }
        r.hwm_mb = rss_kb(pid).map_or(0.0, |r| r.1 as f64 / 1024.0);
        Ok(r)
    }

    fn print_scale(&self, s: &ScaleReport) {
        let mark = |ok: bool| if ok { "met" } else { "MISSED" };
        let rate = |prefix: &str| {
            s.phases
                .iter()
                .find(|p| p.name.starts_with(prefix))
                .map_or(f64::NAN, |p| p.rate)
        };
        let (a, b, c, d) = (rate("a."), rate("b."), rate("c."), rate("d."));
        let mut out = String::new();
        let mut line = |l: String| {
            out.push_str(&l);
            out.push('\n');
        };
        line(String::new());
        line(format!(
            "## likerate scale benchmark: N = {} stored rows, M = {} events ({} distinct, {:.0} bytes on average, {} event ids), 6 partitions",
            thousands(s.n as f64),
            thousands(s.m as f64),
            thousands(self.results.distinct as f64),
            self.results.avg_bytes,
            if ordered_event_ids() { "time-ordered (v7)" } else { "random (v4)" }
        ));
        line(String::new());
        line(format!(
            "PostgreSQL: {}; sink connections {}; whole run {:.0} s; load average at the end: {}",
            s.settings,
            sink_connections(),
            s.wall_s,
            load_average()
        ));
        line(String::new());
        line("| phase | rows | s | rows/s | µs per row | WAL MB | WAL bytes per row | full-page images | FPI per row | checkpoints req / timed | notes |".into());
        line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|".into());
        for p in &s.phases {
            let rows = p.rows as f64;
            line(format!(
                "| {} | {} | {:.1} | {} | {:.0} | {} | {} | {} | {:.2} | {} / {} | {} |",
                p.name,
                thousands(rows),
                p.seconds,
                thousands(p.rate),
                1e6 / p.rate,
                thousands(p.wal.wal_bytes as f64 / 1e6),
                thousands(p.wal.wal_bytes as f64 / rows),
                thousands(p.wal.fpi as f64),
                p.wal.fpi as f64 / rows,
                p.wal.checkpoints_req,
                p.wal.checkpoints_timed,
                p.note
            ));
        }
        line(String::new());
        line("| target | measured | |".into());
        line("|---|---:|---|".into());
        line(format!(
            "| likerate loaded / likerate empty >= 0.8 | {:.2} | {} |",
            b / a,
            mark(b / a >= 0.8)
        ));
        line(format!(
            "| likerate loaded / raw COPY into today's schema loaded >= 1.0 | {:.2} | {} |",
            b / d,
            mark(b / d >= 1.0)
        ));
        line(format!(
            "| raw COPY loaded / raw COPY empty (today's schema) | {:.2} | |",
            d / c
        ));
        line(format!(
            "| likerate empty / raw COPY empty | {:.2} | |",
            a / c
        ));
        let r = &s.reads;
        for (name, k, failed, p50, p99) in &r.latency {
            line(format!(
                "| read p99 <= 10 ms: {name} | {p99:.2} ms | {} (p50 {p50:.2} ms, {k} requests, {failed} failed) |",
                mark(*p99 <= 10.0 && *failed == 0)
            ));
        }
        let export_rate = r.export_rows as f64 / r.export_s;
        let training_rate = r.training_lines as f64 / r.training_s;
        line(format!(
            "| export of {} rows >= 50,000 rows/s | {} rows/s | {} ({:.1} s) |",
            thousands(r.export_rows as f64),
            thousands(export_rate),
            mark(export_rate >= 50_000.0 && r.export_rows >= s.export_target_rows),
            r.export_s
        ));
        line(format!(
            "| training-data (openai) of the newest {} rows >= 50,000 lines/s | {} lines/s | {} ({} lines in {:.1} s; {} stored rows/s) |",
            thousands(r.training_range_rows as f64),
            thousands(training_rate),
            mark(training_rate >= 50_000.0),
            thousands(r.training_lines as f64),
            r.training_s,
            thousands(r.training_range_rows as f64 / r.training_s)
        ));
        line(format!(
            "| likerate max RSS during export / training-data (constant memory) | {:.0} / {:.0} MB | at their start {:.0} / {:.0} MB; {:.0} MB after the drain, before the reads; VmHWM {:.0} MB over the process's life |",
            r.export_rss_mb, r.training_rss_mb, r.export_rss_start_mb, r.training_rss_start_mb, r.rss_before_mb, r.hwm_mb
        ));
        line(String::new());
        line(format!(
            "Read latency: up to {} sequential requests per shape after a tenth as many (at most 100) of warm-up, a shape stopping after {} s, against the likerate of b (still running) on the loaded database.",
            s.samples,
            env_u64("LIKERATE_BENCH_READ_BUDGET", 60)
        ));
        line(String::new());
        line("Preloads (each with its own WAL and checkpoint counts):".into());
        line(String::new());
        for p in &s.preloads {
            line(format!("- {p}"));
        }
        line(String::new());
        line("Sizes of the loaded database after b:".into());
        line(String::new());
        line("| relation | MB |".into());
        line("|---|---:|".into());
        for (name, bytes) in &s.sizes {
            line(format!("| {name} | {} |", thousands(*bytes as f64 / 1e6)));
        }
        self.publish_table(&out);
    }
}

/// A drain checked by [`Bench::drain_phase`]; `app` still runs.
struct DrainPhase {
    rows: u64,
    rate: f64,
    seconds: f64,
    wal: PgCounters,
    note: String,
    app: Likerate,
}

impl DrainPhase {
    fn phase(&self, name: &str) -> Phase {
        Phase {
            name: name.into(),
            rows: self.rows,
            rate: self.rate,
            seconds: self.seconds,
            wal: self.wal,
            note: self.note.clone(),
        }
    }
}

struct ScaleReport {
    n: i64,
    m: u64,
    settings: String,
    phases: Vec<Phase>,
    preloads: Vec<String>,
    sizes: Vec<(String, i64)>,
    reads: Reads,
    export_target_rows: u64,
    samples: usize,
    wall_s: f64,
}

/// The database's size, `feedback` (heap and TOAST), each of its indexes and the other
/// tables, summed over partitions where there are any.
async fn sizes(url: &str) -> anyhow::Result<Vec<(String, i64)>> {
    let client = connect(url).await?;
    let rows = client
        .query(
            "SELECT 'database ' || current_database(), pg_database_size(current_database())::int8
             UNION ALL
             SELECT 'feedback (table and TOAST)',
                    coalesce((SELECT sum(pg_table_size(relid))::int8
                              FROM pg_partition_tree('feedback')),
                             pg_table_size('feedback'))
             UNION ALL
             (SELECT 'index ' || i.indexrelid::regclass::text,
                     coalesce((SELECT sum(pg_relation_size(relid))::int8
                               FROM pg_partition_tree(i.indexrelid)),
                              pg_relation_size(i.indexrelid))
              FROM pg_index i WHERE i.indrelid = 'feedback'::regclass
              ORDER BY 2 DESC)
             UNION ALL
             SELECT t, pg_total_relation_size(t::regclass)::int8
             FROM unnest(ARRAY['feedback_vote', 'feedback_rollup']) AS t",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

impl Stored {
    /// The newest id and the votes of the minute rollups, before a drain.
    async fn mark(url: &str) -> anyhow::Result<Stored> {
        let client = connect(url).await?;
        let row = client
            .query_one(
                "SELECT (SELECT coalesce(max(id), 0) FROM feedback),
                        (SELECT coalesce(sum(likes + dislikes + neutral), 0)::int8
                         FROM feedback_rollup WHERE grain = 'm')",
                &[],
            )
            .await?;
        Ok(Stored {
            max_id: row.get(0),
            votes: row.get(1),
            ..Stored::default()
        })
    }
}
