//! `likerate export`: training data or stored rows to a file or stdout, read from PostgreSQL
//! with the very queries of the HTTP API ([`super::training`] for the training formats,
//! [`super::export::page`] for `json`).
//!
//! Guarantees:
//! - `--out FILE` is written as [`crate::output`] says: a new file (never an existing one or
//!   through a symlink), mode 0600, that exists only when complete. Without `--out`, the data
//!   goes to stdout and everything else to stderr.
//! - `--split train|validation` writes that set of the split by question (see
//!   [`super::training`]); `--split both` writes both from one query (one snapshot) into two
//!   files named after `--out`: `NAME.jsonl` (or `NAME`) becomes `NAME.train.jsonl` and
//!   `NAME.validation.jsonl`; a failure while writing leaves neither (each is renamed into place
//!   only after both are complete). `--validation-share` is the fraction of
//!   questions in validation (default 0.1).
//! - Progress on stderr: a live bar when stderr is a terminal, otherwise a plain line every
//!   [`PLAIN_EVERY`]. The summary comes last: per file its examples (rows) and bytes, the
//!   skipped rows, and a warning when a training file (the train set, or the unsplit file)
//!   holds fewer than [`MIN_EXAMPLES`] examples, the product guide's "500+ liked examples".
//! - `json` writes one JSON array of the export rows (the fields of `GET /api/feedback/export`),
//!   every stored row once, in id order; the training formats write JSON Lines.

use super::export::{self, ExportFilter};
use super::training::{self, Format, Split};
use super::Filter;
use crate::config::DatabaseConfig;
use crate::db::Target;
use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Interval of the plain progress lines when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Rows per page of `--format json`.
const JSON_PAGE: i64 = 1000;

/// Fewest examples of a training file before the summary warns (the product guide's "export
/// 500+ liked examples").
pub const MIN_EXAMPLES: u64 = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Chat fine-tuning JSONL from liked answers (OpenAI; TRL SFT "messages")
    Openai,
    /// Preference pairs JSONL: prompt, chosen, rejected (TRL DPO)
    Dpo,
    /// Unpaired preference JSONL: prompt, completion, label (TRL KTO)
    Kto,
    /// OpenAI preference fine-tuning JSONL: input, preferred_output, non_preferred_output
    OpenaiDpo,
    /// Every stored row with the fields of GET /api/feedback/export, as a JSON array
    Json,
}

impl ExportFormat {
    fn training(self) -> Option<Format> {
        match self {
            ExportFormat::Openai => Some(Format::OpenAi),
            ExportFormat::Dpo => Some(Format::Dpo),
            ExportFormat::Kto => Some(Format::Kto),
            ExportFormat::OpenaiDpo => Some(Format::OpenAiDpo),
            ExportFormat::Json => None,
        }
    }
}

/// Which set of the split by question to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitSets {
    Train,
    Validation,
    /// Both, into NAME.train.jsonl and NAME.validation.jsonl (needs --out)
    Both,
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
    /// Split by question into train and validation sets; training formats only
    #[arg(long, value_enum)]
    pub split: Option<SplitSets>,
    /// Fraction of the questions in the validation set, with --split [default: 0.1]
    #[arg(long)]
    pub validation_share: Option<String>,
}

/// One file (or stdout) an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// `None`: stdout.
    pub path: Option<PathBuf>,
    /// The validation set of a split (which gets no warning for its size).
    pub validation: bool,
    pub rows: u64,
    pub bytes: u64,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub files: Vec<Written>,
    pub skipped: i64,
    /// A training format (the summary counts examples and warns below [`MIN_EXAMPLES`]).
    pub training: bool,
}

impl Summary {
    fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// The summary's lines: the totals, the examples of each file of a split, the warnings.
    pub fn lines(&self) -> Vec<String> {
        let name = |f: &Written| {
            f.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "stdout".into())
        };
        let to = match &self.files[..] {
            [Written {
                path: Some(path), ..
            }] => format!(" to {}", path.display()),
            _ => String::new(),
        };
        let mut lines = vec![format!(
            "exported {} rows ({} skipped without user_question or with blank text), {} bytes{to}",
            self.rows(),
            self.skipped,
            self.bytes()
        )];
        if self.files.len() > 1 {
            for f in &self.files {
                lines.push(format!(
                    "{}: {} examples, {} bytes",
                    name(f),
                    f.rows,
                    f.bytes
                ));
            }
        }
        for f in self.files.iter().filter(|f| self.training && !f.validation) {
            if f.rows < MIN_EXAMPLES {
                lines.push(format!(
                    "warning: {} holds {} examples, fewer than the {MIN_EXAMPLES} the product \
                     guide asks for",
                    name(f),
                    f.rows
                ));
            }
        }
        lines
    }
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

    fn update(&mut self, files: &[Written]) {
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        match &self.bar {
            Some(bar) => {
                bar.set_position(rows);
                bar.set_message(format!("{} written", HumanBytes(bytes)));
            }
            None if self.last_line.elapsed() >= PLAIN_EVERY => {
                eprintln!("exported {rows} rows, {bytes} bytes so far");
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

/// Where `--split both` writes the set: `NAME.jsonl` (or `NAME`) -> `NAME.<set>.jsonl`.
pub fn split_path(out: &Path, set: &str) -> PathBuf {
    let base = match out.to_str().and_then(|s| s.strip_suffix(".jsonl")) {
        Some(stem) => PathBuf::from(stem),
        None => out.to_owned(),
    };
    let mut name = base.into_os_string();
    name.push(format!(".{set}.jsonl"));
    PathBuf::from(name)
}

/// One output being written: a file (committed at the end) or stdout.
struct Output {
    file: Option<crate::output::OutFile>,
    written: Written,
}

impl Output {
    fn create(path: Option<PathBuf>, validation: bool) -> anyhow::Result<Output> {
        let file = match &path {
            Some(path) => Some(
                crate::output::OutFile::create(path)
                    .with_context(|| format!("--out {}", path.display()))?,
            ),
            None => None,
        };
        Ok(Output {
            file,
            written: Written {
                path,
                validation,
                ..Written::default()
            },
        })
    }

    fn writer(&mut self) -> Box<dyn Write + '_> {
        match &mut self.file {
            Some(file) => Box::new(std::io::BufWriter::new(file.file())),
            None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
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
    let training = args.format.training();
    if rating.is_some() && training.is_some() {
        anyhow::bail!("--rating applies to --format json only");
    }
    if training.is_none() && (args.split.is_some() || args.validation_share.is_some()) {
        anyhow::bail!("--split and --validation-share apply to the training formats only");
    }
    if args.validation_share.is_some() && args.split.is_none() {
        anyhow::bail!("--validation-share applies with --split");
    }
    let basis_points = training::parse_share(args.validation_share.as_deref())
        .map_err(|e| anyhow::anyhow!("--validation-share: {}", e.message))?;
    let (split, mut outputs) = match (args.split, &args.out) {
        (Some(SplitSets::Both), None) => {
            anyhow::bail!("--split both writes two files: it needs --out NAME.jsonl")
        }
        (Some(SplitSets::Both), Some(out)) => (
            Split {
                only_validation: None,
                basis_points,
            },
            vec![
                Output::create(Some(split_path(out, "train")), false)?,
                Output::create(Some(split_path(out, "validation")), true)?,
            ],
        ),
        (sets, out) => {
            let validation = sets == Some(SplitSets::Validation);
            let split = match sets {
                None => Split::NONE,
                Some(_) => Split {
                    only_validation: Some(validation),
                    basis_points,
                },
            };
            (split, vec![Output::create(out.clone(), validation)?])
        }
    };
    let target = Target::new(database)?;
    let pool = target.pool(1)?;
    let client = pool
        .get()
        .await
        .map_err(crate::db::DbError::from)
        .with_context(|| format!("database {}", target.dbname()))?;
    let mut progress = Progress::new();
    let mut summary = Summary {
        training: training.is_some(),
        ..Summary::default()
    };
    let (written, counts) = {
        let mut counts: Vec<Written> = outputs.iter().map(|o| o.written.clone()).collect();
        let mut writers: Vec<Box<dyn Write + '_>> =
            outputs.iter_mut().map(|o| o.writer()).collect();
        let written = match training {
            None => {
                let filter = ExportFilter { filter, rating };
                write_json(
                    &client,
                    &filter,
                    &mut *writers[0],
                    &mut counts[0],
                    &mut progress,
                )
                .await
            }
            Some(format) => {
                write_training(
                    client,
                    format,
                    filter,
                    split,
                    &mut writers,
                    &mut counts,
                    &mut summary.skipped,
                    &mut progress,
                )
                .await
            }
        };
        progress.finish();
        let flushed = written.and_then(|()| {
            writers
                .iter_mut()
                .try_for_each(|w| w.flush())
                .context("writing the output")
        });
        (flushed, counts)
    };
    // On error, the files are dropped uncommitted, which removes the partial files.
    written?;
    for (output, counts) in outputs.into_iter().zip(counts) {
        if let (Some(file), Some(path)) = (output.file, &counts.path) {
            file.commit()
                .with_context(|| format!("--out {}", path.display()))?;
        }
        summary.files.push(counts);
    }
    Ok(summary)
}

/// Writes the training lines: the train set (or everything) to `out[0]`, the validation set
/// to the last of `out` (the same one when there is one output).
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one export, each used once"
)]
async fn write_training(
    client: deadpool_postgres::Client,
    format: Format,
    filter: Filter,
    split: Split,
    out: &mut [Box<dyn Write + '_>],
    counts: &mut [Written],
    skipped: &mut i64,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let mut training = training::start(client, format, filter, split).await?;
    *skipped = training.skipped;
    let last = out.len() - 1;
    while let Some(chunk) = training.chunks.recv().await {
        let chunk = chunk?;
        for (i, lines) in [(0, &chunk.main), (last, &chunk.validation)] {
            out[i]
                .write_all(&lines.data)
                .context("writing the output")?;
            counts[i].rows += lines.count;
            counts[i].bytes += lines.data.len() as u64;
        }
        progress.update(counts);
    }
    Ok(())
}

async fn write_json(
    client: &deadpool_postgres::Client,
    filter: &ExportFilter,
    out: &mut dyn Write,
    counts: &mut Written,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let mut write = |bytes: &[u8], counts: &mut Written| -> anyhow::Result<()> {
        out.write_all(bytes).context("writing the output")?;
        counts.bytes += bytes.len() as u64;
        Ok(())
    };
    write(b"[", counts)?;
    let mut after = 0;
    loop {
        let rows = export::page(client, filter, after, JSON_PAGE).await?;
        for row in &rows {
            let mut line = if counts.rows == 0 {
                b"\n".to_vec()
            } else {
                b",\n".to_vec()
            };
            serde_json::to_writer(&mut line, row)?;
            write(&line, counts)?;
            counts.rows += 1;
        }
        progress.update(std::slice::from_ref(counts));
        match rows.last() {
            Some(last) if rows.len() as i64 == JSON_PAGE => after = last.id,
            _ => break,
        }
    }
    write(b"\n]\n", counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_files_are_named_after_out() {
        let p = |s: &str, set| split_path(Path::new(s), set);
        assert_eq!(
            p("data/sft.jsonl", "train"),
            PathBuf::from("data/sft.train.jsonl")
        );
        assert_eq!(
            p("sft", "validation"),
            PathBuf::from("sft.validation.jsonl")
        );
        assert_eq!(
            p("sft.json", "train"),
            PathBuf::from("sft.json.train.jsonl")
        );
    }

    #[test]
    fn the_summary_counts_each_file_and_warns_below_500() {
        let file = |name: &str, validation, rows| Written {
            path: Some(PathBuf::from(name)),
            validation,
            rows,
            bytes: rows * 10,
        };
        let s = Summary {
            files: vec![
                file("a.train.jsonl", false, 450),
                file("a.validation.jsonl", true, 50),
            ],
            skipped: 3,
            training: true,
        };
        assert_eq!(
            s.lines(),
            [
                "exported 500 rows (3 skipped without user_question or with blank text), 5000 bytes",
                "a.train.jsonl: 450 examples, 4500 bytes",
                "a.validation.jsonl: 50 examples, 500 bytes",
                "warning: a.train.jsonl holds 450 examples, fewer than the 500 the product guide asks for",
            ]
        );
        let s = Summary {
            files: vec![file("a.jsonl", false, 500)],
            skipped: 0,
            training: true,
        };
        assert_eq!(
            s.lines(),
            ["exported 500 rows (0 skipped without user_question or with blank text), 5000 bytes to a.jsonl"]
        );
    }
}
