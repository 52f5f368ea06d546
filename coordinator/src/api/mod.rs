//! HTTP APIs: the native one (`/api/v1`), the DTM-compatible one (`/api/dtmsvr`), the
//! admin one (`/api/admin`), and `/healthz`. Routers are assembled here, one function per area.

pub mod admin;
pub mod dtm;
pub mod error;
pub mod native;
pub mod time;

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
        .nest("/api/v1", native::router())
        .nest("/api/dtmsvr", dtm::router())
        .nest("/api/admin", admin::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(coordinator)
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

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; see /api/v1 and /api/dtmsvr",
        None,
    )
}
