//! `likerate report`: the weekly report, as one self-contained HTML file (inline CSS, charts as
//! inline SVG drawn with plotters, no script, nothing fetched) or as Markdown.
//!
//! Figures come from the rollups (exact, and they outlive rows deleted by retention): like
//! rate per subject and per model with the change from the previous period of the same length,
//! votes, the subjects with the most dislikes and the biggest drops, the hours in which the
//! whole stream or a subject was below the alert threshold, and, from the rows, a sample of
//! recent disliked answers per problem subject with their reason and comment (truncated; none
//! once retention erased text).
//!
//! The charts' resolution follows the period ([`step_for`]): the finest of one minute, five
//! minutes, an hour and a day that gives at most [`MAX_POINTS`] points (an hour in minutes,
//! a day in hours, a week or a month in days). Each point is a whole step of the rollups
//! ([`read::points`]), so the first and last may reach outside the period.
//!
//! Two sections read more than the rollups: the reasons (the current votes per `reason` tag,
//! by [`crate::http::api::reasons::read`], the same figures as `GET /api/feedback/reasons`) and
//! the A/B state of each configured experiment that ran during the period (by
//! [`crate::http::api::compare::answer`], the figures and verdict of `GET
//! /api/feedback/compare?experiment=`, over the experiment's period up to the report's end).
//!
//! The disliked patterns of the period come from [`crate::http::api::patterns::read`]: per
//! subject, the terms most over-represented in its dislikes ([`PATTERN_TERMS`] each).
//!
//! Alerts: likerate keeps no history of the alerts it pushed (Alertmanager does). The report
//! lists the hours in which the like rate over the hour was below `--threshold` with at least
//! `--min-samples` votes, the condition `FeedbackLikeRateLow` evaluates on its own window.

use crate::config::DatabaseConfig;
use crate::experiment::AbConfig;
use crate::http::api::compare::{self, CompareAnswer, Verdict};
use crate::http::api::patterns::{self, Patterns};
use crate::http::api::reasons::{self, Reasons};
use crate::http::api::Filter;
use crate::rollup::{read, truncate, Counts, Range};
use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Html,
    Markdown,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Start of the period: an age (7d) or an RFC 3339 timestamp; compared with the period of
    /// the same length before it
    #[arg(long, default_value = "7d")]
    pub since: String,
    /// End of the period (RFC 3339 or an age) [default: now]
    #[arg(long)]
    pub until: Option<String>,
    /// File to write; standard output when absent
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Html)]
    pub format: Format,
    /// Like rate below which an hour counts as alerting
    #[arg(long, env = "LIKERATE_LIKE_RATE_THRESHOLD", default_value_t = 0.85)]
    pub threshold: f64,
    /// Fewest votes in an hour for it to count as alerting
    #[arg(long, env = "LIKERATE_ALERT_MIN_SAMPLES", default_value_t = 50)]
    pub min_samples: i64,
    /// Fewest votes in each period for a subject to rank among the biggest drops
    #[arg(long, default_value_t = 20)]
    pub min_votes: i64,
    /// Disliked answers shown per problem subject
    #[arg(long, default_value_t = 3)]
    pub samples: i64,
    /// Power at which the A/B section plans the votes an experiment needs [default: 0.8]
    #[arg(long, env = "LIKERATE_AB_POWER")]
    pub ab_power: Option<f64>,
}

/// Most points a chart has: an hour in minutes and a day in hours fit, a week does not (its
/// 168 hours would be points too dense to tell apart at the chart's 900 pixels).
pub const MAX_POINTS: i64 = 120;

/// The resolutions a chart can have, in seconds: the rollups' grains and five minutes.
pub const STEPS: [i64; 4] = [60, 300, 3600, 86_400];

/// The finest of [`STEPS`] that draws `[since, until)` in at most [`MAX_POINTS`] points (a
/// day for longer periods).
pub fn step_for(since: DateTime<Utc>, until: DateTime<Utc>) -> i64 {
    STEPS
        .into_iter()
        .find(|step| read::points(since, until, *step).len() as i64 <= MAX_POINTS)
        .unwrap_or(86_400)
}

/// What a step is called in headings: `day`, `hour`, `5 minutes`, `minute`.
fn step_name(step: i64) -> &'static str {
    match step {
        86_400 => "day",
        3600 => "hour",
        300 => "5 minutes",
        _ => "minute",
    }
}

/// One subject or model in both periods.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub now: Counts,
    pub before: Counts,
}

impl Line {
    /// Change of the like rate in percentage points.
    pub fn change_pp(&self) -> Option<f64> {
        Some((self.now.like_ratio()? - self.before.like_ratio()?) * 100.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub subject: String,
    pub created_at: DateTime<Utc>,
    pub model: String,
    pub question: String,
    pub answer: String,
    pub reason: Option<String>,
    pub comment: Option<String>,
}

/// A configured experiment that ran during the period, and its comparison.
#[derive(Debug)]
pub struct ExperimentState {
    pub name: String,
    pub answer: CompareAnswer,
}

#[derive(Debug)]
pub struct Report {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub threshold: f64,
    pub min_samples: i64,
    pub total: Line,
    pub subjects: Vec<Line>,
    pub models: Vec<Line>,
    pub most_dislikes: Vec<Line>,
    pub biggest_drops: Vec<Line>,
    /// (hour, subject or `_all`, like rate, votes)
    pub alert_hours: Vec<(DateTime<Utc>, String, f64, i64)>,
    /// The charts' resolution in seconds ([`step_for`]), their points, and the counts per
    /// point and subject (`_all` included).
    pub step: i64,
    pub points: Vec<DateTime<Utc>>,
    pub series: BTreeMap<String, BTreeMap<DateTime<Utc>, Counts>>,
    pub samples: Vec<Sample>,
    /// The current votes of the period per reason tag.
    pub reasons: Reasons,
    pub experiments: Vec<ExperimentState>,
    pub patterns: Patterns,
}

const ALL: &str = "_all";

pub async fn build(
    db: &DatabaseConfig,
    ab: &AbConfig,
    args: &ReportArgs,
) -> anyhow::Result<Report> {
    let now = Utc::now();
    let since = super::parse_since(&args.since, now).map_err(|e| anyhow!("--since: {e}"))?;
    let until = match &args.until {
        Some(u) => super::parse_since(u, now).map_err(|e| anyhow!("--until: {e}"))?,
        None => now,
    };
    if until <= since {
        bail!("--until must be after --since");
    }
    if !(args.threshold > 0.0 && args.threshold <= 1.0) {
        bail!("--threshold: must be a ratio in (0, 1]");
    }
    // Minute buckets: the period starts at a minute.
    let since = truncate(since, 60);
    let previous = since - (until - since);
    let target = crate::db::Target::new(db)?;
    crate::db::migrate(&mut target.connect().await?).await?;
    let pool = target.pool(1)?;
    let mut client = pool.get().await?;

    // Minute buckets that start in each period (the last one may hold `until`).
    let period = |since, until| Range {
        since: Some(since),
        until: Some(until),
        ..Range::default()
    };
    let end = crate::rollup::ceil(until, 60);
    let now_cells = read::cells(&client, &period(since, end)).await?;
    let before_cells = read::cells(&client, &period(previous, since)).await?;
    let lines = |key: fn(&(String, String)) -> &str| -> Vec<Line> {
        let mut by: BTreeMap<String, Line> = BTreeMap::new();
        for (cells, now) in [(&now_cells, true), (&before_cells, false)] {
            for (k, c) in cells {
                let name = key(k);
                let line = by.entry(name.to_owned()).or_insert_with(|| Line {
                    name: name.to_owned(),
                    now: Counts::default(),
                    before: Counts::default(),
                });
                *if now { &mut line.now } else { &mut line.before } += *c;
            }
        }
        let mut v: Vec<Line> = by
            .into_values()
            .filter(|l| l.now.total() + l.before.total() > 0)
            .collect();
        v.sort_by(|a, b| {
            b.now
                .total()
                .cmp(&a.now.total())
                .then_with(|| a.name.cmp(&b.name))
        });
        v
    };
    let subjects = lines(|k| &k.0);
    let mut models = lines(|k| &k.1);
    for m in &mut models {
        if m.name.is_empty() {
            m.name = "(none)".into();
        }
    }
    let total = Line {
        name: ALL.into(),
        now: subjects.iter().map(|s| s.now).sum(),
        before: subjects.iter().map(|s| s.before).sum(),
    };
    let mut most_dislikes: Vec<Line> = subjects
        .iter()
        .filter(|s| s.now.dislikes > 0)
        .cloned()
        .collect();
    most_dislikes.sort_by(|a, b| {
        b.now
            .dislikes
            .cmp(&a.now.dislikes)
            .then_with(|| a.name.cmp(&b.name))
    });
    most_dislikes.truncate(5);
    let mut biggest_drops: Vec<Line> = subjects
        .iter()
        .filter(|s| s.now.total() >= args.min_votes && s.before.total() >= args.min_votes)
        .filter(|s| s.change_pp().is_some_and(|c| c < 0.0))
        .cloned()
        .collect();
    biggest_drops.sort_by(|a, b| {
        a.change_pp()
            .partial_cmp(&b.change_pp())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.name.cmp(&b.name))
    });
    biggest_drops.truncate(5);

    let alert_hours =
        read::low_hours(&client, since, until, args.min_samples, args.threshold).await?;

    let step = step_for(since, until);
    let points = read::points(since, until, step);
    let mut series: BTreeMap<String, BTreeMap<DateTime<Utc>, Counts>> = BTreeMap::new();
    for (at, subject, c) in read::series(&client, since, until, step).await? {
        for key in [subject, ALL.to_owned()] {
            *series.entry(key).or_default().entry(at).or_default() += c;
        }
    }
    let in_period = Filter {
        since: Some(since),
        until: Some(until),
        ..Filter::default()
    };
    let reasons = reasons::read(&client, &in_period, reasons::DEFAULT_LIMIT).await?;
    let experiments = experiments(&client, ab, since, until).await?;

    let problem: BTreeSet<String> = most_dislikes
        .iter()
        .chain(&biggest_drops)
        .map(|l| l.name.clone())
        .collect();
    let problem: Vec<String> = problem.into_iter().collect();
    let samples = client
        .query(
            "SELECT subject_id::text, created_at, coalesce(model, ''),
                    coalesce(user_question, ''), message_content, reason::text, comment
             FROM (SELECT *, row_number() OVER (PARTITION BY subject_id
                                                ORDER BY created_at DESC, event_id DESC) AS n
                   FROM feedback
                   WHERE rating = -1 AND NOT text_erased AND subject_id = ANY($1::text[])
                     AND created_at >= $2 AND created_at < $3) x
             WHERE n <= $4
             ORDER BY subject_id, created_at DESC",
            &[&problem, &since, &until, &args.samples],
        )
        .await?
        .iter()
        .map(|r| Sample {
            subject: r.get(0),
            created_at: r.get(1),
            model: r.get(2),
            question: r.get(3),
            answer: r.get(4),
            reason: r.get(5),
            comment: r.get(6),
        })
        .collect();
    let patterns = dislike_patterns(&mut client, since, until).await?;
    Ok(Report {
        since,
        until,
        generated_at: now,
        threshold: args.threshold,
        min_samples: args.min_samples,
        total,
        subjects,
        models,
        most_dislikes,
        biggest_drops,
        alert_hours,
        step,
        points,
        series,
        samples,
        reasons,
        experiments,
        patterns,
    })
}

/// The comparison of every configured experiment that ran during `[since, until)`, over its
/// period up to `until` (conversations as the unit, the default effect of `compare`).
async fn experiments(
    client: &impl deadpool_postgres::GenericClient,
    ab: &AbConfig,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> anyhow::Result<Vec<ExperimentState>> {
    let mut out = Vec::new();
    for e in ab.experiments.values() {
        if e.start >= until || e.end.is_some_and(|end| end <= since) {
            continue;
        }
        let upto = Filter {
            until: Some(until),
            ..Filter::default()
        };
        let request = compare::Request::experiment(
            e,
            upto,
            None,
            None,
            compare::Unit::Conversation,
            compare::DEFAULT_EFFECT,
        )?;
        out.push(ExperimentState {
            name: e.name.clone(),
            answer: compare::answer(client, request, ab.power).await?,
        });
    }
    Ok(out)
}

// --- Disliked patterns: the report's part of issue 18 item 2, kept together. ---

/// Terms shown per subject in the report.
pub const PATTERN_TERMS: i64 = 10;

/// The patterns of the period's current votes, notable terms only.
async fn dislike_patterns(
    client: &mut tokio_postgres::Client,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> anyhow::Result<Patterns> {
    let filter = crate::http::api::Filter {
        since: Some(since),
        until: Some(until),
        ..Default::default()
    };
    let mut found = patterns::read(client, &filter, PATTERN_TERMS).await?;
    for s in &mut found.subjects {
        s.terms.retain(|t| t.z >= patterns::NOTABLE_Z);
    }
    Ok(found)
}

/// The section: per subject with over-represented terms, a table of them.
fn patterns_section(m: &mut impl Markup, p: &Patterns) {
    m.heading(2, "Disliked patterns");
    let capped = if p.capped {
        " (the newest; older votes were not read)".to_owned()
    } else {
        String::new()
    };
    m.note(&format!(
        "Words and two-word phrases over-represented in the disliked questions and answers of \
         each subject against its liked ones, from {} votes{capped}. z is the weighted \
         log-odds ratio with an informative Dirichlet prior over its standard error (Monroe et \
         al. 2008; docs/patterns.md): above about 2 a term is unlikely to be over-represented \
         by chance; a term seen once scores low however one-sided it is. Terms with z of at \
         least {} are listed.",
        p.votes_read,
        patterns::NOTABLE_Z
    ));
    let with_terms: Vec<_> = p.subjects.iter().filter(|s| !s.terms.is_empty()).collect();
    if with_terms.is_empty() {
        m.note(&format!(
            "None: no subject has a term with z of at least {} (too few liked and disliked \
             votes with text, or no term stands out).",
            patterns::NOTABLE_Z
        ));
    }
    for s in with_terms {
        let title = format!(
            "{} ({} disliked, {} liked votes)",
            m.escape(&s.subject_id),
            s.disliked_votes,
            s.liked_votes
        );
        m.heading(3, &title);
        let rows: Vec<Vec<Cell>> = s
            .terms
            .iter()
            .map(|t| {
                let examples: Vec<String> = t.examples.iter().map(|id| id.to_string()).collect();
                vec![
                    Cell::plain(m.escape(&t.term)),
                    Cell::plain(examples.join(" ")),
                    Cell::plain(format!("{:.2}", t.z)),
                    Cell::plain(t.dislikes),
                    Cell::plain(t.likes),
                ]
            })
            .collect();
        m.table(
            &["term", "example events", "z", "in dislikes", "in likes"],
            2,
            &rows,
        );
    }
}

/// Builds the report and writes it where `--out` says. Returns the rendered text's size.
pub async fn run(db: &DatabaseConfig, ab: &AbConfig, args: &ReportArgs) -> anyhow::Result<usize> {
    let report = build(db, ab, args).await?;
    let text = match args.format {
        Format::Html => render_html(&report)?,
        Format::Markdown => render_markdown(&report),
    };
    match &args.out {
        Some(path) => {
            let write = || -> std::io::Result<()> {
                let mut file = crate::output::OutFile::create(path)?;
                std::io::Write::write_all(file.file(), text.as_bytes())?;
                file.commit()
            };
            write().with_context(|| format!("--out {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(text.len())
}

fn pct(rate: Option<f64>) -> String {
    rate.map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "–".into())
}

fn pp(change: Option<f64>) -> String {
    change
        .map(|c| format!("{c:+.1} pp"))
        .unwrap_or_else(|| "–".into())
}

fn votes_change(l: &Line) -> String {
    if l.before.total() == 0 {
        return "new".into();
    }
    let c = (l.now.total() - l.before.total()) as f64 / l.before.total() as f64 * 100.0;
    format!("{c:+.0}%")
}

/// At most `max` characters, with an ellipsis when cut.
pub fn truncate_text(text: &str, max: usize) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text inside a Markdown table cell or line: no line breaks, pipes, or HTML.
fn escape_md(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = String::with_capacity(flat.len());
    for c in flat.chars() {
        if matches!(
            c,
            '\\' | '|' | '*' | '_' | '`' | '[' | ']' | '<' | '>' | '#'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

const COLORS: [(u8, u8, u8); 8] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
];

/// The x axis label of a point: the date for days, the time for shorter steps (with the date
/// when the period spans several days).
fn point_label(at: DateTime<Utc>, step: i64, days: bool) -> String {
    let format = match (step, days) {
        (86_400, _) => "%b %d",
        (_, true) => "%b %d %H:%M",
        (_, false) => "%H:%M",
    };
    at.format(format).to_string()
}

/// A line chart as an SVG document: one line per series over the points of `step` seconds.
fn line_chart(
    title: &str,
    points: &[DateTime<Utc>],
    step: i64,
    series: &[(String, Vec<Option<f64>>)],
    y_max: f64,
    percent: bool,
) -> anyhow::Result<String> {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 340)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {title}: {e:?}");
        root.fill(&WHITE).map_err(err)?;
        let last = points.len().saturating_sub(1).max(1) as f64;
        let days = match (points.first(), points.last()) {
            (Some(a), Some(b)) => a.date_naive() != b.date_naive(),
            _ => false,
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .margin_right(40)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..last, 0f64..y_max)
            .map_err(err)?;
        let x_label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() > 0.01 {
                return String::new();
            }
            points
                .get(i as usize)
                .map(|at| point_label(*at, step, days))
                .unwrap_or_default()
        };
        let y_label = |y: &f64| {
            if percent {
                format!("{:.0}%", y * 100.0)
            } else if (y - y.round()).abs() < 1e-9 {
                format!("{y:.0}")
            } else {
                // A count axis labels whole votes only (plotters also picks halves).
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_labels(points.len().clamp(2, 12))
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        for (i, (name, values)) in series.iter().enumerate() {
            let (r, g, b) = COLORS[i % COLORS.len()];
            let color = RGBColor(r, g, b);
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .filter_map(|(x, v)| v.map(|v| (x as f64, v)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .border_style(RGBColor(200, 200, 200))
            .background_style(WHITE.mix(0.85))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Series of the charts: like rate per subject per point (the whole stream and the subjects
/// with most votes, at most 8) and votes per point.
#[allow(clippy::type_complexity)]
fn chart_series(
    r: &Report,
) -> (
    Vec<(String, Vec<Option<f64>>)>,
    Vec<(String, Vec<Option<f64>>)>,
) {
    let per_point = |name: &str, f: &dyn Fn(&Counts) -> Option<f64>| -> Vec<Option<f64>> {
        r.points
            .iter()
            .map(|d| r.series.get(name).and_then(|m| m.get(d)).and_then(f))
            .collect()
    };
    let rates = std::iter::once(ALL.to_owned())
        .chain(r.subjects.iter().take(7).map(|s| s.name.clone()))
        .map(|name| {
            let v = per_point(&name, &|c: &Counts| c.like_ratio());
            (name, v)
        })
        .collect();
    let votes = vec![(
        "votes".to_owned(),
        per_point(ALL, &|c: &Counts| Some(c.total() as f64)),
    )];
    (rates, votes)
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}.neg{color:#b00}.pos{color:#070}
.sample{border-left:3px solid #d62728;padding:4px 10px;margin:8px 0;background:#fafafa}
.sample p{margin:2px 0;white-space:pre-wrap}.why{color:#7a1f1f}.muted{color:#777;font-size:90%}svg{max-width:100%;height:auto}";

fn change_class(c: Option<f64>) -> &'static str {
    match c {
        Some(c) if c < 0.0 => "neg",
        Some(c) if c > 0.0 => "pos",
        _ => "",
    }
}

/// One table cell: its text (escaped) and, in HTML, a CSS class.
struct Cell {
    text: String,
    class: &'static str,
}

impl Cell {
    fn plain(text: impl ToString) -> Cell {
        Cell {
            text: text.to_string(),
            class: "",
        }
    }
}

/// What HTML and Markdown write differently. The sections both formats share are written
/// once, by [`sections`], through this.
trait Markup {
    fn escape(&self, text: &str) -> String;
    fn heading(&mut self, level: usize, title: &str);
    /// A paragraph of likerate's own words (no user text, not escaped).
    fn note(&mut self, text: &str);
    /// `left` leading columns are text, the rest numbers.
    fn table(&mut self, header: &[&str], left: usize, rows: &[Vec<Cell>]);
    /// A disliked answer with its question, and the reason and comment the user gave (all
    /// escaped).
    fn sample(&mut self, meta: &str, question: &str, answer: &str, why: &Why);
}

/// A sample's reason tag and comment, escaped.
struct Why {
    reason: Option<String>,
    comment: Option<String>,
}

struct Html(String);

impl Markup for Html {
    fn escape(&self, text: &str) -> String {
        escape_html(text)
    }
    fn heading(&mut self, level: usize, title: &str) {
        let _ = writeln!(self.0, "<h{level}>{title}</h{level}>");
    }
    fn note(&mut self, text: &str) {
        let _ = writeln!(self.0, "<p>{text}</p>");
    }
    fn table(&mut self, header: &[&str], _left: usize, rows: &[Vec<Cell>]) {
        self.0.push_str("<table><tr>");
        for h in header {
            let _ = write!(self.0, "<th>{h}</th>");
        }
        self.0.push_str("</tr>\n");
        for row in rows {
            self.0.push_str("<tr>");
            for c in row {
                match c.class {
                    "" => {
                        let _ = write!(self.0, "<td>{}</td>", c.text);
                    }
                    class => {
                        let _ = write!(self.0, "<td class=\"{class}\">{}</td>", c.text);
                    }
                }
            }
            self.0.push_str("</tr>\n");
        }
        self.0.push_str("</table>\n");
    }
    fn sample(&mut self, meta: &str, question: &str, answer: &str, why: &Why) {
        let _ = write!(
            self.0,
            "<div class=\"sample\"><p class=\"muted\">{meta}</p><p><b>Q:</b> {question}</p><p><b>A:</b> {answer}</p>"
        );
        if let Some(reason) = &why.reason {
            let _ = write!(
                self.0,
                "<p class=\"why\"><b>Reason:</b> <code>{reason}</code></p>"
            );
        }
        if let Some(comment) = &why.comment {
            let _ = write!(self.0, "<p class=\"why\"><b>Comment:</b> {comment}</p>");
        }
        self.0.push_str("</div>\n");
    }
}

struct Markdown(String);

impl Markup for Markdown {
    fn escape(&self, text: &str) -> String {
        escape_md(text)
    }
    fn heading(&mut self, level: usize, title: &str) {
        let _ = writeln!(self.0, "{} {title}\n", "#".repeat(level));
    }
    fn note(&mut self, text: &str) {
        let _ = writeln!(self.0, "{text}\n");
    }
    fn table(&mut self, header: &[&str], left: usize, rows: &[Vec<Cell>]) {
        let _ = writeln!(self.0, "| {} |", header.join(" | "));
        let align: Vec<&str> = (0..header.len())
            .map(|i| if i < left { "---" } else { "---:" })
            .collect();
        let _ = writeln!(self.0, "|{}|", align.join("|"));
        for row in rows {
            let cells: Vec<&str> = row.iter().map(|c| c.text.as_str()).collect();
            let _ = writeln!(self.0, "| {} |", cells.join(" | "));
        }
        self.0.push('\n');
    }
    fn sample(&mut self, meta: &str, question: &str, answer: &str, why: &Why) {
        let _ = writeln!(self.0, "- {meta}\n  - Q: {question}\n  - A: {answer}");
        if let Some(reason) = &why.reason {
            let _ = writeln!(self.0, "  - Reason: {reason}");
        }
        if let Some(comment) = &why.comment {
            let _ = writeln!(self.0, "  - Comment: {comment}");
        }
    }
}

/// Subjects or models in both periods, as a table.
fn lines_table(m: &mut impl Markup, first: &str, lines: &[Line]) {
    let rows: Vec<Vec<Cell>> = lines
        .iter()
        .map(|l| {
            let c = l.change_pp();
            vec![
                Cell::plain(m.escape(&l.name)),
                Cell::plain(l.now.total()),
                Cell::plain(votes_change(l)),
                Cell::plain(l.now.likes),
                Cell::plain(l.now.dislikes),
                Cell::plain(l.now.neutral),
                Cell::plain(pct(l.now.like_ratio())),
                Cell::plain(pct(l.before.like_ratio())),
                Cell {
                    text: pp(c),
                    class: change_class(c),
                },
            ]
        })
        .collect();
    let header = [
        first,
        "votes",
        "votes change",
        "likes",
        "dislikes",
        "neutral",
        "like rate",
        "previous",
        "change",
    ];
    m.table(&header, 1, &rows);
}

/// The sections both formats share: subjects, models, most dislikes, biggest drops, alert
/// hours and sample disliked answers.
fn sections(m: &mut impl Markup, r: &Report) {
    m.heading(2, "Subjects");
    lines_table(m, "subject", &r.subjects);
    m.heading(2, "Models");
    lines_table(m, "model", &r.models);
    experiments_section(m, &r.experiments);
    m.heading(2, "Most dislikes");
    if r.most_dislikes.is_empty() {
        m.note("No dislikes in the period.");
    } else {
        lines_table(m, "subject", &r.most_dislikes);
    }
    m.heading(2, "Biggest drops");
    if r.biggest_drops.is_empty() {
        m.note(
            "No subject's like rate dropped (among subjects with enough votes in both periods).",
        );
    } else {
        lines_table(m, "subject", &r.biggest_drops);
    }
    m.heading(2, "Alerts");
    m.note(&format!(
        "likerate keeps no alert history (Alertmanager does). Hours in which the like rate was \
         below {} with at least {} votes:",
        pct(Some(r.threshold)),
        r.min_samples
    ));
    if r.alert_hours.is_empty() {
        m.note("None.");
    } else {
        let rows: Vec<Vec<Cell>> = r
            .alert_hours
            .iter()
            .map(|(hour, subject, rate, votes)| {
                vec![
                    Cell::plain(hour.format("%Y-%m-%d %H:00")),
                    Cell::plain(m.escape(subject)),
                    Cell::plain(pct(Some(*rate))),
                    Cell::plain(votes),
                ]
            })
            .collect();
        m.table(&["hour", "subject", "like rate", "votes"], 2, &rows);
    }
    reasons_section(m, &r.reasons);
    m.heading(2, "Recent disliked answers");
    if r.samples.is_empty() {
        m.note("None with text in the period.");
    }
    let mut current = None;
    for s in &r.samples {
        if current != Some(&s.subject) {
            let subject = m.escape(&s.subject);
            m.heading(3, &subject);
            current = Some(&s.subject);
        }
        let model = if s.model.is_empty() {
            String::new()
        } else {
            format!(" · {}", m.escape(&s.model))
        };
        let meta = format!("{}{model}", s.created_at.format("%Y-%m-%d %H:%M UTC"));
        let question = m.escape(&truncate_text(&s.question, 300));
        let answer = m.escape(&truncate_text(&s.answer, 500));
        let why = Why {
            reason: s.reason.as_deref().map(|r| m.escape(r)),
            comment: s
                .comment
                .as_deref()
                .map(|c| m.escape(&truncate_text(c, 500))),
        };
        m.sample(&meta, &question, &answer, &why);
    }
    patterns_section(m, &r.patterns);
}

/// Why users disliked: the period's current votes per reason tag.
fn reasons_section(m: &mut impl Markup, r: &Reasons) {
    m.heading(2, "Reasons");
    if r.dislikes == 0 {
        m.note("No dislikes in the period.");
        return;
    }
    m.note(&format!(
        "{} of {} dislikes carry a reason, {} a comment (current votes; a changed vote counts \
         with its latest reason).",
        r.dislikes_with_reason, r.dislikes, r.dislikes_with_comment
    ));
    if r.reasons.is_empty() {
        return;
    }
    let row = |name: String, v: &reasons::ReasonVotes| {
        vec![
            Cell::plain(name),
            Cell::plain(v.dislikes),
            Cell::plain(format!("{:.1}%", v.dislike_percentage)),
            Cell::plain(v.with_comment),
            Cell::plain(v.total),
        ]
    };
    let mut rows: Vec<Vec<Cell>> = r
        .reasons
        .iter()
        .map(|c| row(m.escape(&c.reason), &c.votes))
        .collect();
    // The tags past the table's length, summed: likerate's words, so never a user's tag.
    if r.other.reasons > 0 {
        let name = format!("({} other reasons)", r.other.reasons);
        rows.push(row(name, &r.other.votes));
    }
    m.table(
        &[
            "reason",
            "dislikes",
            "of all dislikes",
            "with comment",
            "all votes",
        ],
        1,
        &rows,
    );
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::ABetter => "A is better",
        Verdict::BBetter => "B is better",
        Verdict::NoDifference => "no difference",
        Verdict::NotEnoughData => "not enough data",
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map(|d| format!("{:+.1} pp", d * 100.0))
        .unwrap_or_else(|| "–".into())
}

/// The A/B state of the configured experiments that ran during the period.
fn experiments_section(m: &mut impl Markup, experiments: &[ExperimentState]) {
    m.heading(2, "A/B experiments");
    if experiments.is_empty() {
        m.note(
            "No configured experiment ran during the period (experiments are the \
             [[experiments]] tables of the configuration file).",
        );
        return;
    }
    for e in experiments {
        let a = &e.answer;
        let name = m.escape(&e.name);
        m.heading(3, &name);
        let when = |t: Option<DateTime<Utc>>| {
            t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_else(|| "…".into())
        };
        m.note(&format!(
            "{} – {}; the unit of the variance is the {}.",
            when(a.since),
            when(a.until),
            match a.unit {
                compare::Unit::Conversation => "conversation",
                compare::Unit::Vote => "vote",
            }
        ));
        let rows: Vec<Vec<Cell>> = [("A", &a.pooled.model_a), ("B", &a.pooled.model_b)]
            .into_iter()
            .map(|(side, arm)| {
                vec![
                    Cell::plain(side),
                    Cell::plain(m.escape(&arm.model)),
                    Cell::plain(arm.votes),
                    Cell::plain(arm.likes),
                    Cell::plain(pct(arm.like_rate)),
                    Cell::plain(format!(
                        "{} – {}",
                        pct(Some(arm.ci_low)),
                        pct(Some(arm.ci_high))
                    )),
                    Cell::plain(arm.units),
                ]
            })
            .collect();
        m.table(
            &[
                "arm",
                "model",
                "votes",
                "likes",
                "like rate",
                "95% interval",
                "units",
            ],
            2,
            &rows,
        );
        let t = &a.pooled.test;
        let p = t
            .p_value
            .map(|p| format!("{p:.4}"))
            .unwrap_or_else(|| "–".into());
        m.note(&format!(
            "Verdict: {}. Difference A − B {} (95% confidence sequence {} to {}), \
             always-valid p = {p}; stratified by subject: {}{}.",
            verdict_text(t.verdict),
            opt_pct(t.difference),
            opt_pct(t.difference_ci_low),
            opt_pct(t.difference_ci_high),
            verdict_text(a.stratified.test.verdict),
            if a.simpson_warning {
                " (Simpson's paradox: trust the stratified verdict)"
            } else {
                ""
            }
        ));
        if let (Some(needed), Some(more)) = (a.plan.votes_needed_per_arm, a.plan.more_votes_per_arm)
        {
            m.note(&format!(
                "To find a difference of {:.0} points with {:.0}% power: {needed} votes per arm, \
                 {more} more than the arm with fewer.",
                a.plan.min_detectable_effect * 100.0,
                a.plan.power * 100.0
            ));
        }
    }
}

pub fn render_html(r: &Report) -> anyhow::Result<String> {
    let mut o = String::with_capacity(64 * 1024);
    let period = format!(
        "{} – {}",
        r.since.format("%Y-%m-%d %H:%M UTC"),
        r.until.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
         <title>likerate report {}</title><style>{CSS}</style></head><body>",
        escape_html(&period)
    );
    let _ = writeln!(
        o,
        "<h1>Feedback report</h1><p>{} <span class=\"muted\">(compared with the period of the same \
         length before it; generated {})</span></p>",
        escape_html(&period),
        r.generated_at.format("%Y-%m-%d %H:%M UTC")
    );
    let t = &r.total;
    let _ = writeln!(
        o,
        "<h2>Summary</h2><p><b>{}</b> votes ({} before, {}); like rate <b>{}</b> ({} before, \
         <span class=\"{}\">{}</span>).</p>",
        t.now.total(),
        t.before.total(),
        votes_change(t),
        pct(t.now.like_ratio()),
        pct(t.before.like_ratio()),
        change_class(t.change_pp()),
        pp(t.change_pp())
    );
    let (rates, votes) = chart_series(r);
    let per = step_name(r.step);
    let _ = writeln!(o, "<h2>Like rate per {per}</h2>");
    o.push_str(&line_chart(
        &format!("Like rate per subject per {per}"),
        &r.points,
        r.step,
        &rates,
        1.0,
        true,
    )?);
    let _ = writeln!(o, "\n<h2>Votes per {per}</h2>");
    // At least 5, so that a quiet period's axis still has distinct whole-number labels.
    let max_votes = (votes[0].1.iter().flatten().fold(0.0f64, |m, v| m.max(*v)) * 1.1).max(5.0);
    o.push_str(&line_chart(
        &format!("Votes per {per}"),
        &r.points,
        r.step,
        &votes,
        max_votes,
        false,
    )?);
    o.push('\n');
    let mut m = Html(o);
    sections(&mut m, r);
    let mut o = m.0;
    o.push_str("</body></html>\n");
    Ok(o)
}

pub fn render_markdown(r: &Report) -> String {
    let mut o = String::new();
    let t = &r.total;
    let _ = writeln!(
        o,
        "# Feedback report\n\n{} – {} (compared with the period of the same length before it; \
         generated {})\n\n## Summary\n\n**{}** votes ({} before, {}); like rate **{}** ({} \
         before, {}).\n",
        r.since.format("%Y-%m-%d %H:%M UTC"),
        r.until.format("%Y-%m-%d %H:%M UTC"),
        r.generated_at.format("%Y-%m-%d %H:%M UTC"),
        t.now.total(),
        t.before.total(),
        votes_change(t),
        pct(t.now.like_ratio()),
        pct(t.before.like_ratio()),
        pp(t.change_pp())
    );
    let (per, first) = match r.step {
        86_400 => ("day", "day"),
        _ => (step_name(r.step), "from"),
    };
    let _ = writeln!(
        o,
        "## Per {per}\n\n| {first} | votes | like rate |\n|---|---:|---:|"
    );
    for at in &r.points {
        let c = r
            .series
            .get(ALL)
            .and_then(|m| m.get(at))
            .copied()
            .unwrap_or_default();
        let when = match r.step {
            86_400 => at.format("%Y-%m-%d"),
            _ => at.format("%Y-%m-%d %H:%M"),
        };
        let _ = writeln!(o, "| {when} | {} | {} |", c.total(), pct(c.like_ratio()));
    }
    o.push('\n');
    let mut m = Markdown(o);
    sections(&mut m, r);
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, now: (i64, i64, i64), before: (i64, i64, i64)) -> Line {
        let c = |(likes, dislikes, neutral)| Counts {
            likes,
            dislikes,
            neutral,
        };
        Line {
            name: name.into(),
            now: c(now),
            before: c(before),
        }
    }

    /// A reason tag is any text: markup, quotes and an ampersand must come out escaped.
    const HOSTILE_REASON: &str = "Wrong <b>\"x\"</b> & 'y'";

    fn report() -> Report {
        let since: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
        let until = since + chrono::Duration::days(7);
        let points = read::points(since, until, 86_400);
        let mut series = BTreeMap::new();
        let mut all = BTreeMap::new();
        all.insert(
            points[1],
            Counts {
                likes: 3,
                dislikes: 1,
                neutral: 0,
            },
        );
        series.insert(ALL.to_owned(), all);
        Report {
            since,
            until,
            generated_at: until,
            threshold: 0.85,
            min_samples: 50,
            total: line(ALL, (3, 1, 0), (4, 0, 0)),
            subjects: vec![line("Math <b>", (3, 1, 0), (4, 0, 0))],
            models: vec![line("(none)", (3, 1, 0), (4, 0, 0))],
            most_dislikes: vec![line("Math <b>", (3, 1, 0), (4, 0, 0))],
            biggest_drops: vec![],
            alert_hours: vec![],
            step: step_for(since, until),
            points,
            series,
            samples: vec![Sample {
                subject: "Math <b>".into(),
                created_at: since,
                model: String::new(),
                question: "<script>alert(1)</script>".into(),
                answer: "x".repeat(600),
                reason: Some(HOSTILE_REASON.into()),
                comment: Some("<img src=x onerror=alert(2)> | *bold*".into()),
            }],
            reasons: Reasons {
                subject_id: None,
                model: None,
                since: Some(since),
                until: Some(until),
                likes: 3,
                dislikes: 1,
                neutral: 0,
                limit: 20,
                dislikes_with_reason: 1,
                dislikes_with_comment: 1,
                reasons: vec![reasons::ReasonCount {
                    reason: HOSTILE_REASON.into(),
                    votes: reasons::ReasonVotes {
                        likes: 0,
                        dislikes: 1,
                        neutral: 0,
                        total: 1,
                        with_comment: 1,
                        dislike_percentage: 100.0,
                    },
                }],
                other: reasons::OtherReasons::default(),
            },
            experiments: vec![],
            patterns: Patterns {
                votes_read: 4,
                capped: false,
                subjects: vec![patterns::SubjectPatterns {
                    subject_id: "Math <b>".into(),
                    disliked_votes: 1,
                    liked_votes: 3,
                    terms: vec![patterns::Term {
                        term: "wrong <unit>".into(),
                        z: 2.345,
                        log_odds: 1.0,
                        dislikes: 1,
                        likes: 0,
                        examples: vec![uuid::Uuid::nil()],
                    }],
                }],
            },
        }
    }

    #[test]
    fn the_resolution_follows_the_period() {
        let t: DateTime<Utc> = "2026-02-05T10:07:00Z".parse().unwrap();
        let h = |n: i64| t + chrono::Duration::hours(n);
        assert_eq!(step_for(t, h(1)), 60);
        assert_eq!(step_for(t, h(2) - chrono::Duration::minutes(1)), 60);
        assert_eq!(step_for(t, h(3)), 300);
        assert_eq!(step_for(t, h(24)), 3600);
        assert_eq!(step_for(t, h(24 * 4)), 3600);
        assert_eq!(step_for(t, h(24 * 7)), 86_400);
        assert_eq!(step_for(t, h(24 * 30)), 86_400);
        assert_eq!(step_for(t, h(24 * 365)), 86_400);
        assert_eq!(point_label(t, 60, false), "10:07");
        assert_eq!(point_label(t, 3600, true), "Feb 05 10:07");
        assert_eq!(point_label(t, 86_400, true), "Feb 05");
    }

    #[test]
    fn html_escapes_user_text_and_embeds_svg() {
        let html = render_html(&report()).unwrap();
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("Math &lt;b&gt;"));
        assert!(html.contains("<td>wrong &lt;unit&gt;</td>"), "{html}");
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(html.contains("75.0%") && html.contains("-25.0 pp"));
        assert!(html.contains(&format!("{}…", "x".repeat(500))));
        assert!(!html.contains("http://") || html.contains("http://www.w3.org/2000/svg"));
    }

    #[test]
    fn markdown_has_the_figures() {
        let md = render_markdown(&report());
        assert!(
            md.contains("| Math \\<b\\> | 4 | +0% | 3 | 1 | 0 | 75.0% | 100.0% | -25.0 pp |"),
            "{md}"
        );
        assert!(md.contains("| 2026-02-02 | 4 | 75.0% |"), "{md}");
        assert!(md.contains("Q: \\<script\\>alert(1)\\</script\\>"), "{md}");
        assert!(
            md.contains(r#"| Wrong \<b\>"x"\</b\> & 'y' | 1 | 100.0% | 1 | 1 |"#),
            "{md}"
        );
        assert!(
            md.contains(r#"  - Reason: Wrong \<b\>"x"\</b\> & 'y'"#),
            "{md}"
        );
        assert!(
            md.contains("  - Comment: \\<img src=x onerror=alert(2)\\> \\| \\*bold\\*"),
            "{md}"
        );
        assert!(md.contains("No configured experiment ran"), "{md}");
        assert!(
            md.contains(&format!(
                "| wrong \\<unit\\> | {} | 2.35 | 1 | 0 |",
                uuid::Uuid::nil()
            )),
            "{md}"
        );
    }

    #[test]
    fn reasons_and_comments_are_escaped_in_html() {
        let html = render_html(&report()).unwrap();
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("<b>Comment:</b> &lt;img src=x onerror=alert(2)&gt; | *bold*"));
        let reason = "Wrong &lt;b&gt;&quot;x&quot;&lt;/b&gt; &amp; &#39;y&#39;";
        assert!(!html.contains("<b>\"x\"</b>"), "{html}");
        assert!(html.contains(&format!("<b>Reason:</b> <code>{reason}</code>")));
        assert!(html.contains(&format!(
            "<td>{reason}</td><td>1</td><td>100.0%</td><td>1</td><td>1</td>"
        )));
        assert!(html.contains("1 of 1 dislikes carry a reason, 1 a comment"));
    }

    #[test]
    fn the_tags_past_the_limit_are_one_row() {
        let mut r = report();
        r.reasons.dislikes = 3;
        r.reasons.dislikes_with_reason = 3;
        r.reasons.other = reasons::OtherReasons {
            reasons: 4,
            votes: reasons::ReasonVotes {
                likes: 1,
                dislikes: 2,
                neutral: 0,
                total: 3,
                with_comment: 0,
                dislike_percentage: 66.7,
            },
        };
        let md = render_markdown(&r);
        assert!(
            md.contains("| (4 other reasons) | 2 | 66.7% | 0 | 3 |"),
            "{md}"
        );
        r.reasons.other.reasons = 0;
        assert!(!render_markdown(&r).contains("other reasons"));
    }
}
