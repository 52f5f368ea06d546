//! The DTM-compatible API at `/api/dtmsvr/`, so that DTM's client SDKs (Go, Python
//! `dtmcli`, Java, ...) work unchanged: DTM's request shapes (durations in seconds,
//! payloads as strings, options flattened into the transaction), its answers
//! (`{"dtm_result": "SUCCESS"}`, 409 + `FAILURE` for refusals) and its status spellings
//! (`succeed`) — here and nowhere else.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use dtx::api::TxOptions;
use dtx::{GlobalStatus, TransType};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiJson, ApiQuery};
use super::native::{cursor, parse_cursor};
use super::time::rfc3339;
use crate::service::{BranchSpec, Coordinator, MsgSpec, SagaSpec, ServiceError, StepSpec};
use crate::store::ListFilter;

/// The routes under `/api/dtmsvr`.
pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/newGid", get(new_gid))
        .route("/prepare", post(prepare))
        .route("/submit", post(submit))
        .route("/abort", post(abort))
        .route("/registerBranch", post(register_branch))
        .route("/query", get(query))
        .route("/all", get(all))
}

fn success() -> Json<Value> {
    Json(json!({ "dtm_result": "SUCCESS" }))
}

fn dtm_err(e: impl Into<ApiError>) -> ApiError {
    e.into().dtm()
}

/// DTM's transaction body (`TransBase` plus saga fields). Unknown fields are ignored:
/// DTM clients send more than the server needs (`protocol`, `passthrough_headers`, ...).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DtmTrans {
    gid: String,
    trans_type: String,
    steps: Vec<BTreeMap<String, String>>,
    payloads: Vec<String>,
    custom_data: Option<String>,
    concurrent: bool,
    wait_result: bool,
    /// Seconds.
    timeout_to_fail: u64,
    /// Seconds.
    retry_interval: u64,
    /// Seconds.
    request_timeout: u64,
    retry_limit: u32,
    branch_headers: BTreeMap<String, String>,
    rollback_reason: Option<String>,
    query_prepared: Option<String>,
}

impl DtmTrans {
    fn trans_type(&self) -> Result<TransType, ApiError> {
        self.trans_type.parse().map_err(|e: dtx::ParseError| {
            dtm_err(ServiceError::Invalid {
                field: "trans_type".into(),
                message: e.to_string(),
            })
        })
    }

    /// A DTM `Msg` (steps with an `action` each, payloads as strings).
    fn msg(&self) -> Result<MsgSpec, ApiError> {
        if self.payloads.len() > self.steps.len() {
            return Err(dtm_err(ServiceError::Invalid {
                field: "payloads".into(),
                message: format!(
                    "{} payloads for {} steps",
                    self.payloads.len(),
                    self.steps.len()
                ),
            }));
        }
        Ok(MsgSpec {
            gid: Some(self.gid.clone()),
            steps: self
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepSpec {
                    action: s.get("action").cloned().unwrap_or_default(),
                    payload: self
                        .payloads
                        .get(i)
                        .map(|p| p.as_bytes().to_vec())
                        .unwrap_or_default(),
                    ..StepSpec::default()
                })
                .collect(),
            query_prepared: self.query_prepared.clone().filter(|q| !q.is_empty()),
            options: self.options(),
            custom_data: self.custom_data.clone(),
            delay_ms: None,
        })
    }

    fn options(&self) -> TxOptions {
        let secs = |s: u64| (s > 0).then(|| s.saturating_mul(1000));
        TxOptions {
            timeout_to_fail_ms: secs(self.timeout_to_fail),
            retry_interval_ms: secs(self.retry_interval),
            request_timeout_ms: secs(self.request_timeout),
            retry_limit: (self.retry_limit > 0).then_some(self.retry_limit),
            branch_headers: self.branch_headers.clone(),
            ..TxOptions::default()
        }
    }

    /// DTM's concurrent sagas put `{"orders": {"1": [0]}, "concurrent": true}` in
    /// `custom_data`: step index → the step indexes it waits for.
    fn saga_layout(&self) -> Result<(bool, BTreeMap<usize, Vec<usize>>), ApiError> {
        let mut concurrent = self.concurrent;
        let mut orders = BTreeMap::new();
        if let Some(cd) = self.custom_data.as_deref().filter(|s| !s.is_empty()) {
            #[derive(Deserialize, Default)]
            #[serde(default)]
            struct Custom {
                concurrent: bool,
                orders: Option<BTreeMap<String, Vec<usize>>>,
            }
            if let Ok(custom) = serde_json::from_str::<Custom>(cd) {
                concurrent |= custom.concurrent;
                for (k, v) in custom.orders.unwrap_or_default() {
                    let k: usize = k.parse().map_err(|_| {
                        dtm_err(ServiceError::Invalid {
                            field: "custom_data.orders".into(),
                            message: format!("`{k}` is not a step index"),
                        })
                    })?;
                    orders.insert(k, v);
                }
            }
        }
        Ok((concurrent, orders))
    }
}

async fn new_gid(State(c): State<Arc<Coordinator>>) -> Json<Value> {
    Json(json!({ "gid": c.new_gid(), "dtm_result": "SUCCESS" }))
}

async fn prepare(
    State(c): State<Arc<Coordinator>>,
    ApiJson(t): ApiJson<DtmTrans>,
) -> Result<Json<Value>, ApiError> {
    let trans_type = t.trans_type()?;
    if trans_type == TransType::Msg {
        c.put_msg(t.msg()?, true, false).await.map_err(dtm_err)?;
        return Ok(success());
    }
    c.prepare(
        Some(t.gid.clone()),
        trans_type,
        &t.options(),
        t.custom_data.clone(),
    )
    .await
    .map_err(dtm_err)?;
    Ok(success())
}

async fn submit(
    State(c): State<Arc<Coordinator>>,
    ApiJson(t): ApiJson<DtmTrans>,
) -> Result<Json<Value>, ApiError> {
    let gid = t.gid.clone();
    match t.trans_type()? {
        TransType::Saga => {
            if t.payloads.len() > t.steps.len() {
                return Err(dtm_err(ServiceError::Invalid {
                    field: "payloads".into(),
                    message: format!("{} payloads for {} steps", t.payloads.len(), t.steps.len()),
                }));
            }
            let (concurrent, orders) = t.saga_layout()?;
            let steps = t
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepSpec {
                    action: s.get("action").cloned().unwrap_or_default(),
                    compensate: s.get("compensate").cloned(),
                    payload: t
                        .payloads
                        .get(i)
                        .map(|p| p.as_bytes().to_vec())
                        .unwrap_or_default(),
                    after: orders.get(&i).cloned().unwrap_or_default(),
                    ..StepSpec::default()
                })
                .collect();
            let spec = SagaSpec {
                gid: Some(gid.clone()),
                steps,
                concurrent,
                options: t.options(),
                custom_data: t.custom_data.clone(),
            };
            c.submit_saga(spec, false).await.map_err(dtm_err)?;
        }
        // A prepared message is submitted; an unprepared one is stored and delivered.
        TransType::Msg => {
            c.put_msg(t.msg()?, false, false).await.map_err(dtm_err)?;
        }
        _ => {
            c.submit(&gid, false).await.map_err(dtm_err)?;
        }
    }
    wait_if_asked(&c, &gid, t.wait_result).await
}

/// With `wait_result`, DTM answers FAILURE when the transaction ended failed.
async fn wait_if_asked(c: &Coordinator, gid: &str, wait: bool) -> Result<Json<Value>, ApiError> {
    if wait && c.wait_final(gid).await.map_err(dtm_err)? == GlobalStatus::Failed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("transaction `{gid}` failed"),
            None,
        )
        .dtm());
    }
    Ok(success())
}

async fn abort(
    State(c): State<Arc<Coordinator>>,
    ApiJson(t): ApiJson<DtmTrans>,
) -> Result<Json<Value>, ApiError> {
    t.trans_type()?;
    c.abort(&t.gid, t.rollback_reason.clone(), false)
        .await
        .map_err(dtm_err)?;
    wait_if_asked(&c, &t.gid, t.wait_result).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DtmBranch {
    gid: String,
    branch_id: String,
    trans_type: String,
    data: String,
    confirm: String,
    cancel: String,
    url: String,
}

async fn register_branch(
    State(c): State<Arc<Coordinator>>,
    ApiJson(b): ApiJson<DtmBranch>,
) -> Result<Json<Value>, ApiError> {
    if !b.trans_type.is_empty() && b.trans_type != "tcc" && b.trans_type != "xa" {
        return Err(dtm_err(ServiceError::Invalid {
            field: "trans_type".into(),
            message: format!(
                "registerBranch supports tcc and xa branches, not `{}`",
                b.trans_type
            ),
        }));
    }
    let spec = BranchSpec {
        branch_id: b.branch_id,
        confirm: b.confirm,
        cancel: b.cancel,
        url: b.url,
        payload: b.data.into_bytes(),
    };
    c.register_branch(&b.gid, spec).await.map_err(dtm_err)?;
    Ok(success())
}

#[derive(Debug, Deserialize)]
struct GidParam {
    gid: String,
}

async fn query(
    State(c): State<Arc<Coordinator>>,
    ApiQuery(p): ApiQuery<GidParam>,
) -> Result<Json<Value>, ApiError> {
    match c.query(&p.gid).await {
        Ok((row, ops)) => {
            let branches: Vec<Value> = ops
                .iter()
                .map(|o| {
                    json!({
                        "gid": row.gid,
                        "branch_id": o.branch_id,
                        "op": o.op,
                        "url": o.target,
                        "status": o.status.dtm_str(),
                        "update_time": rfc3339(o.updated_at),
                    })
                })
                .collect();
            Ok(Json(
                json!({ "transaction": transaction(&row), "branches": branches }),
            ))
        }
        // DTM answers an unknown gid with an empty result, not an error.
        Err(ServiceError::NotFound(_)) => Ok(Json(json!({ "transaction": null, "branches": [] }))),
        Err(e) => Err(dtm_err(e)),
    }
}

fn transaction(row: &crate::store::GlobalRow) -> Value {
    let custom_data = serde_json::from_str::<crate::service::StoredOptions>(&row.options)
        .ok()
        .and_then(|o| o.custom_data);
    json!({
        "gid": row.gid,
        "trans_type": row.trans_type,
        "status": row.status.dtm_str(),
        "create_time": rfc3339(row.created_at),
        "update_time": rfc3339(row.updated_at),
        "finish_time": row.finished_at.map(rfc3339),
        "next_cron_time": row.next_attempt_at.map(rfc3339),
        "rollback_reason": row.rollback_reason,
        "needs_attention": row.needs_attention,
        "custom_data": custom_data,
        "owner": row.lease_owner,
    })
}

#[derive(Debug, Deserialize)]
struct AllParams {
    position: Option<String>,
    limit: Option<i64>,
}

async fn all(
    State(c): State<Arc<Coordinator>>,
    ApiQuery(p): ApiQuery<AllParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let before = match p.position.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(parse_cursor(s).map_err(dtm_err)?),
        None => None,
    };
    let rows = c
        .list(&ListFilter {
            before,
            limit,
            ..ListFilter::default()
        })
        .await
        .map_err(dtm_err)?;
    let next = if rows.len() as i64 == limit {
        rows.last().map(cursor).unwrap_or_default()
    } else {
        String::new()
    };
    let transactions: Vec<Value> = rows.iter().map(transaction).collect();
    Ok(Json(
        json!({ "transactions": transactions, "next_position": next }),
    ))
}
