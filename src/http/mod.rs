//! HTTP: `/metrics`, `/healthz`, `/readyz` and the feedback API of [`crate::http::api`]
//! (docs/contract.md section 6) on one axum server.
//!
//! Guarantees: errors are JSON `{"error", "detail"}` with a 4xx/5xx status; readiness is true
//! only while the database answers within a second and the consumer has joined its group.
//!
//! Every resource a client can hold is bounded ([`serve`], [`router_with`]):
//! - connections: at most `max_connections` open; at the cap, accepting a new one closes the
//!   one that has been idle (nothing read or written) the longest, so connections opened and
//!   left idle cannot lock out a client that sends a request (`/healthz` keeps answering);
//! - time: request headers must arrive within `read_timeout` (hyper closes the connection),
//!   and a request body too (408);
//! - requests: at most `max_requests` API requests are handled at once; more are answered 503
//!   at once (load shedding) rather than queued. `/healthz`, `/readyz` and `/metrics` stay
//!   outside that bound, so probes and scrapes answer while the API is saturated;
//! - bodies: per route ([`crate::http::api`]): `POST /api/feedback` up to its limit, other routes
//!   read none.

pub mod api;

use crate::config::{CorsOrigins, HttpLimits};
use crate::telemetry::Metrics;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Metrics,
    pub pool: Pool,
    /// Set once the consumer received its first assignment (possibly empty).
    pub joined: Arc<AtomicBool>,
    /// The feedback API's export token and producer.
    pub api: crate::http::api::ApiState,
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

/// Seconds a client is told to wait (`Retry-After`) when the answer is 429 or 503: long enough
/// for a running read to end or the database to come back, short against a human's patience.
const RETRY_AFTER_SECS: &str = "5";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.error, "detail": self.detail});
        let mut response = (self.status, Json(body)).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// The server's routes with the default limits and no CORS.
pub fn router(state: AppState) -> Router {
    router_with(state, &CorsOrigins::None, &HttpLimits::default())
}

/// The server's routes: the API behind load shedding, a body read timeout and CORS.
pub fn router_with(state: AppState, cors: &CorsOrigins, limits: &HttpLimits) -> Router {
    let api = crate::http::api::router().layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(overloaded))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                limits.max_requests,
            ))
            .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
                limits.read_timeout,
            )),
    );
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .with_state(state);
    match cors_layer(cors) {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// The answer to a request shed because `max_requests` are in progress.
async fn overloaded(_: tower::BoxError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "too many requests in progress; retry later",
    )
}

/// CORS for browser front ends: the configured origins may call every route with the
/// methods and headers the API uses; preflight requests are answered by the layer.
fn cors_layer(origins: &CorsOrigins) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = match origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        // The origins were checked to be printable ASCII by the configuration.
        CorsOrigins::List(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .expose_headers([header::LINK])
            .max_age(Duration::from_secs(600)),
    )
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
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
        // The database's own message (host names, roles, versions) goes to the log, not to
        // whoever can reach the port.
        tracing::warn!(error = %e, "readiness: database check failed");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the database does not answer",
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

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 1024,
            max_requests: 256,
            read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, within `limits` (see the module guarantees).
/// On shutdown, open connections finish their request in progress for up to 5 s.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let open = Arc::new(Connections::new(limits.max_connections));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.read_timeout);
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors (or a reset before accept): wait a moment
                    // rather than spin, and log once a minute at most.
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "HTTP accept failed");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = open.admit();
        let io = hyper_util::rt::TokioIo::new(Tracked {
            io: stream,
            slot: slot.state.clone(),
        });
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http1.serve_connection(io, service);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = slot.state.evicted.cancelled() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            drop(slot);
        });
    }
}

/// The open connections and when each last moved a byte.
struct Connections {
    max: usize,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<SlotState>>>,
}

struct SlotState {
    /// Milliseconds after `epoch` of the last read or write.
    last_active: AtomicU64,
    evicted: CancellationToken,
    epoch: Instant,
}

impl SlotState {
    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_active.store(now, Ordering::Relaxed);
    }
}

/// One admitted connection; leaves the table when dropped.
struct Slot {
    id: u64,
    state: Arc<SlotState>,
    open: Arc<Connections>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.lock().remove(&self.id);
    }
}

impl Connections {
    fn new(max: usize) -> Connections {
        Connections {
            max,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SlotState>>> {
        // The table stays consistent whatever panicked while holding it.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection; at the cap, first closes the longest idle one.
    fn admit(self: &Arc<Self>) -> Slot {
        let state = Arc::new(SlotState {
            last_active: AtomicU64::new(0),
            evicted: CancellationToken::new(),
            epoch: self.epoch,
        });
        state.touch();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut open = self.lock();
        if open.len() >= self.max {
            let idlest = open
                .iter()
                .min_by_key(|(_, s)| s.last_active.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            if let Some(victim) = idlest.and_then(|id| open.remove(&id)) {
                victim.evicted.cancel();
            }
        }
        open.insert(id, state.clone());
        Slot {
            id,
            state,
            open: self.clone(),
        }
    }
}

/// A connection's stream that records when it last moved bytes.
struct Tracked {
    io: TcpStream,
    slot: Arc<SlotState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.slot.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
