//! `likerate export`: training data or stored rows to a file or stdout, read from PostgreSQL
//! with the very queries of the HTTP API ([`super::training`] for `openai` and `dpo`,
//! [`super::export::page`] for `json`).
//!
//! Guarantees:
//! - `--out FILE` is written as [`crate::output`] says: a new file (never an existing one or
//!   through a symlink), mode 0600, that exists only when complete. Without `--out`, the data
//!   goes to stdout and everything else to stderr.
//! - Progress on stderr: a live bar when stderr is a terminal, otherwise a plain line every
//!   [`PLAIN_EVERY`]. The summary (rows, skipped rows, bytes) comes last.
//! - `json` writes one JSON array of the export rows (the fields of `GET /api/feedback/export`),
//!   every stored row once, in id order; `openai` and `dpo` write JSON Lines.

use super::export::{self, ExportFilter};
use super::training::{self, Format};
use super::Filter;
use crate::config::DatabaseConfig;
use crate::db::Target;
use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Interval of the plain progress lines when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Rows per page of `--format json`.
const JSON_PAGE: i64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Chat fine-tuning JSONL from liked answers
    Openai,
    /// Preference pairs JSONL: prompt, chosen, rejected
    Dpo,
    /// Every stored row with the fields of GET /api/feedback/export, as a JSON array
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// What to write
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output file; stdout when absent
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only this subject
    #[arg(long)]
    pub subject_id: Option<String>,
    /// Only this model version
    #[arg(long)]
    pub model: Option<String>,
    /// Rows created at or after this time (RFC 3339 or YYYY-MM-DD)
    #[arg(long)]
    pub since: Option<String>,
    /// Rows created before this time (RFC 3339 or YYYY-MM-DD)
    #[arg(long)]
    pub until: Option<String>,
    /// Only this rating (-1, 0, 1, dislike, neutral, like); json format only
    #[arg(long, allow_hyphen_values = true)]
    pub rating: Option<String>,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub rows: u64,
    pub skipped: i64,
    pub bytes: u64,
}

/// Progress on stderr: a bar on a terminal, plain lines elsewhere.
struct Progress {
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Progress {
    #[allow(clippy::expect_used, reason = "a constant template")]
    fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} {human_pos} rows ({per_sec}) {msg}",
                )
                .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            last_line: Instant::now(),
        }
    }

    fn update(&mut self, s: &Summary) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(s.rows);
                bar.set_message(format!("{} written", HumanBytes(s.bytes)));
            }
            None if self.last_line.elapsed() >= PLAIN_EVERY => {
                eprintln!("exported {} rows, {} bytes so far", s.rows, s.bytes);
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Runs `likerate export`.
pub async fn run(database: &DatabaseConfig, args: &ExportArgs) -> anyhow::Result<Summary> {
    let filter = Filter::parse(
        args.subject_id.as_deref(),
        args.model.as_deref(),
        args.since.as_deref(),
        args.until.as_deref(),
    )?;
    let rating = export::parse_rating(args.rating.as_deref())?;
    if rating.is_some() && args.format != ExportFormat::Json {
        anyhow::bail!("--rating applies to --format json only");
    }
    let target = Target::new(database)?;
    let pool = target.pool(1)?;
    let client = pool
        .get()
        .await
        .map_err(crate::db::DbError::from)
        .with_context(|| format!("database {}", target.dbname()))?;
    let mut file = match &args.out {
        Some(path) => Some(
            crate::output::OutFile::create(path)
                .with_context(|| format!("--out {}", path.display()))?,
        ),
        None => None,
    };
    let mut out: Box<dyn Write + '_> = match &mut file {
        Some(file) => Box::new(std::io::BufWriter::new(file.file())),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut progress = Progress::new();
    let mut summary = Summary::default();
    let written = match args.format {
        ExportFormat::Json => {
            let filter = ExportFilter { filter, rating };
            write_json(&client, &filter, &mut *out, &mut summary, &mut progress).await
        }
        ExportFormat::Openai | ExportFormat::Dpo => {
            let format = if args.format == ExportFormat::Openai {
                Format::OpenAi
            } else {
                Format::Dpo
            };
            write_training(
                client,
                format,
                filter,
                &mut *out,
                &mut summary,
                &mut progress,
            )
            .await
        }
    };
    progress.finish();
    let finished = written.and_then(|()| out.flush().context("writing the output"));
    drop(out);
    // On error, `file` is dropped uncommitted, which removes the partial file.
    finished?;
    if let (Some(file), Some(path)) = (file, &args.out) {
        file.commit()
            .with_context(|| format!("--out {}", path.display()))?;
    }
    Ok(summary)
}

async fn write_training(
    client: deadpool_postgres::Client,
    format: Format,
    filter: Filter,
    out: &mut dyn Write,
    summary: &mut Summary,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let mut training = training::start(client, format, filter).await?;
    summary.skipped = training.skipped;
    while let Some(chunk) = training.chunks.recv().await {
        let chunk = chunk?;
        out.write_all(&chunk.data).context("writing the output")?;
        summary.rows += chunk.lines;
        summary.bytes += chunk.data.len() as u64;
        progress.update(summary);
    }
    Ok(())
}

async fn write_json(
    client: &deadpool_postgres::Client,
    filter: &ExportFilter,
    out: &mut dyn Write,
    summary: &mut Summary,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let mut write = |bytes: &[u8], summary: &mut Summary| -> anyhow::Result<()> {
        out.write_all(bytes).context("writing the output")?;
        summary.bytes += bytes.len() as u64;
        Ok(())
    };
    write(b"[", summary)?;
    let mut after = 0;
    loop {
        let rows = export::page(client, filter, after, JSON_PAGE).await?;
        for row in &rows {
            let mut line = if summary.rows == 0 {
                b"\n".to_vec()
            } else {
                b",\n".to_vec()
            };
            serde_json::to_writer(&mut line, row)?;
            write(&line, summary)?;
            summary.rows += 1;
        }
        progress.update(summary);
        match rows.last() {
            Some(last) if rows.len() as i64 == JSON_PAGE => after = last.id,
            _ => break,
        }
    }
    write(b"\n]\n", summary)
}
