//! The `likerate` command line: a thin layer over the library.

use clap::{Parser, Subcommand};
use likerate::config::{ConfigFile, DatabaseArgs, KafkaArgs, RetentionArgs, RunArgs};
use likerate::produce::ProduceArgs;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "likerate",
    version,
    about = "LLM chat feedback from Kafka into PostgreSQL, exactly once, with like-rate metrics and alerts"
)]
struct Cli {
    /// Optional TOML file with settings (flags and environment variables win over it)
    #[arg(long, global = true, env = "LIKERATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Consume, store, aggregate, alert and serve HTTP
    Run {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Apply the database migrations of schemas/migrations
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Publish synthetic events (demo traffic, load) or the lines of a JSONL file
    Produce {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        produce: ProduceArgs,
    },
    /// Write training data (OpenAI, DPO, KTO or OpenAI preference JSONL, optionally split by
    /// question) or the stored rows (JSON) to a file or stdout
    Export {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        export: likerate::http::api::cli::ExportArgs,
    },
    /// Dead-letter topic operations
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Delete the stored rows of a conversation or an event and correct the aggregates
    Erase {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        erase: likerate::ops::erase::EraseArgs,
    },
    /// Write the like-rate report (HTML with SVG charts, or Markdown) for a period
    Report {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        report: likerate::ops::report::ReportArgs,
    },
    /// Apply LIKERATE_RETENTION_TEXT and LIKERATE_RETENTION_ROWS now (run also does it daily)
    Retention {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        retention: RetentionArgs,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Republish dead letters to the feedback topic after their cause was fixed, once each
    Replay {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        replay: likerate::ops::replay::ReplayArgs,
    },
}

#[allow(
    clippy::expect_used,
    reason = "before any input: without a runtime there is nothing to run"
)]
fn main() -> ExitCode {
    likerate::telemetry::init_logging();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(run(cli));
    // Do not wait for blocking work that outlived the bounded shutdown (a consumer still trying
    // to reach an unreachable broker): nothing it holds is needed any more.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole cause chain.
            eprintln!("likerate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = ConfigFile::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run {
            kafka,
            database,
            run,
        } => {
            let (kafka, database, run) = (
                kafka.resolve(&file)?,
                database.resolve(&file)?,
                run.resolve(&file)?,
            );
            let app = likerate::app::App::build(kafka, database, run).await?;
            tracing::info!(http = %app.http_addr(), "likerate running");
            let shutdown = CancellationToken::new();
            likerate::shutdown::on_signal(shutdown.clone());
            app.run_until_stopped(shutdown).await
        }
        Command::Migrate { database } => {
            let target = likerate::db::Target::new(&database.resolve(&file)?)?;
            target.ensure_database().await?;
            let mut client = target.connect().await?;
            let applied = likerate::db::migrate(&mut client).await?;
            if applied.is_empty() {
                println!("database {} is up to date", target.dbname());
            } else {
                println!("applied to {}: {}", target.dbname(), applied.join(", "));
            }
            Ok(())
        }
        Command::Produce { kafka, produce } => {
            let kafka = kafka.resolve(&file)?;
            likerate::kafka::ensure_topics(&kafka).await?;
            let stop = CancellationToken::new();
            likerate::shutdown::on_signal(stop.clone());
            let topic = kafka.topic.clone();
            let produced = tokio::task::spawn_blocking(move || {
                likerate::produce::produce(&kafka, &produce, stop)
            })
            .await??;
            println!(
                "sent {} records to {topic}: {} acknowledged, {} failed",
                produced.sent, produced.acked, produced.failed
            );
            if produced.failed > 0 || produced.acked < produced.sent {
                anyhow::bail!(
                    "{} records were not acknowledged",
                    produced.sent - produced.acked
                );
            }
            Ok(())
        }
        Command::Export { database, export } => {
            let s = likerate::http::api::cli::run(&database.resolve(&file)?, &export).await?;
            // The summary goes with the messages: to stderr when the data is on stdout.
            for line in s.lines() {
                if export.out.is_some() {
                    println!("{line}");
                } else {
                    eprintln!("{line}");
                }
            }
            Ok(())
        }
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    kafka,
                    database,
                    replay,
                },
        } => {
            let (kafka, database) = (kafka.resolve(&file)?, database.resolve(&file)?);
            let s = likerate::ops::replay::replay(&kafka, &database, &replay).await?;
            let verb = if replay.dry_run { "would send" } else { "sent" };
            println!(
                "read {} dead letters from {}, {} match; {verb} {} to {}, skipped {} already replayed",
                s.read, kafka.dlq_topic, s.matched, s.sent, kafka.topic, s.skipped
            );
            Ok(())
        }
        Command::Erase { database, erase } => {
            let erased = likerate::ops::erase::erase(&database.resolve(&file)?, &erase).await?;
            print!("{erased}");
            Ok(())
        }
        Command::Report { database, report } => {
            // The experiments of the file, as `run` reads them: the report shows their A/B
            // state.
            let ab = likerate::experiment::AbConfig::resolve(
                file.get("experiments"),
                report
                    .ab_power
                    .or_else(|| file.get("ab_power").and_then(|v| v.as_float())),
            )?;
            let bytes = likerate::ops::report::run(&database.resolve(&file)?, &ab, &report).await?;
            if let Some(out) = &report.out {
                println!("wrote {} ({bytes} bytes)", out.display());
            }
            Ok(())
        }
        Command::Retention {
            database,
            retention,
        } => {
            let (database, retention) = (database.resolve(&file)?, retention.resolve(&file)?);
            if !retention.is_enabled() {
                anyhow::bail!(
                    "nothing to do: set LIKERATE_RETENTION_TEXT and/or LIKERATE_RETENTION_ROWS"
                );
            }
            let target = likerate::db::Target::new(&database)?;
            let mut client = target.connect().await?;
            likerate::db::migrate(&mut client).await?;
            let swept =
                likerate::ops::retention::sweep(&target, retention, chrono::Utc::now(), None)
                    .await?;
            println!("retention: {swept}");
            Ok(())
        }
    }
}
