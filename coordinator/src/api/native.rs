//! The native API, `/api/v1/...` (JSON; durations in ms, times RFC 3339 UTC).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use dtx::api::{
    Accepted, BranchView, Finish, NewGid, PrepareTcc, RegisterBranch, SubmitSaga, TransactionPage,
    TransactionView,
};
use dtx::{GlobalStatus, TransType};
use serde::Deserialize;

use super::error::{ApiError, ApiJson, ApiQuery, optional_json};
use super::time::rfc3339;
use crate::service::{BranchSpec, Coordinator, MsgSpec, SagaSpec, ServiceError, StepSpec};
use crate::store::{GlobalRow, ListFilter, OpRow};

/// The routes under `/api/v1`.
pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/gids", post(new_gid))
        .route("/sagas", post(submit_saga))
        .route("/tcc", post(prepare_tcc))
        .route("/msgs", post(put_msg))
        .route("/xa", post(prepare_xa))
        .route("/transactions", get(list))
        .route("/transactions/{gid}", get(query))
        .route("/transactions/{gid}/branches", post(register_branch))
        .route("/transactions/{gid}/submit", post(submit))
        .route("/transactions/{gid}/abort", post(abort))
}

async fn new_gid(State(c): State<Arc<Coordinator>>) -> Json<NewGid> {
    Json(NewGid { gid: c.new_gid() })
}

fn payload_bytes(p: Option<&serde_json::Value>) -> Vec<u8> {
    p.map(|v| serde_json::to_vec(v).unwrap_or_default())
        .unwrap_or_default()
}

async fn submit_saga(
    State(c): State<Arc<Coordinator>>,
    ApiJson(req): ApiJson<SubmitSaga>,
) -> Result<Json<Accepted>, ApiError> {
    let spec = SagaSpec {
        gid: req.gid,
        steps: req
            .steps
            .iter()
            .map(|s| StepSpec {
                action: s.action.clone(),
                compensate: s.compensate.clone(),
                payload: payload_bytes(s.payload.as_ref()),
                after: s.after.clone(),
                retry_limit: s.retry_limit,
                request_timeout_ms: s.request_timeout_ms,
            })
            .collect(),
        concurrent: req.concurrent,
        options: req.options,
        custom_data: None,
    };
    let (gid, status) = c.submit_saga(spec, req.wait_result).await?;
    Ok(Json(Accepted { gid, status }))
}

async fn put_msg(
    State(c): State<Arc<Coordinator>>,
    ApiJson(req): ApiJson<dtx::api::PutMsg>,
) -> Result<Json<Accepted>, ApiError> {
    let spec = MsgSpec {
        gid: req.gid,
        steps: req
            .steps
            .iter()
            .map(|s| StepSpec {
                action: s.action.clone(),
                payload: payload_bytes(s.payload.as_ref()),
                retry_limit: s.retry_limit,
                request_timeout_ms: s.request_timeout_ms,
                ..StepSpec::default()
            })
            .collect(),
        query_prepared: req.query_prepared,
        options: req.options,
        custom_data: None,
        delay_ms: req.delay_ms,
    };
    let (gid, status) = c.put_msg(spec, req.prepare, req.wait_result).await?;
    Ok(Json(Accepted { gid, status }))
}

async fn prepare_tcc(
    State(c): State<Arc<Coordinator>>,
    ApiJson(req): ApiJson<PrepareTcc>,
) -> Result<Json<Accepted>, ApiError> {
    let (gid, status) = c
        .prepare(req.gid, TransType::Tcc, &req.options, None)
        .await?;
    Ok(Json(Accepted { gid, status }))
}

async fn prepare_xa(
    State(c): State<Arc<Coordinator>>,
    ApiJson(req): ApiJson<PrepareTcc>,
) -> Result<Json<Accepted>, ApiError> {
    let (gid, status) = c
        .prepare(req.gid, TransType::Xa, &req.options, None)
        .await?;
    Ok(Json(Accepted { gid, status }))
}

async fn register_branch(
    State(c): State<Arc<Coordinator>>,
    Path(gid): Path<String>,
    ApiJson(req): ApiJson<RegisterBranch>,
) -> Result<Json<Accepted>, ApiError> {
    let spec = BranchSpec {
        branch_id: req.branch_id,
        confirm: req.confirm,
        cancel: req.cancel,
        url: req.url,
        payload: payload_bytes(req.payload.as_ref()),
    };
    c.register_branch(&gid, spec).await?;
    Ok(Json(Accepted {
        gid,
        status: GlobalStatus::Prepared,
    }))
}

async fn finish(
    c: &Coordinator,
    gid: String,
    req: Finish,
    submit: bool,
) -> Result<Json<Accepted>, ApiError> {
    let status = if submit {
        c.submit(&gid, req.wait_result).await?
    } else {
        c.abort(&gid, req.reason, req.wait_result).await?
    };
    Ok(Json(Accepted { gid, status }))
}

async fn submit(
    State(c): State<Arc<Coordinator>>,
    Path(gid): Path<String>,
    body: Bytes,
) -> Result<Json<Accepted>, ApiError> {
    finish(&c, gid, optional_json(&body)?, true).await
}

async fn abort(
    State(c): State<Arc<Coordinator>>,
    Path(gid): Path<String>,
    body: Bytes,
) -> Result<Json<Accepted>, ApiError> {
    finish(&c, gid, optional_json(&body)?, false).await
}

async fn query(
    State(c): State<Arc<Coordinator>>,
    Path(gid): Path<String>,
) -> Result<Json<TransactionView>, ApiError> {
    let (row, ops) = c.query(&gid).await?;
    Ok(Json(view(row, &ops)))
}

/// Query parameters of a listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<GlobalStatus>,
    trans_type: Option<TransType>,
    needs_attention: Option<bool>,
    limit: Option<i64>,
    after: Option<String>,
}

async fn list(
    State(c): State<Arc<Coordinator>>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<TransactionPage>, ApiError> {
    let limit = p.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ServiceError::Invalid {
            field: "limit".into(),
            message: "must be between 1 and 1000".into(),
        }
        .into());
    }
    let before = p.after.as_deref().map(parse_cursor).transpose()?;
    let rows = c
        .list(&ListFilter {
            status: p.status,
            trans_type: p.trans_type,
            needs_attention: p.needs_attention,
            before,
            limit,
            ..Default::default()
        })
        .await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(cursor))
        .flatten();
    Ok(Json(TransactionPage {
        transactions: rows.into_iter().map(|r| view(r, &[])).collect(),
        next,
    }))
}

/// Keyset cursor of a listing: `created_at:gid` of the last row of a page.
pub fn cursor(row: &GlobalRow) -> String {
    format!("{}:{}", row.created_at, row.gid)
}

/// Parses a cursor made by [`cursor`].
pub fn parse_cursor(s: &str) -> Result<(i64, String), ApiError> {
    s.split_once(':')
        .and_then(|(at, gid)| Some((at.parse().ok()?, gid.to_owned())))
        .ok_or_else(|| {
            ServiceError::Invalid {
                field: "after".into(),
                message: "not a cursor from a previous page".into(),
            }
            .into()
        })
}

/// The native view of a transaction.
pub fn view(row: GlobalRow, ops: &[OpRow]) -> TransactionView {
    TransactionView {
        gid: row.gid,
        trans_type: row.trans_type,
        status: row.status,
        needs_attention: row.needs_attention,
        rollback_reason: row.rollback_reason,
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
        finished_at: row.finished_at.map(rfc3339),
        next_attempt_at: row.next_attempt_at.map(rfc3339),
        branches: ops
            .iter()
            .map(|o| BranchView {
                branch_id: o.branch_id.clone(),
                op: o.op,
                target: o.target.clone(),
                status: o.status,
                attempts: o.attempts as u32,
                last_error: o.last_error.clone(),
                next_attempt_at: (o.status == dtx::OpStatus::Pending && o.next_at > 0)
                    .then(|| rfc3339(o.next_at)),
                updated_at: rfc3339(o.updated_at),
            })
            .collect(),
    }
}
