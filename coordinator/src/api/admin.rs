//! The admin API, `/api/admin/...`: what an operator on call needs to find stuck
//! transactions, see why they are stuck, and un-stick them — retry now (a whole transaction
//! or one branch op), force a rollback, mark an op done by hand, change the retry budget —
//! with every action in the audit log. Described by `/api/admin/openapi.json`.
//!
//! Reading needs a viewer or admin token, acting an admin token (see [`super::auth`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use dtx::{GlobalStatus, Op, OpStatus, TransType};
use serde::{Deserialize, Serialize};

use super::auth::{self, Caller};
use super::error::{ApiError, ApiJson, ApiQuery};
use super::time::rfc3339;
use crate::service::{Coordinator, ServiceError};
use crate::store::{GlobalRow, ListFilter, OpRow, Operated, OperatorAction, Overview};

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The routes under `/api/admin`.
pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/overview", get(overview))
        .route("/transactions", get(list))
        .route("/transactions/{gid}", get(detail))
        .route("/transactions/{gid}/retry", post(retry))
        .route("/transactions/{gid}/abort", post(abort))
        .route("/transactions/{gid}/budget", post(budget))
        .route(
            "/transactions/{gid}/branches/{branch_id}/{op}/retry",
            post(retry_op),
        )
        .route(
            "/transactions/{gid}/branches/{branch_id}/{op}/done",
            post(mark_done),
        )
        .route("/transactions/{gid}/audit", get(audit))
}

/// The body of an action: why, and who asks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why (required; kept in the audit log).
    pub reason: String,
    /// Who (e.g. `alice@oncall`), recorded beside the token's name.
    #[serde(default)]
    pub actor: Option<String>,
}

/// The body of a budget change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    /// Why (required).
    pub reason: String,
    /// Who.
    #[serde(default)]
    pub actor: Option<String>,
    /// New calls-per-op limit (1 to 100000).
    #[serde(default)]
    pub retry_limit: Option<u32>,
    /// New age limit in ms (at most 30 days).
    #[serde(default)]
    pub max_age_ms: Option<u64>,
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
    /// The branch op or values concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One row of a listing.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The gid.
    pub gid: String,
    /// Mode.
    pub trans_type: TransType,
    /// Status.
    pub status: GlobalStatus,
    /// Why it waits for an operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs_attention: Option<String>,
    /// Why it was rolled back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_reason: Option<String>,
    /// Participant calls so far.
    pub attempts: i64,
    /// Created.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Final since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Next look by the poller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Age in seconds.
    pub age_s: i64,
}

/// A page of a listing.
#[derive(Debug, Serialize)]
pub struct Page {
    /// Newest first.
    pub transactions: Vec<Summary>,
    /// Cursor of the next page (`after=`), absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A branch op in a detail.
#[derive(Debug, Serialize)]
pub struct BranchOp {
    /// Branch id.
    pub branch_id: String,
    /// Op.
    pub op: Op,
    /// Saga step / TCC registration order.
    pub seq: i64,
    /// URL called.
    pub target: String,
    /// Status.
    pub status: OpStatus,
    /// Calls made.
    pub attempts: i64,
    /// Its own retry limit, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_limit: Option<i64>,
    /// Last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Earliest next call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Request body as sent (UTF-8; invalid bytes replaced).
    pub payload: String,
    /// Last change.
    pub updated_at: String,
}

/// One participant call.
#[derive(Debug, Serialize)]
pub struct Attempt {
    /// Branch id.
    pub branch_id: String,
    /// Op.
    pub op: String,
    /// Start.
    pub started_at: String,
    /// Duration.
    pub duration_ms: i64,
    /// `success`, `failure`, `ongoing`, `transient`.
    pub outcome: String,
    /// Error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Coordinator process.
    pub owner: String,
}

/// Everything about one transaction.
#[derive(Debug, Serialize)]
pub struct Detail {
    /// The global fields.
    #[serde(flatten)]
    pub summary: Summary,
    /// When `timeout_to_fail` passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_at: Option<String>,
    /// The process driving it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    /// Until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<String>,
    /// Row version.
    pub version: i64,
    /// Options and retry rules as stored.
    pub options: serde_json::Value,
    /// Branch ops.
    pub branches: Vec<BranchOp>,
    /// Call history, oldest first.
    pub attempts: Vec<Attempt>,
    /// Operator actions, oldest first.
    pub audit: Vec<AuditEntry>,
}

/// Counts and the stuck transactions.
#[derive(Debug, Serialize)]
pub struct OverviewView {
    /// `status → trans_type → count`.
    pub counts: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>,
    /// Waiting for an operator.
    pub needs_attention: Vec<Summary>,
    /// Retrying after errors.
    pub retrying: Vec<Summary>,
    /// Oldest not final.
    pub oldest: Vec<Summary>,
    /// Final per minute, last hour: `[minute, succeeded, failed]`.
    pub finished_per_minute: Vec<(String, i64, i64)>,
}

/// A listing row.
pub fn summary(r: &GlobalRow, now: i64) -> Summary {
    Summary {
        gid: r.gid.clone(),
        trans_type: r.trans_type,
        status: r.status,
        needs_attention: r.needs_attention.clone(),
        rollback_reason: r.rollback_reason.clone(),
        attempts: r.attempts,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
        finished_at: r.finished_at.map(rfc3339),
        next_attempt_at: r.next_attempt_at.map(rfc3339),
        age_s: (now - r.created_at).max(0) / 1000,
    }
}

fn branch_op(o: &OpRow) -> BranchOp {
    BranchOp {
        branch_id: o.branch_id.clone(),
        op: o.op,
        seq: o.seq,
        target: o.target.clone(),
        status: o.status,
        attempts: o.attempts,
        retry_limit: o.retry_limit,
        last_error: o.last_error.clone(),
        next_attempt_at: (o.status == OpStatus::Pending && o.next_at > 0)
            .then(|| rfc3339(o.next_at)),
        payload: String::from_utf8_lossy(&o.payload).into_owned(),
        updated_at: rfc3339(o.updated_at),
    }
}

/// Listing parameters (shared with the dashboard).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Status.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub status: Option<GlobalStatus>,
    /// Mode.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub trans_type: Option<TransType>,
    /// Only flagged (true) or unflagged (false).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub needs_attention: Option<bool>,
    /// Gid prefix.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub gid_prefix: Option<String>,
    /// Participant host (`host` or `host:port`).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub host: Option<String>,
    /// Created more than this many seconds ago.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub older_than_s: Option<i64>,
    /// Page size (1 to 1000, default 50).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub limit: Option<i64>,
    /// Cursor from the previous page.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub after: Option<String>,
}

/// An empty query value (an untouched form field) means "not given".
fn empty_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

impl ListParams {
    /// The store filter, checked.
    pub fn filter(&self, now: i64) -> Result<ListFilter, ApiError> {
        let bad = |field: &str, message: &str| -> ApiError {
            ServiceError::Invalid {
                field: field.into(),
                message: message.into(),
            }
            .into()
        };
        let limit = self.limit.unwrap_or(50);
        if !(1..=1000).contains(&limit) {
            return Err(bad("limit", "must be between 1 and 1000"));
        }
        if self.gid_prefix.as_ref().is_some_and(|p| p.len() > 128) {
            return Err(bad("gid_prefix", "at most 128 bytes"));
        }
        if self.host.as_ref().is_some_and(|h| {
            h.len() > 255
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c))
        }) {
            return Err(bad("host", "a host name or address, optionally with :port"));
        }
        if self
            .older_than_s
            .is_some_and(|s| !(0..=10 * 365 * 86_400).contains(&s))
        {
            return Err(bad(
                "older_than_s",
                "must be between 0 and 10 years in seconds",
            ));
        }
        Ok(ListFilter {
            status: self.status,
            trans_type: self.trans_type,
            needs_attention: self.needs_attention,
            gid_prefix: self.gid_prefix.clone(),
            host: self.host.clone(),
            created_before: self.older_than_s.map(|s| now - s * 1000),
            before: self
                .after
                .as_deref()
                .map(super::native::parse_cursor)
                .transpose()?,
            limit,
        })
    }
}

/// Runs a listing.
pub async fn list_page(c: &Coordinator, p: &ListParams) -> Result<Page, ApiError> {
    let now = c.now();
    let filter = p.filter(now)?;
    let rows = c.list(&filter).await?;
    let next = (rows.len() as i64 == filter.limit)
        .then(|| rows.last().map(super::native::cursor))
        .flatten();
    Ok(Page {
        transactions: rows.iter().map(|r| summary(r, now)).collect(),
        next,
    })
}

/// Reads everything about one transaction.
pub async fn load_detail(c: &Coordinator, gid: &str) -> Result<Detail, ApiError> {
    let (row, ops) = c.query(gid).await?;
    let store = c.store();
    let attempts = store.attempts(gid).await.map_err(ServiceError::from)?;
    let audit = store.audit(gid).await.map_err(ServiceError::from)?;
    let now = c.now();
    Ok(Detail {
        summary: summary(&row, now),
        timeout_at: row.timeout_at.map(rfc3339),
        lease_owner: row.lease_owner.clone(),
        lease_until: row.lease_until.map(rfc3339),
        version: row.version,
        options: serde_json::from_str(&row.options).unwrap_or(serde_json::Value::Null),
        branches: ops.iter().map(branch_op).collect(),
        attempts: attempts
            .into_iter()
            .map(|a| Attempt {
                branch_id: a.branch_id,
                op: a.op,
                started_at: rfc3339(a.started_at),
                duration_ms: a.duration_ms,
                outcome: a.outcome,
                error: a.error,
                owner: a.owner,
            })
            .collect(),
        audit: audit.into_iter().map(audit_entry).collect(),
    })
}

fn audit_entry(r: crate::store::AuditRow) -> AuditEntry {
    AuditEntry {
        at: rfc3339(r.at),
        actor: r.actor,
        action: r.action,
        reason: r.reason,
        detail: r.detail,
    }
}

/// Reads the overview.
pub async fn load_overview(c: &Coordinator) -> Result<(Overview, i64), ApiError> {
    let now = c.now();
    let o = c.store().overview(now).await.map_err(ServiceError::from)?;
    Ok((o, now))
}

/// Carries out an operator action for `caller`; the actor recorded is the token's name,
/// with the name the caller gave (if any) beside it.
pub async fn perform(
    c: &Coordinator,
    caller: &Caller,
    gid: &str,
    action: OperatorAction,
    reason: &str,
    actor: Option<&str>,
) -> Result<GlobalStatus, ApiError> {
    dtx::validate_gid(gid).map_err(|m| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("gid: {m}"),
            Some("gid".into()),
        )
    })?;
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > 1000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reason: say why, in 1 to 1000 bytes",
            Some("reason".into()),
        ));
    }
    if let OperatorAction::SetBudget {
        retry_limit,
        max_age_ms,
    } = &action
    {
        if retry_limit.is_none() && max_age_ms.is_none() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "retry_limit: give retry_limit, max_age_ms or both",
                Some("retry_limit".into()),
            ));
        }
        if retry_limit.is_some_and(|l| !(1..=100_000).contains(&l)) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "retry_limit: must be between 1 and 100000",
                Some("retry_limit".into()),
            ));
        }
        if max_age_ms.is_some_and(|a| !(1..=30 * 86_400_000).contains(&a)) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "max_age_ms: must be between 1 ms and 30 days",
                Some("max_age_ms".into()),
            ));
        }
    }
    let actor = match actor.map(str::trim).filter(|a| !a.is_empty()) {
        Some(a) if a.len() <= 128 && a != caller.name => format!("{a} (token {})", caller.name),
        _ => caller.name.clone(),
    };
    let outcome = c
        .store()
        .operate(gid, &action, &actor, reason)
        .await
        .map_err(ServiceError::from)?;
    match outcome {
        Operated::Done(status) => {
            tracing::warn!(gid, actor = %actor, action = action.as_str(), detail = action.detail().unwrap_or_default(), reason, "operator action");
            c.metrics().operator_action(action.as_str());
            Ok(status)
        }
        Operated::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no transaction with gid `{gid}`"),
            Some("gid".into()),
        )),
        Operated::Refused(status, trans_type) => Err(ApiError::new(
            StatusCode::CONFLICT,
            match action {
                OperatorAction::ForceAbort => format!(
                    "transaction `{gid}` ({trans_type}) is {status}: only a prepared transaction or a submitted saga can be forced to roll back (a submitted {trans_type} must confirm)"
                ),
                _ => format!("transaction `{gid}` is {status}: nothing left to do"),
            },
            None,
        )),
        Operated::NoSuchOp(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "transaction `{gid}` has no branch op {}",
                action.detail().unwrap_or_default()
            ),
            Some("branch_id".into()),
        )),
        Operated::NoSuchOp(Some(status)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "branch op {} is {status}: only a pending op, or a phase-2 op that answered FAILURE, can be retried or marked done",
                action.detail().unwrap_or_default()
            ),
            Some("op".into()),
        )),
    }
}

fn admin_caller(
    c: &Coordinator,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Caller, ApiError> {
    auth::admin(c.config(), headers, peer).map_err(auth::Denied::api_error)
}

fn viewer_caller(
    c: &Coordinator,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Caller, ApiError> {
    auth::identify(c.config(), headers, peer).map_err(auth::Denied::api_error)
}

/// Authorizes an admin, carries out `action` and answers `{gid, status, action}`.
async fn act(
    c: &Coordinator,
    headers: &HeaderMap,
    peer: SocketAddr,
    gid: &str,
    action: OperatorAction,
    reason: &str,
    actor: Option<&str>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = admin_caller(c, headers, peer)?;
    let name = action.as_str();
    let status = perform(c, &caller, gid, action, reason, actor).await?;
    Ok(Json(
        serde_json::json!({ "gid": gid, "status": status, "action": name }),
    ))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn overview(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<OverviewView>, ApiError> {
    viewer_caller(&c, &headers, peer)?;
    let (o, now) = load_overview(&c).await?;
    let mut counts: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>> =
        Default::default();
    for sc in &o.counts {
        counts
            .entry(sc.status.to_string())
            .or_default()
            .insert(sc.trans_type.to_string(), sc.count);
    }
    Ok(Json(OverviewView {
        counts,
        needs_attention: o.needs_attention.iter().map(|r| summary(r, now)).collect(),
        retrying: o.retrying.iter().map(|r| summary(r, now)).collect(),
        oldest: o.oldest.iter().map(|r| summary(r, now)).collect(),
        finished_per_minute: o
            .finished
            .iter()
            .map(|b| (rfc3339(b.minute), b.succeeded, b.failed))
            .collect(),
    }))
}

async fn list(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<Page>, ApiError> {
    viewer_caller(&c, &headers, peer)?;
    Ok(Json(list_page(&c, &p).await?))
}

async fn detail(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(gid): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Detail>, ApiError> {
    viewer_caller(&c, &headers, peer)?;
    Ok(Json(load_detail(&c, &gid).await?))
}

async fn retry(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(gid): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ActionRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = OperatorAction::RetryNow;
    act(
        &c,
        &headers,
        peer,
        &gid,
        a,
        &req.reason,
        req.actor.as_deref(),
    )
    .await
}

async fn abort(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(gid): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ActionRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = OperatorAction::ForceAbort;
    act(
        &c,
        &headers,
        peer,
        &gid,
        a,
        &req.reason,
        req.actor.as_deref(),
    )
    .await
}

async fn budget(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(gid): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<BudgetRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = OperatorAction::SetBudget {
        retry_limit: req.retry_limit,
        max_age_ms: req.max_age_ms,
    };
    act(
        &c,
        &headers,
        peer,
        &gid,
        a,
        &req.reason,
        req.actor.as_deref(),
    )
    .await
}

fn parse_op(op: &str) -> Result<Op, ApiError> {
    op.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "op: `{op}` is not an op (action, compensate, confirm, cancel, commit, rollback)"
            ),
            Some("op".into()),
        )
    })
}

async fn retry_op(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((gid, branch_id, op)): Path<(String, String, String)>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ActionRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = OperatorAction::RetryOp {
        branch_id,
        op: parse_op(&op)?,
    };
    act(
        &c,
        &headers,
        peer,
        &gid,
        a,
        &req.reason,
        req.actor.as_deref(),
    )
    .await
}

async fn mark_done(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((gid, branch_id, op)): Path<(String, String, String)>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ActionRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = OperatorAction::MarkDone {
        branch_id,
        op: parse_op(&op)?,
    };
    act(
        &c,
        &headers,
        peer,
        &gid,
        a,
        &req.reason,
        req.actor.as_deref(),
    )
    .await
}

async fn audit(
    State(c): State<Arc<Coordinator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(gid): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    viewer_caller(&c, &headers, peer)?;
    let rows = c.store().audit(&gid).await.map_err(ServiceError::from)?;
    Ok(Json(rows.into_iter().map(audit_entry).collect()))
}
