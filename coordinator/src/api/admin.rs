//! The admin API, `/api/admin/...`: what an operator on call needs to un-stick a
//! transaction — retry it now (fresh budget, failed phase-2 ops tried again) or force it to
//! roll back — and the audit log of every such action.
//!
//! With `DTX_ADMIN_TOKEN` set, actions need `Authorization: Bearer <token>`; without one,
//! they are accepted from loopback addresses only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson};
use super::time::rfc3339;
use crate::service::Coordinator;
use crate::store::{Operated, OperatorAction};

/// The routes under `/api/admin`.
pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/transactions/{gid}/retry", post(retry))
        .route("/transactions/{gid}/abort", post(abort))
        .route("/transactions/{gid}/audit", get(audit))
}

/// The body of an action: why, and who asks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why (required; kept in the audit log).
    pub reason: String,
    /// Who (e.g. `alice@oncall`); defaults to how the caller authenticated.
    #[serde(default)]
    pub actor: Option<String>,
}

/// One audit entry.
#[derive(Debug, Serialize)]
pub struct AuditEntry {
    /// When.
    pub at: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Why.
    pub reason: String,
}

/// Checks the caller; returns how it authenticated.
fn authorize(c: &Coordinator, headers: &HeaderMap, peer: SocketAddr) -> Result<String, ApiError> {
    match &c.config().admin_token {
        Some(token) => {
            let given = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given == Some(token.as_str()) {
                Ok("token".into())
            } else {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "admin actions need Authorization: Bearer <DTX_ADMIN_TOKEN>",
                    None,
                ))
            }
        }
        None if peer.ip().is_loopback() => Ok(format!("loopback {}", peer.ip())),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "no DTX_ADMIN_TOKEN is configured: admin actions are accepted from loopback only",
            None,
        )),
    }
}

async fn act(
    c: &Coordinator,
    headers: &HeaderMap,
    peer: SocketAddr,
    gid: &str,
    req: ActionRequest,
    action: OperatorAction,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = authorize(c, headers, peer)?;
    dtx::validate_gid(gid).map_err(|m| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("gid: {m}"),
            Some("gid".into()),
        )
    })?;
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > 1000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reason: say why, in 1 to 1000 bytes",
            Some("reason".into()),
        ));
    }
    let actor = req
        .actor
        .filter(|a| !a.is_empty() && a.len() <= 128)
        .unwrap_or(who);
    match c
        .store()
        .operate(gid, action, &actor, reason)
        .await
        .map_err(crate::service::ServiceError::from)?
    {
        Operated::Done(status) => {
            tracing::warn!(gid, actor = %actor, action = action.as_str(), reason, "operator action");
            Ok(Json(
                serde_json::json!({ "gid": gid, "status": status, "action": action.as_str() }),
            ))
        }
        Operated::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no transaction with gid `{gid}`"),
            Some("gid".into()),
        )),
        Operated::Refused(status, trans_type) => Err(ApiError::new(
            StatusCode::CONFLICT,
            match action {
                OperatorAction::RetryNow => {
                    format!("transaction `{gid}` is {status}: nothing to retry")
                }
                OperatorAction::ForceAbort => format!(
                    "transaction `{gid}` ({trans_type}) is {status}: only a prepared transaction or a submitted saga can be forced to roll back (a submitted {trans_type} must confirm)"
                ),
            },
            None,
        )),
    }
}

async fn retry(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(gid): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ActionRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    act(&c, &headers, peer, &gid, req, OperatorAction::RetryNow).await
}

async fn abort(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(gid): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ActionRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    act(&c, &headers, peer, &gid, req, OperatorAction::ForceAbort).await
}

async fn audit(
    State(c): State<Arc<Coordinator>>,
    Path(gid): Path<String>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let rows = c
        .store()
        .audit(&gid)
        .await
        .map_err(crate::service::ServiceError::from)?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AuditEntry {
                at: rfc3339(r.at),
                actor: r.actor,
                action: r.action,
                reason: r.reason,
            })
            .collect(),
    ))
}
