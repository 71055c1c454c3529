//! `GET /api/experiments/{name}/assignment?unit=`: the arm (model version) a unit is assigned
//! to, by [`crate::experiment`]'s hash, so it is the same on every instance and restart.
//!
//! Unknown experiment: 404 `unknown_experiment`. `unit` is required, 1 to 128 characters (the
//! length of a `conversation_id`), else 400 naming it. The answer says whether the experiment
//! is running now (`active`); the assignment is the same before, during and after it.

use super::{ParamError, Params};
use crate::http::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentParams {
    unit: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct Assignment {
    pub experiment: String,
    pub unit: String,
    /// The model version of the unit's arm.
    pub arm: String,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    pub active: bool,
}

pub async fn assignment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Params(p): Params<AssignmentParams>,
) -> Result<Json<Assignment>, ApiError> {
    let experiment = state.api.ab.experiments.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_experiment",
            format!("no experiment named {name:?} is configured"),
        )
    })?;
    let unit = match p.unit {
        Some(u) if !u.is_empty() && u.chars().count() <= 128 => u,
        Some(u) if !u.is_empty() => {
            return Err(ParamError::new("unit", "must be at most 128 characters").into())
        }
        _ => return Err(ParamError::new("unit", "is required: a user or conversation id").into()),
    };
    let now = Utc::now();
    Ok(Json(Assignment {
        experiment: experiment.name.clone(),
        arm: experiment.assign(&unit).model.clone(),
        unit,
        start: experiment.start,
        end: experiment.end,
        active: experiment.start <= now && experiment.end.is_none_or(|end| now < end),
    }))
}
