//! HTTP: `/metrics`, `/healthz`, `/readyz` and the feedback API of [`crate::api`]
//! (docs/contract.md section 6) on one axum server.
//!
//! Guarantees: errors are JSON `{"error", "detail"}` with a 4xx/5xx status; readiness is true
//! only while the database answers within a second and the consumer has joined its group.

use crate::telemetry::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Metrics,
    pub pool: Pool,
    /// Set once the consumer received its first assignment (possibly empty).
    pub joined: Arc<AtomicBool>,
    /// The feedback API's export token and producer.
    pub api: crate::api::ApiState,
}

/// An error answer: `{"error": "...", "detail": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.error, "detail": self.detail});
        (self.status, Json(body)).into_response()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::api::router())
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let db = tokio::time::timeout(Duration::from_secs(1), async {
        let client = state.pool.get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| "timed out".to_owned())
    .and_then(|r| r);
    if let Err(e) = db {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("database: {e}"),
        ));
    }
    if !state.joined.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "consumer has not joined its group yet",
        ));
    }
    Ok(Json(serde_json::json!({"status": "ready"})))
}
