//! `GET /api/feedback/compare`: two model versions, A/B, with a verdict that stays valid
//! however often it is looked at (docs/ab-testing.md; the statistics are [`crate::stats`]).
//!
//! Per model: votes, likes, like rate, its 95% Wilson interval and the independent units
//! behind the votes. Between them: the difference of like rates (A - B), its always-valid
//! p-value and 95% confidence sequence (normal-mixture mSPRT), and a verdict:
//! - `not_enough_data` when either model has fewer than [`MIN_VOTES`] votes;
//! - `a_better` / `b_better` when the always-valid p < [`ALPHA`], by the sign of the
//!   difference (the confidence sequence then excludes 0);
//! - `no_difference` otherwise.
//!
//! `fixed_horizon_p_value` is the pooled two-proportion z-test (CMH for `stratified`), valid
//! only for one look at a sample size fixed in advance; no verdict uses it.
//!
//! The same figures are given per subject (`by_subject`), and a stratified test over the
//! subjects (the Mantel–Haenszel-weighted difference) with its own verdict. When the pooled
//! and the stratified verdicts disagree (and neither lacks data), `simpson_warning` is true:
//! the pooled difference comes from the mix of subjects each model saw, not from the models
//! (Simpson's paradox), and the stratified verdict is the one to trust.
//!
//! The unit (`unit=conversation`, the default): the votes of one `conversation_id` within one
//! UTC day are one unit of the variance; votes without one are each their own. The units come
//! from [`crate::units`]: kept sums for the settled days wholly inside the period, the rows of
//! `feedback` (the vote rule of [`crate::votes`]) for the others. Each (subject, model) cell
//! arrives as a row of sums over the units that lie in it ([`crate::stats::Clusters`]): the
//! variance needs only their sums, so likerate's memory does not grow with the conversations.
//! A unit that spans cells (several subjects or both models) comes by name, one row per cell.
//! `unit=vote` reads the rollups instead (a few thousand rows whatever the volume) and treats
//! every vote as independent. Either way `since`/`until` have the rollups' one-minute
//! resolution (see [`crate::rollup::read`]), so the counts are the same.
//!
//! `experiment=NAME` compares a configured experiment's arms (the first two unless
//! `model_a`/`model_b` name others of its arms) over its period (narrowed by `since`/`until`).
//! The same model as A and B is an A/A comparison: both arms hold the same votes.
//! `plan` gives the votes per arm at which a difference of `min_detectable_effect` (default
//! 0.02, two points) would be found with the configured power (`LIKERATE_AB_POWER`).

use super::{db_error, Filter, ParamError, Params};
use crate::experiment::Experiment;
use crate::http::{ApiError, AppState};
use crate::rollup::Counts;
use crate::stats::{
    estimate, sequential, two_sided_p, votes_needed, wilson, Cell, Clusters, Side, Units, Z95,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Fewest votes per model (overall, per subject, or in the stratified comparison) for a
/// verdict other than `not_enough_data`: below it the normal approximation of the test is
/// poor and a 95% interval is wider than ±10 points.
pub const MIN_VOTES: i64 = 100;
/// Significance level of the verdicts.
pub const ALPHA: f64 = 0.05;
/// The smallest difference worth planning for when the request does not say: two points.
pub const DEFAULT_EFFECT: f64 = 0.02;

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    ABetter,
    BBetter,
    NoDifference,
    NotEnoughData,
}

/// What the variance is computed over.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Conversation,
    Vote,
}

impl Unit {
    fn parse(value: Option<&str>) -> Result<Unit, ParamError> {
        match value {
            None | Some("") | Some("conversation") => Ok(Unit::Conversation),
            Some("vote") => Ok(Unit::Vote),
            Some(other) => Err(ParamError::new(
                "unit",
                format!("must be conversation or vote, got {other:?}"),
            )),
        }
    }
}

/// Where a group's votes come from ([`Units`], owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupUnits {
    /// Each vote is its own unit.
    Votes,
    /// One conversation, by name.
    Conversation(String),
    /// Conversations with all their votes in this group, by their sums; the key names the
    /// cell (groups with the same key hold the same conversations).
    Conversations(String, Clusters),
}

/// Current votes of one subject and side, and the units they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub subject: String,
    pub side: Side,
    pub units: GroupUnits,
    pub counts: Counts,
}

impl Group {
    fn cell(&self, stratum: usize) -> Cell<'_> {
        Cell {
            units: match &self.units {
                GroupUnits::Votes => Units::Votes,
                GroupUnits::Conversation(name) => Units::One(name),
                GroupUnits::Conversations(key, sums) => Units::Many(key, *sums),
            },
            stratum,
            side: self.side,
            votes: self.counts.total(),
            likes: self.counts.likes,
        }
    }
}

/// One model's figures.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Arm {
    pub model: String,
    pub votes: i64,
    pub likes: i64,
    pub dislikes: i64,
    pub neutral: i64,
    /// `None` (null) without votes.
    pub like_rate: Option<f64>,
    /// 95% Wilson score interval of the like rate; (0, 1) without votes.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Independent units behind the votes (conversations, plus votes without one).
    pub units: usize,
}

impl Arm {
    fn new(model: &str, c: Counts, units: usize) -> Arm {
        let (ci_low, ci_high) = wilson(c.likes, c.total(), Z95);
        Arm {
            model: model.to_owned(),
            votes: c.total(),
            likes: c.likes,
            dislikes: c.dislikes,
            neutral: c.neutral,
            like_rate: c.like_ratio(),
            ci_low,
            ci_high,
            units,
        }
    }
}

/// The always-valid test of a difference, as answered.
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct Test {
    /// Like rate of A minus like rate of B (weighted by subject when stratified); `None` when
    /// no (subject with) votes on both sides.
    pub difference: Option<f64>,
    /// Always-valid p-value: below `alpha` at any look with probability at most `alpha` when
    /// the models do not differ.
    pub p_value: Option<f64>,
    /// 95% confidence sequence of the difference (valid at every look at once).
    pub difference_ci_low: Option<f64>,
    pub difference_ci_high: Option<f64>,
    pub verdict: Verdict,
}

impl Test {
    fn new(cells: &[Cell], clustered: bool, votes_a: i64, votes_b: i64) -> Test {
        let e = estimate(cells, clustered);
        let s = e.as_ref().map(|e| sequential(e, ALPHA));
        let verdict = match (e, s) {
            _ if votes_a < MIN_VOTES || votes_b < MIN_VOTES => Verdict::NotEnoughData,
            (Some(e), Some(s)) if s.p_value < ALPHA && e.difference > 0.0 => Verdict::ABetter,
            (Some(e), Some(s)) if s.p_value < ALPHA && e.difference < 0.0 => Verdict::BBetter,
            _ => Verdict::NoDifference,
        };
        Test {
            difference: e.map(|e| e.difference),
            p_value: s.map(|s| s.p_value),
            difference_ci_low: s.map(|s| s.ci_low),
            difference_ci_high: s.map(|s| s.ci_high),
            verdict,
        }
    }
}

/// A and B with the test between them.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Comparison {
    pub model_a: Arm,
    pub model_b: Arm,
    #[serde(flatten)]
    pub test: Test,
    /// Two-sided p-value of the pooled two-proportion z-test, votes as independent: valid for
    /// one look at a sample size fixed in advance only. `None` when either has no votes.
    pub fixed_horizon_p_value: Option<f64>,
}

/// The pooled z-test of the votes, for `fixed_horizon_p_value`.
fn fixed_horizon_p(a: Counts, b: Counts) -> Option<f64> {
    let (pa, pb) = (a.like_ratio()?, b.like_ratio()?);
    let (na, nb) = (a.total() as f64, b.total() as f64);
    let pooled = (a.likes + b.likes) as f64 / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    // All likes or no likes on both sides: the rates are equal, nothing to test.
    Some(if se > 0.0 {
        two_sided_p((pa - pb) / se)
    } else {
        1.0
    })
}

fn totals(groups: &[&Group]) -> (Counts, Counts) {
    groups.iter().fold(
        (Counts::default(), Counts::default()),
        |(a, b), g| match g.side {
            Side::A => (a + g.counts, b),
            Side::B => (a, b + g.counts),
        },
    )
}

/// Independent units of one side: its conversations and its votes without one (every vote
/// when not clustered).
fn units(groups: &[&Group], side: Side, clustered: bool) -> usize {
    let mut conversations = std::collections::BTreeSet::new();
    let mut singles = 0;
    for g in groups
        .iter()
        .filter(|g| g.side == side && g.counts.total() > 0)
    {
        match &g.units {
            GroupUnits::Conversation(name) if clustered => {
                conversations.insert(name);
            }
            GroupUnits::Conversations(_, sums) if clustered => singles += sums.count as usize,
            _ => singles += g.counts.total() as usize,
        }
    }
    conversations.len() + singles
}

impl Comparison {
    /// The groups compared as one stratum.
    fn new(model_a: &str, model_b: &str, groups: &[&Group], clustered: bool) -> Comparison {
        let (a, b) = totals(groups);
        let cells: Vec<Cell> = groups.iter().map(|g| g.cell(0)).collect();
        Comparison {
            model_a: Arm::new(model_a, a, units(groups, Side::A, clustered)),
            model_b: Arm::new(model_b, b, units(groups, Side::B, clustered)),
            test: Test::new(&cells, clustered, a.total(), b.total()),
            fixed_horizon_p_value: fixed_horizon_p(a, b),
        }
    }
}

/// The comparison stratified by subject.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Stratified {
    /// The Mantel–Haenszel-weighted difference of like rates (weights nA nB / (nA + nB)),
    /// tested sequentially like the pooled one.
    pub method: &'static str,
    /// Subjects where both models have votes (the others carry no comparison).
    pub subjects: usize,
    pub votes_a: i64,
    pub votes_b: i64,
    #[serde(flatten)]
    pub test: Test,
    /// Mantel–Haenszel common odds ratio of a like, A vs B; `None` when undefined.
    pub odds_ratio: Option<f64>,
    /// p-value of the Cochran–Mantel–Haenszel chi-square (1 degree of freedom, no continuity
    /// correction), votes as independent: fixed-horizon, like the pooled one.
    pub fixed_horizon_p_value: Option<f64>,
}

/// `groups` with their stratum (subject) index.
fn stratified(groups: &[(usize, &Group)], clustered: bool) -> Stratified {
    let strata = groups.iter().map(|(s, _)| s + 1).max().unwrap_or(0);
    let mut per = vec![(Counts::default(), Counts::default()); strata];
    for (s, g) in groups {
        let cell = &mut per[*s];
        match g.side {
            Side::A => cell.0 += g.counts,
            Side::B => cell.1 += g.counts,
        }
    }
    let compared: Vec<bool> = per
        .iter()
        .map(|(a, b)| a.total() > 0 && b.total() > 0)
        .collect();
    let (votes_a, votes_b) = per
        .iter()
        .zip(&compared)
        .filter(|(_, c)| **c)
        .fold((0, 0), |(x, y), ((a, b), _)| (x + a.total(), y + b.total()));
    let cells: Vec<Cell> = groups.iter().map(|(s, g)| g.cell(*s)).collect();
    let (odds_ratio, fixed_horizon_p_value) = cochran_mantel_haenszel(&per);
    Stratified {
        method: "mantel_haenszel_weighted_difference",
        subjects: compared.iter().filter(|c| **c).count(),
        votes_a,
        votes_b,
        test: Test::new(&cells, clustered, votes_a, votes_b),
        odds_ratio,
        fixed_horizon_p_value,
    }
}

/// The Cochran–Mantel–Haenszel test of "like" vs model over strata of (A, B) counts: the
/// common odds ratio and the chi-square's p-value.
fn cochran_mantel_haenszel(strata: &[(Counts, Counts)]) -> (Option<f64>, Option<f64>) {
    let (mut deviation, mut variance, mut r, mut s, mut subjects) = (0.0, 0.0, 0.0, 0.0, 0);
    for (a, b) in strata {
        let (n1, n2) = (a.total() as f64, b.total() as f64);
        if n1 == 0.0 || n2 == 0.0 {
            continue;
        }
        subjects += 1;
        let t = n1 + n2;
        let liked = (a.likes + b.likes) as f64;
        let other = t - liked;
        deviation += a.likes as f64 - n1 * liked / t;
        if t > 1.0 {
            variance += n1 * n2 * liked * other / (t * t * (t - 1.0));
        }
        r += a.likes as f64 * (b.total() - b.likes) as f64 / t;
        s += (a.total() - a.likes) as f64 * b.likes as f64 / t;
    }
    let p_value = if subjects == 0 {
        None
    } else if variance > 0.0 {
        // A chi-square with one degree of freedom is a squared standard normal.
        Some(two_sided_p(deviation / variance.sqrt()))
    } else {
        Some(1.0)
    };
    ((s > 0.0).then(|| r / s), p_value)
}

/// How many votes the experiment needs.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Plan {
    pub min_detectable_effect: f64,
    pub power: f64,
    /// Like rate of both models together: the planned arms sit at it ± half the effect.
    pub baseline_like_rate: Option<f64>,
    /// Variance by unit over variance by vote (at least 1): how much clustering costs.
    pub design_effect: Option<f64>,
    /// Votes per arm at which a difference of `min_detectable_effect` is found with
    /// probability `power` (at least; looking more often only adds chances).
    pub votes_needed_per_arm: Option<i64>,
    /// `votes_needed_per_arm` minus the votes of the arm with fewer, at least 0.
    pub more_votes_per_arm: Option<i64>,
}

fn plan(pooled: &[&Group], clustered: bool, effect: f64, power: f64) -> Plan {
    let (a, b) = totals(pooled);
    let both = a + b;
    let cells: Vec<Cell> = pooled.iter().map(|g| g.cell(0)).collect();
    let design_effect = match (estimate(&cells, clustered), estimate(&cells, false)) {
        (Some(u), Some(v)) if v.variance > 0.0 => Some((u.variance / v.variance).max(1.0)),
        (Some(_), Some(_)) => Some(1.0),
        _ => None,
    };
    let baseline = both.like_ratio();
    let needed = baseline
        .zip(design_effect)
        .map(|(p, d)| votes_needed(p, effect, power, ALPHA, d));
    Plan {
        min_detectable_effect: effect,
        power,
        baseline_like_rate: baseline,
        design_effect,
        votes_needed_per_arm: needed,
        more_votes_per_arm: needed.map(|n| (n - a.total().min(b.total())).max(0)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareParams {
    model_a: Option<String>,
    model_b: Option<String>,
    subject_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    experiment: Option<String>,
    unit: Option<String>,
    min_detectable_effect: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct SubjectComparison {
    pub subject_id: String,
    #[serde(flatten)]
    pub comparison: Comparison,
}

/// How the verdicts are reached.
#[derive(Serialize, Debug)]
pub struct Method {
    pub test: &'static str,
    /// Standard deviation of the normal mixture over the difference.
    pub mixture_sd: f64,
}

#[derive(Serialize, Debug)]
pub struct CompareAnswer {
    #[serde(flatten)]
    pub pooled: Comparison,
    pub subject_id: Option<String>,
    pub experiment: Option<String>,
    /// The period compared (`null`: unbounded), after an experiment's period applied.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The unit of the variance: `conversation` when some votes carry a `conversation_id`
    /// and clustering is on, else `vote`.
    pub unit: Unit,
    pub min_votes: i64,
    pub alpha: f64,
    pub method: Method,
    pub by_subject: Vec<SubjectComparison>,
    pub stratified: Stratified,
    pub simpson_warning: bool,
    pub plan: Plan,
}

/// Everything of the answer that follows from the groups.
fn analyse(
    model_a: &str,
    model_b: &str,
    groups: &[Group],
    requested: Unit,
    effect: f64,
    power: f64,
) -> (Comparison, Vec<SubjectComparison>, Stratified, Unit, Plan) {
    let clustered = requested == Unit::Conversation;
    let unit = if clustered && groups.iter().any(|g| g.units != GroupUnits::Votes) {
        Unit::Conversation
    } else {
        Unit::Vote
    };
    let all: Vec<&Group> = groups.iter().collect();
    let mut subjects: BTreeMap<&str, Vec<&Group>> = BTreeMap::new();
    for g in groups {
        subjects.entry(&g.subject).or_default().push(g);
    }
    let indexed: Vec<(usize, &Group)> = subjects
        .values()
        .enumerate()
        .flat_map(|(i, gs)| gs.iter().map(move |g| (i, *g)))
        .collect();
    let by_subject = subjects
        .iter()
        .map(|(subject, gs)| SubjectComparison {
            subject_id: (*subject).to_owned(),
            comparison: Comparison::new(model_a, model_b, gs, clustered),
        })
        .collect();
    (
        Comparison::new(model_a, model_b, &all, clustered),
        by_subject,
        stratified(&indexed, clustered),
        unit,
        plan(&all, clustered, effect, power),
    )
}

/// The groups of an A/A comparison (the same model as A and B, which the document cannot
/// forbid: JSON Schema does not compare two query parameters) are read once, as A: both arms
/// then hold the same votes, and the difference is exactly 0.
fn a_a(model_a: &str, model_b: &str, groups: Vec<Group>) -> Vec<Group> {
    if model_a != model_b {
        return groups;
    }
    groups
        .into_iter()
        .flat_map(|g| {
            let b = Group {
                side: Side::B,
                ..g.clone()
            };
            [g, b]
        })
        .collect()
}

fn required(param: &'static str, value: Option<String>) -> Result<String, ParamError> {
    super::text_param(param, value.as_deref())?.ok_or_else(|| ParamError::new(param, "is required"))
}

fn effect(value: Option<&str>) -> Result<f64, ParamError> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_EFFECT);
    };
    v.parse::<f64>()
        .ok()
        .filter(|e| *e > 0.0 && *e < 1.0)
        .ok_or_else(|| {
            ParamError::new(
                "min_detectable_effect",
                format!("must be a difference of like rates in (0, 1) such as 0.02, got {v:?}"),
            )
        })
}

pub async fn compare(
    State(state): State<AppState>,
    Params(p): Params<CompareParams>,
) -> Result<Json<CompareAnswer>, ApiError> {
    let unit = Unit::parse(p.unit.as_deref())?;
    let effect = effect(p.min_detectable_effect.as_deref())?;
    let filter = Filter::parse(
        p.subject_id.as_deref(),
        None,
        p.since.as_deref(),
        p.until.as_deref(),
    )?;
    let request = match p.experiment.filter(|e| !e.is_empty()) {
        None => Request {
            model_a: required("model_a", p.model_a)?,
            model_b: required("model_b", p.model_b)?,
            filter,
            experiment: None,
            unit,
            effect,
        },
        Some(name) => {
            let e = state.api.ab.experiments.get(&name).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_experiment",
                    format!("no experiment named {name:?} is configured"),
                )
            })?;
            Request::experiment(e, filter, p.model_a, p.model_b, unit, effect)?
        }
    };
    let answer = async {
        let client = state.pool.get().await?;
        answer(&client, request, state.api.ab.power).await
    }
    .await
    .map_err(db_error)?;
    Ok(Json(answer))
}

/// What to compare: two model versions over a filter (its `model` is not used).
#[derive(Debug, Clone)]
pub struct Request {
    pub model_a: String,
    pub model_b: String,
    pub filter: Filter,
    /// The experiment's name, when its arms are compared.
    pub experiment: Option<String>,
    pub unit: Unit,
    pub effect: f64,
}

impl Request {
    /// Arms `model_a`/`model_b` of the experiment (empty or absent: its first and second) over
    /// its period narrowed by the filter's `since`/`until`; an arm it does not have is a
    /// [`ParamError`] naming the parameter.
    pub fn experiment(
        e: &Experiment,
        mut filter: Filter,
        model_a: Option<String>,
        model_b: Option<String>,
        unit: Unit,
        effect: f64,
    ) -> Result<Request, ParamError> {
        let name = &e.name;
        let arm = |param: &'static str, value: Option<String>, default: usize| {
            let model = value
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| e.arms[default].model.clone());
            if e.arms.iter().any(|a| a.model == model) {
                Ok(model)
            } else {
                Err(ParamError::new(
                    param,
                    format!("{model:?} is not an arm of experiment {name:?}"),
                ))
            }
        };
        filter.since = Some(filter.since.map_or(e.start, |s| s.max(e.start)));
        filter.until = match (filter.until, e.end) {
            (Some(u), Some(end)) => Some(u.min(end)),
            (u, end) => u.or(end),
        };
        Ok(Request {
            model_a: arm("model_a", model_a, 0)?,
            model_b: arm("model_b", model_b, 1)?,
            filter,
            experiment: Some(name.clone()),
            unit,
            effect,
        })
    }
}

/// The comparison of `request`, planned at `power`: `GET /api/feedback/compare`'s answer, also
/// the A/B section of `likerate report`.
pub async fn answer(
    client: &impl GenericClient,
    request: Request,
    power: f64,
) -> Result<CompareAnswer, crate::db::DbError> {
    let Request {
        model_a,
        model_b,
        filter,
        experiment,
        unit,
        effect,
    } = request;
    let models = vec![model_a.clone(), model_b.clone()];
    let side = |model: &str| if model == model_a { Side::A } else { Side::B };
    let groups: Vec<Group> = match unit {
        Unit::Vote => {
            let range = filter.rollup_range(Some(models));
            crate::rollup::read::cells(client, &range)
                .await?
                .into_iter()
                .map(|((subject, model), counts)| Group {
                    side: side(&model),
                    subject,
                    units: GroupUnits::Votes,
                    counts,
                })
                .collect()
        }
        Unit::Conversation => by_conversation(client, &filter, models)
            .await?
            .iter()
            .map(|r| {
                let (subject, model): (String, &str) = (r.get(0), r.get(1));
                let units = match (r.get::<_, Option<String>>(2), r.get::<_, bool>(3)) {
                    (Some(name), _) => GroupUnits::Conversation(name),
                    (None, true) => GroupUnits::Conversations(
                        // NUL cannot occur in either text: the key is unique per cell.
                        format!("{subject}\0{model}"),
                        Clusters {
                            count: r.get(7),
                            votes_sq: r.get(8),
                            likes_sq: r.get(9),
                            likes_votes: r.get(10),
                        },
                    ),
                    (None, false) => GroupUnits::Votes,
                };
                Group {
                    side: side(model),
                    subject,
                    units,
                    counts: Counts {
                        likes: r.get(4),
                        dislikes: r.get(5),
                        neutral: r.get(6),
                    },
                }
            })
            .collect(),
    };
    let groups = a_a(&model_a, &model_b, groups);
    let (pooled, by_subject, stratified, unit, plan) =
        analyse(&model_a, &model_b, &groups, unit, effect, power);
    let decisive = |v: Verdict| v != Verdict::NotEnoughData;
    let simpson_warning = decisive(pooled.test.verdict)
        && decisive(stratified.test.verdict)
        && pooled.test.verdict != stratified.test.verdict;
    Ok(CompareAnswer {
        pooled,
        subject_id: filter.subject_id,
        experiment,
        since: filter.since,
        until: filter.until,
        unit,
        min_votes: MIN_VOTES,
        alpha: ALPHA,
        method: Method {
            test: "msprt_normal_mixture",
            mixture_sd: crate::stats::MIXTURE_SD,
        },
        by_subject,
        stratified,
        simpson_warning,
        plan,
    })
}

/// The units of the current votes per (subject, model) ([`crate::units::read`]), with
/// `since`/`until` rounded down to the minute like the rollups.
async fn by_conversation(
    client: &impl GenericClient,
    filter: &Filter,
    models: Vec<String>,
) -> Result<Vec<tokio_postgres::Row>, crate::db::DbError> {
    let minute = |t: Option<DateTime<Utc>>| t.map(|t| crate::rollup::truncate(t, 60));
    crate::units::read(
        client,
        filter.subject_id.as_deref(),
        minute(filter.since),
        minute(filter.until),
        &models,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(subject: &str, side: Side, likes: i64, votes: i64) -> Group {
        Group {
            subject: subject.to_owned(),
            side,
            units: GroupUnits::Votes,
            counts: Counts {
                likes,
                dislikes: votes - likes,
                neutral: 0,
            },
        }
    }

    fn close(a: Option<f64>, b: f64, tol: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() <= tol)
    }

    /// The kidney-stone shape of Simpson's paradox, times six: A is better in each subject, B
    /// looks better pooled because A got the harder subject more often. Expected figures
    /// computed independently (Python, math only, formulas of docs/ab-testing.md):
    /// pooled A 1638/2100, B 1734/2100: difference -0.0457143, always-valid p = 0.00682236,
    /// sequence (-0.0830153, -0.0084132), fixed-horizon p = 1.96576e-4;
    /// Math: p = 3.69744e-4 (a_better); Physics: p = 0.610435 (no_difference), fixed 0.0690994;
    /// stratified: weighted difference 0.0538356, p = 0.00369442, CMH p = 1.30246e-4.
    #[test]
    fn simpson_case_has_known_answers() {
        let groups = [
            group("Math", Side::A, 486, 522),
            group("Math", Side::B, 1404, 1620),
            group("Physics", Side::A, 1152, 1578),
            group("Physics", Side::B, 330, 480),
        ];
        let (pooled, by, strat, unit, _) =
            analyse("a", "b", &groups, Unit::Conversation, 0.02, 0.8);
        assert_eq!(unit, Unit::Vote);
        assert_eq!((pooled.model_a.votes, pooled.model_a.units), (2100, 2100));
        assert!(close(pooled.test.difference, -0.045_714_29, 1e-8));
        assert!(close(pooled.test.p_value, 0.006_822_36, 1e-8));
        assert!(close(pooled.test.difference_ci_low, -0.083_015_35, 1e-8));
        assert!(close(pooled.test.difference_ci_high, -0.008_413_22, 1e-8));
        assert!(close(pooled.fixed_horizon_p_value, 1.965_76e-4, 1e-8));
        assert_eq!(pooled.test.verdict, Verdict::BBetter);
        assert_eq!(by[0].subject_id, "Math");
        assert!(close(by[0].comparison.test.p_value, 3.697_44e-4, 1e-8));
        assert_eq!(by[0].comparison.test.verdict, Verdict::ABetter);
        assert!(close(by[1].comparison.test.p_value, 0.610_435, 1e-6));
        assert!(close(
            by[1].comparison.fixed_horizon_p_value,
            0.069_099_4,
            1e-6
        ));
        assert_eq!(by[1].comparison.test.verdict, Verdict::NoDifference);
        assert!(close(strat.test.difference, 0.053_835_57, 1e-8));
        assert!(close(strat.test.p_value, 0.003_694_42, 1e-8));
        assert!(close(strat.fixed_horizon_p_value, 1.302_46e-4, 1e-9));
        assert_eq!(strat.test.verdict, Verdict::ABetter);
        assert_eq!((strat.subjects, strat.votes_a), (2, 2100));
    }

    #[test]
    fn a_model_compared_with_itself_does_not_differ() {
        let mut g = group("Math", Side::A, 150, 200);
        g.units = GroupUnits::Conversation("c1".to_owned());
        let groups = a_a("m", "m", vec![g, group("Physics", Side::A, 30, 100)]);
        assert_eq!(groups.len(), 4);
        let (pooled, by, strat, _, _) = analyse("m", "m", &groups, Unit::Conversation, 0.02, 0.8);
        assert_eq!(pooled.model_a, pooled.model_b);
        assert_eq!((pooled.model_a.votes, pooled.model_a.likes), (300, 180));
        assert_eq!(pooled.test.difference, Some(0.0));
        assert_eq!(pooled.test.p_value, Some(1.0));
        assert_eq!(pooled.test.verdict, Verdict::NoDifference);
        assert_eq!(strat.test.verdict, Verdict::NoDifference);
        assert_eq!(by.len(), 2);
        // Two different models are left alone.
        assert_eq!(a_a("m", "n", vec![group("Math", Side::A, 1, 2)]).len(), 1);
    }

    /// A: 200 votes at 80% and one conversation of 300 likes; B: 500 votes at 80%
    /// ([`crate::stats`] has the figures). By vote A wins; by conversation nobody does.
    #[test]
    fn the_unit_decides_whether_one_conversation_can_win() {
        let chatty = Group {
            units: GroupUnits::Conversation("conv-1".into()),
            ..group("Math", Side::A, 300, 300)
        };
        let groups = [
            group("Math", Side::A, 160, 200),
            chatty,
            group("Math", Side::B, 400, 500),
        ];
        let (by_vote, _, _, unit, _) = analyse("a", "b", &groups, Unit::Vote, 0.02, 0.8);
        assert_eq!((unit, by_vote.model_a.units), (Unit::Vote, 500));
        assert_eq!(by_vote.test.verdict, Verdict::ABetter);
        let (by_conv, _, strat, unit, plan) =
            analyse("a", "b", &groups, Unit::Conversation, 0.02, 0.8);
        assert_eq!((unit, by_conv.model_a.units), (Unit::Conversation, 201));
        assert_eq!(by_conv.test.verdict, Verdict::NoDifference);
        assert_eq!(strat.test.verdict, Verdict::NoDifference);
        // Variances 0.00276352 (by unit) and 4.672e-4 (by vote): design effect 5.91507.
        assert!(close(plan.design_effect, 5.915_07, 1e-5), "{plan:?}");
    }

    /// Planning figures from Python (the inequality of docs/ab-testing.md tried for n = 1, 2,
    /// ...): baseline 3372/4200 = 0.802857, 2 points at 80% power: 12,542 votes per arm;
    /// 5 points at 90%: 2,354.
    #[test]
    fn the_plan_counts_the_votes_still_needed() {
        let groups = [
            group("Math", Side::A, 1638, 2100),
            group("Math", Side::B, 1734, 2100),
        ];
        let p = analyse("a", "b", &groups, Unit::Vote, 0.02, 0.8).4;
        assert!(close(p.baseline_like_rate, 0.802_857_14, 1e-8));
        assert_eq!(p.design_effect, Some(1.0));
        assert_eq!(p.votes_needed_per_arm, Some(12_542));
        assert_eq!(p.more_votes_per_arm, Some(12_542 - 2100));
        let p = analyse("a", "b", &groups, Unit::Vote, 0.05, 0.9).4;
        assert_eq!(
            (p.votes_needed_per_arm, p.more_votes_per_arm),
            (Some(2354), Some(254))
        );
        let none = analyse("a", "b", &[], Unit::Vote, 0.02, 0.8).4;
        assert_eq!(
            (none.baseline_like_rate, none.votes_needed_per_arm),
            (None, None)
        );
    }

    #[test]
    fn small_or_degenerate_samples() {
        let c = |a: Group, b: Group| analyse("a", "b", &[a, b], Unit::Vote, 0.02, 0.8).0;
        let small = c(group("M", Side::A, 90, 99), group("M", Side::B, 10, 500));
        assert_eq!(small.test.verdict, Verdict::NotEnoughData);
        let all = c(group("M", Side::A, 200, 200), group("M", Side::B, 300, 300));
        assert_eq!(
            (all.test.p_value, all.test.verdict),
            (Some(1.0), Verdict::NoDifference)
        );
        assert_eq!(all.fixed_horizon_p_value, Some(1.0));
        let one_sided = c(group("M", Side::A, 0, 0), group("M", Side::B, 300, 300));
        assert_eq!(
            (one_sided.test.difference, one_sided.test.p_value),
            (None, None)
        );
        assert_eq!(one_sided.model_a.like_rate, None);
        let s = analyse(
            "a",
            "b",
            &[group("M", Side::A, 5, 10)],
            Unit::Vote,
            0.02,
            0.8,
        )
        .2;
        assert_eq!(
            (s.subjects, s.test.p_value, s.fixed_horizon_p_value),
            (0, None, None)
        );
        assert_eq!(s.test.verdict, Verdict::NotEnoughData);
    }

    #[test]
    fn parameters_are_parsed() {
        assert_eq!(Unit::parse(None).unwrap(), Unit::Conversation);
        assert_eq!(Unit::parse(Some("vote")).unwrap(), Unit::Vote);
        assert_eq!(Unit::parse(Some("user")).unwrap_err().param, "unit");
        assert_eq!(effect(None).unwrap(), 0.02);
        assert_eq!(effect(Some("0.05")).unwrap(), 0.05);
        for bad in ["0", "1", "-0.1", "two", "NaN", "inf"] {
            assert_eq!(
                effect(Some(bad)).unwrap_err().param,
                "min_detectable_effect"
            );
        }
    }
}
