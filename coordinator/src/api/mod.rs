//! HTTP APIs: the native one (`/api/v1`), the DTM-compatible one (`/api/dtmsvr`), the
//! admin one (`/api/admin`), and `/healthz`. Routers are assembled here, one function per area.

pub mod admin;
pub mod auth;
pub mod dtm;
pub mod error;
pub mod native;
pub mod time;
pub mod ui;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::service::Coordinator;
use error::ApiError;

/// Every route of the coordinator.
pub fn router(coordinator: Arc<Coordinator>) -> Router {
    let limit = coordinator.config().body_limit_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(ui::router())
        .nest("/api/v1", native::router())
        .nest("/api/dtmsvr", dtm::router())
        .nest("/api/admin", admin::router())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(traceparent_scope))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(coordinator)
}

/// Makes the initiator's `traceparent` header visible to the service while it serves the
/// request (it is kept with the transactions the request creates).
async fn traceparent_scope(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let tp = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    crate::telemetry::with_request_traceparent(tp, next.run(req)).await
}

async fn healthz(State(c): State<Arc<Coordinator>>) -> Result<Json<Value>, ApiError> {
    match c.store().now().await {
        Ok(_) => Ok(Json(
            json!({ "status": "ok", "store": c.store().backend() }),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}"),
            None,
        )),
    }
}

/// Prometheus text exposition; the store's gauges are read now (a store that does not answer
/// leaves them at their last value: the process's own figures are still worth having).
async fn metrics(State(c): State<Arc<Coordinator>>) -> impl axum::response::IntoResponse {
    let gauges = match c.store().gauges().await {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: store gauges unavailable");
            None
        }
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        c.metrics().render(gauges, c.driving(), c.now()),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; see /api/v1, /api/dtmsvr, /api/admin (described by /api/admin/openapi.json) and the dashboard at /",
        None,
    )
}
